"""A bundle's config.json, read for ``minicontainer runtime``: every field honoured or refused.

The engine's own bundles go through :func:`oci.spec_from_config`, which knows only what
the engine writes. A bundle from ``runtime spec``, from runc's ``runc spec`` or from
another tool can say much more (user ids, rlimits, hooks, namespaces to join …), so the
runtime command line reads config.json here, into a :class:`BundleConfig`. What the
runtime can't do is refused by field name, never silently ignored.
"""
from __future__ import annotations

import json
import os
import re
import resource
from dataclasses import dataclass, field

from ..errors import InvalidArgument
from ..kernel.devices import DeviceRule
from ..kernel.security import CAPABILITIES
from .oci import ANNOTATION

# the spec's namespace names -> ours (kernel/namespaces.py), plus the user namespace
NAMESPACE_KINDS = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts",
                   "cgroup": "cgroup", "user": "user"}
CAPABILITY_SETS = ("bounding", "effective", "permitted", "inheritable", "ambient")
HOOK_KINDS = ("prestart", "createRuntime", "poststart", "poststop")
MOUNT_TYPES = ("bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", "cgroup")
# sysctls a container may set: only those its own namespaces hold (runc's validator)
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
               "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")


@dataclass
class Hook:
    """A program the runtime runs at a point of the lifecycle, the state JSON on its stdin."""

    path: str
    args: list[str]
    env: list[str]
    timeout: int | None = None


@dataclass
class Mount:
    """One entry of ``mounts``: where, what type, from where, with which options."""

    destination: str
    type: str
    source: str
    options: list[str]


@dataclass
class CgroupFile:
    """A cgroup v1 interface file that one field of linux.resources is written to."""

    field: str        # the config.json field, for errors: "linux.resources.cpu.shares"
    controller: str   # the hierarchy it lives in: "cpu", "cpuset", "memory"
    name: str         # "cpu.shares"
    value: str


@dataclass
class IdMapping:
    """One line of /proc/PID/uid_map: container ids [inside, inside+size) are host ids from ``host``."""

    inside: int
    host: int
    size: int


@dataclass
class BundleConfig:
    """What ``minicontainer runtime`` executes, read from ``<bundle>/config.json``."""

    bundle: str
    raw: dict
    args: list[str]
    env: list[str]
    cwd: str
    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    umask: int | None = None
    capabilities: dict[str, tuple[str, ...]] = field(default_factory=dict)
    no_new_privileges: bool = False
    rlimits: list[tuple[int, int, int]] = field(default_factory=list)   # (resource, soft, hard)
    oom_score_adj: int | None = None
    rootfs: str = ""
    readonly: bool = False
    hostname: str = ""
    domainname: str = ""
    mounts: list[Mount] = field(default_factory=list)
    hooks: dict[str, list[Hook]] = field(default_factory=dict)
    namespaces: dict[str, str] = field(default_factory=dict)   # our kind -> path to join ("" = new)
    shares_mounts: bool = False   # no mount namespace of its own: its mounts are the runtime's (the host's)
    memory: int | None = None
    cpu_quota: int | None = None     # microseconds of CPU time per period
    cpu_period: int | None = None    # microseconds; the kernel's default is 100000
    pids: int | None = None
    cgroup_files: list[CgroupFile] = field(default_factory=list)   # the other linux.resources, as v1 files
    devices: tuple[DeviceRule, ...] | None = None   # None: every device allowed
    cgroups_path: str = ""
    masked_paths: list[str] = field(default_factory=list)
    readonly_paths: list[str] = field(default_factory=list)
    sysctl: dict[str, str] = field(default_factory=dict)
    uid_mappings: list[IdMapping] = field(default_factory=list)
    gid_mappings: list[IdMapping] = field(default_factory=list)
    device_nodes: list[dict] = field(default_factory=list)   # linux.devices: nodes to create in /dev
    rootfs_propagation: str = ""
    seccomp: dict | None = None
    annotations: dict[str, str] = field(default_factory=dict)
    overlay: tuple[list[str], str, str] | None = None   # (lowers, upper, work) from our engine's annotations

    def path_env(self) -> str:
        for item in self.env:
            if item.startswith("PATH="):
                return item[5:]
        return ""


