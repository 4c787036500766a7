"""autograde for real: lab 01's hostile and broken submissions (tests/grading_corpus.py), each
graded in its own container, each with its expected row; and a submission that tries every
way out of its container gets nothing, while the next one is graded normally."""
from __future__ import annotations

import csv
import errno
import json
import os
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

from grading.autograde import autograde
from grading.cells import read_notebook, source_text
from grading.container import (KERNEL_LEAF, UID_BASE, GradingEnvironment, SandboxLimits, default_config,
                               enter_kernel_leaf, kernel_config, runtime_command)
from grading.grade import Limits, grade_notebook
from grading.labs import all_labs, find_lab
from grading.validate import validate
from minicontainer.engine.delegated_cgroup import DELEGATED, DelegatedCgroup
from minicontainer.kernel import cgroups, syscalls
from grading_corpus import ATTACK_NAMES, FULL, LAB, attack_cells, corpus, write_corpus

pytestmark = pytest.mark.slow


def test_every_hostile_or_broken_submission_gets_its_expected_row_and_the_batch_finishes(tmp_path):
    lab = find_lab(LAB)
    source = json.loads(lab.source.read_text())
    entries = corpus()
    write_corpus(source, tmp_path / "in", entries)
    (tmp_path / "in" / "notes.txt").write_text("not a submission")
    results = autograde(lab, tmp_path / "in", tmp_path / "out", jobs=2,
                        limits=Limits(cell_timeout=8, notebook_timeout=60))
    rows = {r.student: r for r in results}
    assert set(rows) == {e.name for e in entries}
    for e in entries:
        row = rows[e.name]
        assert {p.id: p.points for p in row.parts} == e.points, (e.name, row)
        assert any((phrase in row.problem) if phrase else not row.problem for phrase in e.problem.split("|")), \
            (e.name, row.problem)
        for part, phrase in e.messages.items():
            assert phrase in next(p.message for p in row.parts if p.id == part), (e.name, row)
        assert row.max_score == sum(FULL.values()), "tampered metadata never changes what a part is worth"
    # deterministic: the same submission, the same row
    assert [(p.points, p.status, p.message) for p in rows["partial"].parts] == \
           [(p.points, p.status, p.message) for p in rows["partial-again"].parts]

    out = tmp_path / "out"
    with open(out / "grades.csv") as f:
        table = {r["student_id"]: r for r in csv.DictReader(f)}
    assert table["correct"]["score"] == "7" and table["correct"]["namespaces-isolate"] == "3"
    assert table["syntax-error"]["namespaces-isolate"] == "0"
    assert "could not be read" in table["not-json"]["problem"]
    saved = json.loads((out / "results.json").read_text())
    assert [s["student"] for s in saved["submissions"]] == sorted(rows)
    feedback = (out / "feedback" / "syntax-error.html").read_text()
    assert "SyntaxError" in feedback and "3 / 3" not in feedback
    hidden = [line.strip() for c in source["cells"] for line in source_text(c).split("### BEGIN HIDDEN TESTS")[1:]]
    assert hidden and not any(h[:40] in page.read_text() for h in hidden
                              for page in (out / "feedback").iterdir()), "no feedback page shows hidden test code"
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _sysctls() -> dict[str, str]:
    paths = ("/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/pid_max", "/proc/sys/fs/file-max")
    return {p: open(p).read() for p in paths}


