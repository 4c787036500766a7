"""The device allow-list as an eBPF program: its decisions, checked by interpreting it, and
the program loaded into the kernel and attached to a real cgroup2 directory (the hybrid
host's unified mount here, the real v2 tree in the guest)."""
from __future__ import annotations

import os

import pytest

from minicontainer.kernel.devices import (DEFAULT_RULES, EXIT, DeviceRule, Insn, attach_device_program,
                                          device_program, evaluate)

# the kernel part also runs in the real cgroup v2 guest (make test-v2)
pytestmark = pytest.mark.v2


@pytest.mark.parametrize("kind, major, minor, access, allowed", [
    ("c", 1, 3, "rw", 1),      # /dev/null
    ("c", 1, 9, "r", 1),       # /dev/urandom
    ("c", 136, 7, "rw", 1),    # a pts
    ("c", 5, 2, "rw", 1),      # ptmx
    ("b", 254, 0, "m", 1),     # creating a node for the host's disk is allowed...
    ("b", 254, 0, "r", 0),     # ...reading through it is not
    ("b", 254, 0, "w", 0),
    ("b", 7, 0, "rw", 0),      # a loop device
    ("c", 1, 11, "w", 0),      # /dev/kmsg: the host's kernel log
    ("c", 10, 200, "rw", 0),   # /dev/net/tun
    ("c", 1, 3, "rwm", 1),
    ("c", 4, 1, "rm", 0),      # a tty of the host: mknod yes, with read no
])
def test_the_device_program_allows_exactly_the_default_list(kind, major, minor, access, allowed):
    assert evaluate(device_program(), kind, major, minor, access) == allowed


def test_an_empty_allow_list_refuses_everything_and_every_rule_is_a_fixed_block():
    assert evaluate(device_program(()), "c", 1, 3, "r") == 0
    program = device_program()
    assert program[-1].code == EXIT and all(len(insn.pack()) == 8 for insn in program)
    one = device_program((DeviceRule("c", 1, 3, "rw"),))
    assert [str(i) for i in one[6:]] == [
        "if r2 != 2 goto +7", "if r4 != 1 goto +6", "if r5 != 3 goto +5",
        "r6 = r3", "r6 &= 0xfff9", "if r6 != 0 goto +2", "r0 = 1", "exit", "r0 = 0", "exit"]


def test_rules_print_as_devices_allow_lines():
    assert [str(r) for r in DEFAULT_RULES[:3]] == ["c *:* m", "b *:* m", "c 1:3 rwm"]
    assert Insn(0x95).pack() == b"\x95\x00\x00\x00\x00\x00\x00\x00"


def _a_cgroup2_dir() -> str | None:
    """Where a cgroup v2 directory can be made here: /sys/fs/cgroup (v2), or the hybrid host's unified mount."""
    for base in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(f"{base}/cgroup.controllers"):
            return base
    return None


@pytest.mark.skipif(_a_cgroup2_dir() is None, reason="needs a cgroup2 mount")
def test_the_program_loaded_into_the_kernel_refuses_a_device_a_process_in_its_cgroup_opens():
    # A device program works on any cgroup2 directory, so this runs on the hybrid host too
    # (its /sys/fs/cgroup/unified) as well as in the v2 guest.
    directory = os.path.join(_a_cgroup2_dir(), f"{os.environ.get('MINICONTAINER_CGROUP_TAG', 't')}-devices")
    os.mkdir(directory)
    try:
        attach_device_program(directory, device_program())
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:   # the child joins the cgroup and tries
            os.close(r)
            with open(f"{directory}/cgroup.procs", "w") as f:
                f.write("0")
            answers = []
            for path, mode in (("/dev/null", "w"), ("/dev/zero", "r"), ("/dev/kmsg", "r")):
                try:
                    open(path, mode).close()
                    answers.append("ok")
                except OSError as exc:
                    answers.append(os.strerror(exc.errno))
            os.write(w, "|".join(answers).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            answers = f.read()
        os.waitpid(pid, 0)
    finally:
        os.rmdir(directory)
    assert answers == "ok|ok|Operation not permitted"


@pytest.mark.skipif(_a_cgroup2_dir() is None, reason="needs a cgroup2 mount")
def test_the_loaded_program_is_listed_while_its_cgroup_holds_it_and_freed_after():
    # loaded_device_programs() is what the leak check uses to see a program left behind
    import time

    from minicontainer.kernel.devices import loaded_device_programs

    before = loaded_device_programs()
    directory = os.path.join(_a_cgroup2_dir(), f"{os.environ.get('MINICONTAINER_CGROUP_TAG', 't')}-listed")
    os.mkdir(directory)
    try:
        attach_device_program(directory, device_program())
        held = loaded_device_programs() - before
    finally:
        os.rmdir(directory)
    assert len(held) == 1, "attaching loads exactly one device cgroup program"
    deadline = time.monotonic() + 10
    while held & loaded_device_programs() and time.monotonic() < deadline:
        time.sleep(0.05)   # the kernel frees it shortly after the cgroup goes
    assert not held & loaded_device_programs(), "the program should go with its cgroup"
