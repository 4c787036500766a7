"""Hostile and broken submissions of lab 01, built from its source so they follow the lab
as it changes, each with the row the grader must give it.

A submission starts as the reference solution (full marks); each entry changes what a
student could change: a cell's code, its type, its metadata, or the cells themselves.
"""
from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from pathlib import Path

LAB = "01-namespaces"
FULL = {"namespaces-read": 2, "namespaces-isolate": 3, "namespaces-network": 2}


@dataclass
class Entry:
    name: str
    build: object                      # source notebook dict -> submission (dict, or bytes for a broken file)
    points: dict[str, float]           # expected points per part
    problem: str = ""                  # a phrase the row's problem must contain ("" = no problem; "a|b": either)
    messages: dict[str, str] = field(default_factory=dict)   # part -> a phrase its message must contain


def gid(cell: dict) -> str:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id", "")


def with_code(nb: dict, changes: dict[str, str]) -> dict:
    """A copy of ``nb`` with the named cells' source replaced."""
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if gid(cell) in changes:
            cell["source"] = changes[gid(cell)]
    return nb


def points(**changed: float) -> dict[str, float]:
    return {**FULL, **{k.replace("_", "-"): v for k, v in changed.items()}}


def _retyped(nb: dict) -> dict:
    nb = copy.deepcopy(nb)
    for cell in nb["cells"]:
        if gid(cell) == "namespaces-isolate-code":
            cell["cell_type"] = "markdown"
            cell.pop("outputs", None)
            cell.pop("execution_count", None)
    return nb


def _tampered_metadata(nb: dict) -> dict:
    # every test cell worth 100 points, its check replaced by the line it prints, a cell of
    # the student's own claiming to be a graded test, and a wrong answer to Part 1
    nb = with_code(nb, {"namespaces-read-code": "def read_namespace_ids(pid):\n    return {}\n",
                        "namespaces-read": 'print("public checks passed; hidden checks run at grading")\n'})
    for cell in nb["cells"]:
        meta = cell["metadata"]["nbgrader"]
        if meta.get("grade"):
            meta["points"] = 100
        if gid(cell) == "namespaces-read-code":
            meta.update(grade=True, points=50, solution=False)
    nb["cells"].append({"cell_type": "code", "id": "bonus", "execution_count": None, "outputs": [],
                        "metadata": {"nbgrader": {"grade": True, "grade_id": "namespaces-bonus", "locked": True,
                                                  "points": 50, "schema_version": 3, "solution": False}},
                        "source": "print('free points')\n"})
    return nb


def _only_solutions(nb: dict) -> dict:
    nb = copy.deepcopy(nb)
    nb["cells"] = [c for c in nb["cells"] if c["metadata"]["nbgrader"].get("solution")][::-1]   # reversed, too
    return nb


# patches IPython so every cell's reply says "ok": the probe after each test cell catches it
TAMPER_KERNEL = '''
ip = get_ipython()
_real_async, _real = ip.run_cell_async, ip.run_cell

async def _always_ok_async(*a, **k):
    r = await _real_async(*a, **k)
    r.error_before_exec = r.error_in_exec = None
    return r

def _always_ok(*a, **k):
    r = _real(*a, **k)
    r.error_before_exec = r.error_in_exec = None
    return r

ip.run_cell_async, ip.run_cell = _always_ok_async, _always_ok

def read_namespace_ids(pid):
    return {}
'''

# sees every cell the kernel is sent (hidden tests too) and raises them as its error message
LEAK_HIDDEN_TESTS = '''
SEEN = []
get_ipython().events.register("pre_run_cell", lambda info: SEEN.append(info.raw_cell))

def read_namespace_ids(pid):
    if any("BEGIN HIDDEN TESTS" in cell for cell in SEEN):
        raise AssertionError(next(cell for cell in SEEN if "BEGIN HIDDEN TESTS" in cell)[-600:])
    import minicontainer
    return {k: v for k, v in minicontainer.namespace_ids(pid).items() if k in KINDS}
'''

STUB = "def {name}(*args):\n    # YOUR CODE HERE\n    raise NotImplementedError()\n"


