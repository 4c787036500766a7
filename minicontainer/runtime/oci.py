"""The OCI runtime spec's config.json: what the engine hands the runtime, and nothing else.

Docker, through containerd, writes an OCI *bundle* for every container: a directory with
a ``config.json`` (what to run, in which namespaces, with which capabilities, mounts and
limits) and the root filesystem. A runtime such as runc reads only that. minicontainer
does the same: :func:`spec_to_config` turns a :class:`ContainerSpec` into runtime-spec
v1.2 JSON, and :func:`spec_from_config` is how the runtime reads it back. So the same
bundle can be run by ``runc run --bundle DIR``.

Two things have no field in the spec, so they travel as annotations, as containerd's own
do: the overlay's layer directories (the engine mounts the root itself, runc expects it
mounted) and the cgroup.procs files the engine prepared.
"""
from __future__ import annotations

import json
import os

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..kernel.devices import DeviceRule
from ..kernel.mounts import Volume
from ..kernel.seccomp import ACTIONS as SECCOMP_ACTIONS
from .spec import ContainerSpec

OCI_VERSION = "1.2.0"
# our namespace names -> the spec's
OCI_NAMESPACES = {"pid": "pid", "mnt": "mount", "uts": "uts", "ipc": "ipc", "net": "network", "cgroup": "cgroup"}
ANNOTATION = "org.minicontainer."
# the filesystems every container gets, as runc's default spec lists them
STANDARD_MOUNTS = [
    {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
]
# --privileged: /sys read-write, as Docker's privileged spec has it
SYSFS_RW = {**STANDARD_MOUNTS[2], "options": ["nosuid", "noexec", "nodev"]}
CFS_PERIOD_US = 100_000
CGROUP_MOUNT = "/sys/fs/cgroup"


def _user_to_config(user: tuple) -> dict:
    uid, gid, groups = user
    return {"uid": uid, "gid": gid, **({"additionalGids": list(groups)} if groups else {})}


def device_rules_to_config(rules: tuple[DeviceRule, ...]) -> list[dict]:
    """The device allow-list as linux.resources.devices: deny all, then allow each rule."""
    out: list[dict] = [{"allow": False, "access": "rwm"}]
    for rule in rules:
        entry: dict = {"allow": True, "type": rule.kind}
        if rule.major >= 0:
            entry["major"] = rule.major
        if rule.minor >= 0:
            entry["minor"] = rule.minor
        entry["access"] = rule.access
        out.append(entry)
    return out


def spec_to_config(spec: ContainerSpec, *, memory: int | None = None, cpus: float | None = None,
                   pids: int | None = None, devices: tuple[DeviceRule, ...] | None = None) -> dict:
    """The runtime-spec config.json for ``spec``, with the cgroup limits and device rules the engine sets."""
    caps = list(spec.capabilities)
    mounts = [dict(m) for m in STANDARD_MOUNTS[:2]] + [dict(STANDARD_MOUNTS[2] if spec.sys_readonly else SYSFS_RW)]
    for volume in spec.volumes:
        mounts.append({"destination": volume.target, "type": "bind", "source": volume.source,
                       "options": ["rbind", "ro" if volume.readonly else "rw"]})
    resources: dict = {}
    if memory is not None:
        resources["memory"] = {"limit": memory}
    if cpus is not None:
        resources["cpu"] = {"quota": round(cpus * CFS_PERIOD_US), "period": CFS_PERIOD_US}
    if pids is not None:
        resources["pids"] = {"limit": pids}
    if devices is not None:
        resources["devices"] = device_rules_to_config(devices)
    linux: dict = {"namespaces": [{"type": OCI_NAMESPACES[kind]} for kind in spec.namespaces],
                   "maskedPaths": list(spec.masked_paths), "readonlyPaths": list(spec.readonly_paths)}
    if resources:
        linux["resources"] = resources
    if spec.seccomp is not None:
        linux["seccomp"] = spec.seccomp
    if len(spec.cgroup_procs) == 1 and spec.cgroup_procs[0].startswith(CGROUP_MOUNT + "/"):
        # cgroup v2: one directory, so another runtime (runc) can be pointed at the same
        # place, inside the engine's delegated subtree. v1's directories differ per
        # hierarchy, so there the field stays out and runc would choose for itself.
        linux["cgroupsPath"] = os.path.dirname(spec.cgroup_procs[0])[len(CGROUP_MOUNT):]
    return {
        "ociVersion": OCI_VERSION,
        "process": {"terminal": spec.terminal, "user": _user_to_config(spec.user), "args": list(spec.args),
                    "env": list(spec.env), "cwd": spec.cwd,
                    "capabilities": {"bounding": caps, "effective": caps, "permitted": caps,
                                     "inheritable": caps, "ambient": []},
                    "noNewPrivileges": spec.no_new_privileges},
        "root": {"path": spec.rootfs, "readonly": spec.readonly},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": linux,
        "annotations": {ANNOTATION + "overlay.lowerdir": ":".join(spec.lowers),
                        ANNOTATION + "overlay.upperdir": spec.upper,
                        ANNOTATION + "overlay.workdir": spec.work,
                        ANNOTATION + "cgroup.procs": json.dumps(spec.cgroup_procs)},
    }


# what this reader knows; any other field, set, is refused by name (the full runtime,
# `minicontainer runtime`, honours more of them)
KNOWN_FIELDS = {"ociVersion", "process", "root", "hostname", "mounts", "linux", "annotations"}
KNOWN_PROCESS_FIELDS = {"terminal", "user", "args", "env", "cwd", "capabilities", "noNewPrivileges"}
KNOWN_LINUX_FIELDS = {"namespaces", "maskedPaths", "readonlyPaths", "resources", "seccomp", "cgroupsPath",
                      "devices", "sysctl", "uidMappings", "gidMappings"}


def check_seccomp(seccomp: dict) -> None:
    """Refuse, by field, the parts of linux.seccomp the runtime can't apply."""
    if seccomp.get("listenerPath") or seccomp.get("listenerMetadata"):
        raise _refuse("linux.seccomp.listenerPath", "is set (seccomp user notification)")
    if seccomp.get("flags"):
        raise _refuse("linux.seccomp.flags", f"is {seccomp['flags']}")
    actions = [seccomp.get("defaultAction")] + [rule.get("action") for rule in seccomp.get("syscalls") or []]
    for action in actions:
        if action not in SECCOMP_ACTIONS:
            raise _refuse("linux.seccomp", f"has action {action!r}")


def _refuse(field: str, why: str) -> InvalidArgument:
    return InvalidArgument(f"config.json: {field} {why}: minicontainer's runtime does not support it yet")


def spec_from_config(config: dict, container_id: str) -> ContainerSpec:
    """Read a config.json back into what the runtime executes; refuse, by field, what it can't do."""
    process, linux, notes = config.get("process") or {}, config.get("linux") or {}, config.get("annotations") or {}
    for where, value, known in (("", config, KNOWN_FIELDS), ("process.", process, KNOWN_PROCESS_FIELDS),
                                ("linux.", linux, KNOWN_LINUX_FIELDS)):
        extra = sorted(k for k, v in value.items() if k not in known and v not in (None, {}, [], ""))
        if extra:
            raise _refuse(f"{where}{extra[0]}", "is set")
    user = process.get("user") or {}
    if set(user) - {"uid", "gid", "additionalGids"}:
        raise _refuse("process.user", f"has {sorted(set(user) - {'uid', 'gid', 'additionalGids'})}")
    ours = {oci: kind for kind, oci in OCI_NAMESPACES.items()}
    namespaces = []
    for ns in linux.get("namespaces") or []:
        if ns.get("type") not in ours or ns.get("path"):
            raise _refuse("linux.namespaces", f"has {ns}")
        namespaces.append(ours[ns["type"]])
    volumes, sys_readonly = [], True
    for mount in config.get("mounts") or []:
        if mount == SYSFS_RW:
            sys_readonly = False
            continue
        if mount in STANDARD_MOUNTS:
            continue
        options = mount.get("options") or []
        if mount.get("type") != "bind" or not set(options) <= {"rbind", "bind", "ro", "rw"}:
            raise _refuse("mounts", f"has {mount.get('destination')!r} ({mount.get('type')}, {options})")
        volumes.append(Volume(mount["source"], mount["destination"], "ro" in options))
    seccomp = linux.get("seccomp")
    if seccomp is not None:
        check_seccomp(seccomp)
    for field in ("devices", "sysctl", "uidMappings", "gidMappings"):
        if linux.get(field):
            raise _refuse(f"linux.{field}", "is set")
    caps = process.get("capabilities") or {}
    if caps.get("ambient") or len({tuple(caps.get(k) or ()) for k in ("bounding", "effective", "permitted",
                                                                       "inheritable")}) > 1:
        raise _refuse("process.capabilities", "differ between sets (or ambient is not empty)")
    return ContainerSpec(
        id=container_id, args=list(process.get("args") or []), rootfs=config["root"]["path"],
        lowers=[d for d in notes.get(ANNOTATION + "overlay.lowerdir", "").split(":") if d],
        upper=notes.get(ANNOTATION + "overlay.upperdir", ""), work=notes.get(ANNOTATION + "overlay.workdir", ""),
        env=list(process.get("env") or []), cwd=process.get("cwd") or "/", hostname=config.get("hostname") or "",
        namespaces=tuple(namespaces), volumes=volumes, readonly=bool(config["root"].get("readonly")),
        sys_readonly=sys_readonly,
        cgroup_procs=json.loads(notes.get(ANNOTATION + "cgroup.procs", "[]")),
        capabilities=tuple(caps.get("bounding") or ()), no_new_privileges=bool(process.get("noNewPrivileges")),
        seccomp=seccomp, terminal=bool(process.get("terminal")),
        user=(int(user.get("uid", 0)), int(user.get("gid", 0)), tuple(int(g) for g in user.get("additionalGids") or ())),
        masked_paths=tuple(linux.get("maskedPaths") or ()), readonly_paths=tuple(linux.get("readonlyPaths") or ()))


def write_bundle(bundle: str | os.PathLike, config: dict, *, durable: bool = True) -> str:
    """Write ``config`` as ``<bundle>/config.json``, atomically; return its path.

    Compact, as containerd writes it: the seccomp allow-list makes an indented file ~400
    lines long, and indenting runs Python's slow JSON encoder on every container start.
    `python3 -m json.tool config.json` (or JupyterLab's viewer) shows it indented.
    """
    os.makedirs(bundle, mode=0o700, exist_ok=True)
    path = os.path.join(bundle, "config.json")
    write_atomic(path, json.dumps(config, separators=(",", ":")).encode() + b"\n", mode=0o600, durable=durable)
    return path


def read_bundle(bundle: str | os.PathLike, container_id: str) -> ContainerSpec:
    """What the runtime runs: ``<bundle>/config.json``, read back and checked."""
    with open(os.path.join(bundle, "config.json")) as f:
        return spec_from_config(json.load(f), container_id)
