"""cp between host and container: container paths are resolved inside the container, always.

Each test plants what a hostile container would (a symlink to /, to ../../.., a symlink
at the destination, a component swapped for a symlink in a loop) and checks that no host
path outside the container is read or written (docker cp's CVE-2018-15664).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

CLI = [sys.executable, "-m", "minicontainer"]


def mc(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120)
    if check:
        assert done.returncode == 0, done.stderr
    return done


@pytest.fixture
def hostile(tmp_path):
    """A running container whose root holds symlinks that point out of any naive resolution."""
    cid = mc("run", "-d", "busybox", "sh", "-c",
             "echo inside > /etc/marker; ln -s / /evil; ln -s ../../../../../.. /up; mkdir -p /d/sub; "
             "echo f > /d/sub/f; ln -s /etc /d/link; touch /ready; exec sleep 60").stdout.strip()
    deadline = time.monotonic() + 20
    while mc("exec", cid, "test", "-e", "/ready", check=False).returncode != 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield cid
    mc("rm", "-f", cid)


def test_reading_through_symlinks_to_the_root_stays_in_the_container(hostile, tmp_path):
    for path in ("/evil/etc/marker", "/up/etc/marker", "/etc/marker"):
        out = tmp_path / "marker"
        mc("cp", f"{hostile}:{path}", str(out))
        assert out.read_text() == "inside\n", path
        out.unlink()
    # the host has /etc/os-release; the busybox container has none, and that is what cp must see
    assert os.path.exists("/etc/os-release")
    missing = mc("cp", f"{hostile}:/evil/etc/os-release", str(tmp_path / "leak"), check=False)
    assert missing.returncode != 0 and not (tmp_path / "leak").exists(), "read a host file through /evil"
    assert "no such file or directory" in missing.stderr and "Traceback" not in missing.stderr


def test_writing_through_symlinks_lands_in_the_container(hostile, tmp_path):
    name = f"mc-cp-{uuid.uuid4().hex[:8]}"
    (tmp_path / name).write_text("from the host\n")
    for via in ("/evil/tmp/", "/up/tmp/"):
        mc("cp", str(tmp_path / name), f"{hostile}:{via}")
        assert not os.path.exists(f"/tmp/{name}"), f"cp wrote to the host's /tmp through {via}"
        assert mc("exec", hostile, "cat", f"/tmp/{name}").stdout == "from the host\n"


def test_a_symlink_at_the_destination_is_replaced_never_written_through(hostile, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("untouched\n")
    mc("exec", hostile, "ln", "-s", str(victim), "/target")
    (tmp_path / "payload").write_text("payload\n")
    mc("cp", str(tmp_path / "payload"), f"{hostile}:/target")
    assert victim.read_text() == "untouched\n"
    assert mc("exec", hostile, "cat", "/target").stdout == "payload\n"


def test_directories_copy_out_with_their_symlinks_as_links(hostile, tmp_path):
    mc("cp", f"{hostile}:/d", str(tmp_path))
    assert (tmp_path / "d" / "sub" / "f").read_text() == "f\n"
    assert os.readlink(tmp_path / "d" / "link") == "/etc"   # copied as the link it is, not followed


def test_a_component_swapped_for_a_symlink_in_a_loop_never_leads_out(tmp_path):
    # the race of CVE-2018-15664: /w flips between a directory and a symlink to / while cp runs
    cid = mc("run", "-d", "busybox", "sh", "-c",
             "while :; do rm -rf /w; mkdir /w; rm -rf /w; ln -s / /w; done").stdout.strip()
    try:
        name = f"mc-race-{uuid.uuid4().hex[:8]}"
        (tmp_path / name).write_text("x\n")
        for _ in range(40):
            mc("cp", str(tmp_path / name), f"{cid}:/w/tmp/{name}", check=False)
            assert not os.path.exists(f"/tmp/{name}"), "the copy left the container through the swapped symlink"
    finally:
        mc("rm", "-f", cid)


def test_a_stopped_container_is_copied_to_and_from_with_nothing_left_mounted(engine_root, tmp_path):
    cid = mc("run", "-d", "busybox", "sh", "-c", "ln -s / /evil; echo kept > /kept").stdout.strip()
    mc("wait", cid)
    (tmp_path / "in.txt").write_text("in\n")
    mc("cp", str(tmp_path / "in.txt"), f"{cid}:/evil/in.txt")
    mc("cp", f"{cid}:/in.txt", str(tmp_path / "back.txt"))
    mc("cp", f"{cid}:/kept", str(tmp_path / "kept"))
    assert (tmp_path / "back.txt").read_text() == "in\n" and (tmp_path / "kept").read_text() == "kept\n"
    assert (engine_root / "containers" / cid / "upper" / "in.txt").exists()   # in the container's own upper dir
    with open("/proc/self/mountinfo") as f:
        assert cid not in f.read()
    bad = mc("cp", f"{cid}:/nope", str(tmp_path / "x"), check=False)
    assert bad.returncode != 0 and "no such file or directory in the container" in bad.stderr
    neither = mc("cp", str(tmp_path / "in.txt"), str(tmp_path / "y"), check=False)
    assert neither.returncode == 125 and "CONTAINER:PATH" in neither.stderr
    mc("rm", cid)
