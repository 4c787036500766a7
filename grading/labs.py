"""Where the labs live: labs/NN-topic/{source/NN-topic.ipynb, NN-topic.ipynb, README.md}."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

LAB_NAME = re.compile(r"^\d\d-[a-z0-9-]+$")


class LabNotFound(ValueError):
    """No lab of that name; the message lists the ones there are."""


def labs_dir() -> Path:
    """The folder of labs: $MINICONTAINER_LABS, else the repository's labs/ beside grading/."""
    return Path(os.environ.get("MINICONTAINER_LABS") or Path(__file__).resolve().parent.parent / "labs")


@dataclass(frozen=True)
class Lab:
    name: str          # "01-namespaces"
    folder: Path

    @property
    def source(self) -> Path:
        """The instructor's notebook: solutions and hidden tests."""
        return self.folder / "source" / f"{self.name}.ipynb"

    @property
    def student(self) -> Path:
        """The generated student copy, committed beside the README."""
        return self.folder / f"{self.name}.ipynb"

    @property
    def topic(self) -> str:
        return self.name.split("-", 1)[1]


def all_labs(root: Path | None = None) -> list[Lab]:
    """Every lab folder that has a source notebook, in course order."""
    root = root or labs_dir()
    found = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        lab = Lab(folder.name, folder)
        if LAB_NAME.match(folder.name) and lab.source.is_file():
            found.append(lab)
    return found


def find_lab(name: str, root: Path | None = None) -> Lab:
    """A lab by its folder name ("01-namespaces"), number ("01", "1") or path."""
    path = Path(name)
    if (path / "source").is_dir():
        lab = Lab(path.resolve().name, path.resolve())
        if lab.source.is_file():
            return lab
    labs = all_labs(root)
    for lab in labs:
        if name in (lab.name, lab.name[:2], lab.name[:2].lstrip("0"), lab.topic):
            return lab
    names = ", ".join(lab.name for lab in labs) or "none yet"
    raise LabNotFound(f"no lab {name!r} (with a source/{name}.ipynb): choose one of {names}")
