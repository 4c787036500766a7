"""Shared fixtures. Every test runs as root against the real kernel, in its own engine
root, and the ``no_leftovers`` fixture fails any test that leaves a mount, a cgroup, a
device cgroup BPF program, a network namespace, a network interface, a process or its
temp root behind. (A seccomp filter belongs to its process: a leftover process is caught.)"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from minicontainer.kernel.devices import loaded_device_programs

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _mount_lines(marker: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.strip() for line in f if marker in line]


def minicontainer_cgroups(tag: str = "") -> set[str]:
    """Every cgroup directory of ours on this host: named after ``tag``, or minicontainer*.

    v1 names a container's cgroup ``minicontainer-<tag>-<id>`` in each hierarchy; v2 puts
    ``<tag>-<id>`` in a shared parent (``minicontainer/``, or the delegated systemd unit).
    """
    found: set[str] = set()

    def walk(path: Path, depth: int) -> None:
        if depth > 6:
            return
        try:
            entries = list(os.scandir(path))
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if (tag and tag in e.name) or (not tag and e.name.startswith("minicontainer")):
                    found.add(e.path)
                walk(Path(e.path), depth + 1)

    walk(CGROUP_ROOT, 0)
    return found


def _netns() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def _links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def _processes_under(root: str, tag: str) -> list[int]:
    """Processes in this test's minicontainer cgroups, or whose root or cwd lies under ``root``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup") as f:
                if f"{tag}-" in f.read():   # v1 ".../minicontainer-<tag>-<id>", v2 "0::/.../<tag>-<id>"
                    pids.append(int(entry))
                    continue
        except OSError:
            continue
        for what in ("root", "cwd"):
            try:
                target = os.readlink(f"/proc/{entry}/{what}")
            except OSError:
                continue
            if target.startswith(root):
                pids.append(int(entry))
                break
    return pids


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


@pytest.fixture(autouse=True)
def no_leftovers(monkeypatch):
    """Give each test its own engine root, then fail the test if anything is left behind."""
    if os.geteuid() != 0:
        pytest.skip("minicontainer's tests run as root against the real kernel")
    root = tempfile.mkdtemp(prefix="mc-test-")
    monkeypatch.setenv("MINICONTAINER_ROOT", root + "/lib")
    monkeypatch.setenv("MINICONTAINER_RUN", root + "/run")
    monkeypatch.setenv("MINICONTAINER_CONFIG_DIR", root + "/config")  # daemon.json, auth.json
    # every cgroup this test makes carries its tag, so other test runs on the same machine
    # neither trip this check nor get their cgroups removed by it
    tag = "t" + os.urandom(4).hex()
    monkeypatch.setenv("MINICONTAINER_CGROUP_TAG", tag)
    cgroups_before = minicontainer_cgroups(tag)
    netns_before, links_before = _netns(), _links()
    children_before = set(_children(os.getpid()))
    contained_before = set(_processes_under(root, tag))
    # mounts that were there before (the v2 guest mounts tmpfs on /var/lib/minicontainer) aren't ours
    mounts_before = set(_mount_lines("minicontainer"))
    programs_before = loaded_device_programs()
    yield Path(root)

    problems = []
    # a container's setup process may still be exiting (the kernel tearing its namespaces
    # down) and is reaped by a background thread: give it a moment before calling it a leak
    deadline = time.monotonic() + 5
    while [p for p in _children(os.getpid()) if p not in children_before] and time.monotonic() < deadline:
        time.sleep(0.01)
    stray = [p for p in _children(os.getpid()) if p not in children_before]
    stray += [p for p in _processes_under(root, tag) if p not in contained_before]
    if stray:
        problems.append(f"processes left running: {sorted(set(stray))}")
        for pid in set(stray):
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    mounts = _mount_lines(root) + [m for m in _mount_lines("minicontainer") if m not in mounts_before]
    if mounts:
        problems.append(f"mounts left: {mounts}")
        for line in mounts:
            os.system(f"umount -l {line.split()[4]} 2>/dev/null")
    cgroups = minicontainer_cgroups(tag) - cgroups_before
    if cgroups:
        problems.append(f"cgroups left: {sorted(cgroups)}")
        for path in sorted(cgroups, key=len, reverse=True):
            try:
                os.rmdir(path)
            except OSError:
                pass
    # a device cgroup program is freed a moment after its cgroup is removed (RCU, a workqueue)
    while loaded_device_programs() - programs_before and time.monotonic() < deadline + 5:
        time.sleep(0.05)
    if loaded_device_programs() - programs_before:
        problems.append(f"device cgroup BPF programs left loaded: {sorted(loaded_device_programs() - programs_before)}")
    if _netns() - netns_before:
        problems.append(f"network namespaces left: {sorted(_netns() - netns_before)}")
    if _links() - links_before:
        problems.append(f"network interfaces left: {sorted(_links() - links_before)}")
    try:
        shutil.rmtree(root)
    except OSError as exc:
        problems.append(f"temp root could not be removed: {exc}")
    if problems:
        pytest.fail("test left things behind: " + "; ".join(problems))


@pytest.fixture
def engine_root(no_leftovers) -> Path:
    """The per-test engine root (MINICONTAINER_ROOT)."""
    return no_leftovers / "lib"


@pytest.fixture
def config_dir(no_leftovers) -> Path:
    """The per-test MINICONTAINER_CONFIG_DIR (daemon.json, auth.json); not created yet."""
    return no_leftovers / "config"
