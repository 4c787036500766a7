"""Dockerfile builds: the parser, each instruction as one step, the cache, and what a failed step leaves (nothing)."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import minicontainer
from minicontainer.engine.build import BuildError, build, is_ignored, read_dockerignore
from minicontainer.engine.images import find_image, open_store, _resolve
from minicontainer.image import dockerfile as df

CLI = [sys.executable, "-m", "minicontainer"]


def _context(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Path:
    ctx = tmp_path / "ctx"
    ctx.mkdir(exist_ok=True)
    (ctx / "Dockerfile").write_text(dockerfile)
    for name, text in (files or {}).items():
        (ctx / name).parent.mkdir(parents=True, exist_ok=True)
        (ctx / name).write_text(text)
    return ctx


def _quiet(text: str) -> None:
    pass


def _image(ref: str):
    store = open_store()
    return _resolve(store, find_image(store, ref), ref)


# ---- the parser --------------------------------------------------------------------------

def test_continuations_comments_and_the_escape_directive():
    text = "# escape=`\nFROM busybox\nRUN echo a `\n# a comment inside\n    && echo b\nCMD [\"sh\"]\n"
    instructions = df.parse(text)
    assert [(i.keyword, i.line) for i in instructions] == [("FROM", 2), ("RUN", 3), ("CMD", 6)]
    assert instructions[1].args == "echo a      && echo b"
    assert instructions[2].exec_form == ["sh"]


@pytest.mark.parametrize("text, message", [
    ("FROM busybox\nFLY away\n", "Dockerfile:2: unknown instruction: FLY"),
    ("RUN true\n", "Dockerfile:1: RUN before FROM"),
    ("# nothing\n", "no FROM instruction"),
    ("FROM busybox\nHEALTHCHECK CMD true\n", "Dockerfile:2: HEALTHCHECK is not supported"),
    ("FROM busybox\nENV\n", "Dockerfile:2: ENV needs arguments"),
    ("FROM busybox\nENV A 'unclosed\n", None),
])
def test_parse_errors_name_the_line_and_the_fix(text, message):
    if message is None:   # the old ENV form takes the rest of the line as the value, quotes and all
        assert df.parse(text)[1].args == "A 'unclosed"
        return
    with pytest.raises(df.DockerfileError, match=message) as info:
        df.parse(text)
    assert "\n" not in str(info.value)


def test_variable_substitution_forms():
    values = {"A": "1", "EMPTY": ""}
    assert df.substitute("$A ${A} ${B:-dflt} ${A:+alt} ${EMPTY:-e} ${B:+x}|\\$A", values) == "1 1 dflt alt e |$A"


def test_dockerignore_rules_and_exceptions(tmp_path):
    (tmp_path / ".dockerignore").write_text("# build junk\n*.log\n**/*.tmp\nsecrets\n!secrets/public.txt\n")
    rules = read_dockerignore(tmp_path)
    assert is_ignored("app.log", rules) and not is_ignored("src/app.log", rules)   # *.log: the top level only
    assert is_ignored("src/deep/x.tmp", rules)
    assert is_ignored("secrets/key", rules) and not is_ignored("secrets/public.txt", rules)


# ---- building --------------------------------------------------------------------------

DOCKERFILE = """\
ARG BASE=busybox
FROM $BASE
ARG GREETING=hi
ENV APP=/app \\
    MODE=test
