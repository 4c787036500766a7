"""The step player: walk through a Trace, or drive a live Sandbox, one step at a time.

Each *frame* shows one step (or a run of steps of the same kind): its name, why, call,
shell equivalent, result and evidence, and a small picture of the container as it stands
after that step: its process tree, its namespaces, its root and mounts, its cgroup.

- For a :class:`~minicontainer.trace.Trace` the picture is *derived* from the steps so far:
  which namespaces were unshared, what was mounted or pivoted, which processes were forked.
- For a live :class:`~minicontainer.engine.sandbox.Sandbox` each Next at the end takes the
  next step *for real*, then the picture is *read from the kernel*: /proc/PID/ns inode ids
  against the notebook's own, the sandbox's mountinfo, its parents and children.

In a notebook the player is an ipywidgets widget (Back, Next, a slider); wherever widgets
can't run (nbconvert, a notebook saved without widget state) the same frames show as
static HTML and text. ipywidgets is imported only when a widget is built, so the engine
never needs it.

    StepPlayer(minicontainer.run("busybox", "true").trace)
    StepPlayer(Sandbox("busybox"))
"""
from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field

from .engine.sandbox import Sandbox
from .errors import MinicontainerError
from .kernel.cgroups import MountEntry, parse_mountinfo, parse_proc_cgroup
from .kernel.namespaces import NAMESPACES, namespace_ids
from .kernel.syscalls import namespace_flag_names
from .trace import NO_MATH, PLANNED, TRACE_STYLE, Step, Trace, _short_ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable


# ---- what a frame shows ---------------------------------------------------------------
@dataclass
class NamespaceView:
    """One kind of namespace, as the container has it after a step."""

    kind: str
    new: bool          # the container's own, not the host's
    detail: str        # ids, or which step made it


@dataclass
class Picture:
    """The container after a step: process tree, namespaces, root and mounts, cgroup."""

    source: str                                   # how we know: derived from steps, or read from the kernel
    processes: list[tuple[int, str]]              # (depth in the tree, label)
    namespaces: dict[str, NamespaceView]
    root: str                                     # what "/" is for the container
    mounts: list[str]                             # mounts the host does not have
    cgroup: str
    hostname: str = ""


@dataclass
class Frame:
    """One position of the player: the steps it shows and the picture after them."""

    title: str
    steps: list[Step]                             # empty for the starting point
    picture: Picture
    error: str = ""                               # a live step that failed


# ---- a Trace: the picture derived from its steps ----------------------------------------
_KIND_OF_FLAG = {namespace_flag_names(flag): kind for kind, (flag, _, _) in NAMESPACES.items()}
_MOUNT_TARGET = re.compile(r'mount\("[^"]*", "([^"]+)"')
_FSTYPE = {"mount_overlay": "overlay", "mount_proc": "proc", "mount_dev": "tmpfs (+ devpts, shm)",
           "mount_sys": "sysfs", "bind_volume": "bind"}


@dataclass
class _Process:
    label: str
    parent: int | None               # index in the list of processes
    notes: list[str] = field(default_factory=list)