# Fields of runtime-spec v1.2 this runtime does not implement, by section. The spec says a
# runtime MUST ignore properties it doesn't know at all (extensions); but a field the spec
# defines and we can't honour is refused by name, never ignored.
UNSUPPORTED = {
    "": ("solaris", "windows", "vm", "zos"),
    "process": ("commandLine", "apparmorProfile", "scheduler", "selinuxLabel", "ioPriority", "execCPUAffinity"),
    "process.user": ("username",),
    "linux": ("timeOffsets", "netDevices", "intelRdt", "mountLabel", "personality", "memoryPolicy"),
    "linux.resources": ("rdma", "unified"),
    "linux.resources.memory": ("useHierarchy", "checkBeforeUpdate"),
    "linux.resources.cpu": ("burst", "idle"),
}
SEMVER = re.compile(r"^1\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")


def refuse_unsupported(section: str, values: dict) -> None:
    """Refuse, by name, a field of ``section`` that the spec defines and we don't implement."""
    for key in UNSUPPORTED[section]:
        if values.get(key) not in (None, "", 0, False, [], {}):
            raise _unsupported(f"{section}.{key}" if section else key, values[key])


def refuse(field_name: str, why: str) -> InvalidArgument:
    """A one-line refusal that names the config.json field."""
    return InvalidArgument(f"config.json: {field_name} {why}")


def _unsupported(field_name: str, value: object) -> InvalidArgument:
    return refuse(field_name, f"is {json.dumps(value)[:80]}: minicontainer's runtime does not support it yet; "
                              "remove it from config.json")


