"""The seccomp allow-list: loaded in every container, decided per capability, replaceable by a profile file.

Capabilities decide what root may do; seccomp decides which system calls may be made at
all. The tests use calls that need *no* capability, so only the filter can refuse them:
unshare(CLONE_NEWUSER) is open to any user on Debian's kernel.
"""
from __future__ import annotations

import json

import pytest

import minicontainer
from minicontainer.errors import InvalidArgument, MinicontainerError
from minicontainer.kernel import seccomp
from minicontainer.kernel.seccomp_profile import default_profile
from minicontainer.kernel.security import DEFAULT_CAPABILITIES

pytestmark = pytest.mark.v2

SECCOMP_LINES = "grep -E '^Seccomp' /proc/self/status"


def _oci(caps=DEFAULT_CAPABILITIES) -> dict:
    return seccomp.profile_to_oci(default_profile(), caps)


def test_every_container_runs_under_the_filter():
    result = minicontainer.run("busybox", SECCOMP_LINES)
    assert result.stdout.split() == ["Seccomp:", "2", "Seccomp_filters:", "1"], result.stdout
    assert "seccomp" in result.trace.names()
    step = next(s for s in result.trace.steps if s.name == "seccomp")
    assert not step.error and step.evidence["Seccomp"] == "2"


def test_a_user_namespace_needs_no_capability_so_only_seccomp_refuses_it():
    confined = minicontainer.run("busybox", "unshare -U true; echo rc=$?")
    assert "rc=1" in confined.stdout and "Operation not permitted" in confined.stderr, confined.output
    unconfined = minicontainer.run("busybox", f"unshare -U true; echo rc=$?; {SECCOMP_LINES}",
                                   security_opt=["seccomp=unconfined"])
    assert "rc=0" in unconfined.stdout, unconfined.output   # the same call, with no filter, works
    assert "Seccomp:\t0" in unconfined.stdout
    assert "seccomp" not in unconfined.trace.names()


