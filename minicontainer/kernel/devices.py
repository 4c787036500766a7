"""The device cgroup: which device nodes a container may open, whatever nodes it can see.

A device node is only a name for (type, major, minor); whoever can create or reach one for
the host's disk (block 254:0, say) can read and write that disk. So besides giving the
container a /dev with only harmless nodes, the runtime tells the kernel which devices its
processes may use at all, as runc and Docker do:

- cgroup v1 has a ``devices`` controller: write ``a`` to ``devices.deny``, then each
  allowed rule ("c 1:3 rwm") to ``devices.allow``.
- cgroup v2 has no such files. The kernel instead runs a small eBPF program of type
  BPF_PROG_TYPE_CGROUP_DEVICE, attached to the cgroup, for every open or mknod of a
  device; it returns 1 to allow and 0 to refuse. :func:`device_program` writes that
  program as eBPF instructions, the way runc generates its own.
"""
from __future__ import annotations

import ctypes
import os
import struct
from dataclasses import dataclass

from ..errors import KernelError
from ..trace import Step
from .syscalls import libc

@dataclass(frozen=True)
class DeviceRule:
    """One line of an allow-list, as devices.allow spells it: "c 1:3 rwm"."""

    kind: str      # "c" (character) or "b" (block)
    major: int     # -1: any
    minor: int     # -1: any
    access: str    # some of "r", "w", "m"

    def __str__(self) -> str:
        number = lambda n: "*" if n < 0 else str(n)  # noqa: E731
        return f"{self.kind} {number(self.major)}:{number(self.minor)} {self.access}"


INITIAL_UID_MAP = "0 0 4294967295"   # the host's user namespace maps every uid to itself


def in_initial_user_namespace(uid_map: str = "/proc/self/uid_map") -> bool:
    """True in the host's (initial) user namespace, whose uid_map maps all 2**32 - 1 uids to themselves.

    Any other user namespace ("rootless", or a container's) maps a range of its own; there
    the kernel refuses the device cgroup even to its root: devices.allow/deny and attaching
    a BPF_PROG_TYPE_CGROUP_DEVICE program need CAP_SYS_ADMIN in the initial namespace.
    """
    try:
        with open(uid_map) as f:
            return " ".join(f.read().split()) == INITIAL_UID_MAP
    except FileNotFoundError:   # no /proc mounted here (a Sandbox before mount_proc): keep the host's way
        return True


def skip_device_cgroup(target: str) -> Step:
    """Record that the device allow-list of ``target`` is left unset in a user namespace, and why that is safe."""
    step = Step(name="cgroup_devices_skipped", call=f"(no device allow-list for {target})",
                shell="# skipped: in a user namespace the kernel refuses devices.deny and device BPF programs",
                why="in a user namespace mknod is refused whatever the cgroup says, and the device allow-list "
                    "of the outer container (set from the host) still bounds every cgroup below it")
    step.do(lambda: "skipped: not in the initial user namespace")
    return step


# runc's and Docker's default allow-list: any device node may be *created* (mknod: "m"),
# but only these may be read or written.
DEFAULT_RULES = (
    DeviceRule("c", -1, -1, "m"), DeviceRule("b", -1, -1, "m"),
    DeviceRule("c", 1, 3, "rwm"),    # null
    DeviceRule("c", 1, 5, "rwm"),    # zero
    DeviceRule("c", 1, 7, "rwm"),    # full
    DeviceRule("c", 1, 8, "rwm"),    # random
    DeviceRule("c", 1, 9, "rwm"),    # urandom
    DeviceRule("c", 5, 0, "rwm"),    # tty
    DeviceRule("c", 5, 1, "rwm"),    # console
    DeviceRule("c", 5, 2, "rwm"),    # ptmx
    DeviceRule("c", 136, -1, "rwm"),  # pts/*
)

# ---- the eBPF program (include/uapi/linux/bpf.h) ---------------------------------------------
BPF_PROG_TYPE_CGROUP_DEVICE = 15
BPF_CGROUP_DEVICE = 6          # attach type
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_F_ALLOW_MULTI = 2
DEVCG_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, BPF_DEVCG_DEV_CHAR
DEVCG_ACCESS = {"m": 1, "r": 2, "w": 4}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}[os.uname().machine]

