"""Image listing for the CLI and the public API (the images issue extends this)."""
from __future__ import annotations

from ..image.builtin import BUILTIN_REF, build_builtin_image
from ..image.reference import parse_reference
from ..image.store import ImageStore
from .paths import engine_root


def open_store() -> ImageStore:
    """The engine's image store, with the built-in busybox image built on first use."""
    store = ImageStore(engine_root())
    if not any(ref == BUILTIN_REF for ref, _ in store.list_refs()):
        build_builtin_image(store)
    return store


def list_images() -> list[dict]:
    """One row per tag: repository, tag, image id (config digest), created, size."""
    store = open_store()
    rows = []
    for ref, _desc in store.list_refs():
        image = store.resolve(ref)
        parsed = parse_reference(ref)
        size = sum(layer.get("size", 0) for layer in image.layers)
        rows.append({"repository": parsed.familiar.rsplit(":", 1)[0] if parsed.tag else parsed.familiar_name,
                     "tag": parsed.tag or "<none>", "id": image.id, "ref": ref,
                     "created": image.config.get("created", "")[:19].replace("T", " "),
                     "size": f"{size / 1e6:.2f}MB"})
    return rows
