"""pyproject.toml and environment.yml must list the same dependencies (no drift)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _normalize(spec: str) -> tuple[str, str]:
    name, version = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$", spec).groups()
    return name.lower().replace("_", "-"), version.replace(" ", "")


def pyproject_dependencies() -> set[tuple[str, str]]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    specs = list(data["project"]["dependencies"])
    for extra in data["project"]["optional-dependencies"].values():
        specs += extra
    return {_normalize(s) for s in specs}


# conda packages that are libraries for a Python dependency, not Python packages themselves
NATIVE_LIBRARIES = {"libseccomp"}


def environment_dependencies() -> set[tuple[str, str]]:
    """The Python packages in environment.yml: conda's (not python, pip or native libraries)
    and the pip: section's (not the editable install of minicontainer itself)."""
    deps, in_deps = set(), False
    for line in (ROOT / "environment.yml").read_text().splitlines():
        stripped = line.split("#", 1)[0].rstrip()
        if stripped.startswith("dependencies:"):
            in_deps = True
            continue
        pip_entry = re.match(r"^      - ([A-Za-z].*)$", stripped)
        if in_deps and pip_entry:
            deps.add(_normalize(pip_entry.group(1)))
        elif in_deps and re.match(r"^  - [A-Za-z]", stripped):
            spec = stripped[4:]
            if _normalize(spec)[0] in {"python", "pip"} | NATIVE_LIBRARIES:
                continue
            deps.add(_normalize(spec))
    return deps


def test_environment_yml_matches_pyproject():
    assert environment_dependencies() == pyproject_dependencies()


def test_the_drift_check_would_notice_a_difference():
    # guard against a parser that reads nothing and compares two empty sets
    assert len(pyproject_dependencies()) >= 8
    assert ("jupyterlab", ">=4.0") in environment_dependencies()
