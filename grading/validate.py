"""validate: prove a lab gradeable. The source (reference solution) must score full marks,
and the untouched released starter, graded with the hidden tests, zero on every part."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from grading.cells import format_problems, read_notebook
from grading.grade import Limits, Runner, grade_notebook, host_runner
from grading.labs import Lab
from grading.release import released_text
from grading.score import SubmissionResult


@dataclass
class Validation:
    lab: str
    problems: list[str]
    solution: SubmissionResult | None
    starter: SubmissionResult | None

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(lab: Lab, limits: Limits | None = None, runner: Runner = host_runner) -> Validation:
    """Check the format, that the student copy is current, and the two runs (on the host's
    kernel by default; ``runner`` may run them in the grader's container instead)."""
    limits = limits or Limits()
    source = read_notebook(lab.source)
    problems = format_problems(source, source=True)
    if problems:
        return Validation(lab.name, problems, None, None)
    if not lab.student.is_file():
        problems.append(f"{lab.student} is missing: run python -m grading release {lab.name}")
    elif lab.student.read_text() != released_text(lab):
        problems.append(f"{lab.student.name} is out of date with its source: run python -m grading release {lab.name}")
    solution, _ = grade_notebook(source, source, student="solution", lab=lab.name, runner=runner, limits=limits)
    starter_nb = read_notebook(lab.student) if lab.student.is_file() else None
    starter, _ = grade_notebook(source, starter_nb, student="starter", lab=lab.name, runner=runner,
                                limits=limits, problem="no student copy")
    for s, p in zip(solution.parts, starter.parts):
        if s.points != s.max_points:
            problems.append(f"{s.id}: the reference solution fails ({s.status}: {s.message})")
        if p.points != 0:
            problems.append(f"{p.id}: the untouched starter scores {p.points:g} (it must score 0)")
    if solution.problem:
        problems.append(f"the reference solution's run: {solution.problem}")
    return Validation(lab.name, problems, solution, starter)


def print_table(v: Validation, out: TextIO = sys.stdout) -> None:
    print(f"lab {v.lab}", file=out)
    if v.solution and v.starter:
        print(f"  {'part':32} {'points':>6}  {'solution':>10}  {'starter':>10}", file=out)
        for s, p in zip(v.solution.parts, v.starter.parts):
            print(f"  {s.id:32} {s.max_points:6g}  {s.points:6g} {'ok' if s.points == s.max_points else 'FAIL':>3}"
                  f"  {p.points:6g} {'ok' if p.points == 0 else 'FAIL':>3}", file=out)
        print(f"  {'total':32} {v.solution.max_score:6g}  {v.solution.score:10g}  {v.starter.score:10g}", file=out)
        print(f"  (solution {v.solution.seconds:.1f} s, starter {v.starter.seconds:.1f} s)", file=out)
    for problem in v.problems:
        print(f"  problem: {problem}", file=out)
    print(f"  {'valid' if v.ok else 'NOT VALID'}", file=out)