def load_bundle_config(bundle: str) -> BundleConfig:
    """Read and check ``<bundle>/config.json``; raise InvalidArgument naming the first bad field."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path) as f:
            raw = json.load(f)
    except FileNotFoundError:
        raise InvalidArgument(f"{path} does not exist: give the bundle directory with --bundle "
                              "(make one with `minicontainer runtime spec`)") from None
    except (OSError, ValueError) as exc:
        raise InvalidArgument(f"{path} can't be read as JSON ({exc}): fix or regenerate it") from None
    if not isinstance(raw, dict):
        raise refuse("(top level)", "is not a JSON object")
    return parse_config(raw, os.path.abspath(bundle))


def parse_config(raw: dict, bundle: str) -> BundleConfig:
    """Turn config.json's dict into a BundleConfig, refusing by name what can't be honoured."""
    refuse_unsupported("", raw)
    if not isinstance(raw.get("ociVersion"), str) or not SEMVER.match(raw["ociVersion"]):
        raise refuse("ociVersion", f"is {json.dumps(raw.get('ociVersion'))}: name the runtime spec version "
                                   "it follows, e.g. \"1.2.0\"")
    config = BundleConfig(bundle=bundle, raw=raw, args=[], env=[], cwd="/")
    _parse_process(config, raw.get("process"))
    _parse_root(config, raw.get("root"))
    config.hostname = _string(raw, "hostname")
    config.domainname = _string(raw, "domainname")
    config.mounts = [_parse_mount(i, m) for i, m in enumerate(raw.get("mounts") or [])]
    _parse_hooks(config, raw.get("hooks") or {})
    config.annotations = dict(raw.get("annotations") or {})
    _parse_overlay(config)
    _parse_linux(config, raw.get("linux") or {})
    return config


def _string(raw: dict, key: str) -> str:
    value = raw.get(key, "")
    if not isinstance(value, str):
        raise refuse(key, "must be a string")
    return value


def _parse_process(config: BundleConfig, process: dict | None) -> None:
    if not isinstance(process, dict):
        raise refuse("process", "is missing: say what to run (process.args, process.cwd)")
    refuse_unsupported("process", process)
    if process.get("terminal"):
        raise refuse("process.terminal", "is true: minicontainer's runtime has no terminal support yet; "
                                         "set it to false (the container then shares the runtime's stdio)")
    args = process.get("args")
    if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise refuse("process.args", "must be a non-empty list of strings: the command to run")
    config.args = list(args)
    config.env = [str(e) for e in process.get("env") or []]
    cwd = process.get("cwd", "")
    if not isinstance(cwd, str) or not cwd.startswith("/"):
        raise InvalidArgument("Cwd must be an absolute path")   # runc's words
    config.cwd = cwd
    user = process.get("user") or {}
    refuse_unsupported("process.user", user)
    config.uid, config.gid = int(user.get("uid", 0)), int(user.get("gid", 0))
    config.additional_gids = [int(g) for g in user.get("additionalGids") or []]
    config.umask = int(user["umask"]) if user.get("umask") is not None else None
    caps = process.get("capabilities") or {}
    for key, names in caps.items():
        if key not in CAPABILITY_SETS:
            raise _unsupported(f"process.capabilities.{key}", names)
        for name in names or []:
            if name not in CAPABILITIES:
                raise refuse(f"process.capabilities.{key}", f"has unknown capability {name!r}: "
                                                            "use names from capabilities(7) like CAP_KILL")
        config.capabilities[key] = tuple(names or ())
    config.no_new_privileges = bool(process.get("noNewPrivileges"))
    for limit in process.get("rlimits") or []:
        name = limit.get("type", "")
        number = getattr(resource, name, None) if name.startswith("RLIMIT_") else None
        if number is None:
            raise refuse("process.rlimits", f"has unknown type {name!r}: use names like RLIMIT_NOFILE")
        config.rlimits.append((number, int(limit.get("soft", 0)), int(limit.get("hard", 0))))
    if process.get("oomScoreAdj") is not None:
        config.oom_score_adj = int(process["oomScoreAdj"])


def _parse_root(config: BundleConfig, root: dict | None) -> None:
    if not isinstance(root, dict) or not root.get("path"):
        raise refuse("root.path", "is missing: name the root filesystem directory (e.g. \"rootfs\")")
    path = root["path"]
    config.rootfs = os.path.normpath(path if os.path.isabs(path) else os.path.join(config.bundle, path))
    config.readonly = bool(root.get("readonly"))


def _parse_mount(i: int, mount: dict) -> Mount:
    where = f"mounts[{i}]"
    destination = mount.get("destination", "")
    if not isinstance(destination, str) or not destination.startswith("/"):
        raise refuse(f"{where}.destination", f"is {destination!r}: it must be an absolute path in the container")
    options = [str(o) for o in mount.get("options") or []]
    kind = mount.get("type") or ("bind" if {"bind", "rbind"} & set(options) else "")
    if kind not in MOUNT_TYPES:
        raise refuse(f"{where}.type", f"is {kind!r} (at {destination}): minicontainer's runtime mounts only "
                                      f"{', '.join(MOUNT_TYPES)}")
    for key in ("uidMappings", "gidMappings"):
        if mount.get(key):
            raise _unsupported(f"{where}.{key}", mount[key])
    return Mount(os.path.normpath(destination), kind, str(mount.get("source") or kind), options)


def _parse_hooks(config: BundleConfig, hooks: dict) -> None:
    for kind, entries in hooks.items():
        if kind not in HOOK_KINDS:
            raise _unsupported(f"hooks.{kind}", entries)
        parsed = []
        for i, hook in enumerate(entries or []):
            if not isinstance(hook.get("path"), str) or not os.path.isabs(hook["path"]):
                raise refuse(f"hooks.{kind}[{i}].path", "must be an absolute path to a program on the host")
            timeout = hook.get("timeout")
            if timeout is not None and int(timeout) <= 0:
                raise refuse(f"hooks.{kind}[{i}].timeout", "must be a positive number of seconds")
            parsed.append(Hook(hook["path"], list(hook.get("args") or [hook["path"]]), list(hook.get("env") or []),
                               int(timeout) if timeout is not None else None))
        config.hooks[kind] = parsed


def _parse_overlay(config: BundleConfig) -> None:
    """Our engine's bundles carry the overlay's directories as annotations (runc wants it mounted)."""
    lowers = config.annotations.get(ANNOTATION + "overlay.lowerdir", "")
    if lowers:
        config.overlay = ([d for d in lowers.split(":") if d], config.annotations.get(ANNOTATION + "overlay.upperdir", ""),
                          config.annotations.get(ANNOTATION + "overlay.workdir", ""))


def _parse_linux(config: BundleConfig, linux: dict) -> None:
    refuse_unsupported("linux", linux)
    for i, ns in enumerate(linux.get("namespaces") or []):
        kind = NAMESPACE_KINDS.get(ns.get("type", ""))
        if kind is None:
            raise refuse(f"linux.namespaces[{i}].type", f"is {ns.get('type')!r}: minicontainer's runtime knows "
                                                        f"{', '.join(NAMESPACE_KINDS)}")
        if kind in config.namespaces:
            raise refuse("linux.namespaces", f"lists {ns['type']!r} twice")
        path = ns.get("path") or ""
        if path and not os.path.exists(path):
            raise refuse(f"linux.namespaces[{i}].path", f"{path!r} does not exist: name a /proc/PID/ns/* file "
                                                        "or a bind-mounted namespace")
        config.namespaces[kind] = path
    config.shares_mounts = shares_runtime_mount_namespace(config.namespaces)
    if config.hostname and "uts" not in config.namespaces:   # one joined by path is the container's too (runc)
        raise InvalidArgument("unable to set hostname without a private UTS namespace")   # runc's words
    _parse_resources(config, linux.get("resources") or {})
    config.cgroups_path = linux.get("cgroupsPath") or ""
    if ":" in config.cgroups_path:
        raise refuse("linux.cgroupsPath", f"is {config.cgroups_path!r}, systemd's slice:prefix:name form: "
                                          "minicontainer's runtime uses cgroupfs paths like /mycontainers/c1")
    config.masked_paths = list(linux.get("maskedPaths") or [])
    config.readonly_paths = list(linux.get("readonlyPaths") or [])
    for name, paths in (("maskedPaths", config.masked_paths), ("readonlyPaths", config.readonly_paths)):
        for path in paths:
            if not str(path).startswith("/"):
                raise refuse(f"linux.{name}", f"has {path!r}: each path must be absolute, as the container sees it")
    config.sysctl = {str(k): str(v) for k, v in (linux.get("sysctl") or {}).items()}
    for key in config.sysctl:
        _check_sysctl(config, key)
    config.uid_mappings = [_mapping("linux.uidMappings", m) for m in linux.get("uidMappings") or []]
    config.gid_mappings = [_mapping("linux.gidMappings", m) for m in linux.get("gidMappings") or []]
    if (config.uid_mappings or config.gid_mappings) and "user" not in config.namespaces:
        raise refuse("linux.uidMappings", "is set without a user namespace: add {\"type\": \"user\"}")
    if "user" in config.namespaces and not config.namespaces["user"] and not (config.uid_mappings and config.gid_mappings):
        raise refuse("linux.uidMappings", "is empty: a new user namespace needs uidMappings and gidMappings")
    for i, node in enumerate(linux.get("devices") or []):
        if node.get("type") not in ("c", "b", "u", "p") or not str(node.get("path", "")).startswith("/dev/"):
            raise refuse(f"linux.devices[{i}]", "needs a type (c, b, u or p) and a path under /dev/")
        config.device_nodes.append(dict(node))
    propagation = linux.get("rootfsPropagation") or ""
    if propagation not in ("", "private", "rprivate", "slave", "rslave", "shared", "rshared", "unbindable",
                           "runbindable"):
        raise refuse("linux.rootfsPropagation", f"is {propagation!r}: use private, slave, shared or unbindable "
                                                "(r- for recursive)")
    config.rootfs_propagation = propagation
    if linux.get("seccomp"):
        config.seccomp = dict(linux["seccomp"])


def shares_runtime_mount_namespace(namespaces: dict[str, str]) -> bool:
    """Does the container stay in the runtime's own mount namespace (none listed, or a path to ours)?"""
    if "mnt" not in namespaces:
        return True
    path = namespaces["mnt"]
    if not path:
        return False
    theirs, ours = os.stat(path), os.stat("/proc/self/ns/mnt")
    return (theirs.st_dev, theirs.st_ino) == (ours.st_dev, ours.st_ino)


