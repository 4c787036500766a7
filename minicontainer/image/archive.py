"""Image archives: ``save`` and ``load`` of OCI-layout tarballs and ``docker save`` tarballs.

Two archive formats carry images between machines without a registry:

* an **OCI image layout** in a tar (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``),
  what ``skopeo copy … oci-archive:`` writes: the same layout our store keeps on disk;
* a **docker save** tar: ``manifest.json`` lists each image as
  ``{"Config": <file>, "RepoTags": [...], "Layers": [<file>, …]}``. Older docker wrote
  ``<id>/layer.tar`` and ``<id>.json``; docker 25+ writes an OCI layout *plus*
  ``manifest.json`` whose entries point into ``blobs/sha256/``. There is no manifest
  digest in this format: the image id is the sha256 of the config.

An archive is untrusted input. It is never extracted: members are looked up by name and
streamed into a *staging* store under ``<root>/tmp``, where every blob is checked against
its digest and every layer against the config's ``rootfs.diff_ids``. Only when the whole
archive checked out are the blobs renamed into the store and index.json rewritten (once,
atomically). A truncated, corrupt or hostile archive therefore loads nothing.
"""
from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import posixpath
import re
import shutil
import sys
import tarfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal

import zstandard

from ..errors import ImageNotFound, InvalidReference, LayerError, MinicontainerError
from ..trace import Step
from .layers import open_layer_stream, sniff_compression
from .limits import UnpackBudget, check_json_shape
from .reference import parse_reference
from .store import (INDEX_TYPES, MANIFEST_TYPES, OCI_CONFIG, OCI_INDEX, OCI_MANIFEST, REF_NAME,
                    ImageStore, host_platform, sha256_digest)

# docker 25+ and containerd name an image in an OCI layout with this annotation (the full
# reference); org.opencontainers.image.ref.name may then hold just the tag.
CONTAINERD_NAME = "io.containerd.image.name"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
LAYER_TYPE_FOR = {"none": OCI_LAYER, "gzip": OCI_LAYER + "+gzip", "zstd": OCI_LAYER + "+zstd"}
UNCOMPRESSED_LAYER_TYPES = {OCI_LAYER, "application/vnd.oci.image.layer.nondistributable.v1.tar"}

JSON_LIMIT = 16 << 20      # manifests, configs and index.json are small; refuse a 4 GiB "json"
MAX_LINK_HOPS = 8          # symlinks inside an archive (old docker save links duplicate layers)
_CHUNK = 1 << 20
_BLOB_NAME = re.compile(r"(?:^|/|sha256:)([0-9a-f]{64})(?:\.json|\.tar(?:\.gz)?)?$")

Format = Literal["oci", "docker"]


class ArchiveError(LayerError):
    """An image archive is truncated, corrupt, hostile or not an image archive at all."""


@dataclass
class LoadedImage:
    """One image an archive brought in: its name (None if the archive gives none) and its
    manifest (or index) descriptor, as it goes into index.json."""

    ref: str | None
    descriptor: dict[str, Any]

    @property
    def message(self) -> str:
        """What docker prints for it: ``Loaded image: busybox:latest`` or ``Loaded image ID: …``."""
        if self.ref is not None:
            return f"Loaded image: {parse_reference(self.ref).familiar}"
        return f"Loaded image ID: {self.descriptor.get('_image_id', self.descriptor['digest'])}"


# ---- reading an archive: members by name, never extracted -----------------------------

def _corrupt(label: str, exc: BaseException | str) -> ArchiveError:
    return ArchiveError(f"archive {label} is truncated or corrupt: {exc}; "
                        "copy or save it again (nothing was loaded)")


def _safe_member_name(name: str, label: str) -> str:
    """A member name relative to the archive root; absolute paths and '..' are refused."""
    clean = name
    while clean.startswith("./"):
        clean = clean[2:]
    clean = clean.rstrip("/")
    if clean.startswith("/") or ".." in clean.split("/") or "\0" in clean:
        raise ArchiveError(f"archive {label} has a member named {name!r} that points outside the "
                           "archive: it is malformed or hostile, do not load it (nothing was loaded)")
    return posixpath.normpath(clean) if clean else ""


