"""python -m grading: the labs' grader (release, validate, autograde) beside the exam-prep quiz."""
from __future__ import annotations

import argparse
import sys

from grading import quiz

GRADER_COMMANDS = ("release", "validate", "autograde")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m grading",
                                description="Labs: release the student copy, validate, auto-grade (实验自动评分)")
    sub = p.add_subparsers(dest="command", required=True)
    rel = sub.add_parser("release", help="write the student copy of a lab from its source notebook")
    rel.add_argument("labs", nargs="*", metavar="LAB", help="e.g. 01-namespaces (default: every lab)")
    rel.add_argument("--check", action="store_true", help="write nothing; fail if a committed copy is out of date")
    val = sub.add_parser("validate", help="the solution must score full marks, the untouched starter zero")
    val.add_argument("labs", nargs="*", metavar="LAB", help="e.g. 01-namespaces (default: every lab)")
    val.add_argument("--sandbox", action="store_true",
                     help="run both in autograde's container, as submissions are (proves the lab gradeable there)")
    auto = sub.add_parser("autograde", help="grade a folder of submissions, each in its own container")
    auto.add_argument("lab", metavar="LAB")
    auto.add_argument("submissions", metavar="SUBMISSIONS_DIR",
                      help="one notebook per student (STUDENT.ipynb or STUDENT/*.ipynb, or make handin archives)")
    auto.add_argument("--jobs", type=_positive, default=1, help="submissions graded at once (default 1)")
    auto.add_argument("--out", metavar="DIR", help="where grades.csv, results.json, feedback/ go "
                                                  "(default: SUBMISSIONS_DIR/../graded-LAB)")
    auto.add_argument("--exams", metavar="DIR", help="mock-exam JSON results (exam-results/) to add to grades.csv")
    auto.add_argument("--cell-timeout", type=_positive, default=60, metavar="S")
    auto.add_argument("--notebook-timeout", type=_positive, default=300, metavar="S")
    return p


def _labs(names: list[str]):
    from grading.labs import all_labs, find_lab

    labs = [find_lab(n) for n in names] if names else all_labs()
    if not labs:
        raise ValueError("no labs found: add labs/NN-topic/source/NN-topic.ipynb (see labs/README.md)")
    return labs


def cmd_release(a: argparse.Namespace) -> int:
    from grading.release import release, released_text

    stale = 0
    for lab in _labs(a.labs):
        if a.check:
            current = lab.student.is_file() and lab.student.read_text() == released_text(lab)
            stale += not current
            print(f"{lab.name}: {'up to date' if current else 'OUT OF DATE: run python -m grading release ' + lab.name}")
        else:
            print(f"{lab.name}: {'wrote' if release(lab) else 'unchanged'} {lab.student}")
    return 1 if stale else 0


def cmd_validate(a: argparse.Namespace) -> int:
    from grading.validate import print_table, validate

    from contextlib import ExitStack

    failed = 0
    with ExitStack() as stack:
        runner = {}
        if a.sandbox:
            from grading.container import GradingEnvironment

            runner = {"runner": stack.enter_context(GradingEnvironment()).runner(0)}
        for lab in _labs(a.labs):
            v = validate(lab, **runner)
            print_table(v)
            failed += not v.ok
    return 1 if failed else 0


def cmd_autograde(a: argparse.Namespace) -> int:
    from grading.autograde import autograde_cli

    return autograde_cli(a)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in ([], ["-h"], ["--help"]):   # one overview of both halves, not just the quiz's
        print(parser().format_help().rstrip())
        print("\nexam prep (练习与模拟考试):\n  python -m grading quiz [--lang zh] [--topic T] [--mock N] [--seed S]\n"
              "  python -m grading check     validate the question bank, count questions per topic")
        return 0 if argv else 2
    if argv[0] not in GRADER_COMMANDS:
        return quiz.main(argv)
    a = parser().parse_args(argv)
    from grading.cells import LabFormatError
    from grading.labs import LabNotFound

    try:
        return {"release": cmd_release, "validate": cmd_validate, "autograde": cmd_autograde}[a.command](a)
    except (LabNotFound, LabFormatError, ValueError, OSError) as exc:
        print(f"python -m grading {a.command}: {exc}", file=sys.stderr)
        return 2
