"""The OCI bundle: the engine writes config.json, the runtime runs what it says, runc can too."""
from __future__ import annotations

import json
import shutil
import subprocess
import uuid

import pytest

import minicontainer
from minicontainer.errors import InvalidArgument
from minicontainer.kernel.mounts import Volume
from minicontainer.runtime.oci import OCI_VERSION, spec_from_config, spec_to_config
from minicontainer.runtime.spec import ContainerSpec


def _spec() -> ContainerSpec:
    return ContainerSpec(id="c1", args=["sh", "-c", "echo hi"], rootfs="/r/rootfs", lowers=["/l/2", "/l/1"],
                         upper="/r/upper", work="/r/work", env=["PATH=/bin"], cwd="/tmp", hostname="box",
                         volumes=[Volume("/srv", "/data", True)], readonly=True,
                         cgroup_procs=["/sys/fs/cgroup/x/cgroup.procs"], capabilities=("CAP_CHOWN", "CAP_KILL"))


def test_a_spec_survives_the_trip_through_config_json():
    config = json.loads(json.dumps(spec_to_config(_spec(), memory=64 << 20, cpus=0.5, pids=10)))
    assert config["ociVersion"] == OCI_VERSION
    assert config["process"]["capabilities"]["bounding"] == ["CAP_CHOWN", "CAP_KILL"]
    assert config["process"]["capabilities"]["ambient"] == []
    assert config["process"]["noNewPrivileges"] is True
    assert [ns["type"] for ns in config["linux"]["namespaces"]] == ["pid", "mount", "uts", "ipc", "network", "cgroup"]
    assert config["linux"]["resources"] == {"memory": {"limit": 64 << 20}, "cpu": {"quota": 50000, "period": 100000},
                                            "pids": {"limit": 10}}
    assert {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "ro"]} in config["mounts"]
    assert config["linux"]["cgroupsPath"] == "/x"   # v2's one cgroup directory, for runc to use too
    assert spec_from_config(config, "c1") == _spec()


@pytest.mark.parametrize("change, field", [
    (lambda c: c["process"].update(rlimits=[{"type": "RLIMIT_NOFILE", "hard": 10, "soft": 10}]), "process.rlimits"),
    (lambda c: c.update(hooks={"prestart": [{"path": "/bin/true"}]}), "hooks"),
    (lambda c: c["linux"].update(mountLabel="system_u:object_r:container_file_t"), "linux.mountLabel"),
    (lambda c: c["process"].update(user={"uid": 1000, "gid": 1000, "umask": 18}), "process.user"),
    (lambda c: c["linux"]["namespaces"].append({"type": "user"}), "linux.namespaces"),
    (lambda c: c["linux"]["namespaces"][0].update(path="/proc/1/ns/pid"), "linux.namespaces"),
    (lambda c: c["linux"]["seccomp"].update(defaultAction="SCMP_ACT_NOTIFY"), "linux.seccomp"),
    (lambda c: c["linux"]["seccomp"].update(listenerPath="/run/agent.sock"), "linux.seccomp.listenerPath"),
    (lambda c: c["mounts"].append({"destination": "/x", "type": "nfs", "source": "h:/x"}), "mounts"),
    (lambda c: c["process"]["capabilities"].update(ambient=["CAP_KILL"]), "process.capabilities"),
])
def test_what_the_runtime_cant_do_is_refused_by_field_never_ignored(change, field):
    config = spec_to_config(_spec())
    change(config)
    with pytest.raises(InvalidArgument) as info:
        spec_from_config(config, "c1")
    assert str(info.value).startswith(f"config.json: {field} ") and "\n" not in str(info.value)


def test_a_run_leaves_its_bundle_in_the_container_directory(engine_root):
    result = minicontainer.run("busybox", "hostname", hostname="box", memory="32m", remove=False)
    bundle = engine_root / "containers" / result.container_id / "bundle"
    config = json.loads((bundle / "config.json").read_text())
    assert config["hostname"] == "box" and result.stdout == "box\n"
    assert config["root"]["path"] == str(engine_root / "containers" / result.container_id / "rootfs")
    assert config["linux"]["resources"]["memory"]["limit"] == 32 << 20
    devices = config["linux"]["resources"]["devices"]
    assert devices[0] == {"allow": False, "access": "rwm"}   # deny all, then the allow-list the engine enforces
    assert {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rwm"} in devices
    assert (bundle / "config.json").stat().st_mode & 0o777 == 0o600


@pytest.mark.peer
@pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (Debian package runc)")
def test_runc_runs_the_same_bundle_unchanged(engine_root, tmp_path):
    ours = minicontainer.run("busybox", "hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp)' /proc/self/status; "
                                        "wc -c < /proc/keys", hostname="box", remove=False)
    bundle = engine_root / "containers" / ours.container_id / "bundle"
    before = (bundle / "config.json").read_bytes()
    config = json.loads(before)
    notes = config["annotations"]
    rootfs = config["root"]["path"]
    # runc expects the root filesystem mounted; our runtime mounts the overlay itself (an annotation says how)
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o",
                    f"lowerdir={notes['org.minicontainer.overlay.lowerdir']},"
                    f"upperdir={notes['org.minicontainer.overlay.upperdir']},"
                    f"workdir={notes['org.minicontainer.overlay.workdir']}", rootfs], check=True)
    name = "mc-test-" + uuid.uuid4().hex[:8]
    try:
        theirs = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle), name],
                                capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", str(tmp_path / "runc"), "delete", "--force", name], capture_output=True)
        subprocess.run(["umount", rootfs], check=True)
    assert theirs.returncode == 0, theirs.stderr
    assert "Seccomp:\t2" in ours.stdout   # a filter is loaded, by each runtime from the same linux.seccomp
    assert theirs.stdout == ours.stdout   # same hostname, capabilities, no_new_privs, seccomp, masked /proc/keys
    assert (bundle / "config.json").read_bytes() == before


def test_a_privileged_read_write_sys_survives_the_trip_through_config_json():
    spec = _spec()
    spec.sys_readonly = False
    config = spec_to_config(spec)
    sysfs = next(m for m in config["mounts"] if m["destination"] == "/sys")
    assert "ro" not in sysfs["options"] and spec_from_config(config, "c1") == spec
    assert "ro" in next(m for m in spec_to_config(_spec())["mounts"] if m["destination"] == "/sys")["options"]