class ArchiveReader:
    """The members of a plain tar archive, read by name into memory or streamed in chunks."""

    def __init__(self, path: Path, label: str):
        self.label = label
        self.members: dict[str, tarfile.TarInfo] = {}
        self.links: dict[str, str] = {}
        try:
            self.tar = tarfile.open(path, "r:")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise ArchiveError(f"{label} is not a tar archive ({exc}): give a file written by "
                               "`docker save`, `minicontainer save` or `skopeo copy … oci-archive:`") from None
        try:
            self._index_members()
        except BaseException:
            self.tar.close()
            raise

    def _index_members(self) -> None:
        try:
            for info in self.tar:
                name = _safe_member_name(info.name, self.label)
                if info.issym() or info.islnk():
                    self.links[name] = self._link_target(name, info)
                elif info.isreg():
                    self.members[name] = info
                # directories, devices and fifos carry nothing an image needs: ignored
            self._check_end_of_archive()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise _corrupt(self.label, exc) from None

    def _link_target(self, name: str, info: tarfile.TarInfo) -> str:
        # symlinks are relative to the link's directory, hard links to the archive root
        base = posixpath.dirname(name) if info.issym() else ""
        target = posixpath.normpath(posixpath.join(base, info.linkname))
        if info.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise ArchiveError(f"archive {self.label} has a link {name!r} -> {info.linkname!r} that "
                               "points outside the archive: it is hostile, do not load it (nothing was loaded)")
        return target

    def _check_end_of_archive(self) -> None:
        """A tar ends with zero blocks; a file cut between two members has none."""
        fileobj = self.tar.fileobj
        fileobj.seek(self.tar.offset)
        end = fileobj.read(tarfile.BLOCKSIZE)
        if len(end) != tarfile.BLOCKSIZE or end.strip(b"\0"):
            raise _corrupt(self.label, "it ends without the tar end-of-archive marker")

    def close(self) -> None:
        self.tar.close()

    def __enter__(self) -> "ArchiveReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _resolve(self, name: str) -> tarfile.TarInfo | None:
        name = _safe_member_name(name, self.label)
        for _ in range(MAX_LINK_HOPS):
            if name in self.members:
                return self.members[name]
            if name not in self.links:
                return None
            name = self.links[name]
        raise ArchiveError(f"archive {self.label}: member {name!r} is a chain of more than "
                           f"{MAX_LINK_HOPS} links: it is hostile, do not load it (nothing was loaded)")

    def has(self, name: str) -> bool:
        return self._resolve(name) is not None

    def size(self, name: str) -> int:
        return self._member(name).size

    def _member(self, name: str) -> tarfile.TarInfo:
        info = self._resolve(name)
        if info is None:
            raise ArchiveError(f"archive {self.label} has no member {name!r}, which its manifest "
                               "names: the archive is incomplete; save it again (nothing was loaded)")
        return info

    def chunks(self, name: str) -> Iterator[bytes]:
        """Stream a member's bytes; a short read means the archive was cut off."""
        info = self._member(name)
        got = 0
        try:
            f = self.tar.extractfile(info)
            assert f is not None  # a regular member always has a file object
            while chunk := f.read(_CHUNK):
                got += len(chunk)
                yield chunk
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise _corrupt(self.label, exc) from None
        if got != info.size:
            raise _corrupt(self.label, f"member {name!r} has {got} of its {info.size} bytes")

    def read_json(self, name: str) -> Any:
        if self.size(name) > JSON_LIMIT:
            raise ArchiveError(f"archive {self.label}: {name!r} is {self.size(name)} bytes, over the "
                               f"{JSON_LIMIT >> 20} MiB limit for JSON: it is not an image archive")
        data = b"".join(self.chunks(name))
        try:
            check_json_shape(data, f"archive {self.label}: {name!r}")
            return json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise _corrupt(self.label, f"{name!r} is not valid JSON ({exc})") from None


