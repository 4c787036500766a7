"""autograde: grade a folder of submissions, each in its own container (grading/container.py).

Every submission gets a fresh container and working directory; a broken one gets a row that
says what happened and never stops the batch. Writes grades.csv, results.json, one HTML
feedback page per student and summary.png.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import tarfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from jupyter_core.utils import ensure_event_loop
from minicontainer.atomic import write_atomic

from grading.cells import graded_parts, read_notebook
from grading.container import GradingEnvironment, SandboxLimits
from grading.feedback import feedback_html
from grading.grade import Limits, grade_notebook, read_submission
from grading.gradebook import grades_csv, read_exams, results_json
from grading.labs import Lab, find_lab
from grading.score import PartResult, SubmissionResult
from grading.summary import write_summary

NOTEBOOK_LIMIT = 20 * 2**20      # bytes: a bigger "notebook" is not read
STUDENT_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass
class Submission:
    student: str
    path: Path | None      # the notebook file; None when it could not be found or taken out
    problem: str = ""
    timestamp: str = ""


def _student(name: str) -> str:
    return STUDENT_NAME.sub("_", name).strip("._") or "unnamed"


def _from_archive(archive: Path, lab: Lab, into: Path) -> tuple[Path | None, str]:
    """The lab's notebook from a `make handin` archive, read as bytes: nothing else is extracted."""
    try:
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(f"{lab.name}.ipynb")]
            if not members:
                return None, f"the archive holds no {lab.name}.ipynb"
            member = min(members, key=lambda m: len(m.name))
            if member.size > NOTEBOOK_LIMIT:
                return None, f"the notebook is over {NOTEBOOK_LIMIT // 2**20} MiB"
            target = into / f"{archive.name}.ipynb"
            target.write_bytes(tar.extractfile(member).read())
            return target, ""
    except (tarfile.TarError, OSError, EOFError) as exc:
        return None, f"the archive could not be read ({type(exc).__name__})"


def find_submissions(folder: Path, lab: Lab, scratch: Path) -> list[Submission]:
    """STUDENT.ipynb, STUDENT/…/NN-topic.ipynb (or its only notebook), handin-STUDENT-….tar.gz."""
    found: dict[str, Submission] = {}
    for entry in sorted(folder.iterdir()):
        if entry.is_symlink():
            continue
        if entry.is_file() and entry.suffix == ".ipynb":
            sub = Submission(_student(entry.stem), entry)
        elif entry.is_file() and entry.name.endswith((".tar.gz", ".tgz", ".tar")):
            m = re.match(r"handin-(.+?)-\d{8}-\d{4}", entry.name)
            path, problem = _from_archive(entry, lab, scratch)
            sub = Submission(_student(m.group(1) if m else entry.name.split(".")[0]), path, problem)
        elif entry.is_dir():
            notebooks = [p for p in entry.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.is_symlink()]
            named = [p for p in notebooks if p.name == f"{lab.name}.ipynb"]
            pick = sorted(named or notebooks, key=lambda p: (len(p.parts), str(p)))
            sub = Submission(_student(entry.name), pick[0] if pick else None,
                             "" if pick else f"no notebook in the folder (expected {lab.name}.ipynb)")
        else:
            continue
        if sub.path is not None:
            if sub.path.stat().st_size > NOTEBOOK_LIMIT:
                sub = Submission(sub.student, None, f"the notebook is over {NOTEBOOK_LIMIT // 2**20} MiB")
            else:
                mtime = entry.stat().st_mtime
                sub.timestamp = datetime.fromtimestamp(mtime, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        while sub.student in found:
            sub.student += "_"
        found[sub.student] = sub
    return list(found.values())


# ---- one worker process per job slot ----------------------------------------------------------
_WORKER: dict = {}


def _init_worker(slots, env: GradingEnvironment) -> None:
    # A forked worker inherits the event loop its parent's kernel clients ran on, epoll
    # instance included: shared with the parent, it would wake the wrong process. Close our
    # copy, so that nbclient makes a fresh loop here.
    ensure_event_loop().close()
    # each worker keeps its slot (its containers' uid range) for the whole batch
    _WORKER.update(runner=env.runner(slots.get()))


def grade_one(source_path: str, lab_name: str, sub: Submission, limits: Limits) -> SubmissionResult:
    """Grade one submission in the worker's container; any failure of the grader itself becomes the row."""
    source = read_notebook(source_path)
    try:
        submission, problem = read_submission(sub.path) if sub.path else (None, sub.problem)
        result, _ = grade_notebook(source, submission, student=sub.student, lab=lab_name, runner=_WORKER["runner"],
                                   limits=limits, problem=problem)
        return result
    except Exception as exc:   # the batch goes on: this row says the grader could not grade it
        parts = [PartResult(p.id, 0, p.points, "not run", "not graded") for p in graded_parts(source)]
        return SubmissionResult(sub.student, lab_name, parts, f"the grader failed on this submission: "
                                f"{type(exc).__name__}: {str(exc)[:200]}")


def autograde(lab: Lab, folder: Path, out: Path, *, jobs: int = 1, limits: Limits | None = None,
              sandbox_limits: SandboxLimits | None = None, exams_dir: Path | None = None,
              preflight: bool = True) -> list[SubmissionResult]:
    """Grade every submission in ``folder``; write the gradebook, feedback and summary into ``out``.
    First (``preflight``) the lab's reference solution is graded in the same container: if it
    can't score full marks there, no submission could, and nothing is graded."""
    limits = limits or Limits()
    sandbox_limits = sandbox_limits or SandboxLimits()
    source = read_notebook(lab.source)
    part_ids = [p.id for p in graded_parts(source)]
    out.mkdir(parents=True, exist_ok=True)
    with GradingEnvironment(sandbox_limits) as env:
        scratch = env.workspace / "submissions"
        scratch.mkdir()
        subs = find_submissions(folder, lab, scratch)
        ctx = multiprocessing.get_context("fork")   # spawn would leave a resource-tracker process behind
        slots = ctx.Queue()
        for slot in range(jobs):
            slots.put(slot)
        with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_init_worker, initargs=(slots, env)) as pool:
            if preflight:
                check = pool.submit(grade_one, str(lab.source), lab.name, Submission("reference", lab.source), limits)
                refuse_ungradeable(lab, check.result())
            futures = [pool.submit(grade_one, str(lab.source), lab.name, s, limits) for s in subs]
            results = [f.result() for f in futures]
    exams = read_exams(exams_dir) if exams_dir else {}
    write_outputs(out, lab.name, part_ids, results, exams, {s.student: s.timestamp for s in subs})
    return results


