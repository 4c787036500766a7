"""The notebook quiz (grading/quiz_widget.py), driven through QuizApp's methods without a
browser: practice feedback in both languages, a seeded and timed mock exam that saves its
answers as JSON and plots the score per topic, and the language switch. The widgets are
built too (no frontend is needed to build them) to check that they show the state."""
from __future__ import annotations

import json

import pytest
from matplotlib.figure import Figure

from grading.questions import TOPICS, Question, load_bank
from grading.quiz import UI
from grading.quiz_widget import QuizApp


@pytest.fixture(scope="module")
def bank() -> list[Question]:
    return load_bank()


class FakeClock:
    """A clock the test moves by hand: timestamps and the countdown become exact."""

    def __init__(self, start: float = 1_800_000_000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def right_answer(q: Question):
    return q.answer[0] if q.type == "short" else q.answer


def wrong_answer(q: Question):
    if q.type == "single":
        return (q.answer + 1) % len(q.choices)
    if q.type == "multiple":
        return [i for i in range(len(q.choices)) if i not in q.answer][:1] or [q.answer[0]]
    if q.type == "truefalse":
        return not q.answer
    return "certainly not this"


def practice_at(bank, kind: str, lang: str = "en") -> QuizApp:
    """A practice app moved to its first question of type ``kind``."""
    app = QuizApp(bank=bank, lang=lang, seed=7)
    while app.current.type != kind:
        app.next()
    return app


# ---------------------------------------------------------------- practice mode

@pytest.mark.parametrize("kind", ["single", "multiple", "truefalse", "short"])
def test_practice_says_correct_with_the_explanation_and_the_section_to_read(bank, kind):
    app = practice_at(bank, kind)
    q = app.current
    assert app.select(right_answer(q))
    fb = app.check()
    assert fb.correct and fb.message == UI["en"]["correct"]
    assert fb.explanation == q.explanation["en"] and fb.cite == q.cite
    assert app.score().right == 1


def test_practice_says_incorrect_and_gives_the_answer_in_english_and_chinese(bank):
    app = practice_at(bank, "single")
    q = app.current
    app.widget                                    # the view shows what the methods did
    app.select(wrong_answer(q))
    fb = app.check()
    assert not fb.correct and q.choices[q.answer]["en"] in fb.message
    assert "Not quite" in app.w_feedback.value
    assert q.explanation["en"].split()[0] in app.w_feedback.value
    app.set_lang("zh")
    assert not app.fb.correct and app.fb.message.startswith("不对")
    assert q.choices[q.answer]["zh"] in app.fb.message and app.fb.explanation == q.explanation["zh"]
    assert "不对" in app.w_feedback.value and "阅读" in app.w_feedback.value
    assert app.score().right == 0 and app.score().total == 1


def test_practice_in_chinese_from_the_start(bank):
    app = practice_at(bank, "truefalse", lang="zh")
    app.select("对" if app.current.answer else "错")       # typed text is read like the terminal quiz
    fb = app.check()
    assert fb.correct and fb.message == "正确。"


def test_check_without_an_answer_asks_for_one_and_counts_nothing(bank):
    app = QuizApp(bank=bank, seed=1)
    app.widget
    assert app.check() is None and app.score().total == 0
    assert "Choose an answer" in app.w_feedback.value


def test_only_the_first_check_of_a_question_counts(bank):
    app = practice_at(bank, "single")
    q = app.current
    app.select(wrong_answer(q))
    app.check()
    app.select(q.answer)
    assert app.check().correct
    assert (app.score().right, app.score().total) == (0, 1)
    app.next()
    assert app.fb is None and app.selected is None and app.current is not q


def test_the_topic_filter_keeps_practice_to_one_topic(bank):
    app = QuizApp(bank=bank, seed=1)
    app.widget
    app.w_topic.value = "security"                # as if picked in the dropdown
    assert app.topic == "security"
    assert {q.topic for q in app.questions} == {"security"}
    assert len(app.questions) == sum(q.topic == "security" for q in bank)
    assert app.w_question.value and "Container security" in app.w_question.value


def test_the_language_switch_changes_the_displayed_question_text(bank):
    app = QuizApp(bank=bank, seed=3)
    app.widget
    q = app.current
    assert app.question_text() == q.question["en"]
    assert q.question["en"].split()[0] in app.w_question.value
    app.w_lang.value = "zh"                       # as if 中文 were clicked
    assert app.lang == "zh" and app.question_text() == q.question["zh"]
    shown = app.w_question.value
    assert TOPICS[q.topic][1] in shown and q.question["en"].split("(")[0] not in shown
    if q.type in ("single", "multiple"):
        assert app.choice_texts()[0].endswith(q.choices[0]["zh"])
    app.set_lang("en")
    assert app.question_text() == q.question["en"] and TOPICS[q.topic][0] in app.w_question.value


# ---------------------------------------------------------------- mock exam mode

def test_a_seeded_mock_exam_draws_the_same_questions(bank):
    one = QuizApp(mode="mock", bank=bank).start_mock(n=12, seed=42)
    two = QuizApp(mode="mock", bank=bank).start_mock(n=12, seed=42)
    other = QuizApp(mode="mock", bank=bank).start_mock(n=12, seed=43)
    assert [q.id for q in one] == [q.id for q in two] != [q.id for q in other]
    assert len(one) == 12 and len({q.topic for q in one}) >= 8      # spread over the topics


def test_a_mock_exam_records_timed_answers_saves_json_scores_topics_and_plots(bank, tmp_path):
    clock = FakeClock()
    app = QuizApp(mode="mock", bank=bank, clock=clock)
    questions = app.start_mock(n=10, seed=5, minutes=10)
    app.widget
    assert "Time left 10:00" in app.w_status.value
    wrong = set()
    for i, q in enumerate(questions):
        clock.advance(20)
        if i % 3 == 0:
            app.select(wrong_answer(q))
            wrong.add(q.id)
        else:
            app.select(right_answer(q))
        app.next()
    assert "Time left 6:40" in app.w_status.value and "10 of 10 answered" in app.w_status.value
    clock.advance(5)
    path = app.finish(tmp_path / "results")
    assert path.parent == tmp_path / "results" and path.suffix == ".json"

    data = json.loads(path.read_text())
    assert data["seed"] == 5 and data["questions"] == 10 and data["time_limit_s"] == 600
    assert data["elapsed_s"] == 205
    assert [a["id"] for a in data["answers"]] == [q.id for q in questions]
    assert [a["elapsed_s"] for a in data["answers"]] == [20.0 * (i + 1) for i in range(10)]
    assert all(a["answered_at"].endswith("+00:00") for a in data["answers"])
    assert {a["id"] for a in data["answers"] if not a["correct"]} == wrong
    assert data["score"] == {"right": 10 - len(wrong), "total": 10, "percent": 10 * (10 - len(wrong))}

    expected = {}
    for q in questions:
        r, n = expected.get(q.topic, (0, 0))
        expected[q.topic] = (r + (q.id not in wrong), n + 1)
    assert app.per_topic() == expected
    assert data["per_topic"] == {t: {"right": r, "total": n} for t, (r, n) in expected.items()}
    missed = {q.notebook or "seed" for q in questions if q.id in wrong}
    assert set(app.revisit()) == missed == set(data["revisit"])

    fig = app.plot()
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].patches) == len(expected)            # one bar per topic
    assert app.w_plot.value[:8] == b"\x89PNG\r\n\x1a\n"          # the view shows the plot
    assert "Score: " in app.w_feedback.value and "revisit" in app.w_feedback.value
    assert list(tmp_path.rglob("*")) == [tmp_path / "results", path]


