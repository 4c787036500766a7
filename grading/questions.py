"""The exam-prep question bank: load the YAML files under ``grading/questions/`` and check
them against the schema. Every text is bilingual (``en`` and ``zh``), every question cites the
notebook section that teaches it (``notebooks/NN-name.ipynb#Heading text``) or ``seed``."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BANK_DIR = Path(__file__).resolve().parent / "questions"
LANGS = ("en", "zh")
TYPES = ("single", "multiple", "truefalse", "short")

# topic id -> (English name, Chinese name, weight in a mock exam)
TOPICS: dict[str, tuple[str, str, int]] = {
    "container": ("What a container is", "什么是容器", 2),
    "vm": ("Containers vs virtual machines", "容器与虚拟机", 2),
    "oci": ("The OCI specifications", "OCI 规范", 2),
    "runtimes": ("Container runtimes", "容器运行时", 2),
    "engine": ("Docker Engine's three layers", "Docker Engine 的三层结构", 1),
    "architecture": ("Client, daemon and registry; build, pull and run", "客户端、守护进程与镜像仓库", 2),
    "namespaces-cgroups": ("Namespaces and cgroups", "命名空间与控制组", 3),
    "images": ("Images, layers and rootfs", "镜像、镜像层与根文件系统", 3),
    "registries": ("Registries", "镜像仓库", 2),
    "dockerfile": ("Dockerfile instructions", "Dockerfile 指令", 3),
    "private-registry": ("Running a private registry", "搭建私有镜像仓库", 2),
    "lifecycle": ("Lifecycle commands", "生命周期命令", 3),
    "security": ("Container security", "容器安全", 3),
}


class BankError(ValueError):
    """The question bank breaks the schema; the message lists every problem found."""


@dataclass(frozen=True)
class Question:
    id: str
    topic: str
    difficulty: int
    type: str
    question: dict
    answer: object
    explanation: dict
    cite: str
    choices: tuple = ()
    source: str = ""

    def text(self, lang: str) -> str:
        return self.question[lang]

    def choice_texts(self, lang: str) -> list[str]:
        return [c[lang] for c in self.choices]

    @property
    def notebook(self) -> str | None:
        """The cited notebook file (``notebooks/NN-….ipynb``), or None for ``seed``."""
        return None if self.cite == "seed" else self.cite.split("#", 1)[0]


def _bilingual(value, where: str, problems: list[str], needs_chinese: bool = True) -> None:
    """Both en and zh present; zh has Chinese in it (a choice may be a bare name such as runc)."""
    if not isinstance(value, dict):
        problems.append(f"{where}: expected {{en, zh}}, got {value!r}")
        return
    for lang in LANGS:
        text = value.get(lang)
        if not isinstance(text, str) or not text.strip():
            problems.append(f"{where}: missing {lang} text")
    if needs_chinese and isinstance(value.get("zh"), str) and not re.search(r"[\u3400-\u9fff]", value["zh"]):
        problems.append(f"{where}: the zh text has no Chinese in it")


def _check_answer(q: dict, where: str, problems: list[str]) -> None:
    kind, answer, choices = q.get("type"), q.get("answer"), q.get("choices") or []
    if kind in ("single", "multiple"):
        if len(choices) < 2:
            problems.append(f"{where}: a {kind} question needs at least two choices")
        for i, c in enumerate(choices):
            _bilingual(c, f"{where} choice {i}", problems, needs_chinese=False)
    elif choices:
        problems.append(f"{where}: a {kind} question has no choices")
    if kind == "single":
        # exactly one correct answer: a single int index
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            problems.append(f"{where}: single-choice answer must be one valid index, got {answer!r}")
    elif kind == "multiple":
        if (not isinstance(answer, list) or len(answer) < 2 or len(set(answer)) != len(answer)
                or not all(isinstance(a, int) and not isinstance(a, bool) and 0 <= a < len(choices) for a in answer)):
            problems.append(f"{where}: multiple-choice answer must be a list of two or more distinct valid indexes, got {answer!r}")
    elif kind == "truefalse":
        if not isinstance(answer, bool):
            problems.append(f"{where}: true/false answer must be true or false, got {answer!r}")
    elif kind == "short":
        if not isinstance(answer, list) or not answer or not all(isinstance(a, str) and a.strip() for a in answer):
            problems.append(f"{where}: short answer must be a list of accepted answers, got {answer!r}")
    else:
        problems.append(f"{where}: type must be one of {TYPES}, got {kind!r}")


def notebook_headings(path: Path) -> set[str]:
    """The text of every markdown heading in a notebook, without the leading #s."""
    nb = json.loads(path.read_text())
    headings = set()
    for cell in nb["cells"]:
        if cell["cell_type"] != "markdown":
            continue
        for line in "".join(cell["source"]).splitlines():
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                headings.add(m.group(1))
    return headings