class _Replay:
    """Follow a trace step by step, keeping what the steps imply about the container."""

    def __init__(self) -> None:
        self.processes: list[_Process] = []
        self.namespaces = {kind: NamespaceView(kind, False, "the host's") for kind in NAMESPACES}
        self.root = "the host's /"
        self.rootfs = ""
        self.mounts: list[str] = []
        self.cgroup = "none yet: the container would share the host's limits"
        self.cgroup_name = ""
        self.limits: list[str] = []
        self.hostname = ""
        self.pid_namespace_pending = False

    def _root_process(self, step: Step) -> None:
        # A trace that forks before it unshares comes from the engine (run, plan); one that
        # unshares first comes from the process that builds the container itself (a Sandbox).
        if not self.processes:
            who = "the engine" if step.name == "fork" else "the sandbox helper"
            pid = "" if step.result == PLANNED else f" (host pid {step.pid})"
            self.processes.append(_Process(who + pid, None))

    def apply(self, number: int, step: Step) -> None:
        if step.error:
            return   # a failed step changed nothing the next steps rely on
        handler = getattr(self, f"_on_{step.name}", None)
        if handler is not None:
            handler(number, step)

    def _on_fork(self, number: int, step: Step) -> None:
        self._root_process(step)
        # the result ends in the child's host pid: "setup child is host pid N", "PID 1 inside, host pid N"
        host = "" if step.result == PLANNED else f" (host pid {step.result.rsplit(' ', 1)[-1]})"
        if self.pid_namespace_pending:   # the first child after unshare(CLONE_NEWPID)
            self.processes.append(_Process(f"PID 1 of the new PID namespace{host}", len(self.processes) - 1))
            self.pid_namespace_pending = False
            self.namespaces["pid"] = NamespaceView("pid", True, f"new (step {number}): PID 1 is in it")
        else:
            self.processes.append(_Process(f"setup child{host}", len(self.processes) - 1))

    def _on_unshare(self, number: int, step: Step) -> None:
        self._root_process(step)
        inside = step.call[step.call.find("(") + 1:step.call.rfind(")")]
        for flag in inside.split("|"):
            kind = _KIND_OF_FLAG.get(flag)
            if kind is None:
                continue
            ids = step.evidence.get(f"{kind} ns", "")
            new_id = ids.split("→")[-1].strip() if "→" in ids else ""
            if kind == "pid":
                self.pid_namespace_pending = True
                detail = f"new (step {number}): only for the caller's next child"
                self.processes[-1].notes.append("unshared: its next child is PID 1 of a new PID namespace")
            else:
                detail = f"new (step {number})" + (f": {new_id}" if new_id else "")
            self.namespaces[kind] = NamespaceView(kind, True, detail)
            if kind == "mnt":
                self.mounts.append("a copy of the host's mount table, now the container's own")

    def _on_sethostname(self, number: int, step: Step) -> None:
        self.hostname = step.evidence.get("hostname") or step.call.partition("(")[2].strip("')")

    def _on_cgroup_create(self, number: int, step: Step) -> None:
        self.cgroup_name = step.call.rstrip("/").rsplit("/", 1)[-1]
        self.cgroup = f"{self.cgroup_name}: created (step {number}), nobody in it yet"

    def _on_cgroup_write(self, number: int, step: Step) -> None:
        target = step.call.split(" > ", 1)[-1].rsplit("/", 1)[-1]
        value = step.call.split('"')[1] if '"' in step.call else "?"
        self.limits.append(f"{target} = {value}")

    def _on_cgroup_join(self, number: int, step: Step) -> None:
        who = self.processes[-1].label if self.processes else "the calling process"
        self.cgroup = f"{self.cgroup_name or 'the container cgroup'}: {who} joined (step {number})"
        if self.processes:
            self.processes[-1].notes.append(f"in cgroup {self.cgroup_name}")

    def _on_cgroup_remove(self, number: int, step: Step) -> None:
        self.cgroup = f"{self.cgroup_name}: removed (step {number}); it had to be empty, so the container has exited"
        self.root = "gone: the container has exited, and its namespaces and mounts went with its last process"
        for process in self.processes[1:]:
            if "exited" not in process.notes:
                process.notes.append("exited")

    def _on_make_private(self, number: int, step: Step) -> None:
        self.mounts.append(f"every mount made private (step {number}): nothing propagates to the host")

    def _mount(self, number: int, step: Step) -> None:
        found = _MOUNT_TARGET.search(step.call)
        target = found.group(1) if found else "?"
        if step.name == "mount_overlay":
            self.rootfs = target
        self.mounts.append(f"{_FSTYPE.get(step.name, step.name)} on {self._short(target)} (step {number})")

    _on_mount_overlay = _on_mount_proc = _on_mount_dev = _on_mount_sys = _on_bind_volume = _mount

    def _on_pivot_root(self, number: int, step: Step) -> None:
        self.root = f"the image's overlay (pivot_root, step {number}); the host's / is still attached below it"
        self.mounts = [m.replace("<rootfs>/", "/").replace("<rootfs>", "/") for m in self.mounts]

    def _on_umount_old_root(self, number: int, step: Step) -> None:
        self.root = f"the image's overlay; the host's / was detached (step {number}): no way back"
        self.mounts = [m for m in self.mounts if not m.startswith("a copy of the host's")]

    def _on_mask_paths(self, number: int, step: Step) -> None:
        # the result says which paths: "masked /proc/acpi /proc/keys …"
        self.mounts.append(f"{step.name if step.result == PLANNED else step.result} (step {number})")

    _on_readonly_paths = _on_mask_paths

    def _on_execve(self, number: int, step: Step) -> None:
        if self.processes:
            self.processes[-1].notes.append(f"became the command: {step.shell} (step {number})")

    def _security(self, number: int, step: Step) -> None:
        if self.processes:   # "kept 14: chown, …" is long: the count is the picture, the list is in the step
            shown = step.result.split(":")[0] if step.result not in ("ok", PLANNED) else "on"
            self.processes[-1].notes.append(f"{step.name}: {shown} (step {number})")

    _on_drop_capabilities = _on_no_new_privs = _on_seccomp = _security

    def _short(self, path: str) -> str:
        return path.replace(self.rootfs, "<rootfs>") if self.rootfs else path

    def picture(self) -> Picture:
        tree: list[tuple[int, str]] = []
        depth: dict[int, int] = {}
        for i, process in enumerate(self.processes):
            depth[i] = 0 if process.parent is None else depth[process.parent] + 1
            notes = "".join(f"\n· {note}" for note in process.notes)
            tree.append((depth[i], process.label + notes))
        mounts = list(self.mounts)
        if self.rootfs and "<rootfs>" in " ".join(mounts):
            mounts.append(f"<rootfs> = {self.rootfs}")
        return Picture("derived from the steps so far", tree or [(0, "only the engine: no container process yet")],
                       dict(self.namespaces), self.root, mounts, "; ".join([self.cgroup, *self.limits]),
                       self.hostname)


