"""minicontainer.run(): a real container from the built-in busybox image, on the real kernel."""
from __future__ import annotations

import os
import socket

import pytest

import minicontainer
from minicontainer.errors import ImageNotFound, InvalidArgument, InvalidReference, MinicontainerError
from minicontainer.kernel.namespaces import namespace_ids

# every test here also runs in the real cgroup v2 guest (make test-v2)
pytestmark = pytest.mark.v2


def leftover_containers(engine_root) -> list[str]:
    """Container directories, including half-made (.new-*) or half-removed (.rm-*) ones."""
    base = engine_root / "containers"
    return sorted(p.name for p in base.iterdir() if p.name != ".lock") if base.exists() else []


def test_command_runs_and_its_exit_code_and_output_come_back():
    result = minicontainer.run("busybox", "echo out; echo err >&2; exit 3")
    assert result.exit_code == 3
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"


def test_container_sees_itself_as_pid_1_and_no_host_process():
    result = minicontainer.run("busybox", "echo $$; ls /proc | grep -E '^[0-9]+$'")
    first, *pids = result.stdout.split()
    assert first == "1"
    # only the shell (1) and the ls/grep it forked: none of the host's hundreds of processes
    assert "1" in pids and all(int(p) < 10 for p in pids)


def test_hostname_is_isolated_from_the_host():
    host = socket.gethostname()
    result = minicontainer.run("busybox", ["hostname"], hostname="box")
    assert result.stdout.strip() == "box"
    assert socket.gethostname() == host


def test_default_hostname_is_the_short_container_id():
    result = minicontainer.run("busybox", ["hostname"])
    assert result.stdout.strip() == result.container_id[:12]


