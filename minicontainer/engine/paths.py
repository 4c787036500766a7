"""Where the engine keeps its state: MINICONTAINER_ROOT (default /var/lib/minicontainer)."""
from __future__ import annotations

import os
from pathlib import Path


def engine_root() -> Path:
    """The engine's state directory; tests give each test its own via MINICONTAINER_ROOT."""
    return Path(os.environ.get("MINICONTAINER_ROOT", "/var/lib/minicontainer"))


def containers_dir() -> Path:
    return engine_root() / "containers"


# what the engine keeps in the run dir: make_private_dir refuses a dir holding anything else
RUN_ENTRIES = ("containers", "seccomp", "runtime")


def run_dir() -> Path:
    """Volatile runtime state (running pids), like runc's /run/runc: MINICONTAINER_RUN."""
    return Path(os.environ.get("MINICONTAINER_RUN", "/run/minicontainer"))
