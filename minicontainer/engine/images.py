"""The image commands: images, tag, rmi, inspect, history, save, load and gc.

Everything works on the engine's image store (an OCI image layout under the engine root,
see :mod:`minicontainer.image.store`). A *tag* is only a name in index.json that points
at a manifest digest; the image *id* docker shows is the digest of the image's config.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from ..errors import ImageNotFound, InvalidArgument, InvalidReference, MinicontainerError, StateError
from ..image import archive, gc
from ..image.builtin import BUILTIN_REF, build_builtin_image
from ..image.reference import parse_reference
from ..image.store import MANIFEST_TYPES, REF_NAME, Image, ImageStore
from ..trace import Step
from .containers import ContainerRecord, list_records
from .paths import engine_root

_ID_PREFIX = re.compile(r"(?:sha256:)?([0-9a-f]{4,64})")


def open_store() -> ImageStore:
    """The engine's image store, with the built-in busybox image built on first use."""
    store = ImageStore(engine_root())
    if not any(ref == BUILTIN_REF for ref, _ in store.list_refs()):
        build_builtin_image(store)
    return store


# ---- finding an image by name or by id ------------------------------------------------

@dataclass
class FoundImage:
    """An image in index.json: its manifest descriptor and every tag that points at it."""

    descriptor: dict[str, Any]
    tags: list[str] = field(default_factory=list)   # full refs pointing at this manifest
    by_id: bool = False                             # named by (a prefix of) its id
    ref: str | None = None                          # the tag it was named by, if any

    @property
    def digest(self) -> str:
        return self.descriptor["digest"]


def _entries(store: ImageStore) -> list[tuple[str | None, dict[str, Any]]]:
    """Every index.json entry as (tag or None, descriptor)."""
    return [((d.get("annotations") or {}).get(REF_NAME), d) for d in store.index_entries()]


def _image_id(store: ImageStore, descriptor: dict[str, Any]) -> str:
    """The config digest (docker's image id); for an index without this host's platform,
    the index digest."""
    try:
        return store.resolve_descriptor(descriptor, descriptor["digest"]).id
    except MinicontainerError:
        return descriptor["digest"]


def _tags_of(store: ImageStore, digest: str) -> list[str]:
    return [ref for ref, d in _entries(store) if ref is not None and d["digest"] == digest]


def find_image(store: ImageStore, ref_or_id: str) -> FoundImage:
    """Look an image up by reference (``busybox``, ``localhost:5000/a/b:v1``) or, like
    docker, by its id or an id prefix of at least 4 hex digits."""
    try:
        ref = str(parse_reference(ref_or_id))
    except InvalidReference:
        ref = None
    for name, desc in _entries(store):
        if ref is not None and name == ref:
            return FoundImage(desc, _tags_of(store, desc["digest"]), by_id=False, ref=ref)
    match = _ID_PREFIX.fullmatch(ref_or_id)
    if match:
        prefix = match.group(1)
        hits: dict[str, dict[str, Any]] = {}
        for _name, desc in _entries(store):
            ids = (_image_id(store, desc), desc["digest"])
            if any(i.removeprefix("sha256:").startswith(prefix) for i in ids):
                hits[desc["digest"]] = desc
        if len(hits) > 1:
            raise InvalidArgument(f"image id {ref_or_id} is ambiguous: it matches {len(hits)} images; "
                                  "give more of its digits")
        if hits:
            desc = next(iter(hits.values()))
            return FoundImage(desc, _tags_of(store, desc["digest"]), by_id=True)
    raise ImageNotFound(f"no such image: {ref_or_id}: list images with `minicontainer images`, "
                        "or pull or load it first")


def _resolve(store: ImageStore, found: FoundImage, name: str) -> Image:
    return store.resolve_descriptor(found.descriptor, found.ref or name)


def _familiar(ref: str) -> str:
    return parse_reference(ref).familiar


# ---- images ------------------------------------------------------------------------------