def _plain_tar(path: str, staging: Path, label: str) -> Path:
    """The archive as a seekable plain tar: gzip and zstd input is inflated into staging, and
    stdin is copied there; neither may grow past MINICONTAINER_MAX_IMAGE_SIZE."""
    if path == "-":
        copy = staging / "stdin.tar"
        try:
            with open(copy, "wb") as out:
                _copy_bounded(sys.stdin.buffer, out, UnpackBudget(f"archive {label}"))
        except LayerError as exc:
            raise ArchiveError(f"{exc} (nothing was loaded)") from None
        path = str(copy)
    src = Path(path)
    try:
        with open(src, "rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise MinicontainerError(f"archive {label} does not exist: check the path given to load") from None
    except IsADirectoryError:
        raise MinicontainerError(f"{label} is a directory: load takes a tar file "
                                 f"(make one with `tar -cf image.tar -C {label} .`)") from None
    if magic[:2] != b"\x1f\x8b" and magic != b"\x28\xb5\x2f\xfd":
        return src
    plain = staging / "archive.tar"
    budget = UnpackBudget(f"archive {label}")
    try:
        with open(src, "rb") as raw, open(plain, "wb") as out:
            if magic[:2] == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=raw) as inflated:
                    _copy_bounded(inflated, out, budget)
            else:
                reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
                _copy_bounded(reader, out, budget)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise _corrupt(label, exc) from None
    except LayerError as exc:
        raise ArchiveError(f"{exc} (nothing was loaded)") from None
    return plain


def _copy_bounded(src: Any, out: Any, budget: UnpackBudget) -> None:
    """Copy an inflating stream to ``out``, a MiB at a time, stopping as soon as ``budget`` is spent."""
    while chunk := src.read(_CHUNK):
        budget.take(len(chunk))
        out.write(chunk)


# ---- loading ----------------------------------------------------------------------------

