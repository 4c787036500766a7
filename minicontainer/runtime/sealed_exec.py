"""The last execve, through a sealed copy of a tiny program: never through a host binary.

Until its final execve, a container's init is a copy of the engine: a Python process whose
``/proc/self/exe`` is the host's Python interpreter. An image whose command is
``/proc/self/exe`` (or a script whose ``#!`` line names it) would have the kernel resolve
that link *during* the execve, and start the host's interpreter as the container's PID 1,
with a link to the host file that a second process could reopen for writing and replace
(runc's CVE-2019-5736). Today only ETXTBSY stops the write, and only while some process
still runs that interpreter.

runc's fix is to re-execute itself from a **sealed memfd**: an in-memory file whose seals
forbid any write, so ``/proc/self/exe`` leads to nothing worth overwriting. Starting a
second Python interpreter would cost about 20 ms, so minicontainer seals something much
smaller: a 140-byte program whose only work is one execve. The init execs that program from
its sealed memfd, and the program execs the command. At the moment the command's path and
``#!`` line are resolved, ``/proc/self/exe`` is the sealed trampoline; a process that opens
it can read it, never write it. That holds by the seals' design, whatever else runs.
"""
from __future__ import annotations

import fcntl
import os
import platform
import struct

from ..errors import MinicontainerError

# The program, for each CPU. The kernel starts it with the stack holding argc, then argv[],
# a NULL, then envp[]; we are started as `trampoline PATH ARGV0 ARGV1 …`.
_CODE = {
    "x86_64": bytes.fromhex(
        "488b7c2410"      # mov  rdi, [rsp+16]          ; argv[1]: the path to run
        "488d742418"      # lea  rsi, [rsp+24]          ; &argv[2]: its argv
        "488b0424"        # mov  rax, [rsp]             ; argc
        "488d54c410"      # lea  rdx, [rsp+rax*8+16]    ; envp, just past argv's NULL
        "b83b000000"      # mov  eax, 59                ; execve(path, argv, envp)
        "0f05"            # syscall
        "bf7f000000"      # mov  edi, 127               ; only reached if execve failed
        "b8e7000000"      # mov  eax, 231               ; exit_group(127)
        "0f05"),          # syscall
    "aarch64": struct.pack(
        "<10I",
        0xF9400BE0,       # ldr  x0, [sp, #16]          ; argv[1]: the path to run
        0x910063E1,       # add  x1, sp, #24            ; &argv[2]: its argv
        0xF94003E2,       # ldr  x2, [sp]               ; argc
        0x8B226FE2,       # add  x2, sp, x2, uxtx #3    ; sp + argc*8
        0x91004042,       # add  x2, x2, #16            ; envp, just past argv's NULL
        0xD2801BA8,       # mov  x8, #221               ; execve(path, argv, envp)
        0xD4000001,       # svc  #0
        0xD2800FE0,       # mov  x0, #127               ; only reached if execve failed
        0xD2800BC8,       # mov  x8, #94                ; exit_group(127)
        0xD4000001),      # svc  #0
}
_ELF_MACHINE = {"x86_64": 62, "aarch64": 183}
_LOAD_ADDRESS = 0x400000


def trampoline_elf(machine: str | None = None) -> bytes:
    """The trampoline as a static ELF executable: a 64-byte header, one program header, the code."""
    machine = machine or platform.machine()
    if machine not in _CODE:
        raise MinicontainerError(f"no exec trampoline for {machine}: minicontainer runs containers on x86_64 "
                                 "and aarch64 only")
    code = _CODE[machine]
    header_size, phdr_size = 64, 56
    size = header_size + phdr_size + len(code)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)     # 64-bit, little-endian, version 1, System V
    header = struct.pack("<16sHHIQQQIHHHHHH", ident, 2, _ELF_MACHINE[machine], 1,   # ET_EXEC
                         _LOAD_ADDRESS + header_size + phdr_size,   # entry: the first instruction
                         header_size, 0, 0, header_size, phdr_size, 1, 0, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 5, 0, _LOAD_ADDRESS, _LOAD_ADDRESS, size, size, 0x1000)  # PT_LOAD, R+X
    return header + load + code


_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def sealed_memfd(name: str, data: bytes) -> int:
    """memfd_create + write + F_ADD_SEALS: an in-memory file that nobody can change again."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.write(fd, data)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def exec_sealed(path: str, args: list[str], env: dict[str, str]) -> None:
    """execve(path, args, env), by way of the sealed trampoline; returns only if that fails.

    The trampoline's memfd is close-on-exec: the kernel closes it as the trampoline starts,
    so the command inherits no trace of it.
    """
    fd = sealed_memfd("minicontainer-exec", trampoline_elf())
    try:
        os.execve(fd, ["minicontainer-exec", path, *args], env)   # fexecve: execveat(fd, "", AT_EMPTY_PATH)
    finally:
        os.close(fd)


def trampoline_is_sealed(fd: int) -> bool:
    """Whether ``fd`` carries every seal (for tests and the notebook: F_GET_SEALS)."""
    return fcntl.fcntl(fd, fcntl.F_GET_SEALS) & _SEALS == _SEALS