def _check_sysctl(config: BundleConfig, key: str) -> None:
    """Only sysctls that belong to one of the container's own namespaces (runc's rule)."""
    own = lambda kind: kind in config.namespaces and not config.namespaces[kind]  # noqa: E731
    if key in IPC_SYSCTLS or key.startswith("fs.mqueue."):
        if own("ipc"):
            return
        raise InvalidArgument(f"sysctl {key!r} is not allowed in the hosts ipc namespace")
    if key.startswith("net."):
        if own("net"):
            return
        raise InvalidArgument(f"sysctl {key!r} is not allowed in the hosts network namespace")
    if key in ("kernel.hostname", "kernel.domainname"):
        if own("uts"):
            return
        raise InvalidArgument(f"sysctl {key!r} is not allowed in the hosts uts namespace")
    raise InvalidArgument(f"sysctl {key!r} is not in a separate kernel namespace")


def _mapping(field_name: str, m: dict) -> IdMapping:
    try:
        return IdMapping(int(m["containerID"]), int(m["hostID"]), int(m["size"]))
    except (KeyError, TypeError, ValueError):
        raise refuse(field_name, f"has {m}: each entry needs containerID, hostID and size") from None


def _parse_resources(config: BundleConfig, resources: dict) -> None:
    """linux.resources: memory, cpu, pids and devices; refuse the rest by name."""
    refuse_unsupported("linux.resources", resources)
    _parse_memory(config, resources.get("memory") or {})
    _parse_cpu(config, resources.get("cpu") or {})
    _parse_block_io(config, resources.get("blockIO") or {})
    _parse_hugepages(config, resources.get("hugepageLimits") or [])
    _parse_network(config, resources.get("network") or {})
    pids = resources.get("pids") or {}
    if pids.get("limit") is not None and pids["limit"] > 0:
        config.pids = int(pids["limit"])
    config.devices = device_rules(resources.get("devices") or [])


