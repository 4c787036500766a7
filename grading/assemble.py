"""The notebook that is graded: the instructor's source, with only the student's solution
cells taken from the submission, matched by ``grade_id``.

Locked and test cells (hidden tests included) always come from the source, whatever the
submission did to them: edited, deleted, moved, retyped or given new metadata. Cells the
student added are kept where they were (after the graded cell they followed) but lose any
nbgrader metadata, so they can never count as a test.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from grading.cells import grade_id, is_solution, nbgrader, source_text, strip_solution


@dataclass
class Assembly:
    notebook: dict
    notes: dict[str, str] = field(default_factory=dict)   # solution grade_id -> what was wrong with it


def _plain_cell(cell: dict) -> dict | None:
    """A student-added cell, stripped of nbgrader metadata and outputs; None if it isn't a cell at all."""
    if not isinstance(cell, dict) or cell.get("cell_type") not in ("code", "markdown", "raw"):
        return None
    plain = {"cell_type": cell["cell_type"], "metadata": {}, "source": source_text(cell)}
    if plain["cell_type"] == "code":
        plain.update(outputs=[], execution_count=None)
    return plain


def assemble(source_nb: dict, submission: dict) -> Assembly:
    """Build the graded notebook from the source and a (possibly hostile) submission."""
    source_ids = {grade_id(c): c for c in source_nb["cells"]}
    answers: dict[str, dict] = {}
    extras: dict[str | None, list[dict]] = {}
    after: str | None = None
    for cell in submission.get("cells", []) if isinstance(submission.get("cells"), list) else []:
        gid = grade_id(cell) if isinstance(cell, dict) else None
        if gid in source_ids and gid not in answers:
            answers[gid] = cell
            after = gid
        elif (plain := _plain_cell(cell)) is not None:
            extras.setdefault(after, []).append(plain)
    out = copy.deepcopy(source_nb)
    cells = list(extras.get(None, []))
    notes: dict[str, str] = {}
    for index, cell in enumerate(out["cells"]):
        gid = grade_id(cell)
        if is_solution(cell):
            answer = answers.get(gid)
            if answer is None:
                notes[gid] = "the solution cell is missing from the submission"
                text = strip_solution(source_text(cell))
            elif answer.get("cell_type") != "code":
                notes[gid] = f"the solution cell was changed into a {answer.get('cell_type')} cell"
                text = strip_solution(source_text(cell))
            else:
                text = source_text(answer)
                if nbgrader(answer) != nbgrader(cell):
                    notes[gid] = "the solution cell's nbgrader metadata was changed (restored from the source)"
            cell["source"] = text
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.setdefault("id", f"cell-{index}")
        cells.append(cell)
        for k, extra in enumerate(extras.get(gid, [])):
            extra["id"] = f"{cell['id']}-extra-{k}"
            cells.append(extra)
    for k, extra in enumerate(cells[: len(extras.get(None, []))]):
        extra["id"] = f"extra-start-{k}"
    out["cells"] = cells
    return Assembly(out, notes)
