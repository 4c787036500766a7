"""The image store: an OCI image layout (镜像布局) plus a cache of unpacked layers.

On disk, under the engine root::

    image/oci-layout            {"imageLayoutVersion": "1.0.0"}
    image/index.json            one manifest descriptor per tag, named by the
                                org.opencontainers.image.ref.name annotation
    image/blobs/sha256/<hex>    content-addressed blobs: manifests, configs, layers
    layers/sha256/<hex>/        each layer unpacked once, keyed by its diff_id, used
                                as a read-only overlayfs lower dir by every container

skopeo (``oci:<root>/image:<ref>``) and umoci read the same layout.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing, which costs the CLI ~10 ms

if TYPE_CHECKING:
    from typing import Any, BinaryIO, Iterable

from ..atomic import file_lock, make_private_dir, write_atomic, write_json_atomic
from ..errors import ImageNotFound, LayerError, MinicontainerError

REF_NAME = "org.opencontainers.image.ref.name"
BUILTIN_REF = "docker.io/library/busybox:latest"  # built by image/builtin.py on first use
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_platform() -> str:
    """This machine's platform in OCI terms, e.g. 'linux/amd64'."""
    machine = os.uname().machine
    return "linux/" + _ARCH.get(machine, machine)


def sha256_digest(data: bytes) -> str:
    import hashlib  # here, not at the top: `minicontainer run` never hashes, and hashlib loads OpenSSL

    return "sha256:" + hashlib.sha256(data).hexdigest()


