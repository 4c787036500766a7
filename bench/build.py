#!/usr/bin/env python3
"""Dockerfile builds of the same 10-instruction Dockerfile on the same busybox base, side by side:

  minicontainer build              (CLI), cold (--no-cache) and a cached rebuild      target: rebuild <= 0.3 s
  buildah bud --layers             (if installed: Debian's buildah, chroot isolation, vfs storage), same two

Usage: bench/build.py [-n RUNS]. buildah is not installed by `make`; `apt-get install buildah` to compare.
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
DOCKERFILE = """FROM {base}
ARG VERSION=1
ENV APP=/app MODE=bench
WORKDIR /app
COPY src/ ./src/
RUN echo built > built.txt
RUN ls -R /app > listing.txt
LABEL org.example.bench=yes
EXPOSE 8080
CMD ["cat", "/app/built.txt"]
"""


def timed(cmd: list[str], n: int, env: dict | None = None) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-build-"))
    env = dict(os.environ, MINICONTAINER_ROOT=str(tmp / "lib"), MINICONTAINER_RUN=str(tmp / "run"))
    mc = [str(REPO / ".venv/bin/minicontainer")]
    results: dict[str, list[float]] = {}
    try:
        for name, base in (("mc", "busybox"), ("buildah", "localhost/busybox")):
            ctx = tmp / f"ctx-{name}"
            (ctx / "src").mkdir(parents=True)
            (ctx / "src" / "app.txt").write_text("app\n")
            (ctx / "Dockerfile").write_text(DOCKERFILE.format(base=base))
        mc_ctx = str(tmp / "ctx-mc")
        subprocess.run(mc + ["build", "-q", "-t", "bench/app", mc_ctx], check=True, env=env, stdout=subprocess.DEVNULL)
        results["minicontainer build --no-cache"] = timed(mc + ["build", "-q", "--no-cache", mc_ctx], n, env)
        subprocess.run(mc + ["build", "-q", "-t", "bench/app", mc_ctx], check=True, env=env, stdout=subprocess.DEVNULL)
        results["minicontainer build (cached)"] = timed(mc + ["build", "-q", "-t", "bench/app", mc_ctx], n, env)
        if shutil.which("buildah"):
            b = ["buildah", "--root", str(tmp / "b-storage"), "--runroot", str(tmp / "b-run"), "--storage-driver", "vfs"]
            subprocess.run(mc + ["save", "-o", str(tmp / "busybox.tar"), "busybox"], check=True, env=env)
            image = subprocess.run(b + ["pull", "-q", f"oci-archive:{tmp / 'busybox.tar'}"], check=True,
                                   capture_output=True, text=True).stdout.strip()
            subprocess.run(b + ["tag", image, "localhost/busybox"], check=True)
            bud = b + ["bud", "--isolation", "chroot", "--layers", "-q", "-t", "bench/app", str(tmp / "ctx-buildah")]
            subprocess.run(bud, check=True, stdout=subprocess.DEVNULL)
            results["buildah bud --layers --no-cache"] = timed(bud[:-3] + ["--no-cache"] + bud[-3:], n)
            subprocess.run(bud, check=True, stdout=subprocess.DEVNULL)
            results["buildah bud --layers (cached)"] = timed(bud, n)
    finally:
        if shutil.which("buildah"):
            subprocess.run(["buildah", "--root", str(tmp / "b-storage"), "--runroot", str(tmp / "b-run"),
                            "--storage-driver", "vfs", "rmi", "-a", "-f"], capture_output=True)
        subprocess.run(["umount", "-R", str(tmp / "b-storage")], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\nbuild of a 10-instruction Dockerfile, median of {n} runs")
    print(f"{'builder':<36} {'median ms':>10} {'vs buildah':>11}")
    for name, xs in results.items():
        peer = "buildah bud --layers (cached)" if "cached" in name else "buildah bud --layers --no-cache"
        ratio = f"{statistics.median(xs) / statistics.median(results[peer]):.2f}x" if peer in results else "n/a"
        print(f"{name:<36} {statistics.median(xs) * 1000:10.1f} {ratio:>11}")
    if not shutil.which("buildah"):
        print("(buildah is not installed: apt-get install buildah to compare)")


if __name__ == "__main__":
    main()
