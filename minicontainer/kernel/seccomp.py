"""seccomp (安全计算模式): a filter the kernel runs on every system call a container makes.

A seccomp filter is a small BPF program attached to a process. On each system call the
kernel runs it with the call's number, architecture and arguments, and the program's
answer decides: allow the call, fail it with an errno, or kill the process. It is
inherited by every child and can never be removed, so the last thing the runtime does
before it execs the container's command is to load one.

Three shapes of the same filter appear here:

1. a **Docker profile** (``seccomp_profile.default_profile()`` or a user's JSON file): a
   list of rules with conditions on the container's capabilities and architecture;
2. the **OCI runtime spec's** ``linux.seccomp`` (in config.json): those conditions already
   decided for one container, which is what Docker hands runc;
3. the **BPF program**, compiled from (2) by libseccomp. Nothing here assembles BPF by
   hand: libseccomp knows every architecture's syscall numbers and how to check them.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform

from ..atomic import write_atomic
from ..errors import InvalidArgument
from ..trace import Step
from . import syscalls

# Go-style architecture names (Docker's "arches") for this machine
_NATIVE_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "s390x": "s390x",
                "ppc64le": "ppc64le", "riscv64": "riscv64"}.get(platform.machine(), platform.machine())
_NATIVE_SCMP = {"amd64": "SCMP_ARCH_X86_64", "arm64": "SCMP_ARCH_AARCH64"}.get(_NATIVE_ARCH, "")
_OPS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
        "SCMP_CMP_MASKED_EQ")
ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_TRAP", "SCMP_ACT_ERRNO",
           "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG")


def _kernel_version() -> tuple[int, ...]:
    return tuple(int(p) for p in platform.release().split("-")[0].split(".")[:2])


def _applies(rule: dict, capabilities: set[str]) -> bool:
    """Docker's rule conditions: includes needs all its caps and one of its arches; excludes any."""
    inc, exc = rule.get("includes") or {}, rule.get("excludes") or {}
    if inc.get("caps") and not set(inc["caps"]) <= capabilities:
        return False
    if inc.get("arches") and _NATIVE_ARCH not in inc["arches"]:
        return False
    if inc.get("minKernel") and _kernel_version() < tuple(int(p) for p in inc["minKernel"].split(".")[:2]):
        return False
    if set(exc.get("caps") or ()) & capabilities or _NATIVE_ARCH in (exc.get("arches") or ()):
        return False
    return True


def profile_to_oci(profile: dict, capabilities: tuple[str, ...] | list[str]) -> dict:
    """A Docker profile, decided for a container with ``capabilities``: the OCI ``linux.seccomp``."""
    if not isinstance(profile, dict) or not isinstance(profile.get("syscalls", []), list):
        raise InvalidArgument("seccomp profile: expected a JSON object with defaultAction and syscalls (Docker's format)")
    if profile.get("defaultAction") not in ACTIONS:
        raise InvalidArgument(f"seccomp profile: defaultAction {profile.get('defaultAction')!r} is not one of "
                              f"{', '.join(ACTIONS)}")
    architectures = list(profile.get("architectures") or [])
    for entry in profile.get("archMap") or []:
        if entry.get("architecture") == _NATIVE_SCMP:
            architectures = [entry["architecture"], *(entry.get("subArchitectures") or [])]
    oci: dict = {"defaultAction": profile["defaultAction"], "architectures": architectures, "syscalls": []}
    if "defaultErrnoRet" in profile:
        oci["defaultErrnoRet"] = profile["defaultErrnoRet"]
    caps = set(capabilities)
    for rule in profile.get("syscalls") or []:
        names = rule.get("names") or ([rule["name"]] if rule.get("name") else [])
        if not names or rule.get("action") not in ACTIONS:
            raise InvalidArgument(f"seccomp profile: rule {json.dumps(rule)[:80]} needs names and a known action")
        if _applies(rule, caps):
            oci["syscalls"].append({k: v for k, v in (("names", list(names)), ("action", rule["action"]),
                                                      ("errnoRet", rule.get("errnoRet")), ("args", rule.get("args")))
                                    if v is not None})
    return oci


def load_profile_file(path: str) -> dict:
    """Read a Docker-format profile (``--security-opt seccomp=PATH``), with a one-line error if it is bad."""
    try:
        with open(path) as f:
            return json.load(f)
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile {path}: {exc.strerror}: give the path of a JSON profile") from None
    except ValueError as exc:
        raise InvalidArgument(f"seccomp profile {path} is not valid JSON ({exc}): fix it or use "
                              "--security-opt seccomp=unconfined") from None


def allowed_syscalls(oci: dict) -> list[str]:
    """The names an OCI seccomp config allows without conditions (for counting and teaching)."""
    return sorted({n for rule in oci.get("syscalls", []) if rule["action"] == "SCMP_ACT_ALLOW"
                   and not rule.get("args") for n in rule["names"]})


