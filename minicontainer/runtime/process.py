"""Start a container process: fork, unshare, fork again, run the init sequence, exec.

    engine (host)                 setup child                    container init (PID 1)
    ─────────────                 ───────────                    ──────────────────────
    fork() ───────────────────►   unshare(pid|mnt|uts|ipc|net)
                                  fork() ──────────────────────►  born as PID 1 of the new pid ns
                                  write its pid to cgroup.procs   mounts, pivot_root, hostname, lo …
                                  "joined" ───── sync pipe ─────►  unshare(cgroup), execve(command)
    reads steps from a pipe  ◄────────────────────────────────── the steps, in batches
    EOF on the pipe = execve happened (the pipe is close-on-exec)
                                  waitpid(init)
    reads the exit status   ◄──── writes init's wait status, exits

The second fork is there because unshare(CLONE_NEWPID) only moves the caller's *next
child* into the new pid namespace. The setup child moves PID 1 into the cgroup while
PID 1 mounts (moving a process can wait for an RCU grace period, milliseconds), and
waits for PID 1 so the engine can still collect its exit status.

The engine may be a multi-threaded Jupyter kernel, where fork() is only safe if the
child touches nothing another thread might hold a lock on. So everything is imported
and computed before fork; the children only make syscalls, write to pipes and exec.
"""
from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field

from .. import trace
from ..errors import MinicontainerError
from ..kernel import namespaces, seccomp, syscalls
from ..trace import Step
from .init import ExecError, container_init, join_cgroup
from .spec import ContainerSpec


# Signals an engine forwards to the container's PID 1 (docker's sig-proxy). The setup child
# ignores them: a Ctrl-C reaches the whole foreground process group, and the waiter must
# survive to report PID 1's exit status. PID 1 gets default handling back before execve.
FORWARDED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


