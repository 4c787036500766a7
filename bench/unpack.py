#!/usr/bin/env python3
"""Unpacking a large multi-layer image: minicontainer against `umoci unpack`.

The image is generated (seeded, so every run unpacks the same bytes): five gzip layers
with over 20k files in nested dirs, symlinks, hardlinks, overwrites, whiteouts (a file, a
whole dir) and an opaque dir, plus a layer of large random files. It is written by
ImageStore as an OCI image layout, which umoci reads directly.

Rows, each producing a fresh tree:
  umoci unpack             `umoci unpack --image <layout>:<ref> <bundle>` (ref is the full
                           docker.io/library/benchimg:latest): all layers applied in order
                           onto bundle/rootfs; umoci also writes config.json and an mtree
                           manifest of the rootfs, which is part of what `umoci unpack` costs
  ours flatten             apply_layer(mode="flatten") of every layer in order onto one empty
                           dir: the same job umoci does; the target is <= 1.0x umoci
  ours overlay per layer   unpack_layer(mode="overlay") of each layer into its own dir, as the
                           engine does for overlayfs lower dirs (includes its syncfs per layer)

Ours runs in this process (as the engine calls it); umoci runs as a subprocess. Each row is
run once to warm the page cache, then the rows alternate, rotating their order each round;
before every timed run the previous output is deleted and os.sync() flushes dirty pages, so
no run pays for another's writeback. The two flattened trees are checked to hold the same
number of entries and bytes. Usage: bench/unpack.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import peers
from peers import IMAGE_REF, build_image, count_tree, print_table, timed

from minicontainer.image.layers import apply_layer, unpack_layer


def tree_bytes(path: Path) -> int:
    """Bytes of regular-file content under ``path`` (hardlinked inodes counted once)."""
    seen, total = set(), 0
    for top, _, files in os.walk(path):
        for f in files:
            st = os.lstat(os.path.join(top, f))
            if (st.st_mode & 0o170000) == 0o100000 and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=5, help="timed runs per row (default 5)")
    n = ap.parse_args().n
    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-unpack-"))
    try:
        image = build_image(tmp / "store")
        print(image.describe())
        store, layers, diff_ids = image.store, image.layers, image.diff_ids
        out = tmp / "out"

        def umoci() -> None:
            subprocess.run(["umoci", "unpack", "--image", f"{image.layout}:{IMAGE_REF}", str(out / "bundle")],
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def flatten() -> None:
            for desc, diff_id in zip(layers, diff_ids):
                apply_layer(store.blob_path(desc["digest"]), out / "rootfs", media_type=desc["mediaType"],
                            digest=desc["digest"], diff_id=diff_id, mode="flatten")

        def overlay() -> None:
            for i, (desc, diff_id) in enumerate(zip(layers, diff_ids)):
                unpack_layer(store.blob_path(desc["digest"]), out / "layers" / f"{i}", media_type=desc["mediaType"],
                             digest=desc["digest"], diff_id=diff_id, mode="overlay")

        rows = {"ours flatten": flatten, "ours overlay per layer": overlay}
        if peers.have("umoci"):
            rows = {"umoci unpack": umoci, **rows}
        else:
            print("umoci is not installed: no peer row, no ratio")

        def fresh() -> None:
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir()
            os.sync()

        sanity = {}
        for name, fn in rows.items():   # warm-up round, also the sanity check
            fresh()
            fn()
            tree = out / "bundle" / "rootfs" if name == "umoci unpack" else out / "rootfs"
            if tree.exists():
                sanity[name] = (count_tree(tree), tree_bytes(tree))
        if len(set(sanity.values())) != 1:
            sys.exit(f"flattened trees differ (entries, bytes): {sanity}")
        entries, size = next(iter(sanity.values()))
        print(f"flattened rootfs: {entries} entries, {size / 1e6:.0f} MB of file content "
              f"(same in {', '.join(sanity)})")

        samples: dict[str, list[float]] = {name: [] for name in rows}
        order = list(rows)
        for i in range(n):
            for name in order[i % len(order):] + order[:i % len(order)]:
                fresh()
                samples[name].append(timed(rows[name]))
        fresh()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = "umoci unpack" if "umoci unpack" in samples else None
    print_table(f"unpack of all {len(layers)} layers, median of {n} runs (warm page cache)",
                [(name, xs, base) for name, xs in samples.items()], "target: flatten <= 1.00x umoci")


if __name__ == "__main__":
    main()
