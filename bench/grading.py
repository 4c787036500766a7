#!/usr/bin/env python3
"""The auto-grader against the issue's targets (issue 10):

  30 generated submissions of lab 01 (correct, partial and broken), autograde --jobs 2     target <= 5 min
  the container's overhead per submission: the same notebook graded in the container
  and on a kernel started on the host, side by side in one run                             target <= 1 s

The mix (seeded, so every run grades the same 30 notebooks): 12 correct, 8 with one part
left as the stub, 4 with a syntax error, 2 with an infinite loop (each costs a cell
timeout: --cell-timeout, 10 s here), 2 whose kernel exits, 2 that are not JSON.

Usage: bench/grading.py [-n RUNS] [--jobs N] [--cell-timeout S]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from grading.autograde import autograde  # noqa: E402
from grading.cells import read_notebook  # noqa: E402
from grading.container import GradingEnvironment  # noqa: E402
from grading.execute import run_notebook  # noqa: E402
from grading.grade import Limits, grade_notebook  # noqa: E402
from grading.labs import find_lab  # noqa: E402
from grading_corpus import STUB, with_code  # noqa: E402

SOLUTION_CELLS = {"namespaces-read-code": "read_namespace_ids", "namespaces-isolate-code": "isolate",
                  "namespaces-network-code": "network_devices"}


def generate(source: dict, folder: Path, seed: int = 10) -> dict[str, int]:
    """Write the 30 submissions; returns how many of each kind."""
    rng = random.Random(seed)
    kinds = ["correct"] * 12 + ["partial"] * 8 + ["syntax"] * 4 + ["loop"] * 2 + ["exits"] * 2 + ["garbage"] * 2
    rng.shuffle(kinds)
    folder.mkdir(parents=True)
    for i, kind in enumerate(kinds):
        cell = rng.choice(sorted(SOLUTION_CELLS))
        nb = {"correct": lambda: source,
              "partial": lambda: with_code(source, {cell: STUB.format(name=SOLUTION_CELLS[cell])}),
              "syntax": lambda: with_code(source, {cell: "def broken(:\n    pass\n"}),
              "loop": lambda: with_code(source, {cell: "while True:\n    pass\n"}),
              "exits": lambda: with_code(source, {cell: "import os\nos._exit(1)\n"}),
              "garbage": lambda: None}[kind]()
        data = json.dumps(nb).encode() if nb is not None else b"\x00not a notebook"
        (folder / f"student{i:02d}.ipynb").write_bytes(data)
    return {k: kinds.count(k) for k in sorted(set(kinds))}


def host_runner(nb, workdir, limits):
    """The same notebook on a kernel started on the host (what grading without a sandbox costs)."""
    return run_notebook(nb, cwd=str(workdir), cell_timeout=limits.cell_timeout,
                        notebook_timeout=limits.notebook_timeout, output_cap=limits.output_cap,
                        graceful_shutdown=False)


def timed_grades(source, runner, n: int, limits: Limits) -> list[float]:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        result, _ = grade_notebook(source, json.loads(json.dumps(source)), student="bench", lab="01-namespaces",
                                   runner=runner, limits=limits)
        times.append(time.perf_counter() - t)
        assert result.score == result.max_score, result
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=5, help="runs of each side of the overhead comparison")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--cell-timeout", type=int, default=10)
    a = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/grading.py: run it as root (the grader starts containers)")
    work = Path(tempfile.mkdtemp(prefix="bench-grading-"))
    os.environ["MINICONTAINER_ROOT"] = str(work / "lib")
    os.environ["MINICONTAINER_RUN"] = str(work / "run")
    try:
        lab = find_lab("01-namespaces")
        source = read_notebook(lab.source)
        limits = Limits(cell_timeout=a.cell_timeout, notebook_timeout=120)

        print(f"sandbox overhead: lab 01's reference solution graded {a.n} times each way, alternating")
        host, boxed = [], []
        with GradingEnvironment() as env:
            timed_grades(source, env.runner(0), 1, limits)            # warm the page cache for both
            for _ in range(a.n):
                host += timed_grades(source, host_runner, 1, limits)
                boxed += timed_grades(source, env.runner(0), 1, limits)
        h, b = statistics.median(host), statistics.median(boxed)
        print(f"  host kernel        median {h:6.2f} s   (min {min(host):.2f}, max {max(host):.2f})")
        print(f"  in its container   median {b:6.2f} s   (min {min(boxed):.2f}, max {max(boxed):.2f})")
        print(f"  overhead           {b - h:+6.2f} s per submission   ratio {b / h:.2f}x   target <= 1 s")

        mix = generate(json.loads(lab.source.read_text()), work / "submissions")
        print(f"\nbatch: 30 submissions ({', '.join(f'{v} {k}' for k, v in mix.items())}), "
              f"--jobs {a.jobs}, cell timeout {a.cell_timeout} s")
        t = time.perf_counter()
        results = autograde(lab, work / "submissions", work / "out", jobs=a.jobs, limits=limits)
        wall = time.perf_counter() - t
        scores = sorted(r.score for r in results)
        print(f"  wall time          {wall:6.1f} s   ({wall / len(results):.2f} s per submission)   target <= 300 s")
        print(f"  scores             {statistics.mean(scores):.2f} mean of {results[0].max_score:g}; "
              f"{sum(s == results[0].max_score for s in scores)} full marks, {sum(s == 0 for s in scores)} zero")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
