"""Control groups: limit, account, freeze and kill a container's processes.

A cgroup is a directory in a special filesystem. ``mkdir`` creates one (the kernel fills
it with interface files), writing a pid into ``cgroup.procs`` moves a process into it,
writing ``memory.max`` or ``memory.limit_in_bytes`` sets a limit, and ``rmdir`` removes
it once it holds no process. There are two versions of that filesystem:

- **v2 (unified)**: one tree for every controller, mounted at ``/sys/fs/cgroup``. A
  child gets a controller only if its parent lists it in ``cgroup.subtree_control``.
- **v1 (legacy)**: one tree ("hierarchy") per controller, e.g. ``/sys/fs/cgroup/memory``
  and ``/sys/fs/cgroup/pids``; a container needs a directory in each of them.
- **hybrid**: v1 hierarchies for the controllers, plus an (often empty) v2 tree at
  ``/sys/fs/cgroup/unified``. The controllers live in v1, so we use the v1 driver.

Like youki and runc, :func:`detect_mode` decides once, from the filesystem types, and
:func:`open_cgroup` returns a :class:`V1Cgroup` or :class:`V2Cgroup`. Callers use the
:class:`Cgroup` interface and never branch on the version.
"""
from __future__ import annotations

import errno
import math
import os
import re
import shlex
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which costs the CLI ~10 ms

if TYPE_CHECKING:  # importing typing at run time would slow the CLI's start-up
    from typing import Literal

    Mode = Literal["unified", "hybrid", "legacy"]

from ..errors import InvalidArgument, KernelError, MinicontainerError, NotRootError
from ..trace import Step, is_planning
from .devices import (DEFAULT_RULES, DeviceRule, attach_device_program, device_program, in_initial_user_namespace,
                      skip_device_cgroup)


DEFAULT_ROOT = "/sys/fs/cgroup"
CFS_PERIOD_US = 100_000          # the kernel's default CFS period: 100 ms
CFS_MIN_QUOTA_US = 1_000         # cpu.cfs_quota_us / cpu.max refuse less than 1 ms
V1_CONTROLLERS = ("memory", "cpu", "cpuacct", "pids", "freezer", "devices")
V2_CONTROLLERS = ("memory", "cpu", "pids")
V2_PARENT = "minicontainer"      # v2 without systemd: containers live in <root>/minicontainer/<name>
SYSTEMD_SLICE = "system.slice"   # v2 under systemd: <root>/system.slice/minicontainer-cgroups.service/<name>
SYSTEMD_UNIT = "minicontainer-cgroups.service"
SUPERVISOR = "supervisor"        # the leaf that holds the delegated unit's own process
V1_PREFIX = "minicontainer-"     # v1 containers live in <hierarchy>/<caller's cgroup>/minicontainer-<name>

# How long to wait for the kernel to finish something asynchronous. These are safety
# nets against a stuck task, not performance expectations: each usually takes < 1 ms.
FREEZE_TIMEOUT = 5.0
KILL_TIMEOUT = 5.0
RMDIR_TIMEOUT = 2.0
POLL_INTERVAL = 0.001


class ControllerMissing(MinicontainerError):
    """A cgroup controller (memory, cpu, pids, ...) the container needs is not available."""

    def __init__(self, controller: str, where: str, fix: str):
        self.controller = controller
        super().__init__(f"the {controller} cgroup controller is not available {where}: {fix}")