class Ungradeable(ValueError):
    """The lab's reference solution can't score full marks in the grader's container."""


def refuse_ungradeable(lab: Lab, reference: SubmissionResult) -> None:
    if reference.score == reference.max_score and not reference.problem and not reference.setup_error:
        return
    failing = next((p for p in reference.parts if p.points < p.max_points), None)
    why = reference.setup_error or (f"{failing.id}: {failing.message}" if failing else reference.problem)
    what = ("fails its setup" if reference.setup_error else
            f"scores {reference.score:g}/{reference.max_score:g}")
    raise Ungradeable(f"lab {lab.name} can't be graded in the container: its reference solution {what} "
                      f"there ({why[:160]}); see labs/README.md, "
                      "\"Which labs autograde can grade\"")


def write_outputs(out: Path, lab: str, part_ids: list[str], results: list[SubmissionResult], exams: dict,
                  timestamps: dict[str, str]) -> None:
    write_atomic(out / "grades.csv", grades_csv(lab, part_ids, results, exams, timestamps).encode())
    write_atomic(out / "results.json", results_json(lab, results, exams).encode())
    feedback = out / "feedback"
    feedback.mkdir(exist_ok=True)
    for r in results:
        write_atomic(feedback / f"{r.student}.html", feedback_html(r).encode())
    if results:
        write_summary(out / "summary.png", lab, part_ids, results)


def autograde_cli(a: argparse.Namespace) -> int:
    lab = find_lab(a.lab)
    folder = Path(a.submissions)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder: give the folder of submitted notebooks")
    if os.geteuid() != 0:
        raise ValueError("autograde needs root: it runs each submission in its own container (run it with sudo)")
    out = Path(a.out) if a.out else folder.resolve().parent / f"graded-{lab.name}"
    limits = Limits(cell_timeout=a.cell_timeout, notebook_timeout=a.notebook_timeout)
    results = autograde(lab, folder, out, jobs=a.jobs, limits=limits,
                        exams_dir=Path(a.exams) if a.exams else None)
    for r in sorted(results, key=lambda r: r.student):
        print(f"{r.student:24} {r.score:5g} / {r.max_score:g}  {r.problem}")
    print(f"graded {len(results)} submissions of {lab.name}: {out}/grades.csv, results.json, feedback/, summary.png")
    return 0
