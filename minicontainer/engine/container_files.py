"""cp: copy files between the host and a container, resolving the container's paths inside it.

A container's files are the container's to arrange: any component of a path inside it
may be a symlink, to ``/`` or to ``../../..``, and it may be swapped for one while the copy
runs. Resolved naively from the host, such a path leads *out* of the container, and the
host's files get read or overwritten (docker cp, CVE-2018-15664). So every container path
here is opened with openat2(RESOLVE_IN_ROOT) against a directory fd of the container's
root: the kernel itself keeps the walk inside, whatever the symlinks say, at the moment
it walks. Below the named path, the tree is walked by fd with O_NOFOLLOW, and symlinks
are copied as symlinks.

The root is the running container's own (``/proc/PID/root``, its mount namespace's view);
for a stopped one, a child process mounts its overlay in a private mount namespace of its
own, so nothing is left mounted on the host even if the copy is interrupted. No program
or library of the container runs (docker cp's CVE-2019-14271 loaded the container's
libnss into a host process): only this Python reads and writes bytes.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import InvalidArgument, MinicontainerError
from ..kernel import syscalls
from .containers import ContainerRecord, find_record


def parse_copy_args(src: str, dest: str) -> tuple[str, str, str, bool]:
    """(container ref, container path, host path, from the container?) for ``cp SRC DEST``."""
    def split(arg: str) -> tuple[str, str] | None:
        if ":" in arg and not arg.startswith(("/", ".")):
            ref, _, path = arg.partition(":")
            return ref, path
        return None
    s, d = split(src), split(dest)
    if bool(s) == bool(d):
        raise InvalidArgument("cp copies between a container and the host: give one side as CONTAINER:PATH, "
                              "e.g. cp web:/etc/hostname ./hostname")
    if s:
        return s[0], s[1], dest, True
    return d[0], d[1], src, False


def _copy_out(root_fd: int, path: str, dest: Path) -> int:
    """From the container to the host; returns the number of entries copied."""
    fd = syscalls.open_in_root(root_fd, path, os.O_RDONLY | os.O_NOFOLLOW | os.O_PATH)
    try:
        st = os.fstat(fd)
        if stat.S_ISLNK(st.st_mode):   # the named path itself is a symlink: resolve it, inside
            os.close(fd)
            fd = syscalls.open_in_root(root_fd, path, os.O_RDONLY | os.O_PATH)
            st = os.fstat(fd)
        if dest.is_dir():
            dest = dest / (os.path.basename(path.rstrip("/")) or "root")
        return _copy_node_out(fd, st, dest)
    finally:
        os.close(fd)


def _copy_node_out(fd: int, st: os.stat_result, dest: Path) -> int:
    if stat.S_ISDIR(st.st_mode):
        dest.mkdir(mode=0o700, exist_ok=True)
        count = 1
        listing = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name in sorted(os.listdir(listing)):
                child = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=listing)
                try:
                    count += _copy_node_out(child, os.fstat(child), dest / name)
                finally:
                    os.close(child)
        finally:
            os.close(listing)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        return count
    if stat.S_ISLNK(st.st_mode):
        if os.path.lexists(dest):
            os.unlink(dest)
        os.symlink(_link_text(fd), dest)   # copied as the link it is, never followed
        return 1
    if stat.S_ISREG(st.st_mode):
        src = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            out = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, stat.S_IMODE(st.st_mode))
            try:
                while chunk := os.read(src, 1 << 20):
                    os.write(out, chunk)
                os.fchmod(out, stat.S_IMODE(st.st_mode))
            finally:
                os.close(out)
        finally:
            os.close(src)
        return 1
    return 0   # devices, fifos and sockets are not copied


def _link_text(fd: int) -> str:
    """What a symlink opened with O_PATH|O_NOFOLLOW says (readlinkat with an empty path)."""
    return os.readlink("", dir_fd=fd)


def _copy_in(root_fd: int, path: str, source: Path) -> int:
    """From the host into the container; returns the number of entries copied."""
    if not os.path.lexists(source):
        raise InvalidArgument(f"cp: {source}: no such file or directory on the host")
    parent_path, name = os.path.split(path.rstrip("/") or "/")
    try:
        target = syscalls.open_in_root(root_fd, path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        target = None
    if target is not None:   # an existing directory: copy into it, under the source's name
        parent, name = target, source.name
    else:
        try:
            parent = syscalls.open_in_root(root_fd, parent_path or "/", os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise InvalidArgument(f"cp: {parent_path}: {exc.strerror} in the container: create the directory "
                                  "first") from None
    try:
        return _copy_node_in(parent, name, source)
    finally:
        os.close(parent)


def _copy_node_in(parent: int, name: str, source: Path) -> int:
    st = os.lstat(source)
    if stat.S_ISDIR(st.st_mode):
        try:
            os.mkdir(name, stat.S_IMODE(st.st_mode), dir_fd=parent)
        except FileExistsError:
            pass
        child = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            return 1 + sum(_copy_node_in(child, entry.name, source / entry.name)
                           for entry in sorted(os.scandir(source), key=lambda e: e.name))
        finally:
            os.close(child)
    _unlink_non_dir(parent, name)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(source), name, dir_fd=parent)
        return 1
    if stat.S_ISREG(st.st_mode):
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      stat.S_IMODE(st.st_mode), dir_fd=parent)
        try:
            with open(source, "rb") as f:
                while chunk := f.read(1 << 20):
                    os.write(out, chunk)
            os.fchown(out, 0, 0)   # root's, as docker cp makes them (without -a)
            os.fchmod(out, stat.S_IMODE(st.st_mode))
        finally:
            os.close(out)
        return 1
    return 0


def _unlink_non_dir(parent: int, name: str) -> None:
    """Replace, never write through: an existing file or symlink at the target is removed first."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f"cp: cannot overwrite the directory {name!r} in the container with a file")
    os.unlink(name, dir_fd=parent)


