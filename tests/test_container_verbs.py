"""Detached containers and the verbs that drive them, for real: run -d, ps, logs, pause, stop, kill, rm, wait.

A detached container is watched by its monitor process (engine/monitor.py). These tests
also kill that monitor, and a foreground CLI, with SIGKILL, and check that ps then tells
the truth and rm -f cleans everything up.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minicontainer.engine import verbs
from minicontainer.engine.containers import find_record
from minicontainer.engine.monitor import JsonLog
from minicontainer.errors import StateError

# The cgroup-facing ones (freezer, limits, cgroup removal, a killed monitor) also run in the
# cgroup v2 guest (make test-v2), where each CLI call costs seconds: marked one by one.
CLI = [sys.executable, "-m", "minicontainer"]
LOOP = "trap 'echo bye; exit 3' TERM; echo hello; echo oops >&2; while :; do sleep 0.05; done"


def mc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


def _process_states(record) -> list[str]:
    """The State letter of every process in the container's cgroup, as /proc shows it."""
    from minicontainer.engine.run import cgroup_name
    from minicontainer.kernel.cgroups import open_cgroup

    states = []
    for pid in open_cgroup(cgroup_name(record.id)).pids():
        with open(f"/proc/{pid}/status") as f:
            states += [line.split()[1] for line in f if line.startswith("State:")]
    return states


def _cgroup_dirs(cid: str) -> list[str]:
    """The container's cgroup directories that exist now (one per v1 hierarchy, or one on v2)."""
    from minicontainer.engine.run import cgroup_name
    from minicontainer.kernel.cgroups import open_cgroup

    return [d for d in open_cgroup(cgroup_name(cid)).paths().values() if os.path.isdir(d)]