# ---- parsing user input ---------------------------------------------------------------
_MEMORY_UNITS = {"": 1, "b": 1,
                 "k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
                 "m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
                 "g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
                 "t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_memory(text: str | int) -> int:
    """A memory size as bytes: "64m", "1g", "512k", "64MiB" or a plain byte count.

    Units are binary (k = 1024), as in ``docker run --memory``.
    """
    def bad(why: str = "") -> InvalidArgument:
        return InvalidArgument(f"invalid memory size {str(text)!r}{why}: "
                               "use a positive number with an optional unit, e.g. 64m, 512k or 1g")

    if isinstance(text, bool):
        raise bad()
    if isinstance(text, int):
        if text <= 0:
            raise bad()
        return text
    match = _MEMORY_RE.match(str(text))
    if not match or match.group(2).lower() not in _MEMORY_UNITS:
        raise bad()
    size = int(float(match.group(1)) * _MEMORY_UNITS[match.group(2).lower()])
    if size <= 0:
        raise bad()
    return size


def parse_cpus(text: str | float) -> float:
    """A CPU limit as a number of CPUs ("0.5" = half of one CPU), between 0.01 and the CPU count."""
    ncpu = os.cpu_count() or 1
    try:
        if isinstance(text, bool):
            raise ValueError
        cpus = float(text)
    except (TypeError, ValueError):
        cpus = math.nan
    # The CFS quota is cpus * 100 ms, and the kernel refuses a quota under 1 ms.
    lowest = CFS_MIN_QUOTA_US / CFS_PERIOD_US
    if not (lowest <= cpus <= ncpu):   # also false for NaN
        raise InvalidArgument(f"invalid cpus {str(text)!r}: use a number of CPUs from {lowest} "
                              f"to {ncpu} (this machine's CPU count), e.g. 0.5")
    return cpus


# ---- records --------------------------------------------------------------------------
@dataclass
class Limits:
    """Resource limits for a cgroup; None leaves that limit as it is."""

    memory: int | None = None    # bytes
    cpus: float | None = None    # number of CPUs, e.g. 0.5
    pids: int | None = None      # most tasks (processes and threads) at once


@dataclass
class CgroupStats:
    """What the kernel accounted for a cgroup."""

    memory_current: int   # bytes in use now
    memory_peak: int      # highest bytes in use so far
    cpu_usage_usec: int   # CPU time used by all its tasks, in microseconds
    pids_current: int     # tasks (processes and threads) in it now
    oom_kills: int        # processes the OOM killer killed because of its memory limit


# ---- detecting the cgroup mode --------------------------------------------------------
@dataclass
class MountEntry:
    """One line of /proc/self/mountinfo, the fields cgroup detection needs."""

    mount_point: str
    root: str                  # which directory of the filesystem is mounted there
    fstype: str                # "cgroup2", "cgroup", "tmpfs", ...
    super_options: list[str]   # for a v1 hierarchy, includes its controllers: ["rw", "memory"]


def _unescape_mountinfo(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes: "\040".
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse /proc/self/mountinfo (see proc(5)): optional fields end at a lone "-"."""
    entries = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        entries.append(MountEntry(mount_point=_unescape_mountinfo(fields[4]),
                                  root=_unescape_mountinfo(fields[3]),
                                  fstype=fields[sep + 1],
                                  super_options=fields[sep + 3].split(",")))
    return entries


def read_mounts() -> list[MountEntry]:
    """The mount table of this process's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def mode_from_mounts(mounts: list[MountEntry], root: str = DEFAULT_ROOT) -> Mode:
    """unified, hybrid or legacy, from the filesystem types mounted at and under ``root``."""
    root = root.rstrip("/") or "/"
    at_root = [m for m in mounts if m.mount_point == root]
    if at_root and at_root[-1].fstype == "cgroup2":   # the last mount hides earlier ones
        return "unified"
    if any(m.mount_point == f"{root}/unified" and m.fstype == "cgroup2" for m in mounts):
        return "hybrid"
    if any(m.fstype == "cgroup" and _under(m.mount_point, root) for m in mounts):
        return "legacy"
    raise MinicontainerError(f"no cgroup filesystem is mounted at {root}: "
                             f"mount one with `mount -t cgroup2 none {root}`")


def detect_mode(root: str = DEFAULT_ROOT) -> Mode:
    """How cgroups are set up here: "unified" (v2), "hybrid" (v1 + empty v2) or "legacy" (v1)."""
    return mode_from_mounts(read_mounts(), root)


# ---- writing cgroup files: the one kernel-visible action ------------------------------
def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


_WRITE_HINTS = {
    errno.EBUSY: "the kernel refused it while the cgroup is in use (a memory limit below "
                 "current usage, or a controller change in a cgroup that holds processes)",
    errno.EINVAL: "the kernel rejected the value",
    errno.ENOENT: "the file does not exist: is the controller enabled for this cgroup?",
    errno.ESRCH: "no such process (it has already exited)",
    errno.EACCES: "permission denied: run as root",
    errno.EPERM: "permission denied: run as root",
}


def write_cgroup_file(path: str, value: str, why: str, *, name: str = "cgroup_write") -> Step:
    """Write ``value`` into the cgroup interface file ``path``, as ``echo value > path`` does.

    Each write is a single write(2): the kernel parses one value per write.
    """
    step = Step(name=name, call=f'write "{value}" > {path}',
                shell=f"echo {shlex.quote(value)} > {path}", why=why)

    def write() -> None:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)

    def read_back() -> dict[str, str]:
        # some files are write-only (cgroup.kill is mode 0200): nothing to read back then
        return {"read back": _read(path)} if os.stat(path).st_mode & 0o444 else {}

    try:
        step.do(write, evidence=read_back)
    except OSError as exc:
        hint = _WRITE_HINTS.get(exc.errno or 0, "")
        where = f"writing {value!r} to {path}"
        raise KernelError(name, exc.errno or 0, f"{where}: {hint}" if hint else where) from None
    return step


def _make_cgroup_dir(path: str, why: str) -> bool:
    """mkdir a cgroup; True if we made it, False if an empty one was already there."""
    step = Step(name="cgroup_create", call=f"mkdir {path}", shell=f"mkdir {path}", why=why)

    def listing() -> dict[str, str]:
        files = sorted(os.listdir(path))
        return {"kernel created": f"{len(files)} files: {', '.join(files[:6])}, ..."}

    try:
        step.do(os.mkdir, path, evidence=listing)
        return True
    except FileExistsError:
        # A leftover from a crash (same name, no processes) is adopted, as runc does;
        # a cgroup that holds processes belongs to someone else.
        if procs_in(path):
            raise MinicontainerError(f"cgroup {path} already exists and holds processes: "
                                     "another container uses this name; remove it or pick another name") from None
        return False
    except PermissionError:
        raise NotRootError("creating a cgroup") from None
    except OSError as exc:
        raise KernelError("cgroup_create", exc.errno or 0, f"mkdir {path}") from None


def remove_cgroup_dir(path: str, why: str, timeout: float | None = None) -> None:
    """rmdir a cgroup, waiting briefly while just-killed tasks finish exiting."""
    timeout = RMDIR_TIMEOUT if timeout is None else timeout
    if not is_planning() and not os.path.isdir(path):
        return   # already gone: removing is idempotent
    step = Step(name="cgroup_remove", call=f"rmdir {path}", shell=f"rmdir {path}", why=why)

    def rmdir() -> str:
        deadline = time.monotonic() + timeout
        while True:
            try:
                os.rmdir(path)
                return "removed"
            except FileNotFoundError:
                return "already gone"
            except OSError as exc:
                # EBUSY: a task is still in it (a killed one may take a moment to leave).
                if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
                time.sleep(POLL_INTERVAL)

    try:
        step.do(rmdir, evidence=lambda: {"exists after": "yes" if os.path.isdir(path) else "no"})
    except OSError as exc:
        hint = f"rmdir {path}"
        if exc.errno == errno.EBUSY:
            hint += f": it still holds {_what_is_left(path)}; kill them first"
        raise KernelError("cgroup_remove", exc.errno or 0, hint) from None


def _what_is_left(path: str) -> str:
    """The processes and child cgroups that keep a cgroup from being removed, for the error message."""
    children = sorted(e.name for e in os.scandir(path) if e.is_dir()) if os.path.isdir(path) else []
    procs = procs_in(path)
    parts = ([f"processes {procs[:5]}"] if procs else []) + ([f"child cgroups {children[:5]}"] if children else [])
    return " and ".join(parts) or "no process or child cgroup any more (a process may still be exiting)"


def remove_child_cgroups(directory: str) -> None:
    """rmdir every cgroup below ``directory``, deepest first, as runc removes a container's cgroup.

    A delegated cgroup gets children its user made (a grading container's own containers);
    the kernel won't rmdir a cgroup that has any, even once no process is left in them.
    """
    if is_planning() or not os.path.isdir(directory):
        return
    for parent, children, _ in os.walk(directory, topdown=False):
        for child in children:
            remove_cgroup_dir(os.path.join(parent, child), "a cgroup with child cgroups can't be removed: "
                                                            "the children go first")


def procs_in(directory: str) -> list[int]:
    """The processes in one cgroup directory (its cgroup.procs); none if the cgroup is gone.

    A cgroup removed while we look (by a runtime whose container just exited) is gone before
    the open (ENOENT) or between the open and the read (ENODEV): either way it holds nobody.
    """
    try:
        text = _read(os.path.join(directory, "cgroup.procs"))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.ENODEV):
            return []
        raise
    return [int(p) for p in text.split()]


