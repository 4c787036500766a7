"""The cgroup layer: detecting the mode, parsing limits, and both drivers.

The v1 driver runs against this machine's real (hybrid) cgroup hierarchies. The v2
driver is tested against a fake cgroupfs tree in a temp dir: this hybrid machine has no
v2 hierarchy with controllers to hand out (its /sys/fs/cgroup/unified only has hugetlb).
The VM issue runs the v2 driver against a real unified kernel.
"""
from __future__ import annotations

import ctypes
import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from minicontainer.errors import InvalidArgument, KernelError, MinicontainerError, NotRootError
from minicontainer.kernel import cgroups
from minicontainer.kernel.cgroups import (
    CgroupStats, ControllerMissing, Limits, V1Cgroup, V2Cgroup, detect_mode, mode_from_mounts,
    open_cgroup, parse_cpus, parse_memory, parse_mountinfo, parse_proc_cgroup, v1_cgroup_dirs)
from minicontainer.trace import PLANNED, planning, recording

MiB = 1 << 20

# every test here also runs in the real cgroup v2 guest (make test-v2)
pytestmark = pytest.mark.v2


def _has_v1_hierarchies() -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(" - cgroup cgroup " in line for line in f)


needs_v1 = pytest.mark.skipif(not _has_v1_hierarchies(),
                              reason="needs cgroup v1 hierarchies (hybrid or legacy host)")


# ---- parsing limits ---------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("64m", 64 * MiB), ("64M", 64 * MiB), ("1g", 1 << 30), ("512k", 512 << 10),
    ("1048576", 1048576), ("64MiB", 64 * MiB), ("64mb", 64 * MiB), ("100b", 100),
    ("1.5g", 3 << 29), (" 32m ", 32 * MiB), (4096, 4096),
])
def test_parse_memory_accepts_docker_style_sizes_in_binary_units(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text", ["abc", "-1", "0", "12q", "", "1.2.3", "0k", -5, 0, True, "m"])
def test_parse_memory_rejects_bad_sizes_with_one_line_naming_the_value_and_an_example(text):
    with pytest.raises(InvalidArgument) as info:
        parse_memory(text)
    message = str(info.value)
    assert repr(str(text)) in message
    assert "e.g. 64m" in message
    assert "\n" not in message


@pytest.mark.parametrize("text, expected", [("0.5", 0.5), ("1", 1.0), (2, 2.0), (0.25, 0.25), ("0.01", 0.01)])
def test_parse_cpus_accepts_a_share_of_the_machines_cpus(monkeypatch, text, expected):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert parse_cpus(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "abc", "nan", "inf", "3", "2.5", "0.001", "", True])
def test_parse_cpus_rejects_values_outside_zero_to_cpu_count(monkeypatch, text):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(InvalidArgument) as info:
        parse_cpus(text)
    message = str(info.value)
    assert repr(str(text)) in message
    assert "to 2 (this machine's CPU count), e.g. 0.5" in message
    assert "\n" not in message