def _until(predicate, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


@pytest.mark.v2
def test_a_detached_container_runs_logs_pauses_stops_and_is_removed(engine_root):
    cid = mc("run", "-d", "--name", "web", "busybox", "sh", "-c", LOOP).stdout.strip()
    assert len(cid) == 64
    rows = verbs.ps()
    assert [(r["Names"], r["State"]) for r in rows] == [("web", "running")] and rows[0]["Status"].startswith("Up ")
    _until(lambda: len(verbs.read_logs("web")) == 2, "two log lines")
    assert sorted(verbs.read_logs("web")) == [("stderr", "oops\n"), ("stdout", "hello\n")]
    record = find_record("web")

    mc("pause", "web")
    assert verbs.ps()[0]["Status"].endswith("(Paused)")
    # frozen: v2 shows the processes stopped in the freezer ("S" while sleeping until thawed
    # on v1); the cgroup says so either way
    from minicontainer.engine.run import cgroup_name
    from minicontainer.kernel.cgroups import open_cgroup
    assert open_cgroup(cgroup_name(record.id)).is_frozen()
    with pytest.raises(StateError, match="^container web is paused: unpause it first$"):
        verbs._live("web", "exec")
    mc("unpause", "web")
    assert not open_cgroup(cgroup_name(record.id)).is_frozen() and verbs.ps()[0]["State"] == "running"

    refused = mc("rm", "web", check=False)
    assert refused.returncode == 1 and "container web is running: stop it first, or remove it with rm -f" in refused.stderr
    assert mc("stop", "-t", "10", "web").stdout == "web\n"
    rows = verbs.ps(all=True)
    assert rows[0]["State"] == "exited" and rows[0]["ExitCode"] == 3 and rows[0]["Status"].startswith("Exited (3) ")
    assert verbs.ps() == []              # ps without -a lists running containers only
    assert ("stdout", "bye\n") in verbs.read_logs("web")
    mc("rm", "web")
    assert verbs.ps(all=True) == [] and not record.dir.exists()


@pytest.mark.v2
def test_pause_freezes_every_process_in_the_container():
    cid = mc("run", "-d", "busybox", "sh", "-c", "sleep 60 & sleep 60 & wait").stdout.strip()
    record = find_record(cid)
    _until(lambda: len(_process_states(record)) == 3, "three processes")
    try:
        mc("pause", cid)
        # every task of a frozen cgroup is parked: none can be running (R) any more, and the
        # freezer's own file says frozen
        from minicontainer.engine.run import cgroup_name
        from minicontainer.kernel.cgroups import open_cgroup
        assert open_cgroup(cgroup_name(record.id)).is_frozen()
        assert "R" not in _process_states(record)
        mc("unpause", cid)
    finally:
        mc("rm", "-f", cid)


def test_stop_kills_a_container_that_ignores_sigterm_after_the_grace_period():
    cid = mc("run", "-d", "busybox", "sh", "-c", "trap '' TERM; while :; do sleep 0.05; done").stdout.strip()
    mc("stop", "-t", "0.3", cid)
    row = verbs.ps(all=True)[0]
    assert row["ExitCode"] == 137, row      # SIGKILL after the grace period
    mc("rm", cid)


def test_kill_sends_the_signal_named_and_wait_returns_the_exit_code():
    cid = mc("run", "-d", "busybox", "sh", "-c", LOOP).stdout.strip()
    mc("kill", "-s", "TERM", cid)
    assert mc("wait", cid).stdout == "3\n"
    refused = mc("kill", cid, check=False)
    assert refused.returncode == 1 and "is not running" in refused.stderr
    bad = mc("kill", "-s", "NOPE", cid, check=False)
    assert bad.returncode == 125 and "invalid signal 'NOPE'" in bad.stderr
    mc("rm", cid)


def test_a_detached_rm_container_removes_itself_when_it_exits(engine_root):
    cid = mc("run", "-d", "--rm", "busybox", "sleep", "0.5").stdout.strip()
    monitor = find_record(cid).read_state().monitor_pid
    _until(lambda: not (engine_root / "containers" / cid).exists(), "the container to remove itself")
    _until(lambda: not verbs._alive(monitor), "its monitor to finish")
    assert verbs.ps(all=True) == []


@pytest.mark.v2
def test_after_kill_9_of_the_monitor_ps_reports_exited_137_and_rm_cleans_up(engine_root):
    cid = mc("run", "-d", "--name", "victim", "busybox", "sleep", "60").stdout.strip()
    state = find_record(cid).read_state()
    assert state.monitor_pid and state.pid
    os.kill(state.monitor_pid, signal.SIGKILL)
    _until(lambda: not verbs._alive(state.pid), "PID 1 to die with its monitor")
    row = verbs.ps(all=True)[0]
    assert (row["State"], row["ExitCode"]) == ("exited", 137)
    mc("rm", "victim")
    assert not (engine_root / "containers" / cid).exists()


def test_after_kill_9_of_a_foreground_cli_the_name_is_free_again(tmp_path):
    ready = tmp_path / "ready"
    cli = subprocess.Popen(CLI + ["run", "--name", "k9", "-v", f"{tmp_path}:/t", "busybox", "sh", "-c",
                                  "touch /t/ready; sleep 60"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _until(ready.exists, "the container to start")
    cli.kill()
    cli.wait()
    row = _until(lambda: [r for r in verbs.ps(all=True) if r["State"] == "exited"], "ps to see it exited")[0]
    assert row["Names"] == "k9" and row["ExitCode"] == 137
    mc("rm", "k9")
    cid = mc("run", "-d", "--name", "k9", "busybox", "true").stdout.strip()   # the name is free again
    mc("wait", cid)
    mc("rm", "k9")


@pytest.mark.v2
def test_a_start_killed_before_running_is_recorded_is_seen_as_exited_and_cleaned_up():
    # The window the test above can only hit by chance (CI did): the command already runs,
    # the CLI is killed before it writes "running". _start claims the start first.
    from minicontainer.engine.containers import ContainerState
    from minicontainer.engine.run import cgroup_name
    from minicontainer.kernel.cgroups import open_cgroup

    cid = mc("create", "--name", "half", "busybox", "true").stdout.strip()
    starter = subprocess.Popen(["true"])
    starter.wait()                        # a pid that was the starter, and is gone
    record = find_record(cid)
    record.write_state(ContainerState(status="created", monitor_pid=starter.pid))
    open_cgroup(cgroup_name(cid)).create()
    assert verbs.ps(all=True)[0]["Status"] != "Created", "a start whose starter died must not look merely created"
    row = verbs.ps(all=True)[0]
    assert (row["Names"], row["State"], row["ExitCode"]) == ("half", "exited", 137)
    assert not _cgroup_dirs(cid), "reconcile removes the cgroup the killed start had made"
    mc("rm", "half")


@pytest.mark.v2
def test_rm_force_removes_a_running_container_with_its_cgroup(engine_root):
    cid = mc("run", "-d", "busybox", "sleep", "60").stdout.strip()
    assert _cgroup_dirs(cid)
    assert mc("rm", "-f", cid[:8]).stdout == f"{cid[:8]}\n"
    assert not (engine_root / "containers" / cid).exists()
    _until(lambda: not _cgroup_dirs(cid), "its cgroups to go")


def test_ps_quiet_and_json_formats():
    cid = mc("run", "-d", "busybox", "sleep", "60").stdout.strip()
    try:
        assert mc("ps", "-q").stdout == cid[:12] + "\n"
        row = json.loads(mc("ps", "--format", "json").stdout)
        assert row["ID"] == cid and row["State"] == "running" and row["Command"] == "sleep 60"
        table = mc("ps").stdout.splitlines()
        assert table[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]
    finally:
        mc("rm", "-f", cid)


def test_a_command_that_cant_start_detached_is_reported_and_nothing_is_kept(engine_root):
    done = mc("run", "-d", "busybox", "no-such-command", check=False)
    assert done.returncode == 127 and "executable file not found" in done.stderr
    assert [p.name for p in (engine_root / "containers").iterdir() if p.name != ".lock"] == []


def test_logs_tail_and_timestamps():
    cid = mc("run", "-d", "busybox", "sh", "-c", "for i in 1 2 3 4; do echo line$i; done").stdout.strip()
    mc("wait", cid)
    assert mc("logs", "--tail", "2", cid).stdout == "line3\nline4\n"
    stamped = mc("logs", "-t", "--tail", "1", cid).stdout
    assert stamped.endswith("Z line4\n") and stamped[:4].isdigit()
    mc("rm", cid)


def test_the_json_log_rotates_at_its_cap_and_keeps_one_older_file(tmp_path):
    log = JsonLog(tmp_path / "c-json.log", max_bytes=400)
    for i in range(20):
        log.write("stdout", f"line {i}\n".encode())
    log.write("stderr", b"no newline yet")
    log.close()
    current = [json.loads(line) for line in (tmp_path / "c-json.log").read_text().splitlines()]
    older = [json.loads(line) for line in (tmp_path / "c-json.log.1").read_text().splitlines()]
    assert (tmp_path / "c-json.log").stat().st_size <= 400 and (tmp_path / "c-json.log.1").stat().st_size <= 400
    assert current[-1] == {"log": "no newline yet", "stream": "stderr", "time": current[-1]["time"]}
    assert [e["log"] for e in older + current[:-1]] == [f"line {i}\n" for i in range(20 - len(older + current[:-1]), 20)]


@pytest.mark.parametrize("seconds, text", [(0.2, "Less than a second"), (1, "1 second"), (42, "42 seconds"),
                                           (70, "About a minute"), (300, "5 minutes"), (3600, "About an hour"),
                                           (7200, "2 hours"), (3 * 86400, "3 days")])
def test_durations_read_as_dockers_do(seconds, text):
    assert verbs._ago(seconds) == text


def test_exec_joins_every_namespace_of_pid_1_and_gets_its_profile():
    cid = mc("run", "-d", "--hostname", "box", "busybox", "sleep", "60").stdout.strip()
    try:
        probe = ("for n in pid mnt uts ipc net cgroup; do echo $n $(readlink /proc/1/ns/$n) $(readlink /proc/self/ns/$n); "
                 "done; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/1/status /proc/self/status; hostname")
        done = mc("exec", cid, "sh", "-c", probe)
        lines = done.stdout.splitlines()
        for line in lines[:6]:
            kind, pid1, ours = line.split()
            assert pid1 == ours, f"exec must be in PID 1's {kind} namespace: {line}"
        status = {}
        for line in lines[6:-1]:
            where, field, value = line.replace(":", " ", 2).split()
            status.setdefault(field, {})[where] = value
        for field, seen in status.items():
            assert len(set(seen.values())) == 1, f"{field} differs between PID 1 and exec: {seen}"
        assert status["Seccomp"]["/proc/self/status"] == "2" and status["NoNewPrivs"]["/proc/self/status"] == "1"
        assert lines[-1] == "box"
        host_view = verbs._alive(find_record(cid).read_state().pid)
        assert host_view
    finally:
        mc("rm", "-f", cid)


@pytest.mark.v2
def test_exec_is_held_to_the_containers_limits():
    cid = mc("run", "-d", "-m", "32m", "busybox", "sleep", "60").stdout.strip()
    try:
        hog = mc("exec", cid, "sh", "-c", "head -c 100m /dev/zero | tail", check=False)
        assert hog.returncode == 137, hog.stderr     # killed by the OOM killer of the container's cgroup
        assert mc("exec", "-e", "A=1", "-w", "/tmp", cid, "sh", "-c", "echo $A $(pwd)").stdout == "1 /tmp\n"
        missing = mc("exec", cid, "no-such-thing", check=False)
        assert missing.returncode == 127 and "executable file not found" in missing.stderr
    finally:
        mc("rm", "-f", cid)


def test_exec_is_refused_for_a_paused_or_exited_container():
    cid = mc("run", "-d", "--name", "idle", "busybox", "sleep", "60").stdout.strip()
    try:
        mc("pause", "idle")
        paused = mc("exec", "idle", "true", check=False)
        assert paused.returncode == 1 and paused.stderr == "minicontainer: container idle is paused: unpause it first\n"
        mc("unpause", "idle")
        mc("kill", "idle")
        mc("wait", "idle")
        exited = mc("exec", "idle", "true", check=False)
        assert "container idle is not running: start it first" in exited.stderr
    finally:
        mc("rm", "-f", cid)


@pytest.mark.v2
def test_create_then_start_and_start_again_keeps_the_containers_files(engine_root):
    cid = mc("create", "--name", "keeper", "-m", "32m", "busybox", "sh", "-c",
             "cat /count 2>/dev/null || echo 0 > /count; echo $(( $(cat /count) + 1 )) > /count").stdout.strip()
    assert verbs.ps(all=True)[0]["Status"] == "Created"
    assert not _cgroup_dirs(cid), "a created container has no cgroup until it starts"
    for expected in ("1", "2", "3"):
        assert mc("start", "keeper").stdout == "keeper\n"
        assert mc("wait", "keeper").stdout == "0\n"
        upper = engine_root / "containers" / cid / "upper" / "count"
        assert upper.read_text().strip() == expected    # the same upper dir each time
    mc("restart", "keeper")
    mc("wait", "keeper")
    assert (engine_root / "containers" / cid / "upper" / "count").read_text().strip() == "4"
    mc("rm", "keeper")


def test_a_start_that_fails_keeps_the_container_exited_with_the_reason():
    mc("create", "--name", "broken", "busybox", "no-such-command")
    failed = mc("start", "broken", check=False)
    assert failed.returncode == 1 and "executable file not found" in failed.stderr
    row = verbs.ps(all=True)[0]
    assert (row["Names"], row["State"], row["ExitCode"]) == ("broken", "exited", 127)
    mc("rm", "broken")


def test_start_of_a_paused_container_says_unpause():
    cid = mc("run", "-d", "--name", "frozen", "busybox", "sleep", "60").stdout.strip()
    try:
        mc("pause", "frozen")
        refused = mc("start", "frozen", check=False)
        assert "container frozen is paused: unpause it instead" in refused.stderr
    finally:
        mc("rm", "-f", cid)


def test_rm_racing_start_never_leaves_a_half_removed_container(engine_root):
    for round_ in range(3):
        cid = mc("create", "busybox", "sleep", "60").stdout.strip()
        calls = [subprocess.Popen(CLI + [verb, *flags, cid], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for verb, flags in [("start", []), ("rm", ["-f"]), ("start", []), ("rm", ["-f"]), ("start", [])]]
        outcomes = [(c.wait(timeout=120), c.stderr.read()) for c in calls]
        for code, err in outcomes:
            assert "Traceback" not in err, err
            assert code == 0 or "no such container" in err, err   # a start that lost the race says so
        assert not (engine_root / "containers" / cid).exists(), f"round {round_}: the rm -f must win in the end"
        _until(lambda: not _cgroup_dirs(cid), "no cgroup left")
    assert verbs.ps(all=True) == []


def test_the_python_api_drives_the_same_lifecycle():
    import minicontainer

    cid = minicontainer.run("busybox", "echo up; sleep 60", detach=True, name="api")
    try:
        assert [r["Names"] for r in minicontainer.ps()] == ["api"]
        done = minicontainer.exec("api", "hostname")
        assert done.exit_code == 0 and done.stdout == cid[:12] + "\n"
        names = done.trace.names()
        assert names.index("setns") < names.index("seccomp") < names.index("execve")
        minicontainer.pause("api")
        assert minicontainer.inspect("api")["State"]["Paused"] is True
        minicontainer.unpause("api")
        minicontainer.stop("api", timeout=0.2)
        assert minicontainer.wait("api") == 137 and minicontainer.logs("api") == "up\n"
    finally:
        minicontainer.rm("api", force=True)


def test_top_stats_rename_and_container_prune():
    cid = mc("run", "-d", "--name", "busy", "-m", "64m", "busybox", "sh", "-c", "sleep 60 & exec sleep 61").stdout.strip()
    try:
        # the shell forks one sleep and execs into the other: wait until it has
        def both_sleeps():
            rows = verbs.top("busy")
            return rows if sorted(r["CMD"] for r in rows) == ["sleep 60", "sleep 61"] else None
        rows = _until(both_sleeps, "both sleeps")
        assert rows[0]["PID"] == find_record(cid).read_state().pid    # host pids: PID 1 first
        figures = verbs.stats("busy")
        assert figures["PIDs"] == 2 and figures["MemLimit"] == 64 << 20 and 0 < figures["MemUsage"] < 64 << 20
        assert "busy" in mc("stats", "--no-stream").stdout
        mc("rename", "busy", "idle")
        assert verbs.ps()[0]["Names"] == "idle"
        mc("run", "--name", "taken", "busybox", "true")
        clash = mc("rename", "idle", "taken", check=False)
        assert clash.returncode == 125 and "already in use" in clash.stderr
        pruned = mc("container", "prune", "-f").stdout
        assert "Total: 1 containers removed" in pruned          # only the exited one
        assert [r["Names"] for r in verbs.ps(all=True)] == ["idle"]
    finally:
        mc("rm", "-f", cid)


def test_commit_turns_a_containers_changes_into_a_new_layer_with_whiteouts():
    mc("run", "--name", "changed", "busybox", "sh", "-c", "echo hi > /hello; rm /bin/vi; mkdir -p /etc/app")
    image_id = mc("commit", "-m", "add hello", "changed", "local/changed:v1").stdout.strip()
    assert image_id.startswith("sha256:")
    history = mc("history", "local/changed:v1").stdout.splitlines()
    assert "minicontainer commit changed" in history[1] and history[1].rstrip().endswith("add hello")
    seen = mc("run", "--rm", "local/changed:v1", "sh", "-c", "cat /hello; ls /bin/vi; test -d /etc/app && echo dir",
              check=False)
    assert seen.stdout == "hi\ndir\n" and "No such file" in seen.stderr   # vi stays deleted: a whiteout
    running = mc("run", "-d", "busybox", "sh", "-c", "echo live > /live; sleep 60").stdout.strip()
    try:
        _until(lambda: (find_record(running).dir / "upper" / "live").exists(), "the file to be written")
        mc("commit", running, "local/live")      # paused meanwhile, then running again
        assert verbs.ps()[0]["State"] == "running"
        assert mc("run", "--rm", "local/live", "cat", "/live").stdout == "live\n"
    finally:
        mc("rm", "-f", running)
    mc("rm", "changed")
    bad = mc("commit", "changed", "Bad:Name", check=False)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr


def test_logs_follow_prints_new_lines_and_ends_with_the_container():
    cid = mc("run", "-d", "busybox", "sh", "-c", "for i in 1 2 3; do echo tick$i; sleep 0.3; done").stdout.strip()
    followed = subprocess.run(CLI + ["logs", "-f", cid], capture_output=True, text=True, timeout=60)
    assert followed.stdout == "tick1\ntick2\ntick3\n", followed.stdout
    mc("rm", cid)
