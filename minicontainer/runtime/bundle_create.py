"""``runtime create``: set a container up from a bundle and leave its init blocked before execve.

    runtime (host)                 namespace child                  init (PID 1 of the container)
    ──────────────                 ───────────────                  ─────────────────────────────
    state.json, cgroup, exec.fifo
    fork() ──────────────────────► setns(path) / unshare(new ones)
                                   fork() ────────────────────────► waits for "go"
    ◄── init's pid ─────────────── exits
    id maps, cgroup.procs ── "go" ────────────────────────────────► mounts (before pivot_root)
    prestart, createRuntime hooks ◄── "hooks" ───────────────────── waits
                               ── "hooks_done" ───────────────────► pivot_root, sysctl, masks,
                                                                    user, capabilities, seccomp
    returns: "created" ◄──────── "ready" ────────────────────────── blocks opening exec.fifo

The init outlives ``create``: nobody waits for it but the host's init, or ``run``, which
makes itself a child subreaper first.
"""
from __future__ import annotations

import errno
import gc
import json
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import asdict

from .. import trace
from ..atomic import write_atomic
from ..errors import MinicontainerError
from .bundle_state import Container, ContainerRecord, RuntimeFailure, check_id, process_start_time, rfc3339, warn

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from ..kernel.cgroups import Cgroup
    from . import bundle_init
    from .bundle_config import BundleConfig, Hook

# signals a Python init would otherwise ignore as PID 1: while blocked before execve it
# must die of them as runc's init does (execve resets the handlers for the command)
INIT_EXIT_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                     signal.SIGALRM, signal.SIGPIPE)


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
    # the engine's driver leaves cpuset and blkio alone; linux.resources may need them too
    extra = [] if default.version == 2 else \
        list(dict.fromkeys(f.controller for f in config.cgroup_files if f.controller not in default.paths()))
    if not path and not extra:
        return default, []
    if default.version == 2:
        base = os.path.dirname(default.paths()["unified"]) if not path.startswith("/") else cgroups.DEFAULT_ROOT
        paths = {"unified": os.path.join(base, path.lstrip("/"))}
    else:
        paths = default.paths()
        for controller in extra:   # named as the engine's driver names the others
            paths[controller] = os.path.join(_hierarchy_for(config, controller, cgroups.read_own_cgroups()),
                                             os.path.basename(paths["memory"]))
        if path:
            own = {} if path.startswith("/") else cgroups.read_own_cgroups()
            paths = {c: os.path.join(_hierarchy_for(config, c, own), path.lstrip("/")) for c in paths}
    parents = []
    for directory in dict.fromkeys(paths.values()):
        parent = os.path.dirname(directory)
        missing = []
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        parents += reversed(missing)
    return cgroups.open_cgroup(name, paths=paths), parents


def _hierarchy_for(config: BundleConfig, controller: str, own: dict[str, str]) -> str:
    """v1_hierarchy_dir, refusing by name the config.json field that needs a controller this kernel lacks."""
    try:
        return v1_hierarchy_dir(controller, own)
    except RuntimeFailure:
        needing = [f.field for f in config.cgroup_files if f.controller == controller]
        if not needing:
            raise
        raise RuntimeFailure(f"config.json: {needing[0]} needs the {controller} cgroup controller, which no "
                             "cgroup v1 hierarchy here carries; remove it") from None


def v1_hierarchy_dir(controller: str, own: dict[str, str]) -> str:
    """The directory of ``own[controller]`` (or the root) in the v1 hierarchy that carries ``controller``."""
    from ..kernel import cgroups

    for mount in cgroups.read_mounts():
        if mount.fstype == "cgroup" and controller in mount.super_options \
                and mount.mount_point.startswith(cgroups.DEFAULT_ROOT + "/"):
            own_path = own.get(controller, "/")
            # /proc/self/cgroup is relative to the hierarchy's root; the mount may show a subtree of it
            if mount.root != "/" and (own_path + "/").startswith(mount.root.rstrip("/") + "/"):
                own_path = own_path[len(mount.root):] or "/"
            return os.path.join(mount.mount_point, own_path.lstrip("/"))
    raise RuntimeFailure(f"no cgroup v1 hierarchy carries the {controller} controller here: mount one with "
                         f"`mount -t cgroup -o {controller} cgroup /sys/fs/cgroup/{controller}`")


