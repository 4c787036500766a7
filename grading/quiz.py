"""The quiz: a pure function layer (draw, check an answer, score, feedback) and a thin
terminal front end that reads answers from stdin. The notebook widget can reuse the pure part."""
from __future__ import annotations

import argparse
import random
import re
import sys
import time
import unicodedata
from dataclasses import dataclass, field
from typing import TextIO

from grading.questions import TOPICS, Question, load_bank

LETTERS = "ABCDEFGHIJ"
TRUE_WORDS = {"t", "true", "y", "yes", "1", "对", "是", "正确", "真"}
FALSE_WORDS = {"f", "false", "n", "no", "0", "错", "否", "错误", "假"}

UI = {
    "en": {"correct": "Correct.", "wrong": "Not quite. The answer: {answer}",
           "score": "Score: {right}/{total} ({pct:.0f}%)", "topic": "{name}: {right}/{total}",
           "revisit": "Notebooks to revisit:", "none": "Nothing to revisit. Well done.",
           "true": "true", "false": "false", "prompt_single": "Your answer (letter): ",
           "prompt_multiple": "Your answers (letters, e.g. A C): ", "prompt_tf": "True or false (t/f): ",
           "prompt_short": "Your answer: ", "seed_note": "(not in a notebook yet: the seed article)",
           "mock": "Mock exam: {n} questions, seed {seed}", "practice": "Practice: {n} questions",
           "time": "Time: {m}:{s:02d}"},
    "zh": {"correct": "正确。", "wrong": "不对。正确答案：{answer}",
           "score": "得分：{right}/{total}（{pct:.0f}%）", "topic": "{name}：{right}/{total}",
           "revisit": "建议复习的笔记本：", "none": "没有需要复习的内容，做得好。",
           "true": "对", "false": "错", "prompt_single": "你的答案（字母）：",
           "prompt_multiple": "你的答案（多个字母，如 A C）：", "prompt_tf": "对还是错（t/f）：",
           "prompt_short": "你的答案：", "seed_note": "（尚无对应笔记本：见种子文章）",
           "mock": "模拟考试：{n} 道题，随机种子 {seed}", "practice": "练习模式：{n} 道题",
           "time": "用时：{m}:{s:02d}"},
}


# ---------------------------------------------------------------- pure layer

def allocate(n: int, topics: list[str], rng: random.Random) -> dict[str, int]:
    """Split ``n`` questions over ``topics`` in proportion to their mock-exam weights
    (largest remainder; ties broken by the seeded ``rng``)."""
    weights = {t: TOPICS[t][2] for t in topics}
    total = sum(weights.values())
    exact = {t: n * w / total for t, w in weights.items()}
    counts = {t: int(x) for t, x in exact.items()}
    order = sorted(topics, key=lambda t: (-(exact[t] - counts[t]), rng.random()))
    for t in order[: n - sum(counts.values())]:
        counts[t] += 1
    return counts


def draw(bank: list[Question], n: int | None = None, seed: int | None = None,
         topic: str | None = None) -> list[Question]:
    """Pick questions. With ``n`` (a mock exam) the draw is weighted by topic and
    reproducible for a given ``seed``; without ``n`` every question (of ``topic``) in a
    seeded random order."""
    rng = random.Random(seed)
    pool = [q for q in bank if topic is None or q.topic == topic]
    if not pool:
        raise ValueError(f"no questions for topic {topic!r}; topics: {', '.join(TOPICS)}")
    if n is None or n >= len(pool):
        picked = list(pool)
    else:
        by_topic: dict[str, list[Question]] = {}
        for q in pool:
            by_topic.setdefault(q.topic, []).append(q)
        counts = allocate(n, sorted(by_topic), rng)
        picked, spill = [], []
        for t in sorted(by_topic):
            qs = list(by_topic[t])
            rng.shuffle(qs)
            picked += qs[: counts[t]]
            spill += qs[counts[t]:]
        short = n - len(picked)           # a topic had fewer questions than its share
        if short > 0:
            rng.shuffle(spill)
            picked += spill[:short]
    rng.shuffle(picked)
    return picked