@contextmanager
def staging_area(store: ImageStore, what: str) -> Iterator[Path]:
    """A private dir under <root>/tmp, locked while in use so gc leaves it alone, removed after."""
    path = store.tmp / f"{what}-{os.getpid()}-{os.urandom(4).hex()}"
    path.mkdir(parents=True)
    fd = os.open(path / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        os.close(fd)
        shutil.rmtree(path, ignore_errors=True)


class _Loader:
    """Copies one archive's images into a staging store, checking every digest on the way."""

    def __init__(self, archive: ArchiveReader, staged: ImageStore, store: ImageStore):
        self.archive, self.staged, self.store = archive, staged, store
        self.label = archive.label
        self.used: set[str] = set()   # every blob the loaded images name

    # blobs: the staged copy, or the one already in the store (trusted: it was verified)
    def blob_path(self, digest: str) -> Path:
        if self.staged.has_blob(digest):
            return self.staged.blob_path(digest)
        return self.store.blob_path(digest)

    def _known(self, digest: str) -> bool:
        return self.staged.has_blob(digest) or self.store.has_blob(digest)

    def ingest(self, member: str, digest: str, size: int | None = None) -> None:
        """Stream a member into the staging store; it lands only if it hashes to ``digest``."""
        self.used.add(digest)
        if self._known(digest):
            return
        try:
            self.staged.ingest_blob(self.archive.chunks(member), digest, size)
        except ArchiveError:
            raise
        except LayerError as exc:
            raise ArchiveError(f"archive {self.label}: member {member!r} does not match its digest "
                               f"({exc}); the archive is corrupt or was tampered with (nothing was loaded)") from None

    def read_json_blob(self, digest: str, what: str) -> dict[str, Any]:
        if self.blob_path(digest).stat().st_size > JSON_LIMIT:
            raise ArchiveError(f"archive {self.label}: the {what} {digest} is over {JSON_LIMIT >> 20} MiB: "
                               "it is not an image archive")
        try:
            data = self.blob_path(digest).read_bytes()
            check_json_shape(data, f"archive {self.label}: the {what} {digest}")
            value = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise _corrupt(self.label, f"the {what} {digest} is not valid JSON ({exc})") from None
        if not isinstance(value, dict):
            raise _corrupt(self.label, f"the {what} {digest} is not a JSON object")
        return value

    def check_diff_ids(self, layers: list[dict[str, Any]], config: dict[str, Any], config_digest: str) -> None:
        """Each layer, uncompressed, must hash to the config's diff_id at the same position;
        all of them together may inflate to MINICONTAINER_MAX_IMAGE_SIZE at most."""
        diff_ids = (config.get("rootfs") or {}).get("diff_ids") or []
        if len(diff_ids) != len(layers):
            raise ArchiveError(f"archive {self.label}: image config {config_digest} lists {len(diff_ids)} "
                               f"diff_ids for {len(layers)} layers: the archive is corrupt (nothing was loaded)")
        budget = UnpackBudget(f"image {config_digest} in archive {self.label}")
        for layer, want in zip(layers, diff_ids):
            try:
                got = self._diff_id(layer, budget)
            except ArchiveError:
                raise
            except LayerError as exc:
                raise ArchiveError(f"{exc} (nothing was loaded)") from None
            if got != want:
                raise ArchiveError(f"archive {self.label}: layer {layer['digest']} uncompresses to {got}, but "
                                   f"the image config says {want}: the archive is corrupt or was tampered "
                                   "with (nothing was loaded)")

    def _diff_id(self, layer: dict[str, Any], budget: UnpackBudget) -> str:
        if layer.get("mediaType") in UNCOMPRESSED_LAYER_TYPES:
            budget.take(self.blob_path(layer["digest"]).stat().st_size)
            return layer["digest"]   # an uncompressed layer's digest *is* its diff_id
        h = hashlib.sha256()
        stream = open_layer_stream(self.blob_path(layer["digest"]), layer.get("mediaType"), budget)
        try:
            while chunk := stream.read(_CHUNK):
                h.update(chunk)
        finally:
            stream.close()
        return "sha256:" + h.hexdigest()

    # ---- an OCI image layout ------------------------------------------------------------
    def load_oci_layout(self, index: dict[str, Any]) -> list[LoadedImage]:
        loaded = []
        for desc in index.get("manifests") or []:
            self.copy_descriptor(desc)
            annotations = desc.get("annotations") or {}
            ref = _name_from_annotations(annotations, self.label)
            kept = {k: v for k, v in annotations.items() if k not in (REF_NAME, CONTAINERD_NAME)}
            descriptor = {k: desc[k] for k in ("mediaType", "digest", "size", "platform") if k in desc}
            body = self.read_json_blob(desc["digest"], "manifest")
            if "config" in body:   # docker names an untagged image by its config digest
                descriptor["_image_id"] = body["config"]["digest"]
            loaded.append(LoadedImage(ref, {**descriptor, "annotations": kept}))
        return loaded

    def copy_descriptor(self, desc: dict[str, Any]) -> None:
        """Copy a manifest or an index, and everything it names, from blobs/ into staging."""
        digest, media_type = _descriptor_digest(desc, self.label), desc.get("mediaType")
        self.ingest(_blob_member(digest), digest, desc.get("size"))
        body = self.read_json_blob(digest, "manifest")
        media_type = body.get("mediaType", media_type)
        if media_type in INDEX_TYPES or "manifests" in body:
            present = [m for m in body.get("manifests") or []
                       if self._known(_descriptor_digest(m, self.label)) or self.archive.has(_blob_member(m["digest"]))]
            if not present:
                raise ArchiveError(f"archive {self.label}: index {digest} names no manifest the archive "
                                   "holds: save it again with at least one platform (nothing was loaded)")
            for m in present:   # a platform the archive left out is simply not available here
                self.copy_descriptor(m)
        elif media_type in MANIFEST_TYPES or "config" in body:
            config_desc = body.get("config") or {}
            config_digest = _descriptor_digest(config_desc, self.label)
            self.ingest(_blob_member(config_digest), config_digest, config_desc.get("size"))
            layers = body.get("layers") or []
            for layer in layers:
                layer_digest = _descriptor_digest(layer, self.label)
                self.ingest(_blob_member(layer_digest), layer_digest, layer.get("size"))
            self.check_diff_ids(layers, self.read_json_blob(config_digest, "config"), config_digest)
        else:
            raise ArchiveError(f"archive {self.label}: {digest} has media type {media_type!r}, which is "
                               "neither an image manifest nor an index: minicontainer cannot load it")

    # ---- a docker save archive ----------------------------------------------------------
    def load_docker_save(self, entries: Any) -> list[LoadedImage]:
        if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("Config"), str)
                                                     and isinstance(e.get("Layers"), list) for e in entries):
            raise ArchiveError(f"archive {self.label}: manifest.json is not a docker save manifest "
                               '(a list of {"Config", "RepoTags", "Layers"}): it is not an image archive')
        loaded = []
        for entry in entries:
            descriptor = self.convert_docker_image(entry)
            tags = entry.get("RepoTags") or []
            refs = [_normalize_tag(t, self.label) for t in tags]
            loaded += [LoadedImage(ref, descriptor) for ref in refs] or [LoadedImage(None, descriptor)]
        return loaded

    def convert_docker_image(self, entry: dict[str, Any]) -> dict[str, Any]:
        """Store a docker save image as an OCI manifest: its config and layer files as they are."""
        if self.archive.size(entry["Config"]) > JSON_LIMIT:
            raise ArchiveError(f"archive {self.label}: config {entry['Config']!r} is over {JSON_LIMIT >> 20} MiB: "
                               "it is not an image config")
        # the config's exact bytes are kept: their sha256 is the image id docker shows
        config_bytes = b"".join(self.archive.chunks(entry["Config"]))
        config_digest = sha256_digest(config_bytes)
        named = _BLOB_NAME.search(entry["Config"])
        if named and f"sha256:{named.group(1)}" != config_digest:
            raise ArchiveError(f"archive {self.label}: config {entry['Config']!r} hashes to {config_digest}, "
                               "not the digest in its name: the archive is corrupt or was tampered with")
        try:
            check_json_shape(config_bytes, f"archive {self.label}: config {entry['Config']!r}")
            config = json.loads(config_bytes)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise _corrupt(self.label, f"config {entry['Config']!r} is not valid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise _corrupt(self.label, f"config {entry['Config']!r} is not a JSON object")
        self.used.add(self.staged.write_blob(config_bytes))
        layers = [self._docker_layer(name) for name in entry["Layers"]]
        self.check_diff_ids(layers, config, config_digest)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
                    "layers": layers}
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = self.staged.write_blob(manifest_bytes)
        self.used.add(manifest_digest)
        platform = {"os": config.get("os", "linux"), "architecture": config.get("architecture", "")}
        if config.get("variant"):
            platform["variant"] = config["variant"]
        return {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                "platform": platform, "_image_id": config_digest}

    def _docker_layer(self, member: str) -> dict[str, Any]:
        if not isinstance(member, str):
            raise ArchiveError(f"archive {self.label}: manifest.json names a layer {member!r} that is not a file name")
        # A legacy layer's name says nothing about its digest: hash it once, then ingest
        # it (a second pass) through the same digest-checking path as every other blob.
        h, size = hashlib.sha256(), 0
        for chunk in self.archive.chunks(member):
            h.update(chunk)
            size += len(chunk)
        digest = "sha256:" + h.hexdigest()
        self.ingest(member, digest, size)
        compression = sniff_compression(self.blob_path(digest))
        return {"mediaType": LAYER_TYPE_FOR[compression], "digest": digest, "size": size}


