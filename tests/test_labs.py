"""Every lab in labs/ (found by folder, so new labs are checked as they land): its format, its
committed student copy equals what `python -m grading release` writes, its README follows the
lab format, and `python -m grading validate` passes (solution: full marks; starter: zero)."""
from __future__ import annotations

import pytest

import re

from grading.cells import format_problems, read_notebook
from grading.glossary import load_glossary, lookup, notebook_key_terms
from grading.labs import all_labs, labs_dir
from grading.release import released_text
from grading.validate import validate

LABS = all_labs()
ids = [lab.name for lab in LABS]


def test_labs_are_found():
    assert LABS, f"no lab with a source notebook under {labs_dir()}"


@pytest.mark.parametrize("lab", LABS, ids=ids)
def test_source_follows_the_lab_format(lab):
    assert format_problems(read_notebook(lab.source), source=True) == []


@pytest.mark.parametrize("lab", LABS, ids=ids)
def test_student_copy_is_up_to_date(lab):
    assert lab.student.is_file(), f"run python -m grading release {lab.name} and commit {lab.student.name}"
    assert lab.student.read_text() == released_text(lab), \
        f"{lab.student.name} is out of date: run python -m grading release {lab.name}"


@pytest.mark.parametrize("lab", LABS, ids=ids)
def test_readme_starts_from_vagrant_up_and_names_the_notebook(lab):
    readme = (lab.folder / "README.md").read_text()
    assert "vagrant up" in readme and f"{lab.name}.ipynb" in readme
    for section in ("How to check your work", "Bonus"):
        assert section.lower() in readme.lower(), f"the README needs a {section!r} section"


def test_grade_ids_are_unique_across_all_labs():
    seen: dict[str, str] = {}
    for lab in LABS:
        for cell in read_notebook(lab.source).cells:
            gid = cell.metadata.nbgrader.grade_id
            assert gid not in seen, f"{gid} is used by {seen[gid]} and {lab.name}"
            seen[gid] = lab.name


@pytest.mark.parametrize("lab", LABS, ids=ids)
def test_key_terms_use_the_glossarys_chinese(lab):
    glossary = load_glossary()
    wrong = []
    for _, en, zh in notebook_key_terms(lab.source.parent):
        entry = lookup(glossary, en)
        if entry is None:
            wrong.append(f"**{en}** ({zh}) is not in grading/questions/glossary.yaml")
        elif zh not in (entry.zh, *re.findall(r"[（(]([^()（）]+)[)）]$", entry.zh)):
            wrong.append(f"**{en}** ({zh}): the glossary says {entry.zh}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.slow
@pytest.mark.v2     # the course VM is cgroup v2: every lab must grade there too
@pytest.mark.parametrize("lab", LABS, ids=ids)
def test_lab_validates(lab):
    v = validate(lab)
    assert v.ok, "; ".join(v.problems)
