"""``minicontainer runtime``: an OCI runtime over a bundle, with runc's verbs and runc's behaviour.

    create ──► created ──start──► running ──(its command exits, or kill)──► stopped ──delete──► (gone)
                 │ ▲                 │ ▲
           pause │ │ resume    pause │ │ resume
                 ▼ │                 ▼ │
                paused              paused

A container's state lives in ``<root>/<id>/``: ``state.json`` (written atomically) and,
while it is *created*, ``exec.fifo``. Its status is never stored; it is read from the
kernel each time, as runc does: no live init process → stopped; its cgroup frozen →
paused; the fifo still there → created (the init is blocked opening it); else running.

``create`` forks a child that joins or creates the namespaces, which forks the container's
init (PID 1 of a new pid namespace) and exits. So the init outlives ``create``: nobody
waits for it but the host's init, or ``run``, which makes itself a child subreaper first.
"""
from __future__ import annotations

import errno
import gc
import json
import os
import re
import select
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field

from .. import trace
from ..atomic import write_atomic, write_json_atomic
from ..errors import MinicontainerError

# The kernel's and config.json's modules are imported by the verbs that need them: `state`,
# `list` and `start` then start in half the time.
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from ..kernel.cgroups import Cgroup
    from . import bundle_init
    from .bundle_config import BundleConfig, Hook

# The runtime spec version whose state JSON `state` prints (oci.OCI_VERSION; a test keeps them
# equal). Not imported: `state`, `kill` and `list` start faster without config.json's modules,
# which create and run import when they need them.
OCI_VERSION = "1.2.0"

ID_PATTERN = re.compile(r"^[\w+\-.]+$")   # runc's container id rule
FIFO = "exec.fifo"
STATE = "state.json"
PR_SET_CHILD_SUBREAPER = 36
# signals a Python init would otherwise ignore as PID 1: while blocked before execve it
# must die of them as runc's init does (execve resets the handlers for the command)
INIT_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGALRM, signal.SIGPIPE)


class RuntimeFailure(MinicontainerError):
    """A runtime verb failed; runc exits 1 for every such failure, and so do we."""

    exit_code = 1


def default_root() -> str:
    """Where container states live: ``$MINICONTAINER_RUN/runtime`` (runc's is /run/runc)."""
    return os.path.join(os.environ.get("MINICONTAINER_RUN", "/run/minicontainer"), "runtime")


def rfc3339(ns: int) -> str:
    """A timestamp as Go's RFC3339Nano prints it (runc's "created")."""
    seconds, fraction = divmod(ns, 1_000_000_000)
    digits = f"{fraction:09d}".rstrip("0")
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + (f".{digits}" if digits else "") + "Z"


@dataclass
class ContainerRecord:
    """What ``state.json`` keeps about one container."""

    id: str
    bundle: str
    rootfs: str
    created: str
    init_pid: int = 0
    init_start: int = 0                 # the init's start time (/proc/PID/stat field 22): pids get reused
    annotations: dict[str, str] = field(default_factory=dict)
    cgroup_name: str = ""
    cgroup_paths: dict[str, str] = field(default_factory=dict)
    cgroup_parents: list[str] = field(default_factory=list)   # directories we made for linux.cgroupsPath
    hooks: dict[str, list[dict]] = field(default_factory=dict)
    config: dict = field(default_factory=dict)   # config.json as create read it: later edits don't count
    creator_pid: int = 0                # the `create` process, while the container is "creating"
    creator_start: int = 0


def process_start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if the process is dead or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


