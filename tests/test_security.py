"""The default security profile: each escape a hostile container tried stays refused.

Every test starts a real container from the built-in busybox image and tries, as its
root, what a student trying to take over the host would try.
"""
from __future__ import annotations

import os
import subprocess

import pytest

import minicontainer
from minicontainer.errors import InvalidArgument, MinicontainerError
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
    st = os.stat("/")   # where / is no disk (the v2 guest's overlay), the first loop device instead
    major, minor = (os.major(st.st_dev), os.minor(st.st_dev)) if os.major(st.st_dev) else (7, 0)
    result = minicontainer.run("busybox", f"mknod /tmp/disk b {major} {minor}; echo mknod=$?; "
                                          "mkdir -p /tmp/m; mount /tmp/disk /tmp/m && echo mounted; "
                                          "head -c 1 /tmp/disk > /dev/null && echo read; "
                                          "mount -t tmpfs none /tmp/m; echo tmpfs=$?")
    # CAP_MKNOD is Docker's default: the node can be made, but nothing can be done with it
    assert result.stdout.split() == ["mknod=0", "tmpfs=1"], result.output   # nothing mounted, nothing read
    assert "mount: permission denied" in result.stderr                        # no CAP_SYS_ADMIN
    assert "head: /tmp/disk: Operation not permitted" in result.stderr        # the device cgroup


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
    with open("/proc/sys/kernel/dmesg_restrict") as f:
        restricted = f.read().strip() == "1"
    if restricted:   # Debian's default: reading the log then needs CAP_SYSLOG, which is gone
        assert "dmesg=1" in result.stdout, result.output


def test_kernel_files_that_reveal_the_host_are_masked():
    present = [p for p in ("/proc/keys", "/proc/timer_list", "/proc/sched_debug") if os.path.exists(p)]
    result = minicontainer.run("busybox", ["sh", "-c", 'for f in "$@"; do echo "$f $(wc -c < $f)"; done', "sh", *present])
    assert result.stdout.split("\n")[:-1] == [f"{p} 0" for p in present], result.output
    mask = result.trace.find("mask_paths")
    assert all(p in mask.result for p in present)


def test_a_sandbox_exec_gets_the_same_profile():
    with minicontainer.Sandbox("busybox") as sb:
        early = sb.run("grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status").stdout   # sb.run too, at any step
        sb.unshare("pid", "mnt", "uts", "ipc", "net")
        sb.join_cgroup()   # with it comes the device allow-list, and so CAP_MKNOD
        sb.mount_overlay()
        sb.mount_proc()
        sb.mount_dev()
        sb.mount_sys()
        sb.pivot_root()
        done = sb.exec("grep -E '^(CapEff|NoNewPrivs|Seccomp):' /proc/self/status; mount -t tmpfs x /tmp; "
                       "echo mount=$?")
    assert "NoNewPrivs:\t1" in done.stdout and "Seccomp:\t2" in done.stdout and "mount=1" in done.stdout, done.stdout
    assert "mount: permission denied" in done.stderr
    ran = capability_names(int(minicontainer.run("busybox", "grep CapEff /proc/self/status").stdout.split()[1], 16))
    assert capability_names(int(done.stdout.split()[1], 16)) == ran
    # before joining a cgroup there is no device allow-list, so no CAP_MKNOD either
    assert capability_names(int(early.split()[1], 16)) == [c for c in ran if c != "CAP_MKNOD"], early
    assert early.split()[2:] == ["NoNewPrivs:", "1", "Seccomp:", "2"]


def _capabilities_seen(**options) -> list[str]:
    result = minicontainer.run("busybox", "grep CapEff /proc/self/status", **options)
    return capability_names(int(result.stdout.split()[1], 16))


