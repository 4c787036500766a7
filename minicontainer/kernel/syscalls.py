"""ctypes wrappers for the syscalls Python 3.11 doesn't expose.

Each wrapper raises :class:`~minicontainer.errors.KernelError` naming the syscall and
the errno, plus a hint when the kernel's rules make one failure common. The docstrings
repeat the rules from the man pages, because they are what a learner trips over.
"""
from __future__ import annotations

import ctypes
import os

from ..errors import KernelError

libc = ctypes.CDLL(None, use_errno=True)

# <sched.h> namespace flags
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# <sys/mount.h> flags
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2

# x86_64 and aarch64 syscall numbers that glibc 2.36 has no wrapper for
_SYS = {"x86_64": {"pivot_root": 155, "close_range": 436, "capset": 126, "openat2": 437},
        "aarch64": {"pivot_root": 41, "close_range": 436, "capset": 91, "openat2": 437}}[os.uname().machine]
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10
CLOSE_RANGE_CLOEXEC = 1 << 2
PR_SET_PDEATHSIG = 1
PR_SET_KEEPCAPS = 8
PR_SET_NAME = 15
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522

libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
libc.unshare.argtypes = [ctypes.c_int]
libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
libc.sethostname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
libc.syscall.restype = ctypes.c_long


def _check(ret: int, step: str, hint: str = "") -> None:
    if ret != 0:
        raise KernelError(step, ctypes.get_errno(), hint)


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    """unshare(2): move the caller into new namespaces.

    CLONE_NEWPID is special: the caller stays in its pid namespace and only its *next
    child* is born into the new one (as PID 1). Needs CAP_SYS_ADMIN.
    """
    _check(libc.unshare(flags), f"unshare({namespace_flag_names(flags)})",
           "needs root (CAP_SYS_ADMIN); a multi-threaded caller can't unshare CLONE_NEWNS|CLONE_NEWUSER")


def setns(fd: int, nstype: int = 0) -> None:
    """setns(2): join the namespace that ``fd`` (an open /proc/PID/ns/* file) refers to.

    Joining a pid namespace, like unshare, only affects children created afterwards.
    """
    _check(libc.setns(fd, nstype), "setns", "the target process may have exited")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2): attach a filesystem (or change propagation / remount when flags say so).

    The target must exist. MS_BIND|MS_REMOUNT|MS_RDONLY makes an existing bind read-only;
    MS_REC|MS_PRIVATE changes propagation and ignores source and fstype.
    """
    ret = libc.mount(_b(source), _b(target), _b(fstype), flags, _b(data))
    _check(ret, f"mount {fstype or ''} {source or ''} on {target}".replace("  ", " "),
           "is the target a directory that exists, and is the filesystem type available?")


def umount2(target: str, flags: int = 0) -> None:
    """umount2(2): detach a mount; MNT_DETACH lazily unmounts even while it is busy."""
    _check(libc.umount2(_b(target), flags), f"umount2({target})")


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2): make ``new_root`` the root of this mount namespace, moving the old one to ``put_old``.

    The kernel requires: new_root is a mount point; neither is on the same mount as the
    current root; the current root's propagation is not shared (make / MS_PRIVATE
    first, or pivot_root fails with EINVAL). ``pivot_root(".", ".")`` stacks the old
    root on top of the new one, to be detached with umount2(".", MNT_DETACH).
    """
    ret = libc.syscall(_SYS["pivot_root"], _b(new_root), _b(put_old))
    _check(ret, "pivot_root",
           "new_root must be a mount point and / must not have shared propagation (make it private first)")


def sethostname(name: str) -> None:
    """sethostname(2): set the hostname of the caller's UTS namespace."""
    raw = name.encode()
    _check(libc.sethostname(raw, len(raw)), f"sethostname({name!r})",
           "a hostname is at most 64 bytes; unshare a UTS namespace first so the host keeps its name")


def close_range_cloexec(first: int) -> None:
    """close_range(2) with CLOSE_RANGE_CLOEXEC: mark every fd >= first close-on-exec.

    This is how no engine file descriptor leaks into the container (the runc
    CVE-2024-21626 class): whatever the parent had open disappears at execve.
    """
    ret = libc.syscall(_SYS["close_range"], ctypes.c_uint(first), ctypes.c_uint(0xFFFFFFFF),
                       ctypes.c_uint(CLOSE_RANGE_CLOEXEC))
    if ret != 0:  # kernels before 5.11: fall back to closing one by one
        os.closerange(first, 65536)