class Container:
    """One container of the runtime: its record on disk and its status read from the kernel."""

    def __init__(self, root: str, record: ContainerRecord):
        self.root = root
        self.record = record

    @property
    def dir(self) -> str:
        return os.path.join(self.root, self.record.id)

    @property
    def fifo(self) -> str:
        return os.path.join(self.dir, FIFO)

    def init_alive(self) -> bool:
        pid = self.record.init_pid
        return pid > 0 and process_start_time(pid) == self.record.init_start

    def status(self) -> str:
        """creating, created, running or stopped, as the kernel shows it right now."""
        if not self.record.init_pid:   # a create still at work, or one that died (then: stopped, deletable)
            alive = process_start_time(self.record.creator_pid) == self.record.creator_start
            return "creating" if self.record.creator_pid and alive else "stopped"
        if not self.init_alive():
            return "stopped"
        if self.frozen():
            return "paused"
        return "created" if os.path.exists(self.fifo) else "running"

    def frozen(self) -> bool:
        """Is the container's cgroup frozen (`pause`)? Read from the freezer, never stored."""
        cgroup = self.cgroup()
        try:
            return cgroup is not None and cgroup.is_frozen()
        except OSError:
            return False

    def state(self, status: str | None = None) -> dict:
        """The runtime spec's state JSON (with runc's extra rootfs, created and owner)."""
        status = status or self.status()
        out = {"ociVersion": OCI_VERSION, "id": self.record.id,
               "pid": self.record.init_pid if status != "stopped" else 0, "status": status,
               "bundle": self.record.bundle, "rootfs": self.record.rootfs, "created": self.record.created}
        if self.record.annotations:
            out["annotations"] = self.record.annotations
        out["owner"] = ""
        return out

    def cgroup(self) -> Cgroup | None:
        if not self.record.cgroup_paths:
            return None
        from ..kernel.cgroups import open_cgroup

        return open_cgroup(self.record.cgroup_name, paths=self.record.cgroup_paths)

    def save(self) -> None:
        write_json_atomic(os.path.join(self.dir, STATE), asdict(self.record), mode=0o600, durable=False)


# ---- the state directory ----------------------------------------------------------------
def check_id(container_id: str) -> None:
    if not container_id:
        raise RuntimeFailure("container id cannot be empty")
    if not ID_PATTERN.match(container_id) or container_id in (".", ".."):
        raise RuntimeFailure("invalid container ID format")


def load(root: str, container_id: str) -> Container:
    """The container ``container_id``, or runc's "container does not exist"."""
    check_id(container_id) if container_id else None
    try:
        with open(os.path.join(root, container_id, STATE)) as f:
            data = json.load(f)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        raise RuntimeFailure("container does not exist") from None
    return Container(root, ContainerRecord(**data))


def list_containers(root: str) -> list[Container]:
    """Every container with a readable state, in id order."""
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        try:
            found.append(load(root, name))
        except RuntimeFailure:
            continue   # a create still in progress, or a foreign file
    return found


