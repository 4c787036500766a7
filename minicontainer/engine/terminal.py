"""-t: give a container a pseudo-terminal (伪终端), and relay it to the user's terminal.

A pty is a pair: whatever the program writes to the *slave* side can be read from the
*master*, and the other way round, with a line discipline in between that turns Ctrl-C
into SIGINT for the terminal's foreground process group. The container gets the slave as
its stdin, stdout and stderr, and as its controlling terminal (runtime/init.py
``take_controlling_terminal``). The engine keeps the master and copies bytes between it
and the user's terminal, which it puts in raw mode: every key, Ctrl-C included, goes to
the container as typed. The window size follows the user's terminal (SIGWINCH).
"""
from __future__ import annotations

import errno
import fcntl
import os
import selectors
import signal
import termios
import tty

def open_pty(size_from: int | None = 0) -> tuple[int, int]:
    """A new pty pair (master, slave), sized like the terminal on ``size_from`` if it is one."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    os.set_inheritable(slave, False)
    if size_from is not None and os.isatty(size_from):
        copy_window_size(size_from, master)
    return master, slave


def copy_window_size(source: int, master: int) -> None:
    """TIOCGWINSZ on the user's terminal, TIOCSWINSZ on the pty: the kernel then sends the
    container's foreground process SIGWINCH, and full-screen programs redraw."""
    try:
        size = fcntl.ioctl(source, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(master, termios.TIOCSWINSZ, size)
    except OSError:
        pass


def relay(master: int, stdin: int = 0, stdout: int = 1, until: int | None = None) -> None:
    """Copy the user's keys to the pty and its output back, until the container closes it
    (or, once ``until`` is readable, i.e. PID 1 has exited, until its last output is out:
    a background process that keeps the pty open must not keep us waiting)."""
    raw = os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if raw else None
    previous = signal.signal(signal.SIGWINCH, lambda *_: copy_window_size(stdin, master)) if raw else None
    sel = selectors.DefaultSelector()
    sel.register(master, selectors.EVENT_READ)
    if until is not None:
        sel.register(until, selectors.EVENT_READ)
    reading_stdin = True
    try:
        sel.register(stdin, selectors.EVENT_READ)
    except (ValueError, PermissionError, OSError):
        reading_stdin = False
    try:
        if raw:
            tty.setraw(stdin)
        while True:
            for key, _ in sel.select():
                if key.fd == until:
                    _drain(master, stdout)
                    return
                if key.fd == master:
                    try:
                        data = os.read(master, 65536)
                    except OSError as exc:
                        if exc.errno == errno.EIO:   # every slave fd closed: the container is done
                            return
                        raise
                    if not data:
                        return
                    _write_all(stdout, data)
                elif reading_stdin:
                    data = os.read(stdin, 65536)
                    if not data:   # the user's input ended: end the container's input too (^D)
                        sel.unregister(stdin)
                        reading_stdin = False
                        _write_all(master, b"\x04")
                    else:
                        _write_all(master, data)
    finally:
        sel.close()
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        if previous is not None:
            signal.signal(signal.SIGWINCH, previous)


def _drain(master: int, stdout: int) -> None:
    """What is still buffered in the pty, without waiting for more."""
    os.set_blocking(master, False)
    try:
        while data := os.read(master, 65536):
            _write_all(stdout, data)
    except (BlockingIOError, OSError):
        pass
    finally:
        os.set_blocking(master, True)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


DETACH_KEYS = b"\x10\x11"   # Ctrl-P Ctrl-Q: leave the container running, as docker attach does


def attach(ref: str, *, send_stdin: bool = True, stdin: int = 0, stdout: int = 1, stderr: int = 2) -> int:
    """attach: the container's output from now on, our keys to its stdin; its exit code at the end.

    Talks to the container's monitor over its attach socket. With a tty, the user's terminal
    is in raw mode and Ctrl-P Ctrl-Q detaches (the container keeps running; exit code 0).
    """
    import socket

    from ..errors import MinicontainerError
    from .containers import find_record
    from .monitor import attach_socket
    from .verbs import _live, wait_for_exit

    record, _ = _live(ref, "attach")
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        conn.connect(str(attach_socket(record.id)))
    except OSError:
        raise MinicontainerError(f"container {ref} has no attach socket: only a container started with run -d "
                                 "or start can be attached to") from None
    raw = record.tty and os.isatty(stdin)
    saved = termios.tcgetattr(stdin) if raw else None
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    if send_stdin:
        try:
            sel.register(stdin, selectors.EVENT_READ)
        except (ValueError, OSError):
            send_stdin = False
    pending, last = b"", b""
    try:
        if raw:
            tty.setraw(stdin)
        while True:
            for key, _ in sel.select():
                if key.fileobj is conn:
                    data = conn.recv(65536)
                    if not data:
                        state = wait_for_exit(record)
                        return state.exit_code if state is not None and state.exit_code is not None else 0
                    if record.tty:
                        _write_all(stdout, data)
                        continue
                    pending += data
                    while len(pending) >= 8 and len(pending) >= 8 + int.from_bytes(pending[4:8], "big"):
                        size = int.from_bytes(pending[4:8], "big")
                        _write_all(stdout if pending[0] == 1 else stderr, pending[8:8 + size])
                        pending = pending[8 + size:]
                else:
                    data = os.read(stdin, 65536)
                    if not data:
                        sel.unregister(stdin)
                        conn.shutdown(socket.SHUT_WR)
                        continue
                    if record.tty and DETACH_KEYS in last[-1:] + data:
                        return 0   # detached: the container runs on
                    last = data
                    conn.sendall(data)
    finally:
        sel.close()
        conn.close()
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
