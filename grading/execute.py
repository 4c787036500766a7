"""Run a notebook cell by cell on a Jupyter kernel (nbclient) and record how each cell ended.

A cell's outcome is the kernel's execute_reply status ("ok" or "error"), never what the
cell printed. Limits: a per-cell timeout (the kernel is interrupted), a per-notebook
timeout (the rest is not run), and a cap on the output kept (past it, output is dropped
and the kernel interrupted). After every graded cell a probe cell that must fail runs: if
the kernel reports success for it, the submission tampered with the kernel's replies.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass, field

from nbclient import NotebookClient
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbclient.util import ensure_async
from nbformat import NotebookNode
from nbformat.v4 import new_code_cell

from grading.cells import grade_id, is_test

TIMEOUT_ENAME = "CellTimeout"


@dataclass
class CellOutcome:
    index: int
    grade_id: str | None
    status: str               # "ok", "error", "timeout", "output cap", "kernel died", "not run"
    ename: str = ""
    evalue: str = ""


@dataclass
class NotebookRun:
    cells: list[CellOutcome] = field(default_factory=list)
    problem: str = ""         # what stopped or spoiled the run as a whole ("" when nothing did)
    output_bytes: int = 0
    seconds: float = 0.0

    def outcome(self, gid: str) -> CellOutcome | None:
        return next((c for c in self.cells if c.grade_id == gid), None)


class CappedClient(NotebookClient):
    """nbclient that keeps at most ``output_cap`` bytes of output per notebook."""

    def __init__(self, nb: NotebookNode, output_cap: int, **kw):
        super().__init__(nb, **kw)
        self.output_cap = output_cap
        self.output_bytes = 0
        self.overflowed = False
        self.replies: dict[int, dict] = {}
        self.on_cell_executed = self._record_reply

    def _record_reply(self, cell, cell_index, execute_reply) -> None:
        self.replies[cell_index] = execute_reply

    def output(self, outs, msg, display_id, cell_index):
        content = msg.get("content", {})
        self.output_bytes += len(json.dumps(content, default=str))
        if self.output_bytes > self.output_cap:
            if not self.overflowed:
                # later cells won't run: stop the kernel now rather than wait out the cell's timeout
                self.overflowed = True
                self._stopping = asyncio.ensure_future(ensure_async(self.km.shutdown_kernel(now=True)))
            return None
        return super().output(outs, msg, display_id, cell_index)


def probe_source(seed: str, index: int) -> str:
    """A cell that fails on any honest kernel, different for each position and submission."""
    rng = random.Random(f"{seed}/{index}")
    name = "_probe_" + "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(8))
    a = rng.randrange(1000, 9999)
    return f"{name} = {a}\nassert {name} == {a + rng.randrange(1, 99)}, 'grader probe'"


def run_notebook(nb: NotebookNode, *, cwd: str, km=None, kernel_name: str = "python3", cell_timeout: float = 60,
                 notebook_timeout: float = 600, output_cap: int = 2_000_000, probe_seed: str | None = None,
                 startup_timeout: float = 60, graceful_shutdown: bool = True) -> NotebookRun:
    """Execute every code cell of ``nb`` in order (outputs land in ``nb``); see the module doc for the limits."""
    started = time.monotonic()
    deadline = started + notebook_timeout
    client = CappedClient(nb, output_cap, km=km, kernel_name=kernel_name, timeout=int(cell_timeout),
                          allow_errors=True, interrupt_on_timeout=True, startup_timeout=int(startup_timeout),
                          error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": "", "traceback": []},
                          resources={"metadata": {"path": cwd}}, iopub_timeout=2,
                          shutdown_kernel="graceful" if graceful_shutdown else "immediate")
    seed = probe_seed or hashlib.sha256(json.dumps(nb, sort_keys=True, default=str).encode()).hexdigest()
    run = NotebookRun()
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                gid = grade_id(cell)
                if cell.cell_type != "code":
                    continue
                if run.problem:
                    run.cells.append(CellOutcome(index, gid, "not run"))
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 1:
                    run.problem = f"the notebook ran past its {notebook_timeout:.0f} s limit; later cells were not run"
                    run.cells.append(CellOutcome(index, gid, "not run"))
                    continue
                limit = min(cell_timeout, remaining)
                client.timeout = max(1, int(limit))
                client.error_on_timeout["evalue"] = f"the cell ran longer than {client.timeout} s and was interrupted"
                outcome = _execute(client, cell, index, gid)
                if outcome.status == "kernel died":
                    run.problem = f"the kernel died ({_death(client)}); later cells were not run"
                run.cells.append(outcome)
                if outcome.status == "timeout" and not run.problem and not _answers(client):
                    run.problem = (f"the kernel stopped answering after a cell ran past its {client.timeout} s limit "
                                   "(it ignored the interrupt); later cells were not run")
                if client.overflowed and not run.problem:
                    run.problem = f"the output went over the {output_cap} byte cap; later cells were not run"
                if is_test(cell) and not run.problem and _probe_passed(client, seed, index):
                    run.problem = ("the kernel reported success for a cell that must fail: the submission "
                                   "tampered with how the kernel reports errors")
    except DeadKernelError:
        run.problem = run.problem or "the kernel died"
    except (RuntimeError, TimeoutError) as exc:     # the kernel never started, or never answered
        run.problem = run.problem or f"the kernel could not be started: {exc}"
    run.output_bytes = client.output_bytes
    run.seconds = time.monotonic() - started
    if run.problem:
        ran = {c.index for c in run.cells}
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code" and index not in ran:
                run.cells.append(CellOutcome(index, grade_id(cell), "not run"))
        run.cells.sort(key=lambda c: c.index)
    return run


def _death(client: CappedClient) -> str:
    """How the kernel's process ended, as far as its launcher tells."""
    process = getattr(getattr(client.km, "provisioner", None), "process", None)
    code = None
    for _ in range(50):          # the process may take a moment to be reaped
        code = process.poll() if process is not None else None
        if code is not None:
            break
        time.sleep(0.02)
    if code is None:
        return "it stopped answering"
    if code in (137, -9):
        return "killed by SIGKILL: over the memory limit, most likely"
    if code > 128 or code < 0:
        return f"killed by signal {abs(code) - 128 if code > 0 else -code}"
    return f"it exited with code {code}"