def _action(seccomp, name: str, errno_ret: int | None) -> int:
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return seccomp.KILL_THREAD
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(1 if errno_ret is None else errno_ret)
    if name == "SCMP_ACT_TRACE":
        return seccomp.TRACE(1 if errno_ret is None else errno_ret)
    if name in ACTIONS:
        return getattr(seccomp, name[9:])   # ALLOW, TRAP, LOG
    raise InvalidArgument(f"config.json: linux.seccomp action {name!r} is not supported: use one of {', '.join(ACTIONS)}")


def _conditions(seccomp, args: list[dict]) -> list[list]:
    """One rule's argument checks, as libseccomp rules: all of them at once (AND), unless two
    check the same argument, which libseccomp can't AND; then one rule each (OR), as runc does."""
    made = []
    for arg in args:
        if arg.get("op") not in _OPS:
            raise InvalidArgument(f"config.json: linux.seccomp op {arg.get('op')!r} is not one of {', '.join(_OPS)}")
        made.append(seccomp.Arg(int(arg["index"]), _OPS.index(arg["op"]) + 1, int(arg["value"]),
                                int(arg.get("valueTwo") or 0)))
    indexes = [arg["index"] for arg in args]
    return [made] if len(set(indexes)) == len(indexes) else [[c] for c in made]


def _compile(oci: dict) -> bytes:
    import pyseccomp as seccomp   # ctypes over libseccomp.so.2; loaded only when a filter is made

    default = _action(seccomp, oci["defaultAction"], oci.get("defaultErrnoRet"))
    flt = seccomp.SyscallFilter(default)
    for name in oci.get("architectures") or []:
        arch = getattr(seccomp.Arch, name.removeprefix("SCMP_ARCH_"), None)
        if arch is None:
            raise InvalidArgument(f"config.json: linux.seccomp architecture {name!r} is unknown to libseccomp")
        if not flt.exist_arch(arch):
            flt.add_arch(arch)
    try:   # a binary tree instead of a linear list of ~350 comparisons (libseccomp >= 2.5)
        flt.set_attr(seccomp.Attr.CTL_OPTIMIZE, 2)
    except OSError:
        pass
    for rule in oci.get("syscalls") or []:
        action = _action(seccomp, rule["action"], rule.get("errnoRet"))
        if action == default:
            continue    # libseccomp refuses a rule that says what the default already says
        for name in rule["names"]:
            if seccomp.resolve_syscall(seccomp.Arch.NATIVE, name) == -1:   # __NR_SCMP_ERROR
                continue    # unknown to this libseccomp: skipped, as runc skips it
            for conditions in _conditions(seccomp, rule.get("args") or []):
                try:
                    flt.add_rule(action, name, *conditions)
                except OSError as exc:
                    raise InvalidArgument(f"config.json: linux.seccomp rule for {name}: libseccomp refused it "
                                          f"({exc.strerror})") from None
    fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
    try:
        flt.export_bpf(open(fd, "rb", closefd=False))
        return os.pread(fd, os.fstat(fd).st_size, 0)
    finally:
        os.close(fd)


_compiled: dict[str, bytes] = {}


def compile_filter(oci: dict, cache_dir: str | os.PathLike | None = None) -> bytes:
    """libseccomp's BPF program for an OCI ``linux.seccomp``.

    Kept in memory, so a forked child finds it without calling into libseccomp (call this
    before fork), and in ``cache_dir`` if given: compiling the default profile for three
    x86 ABIs takes libseccomp about 10 ms, which every CLI call would otherwise pay.
    """
    key = hashlib.sha256(f"{platform.machine()}\n{json.dumps(oci, sort_keys=True)}".encode()).hexdigest()
    if key in _compiled:
        return _compiled[key]
    cached = os.path.join(cache_dir, key + ".bpf") if cache_dir else None
    program = b""
    if cached:
        try:
            with open(cached, "rb") as f:
                program = f.read()
        except OSError:
            pass
    if not program or len(program) % 8:
        program = _compile(oci)
        if cached:
            os.makedirs(cache_dir, mode=0o700, exist_ok=True)
            write_atomic(cached, program, mode=0o600, durable=False)
    _compiled[key] = program
    return program


def _status() -> dict[str, str]:
    with open("/proc/self/status") as f:
        return {k: v.strip() for k, v in (line.split(":", 1) for line in f) if k in ("Seccomp", "Seccomp_filters")}


def load_filter(oci: dict) -> Step:
    """Install the seccomp filter on this process: every syscall it and its children make is checked."""
    program = compile_filter(oci)
    allowed = allowed_syscalls(oci)
    errno_ret = oci.get("defaultErrnoRet", 1)
    default = oci["defaultAction"] + (f"({errno_ret})" if oci["defaultAction"] == "SCMP_ACT_ERRNO" else "")
    step = Step("seccomp", call=f"prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, <{len(program) // 8} BPF instructions "
                                f"from libseccomp>)",
                shell="docker run --security-opt seccomp=PROFILE.json …",
                why=f"seccomp (安全计算模式) allow-list: {len(allowed)} syscalls allowed, the rest {default}; "
                    "no unshare, mount, keyctl, kexec or module loading")
    step.do(syscalls.set_seccomp_filter, program, evidence=_status)
    return step