# ---- cgroups ------------------------------------------------------------------------------
def cgroup_name(container_id: str) -> str:
    """The cgroup's name: the id (after MINICONTAINER_CGROUP_TAG, as the engine's), in cgroupfs' alphabet."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", container_id)[:100]
    tag = os.environ.get("MINICONTAINER_CGROUP_TAG")
    return f"{tag}-{name}" if tag else name


def cgroup_for(config: BundleConfig, container_id: str) -> tuple[Cgroup, list[str]]:
    """The container's cgroup (not created yet): linux.cgroupsPath if given, else ours; plus parents to make.

    An absolute cgroupsPath is relative to each hierarchy's root, a relative one to the
    runtime's own cgroup, as runc's cgroupfs driver does.
    """
    name = cgroup_name(container_id)
    from ..kernel import cgroups

    default = cgroups.open_cgroup(name)
    path = config.cgroups_path
    if not path:
        return default, []
    if default.version == 2:
        base = os.path.dirname(default.paths()["unified"]) if not path.startswith("/") else cgroups.DEFAULT_ROOT
        paths = {"unified": os.path.join(base, path.lstrip("/"))}
    else:
        own = {} if path.startswith("/") else cgroups.read_own_cgroups()
        bases = cgroups.v1_cgroup_dirs(name, cgroups.read_mounts(), own)
        paths = {c: os.path.join(os.path.dirname(d), path.lstrip("/")) for c, d in bases.items()}
    parents = []
    for directory in dict.fromkeys(paths.values()):
        parent = os.path.dirname(directory)
        missing = []
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        parents += reversed(missing)
    return cgroups.open_cgroup(name, paths=paths), parents


def set_up_cgroup(config: BundleConfig, cgroup: Cgroup, parents: list[str]) -> None:
    """Create the cgroup (and the parents cgroupsPath needs) and write linux.resources: limits, then devices."""
    from ..kernel import cgroups

    made = []
    try:
        for parent in parents:
            os.mkdir(parent)
            made.append(parent)
        cgroup.create()
        cgroup.set_limits(cgroups.Limits(memory=config.memory, cpus=config.cpus, pids=config.pids))
        if config.devices is not None:
            cgroup.allow_devices(config.devices)
    except BaseException:
        cgroup.remove()
        for parent in reversed(made):
            os.rmdir(parent)
        raise


# ---- hooks --------------------------------------------------------------------------------
def run_hooks(kind: str, hooks: list[Hook], state: dict, *, warn_only: bool = False) -> None:
    """Run each hook with the state JSON on its stdin, as the runtime spec says.

    The first failure raises; with ``warn_only`` (poststart, poststop: the spec says a
    failure there is only a warning) it is logged and the remaining hooks still run.
    """
    for i, hook in enumerate(hooks):
        try:
            _run_hook(kind, i, hook, state)
        except RuntimeFailure as exc:
            if not warn_only:
                raise
            warn(str(exc))


def _run_hook(kind: str, i: int, hook: Hook, state: dict) -> None:
    """One hook: its path, args and env from config.json; the state JSON on stdin; killed after its timeout."""
    import subprocess
    env = dict(item.split("=", 1) if "=" in item else (item, "") for item in hook.env)
    try:
        done = subprocess.run(hook.args, executable=hook.path, input=json.dumps(state).encode(), env=env,
                              capture_output=True, timeout=hook.timeout, close_fds=True)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"error running {kind} hook #{i}: timeout after {hook.timeout} seconds") from None
    except OSError as exc:
        raise RuntimeFailure(f"error running {kind} hook #{i}: {exc.strerror.lower()}") from None
    if done.returncode != 0:
        how = f"exit status {done.returncode}" if done.returncode > 0 else f"signal: {-done.returncode}"
        raise RuntimeFailure(f"error running {kind} hook #{i}: {how}, stdout: {done.stdout.decode().strip()}, "
                             f"stderr: {done.stderr.decode().strip()}")


def hooks_of(record: ContainerRecord, kind: str) -> list[Hook]:
    from .bundle_config import Hook

    return [Hook(**h) for h in record.hooks.get(kind, [])]


# ---- create -------------------------------------------------------------------------------
def create(root: str, container_id: str, bundle: str, pid_file: str | None = None) -> Container:
    """Set the container up and leave its init blocked before execve; return once it is "created"."""
    check_id(container_id)
    os.makedirs(root, mode=0o700, exist_ok=True)
    state_dir = os.path.join(root, container_id)
    try:
        os.mkdir(state_dir, 0o711)
    except FileExistsError:
        raise RuntimeFailure("container with given ID already exists") from None
    cgroup, parents, init_pid = None, [], 0
    pid_file = os.path.abspath(pid_file) if pid_file else None   # before the chdir below
    try:
        try:
            os.chdir(bundle)   # runc resolves the bundle from inside it, with its wording
        except OSError as exc:
            raise RuntimeFailure(f"chdir {bundle}: {exc.strerror.lower()}") from None
        from .bundle_config import load_bundle_config

        config = load_bundle_config(os.getcwd())
        if not os.path.isdir(config.rootfs):   # runc's words
            raise RuntimeFailure(f"invalid rootfs: stat {config.rootfs}: no such file or directory")
        record = ContainerRecord(id=container_id, bundle=config.bundle, rootfs=config.rootfs,
                                 created=rfc3339(time.time_ns()), annotations=config.annotations,
                                 hooks={k: [asdict(h) for h in v] for k, v in config.hooks.items()},
                                 config=config.raw,
                                 creator_pid=os.getpid(), creator_start=process_start_time(os.getpid()) or 0)
        container = Container(root, record)
        planned, parents = cgroup_for(config, container_id)
        record.cgroup_name, record.cgroup_paths, record.cgroup_parents = planned.name, planned.paths(), parents
        container.save()   # from here on, a create killed half-way leaves a record `delete` cleans up
        set_up_cgroup(config, planned, parents)
        cgroup = planned
        if config.seccomp is not None:
            # compiled here, before fork: after pivot_root the init can't import libseccomp's bindings
            from ..kernel import seccomp

            seccomp.compile_filter(config.seccomp)
        os.mkfifo(container.fifo, 0o622)
        os.chmod(container.fifo, 0o622)   # mkfifo honours the umask; the init may write as any user
        init_pid = launch(config, container, cgroup)
        container.save()
        if pid_file:
            write_atomic(pid_file, str(init_pid).encode(), mode=0o644, durable=False)
        return container
    except BaseException:
        if init_pid:
            _kill(init_pid)
        if cgroup is not None:
            cgroup.kill_all()
            cgroup.remove()
            for parent in reversed(parents):
                os.rmdir(parent)
        shutil.rmtree(state_dir, ignore_errors=True)
        raise


def launch(config: BundleConfig, container: Container, cgroup: Cgroup) -> int:
    """Fork the namespaces' child and the container's init; walk the init through its setup."""
    import socket

    from . import bundle_init   # imported before fork: after pivot_root nothing can be imported
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    # opened here, as runc does: the init may run as a user who can't reach the state directory,
    # and after pivot_root it can't see it at all; O_PATH doesn't block, nor does it open the fifo
    fifo_fd = os.open(container.fifo, os.O_PATH | os.O_CLOEXEC)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    pid = os.fork()
    if pid == 0:
        ours.close()
        gc.disable()   # the children only make syscalls and exec: a collection would copy the heap
        _namespace_child(config, theirs.detach(), fifo_fd)
    theirs.close()
    os.close(fifo_fd)
    channel = bundle_init.Channel(ours.fileno())
    init_pid = 0
    try:
        message = _expect(channel, pid)
        if "map" in message:   # a new user namespace: its id maps are written from out here
            write_id_maps(message["map"], config)
            channel.send({"mapped": True})
            message = _expect(channel, pid)
        init_pid = message["init_pid"]
        _waitpid(pid)
        container.record.init_pid = init_pid
        container.record.init_start = process_start_time(init_pid) or 0
        cgroup.attach(init_pid)
        channel.send({"go": True, "cgroup_dirs": cgroup.paths()})
        while True:
            message = _expect(channel, init_pid)
            if "hooks" in message:
                state = container.state("creating")
                try:
                    run_hooks("prestart", config.hooks.get("prestart", []), state)
                    run_hooks("createRuntime", config.hooks.get("createRuntime", []), state)
                finally:
                    channel.send({"hooks_done": True})
            elif "ready" in message:
                return init_pid
    except BaseException:
        if init_pid:
            _kill(init_pid)
        _waitpid(pid)
        raise
    finally:
        ours.close()


def _expect(channel: bundle_init.Channel, pid: int) -> dict:
    """The children's next message; the Steps they took on the way go into the active trace (--trace)."""
    message = channel.receive()
    while message is not None and "step" in message:
        active = trace.active()
        if active is not None:
            active.add(trace.Step.from_dict(message["step"]))
        message = channel.receive()
    if message is None:
        raise RuntimeFailure("unable to start container process: the container's init exited during setup")
    if "error" in message:
        raise RuntimeFailure(f"unable to start container process: {message['error']}")
    return message


