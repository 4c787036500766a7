"""Making a new image on top of another: new layers, a new config, a new manifest.

An image is three kinds of blob. A **child image** (`commit`, each step of a build) reuses
its parent's layer blobs untouched and adds its own: its config is the parent's, with the
new layers' diff_ids appended to ``rootfs.diff_ids``, one more ``history`` entry per step,
and whatever the step changed (Env, Cmd, WorkingDir …); its manifest lists the parent's
layer descriptors and then the new ones. Nothing already stored is rewritten.
"""
from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

from ..trace import Step
from .layers import LayerResult
from .store import Image, ImageStore, host_platform

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def store_layer_file(store: ImageStore, path: Path, layer: LayerResult) -> None:
    """Move a layer tarball written by diff_layer into the store under its digest."""
    target = store.blob_path(layer.digest)
    if target.exists():
        path.unlink()
    else:
        os.replace(path, target)


def empty_config() -> dict[str, Any]:
    """The config of an image with nothing in it: FROM scratch."""
    arch = host_platform().split("/")[1]
    return {"architecture": arch, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []},
            "history": []}


def child_image(store: ImageStore, base: Image | None, config: dict[str, Any] | None = None,
                layers: list[LayerResult] = (), history: list[dict[str, Any]] = ()) -> Image:
    """Write the config and manifest of ``base`` plus ``layers`` (already in the store); return it.

    ``config`` replaces the runtime config (Env, Cmd, …) if given; ``history`` entries are
    appended, one per step, with ``empty_layer`` on those that made no layer.
    """
    image_config = copy.deepcopy(base.config) if base is not None else empty_config()
    if config is not None:
        image_config["config"] = config
    image_config.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    image_config["rootfs"]["diff_ids"] = list(image_config["rootfs"].get("diff_ids", [])) + [l.diff_id for l in layers]
    image_config["history"] = list(image_config.get("history", [])) + list(history)
    image_config["created"] = history[-1]["created"] if history else now_iso()
    config_bytes = json.dumps(image_config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = store.write_blob(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": (list(base.layers) if base is not None else [])
        + [{"mediaType": OCI_LAYER_GZIP, "digest": l.digest, "size": store.blob_path(l.digest).stat().st_size}
           for l in layers],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = store.write_blob(manifest_bytes)
    return Image(ref="", manifest_digest=manifest_digest, manifest=manifest, config=image_config)


def descriptor_of(image: Image) -> dict[str, Any]:
    """The index.json entry that tags ``image``."""
    size = len(json.dumps(image.manifest, sort_keys=True, separators=(",", ":")).encode())
    return {"mediaType": OCI_MANIFEST, "digest": image.manifest_digest, "size": size,
            "platform": {"os": image.config.get("os", "linux"), "architecture": image.config.get("architecture", "")}}


def record_image(store: ImageStore, image: Image, ref: str | None = None) -> Step:
    """Add the new image to index.json: under ``ref`` (a full reference), or untagged (<none>)."""
    shown = ref or "<none> (untagged)"
    step = Step("tag_image", call=f"index.json: {shown} → {image.manifest_digest[:19]}…",
                shell=f"minicontainer tag {image.id[7:19]} {ref}" if ref else "",
                why="a tag is only a name in the image index that points at a manifest; an untagged "
                    "entry keeps the image from being garbage-collected")
    step.do(store.update_index, [(ref, descriptor_of(image))])
    return step