# opcodes: class | op | source
LDX_W = 0x61        # BPF_LDX | BPF_MEM | BPF_W:  dst = *(u32 *)(src + off)
AND_K = 0x57        # BPF_ALU64 | BPF_AND | BPF_K: dst &= imm
RSH_K = 0x77        # BPF_ALU64 | BPF_RSH | BPF_K: dst >>= imm
MOV_K = 0xB7        # BPF_ALU64 | BPF_MOV | BPF_K: dst = imm
MOV_X = 0xBF        # BPF_ALU64 | BPF_MOV | BPF_X: dst = src
JNE_K = 0x55        # BPF_JMP | BPF_JNE | BPF_K:   if dst != imm: pc += off
EXIT = 0x95         # BPF_JMP | BPF_EXIT:         return r0


@dataclass(frozen=True)
class Insn:
    """One eBPF instruction: 8 bytes, as the kernel reads them."""
    code: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0

    def pack(self) -> bytes:
        return struct.pack("<BBhi", self.code, (self.src << 4) | self.dst, self.off, self.imm)

    def __str__(self) -> str:
        names = {LDX_W: f"r{self.dst} = *(u32 *)(r{self.src} + {self.off})", AND_K: f"r{self.dst} &= {self.imm:#x}",
                 RSH_K: f"r{self.dst} >>= {self.imm}", MOV_K: f"r{self.dst} = {self.imm}",
                 MOV_X: f"r{self.dst} = r{self.src}", JNE_K: f"if r{self.dst} != {self.imm} goto +{self.off}",
                 EXIT: "exit"}
        return names[self.code]


def device_program(rules: tuple[DeviceRule, ...] = DEFAULT_RULES) -> list[Insn]:
    """The allow-list as eBPF: r1 points at struct bpf_cgroup_dev_ctx {access_type, major, minor}.

    access_type is (access << 16) | type. For each rule: if the type, major and minor match
    and the access asked for is within the rule's, return 1. Nothing matched: return 0.
    """
    prologue = [Insn(LDX_W, 2, 1, 0), Insn(AND_K, 2, imm=0xFFFF),     # r2 = type
                Insn(LDX_W, 3, 1, 0), Insn(RSH_K, 3, imm=16),         # r3 = access
                Insn(LDX_W, 4, 1, 4), Insn(LDX_W, 5, 1, 8)]           # r4 = major, r5 = minor
    body: list[Insn] = []
    for rule in rules:
        allowed = sum(DEVCG_ACCESS[a] for a in rule.access)
        checks = [(2, DEVCG_TYPE[rule.kind])]
        if rule.major >= 0:
            checks.append((4, rule.major))
        if rule.minor >= 0:
            checks.append((5, rule.minor))
        # each check jumps past the rest of this rule when it fails
        block_len = len(checks) + 3 + 2   # checks, access test (3), return 1 (2)
        for i, (reg, value) in enumerate(checks):
            body.append(Insn(JNE_K, reg, off=block_len - i - 1, imm=value))
        body += [Insn(MOV_X, 6, 3), Insn(AND_K, 6, imm=~allowed & 0xFFFF),   # r6 = access not allowed
                 Insn(JNE_K, 6, off=2, imm=0),
                 Insn(MOV_K, 0, imm=1), Insn(EXIT)]
    return prologue + body + [Insn(MOV_K, 0, imm=0), Insn(EXIT)]