def _group(steps: list[Step]) -> list[tuple[int, list[Step]]]:
    """Runs of steps with the same name by the same process (a cgroup step per hierarchy), numbered from 1."""
    runs: list[tuple[int, list[Step]]] = []
    for number, step in enumerate(steps, 1):
        last = runs[-1][1] if runs else None
        if last and last[-1].name == step.name and last[-1].pid == step.pid and not step.error and \
                step.name not in ("fork", "unshare"):
            last.append(step)
        else:
            runs.append((number, [step]))
    return runs


def frames_of_trace(trace: Trace | list[Step]) -> list[Frame]:
    """A starting frame, then one per step (runs of the same step grouped), each with its derived picture."""
    steps = list(trace)
    replay = _Replay()
    frames = [Frame("before the first step", [], replay.picture())]
    for number, run in _group(steps):
        for offset, step in enumerate(run):
            replay.apply(number + offset, step)
        title = run[0].name + (f" ×{len(run)}" if len(run) > 1 else "")
        frames.append(Frame(title, run, replay.picture(), run[-1].error))
    return frames


# ---- a live Sandbox: the picture read from the kernel -----------------------------------
def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _nspid(pid: int) -> list[int]:
    with open(f"/proc/{pid}/status") as f:
        line = next(line for line in f if line.startswith("NSpid:"))
    return [int(p) for p in line.split()[1:]]


def _command(pid: int) -> str:
    with open(f"/proc/{pid}/comm") as f:
        return f.read().strip()


def _children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid``, from the host's /proc."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if _parent_of(int(entry)) == pid:
                    found.append(int(entry))
            except (OSError, IndexError):
                continue   # it exited while we looked
    return sorted(found)