# ---- detecting the mode -------------------------------------------------------------------
HYBRID_MOUNTINFO = """\
23 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED_MOUNTINFO = """\
23 1 0:22 / /sys rw,nosuid - sysfs sysfs rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""
LEGACY_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:11 - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
"""


@pytest.mark.parametrize("mountinfo, mode", [
    (HYBRID_MOUNTINFO, "hybrid"), (UNIFIED_MOUNTINFO, "unified"), (LEGACY_MOUNTINFO, "legacy")])
def test_mode_is_decided_by_the_filesystem_types_mounted_at_the_cgroup_root(mountinfo, mode):
    assert mode_from_mounts(parse_mountinfo(mountinfo)) == mode


def test_a_cgroup2_mounted_over_a_v1_tree_hides_it_and_makes_the_host_unified():
    over = HYBRID_MOUNTINFO + "50 23 0:40 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n"
    assert mode_from_mounts(parse_mountinfo(over)) == "unified"


def test_mode_detection_without_any_cgroup_mount_explains_how_to_mount_one():
    with pytest.raises(MinicontainerError, match="mount -t cgroup2 none /sys/fs/cgroup"):
        mode_from_mounts(parse_mountinfo("23 1 0:22 / /sys rw - sysfs sysfs rw\n"))


def test_mountinfo_parsing_unescapes_spaces_and_skips_optional_fields():
    [entry] = parse_mountinfo(r"40 31 0:9 /sub /mnt/my\040cgroups rw shared:3 master:1 - cgroup cgroup rw,pids")
    assert entry.mount_point == "/mnt/my cgroups"
    assert entry.root == "/sub"
    assert entry.fstype == "cgroup"
    assert "pids" in entry.super_options


@pytest.mark.skipif(not Path("/sys/fs/cgroup/unified").is_mount(),
                    reason="this host has no hybrid v2 mount at /sys/fs/cgroup/unified")
def test_detect_mode_reports_this_machine_as_hybrid_and_open_cgroup_picks_v1():
    assert detect_mode() == "hybrid"
    assert isinstance(open_cgroup("probe"), V1Cgroup)   # opening creates nothing


# ---- v1 placement (pure) ------------------------------------------------------------------
def test_v1_cgroups_nest_under_the_callers_own_cgroup_in_each_hierarchy():
    own = parse_proc_cgroup("4:memory:/process_api/abc\n8:pids:/\n2:cpuacct:/\n1:cpu:/\n6:freezer:/\n5:devices:/\n0::/\n")
    dirs = v1_cgroup_dirs("c1", parse_mountinfo(HYBRID_MOUNTINFO), own)
    assert dirs == {
        "memory": "/sys/fs/cgroup/memory/process_api/abc/minicontainer-c1",
        "cpu": "/sys/fs/cgroup/cpu/minicontainer-c1",
        "cpuacct": "/sys/fs/cgroup/cpuacct/minicontainer-c1",
        "pids": "/sys/fs/cgroup/pids/minicontainer-c1",
        "freezer": "/sys/fs/cgroup/freezer/minicontainer-c1",
        "devices": "/sys/fs/cgroup/devices/minicontainer-c1",
    }


def test_v1_cpu_and_cpuacct_in_one_hierarchy_share_one_directory_and_one_procs_file():
    mounts = parse_mountinfo(LEGACY_MOUNTINFO + "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
                             "37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n"
                             "40 31 0:37 / /sys/fs/cgroup/devices rw - cgroup cgroup rw,devices\n")
    cg = V1Cgroup("c1", mounts=mounts, own={})
    assert cg.paths()["cpu"] == cg.paths()["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct/minicontainer-c1"
    assert cg.procs_files() == [f"/sys/fs/cgroup/{h}/minicontainer-c1/cgroup.procs"
                                for h in ("memory", "cpu,cpuacct", "pids", "freezer", "devices")]


def test_v1_placement_accounts_for_a_hierarchy_mounted_from_a_subtree():
    mounts = parse_mountinfo(HYBRID_MOUNTINFO.replace("0:32 / /sys/fs/cgroup/memory", "0:32 /outer /sys/fs/cgroup/memory"))
    dirs = v1_cgroup_dirs("c1", mounts, {"memory": "/outer/inner"})
    assert dirs["memory"] == "/sys/fs/cgroup/memory/inner/minicontainer-c1"


def test_a_missing_v1_controller_is_named_with_how_to_fix_it():
    mounts = [m for m in parse_mountinfo(HYBRID_MOUNTINFO) if "pids" not in m.super_options]
    with pytest.raises(ControllerMissing) as info:
        v1_cgroup_dirs("c1", mounts, {})
    assert info.value.controller == "pids"
    assert "mount -t cgroup -o pids cgroup /sys/fs/cgroup/pids" in str(info.value)
    assert "cgroup_enable=pids" in str(info.value)


@pytest.mark.parametrize("name", ["", "../escape", "a/b", "-x", "x" * 200])
def test_cgroup_names_that_could_escape_the_tree_are_refused(name):
    with pytest.raises(InvalidArgument):
        V2Cgroup(name, root="/nonexistent")


# ---- v1 on the real kernel ----------------------------------------------------------------
def _unique_name() -> str:
    # the conftest's tag first: its leak check looks at this test's cgroups only
    return f"{os.environ.get('MINICONTAINER_CGROUP_TAG', 't')}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def real():
    """A created cgroup with this host's own driver (v1 here; v2 in the v2 guest); removed after."""
    cg = open_cgroup(_unique_name())
    cg.create()
    yield cg
    cg.kill_all()
    cg.remove()


@pytest.fixture
def v1(real) -> V1Cgroup:
    """The ``real`` cgroup, for tests of v1's own files (a v1 or hybrid host only)."""
    if real.version != 1:
        pytest.skip("tests v1's own interface files")
    return real


