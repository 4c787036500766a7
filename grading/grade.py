"""Grade one notebook: restore it from the source by grade_id, run it, score every part."""
from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat

from grading.assemble import assemble
from grading.cells import (HIDDEN_BEGIN, HIDDEN_END, grade_id, graded_parts, is_test, nbgrader, notebook_json,
                           source_text)
from grading.execute import NotebookRun, run_notebook
from grading.score import PartResult, SubmissionResult, score_parts


@dataclass
class Limits:
    """How long and how loud a submission may be."""

    cell_timeout: float = 60
    notebook_timeout: float = 300
    output_cap: int = 2_000_000     # bytes of output kept per notebook


# runs an assembled notebook in a working directory, returns how each cell ended
Runner = Callable[[nbformat.NotebookNode, Path, Limits], NotebookRun]


def host_runner(nb: nbformat.NotebookNode, workdir: Path, limits: Limits) -> NotebookRun:
    """Run on a kernel started on the host, as the grader's own user: only for trusted notebooks
    (validate runs the instructor's source and the untouched starter this way)."""
    return run_notebook(nb, cwd=str(workdir), cell_timeout=limits.cell_timeout,
                        notebook_timeout=limits.notebook_timeout, output_cap=limits.output_cap)


def read_submission(path: Path) -> tuple[dict | None, str]:
    """The submitted notebook as a dict, or None and a sentence saying why it can't be read."""
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        return None, f"the notebook could not be read as JSON ({type(exc).__name__}); nothing was graded"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None, "the file is not a Jupyter notebook (no list of cells); nothing was graded"
    return data, ""


def grade_notebook(source_nb: dict, submission: dict | None, *, student: str, lab: str, runner: Runner,
                   limits: Limits, workdir: Path | None = None, problem: str = "") -> tuple[SubmissionResult, dict]:
    """Grade one submission; returns its result and the notebook as it ran (with outputs)."""
    parts = graded_parts(source_nb)
    if submission is None:
        zero = [PartResult(p.id, 0, p.points, "not run", problem) for p in parts]
        return SubmissionResult(student, lab, zero, problem), {}
    assembly = assemble(source_nb, submission)
    nb = nbformat.reads(notebook_json(assembly.notebook), as_version=4)
    with tempfile.TemporaryDirectory(prefix="grading-") as tmp:
        run = runner(nb, Path(workdir or tmp), limits)
    result = SubmissionResult(student, lab, score_parts(parts, run, assembly.notes), run.problem,
                              round(run.seconds, 2), setup_error(nb, run))
    hide_hidden_tests(result, source_nb)
    return result, nb


QUOTED = "the check failed with a message that quotes the hidden tests, so it is not shown"


def hide_hidden_tests(result: SubmissionResult, source_nb: dict) -> None:
    """Drop any failure message that quotes a line of the hidden tests: code in the kernel can
    see the cells it is sent, and could raise an error carrying them into the feedback."""
    lines = {line.strip() for cell in source_nb["cells"] if is_test(cell)
             for block in source_text(cell).split(HIDDEN_BEGIN)[1:] for line in block.split(HIDDEN_END)[0].split("\n")
             if len(line.strip()) >= 16}
    for part in result.parts:
        if any(line in part.message for line in lines):
            part.message = QUOTED
    if any(line in result.setup_error for line in lines):
        result.setup_error = QUOTED


def setup_error(nb: nbformat.NotebookNode, run: NotebookRun) -> str:
    """The first locked, ungraded cell that failed, as "grade_id: Error: message" ("" if none did)."""
    cells = {grade_id(c): c for c in nb.cells if grade_id(c)}
    for outcome in run.cells:
        cell = cells.get(outcome.grade_id)
        if cell is not None and outcome.status not in ("ok", "not run") and nbgrader(cell).get("locked") \
                and not is_test(cell):
            return f"{outcome.grade_id}: {outcome.ename}: {outcome.evalue}"[:300]
    return ""
