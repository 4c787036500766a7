"""The exam-prep quiz as ipywidgets, for notebook 12.

All the quiz logic lives in grading/quiz.py (draw, is_correct, feedback, score). This module
keeps the state of one quiz in ``QuizApp``, whose plain methods (``select``, ``check``,
``next``, ``finish`` ...) a test can call without a browser; the widgets only show that state
and call those methods when clicked.

    app = QuizApp(mode="practice")            # or QuizApp(mode="mock", out_dir="exam-results")
    app.widget                                # display it in a notebook
"""
from __future__ import annotations

import io
import json
import random
import threading
import time
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Callable

from grading.questions import TOPICS, Question, load_bank
from grading.quiz import LETTERS, UI, Feedback, Score, draw, feedback, is_correct, parse_response, score

# Labels of the widgets themselves; the quiz's own messages come from grading.quiz.UI.
TEXT = {
    "en": {"title_practice": "Practice", "title_mock": "Mock exam", "topic": "Topic", "all": "All topics",
           "check": "Check", "next": "Next", "previous": "Previous", "start": "Start the mock exam",
           "finish": "Finish and save", "questions": "Questions", "seed": "Seed", "minutes": "Minutes",
           "number": "Question {i} of {n}", "so_far": "{right}/{checked} right so far",
           "choose": "Choose an answer first.", "read": "Read", "left": "Time left {m}:{s:02d}",
           "elapsed": "Elapsed {m}:{s:02d}", "up": "Time is up: answers are locked. Press Finish.",
           "answered": "{k} of {n} answered", "saved": "Answers saved to {path}", "done": "End of the questions.",
           "type_single": "one answer", "type_multiple": "all that apply", "type_truefalse": "true or false",
           "type_short": "type a short answer", "plot_title": "Score per topic (%)"},
    "zh": {"title_practice": "练习模式", "title_mock": "模拟考试", "topic": "主题", "all": "全部主题",
           "check": "检查", "next": "下一题", "previous": "上一题", "start": "开始模拟考试",
           "finish": "交卷并保存", "questions": "题数", "seed": "随机种子", "minutes": "分钟",
           "number": "第 {i} 题，共 {n} 题", "so_far": "目前答对 {right}/{checked}",
           "choose": "请先选择答案。", "read": "阅读", "left": "剩余时间 {m}:{s:02d}",
           "elapsed": "已用时间 {m}:{s:02d}", "up": "时间到：答案已锁定，请交卷。",
           "answered": "已答 {k}/{n} 题", "saved": "答案已保存到 {path}", "done": "题目已全部完成。",
           "type_single": "单选", "type_multiple": "多选（选出所有正确项）", "type_truefalse": "判断对错",
           "type_short": "简答", "plot_title": "各主题得分（%）"},
}
LANGUAGES = (("English", "en"), ("中文", "zh"))
SECONDS_PER_QUESTION = 90          # the default time box of a mock exam


def topic_name(topic: str, lang: str) -> str:
    return TOPICS[topic][0 if lang == "en" else 1]


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _cjk_font() -> str | None:
    """A font matplotlib can draw Chinese with, if one is installed (fonts-noto-cjk)."""
    from matplotlib import font_manager
    names = sorted({f.name for f in font_manager.fontManager.ttflist})
    for key in ("CJK SC", "CJK", "WenQuanYi", "Droid Sans Fallback"):
        for name in names:
            if key in name:
                return name
    return None