def _descriptor_digest(desc: Any, label: str) -> str:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise ArchiveError(f"archive {label}: descriptor {desc!r} has no valid sha256 digest: "
                           "minicontainer loads sha256 images only (nothing was loaded)")
    return digest


def _blob_member(digest: str) -> str:
    return "blobs/sha256/" + digest.split(":", 1)[1]


def _normalize_tag(tag: Any, label: str) -> str:
    try:
        return str(parse_reference(str(tag)))
    except InvalidReference as exc:
        raise ArchiveError(f"archive {label}: RepoTags entry {tag!r} is not a valid image name ({exc})") from None


def _name_from_annotations(annotations: dict[str, Any], label: str) -> str | None:
    """The full name of an image in an OCI layout, if the annotations give one.

    containerd's full name wins; a ref.name is used when it is a whole reference
    (``docker.io/library/busybox:latest``). A bare tag (``latest``) names no repository,
    so that image loads untagged, as containerd does without --base-name.
    """
    full = annotations.get(CONTAINERD_NAME)
    if full:
        return _normalize_tag(full, label)
    name = annotations.get(REF_NAME)
    if isinstance(name, str) and ("/" in name or ":" in name):
        return _normalize_tag(name, label)
    return None


def load_archive(store: ImageStore, path: str) -> list[LoadedImage]:
    """Load every image of an OCI-layout or docker-save archive (plain, gzip or zstd) into
    ``store``; all or nothing."""
    label = "stdin" if path == "-" else path
    step = Step(name="load_archive", call=f"read {label}: check every blob's digest, publish blobs, rewrite index.json",
                shell=f"docker load -i {label}",
                why="an image archive is untrusted: nothing reaches the store until every digest checks out")
    loaded: list[LoadedImage] = []
    step.do(_load, store, path, label, loaded)
    return loaded


