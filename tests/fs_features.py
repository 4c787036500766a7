"""Skips for tests that need a filesystem feature the machine running them may lack."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def needs_user_xattrs(directory: Path) -> None:
    """Skip the calling test where ``directory``'s filesystem can't store user.* xattrs.

    tmpfs gained them only in Linux 6.6; the v2 guest (Debian's 6.1 kernel) keeps /tmp on
    tmpfs, while the students' VM and our hosts keep it on ext4, which has them.
    """
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
    except OSError:
        pytest.skip(f"{directory}'s filesystem has no user.* xattrs (tmpfs before Linux 6.6)")
    finally:
        probe.unlink()
