"""``minicontainer runtime``: runc's verbs over a bundle, with runc's behaviour.

``create`` is in bundle_create.py, ``exec`` in bundle_exec.py, the containers' records and
status in bundle_state.py; here are the verbs that move a container along its lifecycle
(start, kill, pause, resume, delete), ``run`` (create + start + wait + delete) and ``spec``.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal

from .. import trace
from .bundle_create import create, hooks_of, reap, release_host_mounts, remove_container_cgroup, run_hooks, sigkill
# re-exported: the command line takes every verb from here
from .bundle_state import OCI_VERSION, Container, RuntimeFailure, default_root, list_containers, load  # noqa: F401

PR_SET_CHILD_SUBREAPER = 36


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
    run_hooks("poststart", hooks_of(container.record, "poststart"), container.hook_state("running"), warn_only=True)
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
        sigkill(container.record.init_pid)
    cgroup = container.cgroup()
    if cgroup is not None:
        remove_container_cgroup(cgroup, container.record.cgroup_parents)
    release_host_mounts(container.record)
    state = container.hook_state("stopped")
    shutil.rmtree(container.dir, ignore_errors=True)
    # the container is gone either way: a failing hook is a warning, the others still run
    run_hooks("poststop", hooks_of(container.record, "poststop"), state, warn_only=True)


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
        status = reap(pid)
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