def evaluate(program: list[Insn], kind: str, major: int, minor: int, access: str) -> int:
    """Run ``program`` the way the kernel would, for one request: what it returns (1 allow, 0 refuse).

    A tiny interpreter for the few instructions device_program uses, so tests can check
    its decisions on a machine whose kernel can't run it (cgroup v1 hosts).
    """
    ctx = [(sum(DEVCG_ACCESS[a] for a in access) << 16) | DEVCG_TYPE[kind], major, minor]
    regs = [0] * 11
    pc = 0
    while True:
        insn = program[pc]
        pc += 1
        if insn.code == LDX_W:
            regs[insn.dst] = ctx[insn.off // 4]
        elif insn.code == AND_K:
            regs[insn.dst] &= insn.imm & 0xFFFFFFFF
        elif insn.code == RSH_K:
            regs[insn.dst] >>= insn.imm
        elif insn.code == MOV_K:
            regs[insn.dst] = insn.imm
        elif insn.code == MOV_X:
            regs[insn.dst] = regs[insn.src]
        elif insn.code == JNE_K:
            if regs[insn.dst] != insn.imm:
                pc += insn.off
        elif insn.code == EXIT:
            return regs[0]


class _ProgLoadAttr(ctypes.Structure):
    _fields_ = [("prog_type", ctypes.c_uint32), ("insn_cnt", ctypes.c_uint32), ("insns", ctypes.c_uint64),
                ("license", ctypes.c_uint64), ("log_level", ctypes.c_uint32), ("log_size", ctypes.c_uint32),
                ("log_buf", ctypes.c_uint64), ("kern_version", ctypes.c_uint32), ("prog_flags", ctypes.c_uint32),
                ("prog_name", ctypes.c_char * 16)]


# the name our programs are loaded with (bpftool prog list shows it): systemd loads device
# programs of its own, and ours must be told apart from them
PROGRAM_NAME = b"mc_devices"


class _ProgAttachAttr(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32)]


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    ret = libc.syscall(_SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        raise KernelError("bpf", ctypes.get_errno(), "loading or attaching the device cgroup program (needs root)")
    return ret


def attach_device_program(cgroup_dir: str, program: list[Insn]) -> None:
    """bpf(BPF_PROG_LOAD) the program, then bpf(BPF_PROG_ATTACH) it to the cgroup directory.

    Once attached the cgroup holds the program; it goes away with the cgroup.
    """
    code = b"".join(insn.pack() for insn in program)
    insns = ctypes.create_string_buffer(code, len(code))
    license_ = ctypes.create_string_buffer(b"Apache-2.0")   # any string; GPL-only helpers are not used

    def load(log_level: int, log: ctypes.Array | None = None) -> int:
        return _bpf(BPF_PROG_LOAD, _ProgLoadAttr(
            BPF_PROG_TYPE_CGROUP_DEVICE, len(program), ctypes.addressof(insns), ctypes.addressof(license_),
            log_level, len(log) if log is not None else 0, ctypes.addressof(log) if log is not None else 0, 0, 0,
            PROGRAM_NAME))

    try:
        prog_fd = load(0)   # no verifier log: a log too small for it would fail the load (ENOSPC)
    except KernelError as exc:
        log = ctypes.create_string_buffer(1 << 20)   # load again, only to learn why
        try:
            load(1, log)
        except KernelError:
            pass
        verifier = log.value.decode(errors="replace").strip().splitlines()
        raise KernelError("bpf", exc.errno, "the kernel's verifier refused the device program: "
                          + (verifier[-1] if verifier else "no log")) from None
    cgroup_fd = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _bpf(BPF_PROG_ATTACH, _ProgAttachAttr(cgroup_fd, prog_fd, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI))
    finally:
        os.close(cgroup_fd)
        os.close(prog_fd)


BPF_PROG_GET_NEXT_ID, BPF_PROG_GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD = 11, 13, 15


class _GetIdAttr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32), ("open_flags", ctypes.c_uint32)]


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def loaded_device_programs(ours_only: bool = True) -> set[int]:
    """The ids of the device cgroup programs loaded in the kernel (``bpftool prog list``, filtered):
    ours (named PROGRAM_NAME), or with ``ours_only=False`` systemd's and everyone's too.

    bpf(BPF_PROG_GET_NEXT_ID) walks the ids; for each, BPF_OBJ_GET_INFO_BY_FD reads its
    type and name (fields of struct bpf_prog_info). A program lives while a cgroup holds it.
    """
    found, attr = set(), _GetIdAttr(0, 0, 0)
    while libc.syscall(_SYS_BPF, BPF_PROG_GET_NEXT_ID, ctypes.byref(attr), ctypes.sizeof(attr)) == 0:
        prog_id = attr.next_id
        attr = _GetIdAttr(prog_id, 0, 0)
        fd = libc.syscall(_SYS_BPF, BPF_PROG_GET_FD_BY_ID, ctypes.byref(_GetIdAttr(prog_id, 0, 0)),
                          ctypes.sizeof(_GetIdAttr))
        if fd < 0:
            continue   # freed since, or not ours to open
        try:
            info = ctypes.create_string_buffer(80)   # up to the name: type u32, id u32, …, name[16] at 64
            if libc.syscall(_SYS_BPF, BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(
                    _InfoAttr(fd, len(info), ctypes.addressof(info))), ctypes.sizeof(_InfoAttr)) == 0 \
                    and int.from_bytes(info.raw[:4], "little") == BPF_PROG_TYPE_CGROUP_DEVICE \
                    and (not ours_only or info.raw[64:80].rstrip(b"\0") == PROGRAM_NAME):
                found.add(prog_id)
        finally:
            os.close(fd)
    return found
