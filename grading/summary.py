"""The class summary: score distribution and pass rate per part, as one matplotlib figure."""
from __future__ import annotations

from pathlib import Path

from grading.score import SubmissionResult


def summary_figure(lab: str, part_ids: list[str], results: list[SubmissionResult]):
    """A Figure (built without pyplot, so no global state changes) with the two plots."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4))
    left, right = fig.subplots(1, 2)
    scores = [r.score for r in results]
    top = max((r.max_score for r in results), default=1) or 1
    left.hist(scores, bins=[x - 0.5 for x in range(int(top) + 2)], color="#4c72b0", edgecolor="white")
    left.set(title=f"{lab}: score distribution", xlabel=f"score (of {top:g})", ylabel="students")
    rates = [100 * sum(p.status == "passed" for r in results for p in r.parts if p.id == pid) / max(len(results), 1)
             for pid in part_ids]
    right.barh(part_ids[::-1], rates[::-1], color="#55a868")
    right.set(title="pass rate per part", xlabel="% of submissions", xlim=(0, 100))
    fig.tight_layout()
    return fig


def write_summary(path: Path, lab: str, part_ids: list[str], results: list[SubmissionResult]) -> None:
    summary_figure(lab, part_ids, results).savefig(path, format="png", dpi=90, metadata={"Software": None})
