#!/usr/bin/env python3
"""Run latency of `true` in a container on the busybox image, side by side with peers.

Measures, in one process tree and on an identical rootfs:
  minicontainer run (CLI)     a fresh `minicontainer run --rm busybox true` each time
  minicontainer.run()         the in-process API, with the default security profile
  minicontainer.run(privileged=True)   the same without it: no seccomp, masks or capability drop
  runc run                    on an OCI bundle of the same layer (if runc is installed), given the
                              same profile: Docker's 14 capabilities and our seccomp allow-list
  crun run                    same bundle; crun refuses hybrid cgroups, so it runs in a private
                              mount namespace with /sys/fs/cgroup/unified unmounted (DESIGN.md §9)
and prints medians and ratios against runc. Usage: bench/run_latency.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import json
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


def timed_side_by_side(runners: dict[str, callable], n: int) -> dict[str, list[float]]:
    """Time every runner n times, alternating them round by round so that drift in the
    machine's load hits all of them alike; one warm-up run each first."""
    for fn in runners.values():
        fn()  # warm-up: image built, layers unpacked, page cache hot
    out: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(n):
        for name, fn in runners.items():
            t = time.perf_counter()
            fn()
            out[name].append(time.perf_counter() - t)
    return out


def make_bundle(root: Path, lower: str, profile: bool = True) -> Path:
    """An OCI runtime bundle whose rootfs is a copy of the busybox layer, running `true`;
    with ``profile``, given minicontainer's security profile, else runc spec's default."""
    bundle = root / ("bundle" if profile else "bundle-runc-default")
    shutil.copytree(lower, bundle / "rootfs", symlinks=True)
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"]["terminal"] = False
    spec["process"]["args"] = ["true"]
    spec["root"]["readonly"] = False
    if not profile:
        (bundle / "config.json").write_text(json.dumps(spec))
        return bundle
    # the profile minicontainer applies, so runc does the same work: 14 capabilities, the seccomp filter
    from minicontainer.kernel.security import DEFAULT_CAPABILITIES
    from minicontainer.runtime.spec import default_seccomp
    caps = list(DEFAULT_CAPABILITIES)
    spec["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted", "inheritable")}
    spec["linux"]["seccomp"] = default_seccomp()
    (bundle / "config.json").write_text(json.dumps(spec))
    return bundle


CRUN_INNER = r"""
import subprocess, sys, time, json
subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=True)
bundle, n = sys.argv[1], int(sys.argv[2])
out = []
for i in range(n + 1):
    t = time.perf_counter()
    subprocess.run(["crun", "run", "--bundle", bundle, f"bench-crun-{i}"], check=True)
    out.append(time.perf_counter() - t)
print(json.dumps(out[1:]))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=30)
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-"))
    os.environ["MINICONTAINER_ROOT"] = str(tmp / "lib")
    import minicontainer
    from minicontainer.engine.images import open_store
    from minicontainer.engine.run import get_image

    results: dict[str, list[float]] = {}
    try:
        store = open_store()
        lowers = store.lower_dirs(get_image(store, "busybox"))
        cli = [str(REPO / ".venv/bin/minicontainer")] if (REPO / ".venv/bin/minicontainer").exists() \
            else [sys.executable, "-m", "minicontainer"]
        runners = {
            "minicontainer run (CLI)": lambda: subprocess.run(cli + ["run", "--rm", "busybox", "true"], check=True),
            "minicontainer.run() in-process": lambda: minicontainer.run("busybox", ["true"]),
            "minicontainer.run(privileged=True)": lambda: minicontainer.run("busybox", ["true"], privileged=True),
        }
        bundle = None
        if shutil.which("runc"):
            bundle = make_bundle(tmp, lowers[0])
            counter = iter(range(10**6))
            runners["runc run"] = lambda: subprocess.run(
                ["runc", "run", "--bundle", str(bundle), f"bench-runc-{next(counter)}"], check=True)
            plain = make_bundle(tmp, lowers[0], profile=False)
            runners["runc run (runc spec: no seccomp)"] = lambda: subprocess.run(
                ["runc", "run", "--bundle", str(plain), f"bench-runc-{next(counter)}"], check=True)
        results = timed_side_by_side(runners, n)
        if shutil.which("crun") and bundle is not None:
            # crun needs its own mount namespace (see the docstring), so it is timed in a
            # separate pass right after the others
            out = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, "-c", CRUN_INNER,
                                  str(bundle), str(n)], check=True, capture_output=True, text=True).stdout
            results["crun run (in a private mount ns)"] = json.loads(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = statistics.median(results["runc run"]) if "runc run" in results else None
    print(f"\nrun latency of `true` on busybox, median of {n} runs")
    print(f"{'runtime':<36} {'median ms':>10} {'p90 ms':>8} {'vs runc':>8}")
    for name, xs in results.items():
        med = statistics.median(xs)
        p90 = sorted(xs)[int(len(xs) * 0.9) - 1]
        ratio = f"{med / base:.2f}x" if base else "n/a"
        print(f"{name:<36} {med * 1000:10.2f} {p90 * 1000:8.2f} {ratio:>8}")


if __name__ == "__main__":
    main()
