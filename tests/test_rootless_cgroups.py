"""The engine inside a user namespace ("rootless", as in the grading container): the kernel
refuses the device cgroup and mknod there, so the engine skips the one and binds the other,
each in a Step that says so; in the host's user namespace nothing changes.

Each test forks a child that unshares a user namespace (its root mapped to the host's root,
so it can still reach the test's files) and a private mount namespace, and reports back
over a pipe: real kernel, no fakes.
"""
from __future__ import annotations

import json
import os
import stat
import uuid

import pytest

from minicontainer.errors import KernelError
from minicontainer.kernel import cgroups, mounts, syscalls
from minicontainer.kernel.devices import DEFAULT_RULES, attach_device_program, device_program, \
    in_initial_user_namespace
from minicontainer.runtime.bundle_config import BundleConfig, Mount
from minicontainer.runtime.bundle_init import populate_dev
from minicontainer.trace import recording

pytestmark = pytest.mark.v2   # the device cgroup differs most between v1 and v2: run in the v2 guest too


def in_child(action, *, user_namespace: bool = True) -> dict:
    """Run ``action()`` in a forked child with its own mount namespace (and, by default, user
    namespace, root mapped to the host's root); return {"value": ...} or {"error": "Type: message"}."""
    result_r, result_w = os.pipe()
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(result_r)
            if user_namespace:
                syscalls.unshare(syscalls.CLONE_NEWUSER)
                os.write(ready_w, b"u")
                os.read(mapped_r, 1)      # the parent has written our id maps
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            result = {"value": action()}
        except BaseException as exc:  # noqa: BLE001 - everything goes back to the test
            result = {"error": f"{type(exc).__name__}: {exc}"}
        os.write(result_w, json.dumps(result).encode())
        os._exit(0)
    os.close(result_w)
    os.close(ready_w)
    os.close(mapped_r)
    try:
        if user_namespace:
            assert os.read(ready_r, 1) == b"u", "the child could not unshare a user namespace"
            for name in ("uid_map", "gid_map"):
                with open(f"/proc/{pid}/{name}", "w") as f:
                    f.write("0 0 1\n")
            os.write(mapped_w, b"m")
        with os.fdopen(result_r, "rb") as f:
            data = f.read()
    finally:
        os.close(ready_r)
        os.close(mapped_w)
        os.waitpid(pid, 0)
    return json.loads(data)


def test_the_host_is_the_initial_user_namespace_and_a_child_user_namespace_is_not():
    assert in_initial_user_namespace(), "the tests run as root in the host's user namespace"
    assert in_child(in_initial_user_namespace) == {"value": False}
    assert in_child(in_initial_user_namespace, user_namespace=False) == {"value": True}


def _refuse_device_cgroup_directly(cg: cgroups.Cgroup) -> None:
    """What allow_devices would do, done anyway: the kernel's answer in a user namespace."""
    if cg.version == 1:
        with open(os.path.join(cg.paths()["devices"], "devices.deny"), "w") as f:
            f.write("a")
    else:
        attach_device_program(cg.paths()["unified"], device_program(DEFAULT_RULES))


def _device_list(cg: cgroups.Cgroup) -> str:
    if cg.version == 1:
        with open(os.path.join(cg.paths()["devices"], "devices.list")) as f:
            return f.read().strip()
    return ""


def test_in_a_user_namespace_allow_devices_is_skipped_with_a_step_because_the_kernel_refuses_it():
    cg = cgroups.open_cgroup("rootless-" + uuid.uuid4().hex[:8])
    cg.create()
    try:
        before = _device_list(cg)

        def refused_then_skipped() -> dict:
            try:
                _refuse_device_cgroup_directly(cg)
                refused = ""
            except (OSError, KernelError) as exc:
                refused = type(exc).__name__
            with recording() as trace:
                cg.allow_devices()
            return {"refused": refused, "steps": [(s.name, s.result, s.why) for s in trace]}

        got = in_child(refused_then_skipped)
        assert "error" not in got, got
        assert got["value"]["refused"] in ("PermissionError", "KernelError"), \
            "in a user namespace the kernel refuses the device cgroup even to its root"
        [(name, result, why)] = got["value"]["steps"]
        assert name == "cgroup_devices_skipped" and result.startswith("skipped")
        assert "mknod is refused" in why and "outer container" in why, "the Step says why skipping is safe"
        assert _device_list(cg) == before, "nothing was written to the device cgroup"

        # the host's user namespace: the allow-list is set, as before
        with recording() as trace:
            cg.allow_devices()
        assert "cgroup_devices_skipped" not in trace.names() and "cgroup_devices" in trace.names()
        if cg.version == 1:
            assert _device_list(cg) != before and "c 1:3 rwm" in _device_list(cg)
    finally:
        cg.remove()


