"""-t: the container's stdio is a pty, driven here from a pty of our own, as a user's terminal would.

Keys typed go through raw mode untouched (Ctrl-C reaches the container's foreground
process as SIGINT), and the window size follows the user's terminal.
"""
from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time

import pytest

CLI = [sys.executable, "-m", "minicontainer"]


class Terminal:
    """A pty whose slave side is the CLI's controlling terminal, like a terminal emulator's."""

    def __init__(self, args: list[str], rows: int = 24, cols: int = 80):
        self.master, slave = os.openpty()
        self.resize(rows, cols)

        def become_terminal_owner() -> None:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        self.proc = subprocess.Popen(CLI + args, stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                                     preexec_fn=become_terminal_owner)
        os.close(slave)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 30) -> bytes:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; the terminal showed {self.seen[-400:]!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.master, 65536)
                except OSError:
                    chunk = b""
                assert chunk, f"the terminal closed before {text!r}; it showed {self.seen[-400:]!r}"
                self.seen += chunk
                if b"\x1b[6n" in chunk:   # busybox's shell asks where the cursor is; a terminal answers
                    self.type(b"\x1b[1;1R")
        return self.seen

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            assert time.monotonic() < deadline, "the CLI did not exit"
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:
                    pass
        os.close(self.master)
        return self.proc.returncode


def test_an_interactive_shell_sees_a_terminal_of_the_users_size():
    term = Terminal(["run", "-it", "--rm", "busybox", "sh"], rows=31, cols=97)
    term.expect(b"# ")
    term.type(b"stty size; [ -t 0 ] && echo is-a-tty; echo $((6*7))\n")
    term.expect(b"42")
    assert b"31 97" in term.seen and b"is-a-tty" in term.seen
    term.type(b"exit 3\n")
    assert term.wait() == 3


def test_ctrl_c_interrupts_the_containers_foreground_process_not_the_cli():
    term = Terminal(["run", "-it", "--rm", "busybox", "sh"])
    term.expect(b"# ")
    term.type(b"echo ready\n")
    term.expect(b"ready")
    term.type(b"sleep 30\n")
    time.sleep(0.5)
    term.type(b"\x03")                    # Ctrl-C, as a byte: raw mode passes it to the container's pty
    term.expect(b"^C")
    term.type(b"echo back=$?\n")
    term.expect(b"back=130")              # SIGINT ended sleep (128+2); the shell and the CLI live on
    term.type(b"exit\n")
    assert term.wait() == 0


def test_the_window_size_follows_the_users_terminal():
    term = Terminal(["run", "-it", "--rm", "busybox", "sh"], rows=20, cols=60)
    term.expect(b"# ")
    term.type(b"stty size\n")
    term.expect(b"20 60")
    term.resize(40, 120)                  # the CLI gets SIGWINCH and passes the size on
    time.sleep(0.3)
    term.type(b"stty size\n")
    term.expect(b"40 120")
    term.type(b"exit\n")
    assert term.wait() == 0


def test_exec_it_gives_a_terminal_inside_a_running_container():
    cid = subprocess.run(CLI + ["run", "-d", "busybox", "sleep", "60"], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        term = Terminal(["exec", "-it", cid, "sh"], rows=25, cols=90)
        term.expect(b"# ")
        term.type(b"stty size; echo done$((1+1))\n")
        term.expect(b"done2")
        assert b"25 90" in term.seen
        term.type(b"exit 5\n")
        assert term.wait() == 5
    finally:
        subprocess.run(CLI + ["rm", "-f", cid], capture_output=True)


def test_without_t_the_command_has_no_terminal():
    done = subprocess.run(CLI + ["run", "--rm", "busybox", "sh", "-c", "[ -t 0 ] && echo tty || echo no-tty"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.stdout == "no-tty\n"


def test_attach_to_a_detached_terminal_then_detach_with_ctrl_p_ctrl_q_and_come_back():
    cid = subprocess.run(CLI + ["run", "-d", "-it", "busybox", "sh"], capture_output=True, text=True,
                         check=True).stdout.strip()
    try:
        term = Terminal(["attach", cid])
        time.sleep(0.5)
        term.type(b"echo $((2+3))x\n")
        term.expect(b"5x")
        term.type(b"\x10\x11")            # Ctrl-P Ctrl-Q: detach, the shell runs on
        assert term.wait() == 0
        state = subprocess.run(CLI + ["inspect", cid], capture_output=True, text=True).stdout
        assert '"Status": "running"' in state
        again = Terminal(["attach", cid])
        time.sleep(0.5)
        again.type(b"exit 7\n")
        assert again.wait() == 7           # attach ends with the container, and reports its exit code
    finally:
        subprocess.run(CLI + ["rm", "-f", cid], capture_output=True)


def test_attach_without_a_terminal_splits_stdout_and_stderr_and_feeds_stdin():
    cid = subprocess.run(CLI + ["run", "-d", "-i", "busybox", "sh", "-c",
                                "while read l; do echo out:$l; echo err:$l >&2; [ $l = quit ] && exit 4; done"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        done = subprocess.run(CLI + ["attach", cid], input="a\nquit\n", capture_output=True, text=True, timeout=60)
        assert done.returncode == 4
        assert done.stdout == "out:a\nout:quit\n" and done.stderr == "err:a\nerr:quit\n"
        refused = subprocess.run(CLI + ["attach", cid], capture_output=True, text=True)
        assert "is not running" in refused.stderr
    finally:
        subprocess.run(CLI + ["rm", "-f", cid], capture_output=True)
