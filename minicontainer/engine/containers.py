"""Container records on disk.

    <root>/containers/<id>/config.json   what was asked for (durable: fsync + rename)
    <root>/containers/<id>/state.json    how it ended: created or exited, exit code (durable)
    <root>/containers/<id>/{upper,work,rootfs}
    <run>/containers/<id>.json           while it runs: status and pid (volatile, like
                                         runc's /run/runc; rename without fsync)

Every write is atomic (temp file + rename), so a crash leaves the old or the new state,
never a torn one. The running state is volatile on purpose: after a reboot the process is
gone whatever the file says, and `ps` reconciles a dead pid to "exited".
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which costs the CLI ~10 ms

if TYPE_CHECKING:
    from typing import Any

from ..atomic import file_lock, make_private_dir, write_json_atomic
from ..errors import InvalidArgument, MinicontainerError, StateError
from ..image.store import ENGINE_ENTRIES
from .paths import RUN_ENTRIES, containers_dir, run_dir

STATUSES = ("created", "running", "paused", "exited")


@dataclass
class ContainerState:
    """The mutable part of a container: its status and what happened to its process."""

    status: str = "created"
    pid: int = 0
    exit_code: int | None = None
    oom_killed: bool = False
    started_at: float = 0.0
    finished_at: float = 0.0
    monitor_pid: int = 0        # who watches it: a detached container's monitor, or a foreground run's CLI

    @property
    def starting(self) -> bool:
        """Created, with a process already starting it (the state between create and running)."""
        return self.status == "created" and self.monitor_pid != 0


@dataclass
class ContainerRecord:
    """The fixed part: what was asked for when the container was created."""

    id: str
    name: str
    image: str
    image_id: str
    args: list[str]
    env: list[str]
    cwd: str = "/"
    hostname: str = ""
    volumes: list[str] = field(default_factory=list)
    readonly: bool = False
    memory: int | None = None
    cpus: float | None = None
    pids_limit: int | None = None
    init: bool = False
    privileged: bool = False
    capabilities: list[str] = field(default_factory=list)
    no_new_privileges: bool = True
    created_at: float = 0.0
    auto_remove: bool = False     # --rm: removed as soon as it exits, even if found exited later by ps
    interactive: bool = False     # -i: its stdin stays open for `attach` (detached) or the terminal
    tty: bool = False             # -t: its stdio is a pseudo-terminal

    @property
    def dir(self) -> Path:
        return containers_dir() / self.id

    def save(self) -> None:
        write_json_atomic(self.dir / "config.json", asdict(self))

    @property
    def runtime_state_file(self) -> Path:
        return run_dir() / "containers" / f"{self.id}.json"

    def read_state(self) -> ContainerState:
        """The running state if the container runs, else the durable created/exited state."""
        for path in (self.runtime_state_file, self.dir / "state.json"):
            try:
                return ContainerState(**json.loads(path.read_text()))
            except FileNotFoundError:
                continue
        return ContainerState()

    def write_state(self, state: ContainerState) -> None:
        """Running, paused and starting go to the volatile run dir; created and exited are made durable."""
        if state.status in ("running", "paused") or state.starting:
            if not self.runtime_state_file.parent.is_dir():
                make_private_dir(run_dir(), ours=RUN_ENTRIES)
                self.runtime_state_file.parent.mkdir(exist_ok=True)
            write_json_atomic(self.runtime_state_file, asdict(state), durable=False)
            return
        write_json_atomic(self.dir / "state.json", asdict(state))
        self.runtime_state_file.unlink(missing_ok=True)


def new_id() -> str:
    """A 64-hex container id, like docker's."""
    return os.urandom(32).hex()


def create_record(*, durable: bool = True, **fields: Any) -> ContainerRecord:
    """Reserve the name, make the container's directories and write its config atomically.

    ``durable=False`` (for --rm containers, which are gone when they exit) skips the fsync:
    the write is still atomic, but a power cut may lose the record, as it would the container.
    """
    base = containers_dir()
    make_private_dir(base.parent, ours=ENGINE_ENTRIES)
    base.mkdir(parents=True, exist_ok=True)
    with file_lock(base / ".lock"):
        name = fields.get("name") or ""
        if name:
            if not all(c.isalnum() or c in "_.-" for c in name) or not name[0].isalnum():
                raise InvalidArgument(f"invalid container name {name!r}: use letters, digits, '_', '.', '-'")
            if any(r.name == name for r in list_records()):
                raise StateError(f"the container name {name!r} is already in use: remove that container or pick another --name")
        cid = new_id()
        record = ContainerRecord(id=cid, **{**fields, "name": name or cid[:12]}, created_at=time.time())
        # build the whole directory under a temporary name, then rename it into place:
        # a crash never leaves a container directory without its config
        tmp = base / f".new-{cid}"
        for sub in ("upper", "work", "rootfs"):
            (tmp / sub).mkdir(parents=True)
        write_json_atomic(tmp / "config.json", asdict(record), durable=durable)
        os.rename(tmp, record.dir)
    return record


