"""The step player (minicontainer/step_player.py), driven without a browser: the widget is
built (no frontend is needed for that), its buttons are clicked with ``button.click()``,
and what it shows is read back: the frame, the picture, the static fallback.

A Trace's picture is derived from its steps; a live Sandbox's is read from the kernel, so
those tests take real steps in a real sandbox and compare with /proc themselves."""
from __future__ import annotations

import html
import os
import re
import sys

import pytest

import minicontainer
from minicontainer import Sandbox, StepPlayer
from minicontainer.kernel.namespaces import namespace_ids
from minicontainer.step_player import PLAYER_STYLE, picture_of_sandbox
from minicontainer.trace import TRACE_STYLE


@pytest.fixture(scope="module")
def run_trace():
    """The trace of one real run with a memory limit (its container is gone when the test starts)."""
    return minicontainer.run("busybox", ["true"], memory="64m").trace


def frame_named(player: StepPlayer, name: str) -> int:
    return next(i for i, f in enumerate(player.frames) if f.title.split(" ×")[0] == name)


# ---------------------------------------------------------------- a Trace

def test_a_trace_player_starts_before_the_first_step_and_next_and_back_move_one_frame(run_trace):
    player = StepPlayer(run_trace)
    player.widget()
    assert player.position == 0 and player.frame.steps == []
    assert player.back_button.disabled and not player.next_button.disabled
    assert "0 / " in player.view.value and "Press Next" in player.view.value
    player.next_button.click()
    assert player.position == 1 and player.slider.value == 1
    assert player.frame.steps[0] is run_trace[0]
    assert f"<b>{run_trace[0].name}" in player.view.value and not player.back_button.disabled
    player.back_button.click()
    assert player.position == 0 and player.slider.value == 0
    player.slider.value = 5   # dragging the slider jumps there
    assert player.position == 5 and player.position_label.value.endswith(f"step 5 of {len(player.frames) - 1}</span>")


def test_each_frame_shows_the_steps_call_shell_why_result_and_evidence(run_trace):
    player = StepPlayer(run_trace)
    player.widget()
    player.go(frame_named(player, "sethostname"))
    step = run_trace.find("sethostname")
    shown = player.view.value
    for text in (step.name, step.call, step.shell, step.why, step.result, "hostname", step.evidence["hostname"]):
        assert html.escape(text) in shown, f"{text!r} is not shown"


def test_runs_of_the_same_step_are_one_frame_and_the_last_frame_disables_next(run_trace):
    player = StepPlayer(run_trace)
    player.widget()
    devices = player.frames[frame_named(player, "cgroup_devices")]
    assert len(devices.steps) == run_trace.names().count("cgroup_devices") > 1
    assert devices.title == f"cgroup_devices ×{len(devices.steps)}"
    assert sum(len(f.steps) for f in player.frames) == len(run_trace)
    player.go(len(player.frames) - 1)
    assert player.next_button.disabled
    player.next_button.click()   # does nothing: a Trace has no more steps to take
    assert player.position == len(player.frames) - 1


def test_the_derived_picture_follows_unshare_fork_cgroup_join_and_pivot_root(run_trace):
    player = StepPlayer(run_trace)
    start = player.frames[0].picture
    assert not any(v.new for v in start.namespaces.values()) and start.root == "the host's /"

    unshared = player.frames[frame_named(player, "unshare")].picture
    assert all(unshared.namespaces[k].new for k in ("pid", "mnt", "uts", "ipc", "net"))
    assert not unshared.namespaces["cgroup"].new   # the cgroup namespace comes after the join
    assert "next child" in unshared.namespaces["pid"].detail
    mnt_id = run_trace.find("unshare").evidence["mnt ns"].split("→")[1].strip()
    assert mnt_id in unshared.namespaces["mnt"].detail

    forks = [s for s in run_trace if s.name == "fork"]
    setup_pid = forks[0].result.rsplit(" ", 1)[1]
    init_pid = forks[1].result.rsplit(" ", 1)[1]
    forked = player.frames[[i for i, f in enumerate(player.frames) if f.title == "fork"][1]].picture
    assert [depth for depth, _ in forked.processes] == [0, 1, 2]
    assert f"host pid {setup_pid}" in forked.processes[1][1]
    assert forked.processes[2][1].startswith(f"PID 1 of the new PID namespace (host pid {init_pid})")
    assert "PID 1 is in it" in forked.namespaces["pid"].detail

    joined = player.frames[frame_named(player, "cgroup_join")].picture
    assert f"(host pid {init_pid}) joined" in joined.cgroup and "67108864" in joined.cgroup

    overlay = player.frames[frame_named(player, "mount_overlay")].picture
    assert any(m.startswith("overlay on <rootfs>") for m in overlay.mounts) and overlay.root == "the host's /"
    pivoted = player.frames[frame_named(player, "pivot_root")].picture
    assert pivoted.root.startswith("the image's overlay")
    assert any(m.startswith("overlay on / ") for m in pivoted.mounts)
    assert any(m.startswith("proc on /proc ") for m in pivoted.mounts)
    assert "detached" in player.frames[frame_named(player, "umount_old_root")].picture.root

    last = player.frames[-1].picture
    assert "removed" in last.cgroup and all("exited" in label for _, label in last.processes[1:])