def test_unanswered_questions_count_as_wrong_and_time_up_locks_the_answers(bank, tmp_path):
    clock = FakeClock()
    app = QuizApp(mode="mock", bank=bank, clock=clock, lang="zh")
    questions = app.start_mock(n=4, seed=9, minutes=1)
    assert app.select(right_answer(questions[0]))
    clock.advance(61)
    assert app.time_up and app.time_left() == 0
    app.next()
    assert not app.select(right_answer(questions[1]))           # too late
    app.widget
    assert "时间到" in app.w_status.value and all(w.disabled for w in app.w_answer.children)
    data = json.loads(app.finish(tmp_path).read_text())
    assert [a["answer"] is not None for a in data["answers"]] == [True, False, False, False]
    assert data["score"]["right"] == 1 and data["lang"] == "zh"
    assert not app.select(right_answer(questions[1]))           # the exam is over


def test_mock_mode_can_go_back_and_change_an_answer(bank, tmp_path):
    clock = FakeClock()
    app = QuizApp(mode="mock", bank=bank, clock=clock)
    q = app.start_mock(n=3, seed=2)[0]
    app.select(wrong_answer(q))
    app.next()
    clock.advance(30)
    assert app.previous() is q and app.selected == app.records[0]["answer"]
    app.select(right_answer(q))
    assert app.records[0]["correct"] and app.records[0]["elapsed_s"] == 30
    assert app.check() is None                                   # no feedback during an exam
    assert app.finish(tmp_path).exists()


def test_finish_needs_a_started_exam_and_a_directory(bank):
    with pytest.raises(RuntimeError):
        QuizApp(mode="mock", bank=bank).finish("unused")
    app = QuizApp(mode="mock", bank=bank)
    app.start_mock(n=2, seed=1)
    with pytest.raises(ValueError):
        app.finish()


# ---------------------------------------------------------------- the widgets call the methods

def test_clicking_the_practice_widgets_checks_the_chosen_answer(bank):
    app = practice_at(bank, "single")
    view = app.widget
    assert app.w_answer.children and view.children
    q = app.current
    app.w_answer.children[0].value = q.answer          # as if the right radio button were clicked
    assert app.selected == q.answer
    app.w_check.click()
    assert app.fb.correct and "Correct." in app.w_feedback.value
    app.w_next.click()
    assert app.current is not q and app.w_feedback.value == ""
    assert "1/1 right so far" in app.w_status.value


def test_clicking_through_a_mock_exam_saves_it_in_the_callers_directory(bank, tmp_path):
    clock = FakeClock()
    app = QuizApp(mode="mock", bank=bank, out_dir=tmp_path, clock=clock)
    app.widget
    assert app.w_answer.children == () and app.w_setup.layout.display == "flex"
    app.w_n.value, app.w_seed.value = 3, 11
    app.w_start.click()
    assert [q.id for q in app.questions] == [q.id for q in QuizApp(mode="mock", bank=bank).start_mock(n=3, seed=11)]
    assert app.w_setup.layout.display == "none" and app.w_answer.children
    clock.advance(12)
    app.w_finish.click()
    assert app.saved_to.parent == tmp_path and json.loads(app.saved_to.read_text())["seed"] == 11
    clock.advance(100)
    assert app.elapsed() == 12                          # the clock stops at Finish
    assert "Elapsed 0:12" in app.w_status.value and "Time left" not in app.w_status.value
    app._ticker.join(timeout=3)
    assert not app._ticker.is_alive()
