"""The device allow-list: the eBPF program's decisions (checked here by interpreting it) and
the v1 files. The program runs for real in the v2 guest (make test-v2), through
tests/test_security.py."""
from __future__ import annotations

import pytest

from minicontainer.kernel.devices import (DEFAULT_RULES, EXIT, DeviceRule, Insn, device_program, evaluate)


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