class QuizApp:
    """One quiz, practice or mock exam. State and actions are plain methods; ``widget``
    builds the ipywidgets view of them (lazily, so tests need no browser)."""

    def __init__(self, mode: str = "practice", lang: str = "en", topic: str | None = None,
                 bank: list[Question] | None = None, n: int = 20, seed: int | None = None,
                 minutes: float | None = None, out_dir: str | Path | None = None,
                 clock: Callable[[], float] = time.time):
        if mode not in ("practice", "mock"):
            raise ValueError(f"mode must be 'practice' or 'mock', got {mode!r}")
        if lang not in UI:
            raise ValueError(f"lang must be one of {sorted(UI)}, got {lang!r}")
        self.mode, self.lang, self.topic = mode, lang, topic
        self.bank = bank if bank is not None else load_bank()
        self.n, self.seed, self.minutes = n, seed, minutes
        self.time_box = minutes                    # None: SECONDS_PER_QUESTION per question
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.clock = clock
        self.questions: list[Question] = []
        self.pos = 0
        self.selected = None                       # the answer value being chosen for the current question
        self.fb: Feedback | None = None            # practice: feedback on the current question
        self.results: list[tuple[Question, bool]] = []   # practice: first check of each question
        self.records: list[dict] = []              # mock: one per question, answers with timestamps
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.finished: Score | None = None
        self.saved_to: Path | None = None
        self._widget = None
        self._syncing = False
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()             # ends the countdown thread
        if mode == "practice":
            self.start_practice(topic, seed)

    # ------------------------------------------------------------ state and actions

    def start_practice(self, topic: str | None = None, seed: int | None = None) -> None:
        """Every question (of ``topic``) in a seeded random order, one at a time."""
        self.mode, self.topic = "practice", topic
        self.questions = draw(self.bank, seed=seed, topic=topic)
        self.pos, self.selected, self.fb, self.results = 0, None, None, []
        self._render(rebuild=True)

    def start_mock(self, n: int | None = None, seed: int | None = None, minutes: float | None = None,
                   topic: str | None = None) -> list[Question]:
        """A timed mock exam of ``n`` questions drawn by topic weight; the same seed draws the same exam."""
        self.mode = "mock"
        self.n = n or self.n
        self.topic = topic if topic is not None else self.topic
        self.seed = seed if seed is not None else (self.seed if self.seed is not None else random.randrange(10**6))
        self.questions = draw(self.bank, n=self.n, seed=self.seed, topic=self.topic)
        self.minutes = minutes if minutes is not None else (
            self.time_box or len(self.questions) * SECONDS_PER_QUESTION / 60)
        self.pos, self.selected, self.fb, self.finished, self.saved_to = 0, None, None, None, None
        self.ended_at = None
        self.records = [{"number": i + 1, "id": q.id, "topic": q.topic, "type": q.type, "answer": None,
                         "correct": False, "answered_at": None, "elapsed_s": None}
                        for i, q in enumerate(self.questions)]
        self.started_at = self.clock()
        self._render(rebuild=True)
        return self.questions

    @property
    def current(self) -> Question | None:
        return self.questions[self.pos] if 0 <= self.pos < len(self.questions) else None

    def set_lang(self, lang: str) -> None:
        if lang not in UI:
            raise ValueError(f"lang must be one of {sorted(UI)}, got {lang!r}")
        self.lang = lang
        if self.fb is not None and self.current is not None:   # the same feedback, in the other language
            self.fb = feedback(self.current, self.selected, lang)
        self._render(rebuild=True)

    def set_topic(self, topic: str | None) -> None:
        """The topic filter: practice restarts on that topic; a mock exam uses it at the next start."""
        self.topic = topic
        if self.mode == "practice":
            self.start_practice(topic, self.seed)
        else:
            self._render()

    def question_text(self) -> str:
        q = self.current
        return q.question[self.lang] if q else ""

    def choice_texts(self) -> list[str]:
        q = self.current
        if q is None:
            return []
        if q.type == "truefalse":
            return [UI[self.lang]["true"], UI[self.lang]["false"]]
        return [f"{LETTERS[i]}. {t}" for i, t in enumerate(q.choice_texts(self.lang))]

    def time_left(self) -> float | None:
        """Seconds left in a mock exam (never below 0), or None outside one."""
        if self.mode != "mock" or self.started_at is None or self.minutes is None:
            return None
        return max(0.0, self.minutes * 60 - (self.clock() - self.started_at))

    def elapsed(self) -> float:
        """Seconds since the mock exam started (until it finished)."""
        if self.started_at is None:
            return 0.0
        return (self.ended_at if self.ended_at is not None else self.clock()) - self.started_at

    @property
    def time_up(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0

    def select(self, answer) -> bool:
        """Choose an answer for the current question: an index (single), indexes (multiple),
        True/False, or text; text for a choice question is read like the terminal quiz reads
        it ("A C"). In a mock exam the answer is recorded with its time. False if refused
        (no question, the exam is over or its time is up)."""
        q = self.current
        if q is None or self.finished is not None or (self.mode == "mock" and self.time_up):
            return False
        if isinstance(answer, str) and q.type != "short":
            answer = parse_response(q, answer)
        elif q.type == "multiple" and answer is not None:
            answer = sorted(set(answer))
        elif q.type == "short" and isinstance(answer, str):
            answer = answer if answer.strip() else None
        self.selected = answer
        if self.mode == "practice":
            self.fb = None                         # the feedback was about the answer checked before
        else:
            now = self.clock()
            answered = answer is not None          # None clears the answer, and its time
            self.records[self.pos].update(answer=answer, correct=is_correct(q, answer),
                                          answered_at=_iso(now) if answered else None,
                                          elapsed_s=round(now - self.started_at, 3) if answered else None)
        self._render()
        return True

    def check(self) -> Feedback | None:
        """Practice: the feedback on the chosen answer (right or not, the answer, the
        explanation and the section to read). The first check of a question is what counts."""
        q = self.current
        if self.mode != "practice" or q is None:
            return None
        if self.selected is None:
            self.fb = None
            self._render(message=TEXT[self.lang]["choose"])
            return None
        self.fb = feedback(q, self.selected, self.lang)
        if not any(done is q for done, _ in self.results):
            self.results.append((q, self.fb.correct))
        self._render()
        return self.fb

    def next(self) -> Question | None:
        """Move to the next question (None after the last one)."""
        if self.pos < len(self.questions):
            self.pos += 1
        self._restore()
        return self.current

    def previous(self) -> Question | None:
        if self.pos > 0:
            self.pos -= 1
        self._restore()
        return self.current

    def _restore(self) -> None:
        self.fb = None
        self.selected = self.records[self.pos]["answer"] if self.mode == "mock" and self.current else None
        self._render(rebuild=True)

    def score(self) -> Score:
        """Practice: the checked questions so far. Mock: every question, unanswered ones wrong."""
        if self.mode == "practice":
            return score(self.results)
        return score([(q, r["correct"]) for q, r in zip(self.questions, self.records)])

    def finish(self, directory: str | Path | None = None) -> Path:
        """End the mock exam: save the answers, with their timestamps and the score per
        topic, to a JSON file in ``directory``; returns its path."""
        if self.mode != "mock" or self.started_at is None:
            raise RuntimeError("start a mock exam first (start_mock)")
        directory = Path(directory) if directory is not None else self.out_dir
        if directory is None:
            raise ValueError("finish() needs a directory to save the answers in")
        ended = self.ended_at = self.clock()
        self.finished = result = self.score()
        directory.mkdir(parents=True, exist_ok=True)
        stamp = datetime.fromtimestamp(ended, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = directory / f"mock-exam-seed{self.seed}-{stamp}.json"
        data = {
            "kind": "minicontainer mock exam", "seed": self.seed, "topic": self.topic, "lang": self.lang,
            "questions": len(self.questions), "time_limit_s": round(self.minutes * 60),
            "started_at": _iso(self.started_at), "finished_at": _iso(ended),
            "elapsed_s": round(ended - self.started_at, 3),
            "score": {"right": result.right, "total": result.total, "percent": round(result.percent, 1)},
            "per_topic": {t: {"right": r, "total": n} for t, (r, n) in self.per_topic().items()},
            "revisit": result.revisit, "sections": result.sections,
            "answers": self.records,
        }
        path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        self.saved_to = path
        self._stop.set()
        self._render(rebuild=True)
        return path

    def per_topic(self) -> dict[str, tuple[int, int]]:
        """(right, total) per topic, in course order."""
        got = self.score().per_topic
        return {t: got[t] for t in TOPICS if t in got}

    def revisit(self) -> list[str]:
        """The notebooks (or "seed") of the questions answered wrongly, in course order."""
        return self.score().revisit

    def plot(self):
        """A matplotlib Figure of the score per topic (percent). Built without pyplot, so
        it changes no global state."""
        from matplotlib.figure import Figure
        per = self.per_topic()
        font = _cjk_font() if self.lang == "zh" else None
        label_lang = "zh" if font else "en"       # without a CJK font, the Chinese would draw as boxes
        fig = Figure(figsize=(7, 0.4 * max(len(per), 1) + 1.2), layout="constrained")
        ax = fig.add_subplot()
        names = [topic_name(t, label_lang) for t in per]
        pct = [100 * r / n if n else 0 for r, n in per.values()]
        bars = ax.barh(names, pct, color=["#3a8f4f" if p >= 60 else "#c0504d" for p in pct])
        for bar, (r, n) in zip(bars, per.values()):
            ax.text(min(bar.get_width() + 1, 88), bar.get_y() + bar.get_height() / 2, f"{r}/{n}", va="center")
        ax.set_xlim(0, 100)
        ax.invert_yaxis()
        ax.axvline(60, color="grey", linewidth=0.8, linestyle="--")
        ax.set_title(TEXT[label_lang]["plot_title"], fontfamily=font or "sans-serif")
        if font:
            for label in ax.get_yticklabels():
                label.set_fontfamily(font)
        return fig

    def plot_png(self) -> bytes:
        buf = io.BytesIO()
        self.plot().savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    # ------------------------------------------------------------ the view

    @property
    def widget(self):
        """The ipywidgets view (built on first use)."""
        if self._widget is None:
            self._build()
        return self._widget

    def _ipython_display_(self):
        from IPython.display import display
        display(self.widget)

    def _build(self) -> None:
        import ipywidgets as w
        t = TEXT[self.lang]
        self.w_lang = w.ToggleButtons(options=LANGUAGES, value=self.lang, style={"button_width": "80px"})
        self.w_topic = w.Dropdown(description=t["topic"], layout=w.Layout(width="420px"))
        self.w_title = w.HTML()
        self.w_status = w.HTML()
        self.w_question = w.HTML()
        self.w_answer = w.VBox()
        self.w_feedback = w.HTML()
        self.w_check = w.Button(button_style="primary")
        self.w_next = w.Button()
        self.w_prev = w.Button()
        self.w_finish = w.Button(button_style="warning")
        self.w_start = w.Button(button_style="primary")
        self.w_n = w.BoundedIntText(value=self.n, min=1, max=len(self.bank), layout=w.Layout(width="200px"), style={"description_width": "initial"})
        self.w_seed = w.IntText(value=self.seed if self.seed is not None else 1, layout=w.Layout(width="200px"), style={"description_width": "initial"})
        self.w_plot = w.Image(format="png", layout=w.Layout(max_width="640px"))
        self.w_lang.observe(lambda ch: self._syncing or self.set_lang(ch["new"]), names="value")
        self.w_topic.observe(lambda ch: self._syncing or self.set_topic(ch["new"]), names="value")
        self.w_check.on_click(lambda _: self.check())
        self.w_next.on_click(lambda _: self.next())
        self.w_prev.on_click(lambda _: self.previous())
        self.w_finish.on_click(lambda _: self._finish_clicked())
        self.w_start.on_click(lambda _: self._start_clicked())
        self.w_setup = w.HBox([self.w_n, self.w_seed, self.w_start])
        self.w_buttons = w.HBox()
        self._widget = w.VBox([w.HBox([self.w_lang, self.w_topic]), self.w_title, self.w_setup,
                               self.w_status, self.w_question, self.w_answer, self.w_buttons,
                               self.w_feedback, self.w_plot])
        self._render(rebuild=True)

    def _start_clicked(self) -> None:
        self.start_mock(n=self.w_n.value, seed=self.w_seed.value)
        self._start_ticker()

    def _finish_clicked(self) -> None:
        self.finish(self.out_dir if self.out_dir is not None else Path("exam-results"))

    def _start_ticker(self) -> None:
        """Refresh the countdown once a second while the exam runs (the kernel sends the updates)."""
        if self._ticker is not None and self._ticker.is_alive():
            return

        self._stop.clear()

        def tick():
            while not self._stop.wait(1) and self.finished is None and not self.time_up:
                self._render_status()
            self._render()                         # time up: lock the answer widgets

        self._ticker = threading.Thread(target=tick, name="quiz-countdown", daemon=True)
        self._ticker.start()

    def _answer_widgets(self, q: Question):
        import ipywidgets as w
        labels = self.choice_texts()
        if q.type in ("single", "truefalse"):
            values = list(range(len(labels))) if q.type == "single" else [True, False]
            box = w.RadioButtons(options=list(zip(labels, values)), value=self.selected,
                                 layout=w.Layout(width="auto"))
            box.observe(lambda ch: self._syncing or self.select(ch["new"]), names="value")
            return [box]
        if q.type == "multiple":
            chosen = set(self.selected or [])
            boxes = [w.Checkbox(value=i in chosen, description=label, indent=False,
                                layout=w.Layout(width="auto")) for i, label in enumerate(labels)]

            def changed(_):
                if not self._syncing:
                    picked = [i for i, b in enumerate(boxes) if b.value]
                    self.select(picked or None)
            for b in boxes:
                b.observe(changed, names="value")
            return boxes
        box = w.Text(value=self.selected or "", placeholder=TEXT[self.lang]["type_short"], continuous_update=True)
        box.observe(lambda ch: self._syncing or self.select(ch["new"]), names="value")
        return [box]

    def _render_status(self) -> None:
        if self._widget is None:
            return
        t = TEXT[self.lang]
        parts = []
        if self.questions and self.current is not None:
            parts.append(t["number"].format(i=self.pos + 1, n=len(self.questions)))
        if self.mode == "practice" and self.results:
            parts.append(t["so_far"].format(right=sum(ok for _, ok in self.results), checked=len(self.results)))
        if self.mode == "mock" and self.started_at is not None:
            answered = sum(r["answer"] is not None for r in self.records)
            parts.append(t["answered"].format(k=answered, n=len(self.records)))
            m, s = divmod(int(self.elapsed()), 60)
            parts.append(t["elapsed"].format(m=m, s=s))
            if self.finished is None:
                m, s = divmod(int(self.time_left() or 0), 60)
                parts.append(t["up"] if self.time_up else t["left"].format(m=m, s=s))
        self.w_status.value = " · ".join(escape(p) for p in parts)

    def _render(self, rebuild: bool = False, message: str = "") -> None:
        """Show the state. ``rebuild`` makes new answer widgets (a new question or language)."""
        if self._widget is None:
            return
        self._syncing = True
        try:
            t = TEXT[self.lang]
            self.w_lang.value = self.lang
            self.w_topic.description = t["topic"]
            self.w_topic.options = [(t["all"], None)] + [
                (f"{topic_name(k, self.lang)} ({sum(q.topic == k for q in self.bank)})", k) for k in TOPICS]
            self.w_topic.value = self.topic
            mock = self.mode == "mock"
            self.w_title.value = f"<h3>{escape(t['title_mock' if mock else 'title_practice'])}</h3>"
            self.w_check.description, self.w_next.description = t["check"], t["next"]
            self.w_prev.description, self.w_finish.description = t["previous"], t["finish"]
            self.w_start.description = t["start"]
            self.w_n.description, self.w_seed.description = t["questions"], t["seed"]
            running = mock and self.started_at is not None and self.finished is None
            self.w_setup.layout.display = "flex" if mock and not running else "none"
            if mock:
                self.w_buttons.children = [self.w_prev, self.w_next, self.w_finish] if running else []
            else:
                self.w_buttons.children = [self.w_check, self.w_next]
            self._render_status()
            q = self.current
            show_question = q is not None and (not mock or running)
            if show_question:
                kind = t["type_" + q.type]
                self.w_question.value = (f"<p><b>{escape(topic_name(q.topic, self.lang))}</b> · <i>{escape(kind)}</i></p>"
                                         f"<p style='font-size:1.1em'>{escape(q.question[self.lang])}</p>")
                if rebuild or not self.w_answer.children:
                    self.w_answer.children = self._answer_widgets(q)
                for child in self.w_answer.children:
                    child.disabled = mock and self.time_up
            else:
                self.w_question.value = "" if mock else f"<p>{escape(t['done'])}</p>"
                self.w_answer.children = []
            self.w_check.disabled = q is None
            self.w_next.disabled = q is None or (mock and self.pos >= len(self.questions) - 1)
            self.w_prev.disabled = self.pos == 0
            self.w_feedback.value = self._feedback_html(message)
            if mock and self.finished is not None:
                self.w_plot.value = self.plot_png()
                self.w_plot.layout.display = "block"
            else:
                self.w_plot.layout.display = "none"
        finally:
            self._syncing = False

    def _feedback_html(self, message: str) -> str:
        t, ui = TEXT[self.lang], UI[self.lang]
        if message:
            return f"<p>{escape(message)}</p>"
        if self.mode == "practice" and self.fb is not None:
            colour = "#2e7d32" if self.fb.correct else "#c62828"
            where = ui["seed_note"] if self.fb.cite == "seed" else self.fb.cite.replace("notebooks/", "").replace("#", " § ")
            return (f"<div style='border-left:4px solid {colour};padding-left:8px'>"
                    f"<p style='color:{colour}'><b>{escape(self.fb.message)}</b></p>"
                    f"<p>{escape(self.fb.explanation)}</p><p>📖 {escape(t['read'])}: {escape(where)}</p></div>")
        if self.mode == "mock" and self.finished is not None:
            s = self.finished
            rows = "".join(f"<tr><td>{escape(topic_name(k, self.lang))}</td><td>{r}/{n}</td></tr>"
                           for k, (r, n) in self.per_topic().items())
            html = [f"<p><b>{escape(ui['score'].format(right=s.right, total=s.total, pct=s.percent))}</b></p>",
                    f"<table>{rows}</table>"]
            if s.revisit:
                items = []
                for nb in s.revisit:
                    heads = "".join(f"<li>§ {escape(h)}</li>" for h in s.sections.get(nb, []))
                    name = ui["seed_note"] if nb == "seed" else nb
                    items.append(f"<li>{escape(name)}<ul>{heads}</ul></li>")
                html.append(f"<p>{escape(ui['revisit'])}</p><ul>{''.join(items)}</ul>")
            else:
                html.append(f"<p>{escape(ui['none'])}</p>")
            if self.saved_to is not None:
                html.append(f"<p><small>{escape(t['saved'].format(path=self.saved_to))}</small></p>")
            return "".join(html)
        return ""
