"""Garbage collection: delete the blobs and unpacked layers nothing needs any more.

``rmi`` only removes names from index.json, the way containerd's image store does; the
space comes back here. It is a mark-and-sweep:

* **mark**: start from every entry of index.json (tagged or untagged) and follow
  index → manifests → config + layers. The diff_ids of every reachable config, and of
  the config of every existing container (``keep_configs``: a stopped container may
  still be started or committed), name the unpacked layer dirs to keep.
* **sweep**: unlink every other blob, remove every other ``layers/sha256/<diff_id>`` dir,
  and clear leftovers of crashed loads and unpacks from ``tmp/``.

Racing a pull or load: the sweep holds the index.json lock, so no tag appears half-way,
and it spares anything changed in the last ``min_age`` seconds (60 by default). A pull
writes its blobs *before* it tags them, so those blobs are young while unnamed; ``load``
refreshes the blobs it reuses for the same reason, and holds a lock on its staging dir.
A container being created between "unpack its layers" and "write its record" can still
lose a layer dir that nothing else used; it is unpacked again on the next run.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable

from ..trace import Step
from .store import INDEX_TYPES, ImageStore

MIN_AGE = 60.0               # seconds: younger files may belong to a pull or load in flight
STALE_UNPACK_AGE = 3600.0    # a half-unpacked layer dir is only removed once clearly abandoned
_JSON_LIMIT = 16 << 20


@dataclass
class GcResult:
    """What a collection removed and what it spared because it was too young."""

    blobs_removed: int = 0
    blob_bytes: int = 0
    layers_removed: int = 0
    layer_bytes: int = 0
    temp_removed: int = 0
    skipped_young: int = 0

    @property
    def bytes_freed(self) -> int:
        return self.blob_bytes + self.layer_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "bytes_freed": self.bytes_freed}


def _json_blob(store: ImageStore, digest: str) -> dict[str, Any] | None:
    """A manifest, index or config blob, or None if it is missing or not JSON."""
    path = store.blob_path(digest)
    try:
        if path.stat().st_size > _JSON_LIMIT:
            return None
        value = json.loads(path.read_bytes())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def mark(store: ImageStore, roots: Iterable[dict[str, Any]], keep_configs: Iterable[str] = ()) -> tuple[set[str], set[str]]:
    """The blobs reachable from ``roots`` (descriptors), and the diff_ids to keep unpacked."""
    blobs: set[str] = set()
    configs: set[str] = set()
    pending = [d["digest"] for d in roots if isinstance(d.get("digest"), str)]
    while pending:
        digest = pending.pop()
        if digest in blobs:
            continue
        blobs.add(digest)
        body = _json_blob(store, digest)
        if body is None:
            continue
        if body.get("mediaType") in INDEX_TYPES or "manifests" in body:
            pending += [m["digest"] for m in body.get("manifests") or [] if "digest" in m]
        elif isinstance(body.get("config"), dict):
            configs.add(body["config"]["digest"])
            blobs.add(body["config"]["digest"])
            blobs.update(layer["digest"] for layer in body.get("layers") or [] if "digest" in layer)
    for digest in keep_configs:
        if digest.startswith("sha256:") and store.has_blob(digest):
            blobs.add(digest)
            configs.add(digest)
    diff_ids: set[str] = set()
    for digest in configs:
        config = _json_blob(store, digest) or {}
        diff_ids.update((config.get("rootfs") or {}).get("diff_ids") or [])
    return blobs, diff_ids


def _age(path: Path, now: float) -> float:
    # ctime, not mtime: rename(2) and utime(2) update it, while a layer dir's mtime is
    # whatever its tar said (often 1970)
    return now - os.lstat(path).st_ctime


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def _remove_tree(path: Path) -> None:
    """Rename first, then delete: a crash never leaves half a layer under its real name."""
    doomed = path.with_name(f".gc-{path.name}-{os.urandom(4).hex()}")
    os.rename(path, doomed)
    shutil.rmtree(doomed)


def _in_use(staging: Path) -> bool:
    """A load holds an flock on its staging dir's .lock for as long as it runs."""
    try:
        fd = os.open(staging / ".lock", os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def collect_garbage(store: ImageStore, keep_configs: Iterable[str] = (), *, min_age: float = MIN_AGE) -> GcResult:
    """Remove blobs unreachable from index.json and layer dirs no image or container uses."""
    result = GcResult()
    keep_configs = list(keep_configs)
    with store.index_lock():
        blobs, diff_ids = mark(store, store.index_entries(), keep_configs)
        Step(name="gc_blobs", call=f"unlink blobs under {store.blobs} that index.json does not reach",
             shell=f"rm {store.blobs}/<each hex that no manifest names>",
             why="a blob is garbage once no manifest reachable from index.json names it"
             ).do(_sweep_blobs, store, blobs, min_age, result)
        Step(name="gc_layers", call=f"rm -r unpacked layers under {store.layers_dir} that no image or container uses",
             shell=f"rm -r {store.layers_dir}/<diff_id>",
             why="an unpacked layer is a cache of its blob; containers use it as an overlay lowerdir, so keep those"
             ).do(_sweep_layers, store, diff_ids, min_age, result)
        _sweep_tmp(store, min_age, result)
    return result


def _sweep_blobs(store: ImageStore, keep: set[str], min_age: float, result: GcResult) -> str:
    now = time.time()
    for path in store.blobs.iterdir():
        if f"sha256:{path.name}" in keep:
            continue
        try:
            if _age(path, now) < min_age:
                result.skipped_young += 1
                continue
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        result.blobs_removed += 1
        result.blob_bytes += size
    return f"{result.blobs_removed} blobs, {result.blob_bytes} bytes"


def _sweep_layers(store: ImageStore, keep: set[str], min_age: float, result: GcResult) -> str:
    now = time.time()
    for path in store.layers_dir.iterdir():
        try:
            if path.name.startswith("."):
                # .<hex>.unpacking-* (a crashed unpack) or .gc-* (a crashed gc)
                if _age(path, now) >= max(min_age, STALE_UNPACK_AGE) or path.name.startswith(".gc-"):
                    shutil.rmtree(path, ignore_errors=True)
                    result.temp_removed += 1
                continue
            if f"sha256:{path.name}" in keep:
                continue
            if _age(path, now) < min_age:
                result.skipped_young += 1
                continue
            size = _tree_size(path)
            _remove_tree(path)
        except FileNotFoundError:
            continue
        result.layers_removed += 1
        result.layer_bytes += size
    return f"{result.layers_removed} layer dirs, {result.layer_bytes} bytes"


def _sweep_tmp(store: ImageStore, min_age: float, result: GcResult) -> None:
    """Leftovers of crashed pulls and loads: old temp files, and staging dirs nobody holds."""
    now = time.time()
    for path in store.tmp.iterdir():
        try:
            if _age(path, now) < min_age:
                continue
            if path.is_dir() and not path.is_symlink():
                if _in_use(path):
                    continue
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink()
        except FileNotFoundError:
            continue
        result.temp_removed += 1
