#!/usr/bin/env python3
"""Our registry client against skopeo, both pushing and pulling the same generated image
through Debian's docker-registry.

The image is the one bench/unpack.py unpacks (five gzip layers, ~51 MB of blobs, over
20k files), written by ImageStore as an OCI layout tagged REF=docker.io/library/benchimg:latest.
Each run, for each client:
  ours    push: minicontainer.registry.client.push("<server>/bench/imgN:1", store, source_ref=REF)
          pull: minicontainer.registry.client.pull("<server>/bench/imgN:1", <fresh ImageStore>)
  skopeo  push: `skopeo copy --dest-tls-verify=false oci:<layout>:REF docker://<server>/bench/imgN:1`
          pull: `skopeo copy --src-tls-verify=false docker://<server>/bench/imgN:1 oci:<fresh dir>:t`
Ours runs in this process (as the engine calls it), skopeo as a subprocess. Every run
gets a freshly started docker-registry with empty storage, so both clients really upload
(skopeo would otherwise mount blobs it remembers pushing to another repository). Start-up
is not timed. One warm-up run per client, then the clients alternate, rotating their order
each round. The pulled manifest digest is checked against the pushed one.
Target: ours <= 1.0x skopeo. Usage: bench/registry_client.py [-n RUNS]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable

import peers
from peers import IMAGE_REF, BenchImage, build_image, docker_registry, print_table, skopeo, timed

from minicontainer.image.store import ImageStore
from minicontainer.registry.client import pull, push

# (image, push target "host:port/repo:tag", scratch dir) -> (push seconds, pull seconds)
Client = Callable[[BenchImage, str, Path], tuple[float, float]]


def ours(image: BenchImage, target: str, scratch: Path) -> tuple[float, float]:
    into = ImageStore(scratch / "pulled")
    pushed: list[str] = []
    pulled: list[str] = []
    push_time = timed(lambda: pushed.append(push(target, image.store, source_ref=IMAGE_REF)))
    pull_time = timed(lambda: pulled.append(pull(target, into)))
    if not (pushed[0] == pulled[0] == image.manifest_digest == into.descriptor(target)["digest"]):
        sys.exit(f"our client pushed {pushed[0]} and pulled {pulled[0]}, expected {image.manifest_digest}")
    return push_time, pull_time


def with_skopeo(image: BenchImage, target: str, scratch: Path) -> tuple[float, float]:
    pulled = scratch / "pulled"
    push_time = timed(lambda: skopeo("copy", "--dest-tls-verify=false",
                                     f"oci:{image.layout}:{IMAGE_REF}", f"docker://{target}"))
    pull_time = timed(lambda: skopeo("copy", "--src-tls-verify=false", f"docker://{target}", f"oci:{pulled}:t"))
    got = json.loads((pulled / "index.json").read_text())["manifests"][0]["digest"]
    if got != image.manifest_digest:
        sys.exit(f"skopeo pulled {got}, expected {image.manifest_digest}")
    return push_time, pull_time


def one_run(client: Client, image: BenchImage, work: Path, run: int) -> tuple[float, float]:
    """A fresh docker-registry, one push and one pull, everything removed afterwards."""
    scratch = work / f"run-{run}"
    scratch.mkdir()
    try:
        with docker_registry(scratch / "storage") as hostport:
            return client(image, f"{hostport}/bench/img{run}:1", scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=9, help="timed runs per client (default 9)")
    n = ap.parse_args().n
    if not Path("/usr/bin/docker-registry").exists():
        sys.exit("docker-registry is not installed: it is the server both clients are measured against")
    clients: dict[str, Client] = {"ours": ours}
    if peers.have("skopeo"):
        clients = {"skopeo": with_skopeo, **clients}
    else:
        print("skopeo is not installed: no peer row, no ratio")

    tmp = Path(tempfile.mkdtemp(prefix="mc-bench-regcli-"))
    # No saved credentials or daemon.json from this host: loopback registries are plain HTTP anyway.
    os.environ["MINICONTAINER_CONFIG_DIR"] = str(tmp / "config")
    try:
        image = build_image(tmp / "store")
        print(image.describe())
        work = tmp / "work"
        work.mkdir()
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in clients}
        order = list(clients)
        run = 0
        for name in order:   # warm-up: page cache, imports, connection code paths
            run += 1
            one_run(clients[name], image, work, run)
        for i in range(n):
            for name in order[i % len(order):] + order[:i % len(order)]:
                run += 1
                samples[name].append(one_run(clients[name], image, work, run))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    base = "skopeo" if "skopeo" in samples else None
    rows = []
    for what, pick in (("push", lambda r: r[0]), ("pull", lambda r: r[1]), ("push+pull", lambda r: r[0] + r[1])):
        for name, runs in samples.items():
            rows.append((f"{name} {what}", [pick(r) for r in runs], f"{base} {what}" if base else None))
    print_table(f"push and pull through docker-registry by each client, median of {n} runs",
                rows, "target: ours <= 1.00x skopeo")


if __name__ == "__main__":
    main()