def list_records() -> list[ContainerRecord]:
    base = containers_dir()
    records = []
    if base.exists():
        for entry in sorted(base.iterdir()):
            try:
                records.append(ContainerRecord(**json.loads((entry / "config.json").read_text())))
            except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):
                continue  # a directory being created or removed right now
    return records


def remove_record(record: ContainerRecord) -> None:
    """Delete the container's directory: rename first, so a crash never leaves half a record."""
    record.runtime_state_file.unlink(missing_ok=True)
    if not record.dir.exists():
        return
    import shutil

    doomed = record.dir.with_name(f".rm-{record.id}")
    os.rename(record.dir, doomed)
    shutil.rmtree(doomed)


class ContainerNotFound(MinicontainerError):
    exit_code = 1


def find_record(ref: str) -> ContainerRecord:
    """A container by name, full id or unique id prefix, as docker finds one."""
    records = list_records()
    for record in records:
        if ref in (record.name, record.id):
            return record
    matches = [r for r in records if ref and r.id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise InvalidArgument(f"container id prefix {ref!r} is ambiguous ({len(matches)} containers): give more of it")
    raise ContainerNotFound(f"no such container: {ref}")


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) if t else "0001-01-01T00:00:00Z"


def _graph_driver(record: ContainerRecord) -> dict:
    """The overlay's directories, as docker inspect's GraphDriver.Data shows them."""
    try:
        notes = json.loads((record.dir / "bundle" / "config.json").read_text()).get("annotations", {})
    except (FileNotFoundError, ValueError):
        notes = {}
    return {"LowerDir": notes.get("org.minicontainer.overlay.lowerdir", ""),
            "UpperDir": str(record.dir / "upper"), "WorkDir": str(record.dir / "work"),
            "MergedDir": str(record.dir / "rootfs")}


def _mount(volume: str) -> dict:
    source, _, rest = volume.partition(":")
    destination, _, mode = rest.partition(":")
    return {"Type": "bind", "Source": source, "Destination": destination, "Mode": mode, "RW": mode != "ro",
            "Propagation": "rprivate"}


def inspect_container(ref: str) -> dict:
    """docker container inspect's main fields, plus where the container's OCI bundle is."""
    record = find_record(ref)
    state = record.read_state()
    bundle = record.dir / "bundle"
    return {
        "Id": record.id,
        "Name": "/" + record.name if record.name else "",
        "Created": _iso(record.created_at),
        "Path": record.args[0] if record.args else "",
        "Args": record.args[1:],
        "State": {"Status": state.status, "Running": state.status in ("running", "paused"),
                  "Paused": state.status == "paused", "Pid": state.pid, "ExitCode": state.exit_code or 0,
                  "OOMKilled": state.oom_killed, "StartedAt": _iso(state.started_at),
                  "FinishedAt": _iso(state.finished_at)},
        "Image": record.image_id,
        "Config": {"Image": record.image, "Hostname": record.hostname or record.id[:12], "Env": record.env,
                   "Cmd": record.args, "WorkingDir": record.cwd, "Tty": record.tty, "OpenStdin": record.interactive},
        "HostConfig": {"Privileged": record.privileged, "ReadonlyRootfs": record.readonly,
                       "Memory": record.memory or 0, "NanoCpus": int((record.cpus or 0) * 1e9),
                       "PidsLimit": record.pids_limit, "Init": record.init, "Binds": record.volumes},
        "GraphDriver": {"Name": "overlay", "Data": _graph_driver(record)},
        "Mounts": [_mount(v) for v in record.volumes],
        # minicontainer's own: the OCI runtime bundle this container is run from (runc run --bundle)
        "Bundle": {"Path": str(bundle), "Config": str(bundle / "config.json")},
        "Capabilities": record.capabilities,
        "NoNewPrivileges": record.no_new_privileges,
    }