def _process_label(pid: int, role: str) -> str:
    pids = _nspid(pid)
    inside = f", PID {pids[-1]} inside its own PID namespace" if len(pids) > 1 else ""
    return f"{role}: {_command(pid)} (host pid {pid}{inside})"


def _process_tree(sandbox_pid: int) -> list[tuple[int, str]]:
    """This process down to the sandbox, then the sandbox's children: the kernel's parent links."""
    me = os.getpid()
    chain = [sandbox_pid]
    while chain[-1] not in (me, 1) and len(chain) < 6:
        chain.append(_parent_of(chain[-1]))
    chain.reverse()
    roles = {me: "this notebook's kernel", sandbox_pid: "the sandbox"}
    tree = [(depth, _process_label(pid, roles.get(pid, "the sandbox helper (waits for its child)")))
            for depth, pid in enumerate(chain)]
    for child in _children_of(sandbox_pid):
        tree.append((len(chain), _process_label(child, "a command it runs")))
    return tree


def _mount_table(pid: int | str) -> list[tuple[str, MountEntry]]:
    """(device, entry) per line of /proc/PID/mountinfo: the device (major:minor) tells one
    proc or tmpfs instance from another where mount point and options are alike."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return [(line.split()[2], entry) for line in f for entry in parse_mountinfo(line)]


def _mount_key(device: str, entry: MountEntry) -> tuple[str, str, str, str]:
    return (device, entry.mount_point, entry.root, entry.fstype)


def _mounts(pid: int) -> tuple[str, list[str]]:
    """What / is for ``pid``, and the mounts its mount table has that ours doesn't."""
    theirs = _mount_table(pid)
    ours = {_mount_key(device, e) for device, e in _mount_table("self")}
    own_root = os.stat(f"/proc/{pid}/root/")
    host_root = os.stat("/")
    if (own_root.st_dev, own_root.st_ino) == (host_root.st_dev, host_root.st_ino):
        root = "the host's / (/proc/PID/root is the host's root directory)"
    else:
        fstype = next((e.fstype for _, e in theirs if e.mount_point == "/"), "?")
        root = f"its own: the {fstype} mount at / (/proc/PID/root is not the host's root directory)"
    new = [f"{e.fstype} on {e.mount_point}" for device, e in theirs if _mount_key(device, e) not in ours]
    return root, new


def _cgroup_of(pid: int) -> str:
    with open(f"/proc/{pid}/cgroup") as f:
        theirs = parse_proc_cgroup(f.read())
    with open("/proc/self/cgroup") as f:
        ours = parse_proc_cgroup(f.read())
    controller = "memory" if "memory" in theirs else ""
    where = theirs.get(controller, "?")
    if where == ours.get(controller):
        return f"the notebook's own ({where or '/'}): no limits of its own yet"
    return f"its own: {where}"


def _gone(sandbox: Sandbox) -> Picture:
    what = f"the sandbox has finished (exit code {sandbox.exit_code})" if sandbox.exit_code is not None \
        else "the sandbox has exited or was closed"
    return Picture("read from the kernel: nothing left to read", [(0, what)], {}, "gone", [], "gone")


def picture_of_sandbox(sandbox: Sandbox) -> Picture:
    """The sandbox as the kernel shows it now, read from the host's /proc."""
    pid = sandbox.pid
    if sandbox.exit_code is not None:
        return _gone(sandbox)
    try:
        host = namespace_ids()
        theirs = namespace_ids(pid)
        namespaces = {kind: NamespaceView(kind, theirs[kind] != host[kind], f"{theirs[kind]}" + (
                          "" if theirs[kind] == host[kind] else f" (host: {host[kind]})")) for kind in NAMESPACES}
        root, mounts = _mounts(pid) if theirs["mnt"] != host["mnt"] else ("the host's / (same mount namespace)", [])
        return Picture("read from the kernel after the step: /proc/PID/ns, mountinfo, cgroup, the parent links",
                       _process_tree(pid), namespaces, root, mounts, _cgroup_of(pid))
    except (FileNotFoundError, ProcessLookupError):   # /proc/PID went away: it exited (or was closed) meanwhile
        return _gone(sandbox)