WORKDIR $APP
COPY src/ ./src/
RUN echo "$GREETING from $(pwd)" > greeting.txt && grep -E '^(Seccomp|NoNewPrivs):' /proc/self/status > profile.txt
LABEL org.example.course=yes
EXPOSE 8080
CMD ["cat", "/app/greeting.txt"]
"""


def test_each_instruction_is_one_step_and_the_image_runs(tmp_path):
    ctx = _context(tmp_path, DOCKERFILE, {"src/a.txt": "a\n", "notes.log": "x"})
    (ctx / ".dockerignore").write_text("*.log\n")
    result = build(ctx, tag="course/demo:1", output=_quiet)
    image = _image("course/demo:1")
    base = _image("busybox")
    new_history = image.config["history"][len(base.config["history"]):]
    assert len(new_history) == 8, "one history entry per instruction after FROM (the first ARG is the build's)"
    assert [not h.get("empty_layer", False) for h in new_history] == [False, False, False, True, True,
                                                                     False, False, False]
    assert len(image.diff_ids) == len(base.diff_ids) + 2, "COPY and RUN made a layer each; the rest only config"
    config = image.config["config"]
    assert config["WorkingDir"] == "/app" and "MODE=test" in config["Env"] and config["Cmd"] == ["cat", "/app/greeting.txt"]
    assert config["ExposedPorts"] == {"8080/tcp": {}} and config["Labels"] == {"org.example.course": "yes"}
    assert minicontainer.run("course/demo:1").stdout == "hi from /app\n"
    seen = minicontainer.run("course/demo:1", "cat profile.txt; ls /app/src /app")
    assert "Seccomp:\t2" in seen.stdout and "NoNewPrivs:\t1" in seen.stdout   # RUN had the default profile
    assert "notes.log" not in seen.stdout and "a.txt" in seen.stdout
    assert result.cached == [False] * 8


def test_a_rebuild_is_all_cache_and_a_changed_line_rebuilds_from_there(tmp_path):
    ctx = _context(tmp_path, DOCKERFILE, {"src/a.txt": "a\n"})
    first = build(ctx, tag="course/cache:1", output=_quiet)
    again = build(ctx, tag="course/cache:1", output=_quiet)
    assert again.cached == [True] * 8 and again.image_id == first.image_id
    (ctx / "Dockerfile").write_text(DOCKERFILE.replace("EXPOSE 8080", "EXPOSE 9090"))
    changed = build(ctx, tag="course/cache:1", output=_quiet)
    assert changed.cached == [True] * 6 + [False, False], "only EXPOSE and what follows it run again"
    (ctx / "src" / "a.txt").write_text("changed\n")
    copied = build(ctx, output=_quiet)
    assert copied.cached == [True] * 3 + [False] * 5, "a changed source file invalidates its COPY and after"
    assert build(ctx, no_cache=True, output=_quiet).cached == [False] * 8
    other_arg = build(ctx, build_args={"GREETING": "hello"}, output=_quiet)
    # as Docker: the ARG step itself is cached, the first RUN that can see the new value is not
    assert other_arg.cached == [True] * 4 + [False] * 4
    assert minicontainer.run(other_arg.image_id).stdout == "hello from /app\n"


def test_a_failing_run_shows_its_code_and_tags_nothing(tmp_path, engine_root):
    ctx = _context(tmp_path, "FROM busybox\nRUN echo about to fail; exit 3\nCMD [\"true\"]\n")
    lines = []
    with pytest.raises(BuildError, match=r"^Dockerfile:2: the command '/bin/sh -c echo about to fail; exit 3' "
                                         r"returned a non-zero code: 3$"):
        build(ctx, tag="course/broken", output=lines.append)
    assert "about to fail\n" in lines
    with pytest.raises(minicontainer.MinicontainerError):
        _image("course/broken")
    containers = engine_root / "containers"
    assert [p.name for p in containers.iterdir() if not p.name.startswith(".")] == []


def test_copy_chown_add_archive_and_parent_directories_keep_their_metadata(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        info = tarfile.TarInfo("unpacked/hello.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"hi\n"))
    ctx = _context(tmp_path, "FROM busybox\nCOPY --chown=1:2 one.txt /tmp/one.txt\nADD bundle.tar.gz /opt/\n",
                   {"one.txt": "1\n"})
    (ctx / "bundle.tar.gz").write_bytes(buf.getvalue())
    build(ctx, tag="course/copy", output=_quiet)
    seen = minicontainer.run("course/copy", "stat -c '%u:%g %a %n' /tmp/one.txt /tmp; cat /opt/unpacked/hello.txt")
    assert seen.stdout == "1:2 644 /tmp/one.txt\n0:0 1777 /tmp\nhi\n", seen.output   # /tmp kept its 1777


@pytest.mark.parametrize("dockerfile, message", [
    ("FROM busybox\nCOPY ../outside /x\n", "outside the build context"),
    ("FROM busybox\nCOPY missing.txt /x\n", "COPY source 'missing.txt' not found"),
    ("FROM busybox\nADD https://example.com/x /x\n", "ADD from a URL is not supported"),
    ("FROM no-such-image:1\n", "FROM no-such-image:1: no such image here"),
    ("FROM busybox AS one\nRUN true\nFROM busybox\nCOPY --from=one /x /x\n", "COPY --from .multi-stage"),
])
def test_bad_steps_are_refused_with_the_line(tmp_path, dockerfile, message):
    ctx = _context(tmp_path, dockerfile)
    with pytest.raises(minicontainer.MinicontainerError, match=message) as info:
        build(ctx, output=_quiet)
    assert str(info.value).startswith("Dockerfile:") and "\n" not in str(info.value)


def test_from_scratch_with_a_static_binary(tmp_path):
    ctx = _context(tmp_path, "FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT [\"/bin/busybox\"]\nCMD [\"echo\", \"from scratch\"]\n")
    import shutil
    shutil.copy("/bin/busybox", ctx / "busybox")
    build(ctx, tag="course/scratch", output=_quiet)
    assert _image("course/scratch").config["config"]["Entrypoint"] == ["/bin/busybox"]
    assert minicontainer.run("course/scratch").stdout == "from scratch\n"


def test_the_cli_builds_and_history_shows_each_instruction(tmp_path):
    ctx = _context(tmp_path, "FROM busybox\nENV A=1\nRUN echo hi > /hi\n")
    done = subprocess.run(CLI + ["build", "-t", "course/cli", str(ctx)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Step 3/3 : RUN echo hi > /hi" in done.stdout and "Successfully tagged course/cli:latest" in done.stdout
    again = subprocess.run(CLI + ["build", "-q", "-t", "course/cli", str(ctx)], capture_output=True, text=True)
    assert again.stdout.startswith("sha256:") and again.stdout.count("\n") == 1
    history = subprocess.run(CLI + ["history", "course/cli"], capture_output=True, text=True).stdout
    assert "echo hi > /hi" in history and "ENV A=1" in history
    bad = subprocess.run(CLI + ["build", str(tmp_path / "nope")], capture_output=True, text=True)
    assert bad.returncode == 125 and "is not a directory" in bad.stderr and "Traceback" not in bad.stderr


def test_run_steps_after_user_run_as_that_user(tmp_path):
    ctx = _context(tmp_path, "FROM busybox\nUSER nobody\nRUN id -u > /tmp/who\nUSER root\nCMD [\"cat\", \"/tmp/who\"]\n")
    build(ctx, tag="course/user", output=_quiet)
    assert minicontainer.run("course/user").stdout == "65534\n"