def corpus() -> list[Entry]:
    return [
        Entry("correct", lambda nb: nb, points()),
        Entry("partial", lambda nb: with_code(nb, {"namespaces-isolate-code": STUB.format(name="isolate")}),
              points(namespaces_isolate=0), messages={"namespaces-isolate": "NotImplementedError"}),
        Entry("partial-again", lambda nb: with_code(nb, {"namespaces-isolate-code": STUB.format(name="isolate")}),
              points(namespaces_isolate=0)),
        Entry("syntax-error", lambda nb: with_code(nb, {"namespaces-isolate-code": "def isolate(sb:\n    pass\n"}),
              points(namespaces_isolate=0), messages={"namespaces-isolate": "SyntaxError"}),
        Entry("infinite-loop", lambda nb: with_code(nb, {"namespaces-isolate-code": "while True:\n    pass\n"}),
              points(namespaces_isolate=0), messages={"namespaces-isolate": "timeout"}),
        Entry("ignores-interrupt", lambda nb: with_code(nb, {"namespaces-network-code":
              "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass\n"}),
              points(namespaces_network=0), problem="stopped answering"),
        Entry("kernel-exits", lambda nb: with_code(nb, {"namespaces-network-code": "import os\nos._exit(3)\n"}),
              points(namespaces_network=0), problem="kernel died"),
        Entry("fork-bomb", lambda nb: with_code(nb, {"namespaces-network-code":
              "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"}),
              # 256 spinning processes on one CPU: the kernel may be too starved to answer after the interrupt
              points(namespaces_network=0), problem="|stopped answering"),
        Entry("memory-hog", lambda nb: with_code(nb, {"namespaces-network-code": "hog = b'x' * (3 * 2**30)\n"}),
              points(namespaces_network=0), problem="kernel died"),
        Entry("huge-output", lambda nb: with_code(nb, {"namespaces-network-code":
              "while True:\n    print('x' * 100_000)\n"}),
              # ipykernel buffers output for 0.2 s: under load that buffer alone can reach the memory limit
              points(namespaces_network=0), problem="output|over the memory limit"),
        Entry("cell-retyped", _retyped, points(namespaces_isolate=0),
              messages={"namespaces-isolate": "changed into a markdown cell"}),
        Entry("metadata-tampered", _tampered_metadata, points(namespaces_read=0)),
        Entry("only-solution-cells", _only_solutions, points()),
        Entry("kernel-tampered", lambda nb: with_code(nb, {"namespaces-read-code": TAMPER_KERNEL}),
              {k: 0 for k in FULL}, problem="tampered"),
        Entry("leaks-hidden-tests", lambda nb: with_code(nb, {"namespaces-read-code": LEAK_HIDDEN_TESTS}),
              points(namespaces_read=0), messages={"namespaces-read": "quotes the hidden tests"}),
        Entry("not-json", lambda nb: b'{"cells": [', {k: 0 for k in FULL}, problem="could not be read"),
        Entry("not-a-notebook", lambda nb: b'["a list"]', {k: 0 for k in FULL}, problem="not a Jupyter notebook"),
    ]


