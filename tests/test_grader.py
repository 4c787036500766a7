"""The grader's pieces on a small lab made here (no engine inside it): release, the format
check, restoring cells by grade_id, scoring from the kernel's status, grading.check, the
CLI's errors, and the gradebook with mock-exam results. Kernels run on the host: these
notebooks are ours. The sandboxed runs are in test_grader_sandbox.py."""
from __future__ import annotations

import copy
import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from grading.assemble import assemble
from grading.cells import STUB, format_problems, graded_parts, notebook_json, read_notebook, source_text
from grading.grade import Limits, grade_notebook, host_runner
from grading.gradebook import NBGRADER_COLUMNS, grades_csv, read_exams
from grading.labs import Lab, find_lab
from grading.release import release, released_text, student_version
from grading.score import PartResult, SubmissionResult
from grading.validate import validate

PUBLIC = 'print("public checks passed; hidden checks run at grading")'


def _cell(gid: str, kind: str, source: str, points: float | None = None, cell_type: str = "code") -> dict:
    meta = {"grade": kind == "test", "grade_id": gid, "locked": kind != "solution", "schema_version": 3,
            "solution": kind == "solution", "task": False}
    if points is not None:
        meta["points"] = points
    cell = {"cell_type": cell_type, "id": gid, "metadata": {"nbgrader": meta}, "source": source}
    if cell_type == "code":
        cell.update(outputs=[], execution_count=None)
    return cell


def toy_source() -> dict:
    """A three-part lab: double, greet, and a part whose hidden test alone catches a wrong answer."""
    cells = [
        _cell("toy-intro", "locked", "# Toy lab", cell_type="markdown"),
        _cell("toy-setup", "locked", "FACTOR = 2"),
        _cell("toy-double-code", "solution", 'def double(x):\n    """Twice x."""\n    ### BEGIN SOLUTION\n'
                                              '    return FACTOR * x\n    ### END SOLUTION'),
        _cell("toy-double", "test", f'assert double(1) == 2, "double(1) should be twice 1"\n{PUBLIC}\n'
                                    '### BEGIN HIDDEN TESTS\nassert double(21) == 42, "double(21)"\n### END HIDDEN TESTS',
              points=2),
        _cell("toy-greet-code", "solution", "def greet(name):\n    ### BEGIN SOLUTION\n    return f'hi {name}'\n"
                                            "    ### END SOLUTION"),
        _cell("toy-greet", "test", f'assert greet("a").startswith("hi"), "start with hi"\n{PUBLIC}\n'
                                   '### BEGIN HIDDEN TESTS\nassert greet("bo") == "hi bo", "greet by name"\n'
                                   '### END HIDDEN TESTS', points=1),
        _cell("toy-odd-code", "solution", "def is_odd(n):\n    ### BEGIN SOLUTION\n    return n % 2 == 1\n"
                                          "    ### END SOLUTION"),
        _cell("toy-odd", "test", f'assert is_odd(1) is True, "1 is odd"\n{PUBLIC}\n'
                                 '### BEGIN HIDDEN TESTS\nassert is_odd(4) is False, "4 is even"\n### END HIDDEN TESTS',
              points=3),
    ]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"}}, "nbformat": 4, "nbformat_minor": 5}


@pytest.fixture
def toy_lab(tmp_path) -> Lab:
    folder = tmp_path / "labs" / "99-toy"
    (folder / "source").mkdir(parents=True)
    (folder / "source" / "99-toy.ipynb").write_text(notebook_json(toy_source()))
    return Lab("99-toy", folder)


def _by_id(nb: dict) -> dict[str, dict]:
    return {c["metadata"]["nbgrader"]["grade_id"]: c for c in nb["cells"] if c["metadata"].get("nbgrader")}


def _edit(nb: dict, **sources: str) -> dict:
    nb = copy.deepcopy(nb)
    cells = _by_id(nb)
    for gid, text in sources.items():
        cells[gid.replace("_", "-")]["source"] = text
    return nb


def _grade(submission: dict | None, **limits) -> SubmissionResult:
    result, _ = grade_notebook(toy_source(), submission, student="s", lab="99-toy", runner=host_runner,
                               limits=Limits(**limits) if limits else Limits(cell_timeout=20, notebook_timeout=60))
    return result


# ---- release ------------------------------------------------------------------------------------

def test_release_replaces_each_solution_with_nbgraders_stub_and_keeps_the_lines_around_it():
    student = _by_id(student_version(toy_source()))
    text = source_text(student["toy-double-code"])
    assert text == 'def double(x):\n    """Twice x."""\n    ' + "\n    ".join(STUB)
    assert "FACTOR * x" not in json.dumps(student)


