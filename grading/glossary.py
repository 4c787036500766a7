"""The bilingual glossary (grading/questions/glossary.yaml) and the key terms that the
notebooks mark in their markdown as ``**term** (中文)`` or ``**term (中文)**``."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

GLOSSARY = Path(__file__).resolve().parent / "questions" / "glossary.yaml"
NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
CJK = re.compile(r"[\u3400-\u9fff]")
# **en (zh)**   and   **en** (zh)
_INSIDE = re.compile(r"\*\*([^*\n()（）]+?)\s*[（(]([^()（）\n*]+)[)）]\*\*")
_AFTER = re.compile(r"\*\*([^*\n]+?)\*\*\s*[（(]([^()（）\n]+)[)）]")


@dataclass(frozen=True)
class Entry:
    en: str
    zh: str
    definition: dict
    also: tuple = ()            # other English forms (plurals, spellings) of the same term
    nonstandard: tuple = ()     # Chinese renderings that the notebooks should replace by zh

    def names(self) -> set[str]:
        return {normalize_term(n) for n in (self.en, *self.also)}


def normalize_term(term: str) -> str:
    """Compare terms case-blind, without markup, and singular ('Exit codes' = 'exit code')."""
    t = re.sub(r"[`*_]", "", term).strip().casefold()
    t = " ".join(t.split())
    if t.endswith("ies") and len(t) > 4:
        t = t[:-3] + "y"
    elif t.endswith("s") and not t.endswith(("ss", "us")) and len(t) > 3:
        t = t[:-1]
    return t


def load_glossary(path: Path = GLOSSARY) -> list[Entry]:
    data = yaml.safe_load(path.read_text())
    return [Entry(en=t["en"], zh=t["zh"], definition=t["definition"],
                  also=tuple(t.get("also", ())), nonstandard=tuple(t.get("nonstandard", ())))
            for t in data["terms"]]


def lookup(glossary: list[Entry], term: str) -> Entry | None:
    """The entry for ``term``; "control group / cgroup" is found under either name."""
    for name in (term, *term.split(" / ")):
        key = normalize_term(name)
        for entry in glossary:
            if key in entry.names():
                return entry
    return None


def _chinese_part(text: str) -> str:
    """'监控进程, Docker's "shim"' -> '监控进程': the first comma-separated part with Chinese."""
    for part in re.split(r"[,，;；]", text):
        if CJK.search(part):
            return part.strip()
    return text.strip()


def notebook_key_terms(notebooks: Path = NOTEBOOKS) -> list[tuple[str, str, str]]:
    """Every (notebook file name, English term, Chinese term) marked in bold with its Chinese."""
    found = []
    for path in sorted(notebooks.glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        for cell in cells:
            if cell["cell_type"] != "markdown":
                continue
            src = "".join(cell["source"])
            for pattern in (_INSIDE, _AFTER):
                for m in pattern.finditer(src):
                    en, zh = m.group(1).strip(), m.group(2)
                    if CJK.search(zh) and not CJK.search(en):
                        found.append((path.name, en, _chinese_part(zh)))
    return sorted(set(found))