def _normalize(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[`'\"“”‘’。.，,;；:：!！?？]", " ", text)
    return " ".join(text.split())


def parse_response(q: Question, response: str):
    """Turn what a student typed into an answer value of the question's type, or None if
    it can't be read (an empty line, a letter that is not a choice)."""
    text = response.strip()
    if q.type == "short":
        return text or None
    if q.type == "truefalse":
        word = _normalize(text)
        return True if word in TRUE_WORDS else False if word in FALSE_WORDS else None
    letters = [c for c in re.split(r"[\s,，、]+", text.upper()) if c]
    if len(letters) == 1 and len(letters[0]) > 1 and letters[0].isalpha():
        letters = list(letters[0])          # "AC" means A and C
    idx = []
    for c in letters:
        if c.isdigit() and 1 <= int(c) <= len(q.choices):
            idx.append(int(c) - 1)
        elif len(c) == 1 and c in LETTERS[: len(q.choices)]:
            idx.append(LETTERS.index(c))
        else:
            return None
    if not idx:
        return None
    if q.type == "single":
        return idx[0] if len(idx) == 1 else None
    return sorted(set(idx))


def is_correct(q: Question, answer) -> bool:
    """Check an answer value (index, list of indexes, bool, or text for short answers)."""
    if answer is None:
        return False
    if q.type == "single":
        return answer == q.answer
    if q.type == "multiple":
        return sorted(set(answer)) == sorted(q.answer)
    if q.type == "truefalse":
        return answer is q.answer
    return _normalize(str(answer)) in {_normalize(a) for a in q.answer}


def answer_text(q: Question, lang: str) -> str:
    """The correct answer as a student should read it."""
    if q.type == "single":
        return f"{LETTERS[q.answer]}. {q.choices[q.answer][lang]}"
    if q.type == "multiple":
        return "; ".join(f"{LETTERS[i]}. {q.choices[i][lang]}" for i in q.answer)
    if q.type == "truefalse":
        return UI[lang]["true" if q.answer else "false"]
    zh = [a for a in q.answer if re.search(r"[\u3400-\u9fff]", a)]
    en = [a for a in q.answer if a not in zh]
    return (zh or en)[0] if lang == "zh" else (en or zh)[0]


@dataclass
class Feedback:
    correct: bool
    message: str          # "Correct." or "Not quite. The answer: …"
    explanation: str
    cite: str


def feedback(q: Question, answer, lang: str = "en") -> Feedback:
    """Practice mode: whether the answer is right, the right answer, and the explanation."""
    ok = is_correct(q, answer)
    ui = UI[lang]
    message = ui["correct"] if ok else ui["wrong"].format(answer=answer_text(q, lang))
    return Feedback(ok, message, q.explanation[lang], q.cite)


@dataclass
class Score:
    right: int
    total: int
    per_topic: dict[str, tuple[int, int]] = field(default_factory=dict)   # topic -> (right, total)
    revisit: list[str] = field(default_factory=list)   # notebooks (or "seed") of the missed questions
    sections: dict[str, list[str]] = field(default_factory=dict)   # notebook -> its headings to reread

    @property
    def percent(self) -> float:
        return 100.0 * self.right / self.total if self.total else 0.0


def score(results: list[tuple[Question, bool]]) -> Score:
    """Score a finished quiz: overall, per topic, and the notebooks to revisit (in course
    order, each once) for the questions answered wrongly."""
    per_topic: dict[str, list[int]] = {}
    sections: dict[str, list[str]] = {}
    for q, ok in results:
        tally = per_topic.setdefault(q.topic, [0, 0])
        tally[0] += int(ok)
        tally[1] += 1
        if not ok:
            headings = sections.setdefault(q.notebook or "seed", [])
            if q.notebook and (heading := q.cite.split("#", 1)[1]) not in headings:
                headings.append(heading)
    right = sum(int(ok) for _, ok in results)
    ordered = sorted(sections, key=lambda n: (n == "seed", n))
    return Score(right, len(results), {t: (a, b) for t, (a, b) in per_topic.items()}, ordered,
                 {n: sections[n] for n in ordered})


# ---------------------------------------------------------------- terminal

def render_question(q: Question, number: int, total: int, lang: str) -> str:
    lines = [f"[{number}/{total}] ({TOPICS[q.topic][0 if lang == 'en' else 1]}) {q.question[lang]}"]
    for i, c in enumerate(q.choices):
        lines.append(f"  {LETTERS[i]}. {c[lang]}")
    return "\n".join(lines)


def _prompt(q: Question, lang: str) -> str:
    return UI[lang]["prompt_" + {"single": "single", "multiple": "multiple",
                                 "truefalse": "tf", "short": "short"}[q.type]]


def run(questions: list[Question], lang: str, mock: bool, stdin: TextIO, stdout: TextIO) -> Score:
    """Ask each question on ``stdout``, read each answer from ``stdin``. Practice mode
    answers at once with the explanation; mock mode only scores at the end. An answer that
    can't be read is asked again; the end of input counts the rest as unanswered."""
    ui = UI[lang]
    results = []
    started = time.monotonic()
    for number, q in enumerate(questions, 1):
        print(render_question(q, number, len(questions), lang), file=stdout)
        answer = None
        while True:
            stdout.write(_prompt(q, lang))
            stdout.flush()
            line = stdin.readline()
            if not line:
                break
            answer = parse_response(q, line)
            if answer is not None:
                break
        ok = is_correct(q, answer)
        results.append((q, ok))
        if not mock:
            fb = feedback(q, answer, lang)
            where = ui["seed_note"] if fb.cite == "seed" else fb.cite
            print(f"\n{fb.message}\n{fb.explanation}\n→ {where}\n", file=stdout)
        else:
            print(file=stdout)
    result = score(results)
    print(ui["score"].format(right=result.right, total=result.total, pct=result.percent), file=stdout)
    if mock:
        minutes, seconds = divmod(int(time.monotonic() - started), 60)
        print(ui["time"].format(m=minutes, s=seconds), file=stdout)
    for topic in TOPICS:
        if topic in result.per_topic:
            r, t = result.per_topic[topic]
            print("  " + ui["topic"].format(name=TOPICS[topic][0 if lang == "en" else 1], right=r, total=t), file=stdout)
    if result.revisit:
        print(ui["revisit"], file=stdout)
        for nb in result.revisit:
            print(f"  {ui['seed_note'] if nb == 'seed' else nb}", file=stdout)
            for heading in result.sections.get(nb, []):
                print(f"      § {heading}", file=stdout)
    else:
        print(ui["none"], file=stdout)
    return result


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv: list[str] | None = None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m grading", description="Exam-prep quiz (练习与模拟考试)")
    sub = parser.add_subparsers(dest="command", required=True)
    quiz = sub.add_parser("quiz", help="practice, or a mock exam with --mock N")
    quiz.add_argument("--lang", choices=("en", "zh"), default="en")
    quiz.add_argument("--topic", choices=sorted(TOPICS))
    quiz.add_argument("--mock", type=_positive, metavar="N", help="a mock exam of N questions drawn by topic weight")
    quiz.add_argument("--seed", type=int, help="make the draw reproducible")
    quiz.add_argument("--count", type=_positive, metavar="N", help="practice only N questions")
    sub.add_parser("check", help="validate the question bank and print counts per topic")
    args = parser.parse_args(argv)
    bank = load_bank()
    if args.command == "check":
        for topic in TOPICS:
            print(f"{topic:20} {sum(q.topic == topic for q in bank)}", file=stdout)
        print(f"{'total':20} {len(bank)}", file=stdout)
        return 0
    lang = args.lang
    if args.mock:
        questions = draw(bank, n=args.mock, seed=args.seed, topic=args.topic)
        print(UI[lang]["mock"].format(n=len(questions), seed=args.seed), file=stdout)
    else:
        questions = draw(bank, seed=args.seed, topic=args.topic)[: args.count or None]
        print(UI[lang]["practice"].format(n=len(questions)), file=stdout)
    run(questions, lang, mock=bool(args.mock), stdin=stdin, stdout=stdout)
    return 0