# The steps the player takes on a live Sandbox, in the order notebook 02 teaches them:
# (the step that shows it was taken, what to do).
SANDBOX_STEPS: tuple[tuple[str, Callable[[Sandbox], Any]], ...] = (
    ("unshare", lambda sb: sb.unshare("pid", "mnt", "uts", "ipc", "net")),
    ("sethostname", lambda sb: sb.sethostname(sb.record.hostname)),
    ("loopback_up", lambda sb: sb.loopback_up()),
    ("cgroup_join", lambda sb: sb.join_cgroup(memory="64m", pids_limit=64)),
    ("mount_overlay", lambda sb: sb.mount_overlay()),
    ("mount_proc", lambda sb: sb.mount_proc()),
    ("mount_dev", lambda sb: sb.mount_dev()),
    ("mount_sys", lambda sb: sb.mount_sys()),
    ("pivot_root", lambda sb: sb.pivot_root()),
)


# ---- rendering ----------------------------------------------------------------------------
# Scoped under .mc-player; the step table reuses TRACE_STYLE (the frame is also .mc-trace).
# The cell rule has three classes because JupyterLab's output CSS right-aligns every cell
# with a two-class selector (:not(.jp-RenderedMarkdown).jp-RenderedHTMLCommon td).
PLAYER_STYLE = """<style>
.mc-player { max-width: 100%; text-align: left; }
.mc-player .mc-frame { text-align: left; line-height: 1.35; }
.mc-player .mc-head { font-size: 13px; margin: 2px 0 4px; overflow-wrap: anywhere; }
.mc-player .mc-frame.mc-trace td, .mc-player .mc-frame.mc-trace th, .mc-player .mc-frame.mc-trace tr {
  text-align: left; vertical-align: top; padding: 2px 6px; }
.mc-player .mc-frame.mc-trace table { margin: 0; width: 100%; }
.mc-player .mc-step th { width: 6.5em; }
.mc-player .mc-picture { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 6px; }
.mc-player .mc-box { flex: 1 1 280px; min-width: 0; padding: 4px 8px; border-radius: 3px; overflow-wrap: anywhere;
  font-size: 12px;
  border: 1px solid var(--jp-border-color2, rgba(128, 128, 128, 0.35)); }
.mc-player .mc-box h4 { margin: 0 0 4px; font-size: 12px; }
.mc-player .mc-box pre { margin: 0; white-space: pre-wrap; overflow-wrap: break-word; font-size: 11px;
  background: transparent; color: inherit; font-family: var(--jp-code-font-family, monospace); }
.mc-player .mc-box ul { margin: 0; padding-left: 1.2em; font-size: 11px; overflow-wrap: anywhere; }
.mc-player .mc-new { font-weight: bold; color: var(--jp-success-color1, #2e7d32); }
.mc-player .mc-source { font-size: 11px; color: var(--jp-content-font-color2, rgba(128, 128, 128, 1)); }
.mc-player .mc-error-text { color: var(--jp-error-color1, #d32f2f); }
.mc-player details > summary { cursor: pointer; font-size: 12px; padding: 2px 0; }
</style>"""


def _tree_text(processes: list[tuple[int, str]]) -> str:
    """(depth, label) pairs as an indented tree; a label's later lines are notes under it."""
    lines = []
    for depth, label in processes:
        first, *notes = label.split("\n")
        indent = "   " * max(depth - 1, 0) + ("└─ " if depth else "")
        lines.append(indent + first)
        lines += ["   " * depth + "   " + note for note in notes]
    return "\n".join(lines)


