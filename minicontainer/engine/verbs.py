"""The verbs that act on existing containers: ps, stop, kill, pause, unpause, rm, wait, logs.

Each asks the state machine (lifecycle.py) first, so a verb on a container in the wrong
state is refused with the way out. Each reads the container's state *reconciled* with the
kernel: the stored state says what the engine last wrote, but a kill -9 of the CLI or the
monitor can leave "running" on disk for a container whose processes are gone.
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ..atomic import file_lock
from ..errors import MinicontainerError
from ..kernel.cgroups import open_cgroup
from .containers import ContainerRecord, ContainerState, find_record, list_records, remove_record
from .lifecycle import transition
from .monitor import log_path
from .paths import containers_dir


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _remove_cgroup(record: ContainerRecord) -> None:
    from .run import cgroup_name

    cgroup = open_cgroup(cgroup_name(record.id))
    cgroup.kill_all()
    cgroup.remove()


def reconcile(record: ContainerRecord) -> ContainerState | None:
    """The container's state, corrected if its processes are gone; None if that removed it (--rm).

    Whoever watched it (the monitor, or the CLI of a foreground run) records the exit. If
    the watcher itself is gone (kill -9), the container's processes went with it (each
    holds PR_SET_PDEATHSIG on its parent): the container has exited, killed, so 137.
    """
    state = record.read_state()
    if state.status not in ("running", "paused") and not state.starting:
        return state
    watcher = state.monitor_pid or state.pid
    if _alive(watcher):
        return state   # whoever watches it will record its end

    with file_lock(containers_dir() / ".lock"):
        state = record.read_state()    # the monitor may have recorded the exit meanwhile
        if state.status not in ("running", "paused") and not state.starting:
            return state
        state.status, state.finished_at, state.pid = "exited", time.time(), 0
        if state.exit_code is None:
            state.exit_code = 137     # SIGKILL, the only way the processes went without a record
        _remove_cgroup(record)
        if record.auto_remove:
            remove_record(record)
            return None
        record.write_state(state)
    return state


def _ago(seconds: float) -> str:
    """Docker's human durations: "Less than a second", "3 seconds", "About a minute", "2 hours"."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s < 60:
        return "1 second" if s == 1 else f"{s} seconds"
    minutes = round(s / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    days = round(s / 86400)
    if days < 14:
        return f"{days} days"
    return f"{days // 7} weeks" if days < 60 else f"{days // 30} months"


def status_text(state: ContainerState, now: float | None = None) -> str:
    """The STATUS column of ps: "Up 3 minutes (Paused)", "Exited (137) 2 seconds ago", "Created"."""
    now = time.time() if now is None else now
    if state.status == "running":
        return f"Up {_ago(now - state.started_at)}"
    if state.status == "paused":
        return f"Up {_ago(now - state.started_at)} (Paused)"
    if state.status == "exited":
        return f"Exited ({state.exit_code if state.exit_code is not None else 0}) {_ago(now - state.finished_at)} ago"
    return "Created"


def ps(all: bool = False) -> list[dict]:
    """One row per container, newest first, as `ps` (running only) or `ps -a` shows them."""
    rows = []
    now = time.time()
    for record in list_records():
        state = reconcile(record)
        if state is None or (not all and state.status not in ("running", "paused")):
            continue
        command = " ".join(record.args) or "(image default)"
        rows.append({"ID": record.id, "Image": _familiar(record.image), "Command": command,
                     "CreatedAt": record.created_at, "Created": f"{_ago(now - record.created_at)} ago",
                     "State": state.status, "Status": status_text(state, now), "Names": record.name,
                     "ExitCode": state.exit_code, "Pid": state.pid})
    return sorted(rows, key=lambda r: r["CreatedAt"], reverse=True)


def _familiar(image: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if image.startswith(prefix):
            return image[len(prefix):]
    return image


def ps_table(rows: list[dict]) -> str:
    """The aligned table `ps` prints, with docker's columns."""
    header = ("CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES")
    lines = [(r["ID"][:12], r["Image"], json.dumps(_shorten(r["Command"], 20), ensure_ascii=False), r["Created"],
              r["Status"], r["Names"])
             for r in rows]
    widths = [max(len(str(row[i])) for row in [header, *lines]) for i in range(len(header))]
    return "\n".join("   ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *lines])


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[:width - 1] + "…"


def _name(record: ContainerRecord) -> str:
    return record.name or record.id[:12]


def _live(ref: str, verb: str, record: ContainerRecord | None = None) -> tuple[ContainerRecord, ContainerState]:
    """Find the container and check that ``verb`` may act on it now."""
    from .containers import ContainerNotFound

    record = record or find_record(ref)
    state = reconcile(record) if record.dir.exists() else None
    if state is None:
        raise ContainerNotFound(f"no such container: {ref}")
    transition(_name(record), state.status, verb)
    return record, state


@contextmanager
def _locked(ref: str, verb: str) -> Iterator[tuple[ContainerRecord, ContainerState]]:
    """Hold the container's own lock while ``verb`` acts on it: two CLI calls on one container
    (an rm racing a start) take turns, and the second sees what the first left."""
    from .containers import ContainerNotFound

    record = find_record(ref)
    try:
        lock = file_lock(record.dir / ".lock")
        lock.__enter__()
    except FileNotFoundError:
        raise ContainerNotFound(f"no such container: {ref}") from None
    try:
        yield _live(ref, verb, record)   # checked again under the lock: the state may have changed
    finally:
        lock.__exit__(None, None, None)


def wait_for_exit(record: ContainerRecord, timeout: float | None = None) -> ContainerState | None:
    """Block until the container has exited (its watcher recorded it, or reconcile found it gone)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.002
    while True:
        state = reconcile(record) if record.dir.exists() else None
        if state is None or state.status in ("exited", "created"):
            _wait_for_monitor(state.monitor_pid if state is not None else 0)
            return state
        if deadline is not None and time.monotonic() >= deadline:
            return state
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _wait_for_monitor(pid: int) -> None:
    """Give the monitor the moment it needs after recording the exit (cgroup, namespaces torn
    down), so that a verb that ended a container returns when nothing of it runs any more."""
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.005)


def kill(ref: str, sig: int | str = signal.SIGKILL) -> ContainerRecord:
    """Send a signal to the container's PID 1 (`kill -s SIG`); SIGKILL by default, as docker's."""
    with _locked(ref, "kill") as (record, state):
        number = parse_signal(sig)
        os.kill(state.pid, number)
        if state.status == "paused":   # a frozen process acts on a signal only once thawed
            _thaw(record, state)
        return record


def parse_signal(sig: int | str) -> int:
    """"TERM", "SIGTERM", "15" or 15 -> 15; a one-line error for anything else."""
    from ..errors import InvalidArgument

    if isinstance(sig, int) or str(sig).isdigit():
        return int(sig)
    name = str(sig).upper()
    name = name if name.startswith("SIG") else "SIG" + name
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise InvalidArgument(f"invalid signal {sig!r}: use a name such as TERM, KILL or HUP, or a number") from None


def stop(ref: str, timeout: float = 10) -> ContainerRecord:
    """SIGTERM to PID 1, then SIGKILL if it is still running ``timeout`` seconds later."""
    with _locked(ref, "stop") as (record, state):
        if state.status not in ("running", "paused"):
            return record
        os.kill(state.pid, signal.SIGTERM)
        if state.status == "paused":
            _thaw(record, state)
        state = wait_for_exit(record, timeout)
        if state is not None and state.status in ("running", "paused"):
            os.kill(state.pid, signal.SIGKILL)
            wait_for_exit(record)
        return record


def _set_status(record: ContainerRecord, expected: str, new: str) -> None:
    """Record ``new`` only if the stored state is still ``expected``: the monitor may have
    recorded the exit in between, and an exit must never be overwritten."""
    with file_lock(containers_dir() / ".lock"):
        state = record.read_state()
        if state.status == expected:
            state.status = new
            record.write_state(state)


def _thaw(record: ContainerRecord, state: ContainerState) -> None:
    from .run import cgroup_name

    open_cgroup(cgroup_name(record.id)).thaw()
    _set_status(record, "paused", "running")


def pause(ref: str) -> ContainerRecord:
    """Freeze every process of the container through its cgroup's freezer."""
    from .run import cgroup_name

    with _locked(ref, "pause") as (record, state):
        open_cgroup(cgroup_name(record.id)).freeze()
        _set_status(record, "running", transition(_name(record), state.status, "pause"))
        return record


def unpause(ref: str) -> ContainerRecord:
    """Thaw the container's processes: they carry on where they stopped."""
    with _locked(ref, "unpause") as (record, state):
        _thaw(record, state)
        return record


def remove(ref: str, force: bool = False) -> str:
    """rm: the container's record, upper dir, logs and state; with force, killed first. Returns its id."""
    with _locked(ref, "rm -f" if force else "rm") as (record, state):
        if state.status in ("running", "paused"):
            os.kill(state.pid, signal.SIGKILL)
            if state.status == "paused":
                _thaw(record, state)
            wait_for_exit(record)
        with file_lock(containers_dir() / ".lock"):
            _remove_cgroup(record)
            remove_record(record)
    return record.id


def exec_(ref: str, args: list[str], *, env: list[str] | None = None, workdir: str = "", user: str = "",
          stdio: tuple[int, int, int] = (0, 1, 2), close_in_child: tuple[int, ...] = (), tty: bool = False):
    """Start ``args`` in the running container: its namespaces, cgroup and security profile.

    Returns the started process (wait() gives its exit code). The environment is the
    container's, with ``env`` (NAME=value) on top, as docker exec -e gives it.
    """
    import dataclasses

    from ..runtime.nsenter import exec_in_container
    from ..runtime.oci import read_bundle
    from .run import _merge_env, resolve_user

    record, state = _live(ref, "exec")
    spec = read_bundle(record.dir / "bundle", record.id)
    spec = dataclasses.replace(spec, args=list(args), env=_merge_env(spec.env, list(env or [])),
                               cwd=workdir or spec.cwd, user=resolve_user(user, spec.lowers) if user else spec.user,
                               terminal=tty)
    return exec_in_container(state.pid, spec, stdio, close_in_child)


def start(ref: str) -> ContainerRecord:
    """start: run a created or exited container again, detached; its upper dir, so its files, are kept."""
    from ..kernel.cgroups import open_cgroup as cgroup_of
    from .run import cgroup_name, launch_monitor, options_of, set_up_cgroup

    with _locked(ref, "start") as (record, state):
        if state.status == "running":
            return record
        cgroup = cgroup_of(cgroup_name(record.id))
        set_up_cgroup(cgroup, options_of(record))
        return launch_monitor(record, cgroup, remove=record.auto_remove, new=False)


def restart(ref: str, timeout: float = 10) -> ContainerRecord:
    """stop (if it runs), then start."""
    record, state = _live(ref, "restart")
    if state.status in ("running", "paused"):
        stop(ref, timeout)
    return start(record.id)


def exec_run(ref: str, cmd: list[str] | str, *, env: list[str] | None = None, workdir: str = "", user: str = ""):
    """exec, for Python: run ``cmd`` in the container to completion; a RunResult with its output and steps."""
    from .. import trace
    from .run import RunResult, _capture

    args = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
    with trace.recording() as tr:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            proc = exec_(ref, args, env=env, workdir=workdir, user=user, stdio=(null, out_w, err_w),
                         close_in_child=(out_r, err_r))
        except BaseException:
            for fd in (out_r, err_r):
                os.close(fd)
            raise
        finally:
            for fd in (out_w, err_w, null):
                os.close(fd)
        stdout, stderr = _capture(proc, out_r, err_r, None, b"")
        code = proc.wait()
        proc.reap()
    record = find_record(ref)
    return RunResult(code, stdout.decode(errors="replace"), stderr.decode(errors="replace"), tr,
                     container_id=record.id, name=record.name)


def logs(ref: str, *, tail: int | None = None, timestamps: bool = False) -> str:
    """The container's logged stdout and stderr, interleaved in the order they were written."""
    return "".join(text for _, text in read_logs(ref, tail=tail, timestamps=timestamps))


def top(ref: str) -> list[dict]:
    """The container's processes, as the host sees them (`top`): every pid in its cgroup."""
    from .run import cgroup_name

    record, state = _live(ref, "exec")   # the same states as exec: it must be running
    rows = []
    for pid in sorted(open_cgroup(cgroup_name(record.id)).pids()):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")
            uid = os.stat(f"/proc/{pid}").st_uid
        except (FileNotFoundError, ProcessLookupError):
            continue   # exited while we looked
        rows.append({"UID": uid, "PID": pid, "PPID": int(fields[1]), "STATE": fields[0], "CMD": cmd})
    return rows


def stats(ref: str) -> dict:
    """Live cgroup figures (`stats --no-stream`): CPU time, memory now and its limit, pids."""
    from .run import cgroup_name

    record, state = _live(ref, "exec")
    figures = open_cgroup(cgroup_name(record.id)).stats()
    return {"ID": record.id, "Name": _name(record), "CPUSeconds": figures.cpu_usage_usec / 1e6,
            "MemUsage": figures.memory_current, "MemLimit": record.memory or 0, "MemPeak": figures.memory_peak,
            "PIDs": figures.pids_current}


def rename(ref: str, new_name: str) -> None:
    """Give the container another name; names stay unique."""
    from ..errors import InvalidArgument, StateError

    if not new_name or not all(c.isalnum() or c in "_.-" for c in new_name) or not new_name[0].isalnum():
        raise InvalidArgument(f"invalid container name {new_name!r}: use letters, digits, '_', '.', '-'")
    with file_lock(containers_dir() / ".lock"):
        record = find_record(ref)
        if any(r.name == new_name and r.id != record.id for r in list_records()):
            raise StateError(f"the container name {new_name!r} is already in use: remove that container or pick another")
        record.name = new_name
        record.save()


def prune() -> list[str]:
    """Remove every container that is not running or paused (`container prune`); their ids."""
    removed = []
    for record in list_records():
        state = reconcile(record)
        if state is not None and state.status in ("created", "exited"):
            try:
                removed.append(remove(record.id))
            except MinicontainerError:
                continue   # started again meanwhile: not ours to remove
    return removed


def commit(ref: str, repository: str | None = None, *, message: str = "", pause_while: bool = True) -> str:
    """commit: the container's changes (its overlay upper dir) become one more layer of a new image.

    A running container is paused meanwhile (docker commit --pause), so the layer is one
    consistent moment of its files. Returns the new image's id.
    """
    import tempfile

    from ..image.assemble import child_image, now_iso, record_image, store_layer_file
    from ..image.layers import diff_layer
    from ..image.reference import parse_reference
    from .images import _resolve, find_image, open_store

    target = str(parse_reference(repository)) if repository else None   # a bad name fails before any work
    record = find_record(ref)
    store = open_store()
    base = _resolve(store, find_image(store, record.image_id), record.image)
    state = reconcile(record)
    paused = pause_while and state is not None and state.status == "running"
    if paused:
        pause(record.id)
    try:
        fd, tmp = tempfile.mkstemp(prefix="commit-", suffix=".tar.gz", dir=store.tmp)
        os.close(fd)
        layer = diff_layer(record.dir / "upper", tmp)
    finally:
        if paused:
            unpause(record.id)
    store_layer_file(store, Path(tmp), layer)
    image = child_image(store, base, layers=[layer], history=[
        {"created": now_iso(), "created_by": f"minicontainer commit {_name(record)}", "comment": message}])
    record_image(store, image, target)
    return image.id


def wait(ref: str) -> int:
    """Block until the container exits; its exit code (`docker wait`)."""
    record = find_record(ref)
    state = wait_for_exit(record)
    return state.exit_code if state is not None and state.exit_code is not None else 0


def read_logs(ref: str, *, tail: int | None = None, timestamps: bool = False) -> list[tuple[str, str]]:
    """(stream, text) for each logged line, oldest first; the last ``tail`` lines if given."""
    record = find_record(ref)
    path = log_path(record.dir, record.id)
    lines = []
    for part in (Path(f"{path}.1"), path):
        try:
            with open(part) as f:
                lines += [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            continue
    if tail is not None:
        lines = lines[-tail:] if tail > 0 else []
    return [(entry["stream"], (entry["time"] + " " if timestamps else "") + entry["log"]) for entry in lines]