def set_up_cgroup(config: BundleConfig, cgroup: Cgroup, parents: list[str]) -> None:
    """Create the cgroup (and the parents cgroupsPath needs) and write linux.resources: limits, then devices."""
    from ..kernel import cgroups

    made = []
    try:
        for parent in parents:
            os.mkdir(parent)
            made.append(parent)
        cgroup.create()
        if "cpuset" in cgroup.paths():
            inherit_cpuset(cgroup.paths()["cpuset"])
        cgroup.set_limits(cgroups.Limits(memory=config.memory, pids=config.pids))
        set_cpu_bandwidth(config, cgroup)
        write_cgroup_files(config, cgroup)
        if config.devices is not None:
            cgroup.allow_devices(config.devices)
    except BaseException:
        try:
            remove_container_cgroup(cgroup, made)
        except (MinicontainerError, OSError):
            pass   # the error that stopped the setup is the one to report, not a failed clean-up after it
        raise


def remove_container_cgroup(cgroup: Cgroup, parents: list[str]) -> None:
    """Kill what is left in the container's cgroup, remove the cgroups below it (a delegated
    cgroup may have some; runc removes them too), the cgroup itself, then the parents made for it."""
    from ..kernel.cgroups import remove_child_cgroups

    cgroup.kill_all()
    for directory in dict.fromkeys(cgroup.paths().values()):
        remove_child_cgroups(directory)
    cgroup.remove()
    for parent in reversed(parents):
        try:
            os.rmdir(parent)
        except OSError:
            pass   # another container uses it now


def inherit_cpuset(directory: str) -> None:
    """Fill an empty cpuset.cpus and cpuset.mems from the parent's, top down to ``directory``.

    A new v1 cpuset cgroup starts with no CPUs and no memory nodes, and the kernel refuses
    to move a process into it (ENOSPC) until both are set; runc copies the parent's too.
    """
    from ..kernel import cgroups

    parent = os.path.dirname(directory)
    if os.path.exists(os.path.join(parent, "cpuset.cpus")):
        inherit_cpuset(parent)
    for name in ("cpuset.cpus", "cpuset.mems"):
        with open(os.path.join(directory, name)) as f:
            if f.read().strip():
                continue
        with open(os.path.join(parent, name)) as f:
            value = f.read().strip()
        cgroups.write_cgroup_file(os.path.join(directory, name), value,
                                  "a new cpuset cgroup has no CPUs or memory nodes: take the parent's")


def set_cpu_bandwidth(config: BundleConfig, cgroup: Cgroup) -> None:
    """linux.resources.cpu period and quota: cpu.cfs_period_us and cpu.cfs_quota_us (v1), cpu.max (v2)."""
    from ..kernel import cgroups

    if config.cpu_quota is None and config.cpu_period is None:
        return
    period = config.cpu_period or cgroups.CFS_PERIOD_US
    why = f"CFS lets the cgroup run {config.cpu_quota or 'unlimited'} us of CPU time in every period of {period} us"
    if cgroup.version == 2:
        cgroups.write_cgroup_file(os.path.join(cgroup.paths()["unified"], "cpu.max"),
                                  f"{config.cpu_quota or 'max'} {period}", why)
        return
    cpu = cgroup.paths()["cpu"]
    cgroups.write_cgroup_file(os.path.join(cpu, "cpu.cfs_period_us"), str(period), why)
    if config.cpu_quota is not None:
        cgroups.write_cgroup_file(os.path.join(cpu, "cpu.cfs_quota_us"), str(config.cpu_quota), why)