def write_id_maps(pid: int, config: BundleConfig) -> None:
    """uid_map and gid_map of a new user namespace: only a process outside it may write them."""
    for name, mappings in (("uid_map", config.uid_mappings), ("gid_map", config.gid_mappings)):
        text = "".join(f"{m.inside} {m.host} {m.size}\n" for m in mappings)
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def _namespace_child(config: BundleConfig, fd: int, fifo_fd: int) -> None:
    """Join the namespaces config.json names by path, create the rest, fork the init. Never returns."""
    from ..kernel import namespaces, syscalls
    from . import bundle_init

    flags = {"user": syscalls.CLONE_NEWUSER, **{k: v[0] for k, v in namespaces.NAMESPACES.items()}}
    channel = bundle_init.Channel(fd)
    _send_steps(channel)
    try:
        kinds = config.namespaces
        # the user namespace first: the others are then joined or created as its members
        for kind in ("user", "ipc", "uts", "net", "pid", "mnt", "cgroup"):
            if kinds.get(kind):
                ns = os.open(kinds[kind], os.O_RDONLY | os.O_CLOEXEC)
                try:   # naming the type makes the kernel refuse a path to another kind of namespace
                    syscalls.setns(ns, flags[kind])
                except MinicontainerError:
                    raise RuntimeFailure(f"setns {kinds[kind]}: invalid argument: is it a {kind} namespace?") \
                        from None
                os.close(ns)
        if "user" in kinds and not kinds["user"]:
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            channel.send({"map": os.getpid()})
            if channel.receive() is None:
                os._exit(1)
            os.setresgid(0, 0, 0)
            os.setresuid(0, 0, 0)
        new = [k for k in ("pid", "mnt", "uts", "ipc", "net") if k in kinds and not kinds[k]]
        if new:
            namespaces.unshare_namespaces(new)
        init_pid = os.fork()
        if init_pid == 0:
            _init(config, channel, fifo_fd)
        channel.send({"init_pid": init_pid})
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - report anything, then _exit
        _report(channel, exc)
        os._exit(1)


