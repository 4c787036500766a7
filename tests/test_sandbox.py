"""Sandbox: a container built one step at a time, watched from the host between steps."""
from __future__ import annotations

import os

import pytest

from minicontainer import Sandbox
from minicontainer.engine.sandbox import SandboxError
from minicontainer.kernel.namespaces import namespace_ids

# every test here also runs in the real cgroup v2 guest (make test-v2)
pytestmark = pytest.mark.v2


def test_step_by_step_container_seen_from_the_host_between_steps():
    host = namespace_ids()
    with Sandbox("busybox", hostname="box") as sb:
        first_pid = sb.pid
        assert sb.namespace_ids() == host  # the helper starts in the host's namespaces

        step = sb.unshare("pid", "mnt", "uts", "ipc", "net")
        assert step.name == "unshare" and step.ok
        assert sb.pid != first_pid  # unshare(CLONE_NEWPID) affects children: the helper forked
        ids = sb.namespace_ids()
        for kind in ("pid", "mnt", "uts", "ipc", "net"):
            assert ids[kind] != host[kind], kind
        assert ids["cgroup"] == host["cgroup"]
        assert sb.trace.find("fork").result.startswith("PID 1 inside")

        assert sb.sethostname("box").evidence["hostname"] == "box"
        sb.join_cgroup(memory="64m", pids_limit=32)
        with open(f"/proc/{sb.pid}/cgroup") as f:
            lines = f.read().splitlines()
        # v1: a line per hierarchy ("4:memory:/…/minicontainer-<name>"); v2: one ("0::/…/<name>")
        name = sb.cgroup.name
        assert any(line.endswith(f"/minicontainer-{name}") and ":memory:" in line for line in lines) or \
            any(line.startswith("0::/") and line.endswith(f"/{name}") for line in lines), lines

        sb.mount_overlay()
        sb.mount_proc()
        sb.mount_dev()
        sb.mount_sys()
        before_pivot = sb.run("ls /").stdout.split()
        assert "work" in before_pivot or "usr" in before_pivot  # still the host's root

        sb.pivot_root()
        after = sb.run("ls /; cat /etc/hostname; echo $$").stdout.split()
        assert "bin" in after and after[-2] == "busybox"
        ps = sb.run(["ps", "-o", "pid,comm"]).stdout.split("\n")
        assert ps[1].split()[0] == "1"  # the sandbox helper is PID 1 inside
        # from the host, /proc/PID/root now shows the image's root, not the host's
        assert "linuxrc" in os.listdir(f"/proc/{sb.pid}/root") and "linuxrc" not in os.listdir("/")

        done = sb.exec(["sh", "-c", "echo I am PID $$ on $(hostname)"])
        assert done.stdout == "I am PID 1 on box\n"
        assert done.returncode == 0
        names = sb.trace.names()
        assert names.index("unshare") < names.index("mount_overlay") < names.index("pivot_root") < names.index("execve")


def test_a_failed_step_raises_and_is_recorded_in_the_trace():
    with Sandbox("busybox") as sb:
        with pytest.raises(SandboxError, match="pivot_root"):
            sb.pivot_root()  # no overlay mounted yet: new_root is not a mount point
        assert sb.trace[-1].name == "pivot_root" and not sb.trace[-1].ok


def test_exec_reports_stderr_and_an_oom_kill_as_137():
    with Sandbox("busybox") as sb:
        sb.unshare("pid", "mnt", "uts", "ipc", "net")
        sb.join_cgroup(memory="16m")
        sb.mount_overlay()
        sb.mount_proc()
        sb.mount_dev()
        sb.pivot_root()
        done = sb.exec(["sh", "-c", "echo oops >&2; head -c 100m /dev/zero | tail; exec tail /dev/zero"])
        assert "oops" in done.stderr
        assert done.returncode == 137  # SIGKILL from the OOM killer, as docker reports it


def test_steps_after_exec_are_refused():
    with Sandbox("busybox") as sb:
        sb.exec(["true"])
        with pytest.raises(SandboxError, match="finished"):
            sb.run("true")


def test_a_command_that_reads_stdin_gets_end_of_file_not_the_helpers_request_pipe():
    with Sandbox("busybox") as sb:
        assert sb.run("cat").stdout == ""
        assert sb.run("echo still answering").stdout == "still answering\n"


def test_join_cgroup_after_pivot_root_says_to_join_before():
    with Sandbox("busybox") as sb:
        sb.unshare("pid", "mnt")
        sb.mount_overlay()
        sb.mount_proc()
        sb.pivot_root()
        with pytest.raises(SandboxError, match="join the cgroup before pivot_root"):
            sb.join_cgroup(memory="32m")


SHARED_ROOT_SANDBOX = """
import minicontainer
with open("/proc/self/mountinfo") as f:
    before = set(f)   # mounts of the host itself (in the v2 guest, / is an overlay too)
with minicontainer.Sandbox("busybox") as sb:
    sb.unshare("pid", "mnt", "uts", "ipc", "net")
    sb.mount_overlay()
    sb.mount_proc()
    sb.pivot_root()
    assert "linuxrc" in sb.run("ls /").stdout
    with open("/proc/self/mountinfo") as f:
        leaked = [line for line in f if line not in before]
    assert leaked == [], leaked  # nothing the sandbox mounted propagated back to us
print("ok")
"""


def test_sandbox_works_and_leaks_no_mount_when_root_is_shared_like_on_a_systemd_host():
    # The students' VM has / shared; reproduce it in a throwaway mount namespace.
    import subprocess
    import sys

    done = subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c",
                           f"mount --make-rshared / && {sys.executable} -c '{SHARED_ROOT_SANDBOX}'"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_sandbox_that_unshared_its_pid_namespace_still_ends_on_sigterm():
    # a Jupyter kernel's shutdown SIGTERMs its process group, sandbox included; PID 1 of a
    # namespace ignores SIGTERM unless it handles it, which would stall the shutdown
    import signal
    import time

    sb = Sandbox("busybox")
    try:
        sb.unshare("pid", "mnt")
        inner = sb.run(["true"])   # the helper now serves from PID 1 of the new namespace
        assert inner.returncode == 0
        pids = [sb._proc.pid, sb.pid]   # the helper, and PID 1 of its new namespace (a host pid)
        assert pids[0] != pids[1]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(os.path.exists(f"/proc/{p}") and _state(p) != "Z" for p in pids):
            assert time.monotonic() < deadline, "the sandbox ignored SIGTERM"
            time.sleep(0.02)
    finally:
        sb.close()


def test_the_pid_namespace_init_of_a_sandbox_dies_with_its_helper():
    # PID 1 gets SIGKILL from the kernel when the helper dies (PR_SET_PDEATHSIG): it is never
    # left behind, even if the helper is killed outright or PID 1 misses a SIGTERM (its Python
    # handler runs between bytecodes; one that lands just before the blocking read of the next
    # request waits for that request, which is how the test above once failed in the v2 guest)
    import signal
    import time

    sb = Sandbox("busybox")
    try:
        sb.unshare("pid", "mnt")
        helper, init = sb._proc.pid, sb.pid
        assert helper != init
        os.kill(helper, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while os.path.exists(f"/proc/{init}") and _state(init) != "Z":
            assert time.monotonic() < deadline, "PID 1 of the sandbox outlived its helper"
            time.sleep(0.02)
    finally:
        sb.close()


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