def picture_text(picture: Picture) -> str:
    """The picture as indented plain text, for text/plain output."""
    namespaces = "  ".join(f"{v.kind}: {'NEW' if v.new else 'host'}" for v in picture.namespaces.values())
    lines = [f"  picture ({picture.source}):", "    processes:"]
    lines += ["      " + line for line in _tree_text(picture.processes).splitlines()]
    if namespaces:
        lines.append(f"    namespaces: {namespaces}")
    lines.append(f"    /: {picture.root}")
    lines += [f"    mount: {m}" for m in picture.mounts]
    lines.append(f"    cgroup: {picture.cgroup}")
    if picture.hostname:
        lines.append(f"    hostname: {picture.hostname}")
    return "\n".join(lines)


def frame_text(frame: Frame, index: int, total: int) -> str:
    """One frame as plain text: the steps, then the picture."""
    lines = [f"[{index}/{total - 1}] {frame.title}"]
    for step in frame.steps:
        lines.append(f"  {step.name}: {step.call}")
        if step.shell:
            lines.append(f"    $ {step.shell}")
        if step.why:
            lines.append(f"    # {step.why}")
        lines.append(f"    -> {step.error or step.result}")
        lines += [f"    {k}: {v}" for k, v in step.evidence.items()]
    if frame.error and not any(s.error for s in frame.steps):
        lines.append(f"  ! {frame.error}")
    lines.append(picture_text(frame.picture))
    return _short_ids("\n".join(lines))


def _step_rows(step: Step) -> str:
    e = html.escape
    rows = [f"<tr><th>call</th><td><code>{e(step.call)}</code></td></tr>"]
    if step.shell:
        rows.append(f'<tr><th>shell</th><td><div class="mc-shell">$ {e(step.shell)}</div></td></tr>')
    outcome = f'<span class="mc-error-text">{e(step.error)}</span>' if step.error else e(step.result)
    ms = "" if step.result == PLANNED else f" · {step.duration * 1000:.2f} ms"
    rows.append(f"<tr><th>result</th><td>{outcome}{ms}</td></tr>")
    if step.evidence:
        facts = "".join(f"<div><b>{e(k)}</b>: {e(v)}</div>" for k, v in step.evidence.items())
        rows.append(f"<tr><th>evidence</th><td>{facts}</td></tr>")
    return "".join(rows)


def _steps_html(frame: Frame) -> str:
    """The frame's main step in full; the others it took folded away below it."""
    e = html.escape
    if not frame.steps:
        return '<div class="mc-why">Nothing done yet. Press Next to take the first step.</div>'
    name = frame.title.split(" ×")[0]
    main = next((s for s in reversed(frame.steps) if s.error), None) or \
        next((s for s in frame.steps if s.name == name), frame.steps[0])
    others = [s for s in frame.steps if s is not main]
    out = f'<div class="mc-why">{e(main.why)}</div><table class="mc-step">{_step_rows(main)}</table>'
    if others:
        if all(s.name == main.name for s in others):
            summary = f"{len(others)} more {main.name} step{'s' if len(others) > 1 else ''} like it"
        else:   # a live step can take steps of other kinds first (join_cgroup creates the cgroup)
            counts: dict[str, int] = {}
            for s in others:
                counts[s.name] = counts.get(s.name, 0) + 1
            summary = f"{len(others)} other step{'s' if len(others) > 1 else ''} it took: " + ", ".join(
                n + (f" ×{c}" if c > 1 else "") for n, c in counts.items())
        listed = "".join(f'<div class="mc-why"><b>{e(s.name)}</b>: {e(s.why)}</div>'
                         f'<table class="mc-step">{_step_rows(s)}</table>' for s in others)
        out += f"<details><summary>{e(summary)}</summary>{listed}</details>"
    return out


