"""The container's init sequence: the steps its first process takes before exec.

These functions run *inside* the new container process (or the notebook Sandbox): they
change that process's cgroup, mounts, root and hostname, never the caller's. The order is
the one runc follows.
"""
from __future__ import annotations

import os
import signal
import stat

from ..errors import MinicontainerError
from ..kernel import mounts, namespaces, seccomp, security, syscalls
from .. import trace
from ..trace import Step
from .sealed_exec import exec_sealed
from .spec import ContainerSpec

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from typing import Callable


# The mount namespace this module was loaded in: the engine's, or the sandbox helper's
# before it unshared. Masking /proc files there would hide them from the host itself.
_HOST_MOUNT_NS = os.stat("/proc/self/ns/mnt").st_ino


class ExecError(MinicontainerError):
    """The command could not be started; exit codes follow docker (127 not found, 126 not runnable)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _write_procs(files: list[str], pid: int, fds: list[int] | None) -> None:
    for i, path in enumerate(files):
        fd = fds[i] if fds else os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, str(pid).encode())  # "0" means "the writing process"
        finally:
            os.close(fd)


def join_cgroup(procs_files: list[str], pid: int = 0, fds: list[int] | None = None,
                proc_fd: int | None = None) -> Step:
    """Move process ``pid`` (0: the caller) into the container's cgroup in every hierarchy.

    Limits apply from then on, to it and to every child it forks. Moving a process takes a
    kernel-wide lock whose first use after a quiet spell waits for an RCU grace period
    (milliseconds), which is why the engine moves PID 1 while PID 1 is busy mounting.
    ``fds`` are the cgroup.procs files opened beforehand (they are closed here): a process
    sharing the container's mount namespace loses the host's paths once PID 1 has pivoted;
    for the same reason ``proc_fd`` (the host's /proc, opened beforehand) is where the
    evidence is read from.
    """
    shown = procs_files[0] if len(procs_files) == 1 else f"{procs_files[0]} (+{len(procs_files) - 1} more)"
    step = Step("cgroup_join", call=f'write "{pid}" > {shown}', shell=f"echo {pid or '$$'} > {shown}",
                why="a process joins a cgroup (控制组) by writing its pid to cgroup.procs; its children inherit it")
    step.do(_write_procs, procs_files, pid, fds,
            evidence=lambda: {f"/proc/{pid or 'self'}/cgroup": _cgroups_of(pid, proc_fd)})
    return step


def _cgroups_of(pid: int, proc_fd: int | None = None) -> str:
    try:
        fd = os.open(f"{pid or 'self'}/cgroup", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd) if proc_fd is not None \
            else os.open(f"/proc/{pid or 'self'}/cgroup", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        # the join itself succeeded: what is missing is a /proc to read it back from (the
        # caller's mount namespace lost the host's /proc at pivot_root), or the process is gone
        return (f"not readable from here: this mount namespace has no /proc/{pid or 'self'} (no /proc mounted "
                "since pivot_root, or the process has exited); on the host, read /proc/<its host pid>/cgroup")
    with open(fd) as f:
        return "; ".join(line.strip() for line in f if "minicontainer" in line)


def setup_rootfs(spec: ContainerSpec) -> list[Step]:
    """Mount the container's filesystem tree and pivot_root into it."""
    steps = [mounts.make_mounts_private(),
             mounts.mount_overlay(spec.lowers, spec.upper, spec.work, spec.rootfs)]
    for volume in spec.volumes:
        steps += mounts.bind_volume(spec.rootfs, volume)
    steps += [mounts.mount_proc(spec.rootfs), mounts.mount_dev(spec.rootfs),
              mounts.mount_sys(spec.rootfs, spec.sys_readonly),
              mounts.pivot_root(spec.rootfs), mounts.detach_old_root()]
    if spec.readonly:
        steps.append(mounts.remount_readonly("/"))
    return steps


def find_executable(name: str, path_env: str) -> str:
    """Resolve a command like the shell would, inside the (already pivoted) root."""
    candidates = [name] if "/" in name else [os.path.join(d or ".", name) for d in path_env.split(":")]
    for candidate in candidates:
        try:
            st = os.stat(candidate)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            if not os.access(candidate, os.X_OK):
                raise ExecError(f"exec: {name!r}: permission denied (the file is not executable)", 126)
            return candidate
    where = "no such file" if "/" in name else "executable file not found in $PATH"
    raise ExecError(f"exec: {name!r}: {where}", 127)


def check_executable_format(path: str) -> None:
    """What the kernel would say with ENOEXEC, said first: the last execve (by the sealed
    trampoline) can only exit 127 when it fails, with nobody left to explain why."""
    try:
        with open(path, "rb") as f:
            head = f.read(20)
    except OSError:
        return   # unreadable but executable (mode 0111): let the kernel decide
    if head[:2] == b"#!":
        return
    if head[:4] != b"\x7fELF":
        raise ExecError(f"exec: {path!r}: exec format error (a script without #!, or not a program)", 126)
    machine = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
    if machine != _ELF_MACHINE.get(os.uname().machine, machine):
        raise ExecError(f"exec: {path!r}: exec format error (built for another platform: ELF machine {machine})", 126)


_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _execve(path: str, args: list[str], env: list[str]) -> None:
    env_map = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    # Python ignores SIGPIPE and SIGXFSZ, and execve keeps an ignored signal ignored: the
    # command must get the defaults (`yes | head` ends by SIGPIPE, not by EPIPE errors)
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        # never a plain execve: see sealed_exec.py for why /proc/self/exe must not be the host's Python then
        exec_sealed(path, args, env_map)
    except OSError as exc:
        raise ExecError(f"exec: {path!r}: {exc.strerror}", 126) from None


def take_controlling_terminal() -> Step:
    """setsid(), then ioctl(0, TIOCSCTTY): the pty on stdin becomes this session's terminal, so
    Ctrl-C typed into it reaches the command as SIGINT, and a shell can do job control."""
    import fcntl
    import termios

    step = Step("controlling_terminal", call="setsid(); ioctl(0, TIOCSCTTY, 0)", shell="setsid --ctty …",
                why="-t: the command's stdin, stdout and stderr are a pseudo-terminal (伪终端), which becomes its "
                    "controlling terminal")

    def take() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    step.do(take)
    return step


def apply_security_profile(spec: ContainerSpec) -> None:
    """The last steps before exec: hide and protect kernel files, drop capabilities, no_new_privs, seccomp.

    Masking needs CAP_SYS_ADMIN, so it comes first; after the capabilities are dropped the
    container's root can't undo any of it (no mount, no remount read-write). The seccomp
    filter goes last, so it needn't allow what the runtime itself does before exec, except
    without no_new_privs: then the kernel accepts a filter only from a holder of
    CAP_SYS_ADMIN, so it goes in before the capabilities are dropped (as runc does).
    """
    in_own_mount_ns = trace.is_planning() or os.stat("/proc/self/ns/mnt").st_ino != _HOST_MOUNT_NS
    if in_own_mount_ns:
        if spec.masked_paths:
            mounts.mask_paths(spec.masked_paths)
        if spec.readonly_paths:
            mounts.readonly_paths(spec.readonly_paths)
    if spec.seccomp is not None and not spec.no_new_privileges:
        seccomp.load_filter(spec.seccomp)
    security.drop_capabilities(spec.capabilities, user=tuple(spec.user) if tuple(spec.user) != (0, 0, ()) else None)
    if spec.no_new_privileges:
        security.no_new_privileges()
        if spec.seccomp is not None:
            seccomp.load_filter(spec.seccomp)


def exec_command(spec: ContainerSpec, stdio: tuple[int, int, int] | None = None) -> None:
    """Apply the security profile, chdir, set stdio, close every other fd on exec, then execve."""
    if trace.is_planning():
        apply_security_profile(spec)
        Step("execve", call=f"execve({spec.args[0] if spec.args else '?'!r}, {spec.args!r}, env[{len(spec.env)}])",
             shell=" ".join(spec.args), why="the init process replaces itself with the command").do(lambda: None)
        return
    if not spec.args:
        raise ExecError("no command: the image has no Cmd/Entrypoint, so give one after the image name", 125)
    try:
        os.chdir(spec.cwd)
    except OSError:
        raise ExecError(f"working directory {spec.cwd!r} does not exist in the container: create it or pick another -w", 126) from None
    path = find_executable(spec.args[0], spec.path_env())
    check_executable_format(path)
    if stdio is not None:
        for target, fd in enumerate(stdio):
            if fd != target:
                os.dup2(fd, target)
    if spec.terminal:
        take_controlling_terminal()
    apply_security_profile(spec)
    syscalls.close_range_cloexec(3)
    step = Step("execve", call=f"execveat(<sealed memfd: the exec trampoline>, {path!r}, {spec.args!r}); "
                                f"the trampoline: execve({path!r}, {spec.args!r}, env[{len(spec.env)}])",
                shell=" ".join(spec.args),
                why="the init process replaces itself with the command: from now on PID 1 *is* the command "
                    "(by way of a sealed copy of a tiny program, so /proc/self/exe never leads to a host binary)")
    # execve never returns on success, so the step is recorded just before it
    step.do(lambda: None)
    trace.flush()
    _execve(path, spec.args, spec.env)


def container_init(spec: ContainerSpec, stdio: tuple[int, int, int] | None = None,
                   wait_for_cgroup: Callable[[], None] | None = None) -> None:
    """Everything PID 1 does in order, ending in execve (which does not return).

    With ``wait_for_cgroup``, another process (the engine's setup child) moves us into the
    cgroup while we mount; we wait for it to finish just before exec, so the command starts
    inside its limits. Without it, we join the cgroup ourselves first.
    """
    if spec.cgroup_procs and wait_for_cgroup is None:
        join_cgroup(spec.cgroup_procs)
    setup_rootfs(spec)
    if "uts" in spec.namespaces and spec.hostname:
        namespaces.set_hostname(spec.hostname)
    if "net" in spec.namespaces:
        namespaces.bring_up_loopback()
    if wait_for_cgroup is not None:
        wait_for_cgroup()
    if "cgroup" in spec.namespaces:  # after joining: the cgroup we are in becomes this namespace's "/"
        namespaces.unshare_namespaces(["cgroup"])
    exec_command(spec, stdio)
