"""Taking power away from a container's root: capabilities and no_new_privs.

Root in a container is root on the host unless the runtime takes its powers away. Linux
splits root's power into about 40 **capabilities (能力)**: CAP_SYS_ADMIN may mount,
CAP_SYS_MODULE may load kernel modules, CAP_SYS_TIME may set the clock, and so on. A
container keeps only a short list (Docker's default), dropped from the *bounding set* so
that no later execve, setuid binary or file capability can give the rest back.
"""
from __future__ import annotations

import os

from ..errors import InvalidArgument
from ..kernel import syscalls
from ..trace import Step

# Every capability the kernel knows, by number (include/uapi/linux/capability.h).
CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN",
    "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE")

# Docker's default set. CAP_MKNOD is safe in it only because the device cgroup
# (kernel/devices.py) refuses to open a node that isn't on its allow-list, so a process
# without a device cgroup (a Sandbox that hasn't joined its cgroup) must not hold it.
DEFAULT_CAPABILITIES = (
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW", "CAP_SETGID",
    "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL",
    "CAP_AUDIT_WRITE")


def last_capability() -> int:
    """The highest capability number this kernel knows (/proc/sys/kernel/cap_last_cap)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def capability_mask(names: tuple[str, ...] | list[str]) -> int:
    """The 64-bit mask the kernel uses (CapEff in /proc/PID/status) for these capability names."""
    return sum(1 << CAPABILITIES.index(name) for name in names)


def capability_names(mask: int) -> list[str]:
    """Decode a mask such as CapEff's hex value into names."""
    return [name for i, name in enumerate(CAPABILITIES) if mask >> i & 1]


def parse_capability(text: str) -> str:
    """"net_admin", "NET_ADMIN" or "CAP_NET_ADMIN" -> "CAP_NET_ADMIN"; "all" -> "ALL"."""
    name = text.strip().upper()
    if name == "ALL":
        return name
    name = name if name.startswith("CAP_") else "CAP_" + name
    if name not in CAPABILITIES:
        raise InvalidArgument(f"unknown capability {text!r}: use a name from capabilities(7) such as "
                              "NET_ADMIN or SYS_TIME, or ALL")
    return name


def choose_capabilities(add: list[str] | tuple[str, ...] = (), drop: list[str] | tuple[str, ...] = (),
                        privileged: bool = False) -> tuple[str, ...]:
    """The capabilities a container keeps, as Docker decides them.

    ``--privileged`` keeps all of them. Otherwise the default set, with ``--cap-drop``
    removed and ``--cap-add`` added; ``ALL`` in either means every capability.
    """
    known = CAPABILITIES[:last_capability() + 1]
    if privileged:   # every capability this engine holds: nobody can hand on more than that
        return tuple(capability_names(capability_mask(known) & held_capabilities()))
    add = [parse_capability(c) for c in add]
    drop = [parse_capability(c) for c in drop]
    keep = set(known) if "ALL" in add else set(DEFAULT_CAPABILITIES)
    keep = set() if "ALL" in drop else keep - set(drop)
    keep |= {c for c in add if c != "ALL"}
    return tuple(c for c in known if c in keep)


def held_capabilities() -> int:
    """The mask of capabilities this process holds (CapPrm): all it can ever hand on."""
    return int(_status_lines("CapPrm")["CapPrm"], 16)


def _status_lines(*keys: str) -> dict[str, str]:
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in keys}


def drop_capabilities(keep: tuple[str, ...] | list[str] = DEFAULT_CAPABILITIES,
                      user: tuple[int, int, tuple[int, ...]] | None = None) -> Step:
    """Keep only ``keep``: drop the rest from the bounding set, then capset and clear ambient.

    Nobody can gain a capability it doesn't have, so ``keep`` is cut to what this process
    holds (--privileged on a host that withholds some, say CAP_SYS_RESOURCE, gets the rest).
    """
    keep_mask = capability_mask(keep) & held_capabilities()
    keep = capability_names(keep_mask)
    step = Step("drop_capabilities",
                call=f"prctl(PR_CAPBSET_DROP, …) for {last_capability() + 1 - len(keep)} capabilities; "
                     f"capset(effective=permitted=inheritable={keep_mask:#x}); prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
                shell=f"setpriv --bounding-set=-all,{','.join('+' + c[4:].lower() for c in keep)} "
                      f"--inh-caps=-all,{','.join('+' + c[4:].lower() for c in keep)} --ambient-caps=-all …",
                why="root in the container keeps only these capabilities (能力): no mount, no module loading, "
                    "no raw disk or kernel-log access")

    def drop() -> str:
        restrict(keep_mask, no_new_privs=False, user=user)
        return f"kept {len(keep)}: {', '.join(c[4:].lower() for c in keep)}"

    step.do(drop, evidence=lambda: _status_lines("CapBnd", "CapEff", "Uid", "Gid", "Groups"))
    if user is not None:
        step.call += f"; setgroups({list(user[2])}), setresgid({user[1]}), setresuid({user[0]})"
        step.why += f"; then it becomes uid {user[0]}, and a non-root program starts with no capabilities"
    return step


def restrict(keep_mask: int, *, no_new_privs: bool, user: tuple[int, int, tuple[int, ...]] | None = None) -> None:
    """The syscalls of drop_capabilities (and no_new_privs), with no Step: for a forked child
    just before it execs, where a Step would have nowhere to go.

    With ``user`` (uid, gid, supplementary gids), switch to it in runc's order: the bounding
    set first, then setgroups/setresgid/setresuid while PR_SET_KEEPCAPS keeps the
    permitted set (setuid away from root would empty it), then capset. The execve that
    follows gives a non-root program no capabilities, as in Docker.
    """
    for cap in range(last_capability() + 1):
        if not keep_mask >> cap & 1:
            syscalls.drop_from_bounding_set(cap)
    if user is not None and (user[0], user[1], tuple(user[2])) != (0, 0, ()):
        uid, gid, groups = user
        syscalls.set_keep_capabilities(True)
        os.setgroups(list(groups))
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        syscalls.set_keep_capabilities(False)
    syscalls.capset(keep_mask, keep_mask, keep_mask)
    syscalls.clear_ambient_capabilities()
    if no_new_privs:
        syscalls.set_no_new_privs()


def no_new_privileges() -> Step:
    """Set no_new_privs: no execve after this can gain privileges (setuid root, file capabilities)."""
    step = Step("no_new_privs", call="prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)",
                shell="setpriv --no-new-privs …",
                why="a setuid binary in the image can't raise privileges again; children inherit it")
    step.do(syscalls.set_no_new_privs, evidence=lambda: _status_lines("NoNewPrivs"))
    return step
