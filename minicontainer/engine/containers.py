"""Container records on disk: containers/<id>/{config.json,state.json,upper,work,rootfs}.

Every state change is written atomically (write-temp, fsync, rename), so a crash leaves
either the old state or the new one.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import file_lock, write_json_atomic
from ..errors import InvalidArgument, StateError
from .paths import containers_dir

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
    created_at: float = 0.0

    @property
    def dir(self) -> Path:
        return containers_dir() / self.id

    def save(self) -> None:
        write_json_atomic(self.dir / "config.json", asdict(self))

    def read_state(self) -> ContainerState:
        try:
            return ContainerState(**json.loads((self.dir / "state.json").read_text()))
        except FileNotFoundError:
            return ContainerState()

    def write_state(self, state: ContainerState) -> None:
        write_json_atomic(self.dir / "state.json", asdict(state))


def new_id() -> str:
    """A 64-hex container id, like docker's."""
    return os.urandom(32).hex()


def create_record(**fields: Any) -> ContainerRecord:
    """Reserve the name, make the container's directories and write config + state atomically."""
    base = containers_dir()
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
        tmp = base / f".new-{cid}"
        for sub in ("upper", "work", "rootfs"):
            (tmp / sub).mkdir(parents=True)
        os.rename(tmp, record.dir)
        record.save()
        record.write_state(ContainerState())
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
    if not record.dir.exists():
        return
    doomed = record.dir.with_name(f".rm-{record.id}")
    os.rename(record.dir, doomed)
    shutil.rmtree(doomed)