def _send_steps(channel: bundle_init.Channel) -> None:
    """In a child: if the runtime records a trace, send each Step there as it is taken."""
    if trace.active() is not None:
        trace._active = trace.Trace(sink=lambda step: channel.send({"step": step.to_dict()}))


def _exit_on_signal(sig: int, _frame) -> None:
    os._exit(128 + sig)


def _init(config: BundleConfig, channel: bundle_init.Channel, fifo_fd: int) -> None:
    """The container's init: set up, report ready, block on exec.fifo, execve. Never returns."""
    from ..kernel import namespaces
    from . import bundle_init

    try:
        _send_steps(channel)
        for sig in INIT_EXIT_SIGNALS:
            signal.signal(sig, _exit_on_signal)
        go = channel.receive()
        if go is None:
            os._exit(1)
        if "cgroup" in config.namespaces and not config.namespaces["cgroup"]:
            # after the runtime moved us into the cgroup: it becomes this namespace's "/"
            namespaces.unshare_namespaces(["cgroup"])
        bundle_init.build_root(config, go["cgroup_dirs"])
        channel.send({"hooks": True})
        if channel.receive() is None:
            os._exit(1)
        bundle_init.enter_root(config)
        path = bundle_init.lookup_executable(config)
        home = bundle_init.home_of(config.uid)   # read while /etc/passwd is still readable as root
        bundle_init.restrict_process(config)
        channel.send({"ready": True})
        os.close(channel.fd)
    except BaseException as exc:  # noqa: BLE001
        _report(channel, exc)
        os._exit(1)
    try:
        bundle_init.wait_for_start(fifo_fd)
        bundle_init.exec_process(path, config, home)
    except OSError as exc:
        os.write(2, f"exec {json.dumps(config.args[0])}: {exc.strerror.lower()}\n".encode())
        os._exit(127 if exc.errno == errno.ENOENT else 126)
    os._exit(127)