def _load(store: ImageStore, path: str, label: str, loaded: list[LoadedImage]) -> str:
    with staging_area(store, "load") as staging:
        plain = _plain_tar(path, staging, label)
        staged = ImageStore(staging / "store")
        with ArchiveReader(plain, label) as archive:
            loader = _Loader(archive, staged, store)
            index = archive.read_json("index.json") if archive.has("index.json") else None
            if archive.has("oci-layout") and isinstance(index, dict) and index.get("manifests"):
                images = loader.load_oci_layout(index)
            elif archive.has("manifest.json"):
                images = loader.load_docker_save(archive.read_json("manifest.json"))
            elif archive.has("oci-layout"):
                raise ArchiveError(f"archive {label} is an OCI image layout whose index.json lists no image: "
                                   "there is nothing to load")
            else:
                raise ArchiveError(f"{label} is neither an OCI image layout (oci-layout + index.json) nor a "
                                   "docker save archive (manifest.json): give a file written by `docker save`, "
                                   "`minicontainer save` or `skopeo copy … oci-archive:`")
        _publish(staged, store, images, loader.used, label)
    loaded.extend(images)
    return f"{len(images)} image(s)"


def _publish(staged: ImageStore, store: ImageStore, images: list[LoadedImage], used: set[str], label: str) -> None:
    """Move the checked blobs into the store, then name the images in one index.json write."""
    for digest in sorted(used):
        target = store.blob_path(digest)
        if staged.has_blob(digest) and not target.exists():
            os.rename(staged.blob_path(digest), target)
        else:
            # a blob we reuse gets young again: gc spares young blobs until index.json names them
            try:
                os.utime(target)
            except FileNotFoundError:
                raise MinicontainerError(f"blob {digest} vanished while {label} was loading (a gc ran at the "
                                         "same moment): load the archive again") from None
    store.update_index(add=[(img.ref, {k: v for k, v in img.descriptor.items() if not k.startswith("_")})
                            for img in images])


# ---- saving -------------------------------------------------------------------------------

@dataclass
class SaveItem:
    """An image to save: its full reference (None for an untagged image) and descriptor."""

    ref: str | None
    descriptor: dict[str, Any]


