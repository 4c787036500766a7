"""release: the student copy of a lab, generated from the instructor's source.

Solution blocks become nbgrader's stub, hidden-test blocks disappear, outputs are cleared;
cell ids and metadata are kept, so grading can match every cell back by ``grade_id``.
The output depends only on the source, so CI can check the committed copy is up to date.
"""
from __future__ import annotations

import copy

from minicontainer.atomic import write_atomic

from grading.cells import (LabFormatError, format_problems, is_solution, is_test, notebook_json, read_notebook,
                           source_text, strip_hidden_tests, strip_solution)
from grading.labs import Lab


def student_version(source_nb: dict) -> dict:
    """The student copy of a source notebook (a new notebook; the source is untouched)."""
    problems = format_problems(source_nb, source=True)
    if problems:
        raise LabFormatError("; ".join(problems))
    nb = copy.deepcopy(source_nb)
    for cell in nb["cells"]:
        text = source_text(cell)
        if is_solution(cell):
            text = strip_solution(text)
        elif is_test(cell):
            text = strip_hidden_tests(text)
        cell["source"] = text
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["metadata"].pop("execution", None)
    return nb


def released_text(lab: Lab) -> str:
    """What ``release`` writes for ``lab``: the committed student copy must equal it."""
    return notebook_json(student_version(read_notebook(lab.source)))


def release(lab: Lab) -> bool:
    """Write the student copy; returns whether it changed."""
    text = released_text(lab)
    if lab.student.is_file() and lab.student.read_text() == text:
        return False
    write_atomic(lab.student, text.encode())
    return True