def _row(store: ImageStore, ref: str | None, desc: dict[str, Any]) -> dict:
    try:
        image = store.resolve_descriptor(desc, ref or desc["digest"])
        image_id, created = image.id, image.config.get("created", "")[:19].replace("T", " ")
        size = f"{sum(layer.get('size', 0) for layer in image.layers) / 1e6:.2f}MB"
    except MinicontainerError:   # an index without this host's platform: show the index itself
        image_id, created, size = desc["digest"], "", "?"
    if ref is None:
        return {"repository": "<none>", "tag": "<none>", "id": image_id, "ref": "", "created": created, "size": size}
    parsed = parse_reference(ref)
    return {"repository": parsed.familiar.rsplit(":", 1)[0] if parsed.tag else parsed.familiar_name,
            "tag": parsed.tag or "<none>", "id": image_id, "ref": ref, "created": created, "size": size}


def list_images(all: bool = False) -> list[dict]:
    """One row per tag, plus untagged images as <none> (docker's "dangling" images):
    repository, tag, image id (config digest), ref, created, size.

    ``all`` also lists manifests still in the blob store that index.json no longer
    names: what ``gc`` would delete.
    """
    store = open_store()
    rows = [_row(store, ref, desc) for ref, desc in _entries(store)]
    if all:
        rows += [_row(store, None, desc) for desc in unreferenced_manifests(store)]
    return rows


def unreferenced_manifests(store: ImageStore) -> list[dict[str, Any]]:
    """Image manifests in blobs/ that nothing in index.json reaches (gc candidates)."""
    reachable, _ = gc.mark(store, store.index_entries())
    found = []
    for path in sorted(store.blobs.iterdir()):
        digest = f"sha256:{path.name}"
        if digest in reachable or path.stat().st_size > 1 << 20:
            continue
        try:
            body = json.loads(path.read_bytes())
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(body, dict) and body.get("mediaType") in MANIFEST_TYPES and store.has_blob(
                body.get("config", {}).get("digest", "sha256:" + "0" * 64)):
            found.append({"mediaType": body["mediaType"], "digest": digest, "size": path.stat().st_size})
    return found


# ---- tag and rmi ---------------------------------------------------------------------------

def tag_image(source: str, target: str) -> str:
    """Point the name ``target`` at the image ``source`` names; return the full new ref."""
    store = open_store()
    found = find_image(store, source)
    target_ref = parse_reference(target)
    if target_ref.digest:
        raise InvalidReference(f"cannot tag {source} as {target}: a tag can't contain a digest; "
                               "give name:tag, e.g. myimage:v1")
    new = str(target_ref)
    Step(name="tag", call=f"index.json: {new} -> {found.digest}", shell=f"docker tag {source} {target}",
         why="a tag is only a name in index.json pointing at a manifest digest: no blob is copied"
         ).do(store.update_index, [(new, found.descriptor)])
    return new


def containers_using(image_id: str, refs: list[str]) -> list[ContainerRecord]:
    """Container records (any state) created from this image id or from one of these refs."""
    return [r for r in list_records() if r.image_id == image_id or r.image in refs]


def remove_image(ref_or_id: str, *, force: bool = False) -> list[str]:
    """Untag an image; once no tag is left it is deleted from index.json (its blobs go at
    the next gc). Returns docker's "Untagged: …" and "Deleted: sha256:…" lines."""
    store = open_store()
    found = find_image(store, ref_or_id)
    image_id = _image_id(store, found.descriptor)
    if found.by_id:
        doomed = list(found.tags)
        if len(doomed) > 1 and not force:
            raise StateError(f"image {ref_or_id} is tagged as {', '.join(map(_familiar, doomed))}: "
                             "remove the tags one by one, or use -f to remove them all")
    else:
        doomed = [found.ref]
    deleting = not [t for t in found.tags if t not in doomed]
    if deleting and not force:
        users = containers_using(image_id, found.tags)
        if users:
            name = _familiar(found.ref) if found.ref else ref_or_id
            c = users[0]
            raise StateError(f"image {name} is used by container {c.id[:12]} ({c.name}): "
                             "remove the container first or use -f")
    lines = [f"Untagged: {_familiar(t)}" for t in doomed]
    if deleting:
        lines.append(f"Deleted: {image_id}")
    Step(name="untag", call=f"index.json: remove {', '.join(doomed) or found.digest}",
         shell=f"docker rmi {'-f ' if force else ''}{ref_or_id}",
         why="removing an image removes names from index.json; gc later frees the blobs nothing names"
         ).do(store.update_index, [], doomed, [found.digest] if deleting else [])
    return lines


# ---- inspect and history --------------------------------------------------------------------