def write_corpus(source: dict, folder: Path, entries: list[Entry]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        made = e.build(source)
        data = made if isinstance(made, bytes) else json.dumps(made, indent=1).encode()
        (folder / f"{e.name}.ipynb").write_bytes(data)


# ---- containment: a submission that tries to get out. Every attempt prints one line,
# "ATTACK <name>: blocked …" or "ATTACK <name>: ESCAPED …"; the code is ours, so the verdicts are honest.
ATTACKS = r'''
import ctypes, os, socket, stat, subprocess, time
libc = ctypes.CDLL(None, use_errno=True)
MS_REMOUNT, MS_BIND, MS_RDONLY = 32, 4096, 1
PTRACE_ATTACH, PTRACE_DETACH = 16, 17

def attempt(name, fn):
    started = time.monotonic()
    try:
        verdict = f"ESCAPED {{fn()!r}}"
    except Exception as exc:
        verdict = f"blocked ({{type(exc).__name__}}: {{exc}})"
    print(f"ATTACK {{name}}: {{verdict[:300]}} [{{time.monotonic() - started:.1f}} s]")

def fail(what):
    raise PermissionError(what)

def read_hidden_tests():
    hits = []
    for top in ("/work", "/tmp", "/run", "/etc", "/usr/local", "/root", "/home", "/var", "/srv", "/opt"):
        for folder, _, files in os.walk(top):
            for f in files:
                try:
                    with open(os.path.join(folder, f), "rb") as fh:
                        if {marker!r}.encode() in fh.read(4_000_000):
                            hits.append(os.path.join(folder, f))
                except OSError:
                    pass
    return hits or fail("no file in the container holds the hidden tests")

def reach_network():
    for address in (("127.0.0.1", {port}), ("10.0.2.2", 80), ("1.1.1.1", 53)):
        try:
            socket.create_connection(address, timeout=2).close()
            return address
        except OSError:
            pass
    fail("no connection")

def write_outside():
    for path in ("/work/main/grading/pwned", "/usr/pwned", "/etc/pwned", "/pwned", "/work/pwned", {outside!r}):
        try:
            with open(path, "w") as f:
                f.write("pwned")
            return path
        except OSError:
            pass
    fail("nothing outside the working directory was writable")

def change_score():
    found = []
    for folder, subfolders, files in os.walk("/"):
        if folder == "/":        # the kernel's own files: no gradebook there, and walking them is slow
            subfolders[:] = [d for d in subfolders if d not in ("proc", "sys")]
        found += [os.path.join(folder, f) for f in files if f in ("grades.csv", "results.json")]
    return found or fail("no gradebook in reach")

def mknod_and_mount_disk():
    for major, minor in ((8, 0), (253, 0), (259, 0), (7, 0)):
        node = f"/tmp/disk-{{major}}-{{minor}}"
        try:
            os.mknod(node, 0o600 | stat.S_IFBLK, os.makedev(major, minor))
        except OSError:
            continue
        os.makedirs("/tmp/mnt", exist_ok=True)
        for fs in (b"ext4", b"xfs", b"btrfs", b"vfat"):
            if libc.mount(node.encode(), b"/tmp/mnt", fs, 0, None) == 0:
                return os.listdir("/tmp/mnt")
    fail("no block device could be made and mounted")

def remount_read_only():
    for target, probe in ((b"/usr", "/usr/pwned"), (b"/", "/pwned"), (b"/work/main/grading", "/work/main/grading/pwned")):
        libc.mount(None, target, None, MS_REMOUNT | MS_BIND, None)
        libc.mount(None, target, None, MS_REMOUNT, None)
        try:
            with open(probe, "w") as f:
                f.write("pwned")
            return probe
        except OSError:
            pass
    fail("no read-only path became writable")

def write_proc_sys():
    tried = 0
    for path in ("/proc/sys/vm/overcommit_memory", "/proc/sys/kernel/pid_max", "/proc/sys/fs/file-max",
                 "/proc/sys/kernel/sysrq"):
        try:
            value = open(path).read()
        except FileNotFoundError:
            continue
        tried += 1
        try:
            with open(path, "w") as f:     # the same value back: harmless if it worked
                f.write(value)
            return path
        except OSError:
            pass
    if not tried:
        raise LookupError("no /proc/sys file to try")
    fail("/proc/sys is not writable")

def ptrace_grader():
    visible = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    outside = [p for p in visible if "pytest" in open(f"/proc/{{p}}/cmdline", "rb").read().decode(errors="replace")
               or "autograde" in open(f"/proc/{{p}}/cmdline", "rb").read().decode(errors="replace")]
    for pid in outside + [{grader_pid}]:
        if libc.ptrace(PTRACE_ATTACH, pid, None, None) == 0:
            libc.ptrace(PTRACE_DETACH, pid, None, None)
            return pid
    fail(f"no grader process to attach to (visible: {{len(visible)}} processes, all the container's)")

def fill_the_disk():
    written = 0
    chunk = b"x" * 2**20
    for folder in ("/tmp", "/work/submission", "/run/kernel"):
        try:
            with open(f"{{folder}}/fill", "wb") as f:
                while written < 2**31:
                    f.write(chunk)
                    written += len(chunk)
        except OSError:
            pass
        finally:
            try:
                os.unlink(f"{{folder}}/fill")
            except OSError:
                pass
    return written if written >= 2**31 else fail(f"every writable place filled up after {{written >> 20}} MiB")

for name, fn in list(globals().items()):
    if callable(fn) and name in ATTACK_NAMES:
        attempt(name, fn)
'''
ATTACK_NAMES = ["read_hidden_tests", "reach_network", "write_outside", "change_score", "mknod_and_mount_disk",
                "remount_read_only", "write_proc_sys", "ptrace_grader", "fill_the_disk"]

# a process that tries to outlive its kernel: a daemon in its own session, then the kernel exits
LINGER = r'''
import os, subprocess
subprocess.Popen(["sleep", "{seconds}"], start_new_session=True)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execvp("sleep", ["sleep", "{seconds}"])
    os._exit(0)
os._exit(0)
'''


def attack_cells(marker: str, port: int, outside: str, grader_pid: int, linger_seconds: int) -> list[dict]:
    """Two cells a student could add after the last part: the attacks, then the kernel leaving a process behind."""
    code = ATTACKS.format(marker=marker, port=port, outside=outside, grader_pid=grader_pid)
    code = f"ATTACK_NAMES = {ATTACK_NAMES!r}\n" + code
    return [{"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": code},
            {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [],
             "source": LINGER.format(seconds=linger_seconds)}]
