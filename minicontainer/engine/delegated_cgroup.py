"""A cgroup delegated to a container's root user, as systemd and rootless Docker delegate them.

A container in a user namespace whose own code must create cgroups (a lab's Sandbox, a
nested engine) gets two levels. ``outer`` carries the limits and stays host root's: its
files belong to a uid the container can't act as, and the container's cgroup namespace
starts below it. ``outer/delegated`` belongs to the container's root user: the runtime puts
the container there (config.json's ``linux.cgroupsPath``, see :meth:`cgroups_path`), so the
container sees that cgroup as its whole /sys/fs/cgroup and may create cgroups in it. Limits
are hierarchical in both versions (v1 memory with use_hierarchy, pids, CFS quota), so
nothing created below can use more than ``outer`` allows, whatever limits it sets on itself.

The grader (grading/container.py) runs each submission's kernel this way.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass, field

from ..kernel import cgroups
from ..runtime.bundle_create import inherit_cpuset

DELEGATED = "delegated"       # the container's cgroup: its root user owns it; its cgroup namespace starts here
V1_DELEGATED_FILES = ("cgroup.procs", "tasks")
V2_DELEGATED_FILES = ("cgroup.procs", "cgroup.threads", "cgroup.subtree_control")   # cgroups(7), "Delegation"
CGROUP_EMPTY_TIMEOUT = 5.0    # safety net: a killed container's tasks leave their cgroups in well under a second


@dataclass
class DelegatedCgroup:
    """The outer cgroup (limits, host root's), the delegated cgroup below it (the container root's),
    and the first process's leaf below that (cgroup v2: no internal processes)."""

    outer: cgroups.Cgroup
    uid: int
    leaf: str
    others: list[str] = field(default_factory=list)   # its cgroups in the hierarchies the runtime skips (join_others)

    @classmethod
    def create(cls, name: str, uid: int, *, memory: int, pids: int, cpus: float, max_descendants: int,
               leaf: str) -> "DelegatedCgroup":
        """Create the outer cgroup with the limits, then the delegated cgroup and its ``leaf``, owned by ``uid``."""
        outer = cgroups.open_cgroup(name)
        outer.create()
        made = cls(outer, uid, leaf)
        try:
            outer.set_limits(cgroups.Limits(memory=memory, pids=pids, cpus=cpus))
            if outer.version == 2:   # the delegated cgroup gets the controllers; what it enables below is its own
                cgroups.write_cgroup_file(os.path.join(made.outer_dirs()[0], "cgroup.subtree_control"),
                                          " ".join(f"+{c}" for c in cgroups.V2_CONTROLLERS),
                                          "the delegated cgroup may hand these controllers to the cgroups it creates")
                # each cgroup costs the kernel memory: bound how many the container may make (delegated/,
                # the leaf, and its own) on a file it can't write, as the pids limit bounds forks
                cgroups.write_cgroup_file(os.path.join(made.outer_dirs()[0], "cgroup.max.descendants"),
                                          str(max_descendants), "a container may not create cgroups without end")
            for directory in made.dirs(DELEGATED) + made.leaf_dirs():
                made.delegate(directory)
            for directory in other_hierarchy_dirs(made.outer, os.path.basename(made.outer_dirs()[0])):
                os.mkdir(directory)
                made.others.append(directory)
                if os.path.exists(os.path.join(directory, "cpuset.cpus")):
                    inherit_cpuset(directory)
        except BaseException:
            made.remove()
            raise
        return made

    def outer_dirs(self) -> list[str]:
        """The outer cgroup's directory in each hierarchy (one on v2)."""
        return list(dict.fromkeys(self.outer.paths().values()))

    def dirs(self, *below: str) -> list[str]:
        """A path below the outer cgroup, in each hierarchy."""
        return [os.path.join(d, *below) for d in self.outer_dirs()]

    def join_others(self) -> list[str]:
        """A command prefix that moves the runtime into our cgroups of the other hierarchies first.

        The runtime places the container in the hierarchies the engine uses (memory, cpu,
        pids, freezer, devices; on v2 the one tree). In the others a v1 or hybrid host has
        (cpuset, blkio, name=systemd, the empty v2 tree) the container's cgroup namespace
        would start where the caller is, often the root, and a container that mounts one of
        them would see every host cgroup's name there. Started from these empty cgroups of
        its own (host root's, no limits), it sees nothing above them.
        """
        if not self.others:
            return []
        writes = " && ".join(f"echo $$ > {os.path.join(d, 'cgroup.procs')}" for d in self.others)
        return ["/bin/sh", "-c", f'{writes} && exec "$@"', "join-cgroups"]

    def leaf_dirs(self) -> list[str]:
        """The first process's leaf in each hierarchy but v1's devices: the runtime denies all devices in the
        delegated cgroup before allowing some, and v1 refuses that in a cgroup with children (EINVAL)."""
        devices = self.outer.paths().get("devices")
        return [os.path.join(d, DELEGATED, self.leaf) for d in self.outer_dirs() if d != devices]

    def cgroups_path(self) -> str:
        """linux.cgroupsPath for the runtime: the delegated cgroup, relative to the runtime's own
        cgroup (v1, per hierarchy) or to the engine's v2 parent, where open_cgroup put ``outer``."""
        return os.path.join(os.path.basename(self.outer_dirs()[0]), DELEGATED)

    def delegate(self, directory: str) -> None:
        """mkdir a cgroup and chown it, and the files that move processes and hand out controllers, to the
        container's root: it may then create cgroups in it and move its own processes, not change its limits."""
        os.mkdir(directory)
        files = V2_DELEGATED_FILES if self.outer.version == 2 else V1_DELEGATED_FILES
        for path in [directory, *(os.path.join(directory, f) for f in files)]:
            if os.path.exists(path):   # cgroup.threads only where the kernel has threaded cgroups
                os.chown(path, self.uid, self.uid)

    def kill_all(self) -> None:
        """SIGKILL every process anywhere below the outer cgroup; wait until none is left."""
        deadline = time.monotonic() + CGROUP_EMPTY_TIMEOUT
        while pids := self.pids():
            if time.monotonic() > deadline:
                raise RuntimeError(f"processes {pids} survived SIGKILL in {self.outer_dirs()}: look for D state")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.005)

    def pids(self) -> list[int]:
        """Every process in the container's cgroups and below them, as host pids."""
        found: set[int] = set()
        for top in self.outer_dirs() + self.others:
            for directory, _, _ in os.walk(top):
                # the runtime removes the container's cgroup when its init exits, maybe while we walk
                found.update(cgroups.procs_in(directory))
        return sorted(found)

    def remove(self) -> None:
        """Kill what is left, then remove the whole tree, the outer cgroup last."""
        self.kill_all()
        for top in self.outer_dirs():
            cgroups.remove_child_cgroups(top)    # the delegated cgroup and all below it
        for directory in self.others:
            cgroups.remove_cgroup_dir(directory, "the runtime's empty cgroup in a hierarchy it doesn't use")
        self.outer.remove()


def other_hierarchy_dirs(outer: cgroups.Cgroup, name: str) -> list[str]:
    """Where a cgroup ``name`` goes, under the caller's own cgroup, in each mounted hierarchy ``outer`` isn't in."""
    own = cgroups.read_own_cgroups()
    used = {os.path.relpath(d, cgroups.DEFAULT_ROOT).split("/")[0] for d in outer.paths().values()}
    dirs = []
    for mount in cgroups.read_mounts():
        if mount.fstype not in ("cgroup", "cgroup2") or os.path.dirname(mount.mount_point) != cgroups.DEFAULT_ROOT:
            continue
        if os.path.basename(mount.mount_point) in used:
            continue
        keys = [""] if mount.fstype == "cgroup2" else [o for o in mount.super_options if o in own]
        path = own.get(keys[0], "/") if keys else "/"
        if mount.root != "/" and (path + "/").startswith(mount.root.rstrip("/") + "/"):
            path = path[len(mount.root):] or "/"
        dirs.append(os.path.join(mount.mount_point, path.lstrip("/"), name))
    return dirs