def _report(channel: bundle_init.Channel, exc: BaseException) -> None:
    if isinstance(exc, OSError) and exc.strerror:   # "mkdir /x/proc: permission denied", as runc says it
        message = f"{exc.filename}: {exc.strerror.lower()}" if exc.filename else exc.strerror.lower()
    else:
        message = str(exc) if isinstance(exc, MinicontainerError) else f"{type(exc).__name__}: {exc}"
    try:
        channel.send({"error": message.splitlines()[0] if message else type(exc).__name__})
    except OSError:
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _waitpid(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


# ---- start, kill, delete ------------------------------------------------------------------
def start(root: str, container_id: str) -> Container:
    """Let a created container's init go on to execve: open exec.fifo for reading, then remove it."""
    container = load(root, container_id)
    status = container.status()
    if status == "stopped":
        raise RuntimeFailure("cannot start a container that has stopped")
    if status == "running":
        raise RuntimeFailure("cannot start an already running container")
    if status != "created":
        raise RuntimeFailure(f"cannot start a container in the {status} state")
    step = trace.Step("start", call=f"open({container.fifo}, O_RDONLY); read() -> \"0\"; unlink",
                      shell=f"cat {container.fifo} && rm {container.fifo}",
                      why="the init is blocked opening exec.fifo for writing: a reader lets it go on to execve")
    step.do(_release_init, container)
    run_hooks("poststart", hooks_of(container.record, "poststart"), container.state("running"), warn_only=True)
    return container


def _release_init(container: Container) -> None:
    """Open exec.fifo for reading and take the init's "0": its blocked open returns and it execs."""
    try:
        fd = os.open(container.fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise RuntimeFailure("cannot start an already running container") from None
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        # the init may still be on its way to the fifo: wait for its "0", as long as it lives
        while not poller.poll(100):
            if not container.init_alive():
                raise RuntimeFailure("cannot start a container that has stopped")
        if os.read(fd, 1) != b"0":   # another start got there first, or the init died
            raise RuntimeFailure("cannot start an already running container" if container.init_alive()
                                 else "cannot start a container that has stopped")
    finally:
        os.close(fd)
    os.unlink(container.fifo)


def parse_signal(text: str) -> int:
    """A signal as runc's kill takes it: a number, or a name with or without SIG, any case."""
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise RuntimeFailure(f"unknown signal {json.dumps(text)}") from None


def kill(root: str, container_id: str, sig: str = "SIGTERM", all_processes: bool = False) -> None:
    """Send a signal to the container's init (or, with all_processes, to every process in its cgroup)."""
    container = load(root, container_id)
    number = parse_signal(sig)
    status = container.status()
    if status not in ("created", "running", "paused"):
        raise RuntimeFailure("container not running")
    cgroup = container.cgroup()
    targets = cgroup.pids() if all_processes and cgroup is not None else [container.record.init_pid]
    for pid in targets:
        try:
            os.kill(pid, number)
        except ProcessLookupError:
            continue
        except OSError as exc:
            raise RuntimeFailure(f"unable to signal init: {exc.strerror.lower()}") from None
    if status == "paused" and number == signal.SIGKILL and cgroup is not None:
        cgroup.thaw()   # a frozen task takes its SIGKILL only once it runs again (runc thaws too)


def pause(root: str, container_id: str) -> None:
    """Freeze every process of a created or running container (the freezer cgroup; no signal is sent)."""
    container = load(root, container_id)
    if container.status() not in ("created", "running"):
        raise RuntimeFailure("container not running")
    container.cgroup().freeze()


def resume(root: str, container_id: str) -> None:
    """Thaw a paused container: its processes run on from where they were."""
    container = load(root, container_id)
    if container.status() != "paused":
        raise RuntimeFailure("container not paused")
    container.cgroup().thaw()


def delete(root: str, container_id: str, force: bool = False) -> None:
    """Remove a stopped (or created) container: its processes, cgroup and state; then the poststop hooks."""
    try:
        container = load(root, container_id)
    except RuntimeFailure:
        if force:
            return
        raise
    status = container.status()
    if status in ("running", "creating", "paused") and not force:
        raise RuntimeFailure(f"cannot delete container {container_id} that is not stopped: {status}")
    destroy(container)


def destroy(container: Container) -> None:
    """Kill whatever is left, remove the cgroup and the state directory, run poststop hooks."""
    if container.init_alive():
        _kill(container.record.init_pid)
    cgroup = container.cgroup()
    if cgroup is not None:
        cgroup.kill_all()
        cgroup.remove()
        for parent in reversed(container.record.cgroup_parents):
            try:
                os.rmdir(parent)
            except OSError:
                pass   # another container uses it now
    state = container.state("stopped")
    shutil.rmtree(container.dir, ignore_errors=True)
    # the container is gone either way: a failing hook is a warning, the others still run
    run_hooks("poststop", hooks_of(container.record, "poststop"), state, warn_only=True)


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# where warnings go: the command line points this at its --log settings
warning_sink = _stderr_warning


def warn(message: str) -> None:
    """A warning (a poststop hook that failed …): the container's fate doesn't depend on it."""
    warning_sink(message)


# ---- run ----------------------------------------------------------------------------------
def run(root: str, container_id: str, bundle: str, pid_file: str | None = None, detach: bool = False) -> int:
    """create + start; without detach, wait for the command and return its exit code, then delete."""
    if not detach:
        # the init's parent exits during create; as a subreaper we inherit it and can wait for it
        from ..kernel.syscalls import libc

        libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    container = create(root, container_id, bundle, pid_file)
    pid = container.record.init_pid
    forward = lambda sig, _frame: _signal(pid, sig)  # noqa: E731
    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP,
                                                              signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)}
    try:
        try:
            start(root, container_id)
        except BaseException:
            destroy(container)
            raise
        if detach:
            return 0
        status = _waitpid(pid)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    destroy(container)
    return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---- spec ---------------------------------------------------------------------------------
def default_spec() -> dict:
    """The config.json ``runtime spec`` writes: runc spec's, but with terminal off (no tty support yet)."""
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh"],
                    "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
                    "cwd": "/",
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "ambient": caps},
                    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
                    "noNewPrivileges": True},
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def write_spec(bundle: str = ".") -> str:
    """Write the default config.json into ``bundle``, refusing to overwrite one, as runc does."""
    path = os.path.join(bundle, "config.json")
    if os.path.exists(path):
        raise RuntimeFailure("File config.json exists. Remove it first")
    with open(path, "w") as f:
        json.dump(default_spec(), f, indent="\t")
    return path
