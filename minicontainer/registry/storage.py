"""Crash-safe storage behind the registry server: blobs, manifests, tags and uploads.

A registry stores every byte once, under its digest, and gives each repository
*links* to the content it may see. Layout under the root directory::

    blobs/<alg>/<hex>                          content-addressed bytes, shared by all repositories
    uploads/<id>/repo                          the repository an upload session belongs to
    uploads/<id>/data                          bytes received so far (never visible as a blob)
    tmp/                                       manifests being written before their rename
    repos/<name>/_blobs/<alg>/<hex>            empty link: the blob is visible in <name>
    repos/<name>/_manifests/<alg>/<hex>        link holding the manifest's media type
    repos/<name>/_tags/<tag>                   the digest the tag points at
    repos/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>
                                               descriptor (JSON) of a manifest whose subject is <subject>
    repos/<name>/_lock                         flock()ed while manifests or tags change

Why the underscores: a repository name component must start with ``[a-z0-9]``, so
``_tags`` can never collide with a nested repository called ``<name>/tags``.

Crash safety: a blob becomes visible only after its digest was checked, its bytes
fsync()ed, and the upload file rename()d into ``blobs/``; rename is atomic, so a reader
sees the whole blob or none. Two uploads of the same blob write separate files and the
second rename replaces identical bytes. Small files (tags, manifest links) are written
to a temp file, fsync()ed and renamed. A killed server leaves at most an unfinished
``uploads/<id>``, which :meth:`RegistryStorage.sweep_uploads` removes.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from minicontainer.errors import RegistryError

# Grammar from the OCI distribution spec v1.1 ("Pulling manifests": name and tag).
NAME_RE = re.compile(r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$")
TAG_RE = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$")
DIGEST_RE = re.compile(r"^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+$")
HEX_LENGTH = {"sha256": 64, "sha512": 128}
UPLOAD_ID_RE = re.compile(r"^[a-f0-9]{32}$")
# RFC 6838 section 4.2: type "/" subtype, each a restricted name of 1 to 127 characters
MEDIA_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
MAX_NAME_LENGTH = 255
MAX_MANIFEST_BYTES = 4 * 1024 * 1024  # the spec asks registries to accept at least 4 MiB

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = {OCI_INDEX, DOCKER_LIST}
IMAGE_MANIFEST_TYPES = {OCI_MANIFEST, DOCKER_MANIFEST}
OCI_ARTIFACT = "application/vnd.oci.artifact.manifest.v1+json"  # from the v1.1 release candidates
MANIFEST_TYPES = INDEX_TYPES | IMAGE_MANIFEST_TYPES | {OCI_ARTIFACT}


class DistributionError(RegistryError):
    """A request the distribution spec refuses: HTTP status, spec error code, detail."""

    def __init__(self, status: int, code: str, message: str, detail: Any = None,
                 headers: dict[str, str] | None = None):
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = headers or {}
        self.message = message
        super().__init__(f"{code}: {message}")

    def body(self) -> dict[str, Any]:
        """The spec's error envelope: {"errors": [{code, message, detail}]}."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            error["detail"] = self.detail
        return {"errors": [error]}


# ---- names and digests -------------------------------------------------------------
def check_name(name: str) -> str:
    """Refuse a repository name outside the spec's grammar (which also rules out '..')."""
    if len(name) > MAX_NAME_LENGTH or not NAME_RE.match(name):
        raise DistributionError(400, "NAME_INVALID", "invalid repository name", {"name": name})
    return name


def is_tag(reference: str) -> bool:
    return bool(TAG_RE.match(reference))


def parse_digest(digest: str) -> tuple[str, str]:
    """Split 'sha256:<hex>' into (algorithm, hex); only sha256 and sha512 are stored."""
    if not DIGEST_RE.match(digest):
        raise DistributionError(400, "DIGEST_INVALID", "invalid digest", {"digest": digest})
    alg, hexpart = digest.split(":", 1)
    if alg not in HEX_LENGTH:
        raise DistributionError(400, "UNSUPPORTED", f"digest algorithm {alg} is not supported",
                                {"digest": digest})
    if len(hexpart) != HEX_LENGTH[alg] or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise DistributionError(400, "DIGEST_INVALID", "invalid digest", {"digest": digest})
    return alg, hexpart


