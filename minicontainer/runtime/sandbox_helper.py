"""The Sandbox helper: a separate process that takes container steps one at a time.

A notebook's kernel must never unshare, mount or pivot_root itself, so it starts this
helper (a fresh, single-threaded interpreter) and sends it one JSON request per line on
stdin; each reply (one JSON line on stdout) carries the Steps the request took. Between
requests the notebook can look at the helper from the host: /proc/PID/ns, its cgroup,
its mounts.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

from .. import trace
from ..kernel import mounts, namespaces, seccomp, security, syscalls
from ..kernel.mounts import Volume
from ..trace import Step
from . import init
from .process import record_init_fork
from .sealed_exec import exec_sealed
from .spec import ContainerSpec


def _unshare(kinds: list[str]) -> dict:
    namespaces.unshare_namespaces(kinds)
    if "pid" not in kinds:
        return {"pid": os.getpid()}
    # unshare(CLONE_NEWPID) moved only our *future children* into the new namespace, so
    # fork: the child, PID 1 over there, carries on serving requests; we wait for it.
    sys.stdout.flush()
    # our pid in /proc's terms: the child, PID 1 over there, reads its parent there (0: no /proc, no check)
    helper = int(os.readlink("/proc/self")) if os.path.exists("/proc/self") else 0
    child = os.fork()
    if child == 0:
        record_init_fork()
        # PID 1 of a namespace gets no default action for SIGTERM: without a handler, the
        # SIGTERM a Jupyter kernel sends its process group on shutdown would be ignored
        # here, and the kernel's shutdown would stall until it is killed outright
        signal.signal(signal.SIGTERM, lambda *_: os._exit(128 + signal.SIGTERM))
        # and it dies with us, whatever ends us. A Python handler runs between bytecodes, so a
        # SIGTERM that lands just before the blocking read of the next request waits for that
        # request; the kernel's SIGKILL on our death can't be missed, and no orphan is left
        syscalls.set_parent_death_signal(signal.SIGKILL, parent=helper)
        return {"pid": int(os.readlink("/proc/self"))}
    _, status = os.waitpid(child, 0)
    # pass the child's fate on: its exit code, or 128+N if a signal (say the OOM killer's) ended it
    os._exit(os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


# read at start, while /proc is still the host's: after pivot_root it may not be mounted
_HELD = security.held_capabilities()


# A command's stdin: never the helper's own (the notebook's request pipe), or `cat` would
# wait on it forever. Opened at start, while the host's /dev is still in view.
_NO_INPUT = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)


def _run(args: list[str], env: list[str], cwd: str, spec: ContainerSpec) -> dict:
    """Fork and exec a command inside the sandbox, capturing its output."""
    step = Step("run_command", call=f"fork(); drop capabilities, no_new_privs, seccomp; execve({args[0]!r}, {args!r}) "
                                    "by way of the sealed trampoline",
                shell=" ".join(args),
                why="a command started now inherits every namespace, mount and cgroup the sandbox has so far, "
                    "and gets the container's capabilities, no_new_privs and seccomp filter, as an exec'd "
                    "container would")
    keep = security.capability_mask(spec.capabilities) & _HELD
    program = seccomp.compile_filter(spec.seccomp) if spec.seccomp is not None else b""
    env_map = dict(e.split("=", 1) for e in env)
    try:
        path = init.find_executable(args[0], env_map.get("PATH", spec.path_env()))
        init.check_executable_format(path)
    except init.ExecError as exc:   # as a shell reports it: 127 not found, 126 not runnable
        step.do(lambda: None)
        step.result = f"exit {exc.exit_code}"
        return {"exit_code": exc.exit_code, "stdout": "", "stderr": f"{exc}\n"}

    def restrict_and_exec() -> None:   # in the forked child: subprocess has set up stdio and cwd
        if program and not spec.no_new_privileges:
            syscalls.set_seccomp_filter(program)
        security.restrict(keep, no_new_privs=spec.no_new_privileges, user=tuple(spec.user))
        if program and spec.no_new_privileges:
            syscalls.set_seccomp_filter(program)
        syscalls.close_range_cloexec(3)   # subprocess would close the rest after this hook; we exec here
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):   # Python ignores them; the command must not
            signal.signal(sig, signal.SIG_DFL)
        exec_sealed(path, args, env_map)

    done = step.do(lambda: subprocess.run(args, stdin=_NO_INPUT, capture_output=True, cwd=cwd, text=True,
                                          preexec_fn=restrict_and_exec, env=env_map))
    step.result = f"exit {done.returncode}"
    return {"exit_code": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def _write_line(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def handle(request: dict, spec: ContainerSpec) -> dict:
    op, a = request["op"], request.get("args", {})
    if op == "unshare":
        return _unshare(a["kinds"])
    if op == "sethostname":
        namespaces.set_hostname(a["name"])
    elif op == "loopback_up":
        namespaces.bring_up_loopback()
    elif op == "join_cgroup":
        init.join_cgroup(a["procs"])
        # its cgroup carries the device allow-list, so device nodes are harmless from now on
        spec.capabilities = tuple(a["capabilities"])
    elif op == "make_private":
        mounts.make_mounts_private()
    elif op == "mount_overlay":
        # first stop our mounts from propagating to the host (on a systemd host / is shared)
        mounts.make_mounts_private()
        mounts.mount_overlay(spec.lowers, spec.upper, spec.work, spec.rootfs)
    elif op == "bind_volume":
        mounts.bind_volume(spec.rootfs, Volume(a["source"], a["target"], a.get("readonly", False)))
    elif op == "mount_proc":
        mounts.mount_proc(spec.rootfs)
    elif op == "mount_dev":
        mounts.mount_dev(spec.rootfs)
    elif op == "mount_sys":
        mounts.mount_sys(spec.rootfs)
    elif op == "pivot_root":
        mounts.pivot_root(spec.rootfs)
        mounts.detach_old_root()
    elif op == "run":
        return _run(a["args"], spec.env, a.get("cwd", "/"), spec)
    elif op == "exec":
        # Steps go out as they happen: after execve this process *is* the command, and
        # everything it prints follows the last step line on the same pipe.
        trace._active = trace.Trace(sink=lambda s: _write_line({"step": s.to_dict()}))
        spec.args = a["args"]
        init.exec_command(spec, stdio=None)
    else:
        raise ValueError(f"unknown sandbox operation {op!r}")
    return {}


def serve(spec: ContainerSpec) -> None:
    """Answer requests until stdin closes; every reply lists the steps taken."""
    for line in sys.stdin:
        request = json.loads(line)
        with trace.recording() as tr:
            try:
                reply = {"ok": True, **handle(request, spec)}
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the notebook
                reply = {"ok": False, "error": str(exc) or type(exc).__name__}
        reply["steps"] = [s.to_dict() for s in tr.steps]
        _write_line(reply)


def main() -> None:
    spec = ContainerSpec(**json.loads(os.environ["MINICONTAINER_SANDBOX_SPEC"]))
    spec.volumes = []
    if spec.seccomp is not None:   # now, while libseccomp and its Python binding are still reachable
        seccomp.compile_filter(spec.seccomp)
    serve(spec)


if __name__ == "__main__":
    main()
