"""Namespaces: what a process can see. Create them, name them, read their ids.

A namespace (命名空间) is identified by the inode number of ``/proc/PID/ns/<kind>``: two
processes are in the same namespace exactly when those numbers match.
"""
from __future__ import annotations

import fcntl
import os
import socket
import struct

from ..errors import InvalidArgument
from ..trace import Step
from . import syscalls

# kind -> (clone flag, unshare(1) option, what it isolates)
NAMESPACES: dict[str, tuple[int, str, str]] = {
    "pid": (syscalls.CLONE_NEWPID, "--pid", "process ids: the container's first process is PID 1"),
    "mnt": (syscalls.CLONE_NEWNS, "--mount", "the mount table: mounts made inside stay inside"),
    "uts": (syscalls.CLONE_NEWUTS, "--uts", "the hostname"),
    "ipc": (syscalls.CLONE_NEWIPC, "--ipc", "System V IPC and POSIX message queues"),
    "net": (syscalls.CLONE_NEWNET, "--net", "network devices, addresses, routes and ports"),
    "cgroup": (syscalls.CLONE_NEWCGROUP, "--cgroup", "the view of /proc/self/cgroup: the container's cgroup looks like /"),
}
DEFAULT_NAMESPACES = ("pid", "mnt", "uts", "ipc", "net", "cgroup")


def namespace_flags(kinds: list[str] | tuple[str, ...]) -> int:
    """The CLONE_NEW* mask for namespace kinds like ["pid", "mnt"]."""
    flags = 0
    for kind in kinds:
        if kind not in NAMESPACES:
            raise InvalidArgument(f"unknown namespace {kind!r}: choose from {', '.join(NAMESPACES)}")
        flags |= NAMESPACES[kind][0]
    return flags


def namespace_ids(pid: int | str = "self") -> dict[str, int]:
    """Read the namespace ids (inode numbers) of a process from /proc/PID/ns/*."""
    ids = {}
    for kind in NAMESPACES:
        link = os.readlink(f"/proc/{pid}/ns/{kind}")  # e.g. "pid:[4026531836]"
        ids[kind] = int(link[link.index("[") + 1:-1])
    return ids


def unshare_namespaces(kinds: list[str] | tuple[str, ...]) -> Step:
    """unshare(2) the given namespaces for the calling process (pid: for its next child)."""
    flags = namespace_flags(kinds)
    names = syscalls.namespace_flag_names(flags)
    options = " ".join(NAMESPACES[k][1] for k in kinds)
    step = Step("unshare", call=f"unshare({names})",
                shell=f"unshare {options}" + (" --fork" if "pid" in kinds else ""),
                why="new namespaces isolate " + "; ".join(NAMESPACES[k][2].split(":")[0] for k in kinds))
    before = namespace_ids()
    step.do(syscalls.unshare, flags, evidence=lambda: _changed_ids(before, namespace_ids()))
    return step


def _changed_ids(before: dict[str, int], after: dict[str, int]) -> dict[str, str]:
    # pid stays the same for the caller: only its children enter the new pid namespace
    return {f"{k} ns": f"{before[k]} → {after[k]}" if before[k] != after[k] else f"{after[k]} (unchanged for the caller)"
            for k in before}


def set_hostname(name: str) -> Step:
    """sethostname(2) inside the container's UTS namespace."""
    step = Step("sethostname", call=f"sethostname({name!r})", shell=f"hostname {name}",
                why="the UTS namespace has its own hostname; the host's is untouched")
    step.do(syscalls.sethostname, name, evidence=lambda: {"hostname": socket.gethostname()})
    return step


SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def _set_link_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sh22x", name.encode(), 0)
        flags = struct.unpack("16sh22x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sh22x", name.encode(), flags | IFF_UP))


def bring_up_loopback() -> Step:
    """Set ``lo`` up in a new network namespace (it starts down, so even 127.0.0.1 fails)."""
    step = Step("loopback_up", call="ioctl(SIOCSIFFLAGS, lo, IFF_UP)", shell="ip link set lo up",
                why="a new network namespace has only a loopback device, and it starts down")
    step.do(_set_link_up, "lo")
    return step
