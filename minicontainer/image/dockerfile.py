"""Reading a Dockerfile: a list of instructions, each of which will make one step of the image.

The format, as Docker's reference describes it:
- one instruction per line, ``KEYWORD arguments``; keywords are case-insensitive;
- a line ending in the escape character (``\\``, or the one ``# escape=`` chose) goes on
  on the next line; comment lines start with ``#`` and are dropped, even inside a
  continued instruction;
- parser directives (``# syntax=…``, ``# escape=…``) may only come first;
- RUN, CMD, ENTRYPOINT, SHELL, COPY, ADD and VOLUME also take a JSON array (the "exec form");
- ``$VAR`` and ``${VAR}``, with ``${VAR:-default}`` and ``${VAR:+alternative}``, are
  replaced in FROM, COPY, ADD, ENV, ARG, WORKDIR, USER, EXPOSE, LABEL, VOLUME and
  STOPSIGNAL, from the ARGs and ENVs declared so far. RUN's are left to its shell.

Every error names the line and the fix, and nothing is built from a Dockerfile that
doesn't parse.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

from ..errors import InvalidArgument

INSTRUCTIONS = ("FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "SHELL", "STOPSIGNAL", "HEALTHCHECK", "ONBUILD", "MAINTAINER")
SUPPORTED = ("FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
             "WORKDIR", "ARG", "SHELL", "STOPSIGNAL", "MAINTAINER")
EXEC_FORM = ("RUN", "CMD", "ENTRYPOINT", "SHELL", "COPY", "ADD", "VOLUME")
SUBSTITUTED = ("FROM", "COPY", "ADD", "ENV", "ARG", "WORKDIR", "USER", "EXPOSE", "LABEL", "VOLUME", "STOPSIGNAL")


class DockerfileError(InvalidArgument):
    """A Dockerfile that can't be read: the message starts with "Dockerfile:LINE:"."""


@dataclass
class Instruction:
    """One instruction as written: its keyword, flags (--chown=…), and arguments."""

    keyword: str
    line: int                       # where it starts in the Dockerfile, 1-based
    text: str                       # the original text after the keyword, continuation joined
    flags: dict[str, str] = field(default_factory=dict)
    exec_form: list[str] | None = None   # the JSON array, when given in that form
    args: str = ""                  # the rest, as text (shell form)

    def __str__(self) -> str:
        return f"{self.keyword} {self.text}".strip()


def _directives(lines: list[str]) -> tuple[str, int]:
    """The escape character, and how many leading lines were parser directives."""
    escape, used = "\\", 0
    for line in lines:
        match = re.fullmatch(r"\s*#\s*([a-zA-Z]+)\s*=\s*(\S+)\s*", line)
        if not match or match.group(1).lower() not in ("escape", "syntax", "check"):
            break
        if match.group(1).lower() == "escape":
            if match.group(2) not in ("\\", "`"):
                raise DockerfileError(f"Dockerfile:{used + 1}: invalid escape {match.group(2)!r}: use \\ or `")
            escape = match.group(2)
        used += 1
    return escape, used


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Join continued lines and drop comments and blank lines: (first line number, text)."""
    lines = text.splitlines()
    escape, skip = _directives(lines)
    out: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(lines, 1):
        if number <= skip:
            continue
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue   # a comment, even in the middle of a continued instruction
        if not current:
            start = number
        if raw.rstrip().endswith(escape):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        out.append((start, current.strip()))
        current = ""
    if current.strip():
        out.append((start, current.strip()))
    return out


def _flags(rest: str) -> tuple[dict[str, str], str]:
    """Leading --name=value flags (COPY --chown=1:1, FROM --platform=…)."""
    flags: dict[str, str] = {}
    while True:
        match = re.match(r"--([a-z-]+)(?:=(\S*))?\s*", rest)
        if not match:
            return flags, rest
        flags[match.group(1)] = match.group(2) or ""
        rest = rest[match.end():]


def parse(text: str) -> list[Instruction]:
    """A Dockerfile's instructions, checked: the first (after ARGs) must be FROM."""
    instructions = []
    for line, logical in logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword not in INSTRUCTIONS:
            raise DockerfileError(f"Dockerfile:{line}: unknown instruction: {keyword} (in {logical[:40]!r}): "
                                  f"use one of {', '.join(SUPPORTED)}")
        if keyword not in SUPPORTED:
            raise DockerfileError(f"Dockerfile:{line}: {keyword} is not supported by minicontainer's builder yet")
        flags, rest = _flags(rest) if keyword in ("COPY", "ADD", "FROM", "RUN") else ({}, rest)
        instruction = Instruction(keyword, line, logical.partition(" ")[2].strip(), flags, args=rest)
        if keyword in EXEC_FORM and rest.startswith("["):
            try:
                value = json.loads(rest)
            except ValueError:
                value = None   # not JSON after all: Docker then treats it as the shell form
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                instruction.exec_form = value
        if not rest and keyword not in ("CMD", "ENTRYPOINT"):
            raise DockerfileError(f"Dockerfile:{line}: {keyword} needs arguments")
        instructions.append(instruction)
    first = next((i for i in instructions if i.keyword != "ARG"), None)
    if first is None:
        raise DockerfileError("Dockerfile: no FROM instruction: start with FROM IMAGE (or FROM scratch)")
    if first.keyword != "FROM":
        raise DockerfileError(f"Dockerfile:{first.line}: {first.keyword} before FROM: only ARG may come before FROM")
    return instructions


_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^}]*))?\}"
                  r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def substitute(text: str, variables: dict[str, str], escape: str = "\\") -> str:
    """Replace $VAR, ${VAR}, ${VAR:-default} and ${VAR:+alternative}; \\$ keeps a literal $."""
    out, i = [], 0
    while i < len(text):
        if text[i] == escape and i + 1 < len(text) and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        match = _VAR.match(text, i) if text[i] == "$" else None
        if not match:
            out.append(text[i])
            i += 1
            continue
        name = match.group("braced") or match.group("plain")
        value = variables.get(name)
        if match.group("op") == "-":
            value = value if value else match.group("word")
        elif match.group("op") == "+":
            value = match.group("word") if value else ""
        out.append(value or "")
        i = match.end()
    return "".join(out)


def split_words(text: str, line: int) -> list[str]:
    """Shell-like words (quotes honoured), for ENV/LABEL key=value pairs and paths."""
    try:
        return shlex.split(text, posix=True)
    except ValueError as exc:
        raise DockerfileError(f"Dockerfile:{line}: {exc}: check the quotes") from None


def key_values(instruction: Instruction, text: str) -> list[tuple[str, str]]:
    """ENV/LABEL/ARG pairs: ``A=1 B="two words"``, or the old ``ENV NAME value with spaces``."""
    if "=" not in text.split(" ", 1)[0]:
        if instruction.keyword == "ARG":
            return [(text.strip(), "")] if text.strip() else []
        name, _, value = text.partition(" ")
        if not value.strip():
            raise DockerfileError(f"Dockerfile:{instruction.line}: {instruction.keyword} {name} needs a value: "
                                  f"{instruction.keyword} {name}=VALUE")
        return [(name, value.strip())]
    pairs = []
    for word in split_words(text, instruction.line):
        name, eq, value = word.partition("=")
        if not eq and instruction.keyword != "ARG":
            raise DockerfileError(f"Dockerfile:{instruction.line}: {word!r} is not NAME=value")
        pairs.append((name, value))
    return pairs