def _hex(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    if algo != "sha256" or len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise LayerError(f"invalid digest {digest!r}: expected sha256: followed by 64 lowercase hex characters")
    return hexpart


@dataclass
class Image:
    """A resolved image: its name, manifest, config and layer descriptors."""

    ref: str
    manifest_digest: str
    manifest: dict[str, Any]
    config: dict[str, Any]

    @property
    def layers(self) -> list[dict[str, Any]]:
        return self.manifest.get("layers", [])

    @property
    def diff_ids(self) -> list[str]:
        return self.config.get("rootfs", {}).get("diff_ids", [])

    @property
    def platform(self) -> str:
        return f"{self.config.get('os', '?')}/{self.config.get('architecture', '?')}"

    @property
    def id(self) -> str:
        """The image id docker shows: the config's digest."""
        return self.manifest["config"]["digest"]


# what the engine keeps in its root (MINICONTAINER_ROOT)
ENGINE_ENTRIES = ("image", "layers", "tmp", "containers", "registry", "builtin.lock", ".lock")


class ImageStore:
    """Content-addressed blobs and tags in an OCI image layout, plus unpacked layers."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.layout = self.root / "image"
        self.blobs = self.layout / "blobs" / "sha256"
        self.layers_dir = self.root / "layers" / "sha256"
        self.tmp = self.root / "tmp"
        # layers may hold device nodes: no other user may reach them
        make_private_dir(self.root, ours=ENGINE_ENTRIES)
        for d in (self.blobs, self.layers_dir, self.tmp):
            d.mkdir(parents=True, exist_ok=True)
        if not (self.layout / "oci-layout").exists():
            write_json_atomic(self.layout / "oci-layout", {"imageLayoutVersion": "1.0.0"})
        if not (self.layout / "index.json").exists():
            write_json_atomic(self.layout / "index.json", {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []})

    # ---- blobs ----------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self.blobs / _hex(digest)

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).exists()

    def open_blob(self, digest: str) -> BinaryIO:
        try:
            return open(self.blob_path(digest), "rb")
        except FileNotFoundError:
            raise ImageNotFound(f"blob {digest} is not in the store: pull the image again") from None

    def read_blob(self, digest: str) -> bytes:
        with self.open_blob(digest) as f:
            return f.read()

    def read_json(self, digest: str) -> dict[str, Any]:
        return json.loads(self.read_blob(digest))

    def write_blob(self, data: bytes, expected: str | None = None) -> str:
        """Store ``data`` under its sha256 digest (atomically); verify it if ``expected`` is given."""
        digest = sha256_digest(data)
        if expected is not None and expected != digest:
            raise LayerError(f"digest mismatch: expected {expected}, content hashes to {digest}; nothing was stored")
        path = self.blob_path(digest)
        if not path.exists():
            write_atomic(path, data)
        return digest

    def ingest_blob(self, chunks: Iterable[bytes], expected: str, size: int | None = None) -> str:
        """Stream chunks into the store; the blob appears only once its digest checks out.

        A stream longer than ``size`` is cut off before the chunk that overflows is written:
        an endless "layer" costs its descriptor's size on disk, not the whole disk.
        """
        path = self.blob_path(expected)
        if path.exists():
            return expected
        import hashlib

        tmp = self.tmp / f"ingest-{_hex(expected)[:16]}-{os.getpid()}-{os.urandom(4).hex()}"
        h, n = hashlib.sha256(), 0
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    n += len(chunk)
                    if size is not None and n > size:
                        raise LayerError(f"size mismatch for {expected}: expected {size} bytes, received more "
                                         f"({n} so far); stopped reading, nothing was stored")
                    f.write(chunk)
                f.flush()
                os.fsync(f.fileno())
            got = "sha256:" + h.hexdigest()
            if got != expected:
                raise LayerError(f"digest mismatch: expected {expected}, received content hashes to {got}; nothing was stored")
            if size is not None and n != size:
                raise LayerError(f"size mismatch for {expected}: expected {size} bytes, received {n}; nothing was stored")
            os.rename(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        return expected

    # ---- the index: tags ------------------------------------------------------------
    def _read_index(self) -> dict[str, Any]:
        return json.loads((self.layout / "index.json").read_text())

    def tag(self, ref: str, descriptor: dict[str, Any]) -> None:
        """Point ``ref`` (a full normalized reference) at a manifest descriptor in index.json."""
        entry = {k: descriptor[k] for k in ("mediaType", "digest", "size") if k in descriptor}
        if "platform" in descriptor:
            entry["platform"] = descriptor["platform"]
        entry["annotations"] = {**descriptor.get("annotations", {}), REF_NAME: ref}
        with file_lock(self.layout / "index.json.lock"):
            index = self._read_index()
            index["manifests"] = [m for m in index["manifests"]
                                  if m.get("annotations", {}).get(REF_NAME) != ref] + [entry]
            write_json_atomic(self.layout / "index.json", index)

    def untag(self, ref: str) -> bool:
        """Remove ``ref`` from index.json; True if it was there."""
        with file_lock(self.layout / "index.json.lock"):
            index = self._read_index()
            kept = [m for m in index["manifests"] if m.get("annotations", {}).get(REF_NAME) != ref]
            if len(kept) == len(index["manifests"]):
                return False
            index["manifests"] = kept
            write_json_atomic(self.layout / "index.json", index)
            return True

    def list_refs(self) -> list[tuple[str, dict[str, Any]]]:
        """Every (ref, descriptor) in index.json, in the order they were tagged."""
        return [(m["annotations"][REF_NAME], m) for m in self._read_index()["manifests"]
                if REF_NAME in m.get("annotations", {})]

    def descriptor(self, ref: str) -> dict[str, Any]:
        """The manifest descriptor tagged ``ref``; ImageNotFound if there is none."""
        for name, desc in self.list_refs():
            if name == ref:
                return desc
        raise ImageNotFound(f"image {ref!r} not found: list images with `minicontainer images` or pull it first")

    # ---- resolving an image for a platform ------------------------------------------
    def resolve(self, ref: str, platform_name: str | None = None) -> Image:
        """Follow index → manifest → config for ``ref`` on a platform (the host's by default)."""
        want = platform_name or host_platform()
        desc = self.descriptor(ref)
        manifest_digest = desc["digest"]
        manifest = self.read_json(manifest_digest)
        if manifest.get("mediaType", desc.get("mediaType")) in INDEX_TYPES or "manifests" in manifest:
            choices = manifest.get("manifests", [])
            for m in choices:
                p = m.get("platform", {})
                if f"{p.get('os')}/{p.get('architecture')}" == want:
                    manifest_digest, manifest = m["digest"], self.read_json(m["digest"])
                    break
            else:
                have = ", ".join(f"{m.get('platform', {}).get('os')}/{m.get('platform', {}).get('architecture')}"
                                 for m in choices)
                raise MinicontainerError(f"image {ref} has no {want} variant (it has: {have}): pick one with --platform")
        config = self.read_json(manifest["config"]["digest"])
        return Image(ref, manifest_digest, manifest, config)

    # ---- unpacked layers --------------------------------------------------------------
    def layer_dir(self, diff_id: str) -> Path:
        return self.layers_dir / _hex(diff_id)

    def unpack_layers(self, image: Image) -> list[str]:
        """Unpack every layer of ``image`` once (keyed by diff_id); return lower dirs, top first."""
        from .layers import unpack_layer  # imported here: only needed when a layer is missing
        from .limits import UnpackBudget

        # the layers unpacked now share one MINICONTAINER_MAX_IMAGE_SIZE budget: a gzip bomb
        # stops at the cap, and the failing layer's temp dir is removed
        budget = UnpackBudget(f"image {image.ref}")
        dirs = []
        for desc, diff_id in zip(image.layers, image.diff_ids):
            dest = self.layer_dir(diff_id)
            if not dest.exists():
                unpack_layer(self.blob_path(desc["digest"]), dest, media_type=desc.get("mediaType"),
                             digest=desc["digest"], diff_id=diff_id, budget=budget)
            dirs.append(str(dest))
        return dirs[::-1]

    def lower_dirs(self, image: Image) -> list[str]:
        """The lower dirs for an overlay mount, top layer first, unpacking any that are missing."""
        dirs = [self.layer_dir(d) for d in image.diff_ids]
        if all(d.exists() for d in dirs):
            return [str(d) for d in dirs[::-1]]
        return self.unpack_layers(image)

    # ---- added for the images issue (tag/rmi/load/gc): index updates in one write ------
    # index.json may also hold *untagged* entries (no ref.name annotation): images that
    # `load` brought in without a name, or that lost their tag to another image. They
    # keep the image alive for gc, and docker shows them as <none>:<none>.
    def index_lock(self):
        """Hold the index.json lock (an flock) for a block; tag() and untag() take it too,
        so never call them inside the block (a second flock on another fd would wait forever)."""
        return file_lock(self.layout / "index.json.lock")

    def index_entries(self) -> list[dict[str, Any]]:
        """Every descriptor in index.json, tagged or not, in order."""
        return list(self._read_index()["manifests"] or [])

    def update_index(self, add: list[tuple[str | None, dict[str, Any]]] = (),
                     remove_refs: Iterable[str] = (), remove_untagged: Iterable[str] = ()) -> None:
        """Apply several tag changes to index.json in one atomic write.

        ``add`` holds (ref, descriptor) pairs; ref None adds an untagged entry (at most one
        per digest). ``remove_refs`` drops those tags; ``remove_untagged`` drops the
        untagged entries of those manifest digests.
        """
        with self.index_lock():
            self._write_index_changes(list(add), set(remove_refs), set(remove_untagged))

    def _write_index_changes(self, add: list[tuple[str | None, dict[str, Any]]],
                             remove_refs: set[str], remove_untagged: set[str]) -> None:
        index = self._read_index()
        new_refs = {ref: d["digest"] for ref, d in add if ref is not None}
        kept, replaced = [], []
        for m in index["manifests"] or []:
            name = m.get("annotations", {}).get(REF_NAME)
            if name is not None and name in new_refs:
                if new_refs[name] != m.get("digest"):
                    replaced.append(m)
                continue
            if name is not None and name in remove_refs:
                continue
            if name is None and m.get("digest") in remove_untagged:
                continue
            kept.append(m)
        # Like docker, an image whose only tag moved to another image stays, untagged
        # (<none>), instead of silently disappearing: a container may still use it.
        still_named = {m.get("digest") for m in kept} | {d["digest"] for _, d in add}
        for m in replaced:
            if m.get("digest") not in still_named:
                add.append((None, {**m, "annotations": {}}))
                still_named.add(m.get("digest"))
        untagged = {m.get("digest") for m in kept if REF_NAME not in m.get("annotations", {})}
        for ref, descriptor in add:
            entry = {k: descriptor[k] for k in ("mediaType", "digest", "size", "platform") if k in descriptor}
            annotations = {k: v for k, v in descriptor.get("annotations", {}).items() if k != REF_NAME}
            if ref is not None:
                annotations[REF_NAME] = ref
            elif entry["digest"] in untagged:
                continue
            else:
                untagged.add(entry["digest"])
            if annotations:
                entry["annotations"] = annotations
            kept.append(entry)
        # an image that has a tag needs no untagged entry as well
        tagged = {m["digest"] for m in kept if REF_NAME in m.get("annotations", {})}
        index["manifests"] = [m for m in kept if REF_NAME in m.get("annotations", {}) or m["digest"] not in tagged]
        write_json_atomic(self.layout / "index.json", index)

    def resolve_descriptor(self, descriptor: dict[str, Any], name: str,
                           platform_name: str | None = None) -> Image:
        """Like resolve(), for an index.json entry that may have no tag (an untagged image)."""
        want = platform_name or host_platform()
        manifest_digest = descriptor["digest"]
        manifest = self.read_json(manifest_digest)
        if manifest.get("mediaType", descriptor.get("mediaType")) in INDEX_TYPES or "manifests" in manifest:
            for m in manifest.get("manifests", []):
                p = m.get("platform", {})
                if f"{p.get('os')}/{p.get('architecture')}" == want and self.has_blob(m["digest"]):
                    manifest_digest, manifest = m["digest"], self.read_json(m["digest"])
                    break
            else:
                have = ", ".join(f"{m.get('platform', {}).get('os')}/{m.get('platform', {}).get('architecture')}"
                                 for m in manifest.get("manifests", []))
                raise MinicontainerError(f"image {name} has no {want} variant (it has: {have}): pick one with --platform")
        return Image(name, manifest_digest, manifest, self.read_json(manifest["config"]["digest"]))