@pytest.fixture
def spawn(real):
    """Start Python children; every one is killed and reaped after the test (before the cgroup goes)."""
    started: list[subprocess.Popen] = []

    def start(code: str, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdin.close()
        proc.stdout.close()


def _go(proc: subprocess.Popen) -> None:
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _cgroup_of(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/cgroup") as f:
        return parse_proc_cgroup(f.read())


def _utime(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[11])   # field 14: utime, in clock ticks


@needs_v1
def test_v1_create_makes_one_directory_per_hierarchy_under_our_own_memory_cgroup():
    own = _cgroup_of(os.getpid())
    cg = V1Cgroup(_unique_name())
    with recording() as trace:
        cg.create()
    try:
        paths = cg.paths()
        assert set(paths) == {"memory", "cpu", "cpuacct", "pids", "freezer", "devices"}
        for controller, directory in paths.items():
            assert os.path.isfile(os.path.join(directory, "cgroup.procs")), controller
        assert paths["memory"] == f"/sys/fs/cgroup/memory{own['memory'].rstrip('/')}/minicontainer-{cg.name}"
        creates = [s for s in trace if s.name == "cgroup_create"]
        assert [s.call for s in creates] == [f"mkdir {d}" for d in dict.fromkeys(paths.values())]
        assert all(s.ok and s.shell == s.call for s in creates)
    finally:
        cg.remove()
    assert not any(os.path.exists(d) for d in paths.values())


@needs_v1
def test_v1_limits_are_written_and_read_back(v1):
    with recording() as trace:
        v1.set_limits(Limits(memory=parse_memory("64m"), cpus=0.5, pids=10))
    memory, cpu, pids = (v1.paths()[c] for c in ("memory", "cpu", "pids"))
    assert Path(memory, "memory.limit_in_bytes").read_text().strip() == "67108864"
    if Path(memory, "memory.memsw.limit_in_bytes").exists():
        assert Path(memory, "memory.memsw.limit_in_bytes").read_text().strip() == "67108864"
    assert Path(cpu, "cpu.cfs_period_us").read_text().strip() == "100000"
    assert Path(cpu, "cpu.cfs_quota_us").read_text().strip() == "50000"
    assert Path(pids, "pids.max").read_text().strip() == "10"
    first = trace[0]
    assert first.name == "cgroup_write"
    assert first.call == f'write "67108864" > {memory}/memory.limit_in_bytes'
    assert first.shell == f"echo 67108864 > {memory}/memory.limit_in_bytes"
    assert first.evidence == {"read back": "67108864"}
    assert all(s.why for s in trace)


def _unified_host() -> bool:
    try:
        return detect_mode() == "unified"
    except MinicontainerError:
        return False


needs_v2 = pytest.mark.skipif(not _unified_host(), reason="needs a cgroup v2 host (make test-v2 boots one)")


@needs_v2
def test_v2_create_puts_the_container_in_the_shared_parent_with_memory_cpu_pids(real):
    directory = real.paths()["unified"]
    assert os.path.dirname(directory) == real.parent
    assert {"memory", "cpu", "pids"} <= set(Path(directory, "cgroup.controllers").read_text().split())
    if cgroups.systemd_manages_cgroups():
        # systemd owns the tree: we live in the unit it delegated to us, and nowhere else
        assert real.parent == f"/sys/fs/cgroup/system.slice/{cgroups.SYSTEMD_UNIT}"
        shown = subprocess.run(["systemctl", "show", "-P", "Delegate", cgroups.SYSTEMD_UNIT],
                               capture_output=True, text=True).stdout.strip()
        assert shown == "yes"
        assert Path(real.parent, "cgroup.procs").read_text().split() == []   # no internal processes
        assert not Path("/sys/fs/cgroup", cgroups.V2_PARENT).exists()
    else:
        assert real.parent == f"/sys/fs/cgroup/{cgroups.V2_PARENT}"


@needs_v2
def test_v2_limits_are_written_and_read_back(real):
    with recording() as trace:
        real.set_limits(Limits(memory=parse_memory("64m"), cpus=0.5, pids=10))
    d = real.paths()["unified"]
    assert Path(d, "memory.max").read_text().strip() == "67108864"
    if Path(d, "memory.swap.max").exists():
        assert Path(d, "memory.swap.max").read_text().strip() == "0"
    assert Path(d, "cpu.max").read_text().strip() == "50000 100000"
    assert Path(d, "pids.max").read_text().strip() == "10"
    assert trace[0].call == f'write "67108864" > {d}/memory.max'
    assert trace[0].evidence == {"read back": "67108864"}


@needs_v1
def test_v1_raising_the_memory_limit_raises_the_swap_limit_first(v1):
    v1.set_limits(Limits(memory=32 * MiB))
    v1.set_limits(Limits(memory=128 * MiB))   # memory <= memsw must hold after each write
    assert Path(v1.paths()["memory"], "memory.limit_in_bytes").read_text().strip() == str(128 * MiB)


@needs_v1
def test_v1_invalid_limits_are_refused_before_any_write(v1):
    with recording() as trace, pytest.raises(InvalidArgument):
        v1.set_limits(Limits(memory=64 * MiB, pids=0))
    assert len(trace) == 0


def test_real_memory_hog_is_oom_killed_and_counted(real, spawn):
    real.set_limits(Limits(memory=32 * MiB))
    # The child joins by writing its own pid into every procs file, as a container's
    # child process does before exec.
    hog = spawn("""
        import os, sys
        for path in sys.argv[1:]:
            fd = os.open(path, os.O_WRONLY)
            os.write(fd, str(os.getpid()).encode())
            os.close(fd)
        print("joined", flush=True)
        sys.stdin.readline()
        data = b"x" * (64 << 20)
        print("survived", flush=True)
    """, *real.procs_files())
    assert hog.stdout.readline().strip() == "joined"
    assert real.pids() == [hog.pid]
    assert not real.oom_killed()
    _go(hog)
    assert hog.wait() == -signal.SIGKILL
    assert hog.stdout.read() == ""
    stats = real.stats()
    assert stats.oom_kills == 1
    assert real.oom_killed()
    assert 16 * MiB < stats.memory_peak <= 32 * MiB


def test_real_pids_max_makes_fork_fail_inside_while_the_host_still_forks(real, spawn):
    real.set_limits(Limits(pids=5))
    forker = spawn("""
        import os, sys
        sys.stdin.readline()
        r, w = os.pipe()
        kids, failures = [], 0
        for _ in range(50):
            try:
                pid = os.fork()
            except BlockingIOError:   # EAGAIN: pids.max reached
                failures += 1
                continue
            if pid == 0:
                os.close(w)
                os.read(r, 1)          # wait until the parent closes the pipe
                os._exit(0)
            kids.append(pid)
        print(len(kids), failures, flush=True)
        sys.stdin.readline()
        os.close(w)
        for pid in kids:
            os.waitpid(pid, 0)
        print("reaped", flush=True)
    """)
    real.attach(forker.pid)
    _go(forker)
    forked, failed = map(int, forker.stdout.readline().split())
    assert (forked, failed) == (4, 46)          # 5 tasks: the forker and 4 children
    assert real.stats().pids_current == 5
    assert subprocess.run(["true"]).returncode == 0   # outside the cgroup, fork works
    _go(forker)
    assert forker.stdout.readline().strip() == "reaped"
    assert forker.wait() == 0


def test_real_cpu_quota_holds_a_busy_loop_near_its_share(real, spawn):
    real.set_limits(Limits(cpus=0.25))
    if real.version == 1:
        assert Path(real.paths()["cpu"], "cpu.cfs_quota_us").read_text().strip() == "25000"
    else:
        assert Path(real.paths()["unified"], "cpu.max").read_text().strip() == "25000 100000"
    spinner = spawn("""
        import sys, time
        sys.stdin.readline()
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
    """)
    real.attach(spinner.pid)
    before = real.stats().cpu_usage_usec
    start = time.monotonic()
    _go(spinner)
    assert spinner.wait() == 0
    wall = time.monotonic() - start
    used = (real.stats().cpu_usage_usec - before) / 1e6
    # Unthrottled, a busy loop uses ~100% of one CPU; a 0.25 quota keeps it near 25%.
    assert 0.05 < used / wall < 0.6


def test_real_freeze_stops_a_busy_process_and_thaw_resumes_it(real, spawn):
    spinner = spawn("""
        import sys
        sys.stdin.readline()
        while True:
            pass
    """)
    real.attach(spinner.pid)
    _go(spinner)
    assert _wait(lambda: real.stats().cpu_usage_usec > 10_000)
    with recording() as trace:
        real.freeze()
    # v1's freezer.state reads FREEZING until every task stopped; v2's cgroup.freeze reads 1
    assert trace[0].name == "cgroup_freeze" and trace[0].evidence["read back"] in ("FROZEN", "FREEZING", "1")
    assert real.is_frozen()
    usage, ticks = real.stats().cpu_usage_usec, _utime(spinner.pid)
    time.sleep(0.3)   # a running busy loop would gain ~30 ticks in this time
    assert (real.stats().cpu_usage_usec, _utime(spinner.pid)) == (usage, ticks)
    real.thaw()
    assert not real.is_frozen()
    assert _wait(lambda: real.stats().cpu_usage_usec > usage)


def _wait(condition, tries: int = 5000) -> bool:
    """Poll ``condition`` every millisecond, a bounded number of times."""
    for _ in range(tries):
        if condition():
            return True
        time.sleep(0.001)
    return False


PR_SET_CHILD_SUBREAPER = 36


def test_real_kill_all_kills_every_process_including_ones_forked_inside(real, spawn):
    libc = ctypes.CDLL(None, use_errno=True)
    kids: list[int] = []
    parent = spawn("""
        import os, sys, time
        sys.stdin.readline()
        kids = []
        for _ in range(3):
            pid = os.fork()
            if pid == 0:
                while True:
                    time.sleep(60)
            kids.append(pid)
        print(*kids, flush=True)
        while True:
            time.sleep(60)
    """)
    # Become the subreaper so the grandchildren come back to us to be reaped.
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    try:
        real.attach(parent.pid)
        _go(parent)
        kids = [int(p) for p in parent.stdout.readline().split()]
        assert real.pids() == sorted([parent.pid, *kids])
        with recording() as trace:
            real.kill_all()
        assert real.pids() == []
        if real.version == 1:   # no kill file: freeze, signal everyone, thaw
            assert {"cgroup_freeze", "cgroup_kill", "cgroup_thaw"} <= set(trace.names())
        else:                   # one write to cgroup.kill, which has nothing to read back
            assert trace.names() == ["cgroup_kill"] and trace[0].evidence == {}
        assert parent.wait() == -signal.SIGKILL
        while kids:
            _, status = os.waitpid(kids.pop(), 0)
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    finally:
        # If the test failed, clean up by hand: the grandchildren are ours to reap.
        for kid in kids:
            try:
                os.kill(kid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        parent.kill()
        parent.wait()
        for kid in kids:
            try:
                os.waitpid(kid, 0)
            except ChildProcessError:
                pass
        libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def test_real_attach_moves_a_process_into_every_hierarchy(real, spawn):
    sleeper = spawn("import sys; sys.stdin.readline()")
    with recording() as trace:
        real.attach(sleeper.pid)
    where = _cgroup_of(sleeper.pid)
    if real.version == 1:
        for controller in ("memory", "cpu", "cpuacct", "pids", "freezer"):
            assert where[controller].endswith(f"/minicontainer-{real.name}"), controller
    else:   # one line, "0::/path", for the one unified tree
        assert "/sys/fs/cgroup" + where[""] == real.paths()["unified"]
    assert trace.names() == ["cgroup_attach"] * len(real.procs_files())
    assert all(os.path.isabs(p) and p.endswith("/cgroup.procs") for p in real.procs_files())
    assert real.stats().pids_current == 1


@needs_v1
def test_v1_half_done_create_rolls_back_the_directories_it_made():
    name = _unique_name()
    paths = V1Cgroup(name).paths()
    paths["pids"] = f"/sys/fs/cgroup/pids/no-such-parent-{name}/minicontainer-{name}"   # mkdir fails: ENOENT
    cg = V1Cgroup(name, paths=paths)
    with recording() as trace, pytest.raises(KernelError) as info:
        cg.create()
    assert info.value.errno == errno.ENOENT
    for controller in ("memory", "cpu", "cpuacct", "freezer"):
        assert not os.path.exists(paths[controller]), controller
    assert [s.name for s in trace].count("cgroup_remove") == 3   # memory, cpu, cpuacct


def test_real_create_adopts_an_empty_leftover_but_refuses_one_with_processes(real, spawn):
    again = open_cgroup(real.name)
    sleeper = spawn("import sys; sys.stdin.readline()")
    real.attach(sleeper.pid)
    with pytest.raises(MinicontainerError, match="already exists and holds processes"):
        again.create()
    assert all(os.path.isdir(d) for d in real.paths().values())   # the refusal removed nothing of the owner's
    real.kill_all()
    again.create()   # empty now: a crash leftover is adopted


def test_real_remove_is_idempotent_and_leaves_nothing(real):
    real.remove()
    with recording() as trace:
        real.remove()
    assert len(trace) == 0
    assert not any(os.path.exists(d) for d in real.paths().values())


def test_reopening_a_v1_cgroup_from_its_recorded_paths_reaches_the_same_directories(real):
    again = open_cgroup(real.name, paths=real.paths())
    assert again.paths() == real.paths()
    assert again.stats() == real.stats()


@needs_v1
def test_planning_a_cgroup_records_the_steps_without_creating_anything():
    cg = V1Cgroup(_unique_name())
    with planning() as plan:
        cg.create()
        cg.set_limits(Limits(memory=64 * MiB, pids=10))
        cg.freeze()
        cg.remove()
    assert all(s.result == PLANNED for s in plan)
    assert plan.names()[:5] == ["cgroup_create"] * 5
    assert "cgroup_freeze" in plan.names()
    assert not any(os.path.exists(d) for d in cg.paths().values())


def test_creating_a_cgroup_without_root_raises_not_root(monkeypatch, tmp_path):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(NotRootError):
        V2Cgroup("c1", root=str(tmp_path)).create()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/sys/fs/cgroup/unified/cgroup.controllers").exists()
                    or "memory" in Path("/sys/fs/cgroup/unified/cgroup.controllers").read_text(),
                    reason="needs this host's controller-less hybrid v2 mount")
def test_v2_driver_on_this_hosts_empty_unified_mount_reports_memory_missing():
    cg = V2Cgroup(_unique_name(), root="/sys/fs/cgroup/unified")
    with pytest.raises(ControllerMissing) as info:
        cg.create()
    assert info.value.controller == "memory"
    assert "cgroup_enable=memory" in str(info.value)
    assert not os.path.exists("/sys/fs/cgroup/unified/minicontainer")


# ---- v2 against a fake cgroupfs ---------------------------------------------------------------
class FakeCgroupfs:
    """A small model of cgroup2fs, installed as the cgroups module's ``os``.

    It does what the kernel does that the driver relies on: mkdir fills a cgroup with
    interface files for the controllers its parent delegates; writes are parsed rather
    than stored (subtree_control "+memory", cgroup.procs appends, cgroup.freeze updates
    cgroup.events, cgroup.kill empties the cgroup); files can't be created; rmdir refuses
    a cgroup with children or processes. Everything else is the real ``os``.
    """

    def __init__(self, root: Path, controllers: str = "cpu memory pids io", *,
                 swap: bool = True, kill_file: bool = True):
        self.root, self.swap, self.kill_file = root, swap, kill_file
        self.writes: list[tuple[str, str]] = []
        self.signals: list[tuple[int, int]] = []
        self.fail_mkdir: set[str] = set()
        self._fds: dict[int, str] = {}
        for name, text in {"cgroup.controllers": controllers, "cgroup.subtree_control": "",
                           "cgroup.procs": ""}.items():
            (root / name).write_text(text)

    def __getattr__(self, name):
        return getattr(os, name)

    def mkdir(self, path, mode=0o777):
        if str(path) in self.fail_mkdir:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        os.mkdir(path, mode)
        delegated = Path(path).parent.joinpath("cgroup.subtree_control").read_text().split()
        files = {"cgroup.controllers": " ".join(delegated), "cgroup.subtree_control": "",
                 "cgroup.procs": "", "cgroup.events": "populated 0\nfrozen 0\n", "cgroup.freeze": "0"}
        if self.kill_file:
            files["cgroup.kill"] = ""
        if "memory" in delegated:
            files.update({"memory.max": "max", "memory.current": "0", "memory.peak": "0",
                          "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n"})
            if self.swap:
                files["memory.swap.max"] = "max"
        if "cpu" in delegated:
            files.update({"cpu.max": "max 100000", "cpu.stat": "usage_usec 0\nuser_usec 0\nsystem_usec 0\n"})
        if "pids" in delegated:
            files.update({"pids.max": "max", "pids.current": "0"})
        for name, text in files.items():
            Path(path, name).write_text(text)
        if self.kill_file:
            Path(path, "cgroup.kill").chmod(0o200)   # write-only, as in the kernel

    def rmdir(self, path):
        d = Path(path)
        if not d.is_dir():
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        if any(e.is_dir() for e in d.iterdir()) or d.joinpath("cgroup.procs").read_text().split():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), path)
        for f in d.iterdir():
            f.unlink()
        os.rmdir(path)

    def open(self, path, flags, mode=0o777):
        if not os.path.isfile(path):   # cgroupfs has no O_CREAT
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), path)
        fd = os.open(path, os.O_RDONLY)
        self._fds[fd] = str(path)
        return fd

    def close(self, fd):
        self._fds.pop(fd, None)
        os.close(fd)

    def write(self, fd, data):
        path = Path(self._fds[fd])
        value = data.decode()
        self.writes.append((str(path), value))
        if path.name == "cgroup.subtree_control":
            available = path.parent.joinpath("cgroup.controllers").read_text().split()
            enabled = set(path.read_text().split())
            for token in value.split():
                if token[1:] not in available:
                    raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
                (enabled.add if token[0] == "+" else enabled.discard)(token[1:])
            path.write_text(" ".join(sorted(enabled)))
        elif path.name == "cgroup.procs":   # a process is in one cgroup: moving takes it out of the old one
            for procs in self.root.rglob("cgroup.procs"):
                procs.write_text("".join(f"{p}\n" for p in procs.read_text().split() if p != value.strip()))
            path.write_text(path.read_text() + value + "\n")
        elif path.name == "cgroup.freeze":
            path.write_text(value)
            self._set_event(path.parent, "frozen", value.strip())
        elif path.name == "cgroup.kill":
            path.parent.joinpath("cgroup.procs").write_text("")
        else:
            path.write_text(value)
        return len(data)

    def kill(self, pid, sig):
        self.signals.append((pid, sig))
        for procs in self.root.rglob("cgroup.procs"):
            procs.write_text("".join(f"{p}\n" for p in procs.read_text().split() if int(p) != pid))

    @staticmethod
    def _set_event(directory: Path, key: str, value: str) -> None:
        events = directory / "cgroup.events"
        lines = [f"{key} {value}" if line.split()[0] == key else line
                 for line in events.read_text().splitlines()]
        events.write_text("\n".join(lines) + "\n")