def _processes_running(argv: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").strip() == argv.encode():
                found.append(int(pid))
        except OSError:
            pass
    return found


@pytest.mark.v2
def test_a_submission_that_tries_every_way_out_gets_nothing_and_the_next_is_graded_normally(tmp_path):
    lab = find_lab(LAB)
    source = read_notebook(lab.source)
    hidden_line = next(line for c in source.cells for line in source_text(c).split("### BEGIN HIDDEN TESTS")[1:])
    marker = [ln for ln in hidden_line.splitlines() if "assert" in ln][0].strip()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    outside = tmp_path / "outside-pwned"
    sysctls = _sysctls()
    linger = 31_337 + os.getpid() % 1000
    attacker = json.loads(json.dumps(source))
    at = next(i for i, c in enumerate(attacker["cells"]) if c["metadata"]["nbgrader"]["grade_id"] == "namespaces-network")
    attacker["cells"][at + 1:at + 1] = attack_cells(marker, listener.getsockname()[1], str(outside), os.getpid(), linger)
    # the v2 guest emulates its CPUs (TCG): the same attacks take ~15 times as long there
    emulated = "v2guest.job=" in open("/proc/cmdline").read()
    limits = Limits(cell_timeout=600, notebook_timeout=1200) if emulated else Limits(cell_timeout=60, notebook_timeout=180)
    try:
        with GradingEnvironment() as env:
            result, ran = grade_notebook(source, attacker, student="attacker", lab=LAB, runner=env.runner(0),
                                         limits=limits)
            honest, _ = grade_notebook(source, json.loads(json.dumps(source)), student="next", lab=LAB,
                                       runner=env.runner(0), limits=limits)
    finally:
        lingering = _processes_running(f"sleep {linger}")
        for pid in lingering:
            os.kill(pid, 9)
    verdicts = {}
    for cell in ran.cells:
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("ATTACK "):
                    name, verdict = line[len("ATTACK "):].split(": ", 1)
                    verdicts[name] = verdict
    assert set(verdicts) == set(ATTACK_NAMES), verdicts
    escaped = {n: v for n, v in verdicts.items() if not v.startswith("blocked (PermissionError: ")}
    assert not escaped, f"containment failures: {escaped}"
    # and from the host's side
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    assert not outside.exists()
    assert not any(os.path.exists(p) for p in ("/usr/pwned", "/pwned", "/etc/pwned"))
    assert _sysctls() == sysctls
    assert not lingering, "a process outlived its kernel's container"
    assert "the kernel died" in result.problem          # the submission's last cell ended its kernel
    assert result.score == sum(FULL.values()), "the attacks neither cost nor earned points"
    assert honest.score == sum(FULL.values()) and not honest.problem


def test_the_kernel_runs_as_an_unprivileged_host_user_without_the_labs_folder(tmp_path):
    lab = find_lab(LAB)
    source = read_notebook(lab.source)
    probe = json.loads(json.dumps(source))
    probe["cells"].insert(1, {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source":
                              "import os\nprint('UIDMAP', open('/proc/self/uid_map').read().split())\n"
                              "print('PID', os.getpid())\nprint('LABS', os.path.exists('/work/main/labs'), "
                              "os.path.exists(" + repr(str(lab.source)) + "))\n"
                              "print('NET', sorted(os.listdir('/sys/class/net')))\n"
                              "print('LOUP', int(open('/sys/class/net/lo/flags').read(), 16) & 1)"})
    with GradingEnvironment() as env:
        _, ran = grade_notebook(source, probe, student="probe", lab=LAB, runner=env.runner(1),
                                limits=Limits(cell_timeout=30, notebook_timeout=120))
    text = "".join(o.get("text", "") for c in ran.cells for o in c.get("outputs", []))
    lines = {ln.split(" ", 1)[0]: ln.split(" ", 1)[1] for ln in text.splitlines() if ln.split(" ", 1)[0] in
             ("UIDMAP", "PID", "LABS", "NET", "LOUP")}
    inside, host, size = eval(lines["UIDMAP"])
    assert inside == "0" and int(host) >= 1_000_000, "root in the container is an unprivileged uid on the host"
    assert lines["PID"] == "1", "the kernel is the container's init: when it dies, everything in it dies"
    assert lines["LABS"] == "False False", "the sources (hidden tests) are not in the container"
    assert lines["NET"] == "['lo']", "no network: only a loopback device"
    assert lines["LOUP"] == "1", "the loopback is up, so a lab can serve on 127.0.0.1"
    assert subprocess.run(["grep", "-c", "grading-kernel", "/proc/mounts"], capture_output=True,
                          text=True).stdout.strip() == "0"


@pytest.mark.v2
@pytest.mark.parametrize("lab", all_labs(), ids=lambda lab: lab.name)
def test_every_lab_scores_full_marks_in_the_grading_container_and_its_starter_zero(lab):
    """What labs/README.md's table "Which labs autograde can grade" says, measured for every lab:
    autograde's preflight grades each reference solution exactly this way before a batch."""
    with GradingEnvironment() as env:
        v = validate(lab, runner=env.runner(0))
    assert v.ok, f"{lab.name} in the grading container: " + "; ".join(v.problems)


def test_a_lab_whose_reference_solution_fails_in_the_container_is_refused_before_any_submission(tmp_path):
    from grading.autograde import Ungradeable
    from grading.cells import notebook_json
    from grading.labs import Lab
    from test_grader import toy_source

    source = toy_source()
    source["cells"][1]["source"] = "FACTOR = 2\nopen('/etc/os-release').read()   # a host file the container lacks"
    folder = tmp_path / "labs" / "99-toy"
    (folder / "source").mkdir(parents=True)
    (folder / "source" / "99-toy.ipynb").write_text(notebook_json(source))
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "alice.ipynb").write_text(notebook_json(source))
    with pytest.raises(Ungradeable, match=r"can't be graded in the container: its reference solution fails its setup "
                                          r"there \(toy-setup: FileNotFoundError"):
        autograde(Lab("99-toy", folder), tmp_path / "in", tmp_path / "out")
    assert not (tmp_path / "out" / "grades.csv").exists()