class ContainerStartError(MinicontainerError):
    """The container's init sequence failed before exec; carries docker-style exit codes."""

    def __init__(self, message: str, exit_code: int = 125):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class ContainerProcess:
    """A started container: the host pid of its PID 1, and how to wait for it."""

    init_pid: int                 # the container's PID 1, as the host sees it
    setup_pid: int                # the engine's direct child, which waits for init
    status_fd: int
    steps: list[Step] = field(default_factory=list)
    exit_status: int | None = None  # raw wait status of PID 1 once it has exited

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the container's PID 1 (forwarding, like docker's sig-proxy)."""
        try:
            os.kill(self.init_pid, sig)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Block until PID 1 exits; return its exit code, 128+N for a signal, as docker does.

        The setup child reports the status *before* it exits, and its own exit is where the
        kernel tears the namespaces down; call :meth:`reap` after cleaning up so that the
        teardown overlaps with the engine's own work.
        """
        if self.exit_status is None:
            line = _read_line(self.status_fd).decode()
            # no status line: the setup child itself was killed (say, by kill -9)
            self.exit_status = int(line.split()[1]) if line.startswith("status ") else 0x09
        return os.waitstatus_to_exitcode(self.exit_status) if os.WIFEXITED(self.exit_status) \
            else 128 + os.WTERMSIG(self.exit_status)

    def reap(self, *, block: bool = True) -> None:
        """Collect the setup child (after :meth:`wait`), so no zombie is left.

        Its exit is where the kernel tears the container's namespaces down (unmounting the
        overlay, freeing the network namespace), which can take tens of milliseconds of RCU
        grace periods. With ``block=False`` a daemon thread waits for it instead, so the
        caller has the exit code and a clean cgroup without waiting for that teardown.
        """
        if self.status_fd < 0:
            return
        os.close(self.status_fd)
        self.status_fd = -1
        if block:
            _waitpid(self.setup_pid)
            return
        try:
            if os.waitpid(self.setup_pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:
            return
        threading.Thread(target=_waitpid, args=(self.setup_pid,), daemon=True,
                         name=f"reap-{self.setup_pid}").start()

    @property
    def killed_by_signal(self) -> int | None:
        if self.exit_status is not None and os.WIFSIGNALED(self.exit_status):
            return os.WTERMSIG(self.exit_status)
        return None


def read_to_eof(fd: int) -> bytes:
    """Everything a pipe gives until its writers have all closed it."""
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except InterruptedError:
            continue
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _waitpid(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def _send(fd: int, record: dict) -> None:
    data = (json.dumps(record) + "\n").encode()
    while data:
        data = data[os.write(fd, data):]


def _fork() -> int:
    # Python 3.12+ warns that fork() in a multi-threaded process may deadlock the child.
    # Our children only make syscalls and exec (see the module docstring), so it can't.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        # A garbage collection in the child would touch every object and copy every page
        # of the parent's heap (copy-on-write); the child execs soon, so skip it.
        gc.disable()
    return pid


class PipeTrace(trace.Trace):
    """A child's trace: steps are kept, then sent to the engine in one write on flush().

    One write per batch rather than per step spares the engine a wake-up for every step.
    The child flushes before it forks, before execve, and when it fails.
    """

    def __init__(self, fd: int):
        super().__init__()
        self.fd = fd

    def flush(self) -> None:
        if self.steps:
            data = "".join(json.dumps({"step": s.to_dict()}) + "\n" for s in self.steps).encode()
            self.steps = []
            while data:
                data = data[os.write(self.fd, data):]


def _child_trace(fd: int) -> None:
    """In a child: record steps for the engine (sent by flush()) instead of keeping them."""
    trace._active = PipeTrace(fd)


def _fail(fd: int, exc: BaseException) -> None:
    code = getattr(exc, "exit_code", 125)
    message = str(exc) if isinstance(exc, (MinicontainerError, OSError)) else f"{type(exc).__name__}: {exc}"
    try:
        trace.flush()  # the steps taken so far, the failed one last
        _send(fd, {"error": message, "exit_code": code})
    finally:
        os._exit(code if 0 < code < 256 else 125)


def record_init_fork(forked_at: float = 0.0) -> Step:
    """Record, from inside the new child, that it was born as PID 1 of the new pid namespace.

    ``forked_at`` (time.monotonic() just before fork) dates the step from the fork itself,
    so the trace's timeline shows it before what the parent does next.
    """
    step = Step("fork", call="fork()", shell="unshare --fork …",
                why="after unshare(CLONE_NEWPID) only a new child enters the pid namespace, as its PID 1")
    # /proc is still the host's procfs here, so /proc/self names our pid as the host sees it
    step.do(lambda: f"PID {os.getpid()} inside, host pid {os.readlink('/proc/self')}")
    if forked_at:
        step.duration += step.started - forked_at
        step.started = forked_at
    return step


def _setup_child(spec: ContainerSpec, trace_w: int, status_w: int, stdio: tuple[int, int, int],
                 close_after_fork: list[int], engine: int) -> None:
    """The engine's child: unshare, then fork PID 1 and wait for it. Never returns."""
    try:
        _child_trace(trace_w)
        for sig in FORWARDED_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        syscalls.set_parent_death_signal(signal.SIGKILL, parent=engine)
        before = [k for k in spec.namespaces if k != "cgroup"]  # cgroup ns: after joining the cgroup
        if before:
            namespaces.unshare_namespaces(before)
        trace.flush()  # before the fork, so these steps arrive ahead of the child's
        # PID 1 mounts its rootfs while we move it into the cgroup; it waits on this pipe
        # before exec, so the command never runs outside its limits (runc syncs the same way)
        joined_r, joined_w = os.pipe2(os.O_CLOEXEC)
        # opened now: once PID 1 has pivoted, our shared mount namespace no longer has these paths
        procs_fds = [os.open(path, os.O_WRONLY | os.O_CLOEXEC) for path in spec.cgroup_procs]
        proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)   # for the join's evidence
        forked_at = time.monotonic()
        init_pid = _fork()
        if init_pid == 0:
            try:
                for fd in (joined_w, proc_fd, *procs_fds):
                    os.close(fd)
                record_init_fork(forked_at)
                for sig in FORWARDED_SIGNALS:  # an ignored signal would stay ignored after execve
                    signal.signal(sig, signal.SIG_DFL)
                syscalls.set_parent_death_signal(signal.SIGKILL)
                container_init(spec, stdio, wait_for_cgroup=lambda: _wait_until_joined(joined_r))
            except BaseException as exc:  # noqa: BLE001 - report anything, then _exit
                _fail(trace_w, exc)
            os._exit(127)  # not reached: container_init ends in execve
        os.close(joined_r)
        for fd in close_after_fork:
            os.close(fd)
        _send(status_w, {"init_pid": init_pid})
        if spec.cgroup_procs:
            join_cgroup(spec.cgroup_procs, init_pid, fds=procs_fds, proc_fd=proc_fd)
        os.close(proc_fd)
        trace.flush()
        os.close(trace_w)  # from now on only the container's init holds the step pipe open
        os.write(joined_w, b"1")
        os.close(joined_w)
        status = _waitpid(init_pid)
        os.write(status_w, f"status {status}\n".encode())
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001
        _fail(trace_w, exc)


def _wait_until_joined(fd: int) -> None:
    """In PID 1: block until the setup child has moved us into the cgroup."""
    if os.read(fd, 1) != b"1":
        os._exit(125)  # the setup child failed; it reports why
    os.close(fd)


def start_container(spec: ContainerSpec, stdio: tuple[int, int, int] = (0, 1, 2),
                    close_in_child: tuple[int, ...] = ()) -> ContainerProcess:
    """Fork the container and return once its command has been exec'd (or raise why not).

    ``stdio`` are the fds that become the container's 0, 1 and 2. ``close_in_child`` are
    engine-side fds (pipe ends) the children must not keep open.
    """
    if spec.seccomp is not None:
        seccomp.compile_filter(spec.seccomp)   # in the engine: the child only loads the compiled program
    trace_r, trace_w = os.pipe2(os.O_CLOEXEC)
    status_r, status_w = os.pipe2(os.O_CLOEXEC)
    step = Step("fork", call="fork()", shell="", why="the engine never changes its own namespaces: a child does it")
    engine = os.getpid()
    pid = step.do(_fork)
    if pid == 0:
        for fd in (trace_r, status_r, *close_in_child):
            os.close(fd)
        _setup_child(spec, trace_w, status_w, stdio, sorted({fd for fd in stdio if fd > 2}),   # a pty: one fd thrice
                     engine)
    step.result = f"setup child is host pid {pid}"
    return await_exec(pid, trace_r, trace_w, status_r, status_w, "the container's setup process")


def await_exec(child: int, trace_r: int, trace_w: int, status_r: int, status_w: int, who: str,
               exit_code: int = 125) -> ContainerProcess:
    """In the engine, after forking ``child``: collect its steps until the command exec'd (EOF
    on the close-on-exec pipe), then the started process's pid; or raise the reported error."""
    os.close(trace_w)
    os.close(status_w)
    steps, error = _collect_steps(trace_r)
    os.close(trace_r)
    active = trace.active()
    if active is not None:
        active.extend(steps)
    if error is not None:
        os.close(status_r)
        _waitpid(child)
        raise ContainerStartError(error["error"], error.get("exit_code", exit_code))
    first = _read_line(status_r)
    if not first:
        os.close(status_r)
        _waitpid(child)
        raise ContainerStartError(f"{who} died before starting its command")
    return ContainerProcess(json.loads(first)["init_pid"], child, status_r, steps)


def _read_line(fd: int) -> bytes:
    out = b""
    while not out.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            break
        out += chunk
    return out


def _collect_steps(fd: int) -> tuple[list[Step], dict | None]:
    """Read step records until EOF: EOF means init exec'd (close-on-exec) or died."""
    steps, error = [], None
    for line in read_to_eof(fd).splitlines():
        record = json.loads(line)
        if "step" in record:
            steps.append(Step.from_dict(record["step"]))
        elif "error" in record:
            error = record
    # two processes took these steps, partly at the same time: order them by when they started
    steps.sort(key=lambda s: s.started)
    return steps, error