def test_host_files_outside_volumes_are_unreachable(tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_text("do not read")
    result = minicontainer.run("busybox", f"cat {secret}; ls /; cat /etc/hostname")
    assert "do not read" not in result.stdout
    assert "No such file" in result.stderr
    assert result.stdout.split()[-1] == "busybox"  # the image's /etc/hostname, not the host's


def test_every_namespace_differs_from_the_hosts():
    host = namespace_ids()
    result = minicontainer.run("busybox", "for n in pid mnt uts ipc net cgroup; do readlink /proc/self/ns/$n; done")
    inside = dict(line.split(":") for line in result.stdout.split())
    for kind in ("pid", "mnt", "uts", "ipc", "net", "cgroup"):
        assert int(inside[kind].strip("[]")) != host[kind], kind


def test_network_namespace_has_only_loopback_and_it_is_up():
    result = minicontainer.run("busybox", "ls /sys/class/net; cat /sys/class/net/lo/operstate; cat /sys/class/net/lo/flags")
    lines = result.stdout.split()
    assert lines[0] == "lo" and len(lines) == 3
    assert int(lines[2], 16) & 0x1  # IFF_UP


def test_no_engine_file_descriptor_leaks_into_the_container(tmp_path):
    # an inheritable fd in the engine, the CVE-2024-21626 class: it must not reach the container
    leaky = os.open(tmp_path / "engine-file", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(leaky, True)
    try:
        # the trailing ":" keeps sh from exec-ing ls, so $$ is the shell, which holds no fd of its own
        result = minicontainer.run("busybox", "ls /proc/$$/fd; :")
    finally:
        os.close(leaky)
    assert sorted(result.stdout.split()) == ["0", "1", "2"]


def test_environment_and_working_directory_are_applied():
    result = minicontainer.run("busybox", "echo $GREETING; pwd; echo $PATH", env=["GREETING=hi"], workdir="/tmp")
    greeting, cwd, path = result.stdout.split()
    assert (greeting, cwd) == ("hi", "/tmp")
    assert path.startswith("/usr/local/sbin")  # from the image config


def test_stdin_is_passed_to_the_container():
    result = minicontainer.run("busybox", ["tr", "a-z", "A-Z"], input="shout\n")
    assert result.stdout == "SHOUT\n"


def test_writes_land_in_the_container_not_in_the_image_layer(engine_root):
    minicontainer.run("busybox", "echo changed > /etc/hostname")
    again = minicontainer.run("busybox", ["cat", "/etc/hostname"])
    assert again.stdout == "busybox\n"  # each container has its own upper dir


def test_volume_is_shared_with_the_host_and_readonly_volume_refuses_writes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in.txt").write_text("from host")
    result = minicontainer.run("busybox", "cat /data/in.txt; echo from container > /data/out.txt",
                               volumes=[f"{data}:/data"])
    assert result.stdout == "from host" and result.exit_code == 0
    assert (data / "out.txt").read_text() == "from container\n"
    ro = minicontainer.run("busybox", "cat /data/in.txt && touch /data/x", volumes=[f"{data}:/data:ro"])
    assert ro.exit_code != 0 and "Read-only file system" in ro.stderr
    assert not (data / "x").exists()


def test_read_only_rootfs_refuses_writes():
    result = minicontainer.run("busybox", "touch /etc/x", readonly=True)
    assert result.exit_code != 0 and "Read-only file system" in result.stderr


def test_dev_has_only_the_minimal_devices():
    result = minicontainer.run("busybox", "ls /dev; head -c 4 /dev/zero | wc -c; echo x > /dev/null && echo ok")
    names = result.stdout.split()
    for dev in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm"):
        assert dev in names
    assert "sda" not in names and "vda" not in names
    assert names[-2:] == ["4", "ok"]


def test_sys_is_read_only():
    result = minicontainer.run("busybox", "echo 1 > /sys/kernel/mm/ksm/run")
    assert result.exit_code != 0 and "Read-only file system" in result.stderr


def test_memory_limit_oom_kills_with_137_and_sets_the_flag():
    result = minicontainer.run("busybox", ["sh", "-c", "head -c 200m /dev/zero | tail"], memory="32m")
    assert result.exit_code == 137
    assert result.oom_killed
    assert result.stats.oom_kills >= 1
    assert result.stats.memory_peak <= 32 * 2**20


def test_fork_loop_is_bounded_by_pids_limit_and_the_host_survives():
    # at most 60 forks even if the limit failed; each success prints its count
    script = "i=0; while [ $i -lt 60 ]; do sleep 5 & i=$((i+1)); echo $i; done"
    result = minicontainer.run("busybox", ["sh", "-c", script], pids_limit=8)
    started = [int(n) for n in result.stdout.split()]
    assert started and max(started) <= 7  # 8 pids: the shell itself plus 7 sleepers
    assert "can't fork" in result.stderr and result.exit_code != 0
    # every sleeper died with the container, and the host can still fork
    assert os.waitpid(os.fork() or os._exit(0), 0)[1] == 0


def test_cpu_quota_limits_cpu_time():
    busy = "end=$(($(date +%s)+2)); while [ $(date +%s) -lt $end ]; do :; done"
    limited = minicontainer.run("busybox", ["sh", "-c", busy], cpus=0.2)
    usage = limited.stats.cpu_usage_usec / 1e6
    # 2 s of wall time at 0.2 CPU is about 0.4 s of CPU; unthrottled it would be about 2 s
    assert 0.1 < usage < 0.9


def test_bad_memory_string_is_refused_before_anything_is_created(engine_root):
    with pytest.raises(InvalidArgument, match="memory"):
        minicontainer.run("busybox", ["true"], memory="lots")
    assert leftover_containers(engine_root) == []


def test_missing_volume_path_is_refused_with_the_fix(engine_root, tmp_path):
    with pytest.raises(InvalidArgument, match="does not exist on the host"):
        minicontainer.run("busybox", ["true"], volumes=[f"{tmp_path}/nope:/data"])


def test_missing_image_is_a_clear_error():
    with pytest.raises(ImageNotFound, match="not found"):
        minicontainer.run("alpine:3.19", ["true"])


def test_malformed_image_reference_is_a_clear_error():
    with pytest.raises(InvalidReference):
        minicontainer.run("BusyBox", ["true"])


def test_command_not_found_fails_with_127_and_rolls_back(engine_root):
    with pytest.raises(MinicontainerError, match="executable file not found") as info:
        minicontainer.run("busybox", ["no-such-command"])
    assert info.value.exit_code == 127
    assert leftover_containers(engine_root) == []


def test_failure_midway_in_the_init_sequence_rolls_back_everything(engine_root, tmp_path):
    # /bin/sh is a symlink in the image: mounting a volume "through" it must be refused inside
    # the container's init, after the cgroup and container directory exist: all rolled back
    data = tmp_path / "d"
    data.mkdir()
    with pytest.raises(MinicontainerError, match="symlink"):
        minicontainer.run("busybox", ["true"], volumes=[f"{data}:/bin/sh/x"])
    assert leftover_containers(engine_root) == []


def test_missing_working_directory_fails_with_126():
    with pytest.raises(MinicontainerError, match="working directory") as info:
        minicontainer.run("busybox", ["true"], workdir="/nope")
    assert info.value.exit_code == 126


def test_container_without_rm_is_kept_as_exited(engine_root):
    from minicontainer.engine.containers import list_records

    result = minicontainer.run("busybox", "exit 4", remove=False, name="keeper")
    [record] = list_records()
    state = record.read_state()
    assert (record.name, state.status, state.exit_code) == ("keeper", "exited", 4)
    assert record.id == result.container_id
    with pytest.raises(MinicontainerError, match="already in use"):
        minicontainer.run("busybox", "true", name="keeper")


def _collapse(names: list[str]) -> list[str]:
    return [n for i, n in enumerate(names) if i == 0 or names[i - 1] != n]


def test_trace_records_every_kernel_step_in_order():
    minicontainer.run("busybox", ["true"])   # the first run builds the image and, on v2, the shared parent
    result = minicontainer.run("busybox", ["true"], memory="64m")
    version = 2 if _unified() else 1
    names = result.trace.names()
    # PID 1's own steps, in the order it takes them
    # v1: a directory per hierarchy, then memory.limit_in_bytes (and memsw); v2: one
    # directory in the shared parent (the first run made it), then memory.max and swap.max
    order = ["cgroup_create", "cgroup_write",
             "fork", "unshare", "fork", "make_private", "mount_overlay", "mount_proc", "mount_dev", "mount_sys",
             "pivot_root", "umount_old_root", "sethostname", "loopback_up", "unshare", "execve"]
    # after PID 1 exits: v2 kills what is left with one write to cgroup.kill (v1 has no
    # such file and signals only processes that are still there: none here)
    order += ["cgroup_kill", "cgroup_remove"] if version == 2 else ["cgroup_remove"]
    kept = [n for n in names if n in order]
    assert _collapse(kept) == order
    assert all(s.ok for s in result.trace)
    assert not any("unavailable" in s.evidence for s in result.trace if s.name.startswith("cgroup_"))
    # the setup child moves PID 1 into the cgroup while it mounts; it is done before exec,
    # and before the cgroup namespace is made (whose root is the cgroup PID 1 is in)
    join, execve = result.trace.find("cgroup_join"), result.trace.find("execve")
    cgroup_ns = [s for s in result.trace if s.name == "unshare"][-1]
    assert "CLONE_NEWCGROUP" in cgroup_ns.call
    assert join.started + join.duration <= cgroup_ns.started <= execve.started
    init_fork = [s for s in result.trace if s.name == "fork"][-1]
    host_pid = init_fork.result.rsplit(" ", 1)[1]  # "PID 1 inside, host pid N"
    assert join.call.startswith(f'write "{host_pid}" > ') and join.pid != int(host_pid)
    write = result.trace.find("cgroup_write")
    assert write.call.endswith("/memory.limit_in_bytes" if version == 1 else "/memory.max")
    assert write.evidence["read back"] == str(64 * 2**20)
    assert result.trace.find("pivot_root").shell.endswith("pivot_root . .")


def _unified() -> bool:
    from minicontainer.kernel.cgroups import detect_mode

    return detect_mode() == "unified"


def test_plan_lists_exactly_the_steps_a_run_takes(engine_root):
    minicontainer.run("busybox", ["true"], memory="64m")   # builds the image (and v2's shared parent)
    planned = minicontainer.plan("busybox", ["true"], memory="64m")
    real = minicontainer.run("busybox", ["true"], memory="64m")
    assert {s.result for s in planned} == {"(planned)"}
    # the same steps, teardown included; the cgroup join runs alongside PID 1's mounts,
    # so its place may differ
    assert sorted(planned.names()) == sorted(real.trace.names())
    assert [n for n in planned.names() if n != "cgroup_join"] == [n for n in real.trace.names() if n != "cgroup_join"]
    # and the same calls, but for the container id the plan can't know yet
    assert [s.call.split("/")[-1] for s in planned if s.name.startswith("cgroup_w")] == \
        [s.call.split("/")[-1] for s in real.trace if s.name.startswith("cgroup_w")]
    assert leftover_containers(engine_root) == []


def test_timeout_inside_a_container_works_with_init_and_is_ignored_without_it():
    # busybox's timeout execs the command in its own process and signals it from a child.
    # Without --init that command is PID 1, and the kernel delivers no signal to a PID 1
    # that has no handler for it: sleep ignores the SIGTERM and sleeps on.
    cmd = ["timeout", "-s", "TERM", "1", "sleep", "3"]
    plain = minicontainer.run("busybox", cmd)
    assert plain.exit_code == 0, "without --init, PID 1 ignored SIGTERM and finished its sleep"
    with_init = minicontainer.run("busybox", cmd, init=True)
    assert with_init.exit_code == 128 + 15, "with --init, sleep is tini's child and SIGTERM kills it"
    shown = minicontainer.run("busybox", "tr '\\0' ' ' < /proc/1/cmdline", init=True)
    assert shown.stdout.startswith("/sbin/docker-init -- sh -c"), "tini is PID 1, the command its child"
    mount = [s for s in shown.trace if s.name == "bind_volume"][0]
    assert mount.call.startswith('mount("/usr/bin/tini-static", ')


def test_init_without_tini_installed_is_a_clear_error_before_anything_is_made(engine_root, monkeypatch):
    from minicontainer.engine import run as run_module

    monkeypatch.setattr(run_module, "HOST_INIT", "/nonexistent/tini-static")
    with pytest.raises(MinicontainerError) as info:
        minicontainer.run("busybox", ["true"], init=True)
    assert "apt-get install tini" in str(info.value) and "\n" not in str(info.value)
    assert leftover_containers(engine_root) == []


def test_containers_started_at_once_from_separate_clis_all_run(engine_root):
    """3 CLIs at a time, 12 runs each: no run may fail on the cgroup parent they share."""
    import subprocess
    import sys

    minicontainer.run("busybox", ["true"])   # build the image once, before the rush
    script = "for i in $(seq 12); do \"$0\" -m minicontainer run --rm busybox true || echo \"failed: $?\"; done"
    workers = [subprocess.Popen(["sh", "-c", script, sys.executable], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [w.communicate(timeout=600) for w in workers]
    assert [w.returncode for w in workers] == [0, 0, 0]
    assert outputs == [("", "")] * 3, "a run failed or printed an error: " + repr(outputs)
    assert leftover_containers(engine_root) == []


def test_home_is_the_users_home_from_the_images_passwd():
    assert minicontainer.run("busybox", "echo $HOME").stdout == "/root\n"
    assert minicontainer.run("busybox", "echo $HOME", user="nobody").stdout == "/nonexistent\n"
    assert minicontainer.run("busybox", "echo $HOME", env=["HOME=/tmp"]).stdout == "/tmp\n"


def test_the_command_gets_default_signal_handling_not_pythons():
    # Python ignores SIGPIPE and SIGXFSZ; execve would keep them ignored
    ignored = minicontainer.run("busybox", "grep SigIgn /proc/self/status").stdout.split()[1]
    assert int(ignored, 16) & (1 << (13 - 1) | 1 << (25 - 1)) == 0, ignored
    assert minicontainer.run("busybox", "yes | head -n 2").output == "y\ny\n"   # yes ends by SIGPIPE, silently


def test_cgroup_join_evidence_survives_the_loss_of_proc_and_never_reads_as_an_errno():
    """The setup child shares PID 1's mount namespace, so once PID 1 has pivoted and detached
    the host's root, /proc is gone there too: PID 1 often got that far before the setup child
    read the join back (issue 9: "unavailable: [Errno 2] ... '/proc/<pid>/cgroup'" in most
    --trace runs). Here a child reaches that state for certain, by hiding /proc in a
    mount namespace of its own: the evidence read through the host's /proc (opened before)
    shows the cgroup, and without it the evidence says what is missing, not an errno."""
    import json
    import subprocess
    import sys
    import textwrap
    import uuid

    from minicontainer.engine.run import cgroup_name
    from minicontainer.kernel.cgroups import open_cgroup

    child = textwrap.dedent("""
        import json, os, sys
        from minicontainer.kernel import syscalls
        from minicontainer.runtime.init import join_cgroup

        procs = json.loads(sys.argv[1])
        syscalls.unshare(syscalls.CLONE_NEWNS)
        syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
        proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)   # as the setup child does, before the fork
        fds = [os.open(path, os.O_WRONLY) for path in procs]
        # what PID 1's pivot_root leaves behind: no procfs at /proc. An empty tmpfs on top hides it
        # (unmounting is not enough where /proc's mount point shows a procfs beneath, as in the v2 guest)
        syscalls.mount("tmpfs", "/proc", "tmpfs", 0, "size=4k")
        assert not os.path.exists("/proc/self"), "/proc should be gone in this mount namespace"
        through_fd = join_cgroup(procs, os.getpid(), fds=fds, proc_fd=proc_fd)
        by_path = join_cgroup(procs)
        print(json.dumps({"pid": os.getpid(), "through_fd": through_fd.evidence, "by_path": by_path.evidence}))
    """)
    cgroup = open_cgroup(cgroup_name("evidence" + uuid.uuid4().hex))
    cgroup.create()
    try:
        done = subprocess.run([sys.executable, "-c", child, json.dumps(cgroup.procs_files())],
                              capture_output=True, text=True, timeout=60)
    finally:
        cgroup.kill_all()
        cgroup.remove()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    through_fd = seen["through_fd"]
    assert list(through_fd) == [f"/proc/{seen['pid']}/cgroup"], through_fd
    assert cgroup.name in through_fd[f"/proc/{seen['pid']}/cgroup"], through_fd
    by_path = seen["by_path"]
    assert "unavailable" not in by_path and "Errno" not in str(by_path), by_path
    assert "no /proc/self" in by_path["/proc/self/cgroup"] and "pivot_root" in by_path["/proc/self/cgroup"], by_path