@pytest.mark.v2
def test_a_cgroup_the_runtime_removes_while_the_grader_looks_for_processes_counts_as_empty(monkeypatch):
    """Found in the v2 guest: the runtime removes the container's cgroup when the kernel exits,
    which can fall between the grader opening a cgroup.procs and reading it (ENODEV). Here the
    rmdir is put exactly there; the kernel's answer is real."""
    limits = SandboxLimits()
    made = DelegatedCgroup.create("grading-" + uuid.uuid4().hex[:12], UID_BASE, memory=limits.memory, pids=limits.pids,
                                  cpus=limits.cpus, max_descendants=limits.cgroups, leaf=KERNEL_LEAF)
    try:
        victim = made.dirs(DELEGATED, "vanishing")[0]
        os.mkdir(victim)

        def open_then_remove(path, *args, **kwargs):
            f = open(path, *args, **kwargs)
            if str(path) == f"{victim}/cgroup.procs":
                os.rmdir(victim)            # the runtime's clean-up, between our open and read
            return f

        monkeypatch.setattr(cgroups, "open", open_then_remove, raising=False)   # the cgroup files' reader
        assert made.pids() == [], "a cgroup removed under us holds no process"
        assert not os.path.exists(victim)
    finally:
        monkeypatch.undo()
        made.remove()


# Run inside a grading container: try to raise the grader's limits, look past the delegated
# cgroup, and outgrow the memory limit from a child cgroup with a limit of its own.
CGROUP_PROBE = r'''
import json, os, subprocess
cg = "/sys/fs/cgroup"
v2 = os.path.exists(f"{cg}/cgroup.controllers")
def try_write(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
        return "written"
    except OSError as exc:
        return type(exc).__name__
R = {"v2": v2, "own": open("/proc/self/cgroup").read().split()}
mem = cg if v2 else f"{cg}/memory"
limits = ({"memory.max": "max", "pids.max": "max", "cpu.max": "max 100000"} if v2 else
          {"memory/memory.limit_in_bytes": "-1", "memory/memory.memsw.limit_in_bytes": "-1",
           "pids/pids.max": "max", "cpu/cpu.cfs_quota_us": "-1"})
R["raise_delegated_limits"] = {f: try_write(f"{cg}/{f}", v) for f, v in limits.items()}
R["parent_reachable"] = [p for p in (f"{mem}/../memory.limit_in_bytes", f"{mem}/../memory.max",
                                     f"{mem}/../cgroup.procs") if os.path.exists(p)]
# every hierarchy mounted afresh shows only the container's own cgroups
fresh = {}
for line in R["own"]:
    _, controllers, _ = line.split(":", 2)
    where = f"/tmp/fresh-{len(fresh)}"
    os.makedirs(where, exist_ok=True)
    if controllers:
        options = controllers if not controllers.startswith("name=") else f"none,{controllers}"
        done = subprocess.run(["mount", "-t", "cgroup", "-o", options, "cgroup", where], capture_output=True)
    else:
        done = subprocess.run(["mount", "-t", "cgroup2", "cgroup2", where], capture_output=True)
    fresh[controllers or "unified"] = sorted(d for _, dirs, _ in os.walk(where) for d in dirs) \
        if done.returncode == 0 else "not mounted: " + done.stderr.decode().strip()
R["fresh"] = fresh
# a child cgroup may set itself a higher limit, but the grader's still holds
own = {c: path for _, cs, path in (l.split(":", 2) for l in R["own"]) for c in (cs.split(",") if cs else [""])}
own_memory = own["" if v2 else "memory"]
if v2:
    try_write(f"{cg}/cgroup.subtree_control", "+memory")
    hog = f"{cg}/hog"
else:
    hog = f"{mem}{own_memory}/hog"
os.makedirs(hog, exist_ok=True)
R["hog_limit"] = try_write(f"{hog}/memory.max" if v2 else f"{hog}/memory.limit_in_bytes", str(8 << 30))
done = subprocess.run(["/bin/sh", "-c", f'echo $$ > {hog}/cgroup.procs && exec "$0" -c "x = b\'x\' * (600 << 20)"',
                       __import__("sys").executable])
R["hog_returncode"] = done.returncode
# v2: how many cgroups the container may create before the grader's cgroup.max.descendants refuses
made, refused = [], None
if v2:
    for i in range(200):
        try:
            os.mkdir(f"{cg}/flood-{i}")
            made.append(f"{cg}/flood-{i}")
        except OSError as exc:
            refused = exc.errno
            break
    for d in made:
        os.rmdir(d)
R["flood"] = [len(made), refused]
R["own_after"] = open("/proc/self/cgroup").read().split()
print("CGROUPS " + json.dumps(R))
'''


