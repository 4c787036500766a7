"""The gradebook: grades.csv (nbgrader's export columns, one per graded part, and the mock
exams' score per topic), results.json, and the mock-exam results read from the quiz's JSON."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from grading.questions import TOPICS
from grading.score import SubmissionResult

# nbgrader export's columns (CsvExportPlugin), in its order
NBGRADER_COLUMNS = ["assignment", "duedate", "timestamp", "student_id", "last_name", "first_name", "email",
                    "raw_score", "late_submission_penalty", "score", "max_score"]
EXAM_KIND = "minicontainer mock exam"


def read_exams(folder: Path) -> dict[str, dict]:
    """Each student's latest mock exam: ``folder/STUDENT/*.json`` or ``folder/STUDENT.json``
    (files grading/quiz_widget.py saves). Files that are not mock-exam results are skipped."""
    latest: dict[str, dict] = {}
    for path in sorted(folder.rglob("*.json")):
        student = path.stem if path.parent == folder else path.relative_to(folder).parts[0]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("kind") != EXAM_KIND or not isinstance(data.get("per_topic"), dict):
            continue
        if student not in latest or str(data.get("finished_at", "")) > str(latest[student].get("finished_at", "")):
            latest[student] = data
    return latest


def exam_columns(exam: dict) -> dict[str, str]:
    """Percent right per topic (every topic of the bank, empty when none was asked) and in total."""
    row = {}
    for topic in TOPICS:
        tally = exam["per_topic"].get(topic)
        row[f"exam-{topic}"] = f"{100 * tally['right'] / tally['total']:.1f}" if tally and tally.get("total") else ""
    score = exam.get("score", {})
    row["exam-total"] = f"{100 * score['right'] / score['total']:.1f}" if score.get("total") else ""
    return row


def _number(x: float) -> str:
    return f"{x:g}"


def grades_csv(lab: str, part_ids: list[str], results: list[SubmissionResult], exams: dict[str, dict],
               timestamps: dict[str, str] | None = None) -> str:
    """The CSV text: one row per student (lab results and mock exam together), sorted by student id."""
    timestamps = timestamps or {}
    exam_cols = [f"exam-{t}" for t in TOPICS] + ["exam-total"] if exams else []
    columns = NBGRADER_COLUMNS + part_ids + ["problem"] + exam_cols
    by_student = {r.student: r for r in results}
    out = io.StringIO()
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    writer.writeheader()
    for student in sorted(set(by_student) | set(exams)):
        row = {c: "" for c in columns}
        row.update(student_id=student)
        if (result := by_student.get(student)) is not None:
            row.update(assignment=lab, timestamp=timestamps.get(student, ""), raw_score=_number(result.score),
                       late_submission_penalty="0", score=_number(result.score), max_score=_number(result.max_score),
                       problem=result.problem)
            row.update({p.id: _number(p.points) for p in result.parts})
        if student in exams:
            row.update(exam_columns(exams[student]))
        writer.writerow(row)
    return out.getvalue()


def results_json(lab: str, results: list[SubmissionResult], exams: dict[str, dict]) -> str:
    data = {"lab": lab, "submissions": [r.to_dict() for r in sorted(results, key=lambda r: r.student)],
            "mock_exams": {s: {"score": e.get("score"), "per_topic": e.get("per_topic"),
                               "finished_at": e.get("finished_at")} for s, e in sorted(exams.items())}}
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"