@pytest.fixture
def fakefs(tmp_path, monkeypatch) -> FakeCgroupfs:
    fake = FakeCgroupfs(tmp_path)
    monkeypatch.setattr(cgroups, "os", fake)
    return fake


def _written(fake: FakeCgroupfs, path: Path) -> list[str]:
    return [value for p, value in fake.writes if p == str(path)]


def test_v2_create_enables_memory_cpu_pids_in_every_ancestor_from_the_root_down(fakefs, tmp_path):
    cg = open_cgroup("c1", root=str(tmp_path), mode="unified")
    assert isinstance(cg, V2Cgroup) and cg.version == 2
    with recording() as trace:
        cg.create()
    assert _written(fakefs, tmp_path / "cgroup.subtree_control") == ["+memory +cpu +pids"]
    assert _written(fakefs, tmp_path / "minicontainer/cgroup.subtree_control") == ["+memory +cpu +pids"]
    assert cg.paths() == {"unified": str(tmp_path / "minicontainer/c1")}
    assert (tmp_path / "minicontainer/c1/memory.max").exists()   # the controllers reached the child
    assert trace.names() == ["cgroup_write", "cgroup_create", "cgroup_write", "cgroup_create"]
    assert trace[0].evidence == {"read back": "cpu memory pids"}
    cg.remove()
    assert not (tmp_path / "minicontainer/c1").exists()
    # the shared parent stays: removing it raced with other engines creating containers in it
    assert (tmp_path / "minicontainer").is_dir()


