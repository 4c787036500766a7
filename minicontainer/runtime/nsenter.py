"""exec: start another process inside a running container, the way nsenter(1) and runc exec do.

    engine                     helper (forked)                  the new process
    ──────                     ───────────────                  ───────────────
    fork() ─────────────────►  open /proc/PID1/ns/*, cgroup.procs
                               setns(ipc, uts, net, cgroup, pid)
                               fork() ─────────────────────────► born inside the pid namespace
                                                                  joins the container's cgroup
                                                                  setns(mnt): its / is the container's
                                                                  chdir, capabilities, no_new_privs,
                                                                  seccomp, execve (sealed trampoline)
    reads steps, then ◄─────── waits, reports the exit status

The new process gets exactly what PID 1 got, read from the same config.json: the same
namespaces, cgroup (so the same limits), capabilities, no_new_privs and seccomp filter.
Nothing is mounted or masked again: that lives in the mount namespace it joins.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal

from .. import trace
from ..kernel import namespaces, syscalls
from ..trace import Step
from . import init, process
from .spec import ContainerSpec

# setns order: the mount namespace last, since joining it changes what paths mean
JOIN_ORDER = ("ipc", "uts", "net", "cgroup", "pid", "mnt")


def _join(fds: dict[str, int], kinds: tuple[str, ...]) -> Step:
    """setns(2) into each of the container's namespaces (the pid one takes effect for our children)."""
    names = syscalls.namespace_flag_names(namespaces.namespace_flags(list(kinds)))
    step = Step("setns", call=f"setns(/proc/PID/ns/{{{','.join(kinds)}}}) ({names})",
                shell=f"nsenter --target PID {' '.join(namespaces.NAMESPACES[k][1] for k in kinds)}",
                why="join the container's namespaces: see its processes, hostname, network and files")

    def join() -> None:
        for kind in kinds:
            syscalls.setns(fds[kind], namespaces.NAMESPACES[kind][0])
            os.close(fds[kind])
    step.do(join)
    return step


def _child(spec: ContainerSpec, procs_fds: list[int], mnt_fd: int | None, stdio: tuple[int, int, int]) -> None:
    """In the new process: cgroup, mount namespace, then what init's last steps do. Never returns."""
    for fd in procs_fds:
        os.write(fd, b"0")   # the cgroup.procs files, opened on the host's paths beforehand
        os.close(fd)
    if mnt_fd is not None:
        _join({"mnt": mnt_fd}, ("mnt",))
    for sig in process.FORWARDED_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    init.exec_command(spec, stdio)


def _helper(pid: int, spec: ContainerSpec, trace_w: int, status_w: int, stdio: tuple[int, int, int],
            close_after_fork: list[int], engine: int) -> None:
    """The engine's child: join, fork the new process, wait for it. Never returns."""
    try:
        process._child_trace(trace_w)
        for sig in process.FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        syscalls.set_parent_death_signal(signal.SIGKILL, parent=engine)
        kinds = tuple(k for k in JOIN_ORDER if k in spec.namespaces)
        fds = {k: os.open(f"/proc/{pid}/ns/{k}", os.O_RDONLY | os.O_CLOEXEC) for k in kinds}
        procs_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.cgroup_procs]
        mnt_fd = fds.pop("mnt", None)
        _join(fds, tuple(k for k in kinds if k != "mnt"))
        trace.flush()
        child = process._fork()
        if child == 0:
            try:
                syscalls.set_parent_death_signal(signal.SIGKILL)
                _child(spec, procs_fds, mnt_fd, stdio)
            except BaseException as exc:  # noqa: BLE001 - report anything, then _exit
                process._fail(trace_w, exc)
            os._exit(127)
        for fd in (*procs_fds, *([mnt_fd] if mnt_fd is not None else []), *close_after_fork):
            os.close(fd)
        process._send(status_w, {"init_pid": child})
        os.close(trace_w)
        status = process._waitpid(child)
        os.write(status_w, f"status {status}\n".encode())
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001
        process._fail(trace_w, exc)


def exec_in_container(pid: int, spec: ContainerSpec, stdio: tuple[int, int, int] = (0, 1, 2),
                      close_in_child: tuple[int, ...] = ()) -> process.ContainerProcess:
    """Start ``spec.args`` inside the container whose PID 1 is host pid ``pid``; return once it exec'd.

    ``spec`` is the container's own (from its bundle), with args, env, cwd changed for this
    process. The result's wait() gives the exit code, as for PID 1.
    """
    # the masks and read-only mounts are already in the mount namespace it joins: not again
    spec = dataclasses.replace(spec, masked_paths=(), readonly_paths=())
    if spec.seccomp is not None:
        from ..kernel import seccomp
        seccomp.compile_filter(spec.seccomp)   # here: the child only loads it
    trace_r, trace_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    step = Step("fork", call="fork()", shell="", why="the engine never changes its own namespaces: a child does it")
    engine = os.getpid()
    helper = step.do(process._fork)
    if helper == 0:
        for fd in (trace_r, status_r, *close_in_child):
            os.close(fd)
        _helper(pid, spec, trace_w, status_w, stdio, sorted({fd for fd in stdio if fd > 2}), engine)
    return process.await_exec(helper, trace_r, trace_w, status_r, status_w, "the exec helper", exit_code=126)