_CHINESE_GLOSS = re.compile(r"\s*[（(][^()（）]*[\u3400-\u9fff][^()（）]*[)）]")


def _without_gloss(heading: str) -> str:
    """'Step 2 · … a whiteout (白化文件)' -> 'Step 2 · … a whiteout': a cite survives a change
    of the Chinese term in a heading (the glossary test watches the terms themselves)."""
    return _CHINESE_GLOSS.sub("", heading).strip()


def check_cite(cite: str, root: Path = ROOT, _cache: dict | None = None) -> str | None:
    """None if ``cite`` names an existing notebook heading (or is ``seed``); else the problem.
    The heading must match exactly, or apart from a parenthesized Chinese gloss."""
    if cite == "seed":
        return None
    if "#" not in cite:
        return f"cite {cite!r} is not 'notebooks/NN-name.ipynb#Heading' or 'seed'"
    file, heading = cite.split("#", 1)
    path = root / file
    if not path.is_file():
        return f"cite {cite!r}: no notebook {file}"
    cache = _cache if _cache is not None else {}
    if file not in cache:
        cache[file] = notebook_headings(path)
    if heading not in cache[file] and _without_gloss(heading) not in {_without_gloss(h) for h in cache[file]}:
        return f"cite {cite!r}: {file} has no heading {heading!r}"
    return None


def validate(raw: list[dict], check_cites: bool = True, root: Path = ROOT) -> list[str]:
    """Every schema problem in a list of raw question dicts (empty when the bank is sound)."""
    problems: list[str] = []
    seen: dict[str, str] = {}
    cache: dict = {}
    required = ("id", "topic", "difficulty", "type", "question", "answer", "explanation", "cite")
    for q in raw:
        where = f"{q.get('_source', '?')}:{q.get('id', '?')}"
        missing = [k for k in required if k not in q]
        if missing:
            problems.append(f"{where}: missing {', '.join(missing)}")
            continue
        if q["id"] in seen:
            problems.append(f"{where}: id also used in {seen[q['id']]}")
        seen[q["id"]] = q.get("_source", "?")
        if q["topic"] not in TOPICS:
            problems.append(f"{where}: unknown topic {q['topic']!r}")
        if q["difficulty"] not in (1, 2, 3):
            problems.append(f"{where}: difficulty must be 1, 2 or 3")
        _bilingual(q["question"], f"{where} question", problems)
        _bilingual(q["explanation"], f"{where} explanation", problems)
        _check_answer(q, where, problems)
        if check_cites and (p := check_cite(q["cite"], root, cache)):
            problems.append(f"{where}: {p}")
    return problems


def load_raw(bank_dir: Path = BANK_DIR) -> list[dict]:
    raw = []
    for path in sorted(bank_dir.glob("*.yaml")):
        if path.name == "glossary.yaml":
            continue
        data = yaml.safe_load(path.read_text()) or {}
        for q in data.get("questions", []):
            q["_source"] = path.name
            raw.append(q)
    return raw


def load_bank(bank_dir: Path = BANK_DIR, check_cites: bool = True) -> list[Question]:
    """Load and validate every question; raise BankError listing all problems."""
    raw = load_raw(bank_dir)
    problems = validate(raw, check_cites=check_cites)
    if problems:
        raise BankError(f"{len(problems)} problem(s) in the question bank:\n  " + "\n  ".join(problems))
    return [
        Question(id=q["id"], topic=q["topic"], difficulty=q["difficulty"], type=q["type"],
                 question=q["question"], answer=q["answer"], explanation=q["explanation"],
                 cite=q["cite"], choices=tuple(q.get("choices") or ()), source=q["_source"])
        for q in raw
    ]
