"""A lab notebook's cells as nbgrader (schema v3) sees them: solution, test and locked
cells named by ``grade_id``, and the markers that ``release`` strips from the source."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

SOLUTION_BEGIN = "### BEGIN SOLUTION"
SOLUTION_END = "### END SOLUTION"
HIDDEN_BEGIN = "### BEGIN HIDDEN TESTS"
HIDDEN_END = "### END HIDDEN TESTS"
STUB = ("# YOUR CODE HERE", "raise NotImplementedError()")   # nbgrader's stub, word for word
PUBLIC_PASSED = "public checks passed; hidden checks run at grading"
GRADE_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")   # lowercase words and dashes, topic first


class LabFormatError(ValueError):
    """A lab notebook breaks the lab format (labs/README.md); the message says where and how to fix it."""


@dataclass(frozen=True)
class Part:
    """One graded part: the solution cell the student writes and the test cell that grades it."""

    id: str            # the test cell's grade_id, e.g. "namespaces-isolate"
    points: float
    solution_id: str   # the grade_id of the solution cell just before it


def nbgrader(cell: dict) -> dict:
    """The cell's nbgrader metadata block ({} when it has none)."""
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def grade_id(cell: dict) -> str | None:
    value = nbgrader(cell).get("grade_id")
    return value if isinstance(value, str) and value else None


def is_solution(cell: dict) -> bool:
    return bool(nbgrader(cell).get("solution"))


def is_test(cell: dict) -> bool:
    """A graded cell: nbgrader's "grade": true on a code cell that is not a solution."""
    meta = nbgrader(cell)
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def source_text(cell: dict) -> str:
    source = cell.get("source", "")
    return "".join(source) if isinstance(source, list) else str(source)


def _replace_block(text: str, begin: str, end: str, replacement: tuple[str, ...]) -> str:
    """Replace every begin…end block (marker lines included) with ``replacement`` lines,
    indented like the begin marker."""
    lines = text.split("\n")
    out: list[str] = []
    inside = False
    for line in lines:
        stripped = line.strip()
        if stripped == begin and not inside:
            inside = True
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(indent + r for r in replacement)
        elif stripped == end and inside:
            inside = False
        elif not inside:
            out.append(line)
    return "\n".join(out)


def strip_solution(text: str) -> str:
    """The student's starting code: each solution block becomes nbgrader's stub."""
    return _replace_block(text, SOLUTION_BEGIN, SOLUTION_END, STUB)


def strip_hidden_tests(text: str) -> str:
    """The public part of a test cell: hidden-test blocks removed (with trailing blank lines)."""
    return _replace_block(text, HIDDEN_BEGIN, HIDDEN_END, ()).rstrip("\n")


def _balanced(text: str, begin: str, end: str) -> bool:
    depth = 0
    for line in text.split("\n"):
        if line.strip() == begin:
            depth += 1
            if depth > 1:
                return False
        elif line.strip() == end:
            depth -= 1
            if depth < 0:
                return False
    return depth == 0


def graded_parts(nb: dict) -> list[Part]:
    """The graded parts in notebook order; each test cell's solution is the nearest solution cell before it."""
    parts = []
    last_solution = None
    for cell in nb["cells"]:
        if is_solution(cell):
            last_solution = grade_id(cell)
        elif is_test(cell):
            parts.append(Part(grade_id(cell), float(nbgrader(cell).get("points", 0)), last_solution or ""))
    return parts


def format_problems(nb: dict, *, source: bool) -> list[str]:
    """Every way the notebook breaks the lab format (empty when it follows it). ``source``:
    the instructor's source (solutions and hidden tests required) rather than a student copy."""
    problems = []
    seen: set[str] = set()
    for index, cell in enumerate(nb["cells"]):
        where = f"cell {index}"
        meta = nbgrader(cell)
        gid = grade_id(cell)
        if not meta or gid is None:
            problems.append(f"{where} has no nbgrader metadata with a grade_id: give every cell one (labs/README.md)")
            continue
        where = f"cell {index} ({gid})"
        if not GRADE_ID.match(gid):
            problems.append(f"{where}: a grade_id is lowercase letters, digits and dashes, topic first")
        if gid in seen:
            problems.append(f"{where}: grade_id used twice: make it unique")
        seen.add(gid)
        if meta.get("schema_version") != 3:
            problems.append(f"{where}: nbgrader schema_version must be 3")
        text = source_text(cell)
        for begin, end in ((SOLUTION_BEGIN, SOLUTION_END), (HIDDEN_BEGIN, HIDDEN_END)):
            if not _balanced(text, begin, end):
                problems.append(f"{where}: unbalanced {begin!r} / {end!r} lines")
        if is_solution(cell):
            if cell.get("cell_type") != "code":
                problems.append(f"{where}: a solution cell must be a code cell")
            if meta.get("locked"):
                problems.append(f"{where}: a solution cell must not be locked")
            if source and SOLUTION_BEGIN not in text:
                problems.append(f"{where}: a solution cell needs a {SOLUTION_BEGIN} … {SOLUTION_END} block")
        elif SOLUTION_BEGIN in text:
            problems.append(f"{where}: {SOLUTION_BEGIN} outside a solution cell")
        if is_test(cell):
            if not meta.get("locked"):
                problems.append(f"{where}: a test cell must be locked")
            if not isinstance(meta.get("points"), (int, float)) or meta["points"] <= 0:
                problems.append(f"{where}: a test cell needs positive points")
            if PUBLIC_PASSED not in strip_hidden_tests(text):
                problems.append(f"{where}: the public checks must end with print({PUBLIC_PASSED!r})")
            if source and HIDDEN_BEGIN not in text:
                problems.append(f"{where}: a test cell needs a {HIDDEN_BEGIN} block")
        elif HIDDEN_BEGIN in text:
            problems.append(f"{where}: {HIDDEN_BEGIN} outside a test cell")
        if not is_solution(cell) and not is_test(cell) and not meta.get("locked"):
            problems.append(f"{where}: a cell that is neither solution nor test must be locked")
    parts = graded_parts(nb)
    if not 3 <= len(parts) <= 5:
        problems.append(f"{len(parts)} graded parts: a lab has 3 to 5")
    if any(not p.solution_id for p in parts):
        problems.append("a test cell comes before any solution cell: put each part's solution cell first")
    return problems


def read_notebook(path: str | Path) -> dict:
    """Read a notebook as nbformat v4 (a plain NotebookNode, cells with ids)."""
    return nbformat.read(str(path), as_version=4)


def notebook_json(nb: dict) -> str:
    """The notebook as the project writes notebooks: sources as lists of lines, indent 1, UTF-8 text."""
    plain = json.loads(json.dumps(nb))
    for cell in plain["cells"]:
        text = source_text(cell)
        cell["source"] = text.splitlines(keepends=True)
    return json.dumps(plain, indent=1, ensure_ascii=False, sort_keys=True) + "\n"

