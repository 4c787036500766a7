"""Scores: a part earns its points exactly when its test cell ran to the end without an
error (the kernel's execute_reply said "ok") and nothing spoiled the run as a whole."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from grading.cells import Part
from grading.execute import NotebookRun

MESSAGE_LIMIT = 300   # characters of a failure message kept for the student


@dataclass
class PartResult:
    id: str
    points: float
    max_points: float
    status: str        # "passed", "failed", "timeout", "not run", …
    message: str = ""  # why it failed, for the student: the assert's message, never the test's code


@dataclass
class SubmissionResult:
    student: str
    lab: str
    parts: list[PartResult] = field(default_factory=list)
    problem: str = ""          # a clear sentence when the submission was broken, "" otherwise
    seconds: float = 0.0
    setup_error: str = ""      # the first error in a locked cell that is not a test (the lab's own setup)

    @property
    def score(self) -> float:
        return sum(p.points for p in self.parts)

    @property
    def max_score(self) -> float:
        return sum(p.max_points for p in self.parts)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.update(score=self.score, max_score=self.max_score)
        return data


def _message(ename: str, evalue: str) -> str:
    text = f"{ename}: {evalue}" if evalue else ename
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_LIMIT else text[: MESSAGE_LIMIT - 1] + "…"


def score_parts(parts: list[Part], run: NotebookRun, notes: dict[str, str] | None = None) -> list[PartResult]:
    """One PartResult per graded part, from the run's cell outcomes."""
    notes = notes or {}
    results = []
    for part in parts:
        outcome = run.outcome(part.id)
        note = notes.get(part.solution_id, "")
        if run.problem.startswith("the kernel reported success"):
            results.append(PartResult(part.id, 0, part.points, "tampered", run.problem))
        elif outcome is None or outcome.status == "not run":
            results.append(PartResult(part.id, 0, part.points, "not run", run.problem or "this part was not run"))
        elif outcome.status == "ok":
            results.append(PartResult(part.id, part.points, part.points, "passed", note))
        else:
            message = _message(outcome.ename, outcome.evalue)
            code = run.outcome(part.solution_id)
            if code is not None and code.status != "ok":   # the likely cause: say it first
                message = f"your code cell: {code.status}, {_message(code.ename, code.evalue)}; then the check: {message}"
            if note:
                message = f"{note}; {message}"
            results.append(PartResult(part.id, 0, part.points, outcome.status if outcome.status != "error" else "failed",
                                      message))
    return results
