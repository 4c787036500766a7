"""The runtime's containers on disk, and their status read from the kernel.

    create ──► created ──start──► running ──(its command exits, or kill)──► stopped ──delete──► (gone)
                 │ ▲                 │ ▲
           pause │ │ resume    pause │ │ resume
                 ▼ │                 ▼ │
                paused              paused

A container's state lives in ``<root>/<id>/``: ``state.json`` (written atomically) and,
while it is *created*, ``exec.fifo``. Its status is never stored; it is read from the
kernel each time, as runc does: no live init process → stopped; its cgroup frozen →
paused; the fifo still there → created (the init is blocked opening it); else running.
A ``create`` still at work is *creating*.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass, field

from ..atomic import write_json_atomic
from ..errors import MinicontainerError

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (CLI start-up time)
if TYPE_CHECKING:
    from ..kernel.cgroups import Cgroup

# The runtime spec version whose state JSON `state` prints (oci.OCI_VERSION; a test keeps them
# equal). Not imported: `state`, `kill` and `list` start faster without config.json's modules,
# which create and run import when they need them.
OCI_VERSION = "1.2.0"

ID_PATTERN = re.compile(r"^[\w+\-.]+$")   # runc's container id rule
FIFO = "exec.fifo"
STATE = "state.json"


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
    host_root_mounts: int = -1          # without a mount namespace: mounts at rootfs before create (ours stack on them)
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

    def hook_state(self, status: str) -> dict:
        """The state a hook reads on its stdin: the runtime spec's fields only (no pid once stopped), as runc's."""
        out = {"ociVersion": OCI_VERSION, "id": self.record.id, "status": status}
        if status != "stopped":
            out["pid"] = self.record.init_pid
        out["bundle"] = self.record.bundle
        if self.record.annotations:
            out["annotations"] = self.record.annotations
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


def _stderr_warning(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# where warnings go: the command line points this at its --log settings
warning_sink = _stderr_warning


def warn(message: str) -> None:
    """A warning (a poststop hook that failed …): the container's fate doesn't depend on it."""
    warning_sink(message)