# linux.resources.memory fields -> v1 files, in the order runc writes them (after the limit)
MEMORY_FILES = (("swap", "memory.memsw.limit_in_bytes"), ("reservation", "memory.soft_limit_in_bytes"),
                ("kernel", "memory.kmem.limit_in_bytes"), ("kernelTCP", "memory.kmem.tcp.limit_in_bytes"),
                ("swappiness", "memory.swappiness"))


def _parse_memory(config: BundleConfig, memory: dict) -> None:
    """memory.limit through the engine's driver; swap, reservation, kernel, swappiness, OOM killer as v1 files."""
    refuse_unsupported("linux.resources.memory", memory)
    if memory.get("limit") is not None and memory["limit"] >= 0:
        config.memory = int(memory["limit"])
    for key, name in MEMORY_FILES:
        if memory.get(key) is not None:
            config.cgroup_files.append(CgroupFile(f"linux.resources.memory.{key}", "memory", name,
                                                  str(int(memory[key]))))
    if memory.get("disableOOMKiller"):
        config.cgroup_files.append(CgroupFile("linux.resources.memory.disableOOMKiller", "memory",
                                              "memory.oom_control", "1"))


# linux.resources.cpu fields -> v1 files, in the order runc writes them (shares, then quota and period)
CPU_FILES = (("shares", "cpu", "cpu.shares"), ("realtimePeriod", "cpu", "cpu.rt_period_us"),
             ("realtimeRuntime", "cpu", "cpu.rt_runtime_us"), ("cpus", "cpuset", "cpuset.cpus"),
             ("mems", "cpuset", "cpuset.mems"))


def _parse_cpu(config: BundleConfig, cpu: dict) -> None:
    """cpu.quota and period (cpu.max on v2); shares, realtime and cpuset as v1 files."""
    refuse_unsupported("linux.resources.cpu", cpu)
    if cpu.get("period"):
        config.cpu_period = int(cpu["period"])
    if cpu.get("quota") is not None and cpu["quota"] > 0:
        config.cpu_quota = int(cpu["quota"])
    for key, controller, name in CPU_FILES:
        if cpu.get(key) not in (None, ""):
            value = cpu[key] if isinstance(cpu[key], str) else str(int(cpu[key]))
            config.cgroup_files.append(CgroupFile(f"linux.resources.cpu.{key}", controller, name, value))


# linux.resources.blockIO fields -> v1 files of the blkio controller
BLOCK_IO_FILES = (("weight", "blkio.weight"), ("leafWeight", "blkio.leaf_weight"))
BLOCK_IO_DEVICE_FILES = (("weightDevice", "weight", "blkio.weight_device"),
                         ("weightDevice", "leafWeight", "blkio.leaf_weight_device"),
                         ("throttleReadBpsDevice", "rate", "blkio.throttle.read_bps_device"),
                         ("throttleWriteBpsDevice", "rate", "blkio.throttle.write_bps_device"),
                         ("throttleReadIOPSDevice", "rate", "blkio.throttle.read_iops_device"),
                         ("throttleWriteIOPSDevice", "rate", "blkio.throttle.write_iops_device"))


