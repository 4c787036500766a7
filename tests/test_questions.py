"""The exam-prep question bank, the bilingual glossary and the quiz.

The bank must be sound (schema, counts, citations that exist), the glossary must cover every
key term a notebook marks bilingually, and the quiz logic (draw, check, score, feedback)
works without a terminal; one run of ``python -m grading quiz --mock 3 --seed 1`` is fed
its answers on stdin."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from grading import quiz
from grading.glossary import load_glossary, lookup, notebook_key_terms
from grading.questions import (TOPICS, Question, check_cite, load_bank, load_raw,
                               notebook_headings, validate)

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def bank() -> list[Question]:
    return load_bank()


@pytest.fixture(scope="module")
def glossary():
    return load_glossary()


# ---------------------------------------------------------------- the bank's schema

def test_the_bank_loads_with_no_schema_problem():
    assert validate(load_raw()) == []


def test_the_bank_has_at_least_150_questions(bank):
    assert len(bank) >= 150, f"{len(bank)} questions; the target is 150"


def test_every_topic_has_at_least_8_questions(bank):
    counts = Counter(q.topic for q in bank)
    short = {t: counts.get(t, 0) for t in TOPICS if counts.get(t, 0) < 8}
    assert not short, f"topics with fewer than 8 questions: {short}"


def test_ids_are_unique(bank):
    dupes = [i for i, n in Counter(q.id for q in bank).items() if n > 1]
    assert not dupes, f"duplicate ids: {dupes}"


def test_single_choice_questions_have_exactly_one_valid_answer(bank):
    for q in bank:
        if q.type == "single":
            assert isinstance(q.answer, int) and not isinstance(q.answer, bool), q.id
            assert 0 <= q.answer < len(q.choices), q.id


def test_the_right_choice_is_not_always_in_the_same_place(bank):
    positions = Counter(q.answer for q in bank if q.type == "single")
    total = sum(positions.values())
    assert max(positions.values()) <= 0.4 * total, f"single-choice answers by position: {dict(positions)}"
    assert Counter(q.answer for q in bank if q.type == "truefalse").keys() == {True, False}


def test_multiple_choice_answers_are_valid_distinct_indexes(bank):
    for q in bank:
        if q.type == "multiple":
            assert len(set(q.answer)) == len(q.answer) >= 2, q.id
            assert all(0 <= a < len(q.choices) for a in q.answer), q.id


def test_every_text_is_in_english_and_chinese_with_an_explanation(bank):
    for q in bank:
        for part in (q.question, q.explanation, *q.choices):
            assert part.get("en", "").strip() and part.get("zh", "").strip(), q.id
    assert all(q.type in ("truefalse", "short") or len(q.choices) >= 2 for q in bank)


def test_short_answers_accept_text(bank):
    for q in bank:
        if q.type == "short":
            assert q.answer and all(isinstance(a, str) and a.strip() for a in q.answer), q.id


def test_every_cited_notebook_section_exists(bank):
    cache: dict = {}
    missing = [f"{q.id}: {p}" for q in bank if (p := check_cite(q.cite, ROOT, cache))]
    assert not missing, "\n".join(missing)


def test_the_bank_uses_all_four_question_types_and_three_difficulties(bank):
    assert {q.type for q in bank} == {"single", "multiple", "truefalse", "short"}
    assert {q.difficulty for q in bank} == {1, 2, 3}


def test_the_validator_finds_each_kind_of_problem():
    # guard against a validator that passes everything
    good = {"id": "x-001", "topic": "vm", "difficulty": 1, "type": "single",
            "question": {"en": "Q?", "zh": "问题？"}, "choices": [{"en": "a", "zh": "甲"}, {"en": "b", "zh": "乙"}],
            "answer": 0, "explanation": {"en": "E.", "zh": "解释。"}, "cite": "seed"}
    assert validate([good]) == []
    broken = [
        {**good, "answer": [0, 1]},                                 # single with two answers
        {**good, "answer": 2},                                      # index out of range
        {**good, "question": {"en": "Q?"}},                         # no Chinese
        {**good, "explanation": {"en": "E.", "zh": ""}},           # empty explanation
        {**good, "type": "truefalse", "choices": [], "answer": 1},  # not a bool
        {**good, "type": "multiple", "answer": [1]},                # one answer only
        {**good, "topic": "cooking"},
        {**good, "difficulty": 4},
        {**good, "cite": "notebooks/01-what-is-a-container.ipynb#No such heading"},
        {**good, "cite": "notebooks/99-missing.ipynb#Summary"},
    ]
    for q in broken:
        assert validate([q]), f"not caught: {q}"
    assert any("id also used" in p for p in validate([good, dict(good)]))


def test_a_cite_survives_a_changed_chinese_gloss_but_not_a_changed_heading():
    ok = "notebooks/02-namespaces-and-cgroups.ipynb#Who owns the cgroup tree? Delegation (委派)"
    assert check_cite(ok) is None
    assert check_cite(ok.replace("(委派)", "(授权)")) is None
    assert check_cite(ok.replace("Delegation", "Ownership")) is not None


def test_headings_are_read_from_the_notebooks_markdown():
    headings = notebook_headings(ROOT / "notebooks" / "01-what-is-a-container.ipynb")
    assert "Summary" in headings


# ---------------------------------------------------------------- the glossary

def test_glossary_entries_are_bilingual_with_definitions(glossary):
    assert len(glossary) >= 60
    for e in glossary:
        assert e.en.strip() and e.zh.strip(), e
        assert e.definition.get("en", "").strip() and e.definition.get("zh", "").strip(), e.en
    names = Counter(n for e in glossary for n in e.names())
    assert not [n for n, c in names.items() if c > 1], "a term is listed twice"


@pytest.mark.parametrize("en, zh", [
    ("namespace", "命名空间"), ("control group", "控制组"), ("cgroup", "控制组"), ("image", "镜像"),
    ("layer", "镜像层"), ("container runtime", "容器运行时"), ("registry", "镜像仓库"),
    ("capability", "能力"), ("seccomp", "安全计算模式"), ("pseudo-terminal", "伪终端"),
    ("build context", "构建上下文"), ("lifecycle", "生命周期"), ("rootfs", "根文件系统"),
    ("daemon", "守护进程"), ("kernel", "内核"), ("hypervisor", "虚拟机监控程序"),
    ("UTS namespace", "UTS 命名空间"), ("mount namespace", "挂载命名空间"),
])
def test_glossary_uses_the_standard_chinese_term(glossary, en, zh):
    entry = lookup(glossary, en)
    assert entry is not None, f"{en} is not in the glossary"
    assert entry.zh == zh


def test_every_key_term_of_a_notebook_is_in_the_glossary_with_the_same_chinese(glossary):
    """A notebook marks a key term as **term** (中文) or **term (中文)**. Each must be in the
    glossary with the same Chinese; a rendering the glossary lists as `nonstandard` fails too,
    so a replaced term can't come back. Where the glossary keeps the English name with a
    Chinese gloss, as the Kubernetes documentation does ("OOM killer（内存不足终止机制）"), the
    notebook writes the gloss: **OOM killer (内存不足终止机制)**."""
    terms = notebook_key_terms()
    assert len(terms) >= 30, "the key-term pattern found too few terms: has the notebooks' markup changed?"
    missing, different, nonstandard = [], [], []
    for notebook, en, zh in terms:
        entry = lookup(glossary, en)
        if entry is None:
            missing.append(f"{notebook}: **{en}** ({zh})")
        elif zh not in (entry.zh, *re.findall(r"[（(]([^()（）]+)[)）]$", entry.zh)):
            (nonstandard if zh in entry.nonstandard else different).append(
                f"{notebook}: **{en}** ({zh}); glossary: {entry.zh}")
    assert not missing, "key terms not in grading/questions/glossary.yaml:\n" + "\n".join(missing)
    assert not different, "key terms whose Chinese differs from the glossary:\n" + "\n".join(different)
    assert not nonstandard, ("notebooks use Chinese terms the glossary marks non-standard; write the glossary's "
                             "term instead:\n" + "\n".join(nonstandard))


def test_lookup_matches_plurals_and_slashed_names(glossary):
    assert lookup(glossary, "Exit codes").en == "exit code"
    assert lookup(glossary, "repositories").en == "repository"
    assert lookup(glossary, "control groups / cgroups").zh == "控制组"
    assert lookup(glossary, "no such term") is None


# ---------------------------------------------------------------- the quiz logic, without a terminal

def test_a_seeded_mock_draw_is_reproducible(bank):
    first = [q.id for q in quiz.draw(bank, n=20, seed=7)]
    assert first == [q.id for q in quiz.draw(bank, n=20, seed=7)]
    assert first != [q.id for q in quiz.draw(bank, n=20, seed=8)]
    assert len(set(first)) == 20


def test_a_mock_draw_is_weighted_by_topic(bank):
    total_weight = sum(w for _, _, w in TOPICS.values())
    drawn = Counter(q.topic for q in quiz.draw(bank, n=2 * total_weight, seed=3))
    assert drawn == {t: 2 * w for t, (_, _, w) in TOPICS.items()}
    heavy = [t for t, (_, _, w) in TOPICS.items() if w == 3]
    light = [t for t, (_, _, w) in TOPICS.items() if w == 1]
    assert all(drawn[h] > drawn[l] for h in heavy for l in light)


def test_allocation_adds_up_for_any_size():
    import random
    for n in (1, 3, 13, 40, 100):
        counts = quiz.allocate(n, sorted(TOPICS), random.Random(1))
        assert sum(counts.values()) == n


def test_a_topic_draw_keeps_to_the_topic(bank):
    drawn = quiz.draw(bank, topic="security", seed=1)
    assert drawn and {q.topic for q in drawn} == {"security"}
    assert len(drawn) == sum(q.topic == "security" for q in bank)
    with pytest.raises(ValueError):
        quiz.draw(bank, topic="cooking")


def _question(bank, kind: str) -> Question:
    return next(q for q in bank if q.type == kind)


def test_answers_are_checked_for_every_question_type(bank):
    single, multiple = _question(bank, "single"), _question(bank, "multiple")
    tf, short = _question(bank, "truefalse"), _question(bank, "short")
    assert quiz.is_correct(single, single.answer)
    assert not quiz.is_correct(single, (single.answer + 1) % len(single.choices))
    assert quiz.is_correct(multiple, list(reversed(multiple.answer)))
    assert not quiz.is_correct(multiple, multiple.answer[:1])
    assert quiz.is_correct(tf, tf.answer) and not quiz.is_correct(tf, not tf.answer)
    assert quiz.is_correct(short, "  " + short.answer[0].upper() + " ")
    assert not quiz.is_correct(short, "something else entirely")
    assert not quiz.is_correct(single, None)


def test_typed_responses_are_parsed(bank):
    single, multiple = _question(bank, "single"), _question(bank, "multiple")
    tf = _question(bank, "truefalse")
    assert quiz.parse_response(single, "b\n") == 1
    assert quiz.parse_response(single, "2") == 1
    assert quiz.parse_response(single, "A C") is None
    assert quiz.parse_response(single, "Z") is None
    assert quiz.parse_response(multiple, "c, a") == [0, 2]
    assert quiz.parse_response(multiple, "AC") == [0, 2]
    assert quiz.parse_response(tf, "对") is True and quiz.parse_response(tf, "F") is False
    assert quiz.parse_response(tf, "maybe") is None


def test_practice_feedback_gives_the_answer_and_explanation_in_both_languages(bank):
    q = _question(bank, "single")
    wrong = (q.answer + 1) % len(q.choices)
    fb = quiz.feedback(q, wrong, "en")
    assert not fb.correct and q.choices[q.answer]["en"] in fb.message
    assert fb.explanation == q.explanation["en"] and fb.cite == q.cite
    fb_zh = quiz.feedback(q, q.answer, "zh")
    assert fb_zh.correct and fb_zh.message == "正确。" and fb_zh.explanation == q.explanation["zh"]


def test_scoring_per_topic_lists_the_notebooks_to_revisit(bank):
    a = next(q for q in bank if q.topic == "lifecycle" and q.cite != "seed")
    b = next(q for q in bank if q.topic == "lifecycle" and q.id != a.id)
    c = next(q for q in bank if q.topic == "engine" and q.cite == "seed")
    result = quiz.score([(a, False), (b, True), (c, False)])
    assert (result.right, result.total) == (1, 3)
    assert result.per_topic == {"lifecycle": (1, 2), "engine": (0, 1)}
    assert result.revisit == [a.notebook, "seed"]
    assert result.sections == {a.notebook: [a.cite.split("#", 1)[1]], "seed": []}
    assert round(result.percent) == 33


def test_practice_run_reads_stdin_and_explains_each_answer(bank):
    q = _question(bank, "single")
    out = io.StringIO()
    letter = quiz.LETTERS[q.answer]
    result = quiz.run([q, q], "en", mock=False, stdin=io.StringIO(f"?\n{letter}\n"), stdout=out)
    text = out.getvalue()
    assert (result.right, result.total) == (1, 2)        # the second answer hit end of input
    assert "Correct." in text and q.explanation["en"] in text and "Score: 1/2" in text


# ---------------------------------------------------------------- the terminal, as a candidate uses it

def _typed(q: Question) -> str:
    if q.type == "single":
        return quiz.LETTERS[q.answer]
    if q.type == "multiple":
        return " ".join(quiz.LETTERS[i] for i in q.answer)
    if q.type == "truefalse":
        return "t" if q.answer else "f"
    return q.answer[0]


def test_python_m_grading_quiz_mock_takes_answers_on_stdin(bank):
    drawn = quiz.draw(bank, n=3, seed=1)
    answers = [_typed(q) for q in drawn]
    proc = subprocess.run(
        [sys.executable, "-m", "grading", "quiz", "--mock", "3", "--seed", "1"],
        input="\n".join(answers) + "\n", capture_output=True, text=True, cwd=ROOT, timeout=30,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Mock exam: 3 questions, seed 1" in proc.stdout
    assert "Score: 3/3 (100%)" in proc.stdout
    for q in drawn:
        assert q.question["en"] in proc.stdout
        assert f"{TOPICS[q.topic][0]}: " in proc.stdout
    assert "Nothing to revisit" in proc.stdout


def test_python_m_grading_quiz_speaks_chinese():
    proc = subprocess.run(
        [sys.executable, "-m", "grading", "quiz", "--lang", "zh", "--mock", "2", "--seed", "5"],
        input="", capture_output=True, text=True, cwd=ROOT, timeout=30,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "模拟考试：2 道题" in proc.stdout and "得分：0/2" in proc.stdout and "建议复习的笔记本" in proc.stdout