def _key_values(text: str) -> dict[str, int]:
    """Parse "key value" lines (memory.events, cpu.stat, memory.oom_control)."""
    out = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def _wait_until(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_INTERVAL)
    return True


def _check_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", name or ""):
        raise InvalidArgument(f"invalid cgroup name {name!r}: use letters, digits, '_', '.' "
                              "and '-' (no '/'), e.g. 3f2a9c1b")
    return name


def _check_limits(limits: Limits) -> None:
    if limits.memory is not None:
        parse_memory(limits.memory)
    if limits.cpus is not None:
        parse_cpus(limits.cpus)
    if limits.pids is not None and (isinstance(limits.pids, bool) or int(limits.pids) < 1):
        raise InvalidArgument(f"invalid pids limit {limits.pids!r}: use a positive number of tasks, e.g. 100")


def _require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError("creating a cgroup")


# ---- the interface ----------------------------------------------------------------------
class Cgroup(ABC):
    """A container's cgroup, whatever the cgroup version underneath."""

    name: str
    version: int

    @abstractmethod
    def create(self) -> None:
        """Make the cgroup directories (rolled back if any step fails)."""

    @abstractmethod
    def set_limits(self, limits: Limits) -> None:
        """Write the memory, cpu and pids limits that are not None."""

    @abstractmethod
    def procs_files(self) -> list[str]:
        """Every cgroup.procs a process writes its pid into to join this cgroup."""

    @abstractmethod
    def allow_devices(self, rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> None:
        """Let the cgroup's processes use only these devices (the device cgroup)."""

    @abstractmethod
    def freeze(self) -> None:
        """Stop every process in the cgroup until thaw(); returns once they are all frozen."""

    @abstractmethod
    def thaw(self) -> None:
        """Let frozen processes run again."""

    @abstractmethod
    def is_frozen(self) -> bool:
        """True while the kernel reports the whole cgroup frozen."""

    @abstractmethod
    def stats(self) -> CgroupStats:
        """Memory, CPU, task and OOM accounting, read from the kernel."""

    @abstractmethod
    def kill_all(self) -> None:
        """SIGKILL every process in the cgroup, and wait until it is empty."""

    @abstractmethod
    def remove(self) -> None:
        """rmdir the cgroup everywhere; does nothing if it is already gone."""

    @abstractmethod
    def paths(self) -> dict[str, str]:
        """Controller (or "unified") -> directory, for display and to reopen the cgroup later."""

    # ---- shared by both drivers ----
    def attach(self, pid: int) -> None:
        """Move process ``pid`` into the cgroup (its future children start there too)."""
        for path in self.procs_files():
            write_cgroup_file(path, str(pid), "move the process into the container's cgroup",
                              name="cgroup_attach")

    def pids(self) -> list[int]:
        """The processes (thread group ids) in the cgroup."""
        found: set[int] = set()
        for path in self.procs_files():
            found.update(procs_in(os.path.dirname(path)))
        return sorted(found)

    def oom_killed(self) -> bool:
        """True if the OOM killer has killed a process here because of the memory limit."""
        return self.stats().oom_kills > 0

    def _kill_frozen(self) -> None:
        """Kill by signals: freeze so nobody can fork, SIGKILL everyone, thaw so they die."""
        deadline = time.monotonic() + KILL_TIMEOUT
        while not is_planning():
            pids = self.pids()
            if not pids:
                return
            if time.monotonic() > deadline:
                raise MinicontainerError(f"could not kill every process in cgroup {self.name} "
                                         f"(still there: {pids}): look for tasks stuck in D state")
            self.freeze()
            pids = self.pids()   # the full list, now that nobody can fork
            step = Step(name="cgroup_kill", call=f"kill(SIGKILL) for pids {pids}",
                        shell=f"kill -KILL {' '.join(map(str, pids))}",
                        why="frozen tasks can't fork, so every task gets the signal; they die on thaw")
            step.do(self._sigkill, pids)
            self.thaw()
            _wait_until(lambda: not self.pids(), 0.5)

    @staticmethod
    def _sigkill(pids: list[int]) -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {self.paths()}>"


# ---- cgroup v1 ------------------------------------------------------------------------
def parse_proc_cgroup(text: str) -> dict[str, str]:
    """Controller -> cgroup path from /proc/<pid>/cgroup lines "4:memory:/a/b" ("" for v2)."""
    out = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def read_own_cgroups() -> dict[str, str]:
    """The cgroups this process is in, per controller."""
    with open("/proc/self/cgroup") as f:
        return parse_proc_cgroup(f.read())


def v1_cgroup_dirs(name: str, mounts: list[MountEntry], own: dict[str, str],
                   root: str = DEFAULT_ROOT) -> dict[str, str]:
    """Where a v1 container cgroup goes: in each hierarchy, under the caller's own cgroup.

    Nesting under our own cgroup (as runc does) keeps the container inside whatever
    limits the engine itself runs under, and works where we may not write elsewhere.
    """
    dirs = {}
    for controller in V1_CONTROLLERS:
        # A hierarchy may carry several controllers ("cpu,cpuacct"); match on the mount
        # options rather than on directory names, which may be symlinks.
        mount = next((m for m in mounts if m.fstype == "cgroup" and controller in m.super_options
                      and _under(m.mount_point, root)), None)
        if mount is None:
            raise ControllerMissing(
                controller, f"(no cgroup v1 hierarchy for it is mounted under {root})",
                f"mount it with `mount -t cgroup -o {controller} cgroup {root}/{controller}`, "
                f"or if /proc/cgroups shows it disabled, boot with cgroup_enable={controller}")
        own_path = own.get(controller, "/")
        # /proc/self/cgroup paths are relative to the hierarchy's root; the mount may show
        # only a subtree of it (the mountinfo "root" field), as inside a container.
        if mount.root != "/" and _under(own_path, mount.root):
            own_path = own_path[len(mount.root):] or "/"
        dirs[controller] = os.path.join(mount.mount_point, own_path.lstrip("/"), V1_PREFIX + name)
    return dirs


class V1Cgroup(Cgroup):
    """A cgroup on v1 hierarchies: one directory per controller hierarchy."""

    version = 1

    def __init__(self, name: str, *, root: str = DEFAULT_ROOT, paths: dict[str, str] | None = None,
                 mounts: list[MountEntry] | None = None, own: dict[str, str] | None = None):
        self.name = _check_name(name)
        self.root = root
        if paths is None:
            paths = v1_cgroup_dirs(name, read_mounts() if mounts is None else mounts,
                                   read_own_cgroups() if own is None else own, root)
        self._dirs = dict(paths)

    def _dir(self, controller: str) -> str:
        return self._dirs[controller]

    def _unique_dirs(self) -> list[str]:
        # With "cpu,cpuacct" in one hierarchy, two controllers share one directory.
        return list(dict.fromkeys(self._dirs.values()))

    def paths(self) -> dict[str, str]:
        return dict(self._dirs)

    def procs_files(self) -> list[str]:
        return [os.path.join(d, "cgroup.procs") for d in self._unique_dirs()]

    def create(self) -> None:
        _require_root()
        made: list[str] = []
        try:
            for directory in self._unique_dirs():
                if _make_cgroup_dir(directory, "cgroup v1: one directory per controller hierarchy"):
                    made.append(directory)
        except BaseException:
            for directory in reversed(made):
                remove_cgroup_dir(directory, "roll back a half-created cgroup")
            raise

    def set_limits(self, limits: Limits) -> None:
        _check_limits(limits)
        if limits.memory is not None:
            self._set_memory(parse_memory(limits.memory))
        if limits.cpus is not None:
            cpu = self._dir("cpu")
            write_cgroup_file(f"{cpu}/cpu.cfs_period_us", str(CFS_PERIOD_US),
                              "CFS hands out CPU time in periods of this many microseconds")
            write_cgroup_file(f"{cpu}/cpu.cfs_quota_us", str(round(float(limits.cpus) * CFS_PERIOD_US)),
                              f"the cgroup may run {limits.cpus} CPUs' worth of each period, then it is throttled")
        if limits.pids is not None:
            write_cgroup_file(f"{self._dir('pids')}/pids.max", str(int(limits.pids)),
                              "fork() fails with EAGAIN once the cgroup holds this many tasks")

    def _set_memory(self, limit: int) -> None:
        memory = self._dir("memory")
        # memory.memsw.* (memory + swap) exists only with swap accounting; the parent has
        # the same files as the child, and it exists even while planning.
        memsw = f"{memory}/memory.memsw.limit_in_bytes"
        has_memsw = os.path.exists(os.path.join(os.path.dirname(memory), "memory.memsw.limit_in_bytes"))
        write_memory = lambda: write_cgroup_file(  # noqa: E731
            f"{memory}/memory.limit_in_bytes", str(limit),
            "the OOM killer kills a process in the cgroup once it uses more memory than this")
        write_memsw = lambda: write_cgroup_file(  # noqa: E731
            memsw, str(limit), "memory + swap limit equal to the memory limit: swap can't dodge it")
        if not has_memsw:
            write_memory()
            return
        # The kernel keeps memory <= memsw at every moment: lower memory first, raise memsw first.
        try:
            raising = limit > int(_read(memsw))
        except (FileNotFoundError, ValueError):
            raising = False
        if raising:
            write_memsw()
            write_memory()
        else:
            write_memory()
            write_memsw()

    def allow_devices(self, rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> None:
        devices = self._dir("devices")
        if not in_initial_user_namespace():
            skip_device_cgroup(devices)
            return
        write_cgroup_file(f"{devices}/devices.deny", "a", "first deny every device to the cgroup's processes",
                          name="cgroup_devices")
        for rule in rules:
            write_cgroup_file(f"{devices}/devices.allow", str(rule),
                              "then allow each harmless one (m: mknod, r: read, w: write)", name="cgroup_devices")

    def freeze(self) -> None:
        state = f"{self._dir('freezer')}/freezer.state"
        write_cgroup_file(state, "FROZEN", "stop every task in the cgroup (no signal, it can't be caught)",
                          name="cgroup_freeze")
        # The write starts freezing ("FREEZING"); it is done when the file reads FROZEN.
        if not is_planning() and not _wait_until(self.is_frozen, FREEZE_TIMEOUT):
            self.thaw()
            raise MinicontainerError(f"cgroup {self.name} did not freeze within {FREEZE_TIMEOUT}s "
                                     "(a task may be stuck in the kernel): thawed it again; retry")

    def thaw(self) -> None:
        write_cgroup_file(f"{self._dir('freezer')}/freezer.state", "THAWED",
                          "let the frozen tasks run again", name="cgroup_thaw")

    def is_frozen(self) -> bool:
        return _read(f"{self._dir('freezer')}/freezer.state") == "FROZEN"

    def stats(self) -> CgroupStats:
        memory = self._dir("memory")
        oom = _key_values(_read(f"{memory}/memory.oom_control"))
        return CgroupStats(
            memory_current=int(_read(f"{memory}/memory.usage_in_bytes")),
            memory_peak=int(_read(f"{memory}/memory.max_usage_in_bytes")),
            cpu_usage_usec=int(_read(f"{self._dir('cpuacct')}/cpuacct.usage")) // 1000,  # ns
            pids_current=int(_read(f"{self._dir('pids')}/pids.current")),
            oom_kills=oom.get("oom_kill", 0))

    def kill_all(self) -> None:
        # v1 has no "kill the cgroup" file: freeze, signal every pid, thaw, repeat.
        self._kill_frozen()

    def remove(self) -> None:
        for directory in reversed(self._unique_dirs()):
            remove_cgroup_dir(directory, "a cgroup with no tasks left can be removed")


# ---- cgroup v2 ------------------------------------------------------------------------
def systemd_manages_cgroups() -> bool:
    """True when systemd is PID 1 here (sd_booted(3): /run/systemd/system exists).

    systemd then owns the cgroup tree: it creates and removes cgroups for its units and
    rewrites ``cgroup.subtree_control`` as it sees fit. Others get a subtree of their own
    only by asking for it ("delegation").
    """
    return os.path.isdir("/run/systemd/system")


def start_delegated_unit(unit: str = SYSTEMD_UNIT) -> Step:
    """Ask systemd for a cgroup subtree of our own: a service unit with ``Delegate=yes``.

    systemd creates the unit's cgroup under system.slice, enables every controller it
    manages for it, and from then on leaves everything below it to us. The unit's one
    process (``sleep infinity``) only keeps the unit, and so the cgroup, alive.
    """
    argv = ["systemd-run", f"--unit={unit}", "--property=Delegate=yes",
            "--description=cgroup subtree delegated to minicontainer", "--quiet",
            "/bin/sleep", "infinity"]
    step = Step(name="systemd_delegate", call=f"StartTransientUnit({unit}, Delegate=yes)",
                shell=" ".join(shlex.quote(a) for a in argv),
                why="systemd owns the cgroup tree; a unit with Delegate=yes hands a subtree to us")

    def start() -> str:
        import subprocess  # only on a systemd host, once per boot

        try:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except FileNotFoundError:
            raise MinicontainerError("systemd manages the cgroups here, but systemd-run is missing: "
                                     "install the systemd package") from None
        # a concurrent engine may have started the unit a moment ago: that is success too
        if done.returncode != 0 and "already" not in done.stderr:
            raise MinicontainerError(f"systemd refused to start {unit}: {done.stderr.strip()} "
                                     f"(see `systemctl status {unit}`)")
        return f"started {unit}"

    step.do(start)
    return step


class V2Cgroup(Cgroup):
    """A cgroup in the unified (v2) tree, in a parent cgroup that all containers share.

    Without systemd the parent is ``<root>/minicontainer`` and the engine delegates the
    controllers down from the root itself. Under systemd, which owns the root, the parent
    is the cgroup of a unit with ``Delegate=yes``
    (``<root>/system.slice/minicontainer-cgroups.service``), as runc's and podman's
    systemd drivers do. The parent is never removed: an engine removing it while another
    creates a container in it was a race (ENOENT, ENODEV) when containers start at once.
    """

    version = 2

    def __init__(self, name: str, *, root: str = DEFAULT_ROOT, paths: dict[str, str] | None = None,
                 systemd: bool | None = None):
        self.name = _check_name(name)
        self.root = root.rstrip("/") or "/"
        if systemd is None:   # a test's fake tree is never systemd's
            systemd = self.root == DEFAULT_ROOT and systemd_manages_cgroups()
        self.systemd = systemd
        self.parent = os.path.join(self.root, SYSTEMD_SLICE, SYSTEMD_UNIT) if systemd \
            else os.path.join(self.root, V2_PARENT)
        self.dir = paths["unified"] if paths else os.path.join(self.parent, name)

    def paths(self) -> dict[str, str]:
        return {"unified": self.dir}

    def procs_files(self) -> list[str]:
        return [f"{self.dir}/cgroup.procs"]

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)

    def create(self) -> None:
        _require_root()
        for attempt in range(3):
            try:
                self._create_once()
                return
            except KernelError as exc:
                # Someone removed the shared parent between our steps (rmdir by hand,
                # `systemctl stop`): make it again.
                if exc.errno not in (errno.ENOENT, errno.ENODEV) or attempt == 2:
                    raise

    def _create_once(self) -> None:
        if self.systemd:
            self._ensure_delegated_parent()
        else:
            self._enable_controllers(self.root)
            if not os.path.isdir(self.parent):
                _make_cgroup_dir(self.parent, "the parent cgroup that groups all minicontainer containers")
        self._enable_controllers(self.parent)
        _make_cgroup_dir(self.dir, "the container's own cgroup")

    def _ensure_delegated_parent(self) -> None:
        """Start the delegated unit if its cgroup is missing; keep its cgroup free of processes."""
        if not os.path.isdir(self.parent):
            start_delegated_unit()
            if not is_planning() and not _wait_until(lambda: os.path.isdir(self.parent), KILL_TIMEOUT):
                raise MinicontainerError(f"systemd started {SYSTEMD_UNIT} but {self.parent} did not "
                                         f"appear: see `systemctl status {SYSTEMD_UNIT}`")
        # "No internal processes": a cgroup that hands controllers to its children may hold
        # no process itself, so the unit's keeper process moves to a leaf of its own.
        leaf = os.path.join(self.parent, SUPERVISOR)
        if is_planning():
            return
        # systemd makes the unit's cgroup a moment before it moves the process in; enabling
        # controllers in between would make that move (and the unit) fail
        _wait_until(lambda: os.path.isdir(leaf) or bool(procs_in(self.parent)), KILL_TIMEOUT)
        keepers = procs_in(self.parent)
        if keepers:
            if not os.path.isdir(leaf):
                _make_cgroup_dir(leaf, "a leaf for the unit's own process: no internal processes")
            for pid in keepers:
                try:
                    write_cgroup_file(os.path.join(leaf, "cgroup.procs"), str(pid),
                                      "a cgroup that delegates controllers may hold no process itself",
                                      name="cgroup_attach")
                except KernelError as exc:
                    if exc.errno != errno.ESRCH:
                        raise

    def _enable_controllers(self, ancestor: str) -> None:
        """Delegate memory, cpu and pids from ``ancestor`` to its children (subtree_control)."""
        controllers_file = os.path.join(ancestor, "cgroup.controllers")
        subtree_file = os.path.join(ancestor, "cgroup.subtree_control")
        if is_planning() and not os.path.exists(controllers_file):
            available, enabled = set(V2_CONTROLLERS), set()
        else:
            try:
                available = set(_read(controllers_file).split())
                enabled = set(_read(subtree_file).split())
            except OSError as exc:
                raise KernelError("cgroup_create", exc.errno or 0, f"reading {controllers_file}") from None
        for controller in V2_CONTROLLERS:
            if controller not in available:
                if ancestor == self.root:
                    fix = (f"boot with cgroup_enable={controller}; on a hybrid host a v1 hierarchy "
                           "holds it, so use the v1 driver (open_cgroup picks it)")
                elif self.systemd and ancestor == self.parent:
                    fix = f"check that {SYSTEMD_UNIT} has Delegate=yes: systemctl show -p Delegate {SYSTEMD_UNIT}"
                else:
                    fix = f"enable it in the parent: echo +{controller} > {os.path.dirname(ancestor)}/cgroup.subtree_control"
                raise ControllerMissing(controller, f"in {ancestor} (cgroup.controllers: "
                                        f"{' '.join(sorted(available)) or 'empty'})", fix)
        missing = [c for c in V2_CONTROLLERS if c not in enabled]
        if missing:
            write_cgroup_file(subtree_file, " ".join(f"+{c}" for c in missing),
                              "a child cgroup only gets the controllers its parent lists in subtree_control")

    def _kernel_offers(self, file: str, needs: str = "cgroup.procs") -> bool:
        """Whether the kernel gives a cgroup like ours the interface file ``file``.

        ``memory.swap.max`` exists only with swap accounting, ``cgroup.kill`` only since
        Linux 5.14. While planning, the container's cgroup does not exist yet, so look at
        one that does and has ``needs`` (the kernel gives such files to every non-root
        cgroup with that controller, or to none).
        """
        candidates = [self.dir, self.parent]
        if is_planning():
            try:
                candidates += [e.path for e in os.scandir(self.root) if e.is_dir(follow_symlinks=False)]
            except OSError:
                pass
        for directory in candidates:
            if os.path.exists(os.path.join(directory, needs)):
                return os.path.exists(os.path.join(directory, file))
        return False

    def set_limits(self, limits: Limits) -> None:
        _check_limits(limits)
        if limits.memory is not None:
            write_cgroup_file(self._file("memory.max"), str(parse_memory(limits.memory)),
                              "the OOM killer kills a process in the cgroup once it uses more memory than this")
            if self._kernel_offers("memory.swap.max", needs="memory.max"):
                write_cgroup_file(self._file("memory.swap.max"), "0",
                                  "no swap, so the memory limit can't be dodged by swapping")
        if limits.cpus is not None:
            quota = round(float(limits.cpus) * CFS_PERIOD_US)
            write_cgroup_file(self._file("cpu.max"), f"{quota} {CFS_PERIOD_US}",
                              f"\"quota period\": run at most {quota}us of every {CFS_PERIOD_US}us")
        if limits.pids is not None:
            write_cgroup_file(self._file("pids.max"), str(int(limits.pids)),
                              "fork() fails with EAGAIN once the cgroup holds this many tasks")

    def allow_devices(self, rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> None:
        if not in_initial_user_namespace():
            skip_device_cgroup(self.dir)
            return
        program = device_program(rules)
        step = Step(name="cgroup_devices",
                    call=f"bpf(BPF_PROG_LOAD, BPF_PROG_TYPE_CGROUP_DEVICE, {len(program)} instructions); "
                         f"bpf(BPF_PROG_ATTACH, {self.dir}, BPF_CGROUP_DEVICE)",
                    shell=f"bpftool cgroup attach {self.dir} device pinned …",
                    why="cgroup v2 has no devices.allow: the kernel asks this eBPF program about every device "
                        "open or mknod (1 allow, 0 refuse)")
        step.do(attach_device_program, self.dir, program, evidence=lambda: {
            "rules": "; ".join(str(r) for r in rules),
            "program": " | ".join(str(insn) for insn in program)})

    def _events(self) -> dict[str, int]:
        return _key_values(_read(self._file("cgroup.events")))

    def freeze(self) -> None:
        write_cgroup_file(self._file("cgroup.freeze"), "1", "stop every task in the cgroup",
                          name="cgroup_freeze")
        # Freezing is asynchronous: cgroup.events says "frozen 1" once every task stopped.
        if not is_planning() and not _wait_until(self.is_frozen, FREEZE_TIMEOUT):
            self.thaw()
            raise MinicontainerError(f"cgroup {self.name} did not freeze within {FREEZE_TIMEOUT}s "
                                     "(a task may be stuck in the kernel): thawed it again; retry")

    def thaw(self) -> None:
        write_cgroup_file(self._file("cgroup.freeze"), "0", "let the frozen tasks run again",
                          name="cgroup_thaw")

    def is_frozen(self) -> bool:
        return self._events().get("frozen") == 1

    def stats(self) -> CgroupStats:
        current = int(_read(self._file("memory.current")))
        # memory.peak appeared in Linux 5.19; before that only the current value exists.
        peak_file = self._file("memory.peak")
        peak = int(_read(peak_file)) if os.path.exists(peak_file) else current
        return CgroupStats(
            memory_current=current,
            memory_peak=peak,
            cpu_usage_usec=_key_values(_read(self._file("cpu.stat"))).get("usage_usec", 0),
            pids_current=int(_read(self._file("pids.current"))),
            oom_kills=_key_values(_read(self._file("memory.events"))).get("oom_kill", 0))

    def kill_all(self) -> None:
        if not is_planning() and not os.path.isdir(self.dir):
            return   # already removed: nothing can be left in it
        if not self._kernel_offers("cgroup.kill"):
            self._kill_frozen()   # cgroup.kill appeared in Linux 5.14
            return
        write_cgroup_file(self._file("cgroup.kill"), "1",
                          "SIGKILL every task in the cgroup at once, even ones forking right now",
                          name="cgroup_kill")
        if not is_planning() and not _wait_until(lambda: not self.pids(), KILL_TIMEOUT):
            raise MinicontainerError(f"processes {self.pids()} survived cgroup.kill in {self.dir}: "
                                     "look for tasks stuck in D state")

    def remove(self) -> None:
        # only the container's own cgroup: the shared parent stays (see the class docstring)
        remove_cgroup_dir(self.dir, "a cgroup with no tasks left can be removed")


def open_cgroup(name: str, *, root: str = DEFAULT_ROOT, mode: Mode | None = None,
                paths: dict[str, str] | None = None) -> Cgroup:
    """The cgroup for container ``name``, with the driver for this host's cgroup mode.

    ``paths`` (from an earlier :meth:`Cgroup.paths`) reopens a cgroup that another process
    created: in v1 the location depends on the creating process's own cgroup.
    """
    mode = mode or detect_mode(root)
    if mode == "unified":
        return V2Cgroup(name, root=root, paths=paths)
    # Hybrid hosts keep the controllers in v1; their v2 mount has none to hand out.
    return V1Cgroup(name, root=root, paths=paths)