def picture_html(picture: Picture) -> str:
    e = html.escape
    tree = f"<pre>{e(_tree_text(picture.processes))}</pre>"
    rows = "".join(f'<tr><td>{e(v.kind)}</td><td class="{"mc-new" if v.new else ""}">'
                   f'{"new" if v.new else "host"}</td><td>{e(v.detail)}</td></tr>'
                   for v in picture.namespaces.values())
    namespaces = (f'<table><colgroup><col style="width:4.5em"><col style="width:3.5em"><col></colgroup>{rows}</table>'
                  if rows else "<div>none: the process is gone</div>")
    mounts = "".join(f"<li>{e(m)}</li>" for m in picture.mounts) or "<li>none of its own</li>"
    hostname = f"<div><b>hostname</b>: {e(picture.hostname)}</div>" if picture.hostname else ""
    return (f'<div class="mc-picture">'
            f'<div class="mc-box"><h4>processes</h4>{tree}</div>'
            f'<div class="mc-box"><h4>namespaces</h4>{namespaces}</div>'
            f'<div class="mc-box"><h4>filesystem and cgroup</h4><div><b>/</b>: {e(picture.root)}</div>'
            f'<ul>{mounts}</ul><div><b>cgroup</b>: {e(picture.cgroup)}</div>{hostname}</div>'
            f'</div><div class="mc-source">picture {e(picture.source)}</div>')


def frame_html(frame: Frame, index: int, total: int) -> str:
    """One frame as HTML: a .mc-trace block, so the trace table's style applies to it."""
    e = html.escape
    error = f'<div class="mc-error-text">{e(frame.error)}</div>' if frame.error else ""
    return _short_ids(f'<div class="mc-trace mc-frame {NO_MATH}"><div class="mc-head"><b>{index} / {total - 1}</b> · '
                      f'<b>{e(frame.title)}</b></div>{error}{_steps_html(frame)}{picture_html(frame.picture)}</div>')