def test_privileged_containers_have_no_filter_unless_a_profile_is_named(tmp_path):
    result = minicontainer.run("busybox", SECCOMP_LINES, privileged=True)
    assert "Seccomp:\t0" in result.stdout
    path = tmp_path / "deny-mkdir.json"
    path.write_text(json.dumps({"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]}))
    named = minicontainer.run("busybox", f"{SECCOMP_LINES}; mkdir /tmp/d", privileged=True,
                              security_opt=[f"seccomp={path}"])
    assert "Seccomp:\t2" in named.stdout and named.exit_code == 1, named.output   # applied, not ignored


def test_the_filter_holds_without_no_new_privs_too():
    # without no_new_privs the kernel takes a filter only from a CAP_SYS_ADMIN holder, so it
    # must go in before the capabilities are dropped
    result = minicontainer.run("busybox", f"{SECCOMP_LINES}; grep NoNewPrivs /proc/self/status; unshare -U true",
                               security_opt=["no-new-privileges=false"])
    assert "Seccomp:\t2" in result.stdout and "NoNewPrivs:\t0" in result.stdout, result.output
    assert result.exit_code == 1 and "Operation not permitted" in result.stderr


def test_a_profile_file_in_dockers_format_replaces_the_default(tmp_path):
    profile = {"defaultAction": "SCMP_ACT_ALLOW",
               "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    path = tmp_path / "no-mkdir.json"
    path.write_text(json.dumps(profile))
    result = minicontainer.run("busybox", "mkdir /tmp/d; echo rc=$?; unshare -U true && echo userns",
                               security_opt=[f"seccomp={path}"])
    assert "Permission denied" in result.stderr and "rc=1" in result.stdout, result.output   # errno 13, EACCES
    assert "userns" in result.stdout    # everything else is allowed by this profile


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"defaultAction": "SCMP_ACT_MAYBE", "syscalls": []}', "defaultAction 'SCMP_ACT_MAYBE' is not one of"),
    ('{"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [{"names": ["read"]}]}', "needs names and a known action"),
    (None, "No such file or directory"),
])
def test_a_bad_profile_is_refused_before_anything_is_created(tmp_path, engine_root, content, message):
    path = tmp_path / "profile.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(MinicontainerError, match=message) as info:
        minicontainer.run("busybox", ["true"], security_opt=[f"seccomp={path}"])
    assert "\n" not in str(info.value)
    made = engine_root / "containers"
    assert not made.exists() or [p.name for p in made.iterdir()] in ([], [".lock"])


def test_apparmor_and_labels_are_refused_by_name():
    with pytest.raises(MinicontainerError, match="unsupported --security-opt 'apparmor=unconfined'"):
        minicontainer.run("busybox", ["true"], security_opt=["apparmor=unconfined"])


def test_a_capability_brings_back_its_system_calls_as_dockers_profile_does():
    default = seccomp.allowed_syscalls(_oci())
    with_time = seccomp.allowed_syscalls(_oci(DEFAULT_CAPABILITIES + ("CAP_SYS_TIME",)))
    assert "settimeofday" not in default and "settimeofday" in with_time
    assert {"mount", "unshare", "setns", "keyctl", "kexec_load", "init_module", "bpf"}.isdisjoint(default)
    assert {"read", "write", "execve", "clone", "fork", "socket", "chroot"} - {"clone", "socket"} <= set(default)
    admin = seccomp.allowed_syscalls(_oci(DEFAULT_CAPABILITIES + ("CAP_SYS_ADMIN",)))
    assert {"mount", "unshare", "setns", "clone"} <= set(admin) and "keyctl" not in admin


def test_clone_is_allowed_only_without_namespace_flags_and_clone3_answers_enosys():
    oci = _oci()
    clone = [r for r in oci["syscalls"] if "clone" in r["names"]]
    assert clone == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW",
                      "args": [{"index": 0, "value": 0x7E020000, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]
    clone3 = next(r for r in oci["syscalls"] if "clone3" in r["names"])
    assert clone3["action"] == "SCMP_ACT_ERRNO" and clone3["errnoRet"] == 38
    # and in a real container, fork and pipelines (clone without namespace flags) still work
    assert minicontainer.run("busybox", "echo a | tr a b; (echo sub)").stdout == "b\nsub\n"


def test_rules_are_decided_by_capability_architecture_and_kernel_like_docker():
    profile = {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": [
        {"names": ["a"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_X", "CAP_Y"]}},
        {"names": ["b"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_X"]}},
        {"names": ["c"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["mips"]}},
        {"names": ["d"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "99.0"}},
        {"names": ["e"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
    ]}
    assert [r["names"] for r in seccomp.profile_to_oci(profile, ["CAP_X"])["syscalls"]] == [["e"]]
    assert [r["names"] for r in seccomp.profile_to_oci(profile, ["CAP_X", "CAP_Y"])["syscalls"]] == [["a"], ["e"]]
    assert [r["names"] for r in seccomp.profile_to_oci(profile, [])["syscalls"]] == [["b"], ["e"]]


def test_the_filter_covers_the_32_bit_abis_so_int_0x80_cant_go_around_it():
    import platform
    if platform.machine() != "x86_64":
        pytest.skip("x86 only")
    assert _oci()["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]


def test_the_compiled_program_is_cached_on_disk_and_reused(tmp_path):
    oci = _oci(DEFAULT_CAPABILITIES + ("CAP_SYS_NICE",))
    program = seccomp.compile_filter(oci, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == program and files[0].stat().st_mode & 0o777 == 0o600
    assert len(program) % 8 == 0 and len(program) // 8 > 300   # 8-byte BPF instructions from libseccomp


def test_an_unsupported_action_in_config_json_is_refused_by_field():
    with pytest.raises(InvalidArgument, match="^config.json: linux.seccomp has action 'SCMP_ACT_NOTIFY'"):
        from minicontainer.runtime.oci import check_seccomp
        check_seccomp({"defaultAction": "SCMP_ACT_NOTIFY"})
