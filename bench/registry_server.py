#!/usr/bin/env python3
"""Our registry server against Debian's docker-registry, both serving the same skopeo
push and pull of one generated multi-layer image.

The image is the one bench/unpack.py unpacks (five gzip layers, ~51 MB of blobs, over
20k files), written by ImageStore as an OCI layout tagged REF=docker.io/library/benchimg:latest.
For each server, each run:
  push   `skopeo copy --dest-tls-verify=false oci:<layout>:REF docker://<server>/bench/imgN:1`
  pull   `skopeo copy --src-tls-verify=false docker://<server>/bench/imgN:1 oci:<fresh dir>:t`
Both servers run as their own process on 127.0.0.1 (ours as `minicontainer registry serve`),
and every run gets a freshly started server with an empty storage dir: skopeo remembers
where it pushed blobs before (its blob-info cache) and mounts them from that repository
instead of uploading, so a fresh repository name on the same server would measure a
mount, not an upload. Server start-up is not timed. One warm-up run per server, then the
servers alternate, rotating their order each round. The pulled manifest digest is checked
to equal the pushed one. Target: ours <= 1.2x docker-registry.
Usage: bench/registry_server.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Callable

import peers
from peers import IMAGE_REF, build_image, docker_registry, our_registry, print_table, skopeo, timed

Server = Callable[[Path], AbstractContextManager[str]]


def push_and_pull(server: Server, layout: Path, work: Path, run: int, expect_digest: str) -> tuple[float, float]:
    """One run against a fresh server: (push seconds, pull seconds)."""
    storage, pulled = work / "storage", work / "pulled"
    try:
        with server(storage) as hostport:
            ref = f"docker://{hostport}/bench/img{run}:1"
            push = timed(lambda: skopeo("copy", "--dest-tls-verify=false", f"oci:{layout}:{IMAGE_REF}", ref))
            pull = timed(lambda: skopeo("copy", "--src-tls-verify=false", ref, f"oci:{pulled}:t"))
        got = json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"]
        if got != expect_digest:
            sys.exit(f"pulled manifest {got} is not the pushed {expect_digest}")
        return push, pull
    finally:
        shutil.rmtree(storage, ignore_errors=True)
        shutil.rmtree(pulled, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=9, help="timed runs per server (default 9)")
    n = ap.parse_args().n
    if not peers.have("skopeo"):
        sys.exit("skopeo is not installed: it is the client both servers are measured with")
    servers: dict[str, Server] = {"ours": our_registry}
    if Path("/usr/bin/docker-registry").exists():
        servers = {"docker-registry": docker_registry, **servers}
    else:
        print("docker-registry is not installed: no peer row, no ratio")

    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-regsrv-"))
    try:
        image = build_image(tmp / "store")
        print(image.describe())
        work = tmp / "work"
        work.mkdir()
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        order = list(servers)
        run = 0
        for name in order:   # warm-up: page cache, skopeo and both servers' code paths
            run += 1
            push_and_pull(servers[name], image.layout, work, run, image.manifest_digest)
        for i in range(n):
            for name in order[i % len(order):] + order[:i % len(order)]:
                run += 1
                samples[name].append(push_and_pull(servers[name], image.layout, work, run, image.manifest_digest))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = "docker-registry" if "docker-registry" in samples else None
    rows = []
    for what, pick in (("push", lambda r: r[0]), ("pull", lambda r: r[1]), ("push+pull", lambda r: r[0] + r[1])):
        for name, runs in samples.items():
            rows.append((f"{name} {what}", [pick(r) for r in runs], f"{base} {what}" if base else None))
    print_table(f"skopeo push and pull through each server, median of {n} runs",
                rows, "target: ours <= 1.20x docker-registry")


if __name__ == "__main__":
    main()