def test_cap_drop_and_cap_add_change_the_set_as_dockers_flags_do():
    assert _capabilities_seen(cap_drop=["ALL"]) == []
    assert _capabilities_seen(cap_drop=["all"], cap_add=["net_bind_service"]) == ["CAP_NET_BIND_SERVICE"]
    assert "CAP_CHOWN" not in _capabilities_seen(cap_drop=["CHOWN"])
    assert "CAP_SYS_TIME" in _capabilities_seen(cap_add=["CAP_SYS_TIME"])
    chown = minicontainer.run("busybox", "touch /tmp/f; chown 1 /tmp/f", cap_drop=["CHOWN"])
    assert chown.exit_code == 1 and "Operation not permitted" in chown.stderr   # root, yet refused


def test_privileged_gives_every_capability_the_engine_has_and_unmasks_the_kernel():
    with open("/proc/self/status") as f:
        engine = capability_names(int(_status(f.read(), "CapPrm"), 16))
    result = minicontainer.run("busybox", "grep CapEff /proc/self/status; mount -t tmpfs x /tmp && echo mounted",
                               privileged=True)
    assert capability_names(int(result.stdout.split()[1], 16)) == engine
    assert "mounted" in result.stdout       # what the defaults refuse, --privileged allows
    default_sys = minicontainer.run("busybox", "grep ' /sys sysfs ' /proc/mounts").stdout.split()[3]
    privileged_sys = minicontainer.run("busybox", "grep ' /sys sysfs ' /proc/mounts", privileged=True).stdout.split()[3]
    assert default_sys.startswith("ro,") and privileged_sys.startswith("rw,"), (default_sys, privileged_sys)
    assert "mask_paths" not in result.trace.names() and "readonly_paths" not in result.trace.names()


def test_no_new_privileges_can_be_lifted_and_other_security_opts_are_refused_by_name(engine_root):
    result = minicontainer.run("busybox", "grep NoNewPrivs /proc/self/status", security_opt=["no-new-privileges=false"])
    assert result.stdout.split() == ["NoNewPrivs:", "0"]
    with pytest.raises(MinicontainerError, match="unsupported --security-opt 'label=disable'"):
        minicontainer.run("busybox", ["true"], security_opt=["label=disable"])
    with pytest.raises(InvalidArgument, match="unknown capability 'FOO'"):
        minicontainer.run("busybox", ["true"], cap_add=["FOO"])
    made = engine_root / "containers"
    left = [p.name for p in made.iterdir() if p.name != ".lock"] if made.exists() else []
    assert left == []   # refused before anything was created


def test_the_engines_state_is_closed_to_other_host_users(engine_root):
    minicontainer.run("busybox", ["true"])
    assert engine_root.stat().st_mode & 0o777 == 0o700
    layer = next((engine_root / "layers/sha256").iterdir())
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "ls", str(layer)],
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr, probe


def test_a_device_node_made_with_cap_mknod_still_cannot_be_opened():
    # the device cgroup (v1 devices.allow, v2 an eBPF program) refuses what the node names
    st = os.stat("/")
    major, minor = (os.major(st.st_dev), os.minor(st.st_dev)) if os.major(st.st_dev) else (7, 0)
    result = minicontainer.run("busybox", f"mknod /tmp/disk b {major} {minor} && echo made; "
                                          "head -c 1 /tmp/disk > /dev/null; echo read=$?; "
                                          "echo ok > /dev/null && echo null", cap_add=["MKNOD"])
    assert result.stdout.split() == ["made", "read=1", "null"], result.output
    assert "Operation not permitted" in result.stderr
    assert "cgroup_devices" in result.trace.names()


def test_a_root_set_by_mistake_to_a_system_directory_is_refused_not_closed(tmp_path, monkeypatch):
    system = tmp_path / "usr-lib"          # stands for /usr/lib: others need to read it
    system.mkdir(mode=0o755)
    system.chmod(0o755)
    (system / "libm.so.6").write_bytes(b"")
    (tmp_path / "lib").symlink_to(system)  # like /lib -> usr/lib
    for root in (system, tmp_path / "lib"):
        monkeypatch.setenv("MINICONTAINER_ROOT", str(root))
        with pytest.raises(MinicontainerError, match="is not an engine directory"):
            minicontainer.run("busybox", ["true"])
        assert system.stat().st_mode & 0o777 == 0o755, "another program's directory must keep its mode"


