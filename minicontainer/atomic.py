"""Crash-safe files: write-temp, fsync, rename; and advisory locks between CLI calls.

A crash at any point leaves either the old file or the new one, never a torn one,
because rename(2) within one filesystem is atomic.
"""
from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Any, Iterator


def write_atomic(path: str | os.PathLike, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically: temp file in the same dir, fsync, rename.

    ``durable=False`` skips the fsync: for volatile runtime state (under /run), which a
    machine crash makes stale anyway; rename alone still means no reader sees a torn file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_json_atomic(path: str | os.PathLike, value: Any, mode: int = 0o644, *, durable: bool = True) -> None:
    """Atomically replace ``path`` with ``value`` as indented JSON."""
    write_atomic(path, json.dumps(value, indent=2, sort_keys=True).encode() + b"\n", mode, durable=durable)


@contextmanager
def file_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive flock on ``path`` (created if missing) for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def make_private_dir(path: str | os.PathLike, ours: tuple[str, ...]) -> None:
    """Create ``path`` (and its parents) as a directory only root can enter: mode 0700.

    The engine's state holds image layers, and a layer may carry device nodes (a 0666
    /dev/kmsg, a disk) or setuid binaries. Behind a 0700 directory no other host user
    can reach them, whatever their own modes say.

    An existing directory that others can enter is tightened only if it holds nothing
    but the engine's own entries (``ours``): a MINICONTAINER_ROOT set by mistake to /lib
    or $HOME must fail, not take /usr/lib away from every other user.
    """
    from .errors import MinicontainerError

    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True)
        return
    except FileExistsError:
        pass
    st = os.stat(path, follow_symlinks=False)
    if not st.st_mode & 0o077 and not os.path.islink(path):
        return
    foreign = sorted(set(os.listdir(path)) - set(ours))
    if os.path.islink(path) or foreign:
        raise MinicontainerError(f"{path} is not an engine directory (it {'is a symbolic link' if os.path.islink(path) else 'holds ' + ', '.join(foreign[:3])}): "
                                 "set MINICONTAINER_ROOT / MINICONTAINER_RUN to an empty or engine-owned directory")
    os.chmod(path, 0o700)   # made by an older version with 0755: close it
