"""Steps and traces: every kernel-visible action minicontainer takes, recorded.

A :class:`Step` is one action another process or the kernel can see: a syscall, a
cgroup file write, a mount, a file written into a rootfs, an HTTP request that changes a
registry. Steps append to the active :class:`Trace`, which renders as text (for
``minicontainer run --trace``), as an HTML table (for notebooks) and as JSON (for the
grader).

While :func:`planning` is active, :meth:`Step.do` records the step without doing it,
which is how ``plan()`` and ``--explain`` show a run without running it.
"""
from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which costs the CLI ~10 ms

if TYPE_CHECKING:  # only for annotations: importing typing costs the CLI start-up time
    from typing import Any, Callable, Iterator

PLANNED = "(planned)"


@dataclass
class Step:
    """One kernel-visible action: what was done, the shell equivalent, and why."""

    name: str                 # the concept a learner would look up: "pivot_root"
    call: str                 # what was actually done: "pivot_root('.', '.')"
    shell: str = ""           # what a learner could type instead
    why: str = ""             # one line of explanation
    result: str = ""
    error: str = ""
    duration: float = 0.0     # seconds
    evidence: dict[str, str] = field(default_factory=dict)
    pid: int = 0              # the process that carried the step out
    started: float = 0.0      # time.monotonic() at the start: comparable across processes

    @property
    def ok(self) -> bool:
        return not self.error

    def do(self, action: Callable[..., Any], *args: Any,
           evidence: Callable[[], dict[str, str]] | None = None, into: "Trace | None" = None) -> Any:
        """Carry out ``action(*args)``, timing it and recording the outcome.

        Under :func:`planning` the action is not run. The step is appended to ``into`` if
        given (a server keeps its own trace), else to the active trace; an exception from
        the action is recorded and re-raised.
        """
        self.pid = os.getpid()
        emit = into.add if into is not None else _emit
        if _planning and into is None:
            self.result = PLANNED
            emit(self)
            return None
        self.started = time.monotonic()
        start = time.perf_counter()
        try:
            value = action(*args)
        except BaseException as exc:
            self.duration = time.perf_counter() - start
            self.error = str(exc) or type(exc).__name__
            emit(self)
            raise
        self.duration = time.perf_counter() - start
        if not self.result:
            self.result = "ok" if value is None else str(value)
        if evidence is not None:
            try:
                self.evidence.update(evidence())
            except OSError as exc:  # evidence is best-effort; the step itself succeeded
                self.evidence["unavailable"] = str(exc)
        emit(self)
        return value

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Step":
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def _repr_html_(self) -> str:
        return Trace([self])._repr_html_()

    def __str__(self) -> str:
        return Trace([self]).text()