def test_v2_create_skips_controllers_an_ancestor_already_delegates(fakefs, tmp_path):
    (tmp_path / "cgroup.subtree_control").write_text("cpu io memory")
    V2Cgroup("c1", root=str(tmp_path)).create()
    assert _written(fakefs, tmp_path / "cgroup.subtree_control") == ["+pids"]
    second = V2Cgroup("c2", root=str(tmp_path))
    before = len(fakefs.writes)
    second.create()
    assert fakefs.writes[before:] == []   # everything already delegated: only a mkdir
    for name in ("c1", "c2"):
        V2Cgroup(name, root=str(tmp_path)).remove()
    assert [e.name for e in (tmp_path / "minicontainer").iterdir() if e.is_dir()] == []


def test_v2_limits_are_written_as_memory_max_cpu_max_and_pids_max(fakefs, tmp_path):
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    cg.set_limits(Limits(memory=parse_memory("64m"), cpus=0.5, pids=20))
    d = tmp_path / "minicontainer/c1"
    assert _written(fakefs, d / "memory.max") == ["67108864"]
    assert _written(fakefs, d / "memory.swap.max") == ["0"]
    assert _written(fakefs, d / "cpu.max") == ["50000 100000"]
    assert _written(fakefs, d / "pids.max") == ["20"]
    cg.remove()