def test_release_removes_hidden_tests_and_keeps_the_public_checks():
    student = student_version(toy_source())
    test = source_text(_by_id(student)["toy-double"])
    assert "double(21)" not in test and "HIDDEN" not in test
    assert test.endswith(PUBLIC)


def test_release_keeps_cell_ids_and_metadata_and_clears_outputs():
    source = toy_source()
    source["cells"][1]["outputs"] = [{"output_type": "stream", "name": "stdout", "text": "old"}]
    student = student_version(source)
    assert [c["id"] for c in student["cells"]] == [c["id"] for c in source["cells"]]
    assert [c["metadata"] for c in student["cells"]] == [c["metadata"] for c in source["cells"]]
    assert all(c.get("outputs", []) == [] for c in student["cells"])


def test_release_writes_the_same_bytes_every_time(toy_lab):
    assert release(toy_lab) is True
    first = toy_lab.student.read_bytes()
    assert release(toy_lab) is False
    assert toy_lab.student.read_bytes() == first == released_text(toy_lab).encode()


def test_release_refuses_a_source_that_breaks_the_format():
    broken = toy_source()
    broken["cells"][3]["metadata"]["nbgrader"]["locked"] = False
    with pytest.raises(ValueError, match="a test cell must be locked"):
        student_version(broken)


@pytest.mark.parametrize("change, problem", [
    (lambda nb: nb["cells"][1]["metadata"].clear(), "no nbgrader metadata"),
    (lambda nb: nb["cells"][2]["metadata"]["nbgrader"].update(grade_id="toy-setup"), "grade_id used twice"),
    (lambda nb: nb["cells"][3]["metadata"]["nbgrader"].pop("points"), "needs positive points"),
    (lambda nb: nb["cells"][3].update(source="assert True"), "must end with print"),
    (lambda nb: nb["cells"][2].update(source="def double(x):\n    return 2 * x"), "needs a ### BEGIN SOLUTION"),
    (lambda nb: nb["cells"][3].update(source=f"### BEGIN HIDDEN TESTS\n{PUBLIC}"), "unbalanced"),
    (lambda nb: nb["cells"][1]["metadata"]["nbgrader"].update(grade_id="Toy Setup"), "lowercase"),
    (lambda nb: nb.update(cells=nb["cells"][:6]), "2 graded parts: a lab has 3 to 5"),
])
def test_the_format_check_names_each_problem(change, problem):
    nb = toy_source()
    change(nb)
    assert any(problem in p for p in format_problems(nb, source=True)), format_problems(nb, source=True)


# ---- restoring cells by grade_id -----------------------------------------------------------------

def test_locked_and_test_cells_come_from_the_source_even_when_the_submission_edited_them():
    sub = _edit(student_version(toy_source()), toy_double="print('public checks passed')", toy_setup="FACTOR = 3")
    graded = _by_id(assemble(toy_source(), sub).notebook)
    assert "double(21)" in source_text(graded["toy-double"])      # hidden tests injected
    assert source_text(graded["toy-setup"]) == "FACTOR = 2"


def test_deleted_cells_are_restored_and_a_missing_solution_gets_the_stub_and_a_note():
    sub = student_version(toy_source())
    sub["cells"] = [c for c in sub["cells"] if c["id"] == "toy-greet-code"]
    assembly = assemble(toy_source(), sub)
    assert [c["id"] for c in assembly.notebook["cells"]] == [c["id"] for c in toy_source()["cells"]]
    assert "NotImplementedError" in source_text(_by_id(assembly.notebook)["toy-double-code"])
    assert "missing" in assembly.notes["toy-double-code"]


def test_a_solution_cell_retyped_to_markdown_is_not_run_and_says_so():
    sub = student_version(toy_source())
    _by_id(sub)["toy-odd-code"]["cell_type"] = "markdown"
    assembly = assemble(toy_source(), sub)
    assert "markdown" in assembly.notes["toy-odd-code"]
    assert _by_id(assembly.notebook)["toy-odd-code"]["cell_type"] == "code"


def test_added_cells_stay_in_place_but_can_never_be_graded():
    sub = copy.deepcopy(toy_source())
    extra = _cell("toy-free-points", "test", "pass", points=99)
    sub["cells"].insert(3, extra)
    graded = assemble(toy_source(), sub).notebook
    kept = graded["cells"][3]
    assert source_text(kept) == "pass" and kept["metadata"] == {}
    assert [p.points for p in graded_parts(graded)] == [2, 1, 3]


# ---- scoring ---------------------------------------------------------------------------------------

def test_the_reference_solution_scores_full_marks_and_the_starter_zero():
    assert _grade(toy_source()).score == 6
    starter = _grade(student_version(toy_source()))
    assert starter.score == 0 and all("NotImplementedError" in p.message for p in starter.parts)