class Trace:
    """An ordered list of Steps, with text, HTML and JSON renderings."""

    def __init__(self, steps: list[Step] | None = None,
                 sink: Callable[[Step], None] | None = None):
        self.steps: list[Step] = list(steps or [])
        self.sink = sink  # a child process streams its steps to the parent through this

    def add(self, step: Step) -> None:
        if self.sink is not None:
            self.sink(step)
        else:
            self.steps.append(step)

    def extend(self, steps: list[Step]) -> None:
        for s in steps:
            self.add(s)

    def flush(self) -> None:
        """Hand recorded steps on to wherever they go (a no-op here; see runtime.process)."""

    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def find(self, name: str) -> Step:
        """The first step called ``name``; KeyError if there is none."""
        for s in self.steps:
            if s.name == name:
                return s
        raise KeyError(f"no step named {name!r} in this trace (steps: {', '.join(self.names())})")

    def __iter__(self) -> Iterator[Step]:
        return iter(self.steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, i: int) -> Step:
        return self.steps[i]

    # ---- renderings -------------------------------------------------------------
    def text(self, *, why: bool = True) -> str:
        """One block per step; 64-hex ids are shortened to 12 characters, as docker shows them."""
        return _short_ids(self._text(why))

    def _text(self, why: bool) -> str:
        lines = []
        for i, s in enumerate(self.steps, 1):
            mark = "✗" if s.error else ("·" if s.result == PLANNED else "✓")
            ms = "" if s.result == PLANNED else f" {s.duration * 1000:6.2f} ms"
            lines.append(f"{i:2d} {mark} {s.name:<16}{ms}  {s.call}")
            if s.shell:
                lines.append(f"{'':21}$ {s.shell}")
            if why and s.why:
                lines.append(f"{'':21}# {s.why}")
            if s.error:
                lines.append(f"{'':21}! {s.error}")
            for k, v in s.evidence.items():
                lines.append(f"{'':21}{k}: {v}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The trace as a table that fits a notebook's output area: left-aligned, long calls
        wrapped, each step's why beside its name, evidence folded away; colours taken from
        the JupyterLab theme (so dark themes work), and a style that applies to this table only."""
        import html

        rows = []
        for i, s in enumerate(self.steps, 1):
            result = html.escape(s.error or s.result)
            if s.evidence:
                facts = "".join(f"<div><b>{html.escape(k)}</b>: {html.escape(v)}</div>" for k, v in s.evidence.items())
                result += f"<details><summary>evidence</summary>{facts}</details>"
            shell = f'<div class="mc-shell">$ {html.escape(s.shell)}</div>' if s.shell else ""
            rows.append(
                f'<tr class="{"mc-error" if s.error else ""}"><td class="mc-n">{i}</td>'
                f'<td><b>{html.escape(s.name)}</b><div class="mc-why">{html.escape(s.why)}</div></td>'
                f"<td><code>{html.escape(s.call)}</code>{shell}</td><td>{result}</td>"
                f'<td class="mc-ms">{"" if s.result == PLANNED else f"{s.duration * 1000:.2f}"}</td></tr>')
        head = ("<tr><th>#</th><th>step, and why</th><th>what was done (and the shell equivalent)</th>"
                "<th>result</th><th>ms</th></tr>")
        return _short_ids(f'<div class="mc-trace {NO_MATH}">{TRACE_STYLE}<table><colgroup><col style="width:2.8em">'
                          f'<col style="width:30%"><col style="width:42%"><col style="width:28%">'
                          f'<col style="width:4.2em"></colgroup>{head}{"".join(rows)}</table></div>')

    def to_json(self) -> str:
        return json.dumps([s.to_dict() for s in self.steps], indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Trace":
        return cls([Step.from_dict(d) for d in json.loads(text)])

    def __repr__(self) -> str:
        return f"<Trace of {len(self.steps)} steps: {', '.join(self.names())}>"


# JupyterLab typesets text between two $ signs as a formula, so '$ echo $$' in a shell column
# would show as an italic "echo": an ancestor with one of these classes turns MathJax off
# (tex2jax_ignore for MathJax 2 and 3.0, mathjax_ignore from 3.1 on).
NO_MATH = "tex2jax_ignore mathjax_ignore"

# Every selector starts with .mc-trace, so nothing leaks into the rest of the page; colours
# are the JupyterLab theme's variables, with fallbacks for plain HTML (nbconvert). The cells'
# selector names the class twice to outrank JupyterLab's right-aligning
# `.jp-RenderedHTMLCommon:not(.jp-RenderedMarkdown) td` (two classes and a type, like ours,
# and ours comes later in the page).
TRACE_STYLE = """<style>
.mc-trace table { table-layout: fixed; width: 100%; max-width: 100%; border-collapse: collapse; font-size: 12px; }
.mc-trace.mc-trace th, .mc-trace.mc-trace td { text-align: left; vertical-align: top; padding: 3px 6px;
  border-bottom: 1px solid var(--jp-border-color2, rgba(128, 128, 128, 0.3)); overflow-wrap: anywhere; }
.mc-trace code { white-space: pre-wrap; overflow-wrap: anywhere; background: transparent; font-size: 11px; }
.mc-trace .mc-why, .mc-trace .mc-shell { color: var(--jp-content-font-color2, rgba(128, 128, 128, 1)); font-size: 11px; }
.mc-trace .mc-shell { font-family: var(--jp-code-font-family, monospace); overflow-wrap: anywhere; }
.mc-trace .mc-n, .mc-trace .mc-ms { font-variant-numeric: tabular-nums; }
.mc-trace tr.mc-error td { color: var(--jp-error-color1, #d32f2f); }
.mc-trace details summary { cursor: pointer; color: var(--jp-content-font-color2, gray); }
</style>"""

_LONG_ID = re.compile(r"\b([0-9a-f]{12})[0-9a-f]{52}\b")


def _short_ids(text: str) -> str:
    return _LONG_ID.sub(r"\1…", text)


# ---- the active trace -------------------------------------------------------------
# Module globals rather than contextvars: each process (host, container child, sandbox
# helper) records into exactly one trace at a time, and children inherit it across fork.
_active: Trace | None = None
_planning = False


def _emit(step: Step) -> None:
    if _active is not None:
        _active.add(step)


def active() -> Trace | None:
    """The trace that steps are currently recorded into, if any."""
    return _active


@contextmanager
def recording(trace: Trace | None = None) -> Iterator[Trace]:
    """Record every Step done inside the block into ``trace`` (a new one by default)."""
    global _active
    trace = trace if trace is not None else Trace()
    previous, _active = _active, trace
    try:
        yield trace
    finally:
        _active = previous


@contextmanager
def planning() -> Iterator[Trace]:
    """Record steps without doing them: the basis of ``plan()`` and ``--explain``."""
    global _planning
    previous, _planning = _planning, True
    try:
        with recording() as trace:
            yield trace
    finally:
        _planning = previous


def is_planning() -> bool:
    return _planning


def flush() -> None:
    """Flush the active trace: a container process calls this just before execve."""
    if _active is not None:
        _active.flush()
