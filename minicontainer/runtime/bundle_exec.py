"""``runtime exec``: start another process in a container, as ``runc exec`` (and ``docker exec``) do.

There is no "enter" system call. A process joins a container by joining each of its
namespaces with setns(2), through the init's ``/proc/PID/ns/*`` files, and by writing its
pid into the container's cgroup:

    runtime (host)            child                                  grandchild
    ──────────────            ─────                                  ──────────
    fork() ─────────────────► open /proc/INIT/ns/*
                              write its pid to cgroup.procs
                              setns(user, ipc, uts, net, pid, mnt, cgroup)
                              fork() ──────────────────────────────► in the container's pid ns
    waits for the command ◄── sends the grandchild's host pid, exits  rlimits, user, capabilities,
    (a child subreaper: the                                          no_new_privs, seccomp, cwd
     orphan comes to us)                                             execve(command)

The pid namespace is joined like it is created: only children enter it, hence the second
fork. The process gets config.json's ``process`` (as create read it), with the command,
environment, cwd, user and capabilities the flags change.
"""
from __future__ import annotations

import copy
import json
import os
import signal

from .bundle_create import not_dumpable
from .bundle_state import RuntimeFailure, load, process_start_time

# the order runc joins them in: the user namespace first, so the rest are joined from inside it
JOIN_ORDER = (("user", "user"), ("ipc", "ipc"), ("uts", "uts"), ("net", "net"), ("pid", "pid"), ("mnt", "mnt"),
              ("cgroup", "cgroup"))
PR_SET_CHILD_SUBREAPER = 36


class ExecFailure(RuntimeFailure):
    """runc exec exits 255 when it can't start the process."""

    exit_code = 255


def exec_process(root: str, container_id: str, args: list[str], *, env: list[str] = (), cwd: str = "",
                 user: str = "", additional_gids: list[int] = (), caps: list[str] = (), no_new_privs: bool = False,
                 process_file: str = "", detach: bool = False, pid_file: str | None = None,
                 ignore_paused: bool = False) -> int:
    """Run ``args`` in the container; return its exit code (0 at once with ``detach``)."""
    container = load(root, container_id)
    status = container.status()
    if status == "stopped":
        raise ExecFailure("cannot exec in a stopped container")
    if status == "paused" and not ignore_paused:
        raise ExecFailure("cannot exec in a paused container (use --ignore-paused to override)")
    if status == "creating":
        raise ExecFailure("cannot exec in a container that is still being created")
    config = exec_config(container.record.config, container.record.bundle, args, env=env, cwd=cwd, user=user,
                         additional_gids=additional_gids, caps=caps, no_new_privs=no_new_privs,
                         process_file=process_file)
    if config.seccomp is not None:   # compiled before fork, as for create
        from ..kernel import seccomp

        seccomp.compile_filter(config.seccomp)
    pid_file = os.path.abspath(pid_file) if pid_file else None
    if not detach:
        from ..kernel.syscalls import libc

        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)   # the command's parent exits: we inherit it
    pid = _start(container, config)
    if pid_file:
        from ..atomic import write_atomic

        write_atomic(pid_file, str(pid).encode(), mode=0o644, durable=False)
    if detach:
        return 0
    return _wait(pid)


def exec_config(raw: dict, bundle: str, args: list[str], *, env, cwd, user, additional_gids, caps, no_new_privs,
                process_file):
    """config.json with its ``process`` replaced by the exec'd one (runc's rules for the flags)."""
    from .bundle_config import parse_config

    raw = copy.deepcopy(raw)
    if process_file:
        try:
            with open(process_file) as f:
                process = json.load(f)
        except (OSError, ValueError) as exc:
            raise ExecFailure(f"--process {process_file}: {exc}") from None
    else:
        if not args:
            raise ExecFailure("process args cannot be empty")
        process = raw.get("process") or {}
        process["args"] = list(args)
        process["env"] = list(process.get("env") or []) + list(env)
        if cwd:
            process["cwd"] = cwd
        process.setdefault("user", {})
        if user:
            uid, _, gid = user.partition(":")
            process["user"]["uid"] = int(uid)
            if gid:
                process["user"]["gid"] = int(gid)
        if additional_gids:
            process["user"]["additionalGids"] = list(additional_gids)
        for cap in caps:
            name = cap if cap.startswith("CAP_") else "CAP_" + cap.upper()
            sets = process.setdefault("capabilities", {})
            for key in ("bounding", "effective", "permitted", "inheritable", "ambient"):
                sets[key] = list(dict.fromkeys(list(sets.get(key) or []) + [name]))
        if no_new_privs:
            process["noNewPrivileges"] = True
    process["terminal"] = False
    raw["process"] = process
    try:
        return parse_config(raw, bundle)
    except RuntimeFailure:
        raise
    except Exception as exc:   # InvalidArgument from the config's checks, in exec's words
        raise ExecFailure(str(exc)) from None


