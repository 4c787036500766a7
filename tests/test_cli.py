"""The `minicontainer` command line, run as a real subprocess like a learner would."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "minicontainer"]


def mc(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=120, **kwargs)


def test_run_prints_output_and_propagates_the_exit_code():
    done = mc("run", "--rm", "busybox", "sh", "-c", "echo hello; exit 7")
    assert done.stdout == "hello\n"
    assert done.returncode == 7


def test_stdin_passes_through():
    done = mc("run", "--rm", "busybox", "wc", "-c", input="12345")
    assert done.stdout.strip() == "5"


def test_options_after_the_image_belong_to_the_command():
    done = mc("run", "--rm", "-e", "A=1", "--hostname", "h1", "busybox", "sh", "-c", "echo $A $(hostname)")
    assert done.stdout == "1 h1\n"


def test_oom_kill_exits_137_with_a_one_line_message():
    done = mc("run", "--rm", "-m", "32m", "busybox", "sh", "-c", "head -c 200m /dev/zero | tail")
    assert done.returncode == 137
    assert done.stderr.strip().splitlines()[-1] == "killed: out of memory (limit 32 MiB)"


def test_ctrl_c_is_forwarded_to_the_containers_pid_1(tmp_path):
    ready = tmp_path / "ready"
    ready.mkdir()
    proc = subprocess.Popen(CLI + ["run", "--rm", "-v", f"{ready}:/ready", "busybox", "sh", "-c",
                                   "trap 'echo got INT; exit 42' INT; touch /ready/now; "
                                   "while :; do sleep 0.05; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (ready / "now").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "got INT" in out
    assert proc.returncode == 42


def test_ctrl_c_at_a_terminal_reaches_the_whole_process_group_and_the_exit_code_survives(tmp_path):
    # a terminal sends SIGINT to every process of the foreground group: the CLI, the engine's
    # setup child (which waits for PID 1 and must survive to report its status) and PID 1
    ready = tmp_path / "ready"
    ready.mkdir()
    proc = subprocess.Popen(CLI + ["run", "--rm", "-v", f"{ready}:/ready", "busybox", "sh", "-c",
                                   "trap 'exit 42' INT; touch /ready/now; while :; do sleep 0.05; done"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while not (ready / "now").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 42, err


def test_trace_goes_to_stderr_after_the_output():
    done = mc("run", "--rm", "--trace", "busybox", "true")
    assert done.returncode == 0
    for name in ("unshare", "mount_overlay", "pivot_root", "execve"):
        assert name in done.stderr


def test_explain_shows_the_plan_and_runs_nothing():
    done = mc("run", "--explain", "-m", "64m", "busybox", "touch", "/tmp/x")
    assert done.returncode == 0
    assert "pivot_root" in done.stdout and "(planned)" not in done.stdout
    assert "ms" not in done.stdout.split("\n")[0]
    listing = os.listdir(os.path.join(os.environ["MINICONTAINER_ROOT"], "containers")) \
        if os.path.exists(os.path.join(os.environ["MINICONTAINER_ROOT"], "containers")) else []
    assert [n for n in listing if n != ".lock"] == []


@pytest.mark.parametrize("args, message", [
    (["run", "-m", "lots", "busybox", "true"], "memory"),
    (["run", "-v", "/does/not/exist:/data", "busybox", "true"], "does not exist on the host"),
    (["run", "nosuchimage", "true"], "not found"),
    (["run", "Bad/Name", "true"], "lowercase"),
    (["run", "--cpus", "99", "busybox", "true"], "cpus"),
    # issue 11: each of these used to start a container, print usage, or fail after the cgroup was made
    (["run", "-m", "1k", "busybox", "true"], "the minimum is 6m (6 MiB), as in docker"),
    (["run", "-m", "-5m", "busybox", "true"], "invalid memory size '-5m'"),
    (["create", "--memory", "-5m", "busybox"], "invalid memory size '-5m'"),
    (["run", "--pids-limit", "abc", "busybox", "true"], "invalid --pids-limit 'abc': give a whole number"),
    (["run", "--pids-limit", "99999999999999999999", "busybox", "true"], "from 1 to 4194304"),
    (["run", "--pids-limit", "0", "busybox", "true"], "from 1 to 4194304"),
    (["run", "-v", "/tmp:/proc", "busybox", "true"], "/proc is inside /proc"),
    (["run", "-v", "/tmp:/proc/sys/x", "busybox", "true"], "is inside /proc, which the container mounts itself"),
    (["run", "-v", "/tmp:/dev", "busybox", "true"], "/dev is inside /dev"),
    (["run", "-v", "/tmp:/dev/data/", "busybox", "true"], "/dev/data is inside /dev"),
    (["run", "-v", "/tmp:/sys/fs/x", "busybox", "true"], "/sys/fs/x is inside /sys"),
    (["run", "--bogus", "busybox", "true"], "unrecognized arguments: --bogus"),
    (["tag", "busybox"], "the following arguments are required: target: see 'minicontainer tag --help'"),
    (["run", "-m", "99999999999999999999999g", "busybox", "true"], "more than a cgroup can hold"),
    (["save", "-o", "/proc/version", "busybox"], "cannot write /proc/version"),
    (["registry", "htpasswd", "/nonexistent/dir/f", "u", "--password-stdin"],
     "registry htpasswd: No such file or directory: /nonexistent/dir/"),
])
def test_bad_input_gets_one_clear_line_and_exit_125(args, message):
    done = mc(*args)
    assert done.returncode == 125
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    containers = os.path.join(os.environ["MINICONTAINER_ROOT"], "containers")
    assert [n for n in (os.listdir(containers) if os.path.exists(containers) else []) if n != ".lock"] == [], \
        "bad input must be refused before a container exists"


def test_a_value_that_starts_with_a_dash_is_still_the_options_value_and_the_command_keeps_its_own():
    # docker takes the word after -m as its value; words after the image belong to the command
    done = mc("run", "--rm", "-e", "A=-1", "busybox", "sh", "-c", "echo $A \"$@\"", "sh", "-m", "-5m")
    assert done.returncode == 0 and done.stdout == "-1 -m -5m\n", done.stderr


def test_volumes_beside_the_kernel_mounts_are_still_allowed(tmp_path):
    (tmp_path / "marker").write_text("here")
    done = mc("run", "--rm", "-v", f"{tmp_path}:/devdata", "busybox", "cat", "/devdata/marker")
    assert done.stdout == "here", done.stderr


def test_pids_limit_and_memory_at_their_bounds_are_accepted():
    from minicontainer.engine.run import RunOptions

    opts = RunOptions.parse("busybox", ["true"], memory="6m", pids_limit="4194304")
    assert (opts.memory, opts.pids_limit) == (6 << 20, 4194304)
    assert RunOptions.parse("busybox", memory=6 << 20, pids_limit=64).pids_limit == 64


def _as_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


@pytest.mark.parametrize("args", [
    ["tag", "busybox", "x:1"], ["image", "prune"], ["load", "-i", "missing"], ["images"], ["ps", "-a"],
    ["rmi", "busybox"], ["inspect", "busybox"], ["history", "busybox"], ["save", "-o", "/tmp/x.tar", "busybox"],
    ["pull", "127.0.0.1:9/x"], ["push", "127.0.0.1:9/x"], ["stop", "x"], ["rm", "x"], ["logs", "x"],
    ["exec", "x", "true"], ["cp", "x:/a", "/tmp/b"], ["rename", "x", "y"], ["container", "prune"], ["stats"],
    ["registry", "serve", "--addr", "127.0.0.1:0"], ["create", "busybox"], ["run", "busybox", "true"],
    ["kill", "x"], ["pause", "x"], ["unpause", "x"], ["wait", "x"], ["start", "x"], ["restart", "x"],
    ["attach", "x"], ["top", "x"], ["commit", "x"],
])
def test_every_verb_as_a_non_root_user_ends_in_one_line_and_a_non_zero_exit(engine_root, args):
    from minicontainer.image.store import ImageStore

    ImageStore(engine_root)   # an engine root that exists, root's only, as after any root command
    os.chmod(engine_root.parent, 0o755)    # the per-test dir: others may pass, as /var/lib is
    done = subprocess.run(CLI + args, capture_output=True, text=True, preexec_fn=_as_nobody, cwd="/",
                          stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    # most verbs meet the engine's root-only state and say to use sudo; registry serve names its storage dir
    assert done.stderr.startswith("minicontainer") and ("sudo" in done.stderr or "Permission denied" in done.stderr), \
        done.stderr


def test_command_not_found_exits_127():
    done = mc("run", "--rm", "busybox", "nosuchcmd")
    assert done.returncode == 127
    assert "executable file not found" in done.stderr


def test_not_root_gets_a_clear_error():
    def drop_root():
        os.setgid(65534)
        os.setuid(65534)

    env = {**os.environ, "MINICONTAINER_ROOT": "/nonexistent/root"}
    done = subprocess.run(CLI + ["run", "busybox", "true"], capture_output=True, text=True, env=env,
                          preexec_fn=drop_root, cwd="/", timeout=60)
    assert done.returncode == 125
    assert done.stderr.strip() == "minicontainer: running a container needs root (CAP_SYS_ADMIN for " \
                                  "namespaces, mounts and cgroups): run it with sudo"


def test_images_lists_the_builtin_busybox():
    done = mc("images")
    header, *rows = done.stdout.splitlines()
    assert header.split()[:2] == ["REPOSITORY", "TAG"]
    assert any(r.split()[:2] == ["busybox", "latest"] for r in rows)


def test_version_names_the_cgroup_mode():
    done = mc("version")
    assert done.returncode == 0
    from minicontainer.kernel.cgroups import detect_mode

    assert "minicontainer 0.1.0" in done.stdout and detect_mode() in done.stdout   # hybrid here, unified in the v2 guest


def test_whole_run_works_when_root_is_shared_like_on_a_systemd_host():
    # The students' VM has / shared (systemd); this machine doesn't. Reproduce it in a
    # throwaway mount namespace: without MS_PRIVATE first, pivot_root would fail with EINVAL
    # and the container's mounts would propagate back here.
    script = ("mount --make-rshared / && grep -c overlay /proc/self/mountinfo; "
              f"{' '.join(CLI)} run --rm busybox sh -c 'echo inside' && "
              "grep -c overlay /proc/self/mountinfo; true")
    done = subprocess.run(["unshare", "--mount", "--propagation", "unchanged", "sh", "-c", script],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before, inside, after = done.stdout.split()
    assert inside == "inside"
    # no container mount propagated back into the (shared) parent namespace (in the v2
    # guest, / itself is an overlay: hence counting before and after)
    assert after == before


def test_image_verbs_tag_history_inspect_save_rmi_load_round_trip(tmp_path):
    assert mc("tag", "busybox", "localhost:5000/student/busybox:v1").returncode == 0
    rows = [r.split()[:2] for r in mc("images").stdout.splitlines()[1:]]
    assert ["localhost:5000/student/busybox", "v1"] in rows
    history = mc("history", "busybox").stdout.splitlines()
    assert history[0].split()[0] == "IMAGE" and "busybox" in history[1]
    import json
    [info] = json.loads(mc("inspect", "busybox").stdout)
    assert info["Os"] == "linux" and len(info["RootFS"]["Layers"]) == 1
    archive = tmp_path / "bb.tar"
    assert mc("save", "-o", str(archive), "--format", "docker", "localhost:5000/student/busybox:v1").returncode == 0
    assert mc("rmi", "localhost:5000/student/busybox:v1").stdout.startswith("Untagged:")
    assert mc("load", "-i", str(archive)).stdout.strip() == "Loaded image: localhost:5000/student/busybox:v1"


def test_rmi_of_a_missing_image_is_one_line_and_exit_1():
    done = mc("rmi", "nope")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1


def test_registry_serve_refuses_a_non_loopback_address():
    done = mc("registry", "serve", "--addr", "0.0.0.0:5999")
    assert done.returncode == 125 and "--allow-remote" in done.stderr


def test_push_pull_login_logout_against_a_private_registry(engine_root):
    from minicontainer.registry.server import RegistryServer

    with RegistryServer(engine_root / "registry", "127.0.0.1:0", users={"student": "s3cret"}) as registry:
        host = registry.url.removeprefix("http://")
        ref = f"{host}/student/busybox:v1"
        assert mc("tag", "busybox", ref).returncode == 0
        denied = mc("push", ref)
        assert denied.returncode == 125 and "minicontainer login" in denied.stderr
        assert len(denied.stderr.strip().splitlines()) == 1
        login = mc("login", "-u", "student", "--password-stdin", host, input="s3cret\n")
        assert login.stdout.strip() == "Login Succeeded"
        assert mc("push", "-q", ref).stdout.startswith("sha256:")
        assert mc("rmi", ref).returncode == 0
        pulled = mc("pull", "-q", ref)
        assert pulled.returncode == 0 and pulled.stdout.startswith("Digest: sha256:")
        assert ref.split("/", 1)[1].split(":")[0] in mc("images").stdout
        assert mc("logout", host).stdout.startswith("Removing login credentials")
        assert not (engine_root.parent / "config" / "auth.json").read_text().count(host)


def test_security_flags_reach_the_container():
    done = mc("run", "--rm", "--cap-drop", "ALL", "--security-opt", "no-new-privileges=false",
              "busybox", "grep", "-E", "^(CapEff|NoNewPrivs)", "/proc/self/status")
    assert done.stdout.split() == ["CapEff:", "0000000000000000", "NoNewPrivs:", "0"], done.stderr
    refused = mc("run", "--rm", "--cap-add", "BOGUS", "busybox", "true")
    assert refused.returncode == 125 and refused.stderr.startswith("minicontainer: unknown capability 'BOGUS'")
    assert "Traceback" not in refused.stderr and refused.stderr.count("\n") == 1


def test_seccomp_options_reach_the_container(tmp_path):
    done = mc("run", "--rm", "--security-opt", "seccomp=unconfined", "busybox", "grep", "^Seccomp:", "/proc/self/status")
    assert done.stdout.split() == ["Seccomp:", "0"], done.stderr
    (tmp_path / "bad.json").write_text("{")
    refused = mc("run", "--rm", "--security-opt", f"seccomp={tmp_path}/bad.json", "busybox", "true")
    assert refused.returncode == 125 and "is not valid JSON" in refused.stderr and refused.stderr.count("\n") == 1


def test_inspect_shows_a_containers_bundle_and_still_finds_images(engine_root):
    assert mc("run", "--name", "kept", "-v", "/etc:/host-etc:ro", "busybox", "true").returncode == 0
    shown = json.loads(mc("inspect", "kept").stdout)[0]
    assert shown["Name"] == "/kept" and shown["State"]["Status"] == "exited" and shown["State"]["ExitCode"] == 0
    assert shown["Mounts"] == [{"Type": "bind", "Source": "/etc", "Destination": "/host-etc", "Mode": "ro", "RW": False,
                                "Propagation": "rprivate"}]
    config = json.loads(open(shown["Bundle"]["Config"]).read())   # the OCI config.json the runtime ran
    assert config["process"]["args"] == ["true"] and shown["Bundle"]["Path"].endswith("/bundle")
    assert shown["GraphDriver"]["Data"]["UpperDir"].endswith(shown["Id"] + "/upper")
    assert shown["GraphDriver"]["Data"]["LowerDir"] == config["annotations"]["org.minicontainer.overlay.lowerdir"]
    assert json.loads(mc("inspect", shown["Id"][:10]).stdout)[0]["Id"] == shown["Id"]   # a unique id prefix
    assert json.loads(mc("inspect", "busybox").stdout)[0]["RepoTags"] == ["busybox:latest"]
    missing = mc("inspect", "nothing-here")
    assert missing.returncode != 0 and missing.stderr.startswith("minicontainer: no such container or image: nothing-here")
    assert missing.stderr.count("\n") == 1
    shutil.rmtree(engine_root / "containers" / shown["Id"])   # no `rm` verb yet (the lifecycle issue)


def test_an_unexpected_error_is_still_one_line_that_says_how_to_see_the_traceback(monkeypatch, capsys):
    from minicontainer import cli

    def broken(args):
        raise RuntimeError("something\nunforeseen")
    monkeypatch.setattr(cli, "cmd_version", broken)
    assert cli.main(["version"]) == 125
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("minicontainer: internal error in version: RuntimeError: something unforeseen: this is a bug")
    assert "MINICONTAINER_DEBUG=1" in err
    monkeypatch.setenv("MINICONTAINER_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["version"])


def test_pull_help_lists_each_limit_setting_with_the_default_the_code_uses():
    from minicontainer.image import limits
    from minicontainer.registry import transfer

    shown = mc("pull", "--help").stdout
    defaults = {**{name: f"{size >> 20}m" if size < 1 << 30 else f"{size >> 30}g" for name, size in limits.DEFAULTS.items()},
                transfer.TOTAL_SETTING: f"{transfer.DEFAULT_TOTAL:g}", transfer.STALL_SETTING: f"{transfer.DEFAULT_STALL:g}",
                transfer.ATTEMPTS_SETTING: str(transfer.DEFAULT_ATTEMPTS)}
    for name, default in defaults.items():
        [line] = [line for line in shown.splitlines() if line.split()[:1] == [name]]
        assert line.endswith(f"(default {default})"), line