def _hash_file(path: Path, alg: str) -> str:
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


# ---- atomic files ------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    """fsync a directory so a rename or a new entry in it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write temp, fsync, rename: a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _touch_link(path: Path) -> None:
    """Create an empty link file; O_CREAT is atomic, so there is no torn state."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
    _fsync_dir(path.parent)


# ---- upload sessions ---------------------------------------------------------------
@dataclass
class _Upload:
    id: str
    repo: str
    dir: Path
    size: int = 0
    hasher: Any = None  # running sha256 of data; None means "rehash the file when needed"
    lock: threading.Lock = field(default_factory=threading.Lock)
    gone: bool = False  # finished, cancelled or swept: a request still holding it must not touch it

    @property
    def data(self) -> Path:
        return self.dir / "data"


class RegistryStorage:
    """Blobs, manifests, tags and upload sessions on disk; see the module docstring."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        for sub in ("blobs", "uploads", "tmp", "repos"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._uploads: dict[str, _Upload] = {}
        self._uploads_lock = threading.Lock()

    # ---- paths ------------------------------------------------------------------------
    def _repo(self, name: str) -> Path:
        return self.root / "repos" / check_name(name)

    def blob_file(self, digest: str) -> Path:
        alg, hexpart = parse_digest(digest)
        return self.root / "blobs" / alg / hexpart

    def _blob_link(self, name: str, digest: str) -> Path:
        alg, hexpart = parse_digest(digest)
        return self._repo(name) / "_blobs" / alg / hexpart

    def _manifest_link(self, name: str, digest: str) -> Path:
        alg, hexpart = parse_digest(digest)
        return self._repo(name) / "_manifests" / alg / hexpart

    def repo_exists(self, name: str) -> bool:
        repo = self._repo(name)
        return (repo / "_blobs").is_dir() or (repo / "_manifests").is_dir()

    @contextmanager
    def repo_lock(self, name: str) -> Iterator[None]:
        """flock() the repository while manifests and tags change (threads and processes)."""
        repo = self._repo(name)
        repo.mkdir(parents=True, exist_ok=True)
        with open(repo / "_lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # ---- blobs ------------------------------------------------------------------------
    def blob_size(self, name: str, digest: str) -> int:
        """Size of a blob visible in repository ``name``; BLOB_UNKNOWN if it is not."""
        link, data = self._blob_link(name, digest), self.blob_file(digest)
        try:
            if link.exists():
                return data.stat().st_size
        except FileNotFoundError:
            pass
        raise DistributionError(404, "BLOB_UNKNOWN", "blob unknown to registry", {"digest": digest})

    def has_blob(self, name: str, digest: str) -> bool:
        try:
            self.blob_size(name, digest)
            return True
        except DistributionError:
            return False

    def link_blob(self, name: str, digest: str) -> None:
        _touch_link(self._blob_link(name, digest))

    def delete_blob(self, name: str, digest: str) -> None:
        """Remove the blob from ``name``; the bytes stay until :meth:`collect_garbage`."""
        try:
            self._blob_link(name, digest).unlink()
        except FileNotFoundError:
            raise DistributionError(404, "BLOB_UNKNOWN", "blob unknown to registry",
                                    {"digest": digest}) from None

    def mount_blob(self, name: str, digest: str, from_repo: str) -> bool:
        """Link a blob that ``from_repo`` already has into ``name``; False if it has not."""
        if not self.has_blob(from_repo, digest):
            return False
        self.link_blob(name, digest)
        return True

    def repositories_holding(self, digest: str) -> list[str]:
        """The repositories in which a blob is visible (where a mount without ``from`` may take it)."""
        if not self.blob_file(digest).exists():
            return []
        return [name for name in self.repositories() if self.has_blob(name, digest)]

    # ---- uploads ----------------------------------------------------------------------
    def start_upload(self, name: str) -> str:
        """Open an upload session: a private directory that no reader ever looks at."""
        check_name(name)
        upload_id = uuid.uuid4().hex
        directory = self.root / "uploads" / upload_id
        directory.mkdir()
        (directory / "repo").write_text(name)
        (directory / "data").touch()
        up = _Upload(upload_id, name, directory, 0, hashlib.sha256())
        with self._uploads_lock:
            self._uploads[upload_id] = up
        return upload_id

    def _upload(self, name: str, upload_id: str) -> _Upload:
        unknown = DistributionError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry",
                                    {"upload": upload_id})
        if not UPLOAD_ID_RE.match(upload_id):
            raise unknown
        with self._uploads_lock:
            up = self._uploads.get(upload_id)
            if up is None:
                # A session from before a restart: its hash state is gone, so rehash lazily.
                directory = self.root / "uploads" / upload_id
                try:
                    repo = (directory / "repo").read_text()
                    size = (directory / "data").stat().st_size
                except (FileNotFoundError, NotADirectoryError):
                    raise unknown from None
                up = self._uploads[upload_id] = _Upload(upload_id, repo, directory, size, None)
        if up.repo != name:
            raise unknown
        return up

    def upload_size(self, name: str, upload_id: str) -> int:
        return self._upload(name, upload_id).size

    @staticmethod
    def _check_not_gone(up: _Upload) -> None:
        """Under ``up.lock``: another request finished or cancelled it, or the sweeper removed it."""
        if up.gone:
            raise DistributionError(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry",
                                    {"upload": up.id})

    def _ensure_hasher(self, up: _Upload) -> None:
        if up.hasher is None:
            h = hashlib.sha256()
            with open(up.data, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
            up.hasher, up.size = h, up.data.stat().st_size

    def append_upload(self, name: str, upload_id: str, chunks: Iterable[bytes | memoryview],
                      start: int | None = None) -> int:
        """Append a chunk, hashing it as it arrives; ``start`` must equal the bytes stored."""
        up = self._upload(name, upload_id)
        with up.lock:
            self._check_not_gone(up)
            self._ensure_hasher(up)
            if start is not None and start != up.size:
                raise DistributionError(
                    416, "BLOB_UPLOAD_INVALID",
                    f"chunk starts at byte {start} but the upload holds {up.size} bytes",
                    headers=self.range_headers(name, up.id, up.size))
            try:
                with open(up.data, "ab", buffering=0) as f:
                    for chunk in chunks:
                        f.write(chunk)
                        up.hasher.update(chunk)
                        up.size += len(chunk)
            except BaseException:
                up.hasher = None  # the file and the hash may disagree now: rehash next time
                raise
            return up.size

    @staticmethod
    def range_headers(name: str, upload_id: str, size: int) -> dict[str, str]:
        """Location and Range of an upload; Range is inclusive, hence size-1 ('0-0' when empty)."""
        return {"Location": f"/v2/{name}/blobs/uploads/{upload_id}",
                "Range": f"0-{max(size - 1, 0)}",
                "Docker-Upload-UUID": upload_id,
                "Blob-Upload-Session-ID": upload_id}

    def finish_upload(self, name: str, upload_id: str, digest: str) -> str:
        """Check the digest, then rename the bytes into blobs/: only now is the blob visible."""
        alg, hexpart = parse_digest(digest)
        up = self._upload(name, upload_id)
        with up.lock:
            self._check_not_gone(up)
            if alg == "sha256":
                self._ensure_hasher(up)
                actual = up.hasher.hexdigest()
            else:
                actual = _hash_file(up.data, alg)
            if actual != hexpart:
                raise DistributionError(400, "DIGEST_INVALID",
                                        "provided digest did not match uploaded content",
                                        {"digest": digest, "computed": f"{alg}:{actual}"})
            target = self.root / "blobs" / alg / hexpart
            if target.exists():
                up.data.unlink()  # same digest, same bytes: keep the copy readers may hold
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                fd = os.open(up.data, os.O_RDONLY)
                try:
                    os.fsync(fd)  # the bytes reach the disk before the name does
                finally:
                    os.close(fd)
                os.replace(up.data, target)
                _fsync_dir(target.parent)
            self.link_blob(name, digest)
            self._forget_upload(up)
        return digest

    def cancel_upload(self, name: str, upload_id: str) -> None:
        up = self._upload(name, upload_id)
        with up.lock:
            self._check_not_gone(up)
            self._forget_upload(up)

    def _forget_upload(self, up: _Upload) -> None:
        """Under ``up.lock``: remove the session's files and its entry, and mark it gone."""
        up.gone = True
        with self._uploads_lock:
            self._uploads.pop(up.id, None)
        shutil.rmtree(up.dir, ignore_errors=True)

    def put_blob(self, name: str, digest: str, chunks: Iterable[bytes | memoryview]) -> str:
        """A monolithic upload: one session, one chunk, checked and renamed into place."""
        parse_digest(digest)
        upload_id = self.start_upload(name)
        try:
            self.append_upload(name, upload_id, chunks)
            return self.finish_upload(name, upload_id, digest)
        except BaseException:
            self.cancel_upload(name, upload_id)
            raise

    def sweep_uploads(self, older_than: float = 24 * 3600) -> int:
        """Remove upload sessions untouched for ``older_than`` seconds (abandoned, or left by a crash).

        A session a request is using right now (its lock is held) is left for the next sweep.
        """
        removed = 0
        for directory in (self.root / "uploads").iterdir():
            if self._sweep_one(directory, older_than):
                removed += 1
        return removed

    def _sweep_one(self, directory: Path, older_than: float) -> bool:
        with self._uploads_lock:
            up = self._uploads.get(directory.name)
            if up is None:
                # nobody has asked for it since start-up; holding the lock keeps it that way
                if not _untouched_for(directory, older_than):
                    return False
                shutil.rmtree(directory, ignore_errors=True)
                return True
            if not up.lock.acquire(blocking=False):
                return False  # a request is appending to it or finishing it: it is in use
        try:
            if up.gone or not _untouched_for(directory, older_than):
                return False
            self._forget_upload(up)
            return True
        finally:
            up.lock.release()

    # ---- manifests --------------------------------------------------------------------
    def put_manifest(self, name: str, reference: str, body: bytes,
                     content_type: str = "") -> tuple[str, str | None]:
        """Store a manifest under a tag or digest; returns (digest, subject digest or None)."""
        check_name(name)
        manifest = _parse_manifest(body)
        media_type = _manifest_media_type(manifest, content_type)
        _check_manifest_fields(manifest, media_type)
        alg = "sha256"
        if not is_tag(reference):
            alg, _ = parse_digest(reference)
        digest = f"{alg}:{hashlib.new(alg, body).hexdigest()}"
        if not is_tag(reference) and reference != digest:
            raise DistributionError(400, "DIGEST_INVALID", "manifest digest does not match its content",
                                    {"digest": reference, "computed": digest})
        self._check_references(name, manifest, media_type)
        subject = manifest.get("subject")
        subject_digest = subject["digest"] if subject is not None else None

        # everything is checked: only now does anything reach the disk
        blob = self.blob_file(digest)
        if not blob.exists():
            _write_atomic(blob, body)
        with self.repo_lock(name):
            _write_atomic(self._manifest_link(name, digest), media_type.encode())
            if subject_digest:
                descriptor = _referrer_descriptor(manifest, media_type, digest, len(body))
                _write_atomic(self._referrer_file(name, subject_digest, digest),
                              json.dumps(descriptor).encode())
            if is_tag(reference):
                _write_atomic(self._repo(name) / "_tags" / reference, digest.encode())
        return digest, subject_digest

    def _check_references(self, name: str, manifest: dict, media_type: str) -> None:
        """Every blob an image manifest names, and every manifest an index names, must exist."""
        if media_type in INDEX_TYPES:
            wanted = [(d, "manifest") for d in _descriptors(manifest.get("manifests"))]
        else:
            descriptors = []
            if manifest.get("config") is not None:
                descriptors.append(manifest["config"])
            descriptors += _descriptors(manifest.get("layers"))
            descriptors += _descriptors(manifest.get("blobs"))  # the old artifact manifest
            wanted = [(d, "blob") for d in descriptors if not d.get("urls")]  # foreign layers live elsewhere
        for descriptor, kind in wanted:
            digest = descriptor["digest"]  # _check_manifest_fields made sure it is one
            found = self.has_blob(name, digest) if kind == "blob" else \
                self._manifest_link(name, digest).exists()
            if not found:
                raise DistributionError(400, "MANIFEST_BLOB_UNKNOWN",
                                        f"manifest references a {kind} unknown to this repository",
                                        {"digest": digest})

    def resolve(self, name: str, reference: str) -> str:
        """The digest a tag or digest reference names; MANIFEST_UNKNOWN if there is none."""
        unknown = DistributionError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry",
                                    {"name": name, "reference": reference})
        if is_tag(reference):
            try:
                digest = (self._repo(name) / "_tags" / reference).read_text()
            except (FileNotFoundError, NotADirectoryError):
                raise unknown from None
        else:
            try:
                parse_digest(reference)
            except DistributionError:
                raise unknown from None  # neither a tag nor a digest names no manifest (as distribution)
            digest = reference
        if not self._manifest_link(name, digest).exists():
            raise unknown
        return digest

    def get_manifest(self, name: str, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of a manifest, by tag or digest."""
        digest = self.resolve(name, reference)
        try:
            media_type = self._manifest_link(name, digest).read_text()
            body = self.blob_file(digest).read_bytes()
        except FileNotFoundError:
            raise DistributionError(404, "MANIFEST_UNKNOWN", "manifest unknown to registry",
                                    {"name": name, "reference": reference}) from None
        return body, media_type, digest

    def delete_manifest(self, name: str, reference: str) -> str:
        """Delete a tag (by tag) or a manifest with its tags and referrer entry (by digest)."""
        self.resolve(name, reference)  # MANIFEST_UNKNOWN before the lock, which would create the repository
        with self.repo_lock(name):
            digest = self.resolve(name, reference)
            tags = self._repo(name) / "_tags"
            if is_tag(reference):
                (tags / reference).unlink()
                return digest
            for tag in self.tags(name):
                try:
                    if (tags / tag).read_text() == digest:
                        (tags / tag).unlink()
                except FileNotFoundError:
                    pass
            try:
                subject = _parse_manifest(self.blob_file(digest).read_bytes()).get("subject")
                if isinstance(subject, dict) and isinstance(subject.get("digest"), str):
                    self._referrer_file(name, subject["digest"], digest).unlink(missing_ok=True)
            except (DistributionError, FileNotFoundError):
                pass
            self._manifest_link(name, digest).unlink()
            return digest

    def tags(self, name: str) -> list[str]:
        """Tags of a repository in lexical order; NAME_UNKNOWN if the repository doesn't exist."""
        if not self.repo_exists(name):
            raise DistributionError(404, "NAME_UNKNOWN", "repository name not known to registry",
                                    {"name": name})
        try:
            return sorted(t for t in os.listdir(self._repo(name) / "_tags") if not t.startswith("."))
        except FileNotFoundError:
            return []

    def repositories(self) -> list[str]:
        """Every repository name, sorted (for /v2/_catalog)."""
        base = self.root / "repos"
        names = []
        for dirpath, dirnames, _ in os.walk(base):
            if "_blobs" in dirnames or "_manifests" in dirnames:
                names.append(os.path.relpath(dirpath, base))
            dirnames[:] = [d for d in dirnames if not d.startswith("_")]
        return sorted(names)

    # ---- referrers --------------------------------------------------------------------
    def _referrer_file(self, name: str, subject: str, digest: str) -> Path:
        s_alg, s_hex = parse_digest(subject)
        alg, hexpart = parse_digest(digest)
        return self._repo(name) / "_referrers" / s_alg / s_hex / f"{alg}-{hexpart}"

    def referrers(self, name: str, subject: str, artifact_type: str | None = None) -> list[dict]:
        """Descriptors of the manifests whose subject is ``subject``, optionally one artifactType."""
        s_alg, s_hex = parse_digest(subject)
        directory = self._repo(name) / "_referrers" / s_alg / s_hex
        found = []
        try:
            entries = sorted(os.listdir(directory))
        except FileNotFoundError:
            return []
        for entry in entries:
            if entry.startswith("."):
                continue
            try:
                descriptor = json.loads((directory / entry).read_bytes())
            except (FileNotFoundError, ValueError):
                continue
            if artifact_type is None or descriptor.get("artifactType") == artifact_type:
                found.append(descriptor)
        return found

    # ---- checks -----------------------------------------------------------------------
    def fsck(self) -> list[str]:
        """Blob files whose content does not hash to their name (should always be empty)."""
        corrupt = []
        for alg in HEX_LENGTH:
            directory = self.root / "blobs" / alg
            if not directory.is_dir():
                continue
            for entry in directory.iterdir():
                if entry.name.startswith(".") or _hash_file(entry, alg) != entry.name:
                    corrupt.append(str(entry))
        return corrupt

    def collect_garbage(self) -> int:
        """Delete blob files that no repository links to as a blob or a manifest."""
        used: set[tuple[str, str]] = set()
        for name in self.repositories():
            for kind in ("_blobs", "_manifests"):
                for alg in HEX_LENGTH:
                    directory = self._repo(name) / kind / alg
                    if directory.is_dir():
                        used.update((alg, h) for h in os.listdir(directory))
        removed = 0
        for alg in HEX_LENGTH:
            directory = self.root / "blobs" / alg
            if directory.is_dir():
                for entry in directory.iterdir():
                    if (alg, entry.name) not in used:
                        entry.unlink(missing_ok=True)
                        removed += 1
        return removed


def _untouched_for(directory: Path, seconds: float) -> bool:
    """Whether an upload directory and every file in it were last modified ``seconds`` ago or more."""
    try:
        mtime = max(p.stat().st_mtime for p in [directory, *directory.iterdir()])
    except (FileNotFoundError, NotADirectoryError):
        return False  # already gone, or not an upload directory: leave it alone
    return time.time() - mtime >= seconds


# ---- manifest parsing ---------------------------------------------------------------
def _parse_manifest(body: bytes) -> dict:
    try:
        manifest = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested deeper than the parser goes
        raise DistributionError(400, "MANIFEST_INVALID", "manifest is not valid JSON") from None
    if not isinstance(manifest, dict):
        raise DistributionError(400, "MANIFEST_INVALID", "manifest is not a JSON object")
    if manifest.get("schemaVersion") != 2:
        raise DistributionError(400, "MANIFEST_INVALID", "only schemaVersion 2 manifests are accepted",
                                {"schemaVersion": manifest.get("schemaVersion")})
    return manifest


def _invalid(message: str, detail: Any = None) -> DistributionError:
    return DistributionError(400, "MANIFEST_INVALID", message, detail)


def _is_media_type(value: Any) -> bool:
    return isinstance(value, str) and bool(MEDIA_TYPE_RE.match(value))


def _manifest_media_type(manifest: dict, content_type: str) -> str:
    """The manifest's media type: its mediaType field, else the request's Content-Type."""
    header = content_type.split(";")[0].strip()
    declared = manifest.get("mediaType")
    if declared is not None and not _is_media_type(declared):
        raise _invalid("mediaType must be a media type such as " + OCI_MANIFEST, {"mediaType": declared})
    if declared and header and header not in (declared, "application/json"):
        raise _invalid("Content-Type does not match the manifest's mediaType",
                       {"mediaType": declared, "contentType": content_type})
    media_type = declared or header
    if not _is_media_type(media_type):
        raise _invalid("manifest has no media type: set mediaType or send it as Content-Type",
                       {"contentType": content_type})
    if media_type not in MANIFEST_TYPES:
        raise _invalid(f"{media_type} is not a manifest media type: use {OCI_MANIFEST} or {OCI_INDEX}",
                       {"mediaType": media_type})
    return media_type


def _check_manifest_fields(manifest: dict, media_type: str) -> None:
    """Refuse a manifest whose fields the registry reads have the wrong shape, before storing it.

    An image manifest needs a config descriptor, an index a list of manifests; every descriptor
    needs mediaType, digest and size (OCI image spec, "Descriptors").
    """
    if "artifactType" in manifest and not _is_media_type(manifest["artifactType"]):
        raise _invalid("artifactType must be a media type", {"artifactType": manifest["artifactType"]})
    _check_annotations(manifest.get("annotations"), "the manifest")
    if "subject" in manifest:
        _check_descriptor(manifest["subject"], "subject")
    if media_type in INDEX_TYPES:
        if "manifests" not in manifest:
            raise _invalid("an image index needs a manifests list")
        _descriptors(manifest["manifests"], "manifests")
        return
    if media_type in IMAGE_MANIFEST_TYPES and "config" not in manifest:
        raise _invalid("an image manifest needs a config descriptor")
    if "config" in manifest:
        _check_descriptor(manifest["config"], "config")
    _descriptors(manifest.get("layers"), "layers")
    _descriptors(manifest.get("blobs"), "blobs")  # the old artifact manifest's list


def _check_descriptor(value: Any, where: str) -> dict:
    """A descriptor: an object with a media type, a valid digest and a size in bytes."""
    if not isinstance(value, dict):
        raise _invalid(f"{where} must be a descriptor object", {where: value})
    if not _is_media_type(value.get("mediaType")):
        raise _invalid(f"{where} needs a mediaType", {where: value})
    digest = value.get("digest")
    try:
        parse_digest(digest if isinstance(digest, str) else "")
    except DistributionError:
        raise _invalid(f"{where} needs a valid digest", {where: value}) from None
    size = value.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise _invalid(f"{where} needs a size (a non-negative integer)", {where: value})
    urls = value.get("urls", [])
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise _invalid(f"{where}: urls must be a list of strings", {where: value})
    if "artifactType" in value and not _is_media_type(value["artifactType"]):
        raise _invalid(f"{where}: artifactType must be a media type", {where: value})
    _check_annotations(value.get("annotations"), where)
    return value


def _check_annotations(value: Any, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _invalid(f"annotations of {where} must map strings to strings")


def _descriptors(value: Any, where: str = "descriptors") -> list[dict]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _invalid(f"{where} must be a list of descriptors")
    return [_check_descriptor(d, f"{where}[{i}]") for i, d in enumerate(value)]


def _referrer_descriptor(manifest: dict, media_type: str, digest: str, size: int) -> dict:
    """The descriptor the referrers API lists: artifactType falls back to config.mediaType."""
    descriptor: dict[str, Any] = {"mediaType": media_type, "digest": digest, "size": size}
    artifact_type = manifest.get("artifactType")
    if not artifact_type and isinstance(manifest.get("config"), dict):
        artifact_type = manifest["config"].get("mediaType")
    if artifact_type:
        descriptor["artifactType"] = artifact_type
    if manifest.get("annotations"):
        descriptor["annotations"] = manifest["annotations"]
    return descriptor