def _start(container, config) -> int:
    """Fork the joining child; return the host pid of the process once it has exec'd (or raise why not)."""
    import socket

    from . import bundle_init   # before fork: after joining the mount namespace nothing can be imported

    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    child = os.fork()
    if child == 0:
        ours.close()
        not_dumpable()   # the host's Python until execve: nothing in the container may open /proc/PID/exe
        _join_and_fork(container, config, bundle_init.Channel(theirs.detach()))
    theirs.close()
    channel = bundle_init.Channel(ours.fileno())
    pid, error = 0, None
    try:
        while (message := channel.receive()) is not None:   # EOF: the command exec'd (the socket is CLOEXEC)
            pid = message.get("pid", pid)
            error = message.get("error", error)
    finally:
        ours.close()
        os.waitpid(child, 0)
    if error is not None or not pid:
        if pid:   # it failed before execve; as our subreaped child, collect it (detached: init does)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        raise ExecFailure(f"unable to start container process: {error or 'the joining process died'}")
    return pid


def _join_and_fork(container, config, channel) -> None:
    """In the child: join the container's cgroup and namespaces, fork the command's process. Never returns."""
    from ..kernel import namespaces, syscalls
    from . import bundle_init

    try:
        init = container.record.init_pid
        flags = {"user": syscalls.CLONE_NEWUSER, **{k: v[0] for k, v in namespaces.NAMESPACES.items()}}
        fds = []
        for kind, name in JOIN_ORDER:   # opened first: after joining the mount namespace, /proc is the container's
            if os.readlink(f"/proc/{init}/ns/{name}") != os.readlink(f"/proc/self/ns/{name}"):
                fds.append((kind, os.open(f"/proc/{init}/ns/{name}", os.O_RDONLY | os.O_CLOEXEC)))
        root_fd = None
        if not any(kind == "mnt" for kind, _ in fds):   # it shares our mount namespace: its root is a chroot
            root_fd = os.open(f"/proc/{init}/root", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        if process_start_time(init) != container.record.init_start:
            raise RuntimeFailure("the container's init exited")
        cgroup = container.cgroup()
        if cgroup is not None:
            cgroup.attach(os.getpid())   # the paths are the host's: before setns(mnt)
        for kind, fd in fds:
            syscalls.setns(fd, flags[kind])
            os.close(fd)
        if root_fd is not None:   # into the init's root, as it went there: chroot
            os.fchdir(root_fd)
            os.chroot(".")
            os.close(root_fd)
        pid = os.fork()
        if pid == 0:
            _run(config, channel)
        channel.send({"pid": pid})
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - report anything, then _exit
        _report(channel, exc)
        os._exit(1)


def _run(config, channel) -> None:
    """In the container: the process's limits, user and capabilities, then execve. Never returns."""
    from . import bundle_init

    try:
        path = bundle_init.lookup_executable(config)
        home = bundle_init.home_of(config.uid)
        bundle_init.restrict_process(config)
        bundle_init.exec_process(path, config, home)
    except BaseException as exc:  # noqa: BLE001
        _report(channel, exc)
        os._exit(255)


def _report(channel, exc: BaseException) -> None:
    if isinstance(exc, OSError) and exc.strerror:
        message = f"{exc.filename}: {exc.strerror.lower()}" if exc.filename else exc.strerror.lower()
    else:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    try:
        channel.send({"error": message})
    except OSError:
        pass


def _wait(pid: int) -> int:
    """Wait for the exec'd process (our child now, as a subreaper), forwarding signals to it; its exit code."""
    def forward(sig: int, _frame) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    forwarded = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
    previous = {sig: signal.signal(sig, forward) for sig in forwarded}
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:
                return 255   # not ours after all: nothing to wait for
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)
