"""ContainerSpec: everything the runtime needs to start one container process."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..kernel.mounts import MASKED_PATHS, READONLY_PATHS, Volume
from ..kernel.namespaces import DEFAULT_NAMESPACES
from ..kernel.seccomp import profile_to_oci
from ..kernel.seccomp_profile import default_profile
from ..kernel.security import DEFAULT_CAPABILITIES


def default_seccomp() -> dict:
    """The default seccomp allow-list, decided for the default capabilities (OCI linux.seccomp)."""
    return profile_to_oci(default_profile(), DEFAULT_CAPABILITIES)


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
    sys_readonly: bool = True            # /sys read-only; --privileged mounts it read-write, as Docker does
    cgroup_procs: list[str] = field(default_factory=list)   # cgroup.procs files to join
    user: tuple[int, int, tuple[int, ...]] = (0, 0, ())      # uid, gid, supplementary gids (process.user)
    terminal: bool = False               # stdio is a pty: the command gets it as its controlling terminal
    # the security profile (the OCI spec's process.capabilities, noNewPrivileges, linux.seccomp,
    # linux.maskedPaths and linux.readonlyPaths); seccomp None means unconfined
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    no_new_privileges: bool = True
    seccomp: dict | None = field(default_factory=default_seccomp)
    masked_paths: tuple[str, ...] = MASKED_PATHS
    readonly_paths: tuple[str, ...] = READONLY_PATHS

    def path_env(self) -> str:
        for item in self.env:
            if item.startswith("PATH="):
                return item[5:]
        return "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