def test_v2_without_swap_accounting_no_swap_limit_is_written(tmp_path, monkeypatch):
    fake = FakeCgroupfs(tmp_path, swap=False)
    monkeypatch.setattr(cgroups, "os", fake)
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    cg.set_limits(Limits(memory=32 * MiB))
    assert [Path(p).name for p, _ in fake.writes if "/c1/" in p] == ["memory.max"]
    cg.remove()


def test_v2_kill_all_of_a_removed_cgroup_does_nothing(fakefs, tmp_path):
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    cg.remove()
    with recording() as trace:
        cg.kill_all()   # as after a run whose cgroup is already gone
    assert len(trace) == 0


def test_v2_attach_freeze_thaw_and_kill_write_the_cgroup_files(fakefs, tmp_path):
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    d = tmp_path / "minicontainer/c1"
    with recording() as trace:
        cg.attach(4242)
        assert cg.pids() == [4242]
        cg.freeze()
        assert cg.is_frozen()
        cg.thaw()
        assert not cg.is_frozen()
        cg.kill_all()
    assert cg.pids() == []
    assert _written(fakefs, d / "cgroup.procs") == ["4242"]
    assert _written(fakefs, d / "cgroup.freeze") == ["1", "0"]
    assert _written(fakefs, d / "cgroup.kill") == ["1"]
    assert trace.names() == ["cgroup_attach", "cgroup_freeze", "cgroup_thaw", "cgroup_kill"]
    assert fakefs.signals == []   # cgroup.kill needs no signals from us
    cg.remove()


def test_v2_without_cgroup_kill_falls_back_to_freeze_signal_thaw(tmp_path, monkeypatch):
    fake = FakeCgroupfs(tmp_path, kill_file=False)   # kernels before 5.14
    monkeypatch.setattr(cgroups, "os", fake)
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    cg.attach(4242)
    cg.attach(4343)
    cg.kill_all()
    assert sorted(fake.signals) == [(4242, signal.SIGKILL), (4343, signal.SIGKILL)]
    assert _written(fake, tmp_path / "minicontainer/c1/cgroup.freeze") == ["1", "0"]
    cg.remove()