def _with_root(record: ContainerRecord, pid: int, action) -> int:
    """Run ``action(root_fd)`` against the container's root: the running one's, or (stopped) its
    overlay mounted by a child in a private mount namespace."""
    if pid:
        root_fd = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            return action(root_fd)
        finally:
            os.close(root_fd)
    return _in_private_mount(record, action)


def _in_private_mount(record: ContainerRecord, action) -> int:
    import json

    from ..kernel import mounts, namespaces
    from ..runtime.oci import read_bundle

    spec = read_bundle(record.dir / "bundle", record.id)
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(r)
            namespaces.unshare_namespaces(["mnt"])
            mounts.make_mounts_private()
            mounts.mount_overlay(spec.lowers, spec.upper, spec.work, spec.rootfs)
            root_fd = os.open(spec.rootfs, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            os.write(w, json.dumps({"count": action(root_fd)}).encode())
            os._exit(0)
        except OSError as exc:
            os.write(w, json.dumps({"error": f"{exc.filename or ''}: {exc.strerror.lower()} in the container"}).encode())
            os._exit(1)
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps({"error": str(exc)}).encode())
            os._exit(1)
    os.close(w)
    with os.fdopen(r) as f:
        reply = f.read()
    os.waitpid(child, 0)
    answer = json.loads(reply or '{"error": "the copy process died"}')
    if "error" in answer:
        raise MinicontainerError(f"cp: {answer['error']}")
    return answer["count"]


def copy(src: str, dest: str) -> int:
    """cp CONTAINER:PATH HOSTPATH, or cp HOSTPATH CONTAINER:PATH; returns the entries copied."""
    from .verbs import reconcile

    ref, inner, host, out = parse_copy_args(src, dest)
    record = find_record(ref)
    state = reconcile(record)
    if state is None:
        raise MinicontainerError(f"no such container: {ref}")
    pid = state.pid if state.status in ("running", "paused") else 0
    inner = inner if inner.startswith("/") else "/" + inner
    try:
        if out:
            return _with_root(record, pid, lambda root: _copy_out(root, inner, Path(host).absolute()))
        return _with_root(record, pid, lambda root: _copy_in(root, inner, Path(host).absolute()))
    except FileNotFoundError:
        raise InvalidArgument(f"cp: {inner}: no such file or directory in container {ref}") from None
    except OSError as exc:
        raise MinicontainerError(f"cp: {exc.filename or inner}: {exc.strerror}") from None