# ---- the player ------------------------------------------------------------------------------
class StepPlayer:
    """Back and Next through the frames of a Trace, or of a live Sandbox (Next at the end takes the next step)."""

    def __init__(self, source: Trace | Sandbox | list[Step], *,
                 steps: tuple[tuple[str, Callable[[Sandbox], Any]], ...] = SANDBOX_STEPS):
        self.sandbox = source if isinstance(source, Sandbox) else None
        if self.sandbox is not None:
            taken = set(self.sandbox.trace.names())
            self.pending = [(name, take) for name, take in steps if name not in taken]
            start = "the sandbox before the player's first step" if not taken else \
                f"the sandbox as it is, after {len(self.sandbox.trace)} steps taken before the player"
            self.frames = [Frame(start, [], picture_of_sandbox(self.sandbox))]
        else:
            self.pending = []
            self.frames = frames_of_trace(source)
        self.position = 0
        self.stopped = ""        # why a live player can't go on
        self._widget = None

    @property
    def frame(self) -> Frame:
        return self.frames[self.position]

    @property
    def live(self) -> bool:
        return self.sandbox is not None

    def next_step_name(self) -> str:
        """The step Next would take for real ("" when Next only moves through frames already there)."""
        if self.position < len(self.frames) - 1 or self.stopped or not self.pending:
            return ""
        return self.pending[0][0]

    def next(self) -> Frame:
        """Show the next frame; on a live Sandbox at the last frame, take the next step first."""
        if self.position < len(self.frames) - 1:
            self.position += 1
        elif self.next_step_name():
            self._take_step()
            self.position = len(self.frames) - 1
        self._refresh()
        return self.frame

    def back(self) -> Frame:
        """Show the frame before (on a live Sandbox, a picture taken then: steps can't be undone)."""
        self.position = max(self.position - 1, 0)
        self._refresh()
        return self.frame

    def go(self, position: int) -> Frame:
        self.position = min(max(position, 0), len(self.frames) - 1)
        self._refresh()
        return self.frame

    def _take_step(self) -> None:
        name, take = self.pending.pop(0)
        before = len(self.sandbox.trace)
        try:
            take(self.sandbox)
        except MinicontainerError as exc:
            self.stopped = (f"{name} failed: {exc}. The sandbox is left as it was after the failure: "
                            "look at its picture, then start a new Sandbox to try again")
        self.frames.append(Frame(name, self.sandbox.trace.steps[before:], picture_of_sandbox(self.sandbox),
                                 self.stopped))

    # ---- text and static HTML: every frame, for nbconvert and saved notebooks ------------------
    def text(self) -> str:
        return "\n\n".join(frame_text(f, i, len(self.frames)) for i, f in enumerate(self.frames))

    def static_html(self) -> str:
        """Every frame, each folded under its title (the first open): readable with no widget state."""
        e = html.escape
        total = len(self.frames)
        parts = [f'<details class="mc-static"{" open" if i == 0 else ""}><summary>{i} / {total - 1} · '
                 f'{e(f.title)}{" ✗" if f.error else ""}</summary>{frame_html(f, i, total)}</details>'
                 for i, f in enumerate(self.frames)]
        more = ""
        if self.live and self.pending and not self.stopped:
            more = (f'<div class="mc-source">{len(self.pending)} more steps are planned '
                    f'({", ".join(name for name, _ in self.pending)}): with widgets, Next takes them</div>')
        return _short_ids(f'<div class="mc-player {NO_MATH}">{TRACE_STYLE}{PLAYER_STYLE}{"".join(parts)}{more}</div>')

    def _repr_mimebundle_(self, include=None, exclude=None) -> dict:
        data = {"text/plain": self.text(), "text/html": self.static_html()}
        widget = self.widget()
        if widget is not None:   # the live widget; frontends without its state fall back to the HTML
            data.update({k: v for k, v in widget._repr_mimebundle_().items() if k != "text/plain"})
        return data

    # ---- the widget ---------------------------------------------------------------------------------
    def widget(self):
        """The ipywidgets player (built once), or None when ipywidgets is not installed."""
        if self._widget is None:
            try:
                import ipywidgets as w
            except ImportError:
                return None
            self.back_button = w.Button(description="◀ Back", tooltip="the frame before",
                                        layout=w.Layout(width="7em"))
            self.next_button = w.Button(description="Next ▶", layout=w.Layout(width="auto", min_width="7em"))
            self.slider = w.IntSlider(min=0, max=max(len(self.frames) - 1, 0), value=self.position,
                                      readout=False, layout=w.Layout(flex="1 1 auto", min_width="6em"))
            self.position_label = w.HTML()
            self.view = w.HTML()   # no width: the column stretches it, inside its margins
            self.back_button.on_click(lambda _: self.back())
            self.next_button.on_click(lambda _: self.next())
            self.slider.observe(lambda change: self.go(change["new"]) if change["new"] != self.position else None,
                                names="value")
            controls = w.HBox([self.back_button, self.next_button, self.slider, self.position_label],
                              layout=w.Layout(align_items="center"))
            self._widget = w.VBox([controls, self.view], layout=w.Layout(max_width="100%"))
            self._widget.add_class("mc-player")
            for name in NO_MATH.split():
                self._widget.add_class(name)
            self._refresh()
        return self._widget

    def _refresh(self) -> None:
        if self._widget is None:
            return
        last = len(self.frames) - 1
        self.slider.max = max(last, 0)
        self.slider.value = self.position
        taking = self.next_step_name()
        self.next_button.description = f"Take {taking} ▶" if taking else "Next ▶"
        self.next_button.tooltip = f"{taking} for real, in the sandbox" if taking else "the frame after"
        self.next_button.disabled = self.position >= last and not taking
        self.back_button.disabled = self.position == 0
        where = f"step {self.position} of {last}"
        if self.live and self.position < last:
            where += " (a picture taken then: the sandbox has moved on)"
        elif self.stopped:
            where += " (stopped: a step failed)"
        self.position_label.value = f"<span>{html.escape(where)}</span>"
        self.view.value = TRACE_STYLE + PLAYER_STYLE + frame_html(self.frame, self.position, len(self.frames))

    def __repr__(self) -> str:
        kind = f"Sandbox pid={self.sandbox.pid}" if self.live else "Trace"
        return f"<StepPlayer of a {kind}: frame {self.position} of {len(self.frames) - 1}>"