def test_a_planned_trace_plays_too_without_any_pid(run_trace):
    player = StepPlayer(minicontainer.plan("busybox", "true"))
    forked = player.frames[[i for i, f in enumerate(player.frames) if f.title == "fork"][1]].picture
    assert [label.split("\n")[0] for _, label in forked.processes] == \
        ["the engine", "setup child", "PID 1 of the new PID namespace"]
    assert player.frames[frame_named(player, "pivot_root")].picture.root.startswith("the image's overlay")


# ---------------------------------------------------------------- a live Sandbox

def test_next_on_a_live_sandbox_takes_the_step_for_real_and_reads_the_picture_from_the_kernel():
    with Sandbox("busybox") as sb:
        player = StepPlayer(sb)
        player.widget()
        host = namespace_ids()
        assert player.next_button.description == "Take unshare ▶"
        assert not any(v.new for v in player.frame.picture.namespaces.values())
        player.next_button.click()
        assert sb.trace.names()[:2] == ["unshare", "fork"], "Next should have unshared the sandbox for real"
        uts = player.frame.picture.namespaces["uts"]
        assert uts.new and uts.detail.startswith(str(namespace_ids(sb.pid)["uts"]))
        assert namespace_ids(sb.pid)["uts"] != host["uts"] and f"(host: {host['uts']})" in uts.detail
        assert not player.frame.picture.namespaces["cgroup"].new
        # the tree: this process, the helper that waits, and its child, PID 1 of the new PID namespace
        tree = [label for _, label in player.frame.picture.processes]
        assert f"(host pid {os.getpid()})" in tree[0]
        assert tree[-1].startswith("the sandbox: ") and f"(host pid {sb.pid}, PID 1 inside" in tree[-1]
        assert player.next_button.description == "Take sethostname ▶"


def test_back_on_a_live_sandbox_shows_the_earlier_picture_and_next_replays_before_taking_more():
    with Sandbox("busybox") as sb:
        player = StepPlayer(sb)
        player.widget()
        player.next_button.click()   # unshare
        player.next_button.click()   # sethostname
        taken = len(sb.trace)
        player.back_button.click()
        player.back_button.click()
        assert player.position == 0 and not player.frame.picture.namespaces["uts"].new, \
            "frame 0 is the picture taken before unshare: Back can't undo a kernel step, it shows what was"
        assert "sandbox has moved on" in player.position_label.value
        player.next_button.click()
        player.next_button.click()
        assert player.position == 2 and len(sb.trace) == taken, "Next replays the frames it has first"
        assert player.next_button.description == "Take loopback_up ▶"
        player.next_button.click()
        assert len(sb.trace) == taken + 1 and sb.trace.names()[-1] == "loopback_up"


def test_after_pivot_root_the_live_picture_has_the_overlay_as_root_and_only_the_containers_mounts():
    with Sandbox("busybox") as sb:
        player = StepPlayer(sb)
        player.widget()
        while player.next_step_name():
            before = player.frame.picture
            player.next_button.click()
            assert not player.frame.error, player.frame.error
            if player.frame.title == "mount_overlay":
                assert before.root.startswith("the host's /")
                assert [m for m in player.frame.picture.mounts if m.startswith("overlay on ")] == \
                    [f"overlay on {sb.spec.rootfs}"]
            if player.frame.title == "cgroup_join":
                assert player.frame.picture.cgroup.startswith("its own: ") and sb.cgroup.name in player.frame.picture.cgroup
                assert [s.name for s in player.frame.steps][-1] == "cgroup_join"
                assert "other steps it took: cgroup_create" in player.view.value
        assert player.frame.title == "pivot_root" and player.next_button.disabled
        picture = player.frame.picture
        assert picture.root.startswith("its own: the overlay mount at /")
        with open(f"/proc/{sb.pid}/mountinfo") as f:
            mount_points = [line.split()[4] for line in f]
        assert mount_points[0] == "/" and all(f"on {m}" in " ".join(picture.mounts) for m in mount_points)
        assert "proc on /proc" in picture.mounts and "sysfs on /sys" in picture.mounts


