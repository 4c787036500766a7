"""The monitor (监控进程, Docker's "shim"): the small process that stays a detached container's parent.

`run -d` must return at once, yet somebody has to stay behind: to read the container's
output, to reap its PID 1 and record how it ended, and to remove its cgroup. Docker gives
that job to containerd-shim, one per container, so that neither the CLI nor the daemon
needs to live as long as the container. Here it is this module, started as its own
process in a new session:

    minicontainer run -d ──► monitor (python -m minicontainer.engine.monitor ID)
         returns the id          │ start_container: fork, unshare, PID 1 …
         once told "started"     │ logs: stdout/stderr → <id>-json.log, one JSON line each
                                 │ waits for PID 1, records the exit code and time
                                 └ removes the cgroup (and the container, with --rm)

The container's setup process dies with the monitor (PR_SET_PDEATHSIG), and PID 1 with it:
a `kill -9` of the monitor leaves an exited container, which `ps` reports as such.
"""
from __future__ import annotations

import json
import os
import selectors
import signal
import sys
import time
from pathlib import Path

LOG_MAX_BYTES = 10 << 20   # per file; one older file is kept, as --log-opt max-size=10m max-file=2


def log_path(container_dir: Path, container_id: str) -> Path:
    """Where Docker's json-file driver keeps a container's log: <dir>/<id>-json.log."""
    return container_dir / f"{container_id}-json.log"


def timestamp(t: float | None = None) -> str:
    """RFC 3339 with nanoseconds, in UTC, as Docker's log lines carry it."""
    t = time.time() if t is None else t
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e9):09d}Z"


class JsonLog:
    """The json-file log: one ``{"log": LINE, "stream": ..., "time": ...}`` per output line."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES):
        self.path, self.max_bytes = path, max_bytes
        self.file = open(path, "ab", buffering=0)
        self.partial: dict[str, bytes] = {"stdout": b"", "stderr": b""}

    def write(self, stream: str, data: bytes) -> None:
        """Append the complete lines in ``data``; keep a trailing partial line for later."""
        lines = (self.partial[stream] + data).split(b"\n")
        self.partial[stream] = lines.pop()
        for line in lines:
            self._append(stream, line + b"\n")

    def flush_partial(self) -> None:
        """At EOF: a last line without a newline is logged as it is."""
        for stream, rest in self.partial.items():
            if rest:
                self._append(stream, rest)
            self.partial[stream] = b""

    def _append(self, stream: str, line: bytes) -> None:
        record = json.dumps({"log": line.decode(errors="replace"), "stream": stream, "time": timestamp()})
        if self.file.tell() + len(record) + 1 > self.max_bytes:
            self.rotate()
        self.file.write(record.encode() + b"\n")

    def rotate(self) -> None:
        """Keep one older file (<log>.1), start a fresh one: the log never grows past twice the cap."""
        self.file.close()
        os.replace(self.path, f"{self.path}.1")
        self.file = open(self.path, "ab", buffering=0)

    def close(self) -> None:
        self.flush_partial()
        self.file.close()


def pump_output(log: JsonLog, streams: dict[int, str]) -> None:
    """Copy the container's stdout and stderr into the log until both reach EOF."""
    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ)
    while sel.get_map():
        for key, _ in sel.select():
            chunk = os.read(key.fd, 65536)
            if chunk:
                log.write(streams[key.fd], chunk)
            else:
                sel.unregister(key.fd)
                os.close(key.fd)
    sel.close()
    log.close()


def monitor(container_id: str, ready_fd: int, remove: bool, new: bool = True) -> int:
    """Start the container from its bundle, report, log, wait, record the end. Returns its exit code."""
    from ..kernel.cgroups import open_cgroup
    from ..runtime.oci import read_bundle
    from ..runtime.process import ContainerStartError
    from .containers import find_record
    from .run import _start, cgroup_name, finish

    record = find_record(container_id)
    os.chdir(record.dir)   # not the starter's cwd, which may be a directory the user wants to unmount
    cgroup = open_cgroup(cgroup_name(record.id))
    spec = read_bundle(record.dir / "bundle", record.id)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        proc = _start(record, spec, (null, out_w, err_w), close_in_child=(out_r, err_r, ready_fd))
    except ContainerStartError as exc:
        finish(record, cgroup, None, remove=new)
        if not new:   # an existing container stays, exited with the reason's exit code, as docker's does
            state = record.read_state()
            state.exit_code = exc.exit_code
            record.write_state(state)
        os.write(ready_fd, json.dumps({"error": str(exc), "exit_code": exc.exit_code}).encode())
        return exc.exit_code
    finally:
        for fd in (out_w, err_w, null):
            os.close(fd)
    state = record.read_state()
    state.monitor_pid = os.getpid()
    record.write_state(state)
    os.write(ready_fd, json.dumps({"started": proc.init_pid}).encode())
    os.close(ready_fd)
    pump_output(JsonLog(log_path(record.dir, record.id)), {out_r: "stdout", err_r: "stderr"})
    state, _ = finish(record, cgroup, proc, remove, wait_for_teardown=True)
    return state.exit_code if state.exit_code is not None else 125


def main(argv: list[str]) -> int:
    """python -m minicontainer.engine.monitor ID READY_FD [--rm] [--new]"""
    # Fork once more and let the first process exit at once: the monitor is then nobody's
    # child (init, or the nearest subreaper, reaps it), so no CLI or notebook kernel that
    # started it is left with a zombie to collect.
    if os.fork():
        os._exit(0)
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):   # the CLI's terminal is not ours
        signal.signal(sig, signal.SIG_IGN)
    return monitor(argv[0], int(argv[1]), "--rm" in argv[2:], "--new" in argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