def _mount_dev_in(rootfs: str) -> dict:
    syscalls.mount("tmpfs", rootfs, "tmpfs", 0, "size=1m")
    step = mounts.mount_dev(rootfs)
    null = os.stat(os.path.join(rootfs, "dev/null"))
    with open(os.path.join(rootfs, "dev/null"), "w") as f:
        f.write("gone")
    try:
        os.mknod(os.path.join(rootfs, "dev/another-null"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        mknod = "allowed"
    except PermissionError:
        mknod = "refused"
    return {"call": step.call, "why": step.why, "null": [stat.S_ISCHR(null.st_mode), os.major(null.st_rdev),
                                                          os.minor(null.st_rdev)], "mknod": mknod,
            "dev": sorted(os.listdir(os.path.join(rootfs, "dev")))}


def test_in_a_user_namespace_mount_dev_binds_the_safe_devices_since_mknod_is_refused(tmp_path):
    (tmp_path / "rootfs").mkdir()
    got = in_child(lambda: _mount_dev_in(str(tmp_path / "rootfs")))
    assert "error" not in got, got
    value = got["value"]
    assert value["mknod"] == "refused", "the kernel refuses mknod in a user namespace"
    assert value["null"] == [True, 1, 3], "/dev/null is still the null device (a bind mount of ours)"
    assert {"null", "zero", "full", "random", "urandom", "tty", "pts", "shm"} <= set(value["dev"])
    assert "bind /dev/null" in value["call"] and "mknod is refused" in value["why"]


def test_in_the_hosts_user_namespace_mount_dev_still_makes_the_nodes_with_mknod(tmp_path):
    (tmp_path / "rootfs").mkdir()
    got = in_child(lambda: _mount_dev_in(str(tmp_path / "rootfs")), user_namespace=False)
    assert "error" not in got, got
    assert got["value"]["mknod"] == "allowed" and got["value"]["null"] == [True, 1, 3]
    assert "mknod null 1:3" in got["value"]["call"] and "bind" not in got["value"]["call"]


def _runtime_populate_dev_in(rootfs: str) -> dict:
    """minicontainer runtime's /dev for a bundle that asks for no user namespace of its own."""
    syscalls.mount("tmpfs", rootfs, "tmpfs", 0, "size=1m")
    os.mkdir(os.path.join(rootfs, "dev"))
    syscalls.mount("tmpfs", os.path.join(rootfs, "dev"), "tmpfs", 0, "size=1m")
    config = BundleConfig(bundle=rootfs, raw={}, args=["true"], env=[], cwd="/", rootfs=rootfs,
                          mounts=[Mount("/dev", "tmpfs", "tmpfs", ["nosuid"])], namespaces={"mount": ""})
    populate_dev(config)
    null = os.stat(os.path.join(rootfs, "dev/null"))
    with open(os.path.join(rootfs, "dev/zero"), "rb") as f:
        zero = f.read(4)
    return {"null": [stat.S_ISCHR(null.st_mode), os.major(null.st_rdev), os.minor(null.st_rdev)], "zero": zero.hex()}


def test_the_runtime_run_inside_a_user_namespace_binds_device_nodes_for_a_bundle_without_one(tmp_path):
    """Nested in a user namespace (the grader's container), a bundle with no user namespace of
    its own still can't mknod: the runtime binds the nodes, as it does for a bundle that has one."""
    (tmp_path / "rootfs").mkdir()
    got = in_child(lambda: _runtime_populate_dev_in(str(tmp_path / "rootfs")))
    assert got == {"value": {"null": [True, 1, 3], "zero": "00000000"}}, got
    got = in_child(lambda: _runtime_populate_dev_in(str(tmp_path / "rootfs")), user_namespace=False)
    assert got == {"value": {"null": [True, 1, 3], "zero": "00000000"}}, "on the host: mknod, as before"


def test_a_delegated_cgroups_children_are_removed_deepest_first_so_the_cgroup_itself_can_go():
    cg = cgroups.open_cgroup("delegated-" + uuid.uuid4().hex[:8])
    cg.create()
    try:
        for directory in dict.fromkeys(cg.paths().values()):
            os.makedirs(os.path.join(directory, "kernel"))
            os.makedirs(os.path.join(directory, "minicontainer", "lab-container"))
        with pytest.raises(KernelError, match="EBUSY"):
            cgroups.remove_cgroup_dir(next(iter(cg.paths().values())), "with children", timeout=0)
        with recording() as trace:
            for directory in dict.fromkeys(cg.paths().values()):
                cgroups.remove_child_cgroups(directory)
        removed = [s.call for s in trace if s.name == "cgroup_remove"]
        assert removed[0].endswith("/minicontainer/lab-container"), "the deepest cgroup goes first"
        assert all(not os.listdir(d) or not any(os.path.isdir(os.path.join(d, e)) for e in os.listdir(d))
                   for d in cg.paths().values())
    finally:
        cg.remove()
    assert not any(os.path.exists(d) for d in cg.paths().values())