def test_v2_stats_parse_memory_cpu_pids_and_oom_events(fakefs, tmp_path):
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    d = tmp_path / "minicontainer/c1"
    (d / "memory.current").write_text("1048576\n")
    (d / "memory.peak").write_text("33554432\n")
    (d / "cpu.stat").write_text("usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n")
    (d / "pids.current").write_text("3\n")
    (d / "memory.events").write_text("low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n")
    assert cg.stats() == CgroupStats(memory_current=1048576, memory_peak=33554432,
                                     cpu_usage_usec=123456, pids_current=3, oom_kills=2)
    assert cg.oom_killed()
    (d / "memory.peak").unlink()   # before Linux 5.19 there is no memory.peak
    assert cg.stats().memory_peak == 1048576
    cg.remove()


def test_v2_a_controller_the_root_cannot_hand_out_is_named_and_nothing_is_created(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "os", FakeCgroupfs(tmp_path, controllers="cpu pids"))
    with pytest.raises(ControllerMissing) as info:
        V2Cgroup("c1", root=str(tmp_path)).create()
    assert info.value.controller == "memory"
    assert "cgroup_enable=memory" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "minicontainer").exists()


def test_v2_a_controller_missing_below_the_root_says_to_enable_it_in_the_parent(fakefs, tmp_path):
    # Someone made the shared parent before the root delegated pids to it.
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory")
    fakefs.mkdir(str(tmp_path / "minicontainer"))
    (tmp_path / "cgroup.subtree_control").write_text("cpu memory pids")   # too late for the parent
    with pytest.raises(ControllerMissing) as info:
        V2Cgroup("c1", root=str(tmp_path)).create()
    assert info.value.controller == "pids"
    assert f"echo +pids > {tmp_path}/cgroup.subtree_control" in str(info.value)
    assert (tmp_path / "minicontainer").is_dir()   # it wasn't ours to remove
    fakefs.rmdir(str(tmp_path / "minicontainer"))


def test_v2_a_failed_create_leaves_no_container_cgroup_and_a_usable_parent(fakefs, tmp_path):
    fakefs.fail_mkdir.add(str(tmp_path / "minicontainer/c1"))
    with recording() as trace, pytest.raises(KernelError):
        V2Cgroup("c1", root=str(tmp_path)).create()
    assert not (tmp_path / "minicontainer/c1").exists()
    assert trace.names()[-1] == "cgroup_create" and not trace[-1].ok
    fakefs.fail_mkdir.clear()
    V2Cgroup("c1", root=str(tmp_path)).create()   # the parent it left is the one the next create uses
    assert (tmp_path / "minicontainer/c1/memory.max").exists()


def test_v2_remove_keeps_the_shared_parent_while_another_container_uses_it(fakefs, tmp_path):
    a, b = V2Cgroup("a", root=str(tmp_path)), V2Cgroup("b", root=str(tmp_path))
    a.create()
    b.create()
    a.remove()
    assert (tmp_path / "minicontainer/b").is_dir()
    b.remove()
    with recording() as trace:
        b.remove()   # idempotent
    assert len(trace) == 0
    assert not (tmp_path / "minicontainer/b").exists() and (tmp_path / "minicontainer").is_dir()


def test_v2_remove_waits_for_processes_then_explains_what_is_still_there(fakefs, tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "RMDIR_TIMEOUT", 0.01)
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    cg.attach(4242)
    with pytest.raises(KernelError, match="still holds processes"):
        cg.remove()
    cg.kill_all()
    cg.remove()
    assert not (tmp_path / "minicontainer/c1").exists()


def test_the_write_step_names_the_file_the_value_and_the_read_back(fakefs, tmp_path):
    target = tmp_path / "cgroup.subtree_control"
    step = cgroups.write_cgroup_file(str(target), "+memory", "delegate memory")
    assert step.name == "cgroup_write"
    assert step.call == f'write "+memory" > {target}'
    assert step.shell == f"echo +memory > {target}"
    assert step.why == "delegate memory"
    assert step.evidence == {"read back": "memory"}


def test_a_failed_write_becomes_a_one_line_kernel_error(fakefs, tmp_path):
    with pytest.raises(KernelError) as info:
        cgroups.write_cgroup_file(str(tmp_path / "memory.max"), "1", "x")
    assert info.value.errno == errno.ENOENT
    assert "is the controller enabled" in str(info.value) and "\n" not in str(info.value)


def test_a_write_only_file_gets_no_read_back_evidence(fakefs, tmp_path):
    cg = V2Cgroup("c1", root=str(tmp_path))
    cg.create()
    with recording() as trace:
        cg.kill_all()
    assert trace.names() == ["cgroup_kill"]
    assert trace[0].evidence == {}   # not "unavailable: [Errno 22] Invalid argument"
    cg.remove()


def test_planning_v2_lists_the_swap_limit_and_the_kill_a_real_run_writes(fakefs, tmp_path):
    V2Cgroup("first", root=str(tmp_path)).create()   # an earlier container made the parent
    cg = V2Cgroup("planned", root=str(tmp_path))
    with planning() as plan:
        cg.create()
        cg.set_limits(Limits(memory=64 * MiB))
        cg.kill_all()
        cg.remove()
    assert plan.names() == ["cgroup_create", "cgroup_write", "cgroup_write", "cgroup_kill", "cgroup_remove"]
    assert plan[2].call.endswith("/planned/memory.swap.max")
    assert not (tmp_path / "minicontainer/planned").exists()
    V2Cgroup("first", root=str(tmp_path)).remove()