def assert_cgroup_probe(text: str) -> None:
    """What CGROUP_PROBE printed shows a delegated cgroup that holds."""
    [line] = [ln for ln in text.splitlines() if ln.startswith("CGROUPS ")]
    got = json.loads(line[len("CGROUPS "):])
    assert set(got["raise_delegated_limits"].values()) == {"PermissionError"}, \
        f"the delegated cgroup's own limit files belong to the host: {got['raise_delegated_limits']}"
    assert got["parent_reachable"] == [], "nothing above the delegated cgroup is in the container's /sys/fs/cgroup"
    for hierarchy, dirs in got["fresh"].items():
        assert isinstance(dirs, list), f"{hierarchy}: {dirs}"
        assert set(dirs) <= {"kernel", "hog"}, \
            f"a freshly mounted {hierarchy} hierarchy shows only the container's own cgroups, not the host's: {dirs}"
    assert got["hog_limit"] == "written", "a cgroup the container made is its own: it may set any limit on it"
    assert got["hog_returncode"] == -9, \
        "600 MiB in a child cgroup with an 8 GiB limit is still OOM-killed: the grader's 384 MiB bounds it"
    assert not any("/.." in line for line in got["own"] + got["own_after"]), \
        "the kernel never sits outside the delegated subtree (/proc/self/cgroup would show /..)"
    assert any(line.endswith(":/kernel") for line in got["own"]), "the kernel lives in its leaf"
    if got["v2"]:   # v1 has no cap on how many cgroups a hierarchy may hold
        made, refused = got["flood"]
        assert refused == errno.EAGAIN and made == SandboxLimits().cgroups - 3, \
            f"cgroup.max.descendants bounds the cgroups a container makes (delegated/, kernel/ and hog/ count): {got['flood']}"


def test_the_kernel_gets_a_delegated_cgroup_but_can_neither_raise_the_graders_limits_nor_see_past_it(tmp_path):
    lab = find_lab(LAB)
    source = read_notebook(lab.source)
    probe = json.loads(json.dumps(source))
    probe["cells"].insert(1, {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
                              "source": CGROUP_PROBE})
    with GradingEnvironment(SandboxLimits(memory=384 * 2**20)) as env:
        result, ran = grade_notebook(source, probe, student="probe", lab=LAB, runner=env.runner(0),
                                     limits=Limits(cell_timeout=60, notebook_timeout=180))
    text = "".join(o.get("text", "") for c in ran.cells for o in c.get("outputs", []))
    assert_cgroup_probe(text)
    assert result.score == sum(FULL.values()) and not result.problem, "the probe cost the kernel nothing"