def set_parent_death_signal(sig: int, parent: int = 0) -> None:
    """prctl(PR_SET_PDEATHSIG): get ``sig`` when the parent dies, so no orphan outlives the engine.

    ``parent``: the pid that forked us. If it died before the prctl, no signal will ever
    come (we already have a new parent), so we end now instead of running on as an orphan.
    getppid() answers 0 to PID 1 of a new pid namespace (its parent is outside it); then
    the parent is read from the mounted /proc, and ``parent`` is in /proc's terms.
    """
    _check(libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if parent and _parent_pid() not in (parent, None):
        os._exit(128 + sig)


def _parent_pid() -> int | None:
    """getppid(), or for PID 1 of a new pid namespace its parent as /proc numbers it (None without /proc)."""
    if ppid := os.getppid():
        return ppid
    try:
        with open("/proc/self/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def drop_from_bounding_set(cap: int) -> None:
    """prctl(PR_CAPBSET_DROP): remove a capability from the bounding set, for good.

    The bounding set caps what any later execve can grant, even to root or to a setuid
    binary; nothing can add a capability back into it. Needs CAP_SETPCAP.
    """
    _check(libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")


def clear_ambient_capabilities() -> None:
    """prctl(PR_CAP_AMBIENT_CLEAR_ALL): no capability is handed on to non-root programs by execve."""
    _check(libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2): set the caller's effective, permitted and inheritable capability sets (64-bit masks).

    A process can only lower its permitted set. As root, execve then gives the new program
    permitted = inheritable | bounding set, which is why both are set to the same list.
    """
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):   # version 3 takes the masks as two 32-bit halves
        data[i].effective = (effective >> (32 * i)) & 0xFFFFFFFF
        data[i].permitted = (permitted >> (32 * i)) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> (32 * i)) & 0xFFFFFFFF
    _check(0 if libc.syscall(_SYS["capset"], ctypes.byref(header), data) == 0 else -1, "capset")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def open_in_root(root_fd: int, path: str, flags: int, mode: int = 0) -> int:
    """openat2(RESOLVE_IN_ROOT): open ``path`` as if ``root_fd`` were "/": every "..", absolute
    symlink and magic link is kept inside that directory, whatever the files there say.

    This is how a path a container controls is resolved safely from the host (docker cp's
    CVE-2018-15664 swapped a path component for a symlink to / in the middle of a copy).
    """
    how = _OpenHow(flags | os.O_CLOEXEC, mode, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)
    fd = libc.syscall(_SYS["openat2"], root_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), path)
    return fd


def set_keep_capabilities(keep: bool) -> None:
    """prctl(PR_SET_KEEPCAPS): keep the permitted capabilities across a setuid away from root
    (which otherwise empties them); cleared again on execve."""
    _check(libc.prctl(PR_SET_KEEPCAPS, int(keep), 0, 0, 0), "prctl(PR_SET_KEEPCAPS)")


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): execve never grants privileges again (setuid bits and
    file capabilities are ignored). It is inherited by every child and can't be unset."""
    _check(libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


class _SockFprog(ctypes.Structure):
    # struct sock_fprog: the length in instructions, and a pointer to 8-byte sock_filter records
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def set_seccomp_filter(program: bytes) -> None:
    """prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER): from now on the kernel runs this BPF
    program on every system call of the caller and of every process it starts.

    The kernel refuses (EACCES) unless no_new_privs is set or the caller has CAP_SYS_ADMIN,
    so that a filter can't make a setuid program misbehave. A filter can never be removed.
    """
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.addressof(buffer))
    _check(libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)",
           "a seccomp filter needs no_new_privs or CAP_SYS_ADMIN")


_FLAG_NAMES = [(CLONE_NEWPID, "CLONE_NEWPID"), (CLONE_NEWNS, "CLONE_NEWNS"), (CLONE_NEWUTS, "CLONE_NEWUTS"),
               (CLONE_NEWIPC, "CLONE_NEWIPC"), (CLONE_NEWNET, "CLONE_NEWNET"),
               (CLONE_NEWCGROUP, "CLONE_NEWCGROUP"), (CLONE_NEWUSER, "CLONE_NEWUSER")]


def namespace_flag_names(flags: int) -> str:
    """'CLONE_NEWPID|CLONE_NEWNS' for a flag mask."""
    return "|".join(n for f, n in _FLAG_NAMES if flags & f) or "0"