def write_cgroup_files(config: BundleConfig, cgroup: Cgroup) -> None:
    """The rest of linux.resources, each written to its v1 file (the kernel checks the value)."""
    from ..kernel import cgroups

    if config.cgroup_files and cgroup.version == 2:
        raise RuntimeFailure(f"config.json: {config.cgroup_files[0].field} is set, but minicontainer's runtime "
                             "writes it on cgroup v1 only and this host has cgroup v2; remove it")
    for setting in config.cgroup_files:
        directory = cgroup.paths()[setting.controller]
        path = os.path.join(directory, setting.name)
        twin = os.path.join(directory, setting.name.replace("blkio.", "blkio.bfq.", 1))
        if not os.path.exists(path) and setting.name in BFQ_TWINS and os.path.exists(twin):
            path = twin   # with the BFQ I/O scheduler the weights have these names (runc writes them too)
        if not os.path.exists(path):   # e.g. cpu.rt_runtime_us without CONFIG_RT_GROUP_SCHED
            raise RuntimeFailure(f"config.json: {setting.field} needs {setting.name}, which this kernel does not "
                                 "have; remove it")
        cgroups.write_cgroup_file(path, setting.value, f"{setting.field} from config.json")
        if setting.name == "memory.kmem.limit_in_bytes" and _read_first(path) != setting.value:
            warn(f"{setting.field}: the kernel accepted {setting.value} but ignores it (kernel memory limits "
                 "are deprecated in cgroup v1)")


BFQ_TWINS = ("blkio.weight", "blkio.weight_device")


def _read_first(path: str) -> str:
    with open(path) as f:
        return f.readline().strip()


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
        if config.shares_mounts and "mnt" not in config.namespaces:
            record.host_root_mounts = mounts_at(config.rootfs)
            container.save()
        init_pid = launch(config, container, cgroup)
        container.save()
        if pid_file:
            write_atomic(pid_file, str(init_pid).encode(), mode=0o644, durable=False)
        return container
    except BaseException:
        if init_pid:
            sigkill(init_pid)
        if cgroup is not None:
            try:
                remove_container_cgroup(cgroup, parents)
            except (MinicontainerError, OSError):
                pass   # report what stopped the create, not a failed clean-up after it
        if os.path.exists(os.path.join(state_dir, "state.json")):
            release_host_mounts(container.record)
        shutil.rmtree(state_dir, ignore_errors=True)
        raise


def mounts_at(path: str) -> int:
    """How many mounts are stacked at ``path`` in the runtime's mount namespace."""
    from ..kernel import cgroups

    path = os.path.realpath(path)   # mountinfo shows the path the kernel resolved
    return sum(1 for m in cgroups.read_mounts() if m.mount_point == path)


def release_host_mounts(record: ContainerRecord) -> None:
    """A container without a mount namespace mounted its root (and all under it) in the host's: detach it.

    The kernel won't do it for us, as it does when a mount namespace dies; runc leaves them.
    One lazy umount2 of the root mount takes every mount beneath it along.
    """
    if record.host_root_mounts < 0:
        return
    from ..kernel import syscalls

    for _ in range(mounts_at(record.rootfs) - record.host_root_mounts):
        step = trace.Step("umount_rootfs", call=f'umount2("{record.rootfs}", MNT_DETACH)',
                          shell=f"umount -l {record.rootfs}",
                          why="the container shared the host's mount namespace: its mounts are the host's to remove")
        step.do(syscalls.umount2, record.rootfs, syscalls.MNT_DETACH)


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
        not_dumpable()
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
        reap(pid)
        container.record.init_pid = init_pid
        container.record.init_start = process_start_time(init_pid) or 0
        cgroup.attach(init_pid)
        channel.send({"go": True, "cgroup_dirs": cgroup.paths()})
        while True:
            message = _expect(channel, init_pid)
            if "hooks" in message:
                state = container.hook_state("creating")
                try:
                    run_hooks("prestart", config.hooks.get("prestart", []), state)
                    run_hooks("createRuntime", config.hooks.get("createRuntime", []), state)
                finally:
                    channel.send({"hooks_done": True})
            elif "ready" in message:
                return init_pid
    except BaseException:
        if init_pid:
            sigkill(init_pid)
        reap(pid)
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


PR_SET_DUMPABLE = 4


def not_dumpable() -> None:
    """prctl(PR_SET_DUMPABLE, 0) in a child that will enter the container, until its execve.

    Until then it runs the host's Python: /proc/PID/exe is the host's interpreter. A
    non-dumpable process's /proc files belong to root and need CAP_SYS_PTRACE to open, which
    a container's processes lack, so nothing inside can open that binary (runc's init does
    the same). execve makes the command dumpable again.
    """
    from ..kernel.syscalls import libc

    libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)


def sigkill(pid: int) -> None:
    """SIGKILL ``pid`` if it still exists."""
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def reap(pid: int) -> int:
    """waitpid(2) for a child of ours: its wait status (0 if it isn't ours)."""
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0
