#!/usr/bin/env python3
"""Lifecycle latencies, against the issue's targets (there is no peer to compare on this machine:
no docker daemon; the figures are minicontainer's own):

  ps -a over 100 containers (90 created, 10 running), CLI wall time     target <= 0.25 s
  pause and unpause of a running container, in process                  target <= 20 ms each
  stop of a container that exits on SIGTERM, in process
  run -d (CLI) until the id is printed
  a cached rebuild of a 10-instruction Dockerfile (CLI)                 target <= 0.3 s

Usage: bench/lifecycle.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from build import DOCKERFILE  # noqa: E402 - bench/build.py's, the same 10 instructions
TERM_LOOP = "trap 'exit 0' TERM; while :; do sleep 0.05; done"


def timed(fn, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=20)
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-life-"))
    os.environ["MINICONTAINER_ROOT"] = str(tmp / "lib")
    os.environ["MINICONTAINER_RUN"] = str(tmp / "run")
    import minicontainer

    cli = [str(REPO / ".venv/bin/minicontainer")] if (REPO / ".venv/bin/minicontainer").exists() \
        else [sys.executable, "-m", "minicontainer"]
    results: dict[str, list[float]] = {}
    try:
        running = [minicontainer.run("busybox", TERM_LOOP, detach=True) for _ in range(10)]
        for _ in range(90):
            minicontainer.create("busybox", ["true"])
        results["ps -a, 100 containers (CLI)"] = timed(
            lambda: subprocess.run(cli + ["ps", "-a"], check=True, stdout=subprocess.DEVNULL), n)
        target = running[0]
        results["pause (in process)"], results["unpause (in process)"] = [], []
        for _ in range(n):
            t = time.perf_counter()
            minicontainer.pause(target)
            results["pause (in process)"].append(time.perf_counter() - t)
            t = time.perf_counter()
            minicontainer.unpause(target)
            results["unpause (in process)"].append(time.perf_counter() - t)
        results["stop, exits on SIGTERM (in process)"] = [timed(lambda: minicontainer.stop(c), 1)[0] for c in running]
        started = []
        results["run -d until the id (CLI)"] = timed(lambda: started.append(subprocess.run(
            cli + ["run", "-d", "busybox", "sleep", "60"], check=True, capture_output=True, text=True).stdout.strip()), n)
        ctx = tmp / "ctx"
        (ctx / "src").mkdir(parents=True)
        (ctx / "src" / "app.txt").write_text("app\n")
        (ctx / "Dockerfile").write_text(DOCKERFILE.format(base="busybox"))
        subprocess.run(cli + ["build", "-q", "-t", "bench/app", str(ctx)], check=True, stdout=subprocess.DEVNULL)
        results["cached rebuild, 10 instructions (CLI)"] = timed(
            lambda: subprocess.run(cli + ["build", "-q", "-t", "bench/app", str(ctx)], check=True,
                                   stdout=subprocess.DEVNULL), n)
    finally:
        for record in minicontainer.ps(all=True):
            minicontainer.rm(record["ID"], force=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nlifecycle latencies, median of {n} runs (stop: of 10)")
    print(f"{'operation':<40} {'median ms':>10} {'p90 ms':>8}")
    for name, xs in results.items():
        p90 = sorted(xs)[max(0, int(len(xs) * 0.9) - 1)]
        print(f"{name:<40} {statistics.median(xs) * 1000:10.2f} {p90 * 1000:8.2f}")


if __name__ == "__main__":
    main()