def test_a_failed_live_step_is_shown_with_its_error_and_the_player_stops():
    # pivot_root before the overlay is mounted: the kernel refuses (the new root is no mount point)
    with Sandbox("busybox") as sb:
        player = StepPlayer(sb, steps=(("unshare", lambda s: s.unshare("pid", "mnt")),
                                       ("pivot_root", lambda s: s.pivot_root())))
        player.widget()
        player.next_button.click()
        player.next_button.click()
        assert player.frame.error.startswith("pivot_root failed: ") and "start a new Sandbox" in player.frame.error
        assert player.frame.steps and player.frame.steps[-1].error
        assert player.next_button.disabled and "stopped" in player.position_label.value
        assert 'class="mc-error-text"' in player.view.value


def test_the_live_picture_says_when_the_sandbox_is_gone():
    with Sandbox("busybox") as sb:
        player = StepPlayer(sb, steps=(("unshare", lambda s: s.unshare("pid", "mnt")),
                                       ("execve", lambda s: s.exec(["true"]))))
        player.next()
        player.next()   # exec: the sandbox's PID 1 becomes `true`, which exits
        assert player.frame.steps[-1].name == "execve" and not player.frame.error
        assert player.frame.picture.processes == [(0, "the sandbox has finished (exit code 0)")]
        assert player.frame.picture.namespaces == {}
    closed = Sandbox("busybox")
    closed.close()
    assert picture_of_sandbox(closed).processes == [(0, "the sandbox has exited or was closed")]


def test_a_sandbox_that_took_steps_before_the_player_is_not_asked_to_take_them_again():
    with Sandbox("busybox") as sb:
        sb.unshare("pid", "mnt", "uts", "ipc", "net")
        player = StepPlayer(sb)
        assert player.next_step_name() == "sethostname"
        assert player.frame.picture.namespaces["net"].new and "1 steps" not in player.frame.title


# ---------------------------------------------------------------- static fallback and page safety

def test_the_static_fallback_has_every_frame_as_text_and_html_beside_the_widget(run_trace):
    player = StepPlayer(run_trace)
    bundle = player._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"}
    total = len(player.frames) - 1
    assert [int(n) for n in re.findall(rf"^\[(\d+)/{total}\]", bundle["text/plain"], re.M)] == list(range(total + 1))
    page = bundle["text/html"]
    assert page.startswith('<div class="mc-player ') and page.count('<details class="mc-static"') == total + 1
    assert page.count(TRACE_STYLE) == 1 and page.count(PLAYER_STYLE) == 1, "the styles once, not once per frame"
    for step in run_trace:
        assert step.why[:40] in bundle["text/plain"]
    assert player.widget()._model_id == bundle["application/vnd.jupyter.widget-view+json"]["model_id"]


def test_without_ipywidgets_the_player_still_shows_every_frame(run_trace, monkeypatch):
    # ipywidgets is installed here; a None entry in sys.modules makes its import fail, as on a
    # machine without it (the engine must never need it)
    monkeypatch.setitem(sys.modules, "ipywidgets", None)
    player = StepPlayer(run_trace)
    assert player.widget() is None
    assert set(player._repr_mimebundle_()) == {"text/plain", "text/html"}
    assert player.next().steps[0] is run_trace[0]


def test_the_widget_root_carries_the_stable_mc_player_class_and_every_player_style_is_scoped(run_trace):
    player = StepPlayer(run_trace)
    assert "mc-player" in player.widget()._dom_classes
    rules = re.sub(r"\{[^}]*\}", "{}", PLAYER_STYLE.removeprefix("<style>").removesuffix("</style>"))
    selectors = [s.strip() for rule in rules.split("{}") for s in rule.split(",") if s.strip()]
    assert selectors and all(s.startswith(".mc-player") for s in selectors), selectors
    assert not re.search(r"width:\s*\d{4,}px", PLAYER_STYLE), "no fixed width: the output area is about 1,000 px"
    assert "mc-trace" in player.view.value, "the step table takes TRACE_STYLE's rules, not a copy of them"


def test_text_a_container_controls_is_escaped_never_markup():
    # a hostname, a command line or a path inside the container ends up in steps and pictures
    hostile = '<img src=x onerror="alert(1)">'
    steps = [minicontainer.Step("sethostname", call=f"sethostname({hostile!r})", shell=f"hostname {hostile}",
                                why=hostile, result=hostile, evidence={hostile: hostile}),
             minicontainer.Step("execve", call=f"execve({hostile!r})", shell=hostile, error=hostile)]
    player = StepPlayer(minicontainer.Trace(steps))
    player.widget()
    pages = [player.static_html()] + [player.go(i) and player.view.value for i in range(1, len(player.frames))]
    for page in pages:
        assert "<img" not in page and html.escape(hostile) in page
    assert player.frames[1].picture.hostname == hostile   # kept as text, shown escaped
