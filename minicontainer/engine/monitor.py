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


class Attachments:
    """The monitor's attach socket: every client gets the output from now on; their keys go
    to the container's stdin (if it was started with -i).

    Without a tty, output is framed as Docker's attach stream is: one byte for the stream
    (1 stdout, 2 stderr), three zero bytes, a 4-byte big-endian length, then the data.
    With a tty there is one stream, sent raw.
    """

    def __init__(self, path: Path, tty: bool, stdin_fd: int | None):
        import socket

        self.tty, self.stdin_fd, self.clients = tty, stdin_fd, []
        self.path = path
        path.unlink(missing_ok=True)
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        old = os.umask(0o077)   # only root may attach
        try:
            self.server.bind(str(path))
        finally:
            os.umask(old)
        self.server.listen(8)
        self.server.setblocking(False)

    def accept(self) -> object:
        client, _ = self.server.accept()
        self.clients.append(client)
        return client

    def send(self, stream: str, data: bytes) -> None:
        frame = data if self.tty else bytes([1 if stream == "stdout" else 2, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
        for client in list(self.clients):
            try:
                client.sendall(frame)
            except OSError:   # a client that went away
                self.drop(client)

    def from_client(self, client) -> bool:
        """Keys from an attached client; False once its input has ended (it may still be
        reading the output: it is dropped only when a send to it fails)."""
        try:
            data = client.recv(65536)
        except OSError:
            data = b""
        if not data:
            return False
        if self.stdin_fd is not None:
            try:
                os.write(self.stdin_fd, data)
            except OSError:
                pass
        return True

    def drop(self, client) -> None:
        if client in self.clients:
            self.clients.remove(client)
        client.close()

    def close(self) -> None:
        for client in list(self.clients):
            self.drop(client)
        self.server.close()
        self.path.unlink(missing_ok=True)


def pump_output(log: JsonLog, streams: dict[int, str], attach: Attachments | None = None,
                until: int | None = None) -> None:
    """Copy the container's output into the log (and to attached clients) until it ends."""
    import errno

    sel = selectors.DefaultSelector()
    for fd in streams:
        sel.register(fd, selectors.EVENT_READ, "output")
    if attach is not None:
        sel.register(attach.server, selectors.EVENT_READ, "accept")
    if until is not None:
        sel.register(until, selectors.EVENT_READ, "exited")
    open_streams = len(streams)
    exited = False
    while open_streams:
        timeout = 0.2 if exited else None   # after PID 1's exit, only what is already buffered
        events = sel.select(timeout)
        if not events and exited:
            break
        for key, _ in events:
            if key.data == "exited":
                sel.unregister(key.fd)
                exited = True
            elif key.data == "accept":
                sel.register(attach.accept(), selectors.EVENT_READ, "client")
            elif key.data == "client":
                if not attach.from_client(key.fileobj):
                    sel.unregister(key.fileobj)
            else:
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError as exc:
                    if exc.errno != errno.EIO:   # a pty's master reads EIO once every slave is closed
                        raise
                    chunk = b""
                if chunk:
                    log.write(streams[key.fd], chunk)
                    if attach is not None:
                        attach.send(streams[key.fd], chunk)
                else:
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    open_streams -= 1
    for key in list(sel.get_map().values()):
        if key.data == "output":
            os.close(key.fd)
    sel.close()
    if attach is not None:
        attach.close()
    log.close()


def attach_socket(container_id: str) -> Path:
    """Where a running container's monitor listens for `attach`."""
    from .paths import run_dir

    return run_dir() / "containers" / f"{container_id[:12]}.attach"


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
    stdin_w = None
    if spec.terminal:   # -t: one pty for all three; we keep its master
        from .terminal import open_pty
        out_r, out_w = open_pty(None)
        err_r, err_w, null = -1, os.dup(out_w), os.dup(out_w)
        stdin_w = out_r if record.interactive else None
    else:
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        if record.interactive:   # -i: attached clients' keys go to a pipe on its stdin
            null, stdin_w = os.pipe2(os.O_CLOEXEC)
        else:
            null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    parent_side = tuple(fd for fd in (out_r, err_r, ready_fd, stdin_w if not spec.terminal else -1) if fd is not None and fd >= 0)
    try:
        proc = _start(record, spec, (null, out_w, err_w), close_in_child=parent_side)
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
    attach = Attachments(attach_socket(record.id), spec.terminal, stdin_w)
    os.write(ready_fd, json.dumps({"started": proc.init_pid}).encode())
    os.close(ready_fd)
    streams = {out_r: "stdout"} if spec.terminal else {out_r: "stdout", err_r: "stderr"}
    try:
        pump_output(JsonLog(log_path(record.dir, record.id)), streams, attach, until=proc.status_fd)
    finally:
        if stdin_w is not None and not spec.terminal:
            os.close(stdin_w)
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
