"""ContainerSpec: everything the runtime needs to start one container process."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.mounts import Volume
from ..kernel.namespaces import DEFAULT_NAMESPACES


@dataclass
class ContainerSpec:
    """What to run and how to isolate it; the runtime turns this into Steps."""

    id: str
    args: list[str]
    rootfs: str                          # where the overlay is mounted (inside the container's mount ns)
    lowers: list[str]                    # image layer dirs, top layer first
    upper: str
    work: str
    env: list[str] = field(default_factory=list)
    cwd: str = "/"
    hostname: str = ""
    namespaces: tuple[str, ...] = DEFAULT_NAMESPACES
    volumes: list[Volume] = field(default_factory=list)
    readonly: bool = False
    cgroup_procs: list[str] = field(default_factory=list)   # cgroup.procs files to join

    def path_env(self) -> str:
        for item in self.env:
            if item.startswith("PATH="):
                return item[5:]
        return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