def run_in_sandbox(sandbox, args: list[str]) -> subprocess.CompletedProcess:
    """Run ``args`` as the grading container's first process instead of the kernel, through the runtime."""
    config = json.loads((sandbox.bundle / "config.json").read_text())
    config["process"]["args"] = args
    (sandbox.bundle / "config.json").write_text(json.dumps(config))
    return subprocess.run([*sandbox.cgroup.join_others(), *runtime_command(), "--root", str(sandbox.runtime_root),
                           "run", "-b", str(sandbox.bundle), sandbox.container_id], capture_output=True, text=True)


@pytest.mark.v2
def test_the_delegated_cgroup_holds_when_the_runtime_runs_the_probe_without_jupyter():
    """The same probe as the container's first process, no kernel: light enough for the v2 guest."""
    with GradingEnvironment(SandboxLimits(memory=384 * 2**20)) as env:
        sandbox = env.sandbox(0)
        try:
            done = run_in_sandbox(sandbox, [*enter_kernel_leaf(), sys.executable, "-c", CGROUP_PROBE])
        finally:
            sandbox.remove()
    assert done.returncode == 0, done.stderr
    assert_cgroup_probe(done.stdout)


def test_the_kernels_config_leaves_the_limits_to_the_graders_cgroup_and_mounts_the_delegated_one_writable():
    config = kernel_config(default_config(), Path("/rootfs"), Path("/kernel-dir"), 0, SandboxLimits(),
                           "/run/kernel/connection.json", f"minicontainer-grading-x/{DELEGATED}")
    linux = config["linux"]
    assert linux["cgroupsPath"] == "minicontainer-grading-x/delegated", \
        "the runtime puts the container in the delegated cgroup"
    assert set(linux["resources"]) == {"devices"}, \
        "no memory, pids or CPU limit on the delegated cgroup (the container owns it): they are on its parent"
    assert any(rule.get("allow") is False and rule.get("access") == "rwm" for rule in linux["resources"]["devices"]), \
        "the runtime still sets the device allow-list on the delegated cgroup, from the host"
    assert {"type": "cgroup"} in linux["namespaces"], "a cgroup namespace: nothing above the delegated cgroup shows"
    [cgroup_mount] = [m for m in config["mounts"] if m["destination"] == "/sys/fs/cgroup"]
    assert cgroup_mount["type"] == "cgroup" and "rw" in cgroup_mount["options"]
    assert config["process"]["args"][:len(enter_kernel_leaf())] == enter_kernel_leaf(), "the kernel moves to its leaf"
    caps = set(config["process"]["capabilities"]["bounding"])
    assert {"CAP_SYS_ADMIN", "CAP_NET_ADMIN"} <= caps and not caps & {"CAP_SYS_MODULE", "CAP_SYS_PTRACE",
                                                                         "CAP_SYS_RAWIO", "CAP_SYS_BOOT"}


@pytest.mark.v2
def test_the_container_starts_when_its_rootfs_lies_on_a_nosuid_nodev_tmpfs(monkeypatch):
    """A tmpfs /tmp (Debian 13's default, and the v2 guest's) is mounted nosuid,nodev. In the
    container's user namespace those flags are locked, so remounting / read-only must repeat
    them; the retry that does so never ran (it caught OSError, and mount raises KernelError),
    and every grading container failed with "mount on / failed: EPERM"."""
    # not under tmp_path: pytest makes that 0700, and the container's root is an unprivileged host uid
    scratch = Path(tempfile.mkdtemp(prefix="mc-nosuid-", dir="/var/tmp"))
    scratch.chmod(0o755)
    syscalls.mount("tmpfs", str(scratch), "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NODEV, "size=64m,mode=755")
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(scratch))
        with GradingEnvironment() as env:
            sandbox = env.sandbox(0)
            try:
                assert str(sandbox.bundle).startswith(str(scratch)), "the bundle should be on the nosuid tmpfs"
                assert json.loads((sandbox.bundle / "config.json").read_text())["root"]["readonly"], \
                    "the case is a read-only root"
                done = run_in_sandbox(sandbox, ["/usr/bin/true"])
            finally:
                sandbox.remove()
        assert done.returncode == 0, done.stderr
    finally:
        syscalls.umount2(str(scratch), syscalls.MNT_DETACH)
        scratch.rmdir()