def _tar_info(name: str, size: int = 0, directory: bool = False) -> tarfile.TarInfo:
    """A reproducible member header: root-owned, mtime 0, like docker's own archives."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.uid, info.gid, info.uname, info.gname = size, 0, 0, 0, "", ""
    info.type = tarfile.DIRTYPE if directory else tarfile.REGTYPE
    info.mode = 0o755 if directory else 0o644
    return info


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _blobs_of(store: ImageStore, desc: dict[str, Any], out: list[str]) -> None:
    """Every blob a manifest or index names, depth-first, each once."""
    if desc["digest"] in out:
        return
    out.append(desc["digest"])
    body = store.read_json(desc["digest"])
    if body.get("mediaType", desc.get("mediaType")) in INDEX_TYPES or "manifests" in body:
        for m in body.get("manifests", []):
            _blobs_of(store, m, out)
        return
    for d in [body["config"], *body.get("layers", [])]:
        if not store.has_blob(d["digest"]):
            raise ImageNotFound(f"blob {d['digest']} of {desc['digest']} is not in the store: pull the image again")
        if d["digest"] not in out:
            out.append(d["digest"])


def _complete(store: ImageStore, desc: dict[str, Any]) -> bool:
    """True if every blob the descriptor names (recursively) is in the store."""
    try:
        _blobs_of(store, desc, [])
        return True
    except MinicontainerError:
        return False


def save_archive(store: ImageStore, items: list[SaveItem], out_path: str, fmt: Format = "oci") -> None:
    """Write images as an OCI-layout tar, or (``docker``) an OCI layout plus docker's
    manifest.json, the way docker 25+ saves; atomically: temp file, fsync, rename."""
    if fmt not in ("oci", "docker"):
        raise MinicontainerError(f"unknown archive format {fmt!r}: use oci or docker")
    names = " ".join(parse_reference(i.ref).familiar if i.ref else i.descriptor["digest"] for i in items)
    target = "oci-archive" if fmt == "oci" else "docker-archive"
    step = Step(name="save_archive", call=f"tar oci-layout, index.json{', manifest.json' if fmt == 'docker' else ''} "
                                          f"and {len(items)} image(s)' blobs into {out_path}",
                shell=f"docker save -o {out_path} {names}" if fmt == "docker"
                else f"skopeo copy oci:{store.layout}:<ref> {target}:{out_path}",
                why="an image is a set of content-addressed blobs: saving copies them unchanged, so every digest survives")
    step.do(_save, store, items, out_path, fmt)


def _save(store: ImageStore, items: list[SaveItem], out_path: str, fmt: Format) -> str:
    index_entries, manifest_json, blobs = _save_plan(store, items, fmt)
    members: list[tuple[str, bytes]] = [("oci-layout", _json_bytes({"imageLayoutVersion": "1.0.0"})),
                                        ("index.json", _json_bytes({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                                                    "manifests": index_entries}))]
    if fmt == "docker":
        members.append(("manifest.json", _json_bytes(manifest_json)))
    if out_path == "-":
        with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            _write_members(store, tar, members, blobs)
        return f"{len(blobs)} blobs to stdout"
    out = Path(out_path)
    if out.is_dir():
        raise MinicontainerError(f"{out_path} is a directory: give a file name for the archive, e.g. {out_path}/image.tar")
    if not out.parent.is_dir():
        raise MinicontainerError(f"cannot write {out_path}: directory {out.parent} does not exist")
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        f = open(tmp, "wb")
    except OSError as exc:
        raise MinicontainerError(f"cannot write {out_path}: {exc.strerror} in {out.parent}: "
                                 "give a file in a directory you can write to") from None
    try:
        with f:
            with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                _write_members(store, tar, members, blobs)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{len(blobs)} blobs, {out.stat().st_size} bytes"


def _save_plan(store: ImageStore, items: list[SaveItem], fmt: Format) -> tuple[list[dict], list[dict], list[str]]:
    """index.json entries, docker's manifest.json entries, and the blobs to write."""
    index_entries: list[dict] = []
    docker_images: dict[str, dict] = {}   # manifest digest -> manifest.json entry
    blobs: list[str] = []
    for item in items:
        desc = {k: item.descriptor[k] for k in ("mediaType", "digest", "size", "platform") if k in item.descriptor}
        is_index = desc.get("mediaType") in INDEX_TYPES
        if is_index and (fmt == "docker" or not _complete(store, desc)):
            # docker's format holds one platform; an index we only partly have would
            # name blobs the archive lacks. Either way: save this host's manifest.
            image = store.resolve_descriptor(desc, item.ref or desc["digest"])
            data = store.read_blob(image.manifest_digest)
            desc = {"mediaType": image.manifest.get("mediaType", OCI_MANIFEST), "digest": image.manifest_digest,
                    "size": len(data), "platform": dict(zip(("os", "architecture"), host_platform().split("/")))}
        _blobs_of(store, desc, blobs)
        annotations = {}
        if item.ref:
            annotations = {REF_NAME: item.ref, CONTAINERD_NAME: item.ref}
        index_entries.append({**desc, **({"annotations": annotations} if annotations else {})})
        if fmt == "docker":
            body = store.read_json(desc["digest"])
            entry = docker_images.setdefault(desc["digest"], {
                "Config": _blob_member(body["config"]["digest"]), "RepoTags": [],
                "Layers": [_blob_member(layer["digest"]) for layer in body.get("layers", [])]})
            if item.ref:
                entry["RepoTags"].append(parse_reference(item.ref).familiar)
    manifest_json = [{**e, "RepoTags": e["RepoTags"] or None} for e in docker_images.values()]
    return index_entries, manifest_json, blobs


def _write_members(store: ImageStore, tar: tarfile.TarFile, members: list[tuple[str, bytes]],
                   blobs: list[str]) -> None:
    for name, data in members:
        tar.addfile(_tar_info(name, len(data)), io.BytesIO(data))
    tar.addfile(_tar_info("blobs", directory=True))
    tar.addfile(_tar_info("blobs/sha256", directory=True))
    for digest in blobs:
        with store.open_blob(digest) as f:
            size = os.fstat(f.fileno()).st_size
            tar.addfile(_tar_info(_blob_member(digest), size), f)