def _parse_block_io(config: BundleConfig, block_io: dict) -> None:
    """blockIO weights and per-device throttles as v1 files ("MAJOR:MINOR VALUE", one device per write)."""
    for key, name in BLOCK_IO_FILES:
        if block_io.get(key) is not None:
            config.cgroup_files.append(CgroupFile(f"linux.resources.blockIO.{key}", "blkio", name,
                                                  str(int(block_io[key]))))
    for key, value_key, name in BLOCK_IO_DEVICE_FILES:
        for i, device in enumerate(block_io.get(key) or []):
            if device.get(value_key) is None:
                continue
            try:
                value = f"{int(device['major'])}:{int(device['minor'])} {int(device[value_key])}"
            except (KeyError, TypeError, ValueError):
                raise refuse(f"linux.resources.blockIO.{key}[{i}]", f"is {device}: each entry needs major, "
                                                                    f"minor and {value_key}") from None
            config.cgroup_files.append(CgroupFile(f"linux.resources.blockIO.{key}[{i}]", "blkio", name, value))


def _parse_hugepages(config: BundleConfig, limits: list[dict]) -> None:
    """hugepageLimits: hugetlb.<pageSize>.limit_in_bytes, one file per page size ("2MB", "1GB")."""
    for i, entry in enumerate(limits):
        size = entry.get("pageSize", "")
        if not re.fullmatch(r"\d+[KMG]B", str(size)) or entry.get("limit") is None:
            raise refuse(f"linux.resources.hugepageLimits[{i}]", f"is {entry}: each entry needs a pageSize "
                                                                 "like \"2MB\" and a limit in bytes")
        config.cgroup_files.append(CgroupFile(f"linux.resources.hugepageLimits[{i}]", "hugetlb",
                                              f"hugetlb.{size}.limit_in_bytes", str(int(entry["limit"]))))


def _parse_network(config: BundleConfig, network: dict) -> None:
    """network: net_cls.classid (tags the container's packets for tc) and net_prio.ifpriomap."""
    if network.get("classID") is not None:
        config.cgroup_files.append(CgroupFile("linux.resources.network.classID", "net_cls", "net_cls.classid",
                                              str(int(network["classID"]))))
    for i, entry in enumerate(network.get("priorities") or []):
        config.cgroup_files.append(CgroupFile(f"linux.resources.network.priorities[{i}]", "net_prio",
                                              "net_prio.ifpriomap", f"{entry.get('name')} {int(entry.get('priority', 0))}"))


# runc adds these to every container's device allow-list, whatever config.json says
_RUNC_ALLOWED = (DeviceRule("c", -1, -1, "m"), DeviceRule("b", -1, -1, "m"),
                 DeviceRule("c", 1, 3, "rwm"), DeviceRule("c", 1, 5, "rwm"), DeviceRule("c", 1, 7, "rwm"),
                 DeviceRule("c", 1, 8, "rwm"), DeviceRule("c", 1, 9, "rwm"), DeviceRule("c", 5, 0, "rwm"),
                 DeviceRule("c", 5, 2, "rwm"), DeviceRule("c", 136, -1, "rwm"), DeviceRule("c", 10, 200, "rwm"))


def device_rules(entries: list[dict]) -> tuple[DeviceRule, ...] | None:
    """linux.resources.devices as an allow-list (None: allow all), with runc's defaults added.

    The kernel's v1 files and our v2 program both start from "deny all"; a rule that
    denies one device after allowing more can't be expressed that way, so it is refused.
    """
    rules: list[DeviceRule] = []
    allow_all = True   # a fresh device cgroup allows everything until told to deny all
    for i, entry in enumerate(entries):
        kind = entry.get("type") or "a"
        major = entry.get("major")
        minor = entry.get("minor")
        access = entry.get("access") or "rwm"
        everything = kind == "a" and major in (None, -1) and minor in (None, -1)
        if not entry.get("allow"):
            if everything and set(access) >= set("rwm"):
                rules, allow_all = [], False   # deny all: start the list again
                continue
            raise refuse(f"linux.resources.devices[{i}]", f"denies {entry}: minicontainer's runtime builds an "
                                                          "allow-list after denying all; deny all, then allow")
        if everything and set(access) >= set("rwm"):
            allow_all = True
            continue
        for k in (["c", "b"] if kind == "a" else [kind]):
            rules.append(DeviceRule(k, -1 if major is None else int(major), -1 if minor is None else int(minor),
                                    "".join(c for c in "rwm" if c in access)))
    if allow_all:
        return None
    # in runc's order (it sorts its rules: block before char, "*" first, then by number); no duplicates
    unique = dict.fromkeys(rules + list(_RUNC_ALLOWED))
    return tuple(sorted(unique, key=lambda r: (r.kind, r.major, r.minor)))