def test_an_engine_root_left_open_by_an_older_version_is_closed(tmp_path, monkeypatch):
    old = tmp_path / "old-root"
    (old / "containers").mkdir(parents=True)
    old.chmod(0o755)
    monkeypatch.setenv("MINICONTAINER_ROOT", str(old))
    minicontainer.run("busybox", ["true"])
    assert old.stat().st_mode & 0o777 == 0o700


def test_an_image_whose_command_is_proc_self_exe_never_gets_the_hosts_interpreter():
    # runc's CVE-2019-5736: before the last execve PID 1 is the engine's Python, so the kernel
    # would resolve /proc/self/exe to the host's interpreter. Through the sealed trampoline it
    # resolves to the trampoline, which with no path to run exits 127: no Python starts.
    result = minicontainer.run("busybox", ["/proc/self/exe", "-c", "print('host python')"])
    assert result.exit_code == 127 and "python" not in result.output.lower(), result.output
    step = next(s for s in result.trace.steps if s.name == "execve")
    assert "sealed memfd" in step.call


def test_the_trampoline_is_sealed_so_nobody_can_write_it():
    from minicontainer.runtime.sealed_exec import sealed_memfd, trampoline_elf, trampoline_is_sealed

    fd = sealed_memfd("test-trampoline", trampoline_elf())
    try:
        assert trampoline_is_sealed(fd)
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"\x90", 0)            # F_SEAL_WRITE
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)                   # F_SEAL_SHRINK
        # reopened for writing, as the CVE's exploit reopened /proc/PID/exe, it still takes no write
        with open(f"/proc/self/fd/{fd}", "r+b", buffering=0) as reopened, pytest.raises(PermissionError):
            reopened.write(b"\x90")
        assert os.pread(fd, 4, 0) == b"\x7fELF"
    finally:
        os.close(fd)


def test_the_command_runs_with_its_own_argv_and_env_after_the_trampoline():
    result = minicontainer.run("busybox", ["sh", "-c", 'echo "$0|$1|$FOO"; head -c 6 /proc/$$/cmdline | tr "\\0" "|"; '
                                                 'echo; readlink /proc/$$/exe', "zero", "one"], env=["FOO=bar"])
    assert result.stdout == "zero|one|bar\nsh|-c|\n/bin/busybox\n", result.output


@pytest.mark.parametrize("content, message", [
    (b"echo no shebang\n", r"exec format error \(a script without #!"),
    (b"\x7fELF\x02\x01\x01" + bytes(11) + (183 if os.uname().machine == "x86_64" else 62).to_bytes(2, "little"),
     "built for another platform"),
])
def test_a_command_the_kernel_cant_run_is_explained_before_the_last_execve(tmp_path, content, message):
    (tmp_path / "prog").write_bytes(content)
    (tmp_path / "prog").chmod(0o755)
    from minicontainer.runtime.process import ContainerStartError

    with pytest.raises(ContainerStartError, match=message) as info:
        minicontainer.run("busybox", ["/x/prog"], volumes=[f"{tmp_path}:/x:ro"])
    assert info.value.exit_code == 126


def test_a_non_root_user_starts_with_no_capabilities_and_the_same_bounding_set():
    result = minicontainer.run("busybox", "id -u; grep -E '^(CapPrm|CapEff|CapBnd):' /proc/self/status; "
                                          "touch /bin/x; echo touch=$?", user="nobody")
    lines = result.stdout.split()
    assert lines[0] == "65534"
    assert lines[1:7] == ["CapPrm:", "0000000000000000", "CapEff:", "0000000000000000", "CapBnd:", lines[6]]
    assert capability_names(int(lines[6], 16)) == sorted(DEFAULT_CAPABILITIES, key=CAPABILITIES.index)
    assert "touch=1" in result.stdout   # root's files are out of reach without CAP_DAC_OVERRIDE
    assert minicontainer.run("busybox", "id", user="1234:55").stdout.startswith("uid=1234 gid=55")
    with pytest.raises(MinicontainerError, match="unable to find user ghost"):
        minicontainer.run("busybox", "id", user="ghost")