def _execute(client: CappedClient, cell: NotebookNode, index: int, gid: str | None) -> CellOutcome:
    died = None
    try:
        client.execute_cell(cell, index)
    except DeadKernelError:
        died = CellOutcome(index, gid, "kernel died", "DeadKernelError", "the kernel died while this cell ran")
    except CellTimeoutError as exc:
        return CellOutcome(index, gid, "timeout", TIMEOUT_ENAME, str(exc).splitlines()[0])
    if client.overflowed:
        return CellOutcome(index, gid, "output cap", "OutputCap",
                           f"this cell's output went over the {client.output_cap} byte cap")
    if died:
        return died
    content = client.replies.get(index, {}).get("content", {})
    status = content.get("status", "error")
    if status == "ok":
        return CellOutcome(index, gid, "ok")
    ename, evalue = str(content.get("ename", "")), str(content.get("evalue", ""))
    return CellOutcome(index, gid, "timeout" if ename == TIMEOUT_ENAME else "error", ename, evalue)


def _answers(client: CappedClient, timeout: int = 5) -> bool:
    """Whether the kernel runs a trivial cell within ``timeout`` s (after an interrupt, say)."""
    saved = client.timeout
    client.timeout = timeout
    try:
        return _run_extra(client, new_code_cell("pass")) == "ok"
    finally:
        client.timeout = saved


def _run_extra(client: CappedClient, cell: NotebookNode) -> str:
    """Run a cell that is not the student's; returns its status ("ok", "error", "timeout", "dead")."""
    # nbclient writes an executed cell back into the notebook at its index: give the cell
    # a place at the end for the moment, and take it out again
    client.nb.cells.append(cell)
    at = len(client.nb.cells) - 1
    try:
        client.execute_cell(cell, at)
    except DeadKernelError:
        return "dead"
    except CellTimeoutError:
        return "timeout"
    finally:
        del client.nb.cells[at]
    content = client.replies.pop(at, {}).get("content", {})
    if content.get("ename") == TIMEOUT_ENAME:
        return "timeout"
    return content.get("status", "error")


def _probe_passed(client: CappedClient, seed: str, index: int) -> bool:
    return _run_extra(client, new_code_cell(probe_source(seed, index))) == "ok"
