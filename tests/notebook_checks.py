"""Running the course notebooks under ``pytest --nbval-lax``.

nbval starts one Jupyter kernel per notebook, and the kernel inherits this process's
environment at that moment. So just before a notebook's kernel starts, we point it at
its own engine state (MINICONTAINER_ROOT, MINICONTAINER_RUN) and at throwaway Jupyter,
IPython and matplotlib directories: a test run never writes to $HOME or to
/var/lib/minicontainer.

Anything the notebook leaves running fails its last cell, as tests/conftest.py does for
tests. jupyter_client starts each kernel in a new session (setsid), and nothing the
notebooks start (engine, sandbox helper, containers) leaves it, so the processes in the
kernel's session are exactly the notebook's leftovers. That keeps the check away from
the containers of other test runs on the same machine.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time

import pytest

# Read by jupyter_core, IPython and matplotlib; none of them may touch $HOME in a test run.
TOOL_DIRS = ("JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "JUPYTER_RUNTIME_DIR", "IPYTHONDIR", "MPLCONFIGDIR")
ENGINE_DIRS = ("MINICONTAINER_ROOT", "MINICONTAINER_RUN", "MINICONTAINER_CONFIG_DIR")
LEFTOVER_GRACE = 10.0   # seconds a notebook's last processes get to finish exiting


def processes_in_session(sid: int) -> list[int]:
    """Pids whose session id (field 6 of /proc/PID/stat) is ``sid``."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue   # it exited while we looked
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(entry))
    return found


def processes_working_under(root: str) -> list[int]:
    """Pids whose current directory lies under ``root`` (a detached container's monitor and PID 1)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/cwd").startswith(root):
                found.append(int(entry))
        except OSError:
            continue
    return found


def minicontainer_cgroups_of(pid: int) -> set[str]:
    """The names of the minicontainer cgroups ``pid`` is in ("minicontainer-<id>" or "<id>")."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            paths = [line.rstrip("\n").split(":", 2)[2] for line in f]
    except OSError:
        return set()
    return {os.path.basename(p) for p in paths if "minicontainer" in p}


def remove_cgroups_named(names: set[str]) -> None:
    """rmdir every cgroup directory with one of these names (after its processes were killed)."""
    for dirpath, dirnames, _ in os.walk("/sys/fs/cgroup", topdown=False):
        if os.path.basename(dirpath) in names:
            try:
                os.rmdir(dirpath)
            except OSError:
                pass


class NotebookRun:
    """One notebook's environment, and the check for what it left behind."""

    def __init__(self, tool_root: str):
        self.root = tempfile.mkdtemp(prefix="mc-notebook-")
        self.kernel_pid: int | None = None
        self.saved = {k: os.environ.get(k) for k in TOOL_DIRS + ENGINE_DIRS}
        os.environ["MINICONTAINER_ROOT"] = os.path.join(self.root, "lib")
        os.environ["MINICONTAINER_RUN"] = os.path.join(self.root, "run")
        os.environ["MINICONTAINER_CONFIG_DIR"] = os.path.join(self.root, "config")  # never /etc/minicontainer
        for key in TOOL_DIRS:
            os.environ[key] = os.path.join(tool_root, key.lower())

    def leftovers(self) -> dict[int, set[str]]:
        """Processes the notebook started that still run, with their minicontainer cgroups.

        Call it while the kernel is alive: stopping the kernel kills its process group.
        """
        if self.kernel_pid is None:
            return {}
        # a container's setup process may still be exiting (the kernel tears its namespaces
        # down, slowly on a loaded or emulated machine): give it a moment before calling it a leak
        deadline = time.monotonic() + LEFTOVER_GRACE
        while True:
            # the kernel's session; and detached containers, whose monitors start sessions of
            # their own but work in the container's directory under this notebook's root
            pids = sorted({p for p in processes_in_session(self.kernel_pid) if p != self.kernel_pid}
                          | set(processes_working_under(self.root)))
            if not pids or time.monotonic() > deadline:
                return {pid: minicontainer_cgroups_of(pid) for pid in pids}
            time.sleep(0.05)

    def finish(self, leftovers: dict[int, set[str]]) -> list[str]:
        """Restore the environment, kill and remove leftovers; return what was left behind."""
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        problems = []
        if leftovers:
            problems.append(f"processes left running: {sorted(leftovers)}")
            cgroups = set().union(*leftovers.values())
            for pid in leftovers:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if cgroups:
                problems.append(f"and their cgroups: {sorted(cgroups)}")
                time.sleep(0.2)   # let the killed tasks leave their cgroups
                remove_cgroups_named(cgroups)
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if self.root in line]
        if mounts:
            problems.append(f"mounts left: {mounts}")
            for mount_point in reversed(mounts):
                os.system(f"umount -l {mount_point} 2>/dev/null")
        shutil.rmtree(self.root, ignore_errors=True)
        return problems


def _is_notebook_cell(item: pytest.Item) -> bool:
    return str(getattr(item, "fspath", "")).endswith(".ipynb")


_runs: dict[str, NotebookRun] = {}
_tool_root: list[str] = []


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    """Before a notebook's first cell (whose setup starts the kernel), give it its own directories."""
    run = None
    if _is_notebook_cell(item) and item.parent.nodeid not in _runs:
        if os.geteuid() != 0:
            pytest.skip("the course notebooks run as root against the real kernel")
        if not _tool_root:   # shared by all notebooks, so matplotlib builds its font cache once
            _tool_root.append(tempfile.mkdtemp(prefix="mc-notebook-tools-"))
        run = _runs[item.parent.nodeid] = NotebookRun(_tool_root[0])
    result = yield
    if run is not None:
        kernel = getattr(item.parent, "kernel", None)
        run.kernel_pid = getattr(getattr(getattr(kernel, "km", None), "provisioner", None), "pid", None)
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    """Around a notebook's last teardown, which stops its kernel: look for leftovers, then clean up.

    Stopping the kernel kills its process group, which would hide what the notebook left
    running (and leave the engine no chance to remove cgroups): so look before.
    """
    last_cell = nextitem is None or nextitem.parent is not item.parent
    run = _runs.pop(item.parent.nodeid, None) if _is_notebook_cell(item) and last_cell else None
    leftovers = run.leftovers() if run is not None else {}
    try:
        return (yield)
    finally:
        problems = run.finish(leftovers) if run is not None else []
        if problems:
            pytest.fail(f"{item.parent.name} left things behind: " + "; ".join(problems))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every notebook also runs in the real cgroup v2 guest under systemd (make test-v2)."""
    for item in items:
        if _is_notebook_cell(item):
            item.add_marker(pytest.mark.v2)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for path in _tool_root:
        shutil.rmtree(path, ignore_errors=True)