# ---- v2 under systemd, against a fake tree ----------------------------------------------------
# systemd is not PID 1 on this machine; the v2 guest (make test-v2) runs the real thing.
def _systemd_tree(tmp_path: Path, fakefs: FakeCgroupfs, keeper: int | None = None) -> Path:
    """The part of a systemd host's tree the driver sees: system.slice and, if started, our unit."""
    (tmp_path / "cgroup.subtree_control").write_text("cpu io memory pids")   # systemd's choice
    fakefs.mkdir(str(tmp_path / "system.slice"))
    (tmp_path / "system.slice/cgroup.subtree_control").write_text("cpu io memory pids")
    unit = tmp_path / "system.slice" / cgroups.SYSTEMD_UNIT
    if keeper is not None:
        fakefs.mkdir(str(unit))
        (unit / "cgroup.procs").write_text(f"{keeper}\n")
    return unit


def test_under_systemd_containers_live_in_the_delegated_units_cgroup_and_the_root_is_untouched(fakefs, tmp_path):
    unit = _systemd_tree(tmp_path, fakefs, keeper=4242)
    cg = V2Cgroup("c1", root=str(tmp_path), systemd=True)
    with recording() as trace:
        cg.create()
    assert cg.paths() == {"unified": str(unit / "c1")}
    # the unit's own process moved to a leaf: a cgroup that delegates may hold no process
    assert (unit / "supervisor/cgroup.procs").read_text().split() == ["4242"]
    assert (unit / "cgroup.procs").read_text().split() == []
    assert _written(fakefs, unit / "cgroup.subtree_control") == ["+memory +cpu +pids"]
    assert _written(fakefs, tmp_path / "cgroup.subtree_control") == []   # systemd's to manage
    assert trace.names() == ["cgroup_create", "cgroup_attach", "cgroup_write", "cgroup_create"]
    assert (unit / "c1/memory.max").exists()
    V2Cgroup("c2", root=str(tmp_path), systemd=True).create()   # the second one only makes its own
    for name in ("c1", "c2"):
        V2Cgroup(name, root=str(tmp_path), systemd=True).remove()
    assert unit.is_dir()   # the unit's cgroup is systemd's: never removed by us


def test_under_systemd_the_delegated_unit_is_started_when_its_cgroup_is_missing(fakefs, tmp_path, monkeypatch):
    unit = _systemd_tree(tmp_path, fakefs)
    started = []

    def fake_start(name=cgroups.SYSTEMD_UNIT):   # stands in for systemd-run: systemd makes the cgroup
        started.append(name)
        fakefs.mkdir(str(unit))
        (unit / "cgroup.procs").write_text("777\n")

    monkeypatch.setattr(cgroups, "start_delegated_unit", fake_start)
    V2Cgroup("c1", root=str(tmp_path), systemd=True).create()
    V2Cgroup("c2", root=str(tmp_path), systemd=True).create()
    assert started == [cgroups.SYSTEMD_UNIT]   # once, not per container
    assert (unit / "supervisor/cgroup.procs").read_text().split() == ["777"]
    for name in ("c1", "c2"):
        V2Cgroup(name, root=str(tmp_path), systemd=True).remove()


def test_the_delegation_step_is_the_systemd_run_a_learner_could_type(monkeypatch):
    with planning() as plan:
        cgroups.start_delegated_unit()
    step = plan[0]
    assert step.name == "systemd_delegate" and "Delegate=yes" in step.call
    assert step.shell.startswith("systemd-run --unit=minicontainer-cgroups.service --property=Delegate=yes")


def test_a_fake_tree_is_never_taken_for_systemds(tmp_path, monkeypatch):
    monkeypatch.setattr(cgroups, "systemd_manages_cgroups", lambda: True)
    assert not V2Cgroup("c1", root=str(tmp_path)).systemd
    assert V2Cgroup("c1").systemd and V2Cgroup("c1").parent.endswith("/system.slice/minicontainer-cgroups.service")


# ---- concurrency, on the real kernel ---------------------------------------------------------------
def _create_remove_worker(tag: str, rounds: int, errors_w: int) -> None:
    errors = []
    for i in range(rounds):
        cg = open_cgroup(f"{tag}-{i}")
        try:
            cg.create()
            cg.remove()
        except Exception as exc:   # noqa: BLE001 - every failure counts
            errors.append(f"{type(exc).__name__}: {exc}")
    os.write(errors_w, ("\n".join(errors[:5]) + f"\n{len(errors)} errors\n").encode())


def test_concurrent_creates_and_removes_never_fail_on_the_shared_parent():
    """3 processes x 200 create+remove, as three engines starting containers at once."""
    workers = []
    base = _unique_name()
    for n in range(3):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # a separate process, as separate CLI calls are
            code = 1
            try:
                os.close(r)
                _create_remove_worker(f"{base}-w{n}", 200, w)
                code = 0
            finally:
                os._exit(code)
        os.close(w)
        workers.append((pid, r))
    reports = []
    for pid, r in workers:
        with os.fdopen(r) as f:
            reports.append(f.read())
        assert os.waitpid(pid, 0)[1] == 0
    assert [rep.strip().splitlines()[-1] for rep in reports] == ["0 errors"] * 3, reports
