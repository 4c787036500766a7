"""The default security profile: each escape a hostile container tried stays refused.

Every test starts a real container from the built-in busybox image and tries, as its
root, what a student trying to take over the host would try.
"""
from __future__ import annotations

import os

import pytest

import minicontainer
from minicontainer.kernel.security import CAPABILITIES, DEFAULT_CAPABILITIES, capability_names

# these also run in the real cgroup v2 guest (make test-v2)
pytestmark = pytest.mark.v2


def _status(text: str, key: str) -> str:
    return next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith(key + ":"))


def test_the_containers_root_keeps_only_the_default_capabilities_and_no_new_privs():
    result = minicontainer.run("busybox", "cat /proc/self/status")
    for key in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
        assert capability_names(int(_status(result.stdout, key), 16)) == sorted(DEFAULT_CAPABILITIES, key=CAPABILITIES.index), key
    assert _status(result.stdout, "CapAmb") == "0000000000000000"
    assert _status(result.stdout, "NoNewPrivs") == "1"
    assert "CAP_SYS_ADMIN" not in DEFAULT_CAPABILITIES
    drop = result.trace.find("drop_capabilities")
    assert drop.evidence["CapEff"] == _status(result.stdout, "CapEff")   # the step's evidence is what the command saw
    assert result.trace.names().index("no_new_privs") < result.trace.names().index("execve")


def test_mounting_the_hosts_root_disk_from_inside_is_refused():
    st = os.stat("/")
    major, minor = os.major(st.st_dev), os.minor(st.st_dev)
    result = minicontainer.run("busybox", f"mknod /tmp/disk b {major} {minor}; echo mknod=$?; "
                                          "mkdir -p /tmp/m; mount /tmp/disk /tmp/m && echo mounted; "
                                          "mount -t tmpfs none /tmp/m; echo tmpfs=$?")
    assert result.stdout.split() == ["mknod=1", "tmpfs=1"], result.output   # nothing got mounted
    assert "mknod: /tmp/disk: Operation not permitted" in result.stderr      # no CAP_MKNOD
    assert "mount: permission denied" in result.stderr                        # no CAP_SYS_ADMIN


def test_read_only_volumes_and_root_cannot_be_remounted_read_write(tmp_path):
    (tmp_path / "data").mkdir()
    result = minicontainer.run("busybox", "mount -o remount,rw /data; touch /data/x; echo data=$?; "
                                          "mount -o remount,rw /; touch /y; echo root=$?; "
                                          "mount -o remount,rw /sys; touch /sys/kernel/x; echo sys=$?",
                               volumes=[f"{tmp_path}/data:/data:ro"], readonly=True)
    assert "data=1" in result.stdout and "root=1" in result.stdout and "sys=1" in result.stdout, result.output
    assert "Read-only file system" in result.stderr
    assert list((tmp_path / "data").iterdir()) == []


def test_host_wide_kernel_settings_and_the_kernel_log_are_out_of_reach():
    with open("/proc/sys/kernel/hostname") as f:
        before = f.read()
    result = minicontainer.run("busybox", "echo evil > /proc/sys/kernel/hostname; echo sysctl=$?; "
                                          "echo h > /proc/sysrq-trigger; echo sysrq=$?; "
                                          "dmesg > /dev/null; echo dmesg=$?")
    with open("/proc/sys/kernel/hostname") as f:
        assert f.read() == before
    assert "sysctl=1" in result.stdout and "sysrq=1" in result.stdout, result.output
    assert "dmesg=1" in result.stdout, result.output   # dmesg_restrict needs CAP_SYSLOG


def test_kernel_files_that_reveal_the_host_are_masked():
    present = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/sched_debug") if os.path.exists(p)]
    result = minicontainer.run("busybox", ["sh", "-c", 'for f in "$@"; do echo "$f $(wc -c < $f)"; done', "sh", *present])
    assert result.stdout.split("\n")[:-1] == [f"{p} 0" for p in present], result.output
    mask = result.trace.find("mask_paths")
    assert all(p in mask.result for p in present)


def test_a_sandbox_exec_gets_the_same_profile():
    with minicontainer.Sandbox("busybox") as sb:
        sb.unshare("pid", "mnt", "uts", "ipc", "net")
        sb.mount_overlay()
        sb.mount_proc()
        sb.mount_dev()
        sb.mount_sys()
        sb.pivot_root()
        done = sb.exec("grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; mount -t tmpfs x /tmp; echo mount=$?")
    assert "NoNewPrivs:\t1" in done.stdout and "mount=1" in done.stdout, done.stdout
    assert "mount: permission denied" in done.stderr
    assert capability_names(int(done.stdout.split()[1], 16)) == capability_names(
        int(minicontainer.run("busybox", "grep CapEff /proc/self/status").stdout.split()[1], 16))