def test_a_score_comes_from_the_cells_status_never_from_what_it_printed():
    # prints the public line, then the hidden test fails: no points
    wrong = _edit(toy_source(), toy_odd_code="def is_odd(n):\n    print('" + PUBLIC[7:-2] + "')\n    return n in (1, 4)")
    result = _grade(wrong)
    assert result.parts[2].points == 0 and result.parts[2].message == "AssertionError: 4 is even"
    # passes silently: full points
    quiet = _edit(toy_source(), toy_greet_code="import contextlib, io\ndef greet(name):\n    return 'hi ' + name")
    assert _grade(quiet).parts[1].points == 1


def test_a_failure_message_shows_the_assert_message_and_never_the_test_code():
    result = _grade(_edit(toy_source(), toy_greet_code="def greet(name):\n    return 'hi'"))
    assert result.parts[1].message == "AssertionError: greet by name"


def test_a_kernel_that_is_made_to_report_success_scores_nothing():
    tamper = ("ip = get_ipython()\n_real = ip.run_cell_async\nasync def _ok(*a, **k):\n    r = await _real(*a, **k)\n"
              "    r.error_in_exec = None\n    return r\nip.run_cell_async = _ok\n"
              "def double(x):\n    return 0")
    result = _grade(_edit(toy_source(), toy_double_code=tamper))
    assert result.score == 0 and "tampered" in result.problem


def test_a_cell_past_its_timeout_is_interrupted_and_the_next_parts_still_run():
    loop = _edit(toy_source(), toy_greet_code="while True:\n    pass")
    result = _grade(loop, cell_timeout=3, notebook_timeout=60)
    assert [p.points for p in result.parts] == [2, 0, 3]
    assert "timeout" in result.parts[1].message and not result.problem


def test_a_notebook_past_its_total_time_stops_and_says_so():
    slow = _edit(toy_source(), toy_double_code="import time\ntime.sleep(4)\ndef double(x):\n    return 2 * x")
    result = _grade(slow, cell_timeout=10, notebook_timeout=3)
    assert result.score == 0 and "limit" in result.problem


# ---- validate and grading.check ----------------------------------------------------------------------

def test_validate_passes_a_sound_lab_and_fails_one_whose_starter_passes(toy_lab):
    release(toy_lab)
    assert validate(toy_lab).ok
    # a "solution" block that the stub can't break: the starter scores, so the lab is not valid
    nb = read_notebook(toy_lab.source)
    nb.cells[6].source = "def is_odd(n):\n    return n % 2 == 1\n### BEGIN SOLUTION\n### END SOLUTION"
    toy_lab.source.write_text(notebook_json(nb))
    release(toy_lab)
    v = validate(toy_lab)
    assert not v.ok and any("toy-odd: the untouched starter scores 3" in p for p in v.problems)


def test_validate_says_when_the_student_copy_is_out_of_date(toy_lab):
    release(toy_lab)
    toy_lab.student.write_text(toy_lab.student.read_text().replace("Toy lab", "Toy lab!"))
    assert any("out of date" in p for p in validate(toy_lab).problems)


def test_grading_check_runs_the_public_checks_in_the_callers_namespace(toy_lab, monkeypatch):
    import grading

    release(toy_lab)
    monkeypatch.setenv("MINICONTAINER_LABS", str(toy_lab.folder.parent))
    namespace = {"grading": grading}
    exec("def double(x):\n    return 2 * x\ngrading.check('toy-double')", namespace)   # hidden double(21) not run
    exec("def double(x):\n    return 3\n", namespace)
    with pytest.raises(AssertionError, match="twice 1"):
        exec("grading.check('toy-double')", namespace)
    with pytest.raises(LookupError, match="no graded part 'toy-nope'"):
        grading.check("toy-nope")


def test_find_lab_takes_a_name_a_number_or_a_topic(toy_lab):
    root = toy_lab.folder.parent
    assert find_lab("99-toy", root) == find_lab("99", root) == find_lab("toy", root) == toy_lab
    with pytest.raises(ValueError, match="choose one of 99-toy"):
        find_lab("nope", root)


def _cli(*args: str, env_labs: Path | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **({"MINICONTAINER_LABS": str(env_labs)} if env_labs else {})}
    return subprocess.run([sys.executable, "-m", "grading", *args], capture_output=True, text=True, env=env,
                          cwd=Path(__file__).parent.parent)


def test_the_cli_says_in_one_line_what_is_wrong_and_how_to_fix_it(toy_lab):
    done = _cli("validate", "nope", env_labs=toy_lab.folder.parent)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "python -m grading validate: no lab 'nope' (with a source/nope.ipynb): choose one of 99-toy"]
    stale = _cli("release", "--check", env_labs=toy_lab.folder.parent)
    assert stale.returncode == 1 and "OUT OF DATE: run python -m grading release 99-toy" in stale.stdout
    assert _cli("check").returncode == 0       # the question bank's check is still there


