"""A per-layer progress display for pull and push, shaped like docker's::

    v1: Pulling from student/busybox
    a1b2c3d4e5f6: Downloading [=========>                    ]  1.2MB/3.8MB
    0f9e8d7c6b5a: Pull complete
    Digest: sha256:...

On a terminal the lines are redrawn in place with ANSI cursor movement; in a Jupyter
notebook one HTML table is updated through an IPython display handle; anywhere else
(a pipe, a log file, CI) nothing is shown.
"""
from __future__ import annotations

import html
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import TextIO

BAR_WIDTH = 30
REDRAW_INTERVAL = 0.1  # seconds between redraws for byte counts alone; status changes draw at once


def human_size(n: float) -> str:
    """Bytes in decimal units as docker prints them: 512B, 1.2kB, 3.41MB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.3g}{unit}"
        n /= 1000
    return f"{n}B"  # not reached


def progress_bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[=====>      ]``: the share of ``total`` that is done, in ``width`` cells."""
    if total <= 0:
        return "[" + " " * width + "]"
    filled = min(width, int(width * done / total))
    head = ">" if filled < width else ""
    return "[" + "=" * filled + head + " " * (width - filled - len(head)) + "]"


@dataclass
class Line:
    """One line of the display: a layer (id = short digest) or a message (id = '')."""

    id: str
    status: str
    done: int = 0
    total: int = 0      # 0: no bar

    def text(self) -> str:
        if not self.id:
            return self.status
        if self.total:
            return (f"{self.id}: {self.status} {progress_bar(self.done, self.total)} "
                    f"{human_size(self.done):>7}/{human_size(self.total)}")
        return f"{self.id}: {self.status}"


def short_id(digest: str) -> str:
    """The 12 hex characters docker shows for a layer."""
    return digest.split(":")[-1][:12]


class Progress:
    """Lines keyed by layer; subclasses draw them. This base class records and shows nothing."""

    def __init__(self) -> None:
        self.lines: list[Line] = []
        self._by_id: dict[str, Line] = {}
        self._hidden: set[str] = set()
        self._lock = threading.Lock()  # layers move concurrently, from a thread each

    # ---- what pull and push report ------------------------------------------------------
    def message(self, text: str) -> None:
        """A line that is not about one layer: 'v1: Pulling from …', 'Digest: …'."""
        with self._lock:
            self.lines.append(Line("", text))
            self._changed(len(self.lines) - 1, force=True)

    def status(self, digest: str, text: str) -> None:
        """Set a layer's status without a bar: 'Waiting', 'Pull complete', 'Layer already exists'."""
        self._set(digest, text, 0, 0, force=True)

    def advance(self, digest: str, text: str, done: int, total: int) -> None:
        """Set a layer's status with a bar: 'Downloading', 'Pushing'."""
        self._set(digest, text, done, total, force=False)

    def hide(self, digest: str) -> None:
        """Never show a line for this blob (docker shows layers, not the config)."""
        with self._lock:
            self._hidden.add(short_id(digest))

    def close(self) -> None:
        """Draw the final state."""
        with self._lock:
            self._flush()

    # ---- bookkeeping --------------------------------------------------------------------
    def _set(self, digest: str, text: str, done: int, total: int, force: bool) -> None:
        key = short_id(digest)
        with self._lock:
            if key in self._hidden:
                return
            line = self._by_id.get(key)
            if line is None:
                line = self._by_id[key] = Line(key, text, done, total)
                self.lines.append(line)
                force = True
            else:
                force = force or line.status != text
                line.status, line.done, line.total = text, done, total
            self._changed(self.lines.index(line), force)

    def _changed(self, index: int, force: bool) -> None:
        """Called with the lock held after line ``index`` changed; draws nothing here."""

    def _flush(self) -> None:
        """Called with the lock held: draw whatever is still pending."""

    def text(self) -> str:
        """The display as plain text (what a terminal shows once all redraws are done)."""
        with self._lock:
            return "\n".join(line.text() for line in self.lines)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class TerminalProgress(Progress):
    """Redraw lines in place on a terminal: cursor up, clear line, rewrite, cursor down."""

    def __init__(self, stream: TextIO | None = None):
        super().__init__()
        self.stream = stream or sys.stdout
        self._drawn = 0              # lines already on the screen
        self._dirty: set[int] = set()
        self._last_draw = 0.0

    def _width(self) -> int:
        # a line longer than the terminal wraps, and cursor-up would then miscount: cut it
        return max(20, shutil.get_terminal_size((100, 24)).columns - 1)

    def _changed(self, index: int, force: bool) -> None:
        self._dirty.add(index)
        now = time.monotonic()
        if force or now - self._last_draw >= REDRAW_INTERVAL:
            self._flush()
            self._last_draw = now

    def _flush(self) -> None:
        width = self._width()
        out = []
        for i in sorted(i for i in self._dirty if i < self._drawn):
            up = self._drawn - i
            # ESC[<n>A: cursor up n lines; ESC[2K: erase the line; ESC[<n>B: back down
            out.append(f"\x1b[{up}A\r\x1b[2K{self.lines[i].text()[:width]}\x1b[{up}B\r")
        for i in range(self._drawn, len(self.lines)):
            out.append(self.lines[i].text()[:width] + "\n")
        self._drawn = len(self.lines)
        self._dirty.clear()
        if out:
            self.stream.write("".join(out))
            self.stream.flush()


class NotebookProgress(Progress):
    """One HTML table in a notebook cell, updated in place through an IPython display handle."""

    def __init__(self) -> None:
        super().__init__()
        from IPython.display import HTML, display  # only imported inside a notebook kernel
        self._html = HTML
        self._handle = display(HTML(self._render()), display_id=True)
        self._dirty = False
        self._last_draw = 0.0

    def _render(self) -> str:
        rows = []
        for line in self.lines:
            if not line.id:
                rows.append(f"<tr><td colspan=3><code>{html.escape(line.status)}</code></td></tr>")
                continue
            bar = ""
            if line.total:
                bar = (f"<progress value='{line.done}' max='{line.total}'></progress> "
                       f"{human_size(line.done)}/{human_size(line.total)}")
            rows.append(f"<tr><td><code>{line.id}</code></td><td>{html.escape(line.status)}</td>"
                        f"<td>{bar}</td></tr>")
        return f"<table>{''.join(rows)}</table>"

    def _changed(self, index: int, force: bool) -> None:
        self._dirty = True
        now = time.monotonic()
        if force or now - self._last_draw >= 0.25:  # each update is a message to the browser
            self._flush()
            self._last_draw = now

    def _flush(self) -> None:
        if self._dirty and self._handle is not None:
            self._handle.update(self._html(self._render()))
        self._dirty = False


def in_notebook() -> bool:
    """True inside a Jupyter kernel (IPython with a kernel), not in a terminal IPython."""
    ipython_module = sys.modules.get("IPython")  # a kernel has imported it already; don't pay for it here
    if ipython_module is None:
        return False
    shell = ipython_module.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def auto_progress(stream: TextIO | None = None) -> Progress:
    """The display that fits where we run: notebook, terminal, or nothing (pipes, CI)."""
    if in_notebook():
        return NotebookProgress()
    stream = stream or sys.stdout
    isatty = getattr(stream, "isatty", None)
    if isatty is not None and isatty():
        return TerminalProgress(stream)
    return Progress()