def inspect_image(ref: str) -> dict:
    """docker image inspect's fields, read from the manifest and config."""
    store = open_store()
    found = find_image(store, ref)
    image = _resolve(store, found, ref)
    config = image.config
    repos = sorted({parse_reference(t).familiar_name for t in found.tags})
    return {
        "Id": image.id,
        "RepoTags": [_familiar(t) for t in found.tags],
        "RepoDigests": [f"{r}@{found.digest}" for r in repos],
        "Created": config.get("created", ""),
        "Author": config.get("author", ""),
        "Architecture": config.get("architecture", ""),
        "Variant": config.get("variant", ""),
        "Os": config.get("os", ""),
        "Config": config.get("config") or {},
        "RootFS": {"Type": (config.get("rootfs") or {}).get("type", "layers"), "Layers": list(image.diff_ids)},
        "Size": sum(layer.get("size", 0) for layer in image.layers),
        "ManifestDigest": image.manifest_digest,
        "MediaType": image.manifest.get("mediaType", found.descriptor.get("mediaType", "")),
        "Descriptor": {k: found.descriptor[k] for k in ("mediaType", "digest", "size") if k in found.descriptor},
    }


def image_history(ref: str) -> list[dict]:
    """One row per config history entry, newest first: created, created_by, size of its
    layer blob (0 for an empty_layer entry such as CMD), comment."""
    store = open_store()
    found = find_image(store, ref)
    image = _resolve(store, found, ref)
    history = image.config.get("history") or [{} for _ in image.layers]
    layers = iter(image.layers)
    rows = []
    for entry in history:
        layer = None if entry.get("empty_layer") else next(layers, None)
        rows.append({"id": "<missing>", "created": entry.get("created", ""),
                     "created_by": entry.get("created_by", ""), "size": layer.get("size", 0) if layer else 0,
                     "comment": entry.get("comment", ""), "empty_layer": bool(entry.get("empty_layer"))})
    rows.reverse()
    if rows:
        rows[0]["id"] = image.id   # docker shows the id on the newest line only
    return rows


# ---- save and load ------------------------------------------------------------------------

def save_images(refs: list[str], out_path: str, *, format: Literal["oci", "docker"] = "oci") -> None:
    """Write images to a tar: an OCI image layout, or (docker) the same plus docker's
    manifest.json. ``out_path`` "-" writes to stdout."""
    if not refs:
        raise InvalidArgument("save needs at least one image: minicontainer save -o image.tar busybox")
    if format not in ("oci", "docker"):
        raise InvalidArgument(f"unknown archive format {format!r}: use --format oci or --format docker")
    store = open_store()
    items = []
    for ref in refs:
        found = find_image(store, ref)
        items.append(archive.SaveItem(None if found.by_id else found.ref, found.descriptor))
    archive.save_archive(store, items, out_path, format)


def load_images(path: str) -> list[str]:
    """Load an OCI-layout or docker-save tar (plain, gzip or zstd; "-" is stdin), all or
    nothing. Returns docker's lines: "Loaded image: busybox:latest" or "Loaded image ID: sha256:…"."""
    store = open_store()
    lines = []
    for image in archive.load_archive(store, path):
        if image.message not in lines:
            lines.append(image.message)
    return lines


# ---- garbage collection --------------------------------------------------------------------

def collect_garbage(*, min_age: float = gc.MIN_AGE) -> dict:
    """Delete blobs index.json does not reach and unpacked layers no image or container
    uses; files younger than ``min_age`` seconds are spared (a pull may be writing them).
    Returns counts and bytes: blobs_removed, blob_bytes, layers_removed, layer_bytes,
    temp_removed, skipped_young, bytes_freed."""
    store = open_store()
    in_use = [r.image_id for r in list_records()]
    return gc.collect_garbage(store, in_use, min_age=min_age).to_dict()


# ---- registries ----------------------------------------------------------------------------
def pull_image(ref: str, *, platform: str | None = None, progress=None) -> str:
    """`minicontainer pull`: fetch ``ref`` from its registry into the engine's store."""
    from ..registry.client import pull

    return pull(ref, open_store(), platform=platform, progress=progress)


def push_image(ref: str, *, progress=None) -> str:
    """`minicontainer push`: send the stored image ``ref`` to the registry its name points at."""
    from ..registry.client import push

    return push(ref, open_store(), progress=progress)