def test_the_cli_help_names_the_grader_and_the_quiz_commands():
    shown = _cli("--help")
    assert shown.returncode == 0, shown.stderr
    for command in ("release", "validate", "autograde", "grading quiz", "grading check"):
        assert command in shown.stdout, f"`python -m grading --help` should name {command}"
    bare = _cli()
    assert bare.returncode == 2 and "autograde" in bare.stdout, "no command: the same overview, and exit 2"


# ---- the gradebook ------------------------------------------------------------------------------------

def _mock_exam(folder: Path, right: int) -> Path:
    """A real mock exam saved by the quiz widget, with the first ``right`` answers right."""
    from grading.quiz_widget import QuizApp

    app = QuizApp(mode="mock", n=6, seed=3, clock=lambda: 1_700_000_000.0)
    app.start_mock(n=6, seed=3)
    for i, q in enumerate(app.questions):
        wrong = {"single": (q.answer + 1) % max(len(q.choices), 2) if q.type == "single" else None,
                 "truefalse": not q.answer if q.type == "truefalse" else None,
                 "multiple": [i for i in range(len(q.choices)) if i not in q.answer][:1] or [0]
                 if q.type == "multiple" else None,
                 "short": "no idea"}[q.type]
        app.select(q.answer if q.type != "short" and i < right else (q.answer[0] if i < right else wrong))
        app.next()
    return app.finish(folder)


def test_mock_exam_results_land_in_grades_csv_beside_the_lab(tmp_path):
    _mock_exam(tmp_path / "exams" / "alice", right=4)
    _mock_exam(tmp_path / "exams" / "carol", right=6)
    exams = read_exams(tmp_path / "exams")
    assert set(exams) == {"alice", "carol"}
    lab_results = [SubmissionResult("alice", "99-toy", [PartResult("toy-double", 2, 2, "passed")]),
                   SubmissionResult("bob", "99-toy", [PartResult("toy-double", 0, 2, "failed", "x")])]
    rows = list(csv.DictReader(io.StringIO(grades_csv("99-toy", ["toy-double"], lab_results, exams))))
    header = list(rows[0])
    assert header[:len(NBGRADER_COLUMNS)] == NBGRADER_COLUMNS and "toy-double" in header
    assert "exam-total" in header and "exam-namespaces-cgroups" in header
    by = {r["student_id"]: r for r in rows}
    assert set(by) == {"alice", "bob", "carol"}
    assert by["alice"]["score"] == "2" and by["alice"]["exam-total"] == f"{100 * 4 / 6:.1f}"
    assert by["carol"]["exam-total"] == "100.0" and by["carol"]["score"] == ""
    assert by["bob"]["exam-total"] == "" and by["bob"]["toy-double"] == "0"
    topics = [k for k in header if k.startswith("exam-") and k != "exam-total" and by["carol"][k]]
    assert topics and all(by["carol"][k] == "100.0" for k in topics)


def test_submissions_are_found_as_notebooks_folders_or_handin_archives(tmp_path, toy_lab):
    import tarfile

    from grading.autograde import find_submissions

    release(toy_lab)
    subs = tmp_path / "in"
    (subs / "bob" / "labs" / "99-toy").mkdir(parents=True)
    (subs / "alice.ipynb").write_bytes(toy_lab.student.read_bytes())
    (subs / "bob" / "labs" / "99-toy" / "99-toy.ipynb").write_bytes(toy_lab.student.read_bytes())
    (subs / "bob" / "scratch.ipynb").write_text("{}")
    (subs / "dan").mkdir()
    (subs / "eve.ipynb").symlink_to("/etc/passwd")
    work = tmp_path / "work"
    (work / "labs" / "99-toy").mkdir(parents=True)
    (work / "labs" / "99-toy" / "99-toy.ipynb").write_bytes(toy_lab.student.read_bytes())
    (work / "evil").write_text("never extracted")
    with tarfile.open(subs / "handin-carol-20261207-0900.tar.gz", "w:gz") as tar:
        tar.add(work / "labs", arcname="labs")
        tar.add(work / "evil", arcname="../../evil")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    found = {s.student: s for s in find_submissions(subs, toy_lab, scratch)}
    assert set(found) == {"alice", "bob", "carol", "dan"}, "symlinks are skipped"
    assert found["bob"].path.name == "99-toy.ipynb"
    assert found["carol"].path.parent == scratch and found["carol"].path.read_bytes() == toy_lab.student.read_bytes()
    assert found["dan"].path is None and "no notebook" in found["dan"].problem
    assert [p for p in tmp_path.parent.rglob("evil") if work not in p.parents] == [], "nothing else is extracted"
