"""Image layers: apply an OCI layer tarball to a directory, and turn an overlay upper dir
back into a layer.

An OCI image is a stack of tar archives. Applying one means streaming the tar once and
creating each entry, except for two kinds of marker that delete instead of create:

* ``dir/.wh.name`` (a *whiteout*) hides ``dir/name`` from the layers below;
* ``dir/.wh..wh..opq`` (an *opaque marker*) hides everything the layers below put in ``dir``.

Both only ever hide content of *lower* layers, never entries of the same tar, wherever the
marker sits in it. overlayfs spells the same two ideas differently: a whiteout is a char
device 0/0, an opaque directory carries the xattr ``trusted.overlay.opaque=y``.
:func:`apply_layer` speaks both dialects (``mode="flatten"`` onto one rootfs, or
``mode="overlay"`` into a layer's own lowerdir) and :func:`diff_layer` converts back.

A layer is untrusted input. Every entry is created with ``*at()`` syscalls relative to a
directory fd that was itself opened with ``O_NOFOLLOW`` component by component under the
target, so no ``..``, absolute path, symlinked parent or hardlink can reach outside it, and
nothing is ever written *through* a symlink (symlinks are only ever created, never followed).
"""
from __future__ import annotations

import ctypes
import errno
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal

import zstandard

from minicontainer.errors import InvalidArgument, LayerError
from minicontainer.image.limits import UnpackBudget
from minicontainer.trace import Step, is_planning

# What the OCI image spec and Docker call each layer format, and how it is compressed.
MEDIA_TYPES: dict[str, str] = {
    "application/vnd.oci.image.layer.v1.tar": "none",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd": "zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
}
# Docker's own engine sniffs the bytes whatever the manifest says, and `docker save`
# archives really do hold plain tars under the gzip media type, so we sniff those too.
_SNIFFED_MEDIA_TYPES = {"application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"}

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

# Limits on attacker-controlled sizes: an extended header is read into memory, and no
# Linux path may exceed PATH_MAX (4096) or NAME_MAX (255) anyway.
MAX_EXTENDED_HEADER = 1 << 20
PATH_MAX = 4096
NAME_MAX = 255

_CHUNK = 1 << 20           # read and write in 1 MiB pieces: few syscalls, bounded memory
_BLOCK = 512               # a tar archive is a sequence of 512-byte blocks
_ZERO_BLOCK = bytes(_BLOCK)
_MAX_CACHED_DIRS = 256     # open directory fds kept while unpacking

_O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_NEWFILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

Mode = Literal["overlay", "flatten"]
Compression = Literal["gzip", "zstd", "none"]


@dataclass
class LayerResult:
    """What applying or writing a layer produced: its two digests and its size."""

    digest: str    # sha256 of the blob as stored (compressed): the manifest's layer digest
    diff_id: str   # sha256 of the uncompressed tar: the config's rootfs.diff_ids entry
    files: int     # tar entries applied or written (whiteouts included)
    bytes: int     # bytes of regular-file content in the layer


# ---- reading a blob: decompress and hash in one pass --------------------------------

class _HashingReader(io.RawIOBase):
    """Pass bytes through unchanged while feeding them to a hash (and counting them against a budget)."""

    def __init__(self, raw: BinaryIO, hasher: "hashlib._Hash", budget: UnpackBudget | None = None):
        self.raw, self.hasher, self.budget = raw, hasher, budget

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        n = self.raw.readinto(b)
        if n:
            self.hasher.update(memoryview(b)[:n])
            if self.budget is not None:
                self.budget.take(n)   # a gzip bomb stops here, a MiB past the cap, not when the disk is full
        return n or 0

    def close(self) -> None:
        self.raw.close()
        super().close()


class _GzipReader(io.RawIOBase):
    """Inflate a gzip stream (one or more members) with zlib, in bounded pieces."""

    def __init__(self, src: BinaryIO):
        self.src = src
        self.inflater = zlib.decompressobj(wbits=31)  # 31 = expect a gzip header and trailer

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        want = len(b)
        while True:
            d = self.inflater
            try:
                if d.unconsumed_tail:
                    data = d.decompress(d.unconsumed_tail, want)
                elif d.eof:
                    rest = d.unused_data or self.src.read(_CHUNK)
                    if not rest.strip(b"\0"):   # end of stream, or gzip's tolerated zero padding
                        while self.src.read(_CHUNK):
                            pass
                        return 0
                    self.inflater = zlib.decompressobj(wbits=31)  # the next gzip member
                    data = self.inflater.decompress(rest, want)
                else:
                    chunk = self.src.read(_CHUNK)
                    if not chunk:
                        data = d.flush()
                        if not data:
                            raise LayerError("layer blob is a truncated gzip stream: "
                                             "the download was cut short; pull the image again")
                    else:
                        data = d.decompress(chunk, want)
            except zlib.error as exc:
                raise LayerError(f"layer blob is not valid gzip data ({exc}): "
                                 "check the media type, or pull the image again") from None
            if data:
                b[:len(data)] = data
                return len(data)

    def close(self) -> None:
        self.src.close()
        super().close()


class _ZstdReader(io.RawIOBase):
    """Decompress a zstd stream (all frames) with the zstandard package."""

    def __init__(self, src: BinaryIO):
        self.src = src
        self.reader = zstandard.ZstdDecompressor().stream_reader(
            src, read_size=_CHUNK, read_across_frames=True, closefd=False)

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[override]
        try:
            n = self.reader.readinto(b)
        except zstandard.ZstdError as exc:
            raise LayerError(f"layer blob is not valid zstd data ({exc}): "
                             "check the media type, or pull the image again") from None
        if not n:
            while self.src.read(_CHUNK):   # hash any bytes after the last frame too
                pass
        return n

    def close(self) -> None:
        self.reader.close()
        self.src.close()
        super().close()


def sniff_compression(blob_path: Path) -> Compression:
    """Tell gzip (1f 8b), zstd (28 b5 2f fd) and plain tar apart by their magic bytes."""
    with open(blob_path, "rb") as f:
        magic = f.read(4)
    if magic[:2] == b"\x1f\x8b":
        return "gzip"
    if magic == b"\x28\xb5\x2f\xfd":
        return "zstd"
    return "none"


def compression_for(blob_path: Path, media_type: str | None) -> Compression:
    """The compression a layer blob uses: from its media type, or sniffed if none is given."""
    if media_type is None or media_type in _SNIFFED_MEDIA_TYPES:
        return sniff_compression(blob_path)
    try:
        return MEDIA_TYPES[media_type]  # type: ignore[return-value]
    except KeyError:
        raise LayerError(f"unsupported layer media type {media_type!r}: "
                         f"minicontainer reads {', '.join(sorted(MEDIA_TYPES))}") from None


class _LayerStream:
    """A layer blob opened for one pass: the tar bytes, plus both running digests.

    Every uncompressed byte counts against ``budget`` (default: a fresh one of
    MINICONTAINER_MAX_IMAGE_SIZE), so no layer inflates without bound.
    """

    def __init__(self, blob_path: Path, compression: Compression, algorithm: str = "sha256",
                 budget: UnpackBudget | None = None):
        self.compression = compression
        budget = budget if budget is not None else UnpackBudget(f"layer {_blob_label(blob_path, None)}")
        raw = open(blob_path, "rb", buffering=0)
        self.blob_hash = hashlib.new(algorithm)
        if compression == "none":
            hashed_blob = _HashingReader(raw, self.blob_hash, budget)
            self.tar_hash = self.blob_hash          # no compression: digest == diff_id
            plain: io.RawIOBase = hashed_blob
        else:
            hashed_blob = _HashingReader(raw, self.blob_hash)
            self.tar_hash = hashlib.new(algorithm)
            inflate = _GzipReader(hashed_blob) if compression == "gzip" else _ZstdReader(hashed_blob)
            plain = _HashingReader(inflate, self.tar_hash, budget)  # type: ignore[arg-type]
        self.reader = io.BufferedReader(plain, buffer_size=_CHUNK)

    def drain(self) -> None:
        """Read to the end so both digests cover every byte of the blob."""
        while self.reader.read(_CHUNK):
            pass

    def digests(self) -> tuple[str, str]:
        name = self.blob_hash.name
        return f"{name}:{self.blob_hash.hexdigest()}", f"{name}:{self.tar_hash.hexdigest()}"

    def close(self) -> None:
        self.reader.close()


def open_layer_stream(blob_path: Path | str, media_type: str | None,
                      budget: UnpackBudget | None = None) -> BinaryIO:
    """Open a layer blob as its uncompressed tar stream (gzip, zstd or plain), bounded by ``budget``."""
    blob_path = Path(blob_path)
    return _LayerStream(blob_path, compression_for(blob_path, media_type), budget=budget).reader


# ---- parsing the tar stream -----------------------------------------------------------

@dataclass
class TarEntry:
    """One member of a layer tar, after its PAX and GNU long-name headers are merged in."""

    name: str
    type: bytes
    size: int
    mode: int
    uid: int
    gid: int
    mtime_ns: int
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, bytes] = field(default_factory=dict)


# Entry types that carry no data, whatever their size field says (tarfile and Go agree).
_HEADER_ONLY = {tarfile.LNKTYPE, tarfile.SYMTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE,
                tarfile.DIRTYPE, tarfile.FIFOTYPE}
_REGULAR = {tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE}


def _refuse(name: str, rule: str) -> LayerError:
    return LayerError(f"layer entry {name!r} refused: {rule}; "
                      "the layer is malformed or hostile, do not use this image")


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise LayerError(f"layer tar is truncated inside {what!r}: "
                         "the blob is incomplete; pull the image again")
    return data


def _padding(size: int) -> int:
    return -size % _BLOCK


def _parse_pax(data: bytes, where: str) -> dict[str, bytes]:
    """Parse PAX records, each "<length> <key>=<value>\\n"; values stay raw bytes."""
    records: dict[str, bytes] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.find(b" ", pos, pos + 20)
        try:
            length = int(data[pos:space]) if space > pos else -1
        except ValueError:
            length = -1
        end = pos + length
        if length < (space - pos) + 3 or end > len(data) or data[end - 1:end] != b"\n":
            raise _refuse(where, "malformed PAX extended header")
        key, eq, value = data[space + 1:end - 1].partition(b"=")
        if not eq:
            raise _refuse(where, "malformed PAX extended header")
        records[key.decode("utf-8", "surrogateescape")] = value
        pos = end
    return records


def _pax_int(records: dict[str, bytes], key: str, default: int, where: str) -> int:
    raw = records.get(key)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _refuse(where, f"PAX {key} is not a number") from None
    if value < 0:
        raise _refuse(where, f"PAX {key} is negative")
    return value


def _pax_time_ns(raw: bytes, where: str) -> int:
    """A PAX time ("1700000000.123456789") as integer nanoseconds, without float rounding."""
    text = raw.decode("ascii", "replace")
    sign = -1 if text.startswith("-") else 1
    whole, _, frac = text.lstrip("-").partition(".")
    if not whole.isdigit() or (frac and not frac.isdigit()):
        raise _refuse(where, "PAX mtime is not a number")
    return sign * (int(whole) * 1_000_000_000 + int((frac + "000000000")[:9]))


def read_tar_entries(stream: BinaryIO) -> Iterator[TarEntry]:
    """Yield the members of a tar stream; the caller must consume each entry's data.

    After an entry of a data-carrying type is yielded, exactly ``entry.size`` bytes plus
    padding to 512 follow in the stream. Extended headers are capped at 1 MiB.
    """
    pax: dict[str, bytes] = {}
    long_name = long_link = None
    while True:
        block = stream.read(_BLOCK)
        if not block or block == _ZERO_BLOCK:
            return  # end-of-archive marker (or a tar that simply stops, which Docker accepts)
        if len(block) != _BLOCK:
            raise LayerError("layer tar is truncated inside a header: pull the image again")
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise LayerError(f"layer tar has a corrupt header ({exc}): "
                             "the blob is damaged or not a tar; pull the image again") from None
        kind = info.type
        if kind in (tarfile.XHDTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.XGLTYPE,
                    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            where = info.name or "(extended header)"
            if info.size > MAX_EXTENDED_HEADER or info.size < 0:
                raise _refuse(where, f"extended header of {info.size} bytes is over the "
                                     f"{MAX_EXTENDED_HEADER} byte limit")
            data = _read_exact(stream, info.size + _padding(info.size), where)[:info.size]
            if kind == tarfile.GNUTYPE_LONGNAME:
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == tarfile.GNUTYPE_LONGLINK:
                long_link = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind != tarfile.XGLTYPE:  # global headers are ignored, as Docker does
                pax.update(_parse_pax(data, where))
            continue

        name = (pax["path"].decode("utf-8", "surrogateescape") if pax.get("path")
                else long_name if long_name is not None else info.name)
        if any(key.startswith("GNU.sparse.") for key in pax) or kind == tarfile.GNUTYPE_SPARSE:
            raise _refuse(name, "sparse files are not supported in image layers")
        if info.size < 0 or info.uid < 0 or info.gid < 0:
            raise _refuse(name, "negative size, uid or gid in the header")
        entry = TarEntry(
            name=name, type=kind,
            size=0 if kind in _HEADER_ONLY else _pax_int(pax, "size", info.size, name),
            mode=info.mode & 0o7777,
            uid=_pax_int(pax, "uid", info.uid, name),
            gid=_pax_int(pax, "gid", info.gid, name),
            mtime_ns=(_pax_time_ns(pax["mtime"], name) if pax.get("mtime")
                      else int(info.mtime) * 1_000_000_000),
            linkname=(pax["linkpath"].decode("utf-8", "surrogateescape") if pax.get("linkpath")
                      else long_link if long_link is not None else info.linkname),
            devmajor=info.devmajor, devminor=info.devminor,
            xattrs={k[len("SCHILY.xattr."):]: v for k, v in pax.items()
                    if k.startswith("SCHILY.xattr.")},
        )
        pax, long_name, long_link = {}, None, None
        yield entry


# ---- names: the first line of defence ------------------------------------------------------

def split_entry_name(name: str) -> tuple[str, ...]:
    """Check a member name and split it into path components under the layer root.

    Refuses absolute paths, ``..`` anywhere, NUL bytes, over-long paths and components,
    and whiteout names used as directories. ``./`` prefixes and empty components drop out,
    so ``./`` itself becomes ``()``, the root.
    """
    if not name:
        raise _refuse(name, "empty name")
    if "\0" in name:
        raise _refuse(name, "name contains a NUL byte")
    if len(name.encode("utf-8", "surrogateescape")) > PATH_MAX:
        raise _refuse(name[:64] + "…", f"path is longer than PATH_MAX ({PATH_MAX})")
    if name.startswith("/"):
        raise _refuse(name, "absolute path")
    parts = tuple(p for p in name.split("/") if p and p != ".")
    for i, part in enumerate(parts):
        if part == "..":
            raise _refuse(name, "'..' component")
        if len(part.encode("utf-8", "surrogateescape")) > NAME_MAX:
            raise _refuse(name, f"a component is longer than NAME_MAX ({NAME_MAX})")
        if part.startswith(WHITEOUT_PREFIX) and i != len(parts) - 1:
            raise _refuse(name, "a whiteout name used as a directory")
    return parts


def split_link_target(entry: TarEntry) -> tuple[str, ...]:
    """A hardlink target, as components under the layer root (a leading / means the root)."""
    target = entry.linkname.lstrip("/")
    if not target:
        raise _refuse(entry.name, "hardlink with an empty target")
    parts = split_entry_name(target)
    if not parts:
        raise _refuse(entry.name, "hardlink to the layer root")
    return parts


def whiteout_victim(name: str, base: str) -> str:
    """The name a ``.wh.<name>`` entry hides; refuses reserved and dot names."""
    if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX):
        raise _refuse(name, f"'.wh..wh.' names are reserved for the opaque marker {OPAQUE_MARKER}")
    victim = base[len(WHITEOUT_PREFIX):]
    if victim in ("", ".", ".."):
        raise _refuse(name, "whiteout of '', '.' or '..'")
    return victim


# ---- the target: directory fds opened without following symlinks ------------------------

class _Root:
    """The target directory, and a cache of directory fds opened inside it.

    Every directory is reached by ``openat(parent_fd, name, O_NOFOLLOW|O_DIRECTORY)`` from the
    root fd, one component at a time, so a symlink anywhere in a parent path is an error
    (ELOOP) instead of a way out.
    """

    def __init__(self, target: Path):
        self.fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.cache: dict[str, int] = {}
        self.first_mtimes: dict[str, int] = {"": os.fstat(self.fd).st_mtime_ns}

    def close(self) -> None:
        self.forget()
        os.close(self.fd)

    def forget(self) -> None:
        """Close every cached fd. Only call it between entries, when no caller holds one."""
        for fd in self.cache.values():
            os.close(fd)
        self.cache.clear()

    def trim(self) -> None:
        """Bound the number of open fds; called between entries."""
        if len(self.cache) >= _MAX_CACHED_DIRS:
            self.forget()

    def forget_under(self, rel: str) -> None:
        """Drop the fds of ``rel`` and everything below it, which is about to be removed.

        Callers only ever hold fds of *ancestors* of what they remove, so those stay valid.
        """
        prefix = rel + "/"
        for key in [k for k in self.cache if k == rel or k.startswith(prefix)]:
            os.close(self.cache.pop(key))

    def dir_fd(self, rel: str, *, create: bool, entry: str,
               on_nondir: Callable[[int, str, str], bool] | None = None) -> int | None:
        """The fd of directory ``rel`` (components joined by /), or None if it is missing."""
        if not rel:
            return self.fd
        fd = self.cache.get(rel)
        if fd is not None:
            return fd
        fd, done = self.fd, ""
        for part in rel.split("/"):
            done = f"{done}/{part}" if done else part
            cached = self.cache.get(done)
            if cached is not None:
                fd = cached
                continue
            child = self._open_child(fd, part, done, create=create, entry=entry, on_nondir=on_nondir)
            if child is None:
                return None
            self.cache[done] = child  # never evicted here: the caller may hold parent fds
            fd = child
        return fd

    def _open_child(self, parent: int, name: str, rel: str, *, create: bool, entry: str,
                    on_nondir: Callable[[int, str, str], bool] | None) -> int | None:
        if name in ("", ".", ".."):  # split_entry_name already refused these; never walk up
            raise _refuse(entry, f"path component {name!r}")
        try:
            fd = os.open(name, _O_DIR, dir_fd=parent)
            # Remember when an existing directory was last changed: adding or removing its
            # children must not change that, unless the layer itself lists the directory.
            self.first_mtimes.setdefault(rel, os.fstat(fd).st_mtime_ns)
            return fd
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(name, 0o755, dir_fd=parent)  # an implied parent, as tar and Docker create
            return os.open(name, _O_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            if stat.S_ISLNK(os.stat(name, dir_fd=parent, follow_symlinks=False).st_mode):
                raise _refuse(entry, f"its parent {rel!r} is a symlink, and nothing is "
                                     "written through a symlink") from None
            if on_nondir is not None and create and on_nondir(parent, name, rel):
                return os.open(name, _O_DIR, dir_fd=parent)
            raise _refuse(entry, f"its parent {rel!r} is not a directory ({exc.strerror})") from None


def _remove(parent: int, name: str, rel: str, root: _Root) -> bool:
    """Remove ``name`` (a whole tree if it is a directory) without following symlinks."""
    try:
        st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(st.st_mode):
        root.forget_under(rel)
        shutil.rmtree(name, dir_fd=parent)  # fd-based: immune to symlink swaps
    else:
        os.unlink(name, dir_fd=parent)
    return True


def _nofollow_path(parent: int, name: str) -> str:
    """A path to ``name`` in directory fd ``parent``, for calls that have no *at() form."""
    return f"/proc/self/fd/{parent}/{name}"


# ---- applying a layer ------------------------------------------------------------------

class _Applier:
    """Applies the entries of one layer tar to a target, in flatten or overlay mode."""

    def __init__(self, target: Path, mode: Mode):
        self.root = _Root(target)
        self.mode = mode
        self.in_layer: set[str] = set()       # paths this tar created (and their parents)
        self.whiteouts: set[str] = set()      # overlay mode: 0/0 devices this tar created
        self.dir_mtimes: dict[str, int] = {}  # set last: creating children bumps a dir's mtime
        self.files = 0
        self.bytes = 0

    def close(self) -> None:
        self.root.close()

    # -- bookkeeping
    def _mark(self, rel: str) -> None:
        while rel and rel not in self.in_layer:
            self.in_layer.add(rel)
            rel = rel.rpartition("/")[0]

    def _parent(self, rel: str, entry: TarEntry, *, create: bool = True) -> int | None:
        return self.root.dir_fd(rel, create=create, entry=entry.name, on_nondir=self._replace_whiteout)

    def _replace_whiteout(self, parent: int, name: str, rel: str) -> bool:
        """overlay mode: a directory that this tar whited out and then fills becomes opaque."""
        if rel not in self.whiteouts:
            return False
        os.unlink(name, dir_fd=parent)
        os.mkdir(name, 0o755, dir_fd=parent)
        fd = os.open(name, _O_DIR, dir_fd=parent)
        try:
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self.whiteouts.discard(rel)
        return True

    # -- the main loop
    def apply(self, stream: BinaryIO) -> None:
        for entry in read_tar_entries(stream):
            try:
                self.apply_entry(entry, stream)
            except LayerError:
                raise
            except OSError as exc:
                raise LayerError(f"layer entry {entry.name!r} could not be written: {exc.strerror}; "
                                 "check free space and that the target is a local, writable "
                                 "filesystem") from None
            self.files += 1
        self.set_dir_mtimes()

    def apply_entry(self, entry: TarEntry, stream: BinaryIO) -> None:
        parts = split_entry_name(entry.name)
        if not parts:
            return self._apply_root(entry, stream)
        base = parts[-1]
        parent_rel = "/".join(parts[:-1])
        rel = f"{parent_rel}/{base}" if parent_rel else base
        self.root.trim()
        if base == OPAQUE_MARKER:
            _skip(stream, entry)
            return self._opaque(parent_rel, entry)
        if base.startswith(WHITEOUT_PREFIX):
            victim = whiteout_victim(entry.name, base)
            _skip(stream, entry)
            return self._whiteout(parent_rel, victim, entry)
        if entry.type == tarfile.LNKTYPE:
            link_parts = split_link_target(entry)  # checked before anything is created
        parent = self._parent(parent_rel, entry)
        assert parent is not None
        self._mark(rel)
        kind = entry.type
        if kind in _REGULAR:
            self._file(parent, base, rel, entry, stream)
        elif kind == tarfile.DIRTYPE:
            self._directory(parent, base, rel, entry)
        elif kind == tarfile.SYMTYPE:
            self._symlink(parent, base, rel, entry)
        elif kind == tarfile.LNKTYPE:
            self._hardlink(parent, base, rel, link_parts, entry)
        elif kind in (tarfile.CHRTYPE, tarfile.BLKTYPE, tarfile.FIFOTYPE):
            self._device(parent, base, rel, entry)
        else:
            raise _refuse(entry.name, f"unsupported tar entry type {kind!r}")

    # -- one function per entry type
    def _file(self, parent: int, name: str, rel: str, entry: TarEntry, stream: BinaryIO) -> None:
        # O_CREAT|O_EXCL|O_NOFOLLOW: always a new inode, never an existing file or a symlink.
        try:
            fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=parent)
        except FileExistsError:
            _remove(parent, name, rel, self.root)  # a later entry replaces an earlier one
            fd = os.open(name, _O_NEWFILE, 0o600, dir_fd=parent)
        try:
            _copy_data(stream, fd, entry)
            os.fchown(fd, entry.uid, entry.gid)
            os.fchmod(fd, entry.mode)  # after chown, which clears setuid bits
            _set_xattrs(fd, entry)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(fd)
        self.bytes += entry.size

    def _directory(self, parent: int, name: str, rel: str, entry: TarEntry) -> None:
        try:
            os.mkdir(name, 0o700, dir_fd=parent)
        except FileExistsError:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):  # a dir replaces a file or symlink; dirs merge
                os.unlink(name, dir_fd=parent)
                os.mkdir(name, 0o700, dir_fd=parent)
                if rel in self.whiteouts:
                    self.whiteouts.discard(rel)
                    os.setxattr(_nofollow_path(parent, name), OVERLAY_OPAQUE_XATTR, b"y",
                                follow_symlinks=False)
        fd = self._parent(rel, entry)
        assert fd is not None
        os.fchown(fd, entry.uid, entry.gid)
        os.fchmod(fd, entry.mode)
        _set_xattrs(fd, entry)
        self.dir_mtimes[rel] = entry.mtime_ns

    def _symlink(self, parent: int, name: str, rel: str, entry: TarEntry) -> None:
        # The target is stored verbatim: absolute and dangling symlinks are legal in images.
        if "\0" in entry.linkname or len(entry.linkname.encode("utf-8", "surrogateescape")) >= PATH_MAX:
            raise _refuse(entry.name, "symlink target has a NUL byte or is longer than PATH_MAX")
        try:
            os.symlink(entry.linkname, name, dir_fd=parent)
        except FileExistsError:
            _remove(parent, name, rel, self.root)
            os.symlink(entry.linkname, name, dir_fd=parent)
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        _set_xattrs(_nofollow_path(parent, name), entry)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _hardlink(self, parent: int, name: str, rel: str, target: tuple[str, ...],
                  entry: TarEntry) -> None:
        # The link target is resolved like any entry name: inside the root, no symlinked parents.
        target_dir = "/".join(target[:-1])
        missing = _refuse(entry.name, f"hardlink target {entry.linkname!r} is not in this layer "
                                      "or the layers below it")
        source_dir = self._parent(target_dir, entry, create=False)
        if source_dir is None:
            raise missing
        try:
            source = os.stat(target[-1], dir_fd=source_dir, follow_symlinks=False)
        except FileNotFoundError:
            raise missing from None
        if stat.S_ISDIR(source.st_mode):
            raise _refuse(entry.name, "hardlink to a directory")
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None:
            if (existing.st_dev, existing.st_ino) == (source.st_dev, source.st_ino):
                return  # already the same inode
            _remove(parent, name, rel, self.root)
            source_dir = self._parent(target_dir, entry, create=False)  # it may have gone too
            if source_dir is None:
                raise missing
        # linkat without AT_SYMLINK_FOLLOW: a link to a symlink links the symlink itself.
        try:
            os.link(target[-1], name, src_dir_fd=source_dir, dst_dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            raise missing from None

    def _device(self, parent: int, name: str, rel: str, entry: TarEntry) -> None:
        kind = {tarfile.CHRTYPE: stat.S_IFCHR, tarfile.BLKTYPE: stat.S_IFBLK,
                tarfile.FIFOTYPE: stat.S_IFIFO}[entry.type]
        device = os.makedev(entry.devmajor, entry.devminor) if kind != stat.S_IFIFO else 0
        try:
            os.mknod(name, kind | 0o600, device, dir_fd=parent)
        except FileExistsError:
            _remove(parent, name, rel, self.root)
            os.mknod(name, kind | 0o600, device, dir_fd=parent)
        os.chown(name, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
        # chmod has no working no-follow *at() form on Linux: go through an O_PATH fd of the
        # node itself, so even a swapped-in symlink could only ever be chmod-ed, not followed.
        node = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            os.chmod(f"/proc/self/fd/{node}", entry.mode)
        finally:
            os.close(node)
        _set_xattrs(_nofollow_path(parent, name), entry)
        os.utime(name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=parent, follow_symlinks=False)

    def _apply_root(self, entry: TarEntry, stream: BinaryIO) -> None:
        if entry.type != tarfile.DIRTYPE:
            raise _refuse(entry.name, "the layer root must be a directory")
        os.fchown(self.root.fd, entry.uid, entry.gid)
        os.fchmod(self.root.fd, entry.mode)
        _set_xattrs(self.root.fd, entry)
        self.dir_mtimes[""] = entry.mtime_ns

    # -- whiteouts
    def _whiteout(self, parent_rel: str, victim: str, entry: TarEntry) -> None:
        rel = f"{parent_rel}/{victim}" if parent_rel else victim
        overlay = self.mode == "overlay"
        parent = self._parent(parent_rel, entry, create=overlay)
        if parent is None:
            return  # flatten: nothing below to hide
        if rel in self.in_layer:
            # A whiteout never hides an entry of its own layer; on a directory it still
            # hides what the lower layers put inside, which is exactly an opaque directory.
            try:
                is_dir = stat.S_ISDIR(os.stat(victim, dir_fd=parent, follow_symlinks=False).st_mode)
            except FileNotFoundError:
                return
            if is_dir:
                self._opaque(rel, entry)
            return
        if overlay:
            _remove(parent, victim, rel, self.root)
            os.mknod(victim, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)  # overlayfs whiteout
            os.chown(victim, entry.uid, entry.gid, dir_fd=parent, follow_symlinks=False)
            self.whiteouts.add(rel)
        else:
            _remove(parent, victim, rel, self.root)

    def _opaque(self, dir_rel: str, entry: TarEntry) -> None:
        fd = self._parent(dir_rel, entry)
        assert fd is not None
        self._mark(dir_rel)
        if self.mode == "overlay":
            os.setxattr(fd, OVERLAY_OPAQUE_XATTR, b"y")
        else:
            self._remove_lower_entries(fd, dir_rel)

    def _remove_lower_entries(self, fd: int, dir_rel: str) -> None:
        """flatten: delete everything under a directory that this layer did not create."""
        with os.scandir(fd) as it:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        for name, is_dir in children:
            rel = f"{dir_rel}/{name}" if dir_rel else name
            if rel not in self.in_layer:
                _remove(fd, name, rel, self.root)
            elif is_dir:
                child = os.open(name, _O_DIR, dir_fd=fd)
                try:
                    self._remove_lower_entries(child, rel)
                finally:
                    os.close(child)

    def set_dir_mtimes(self) -> None:
        """Give each directory the mtime its tar entry names or, for a directory the layer
        only changed inside, the mtime it had before (as umoci does)."""
        wanted = {**self.root.first_mtimes, **self.dir_mtimes}
        for rel, mtime_ns in wanted.items():
            self.root.trim()
            try:
                fd = self.root.dir_fd(rel, create=False, entry=rel)
            except LayerError:
                continue  # replaced by a non-directory later in the tar
            if fd is not None:
                os.utime(fd, ns=(mtime_ns, mtime_ns))


def _skip(stream: BinaryIO, entry: TarEntry) -> None:
    if entry.size:
        _read_exact(stream, entry.size + _padding(entry.size), entry.name)


def _copy_data(stream: BinaryIO, fd: int, entry: TarEntry) -> None:
    """Copy an entry's bytes to ``fd``; small files take one read and one write."""
    remaining = entry.size
    if remaining + _padding(remaining) <= _CHUNK:
        data = _read_exact(stream, remaining + _padding(remaining), entry.name)
        _write_all(fd, memoryview(data)[:remaining])
        return
    while remaining:
        data = _read_exact(stream, min(remaining, _CHUNK), entry.name)
        _write_all(fd, memoryview(data))
        remaining -= len(data)
    _read_exact(stream, _padding(entry.size), entry.name)


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _set_xattrs(where: int | str, entry: TarEntry) -> None:
    """Set the entry's SCHILY.xattr.* records, never overlayfs's own trusted.overlay.*."""
    for name, value in entry.xattrs.items():
        if name.startswith("trusted.overlay."):
            continue  # forging these would rewrite how overlayfs reads the layer stack
        try:
            if isinstance(where, int):
                os.setxattr(where, name, value)  # fsetxattr: the fd is the inode itself
            else:
                os.setxattr(where, name, value, follow_symlinks=False)
        except OSError as exc:
            # A filesystem without that xattr namespace (say security.selinux): skip it,
            # as umoci and Docker do.
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise


def _short(digest: str) -> str:
    algo, _, hexpart = digest.partition(":")
    return f"{algo}:{hexpart[:12]}…" if hexpart else digest


def _blob_label(blob_path: Path, digest: str | None) -> str:
    if digest:
        return _short(digest)
    if len(blob_path.name) == 64 and all(c in "0123456789abcdef" for c in blob_path.name):
        return _short(f"sha256:{blob_path.name}")  # blobs/sha256/<hex> in an OCI layout
    return str(blob_path)


_TAR_FLAGS = {"gzip": "-xzf", "zstd": "--zstd -xf", "none": "-xf"}


def apply_layer(blob_path: Path | str, target: Path | str, *, media_type: str | None = None,
                digest: str | None = None, diff_id: str | None = None,
                mode: Mode = "flatten", budget: UnpackBudget | None = None) -> LayerResult:
    """Untar one image layer into ``target``, turning OCI whiteouts into deletions
    (flatten) or overlayfs whiteouts (overlay), and check both of its digests.

    The uncompressed bytes count against ``budget`` (one image's MINICONTAINER_MAX_IMAGE_SIZE)."""
    if mode not in ("flatten", "overlay"):
        raise InvalidArgument(f"layer apply mode must be 'flatten' or 'overlay', not {mode!r}")
    blob_path, target = Path(blob_path), Path(target)
    try:
        compression = compression_for(blob_path, media_type)
    except FileNotFoundError:
        if not is_planning():
            raise LayerError(f"layer blob {blob_path} does not exist: pull the image again") from None
        compression = "none"
    why = ("unpack one layer onto the rootfs; .wh.* entries delete what lower layers added"
           if mode == "flatten" else
           "unpack one layer into its own dir, an overlayfs lowerdir; .wh.* entries become "
           "overlayfs whiteouts (char 0/0) and opaque dirs (trusted.overlay.opaque=y)")
    step = Step(name="apply_layer",
                call=f"untar {_blob_label(blob_path, digest)} ({compression}) into {target}",
                shell=f"tar {_TAR_FLAGS[compression]} {blob_path} -C {target}", why=why)
    outcome: list[LayerResult] = []
    step.do(_apply_layer, blob_path, target, compression, digest, diff_id, mode, outcome, budget,
            evidence=lambda: {"files": str(outcome[0].files)})
    if not outcome:  # planning: nothing was read
        return LayerResult(digest=digest or "", diff_id=diff_id or "", files=0, bytes=0)
    return outcome[0]


def _apply_layer(blob_path: Path, target: Path, compression: Compression, digest: str | None,
                 diff_id: str | None, mode: Mode, outcome: list[LayerResult], budget: UnpackBudget | None) -> str:
    algorithm = (digest or diff_id or "sha256:").partition(":")[0]
    if algorithm not in ("sha256", "sha512"):
        raise LayerError(f"unsupported digest algorithm {algorithm!r}: use sha256 or sha512")
    target.mkdir(parents=True, exist_ok=True)
    layer = _LayerStream(blob_path, compression, algorithm, budget)
    applier = _Applier(target, mode)
    try:
        applier.apply(layer.reader)
        layer.drain()
    finally:
        applier.close()
        layer.close()
    got_digest, got_diff_id = layer.digests()
    _check_digest("digest (sha256 of the compressed blob)", blob_path, digest, got_digest)
    _check_digest("diff_id (sha256 of the uncompressed tar)", blob_path, diff_id, got_diff_id)
    outcome.append(LayerResult(digest=got_digest, diff_id=got_diff_id,
                               files=applier.files, bytes=applier.bytes))
    return f"{applier.files} entries, diff_id {_short(got_diff_id)}"


def _check_digest(what: str, blob_path: Path, expected: str | None, got: str) -> None:
    if expected is not None and expected != got:
        raise LayerError(f"layer {blob_path.name} {what} mismatch: expected {expected}, got {got}; "
                         "the blob is corrupt or was tampered with: delete it and pull the image again")


def unpack_layer(blob_path: Path | str, dest: Path | str, *, media_type: str | None = None,
                 digest: str | None = None, diff_id: str | None = None,
                 mode: Mode = "overlay", budget: UnpackBudget | None = None) -> LayerResult:
    """Unpack a layer into its own directory exactly once: into a temp dir, then rename;
    a layer that fails (a bad digest, a blown ``budget``) leaves nothing behind."""
    blob_path, dest = Path(blob_path), Path(dest)
    if os.path.lexists(dest):
        return LayerResult(digest=digest or "", diff_id=diff_id or "", files=0, bytes=0)
    if is_planning():
        result = apply_layer(blob_path, dest, media_type=media_type, digest=digest,
                             diff_id=diff_id, mode=mode, budget=budget)
        _rename_step(dest.with_name(f".{dest.name}.unpacking-…"), dest)
        return result
    dest.parent.mkdir(parents=True, exist_ok=True)
    # A crash leaves only this dot-named temp dir behind, never a dest that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.unpacking-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a layer without a ./ entry keeps 0755
        result = apply_layer(blob_path, tmp, media_type=media_type, digest=digest,
                             diff_id=diff_id, mode=mode, budget=budget)
        _syncfs(tmp)  # the contents must be durable before the name says "complete"
        try:
            _rename_step(tmp, dest)
        except OSError:
            if not os.path.isdir(dest):
                raise
            # Another unpacker of the same layer won the race: theirs is as good as ours.
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return result


def _rename_step(tmp: Path, dest: Path) -> None:
    Step(name="rename", call=f"rename({tmp}, {dest})", shell=f"mv {tmp} {dest}",
         why="publish the unpacked layer atomically: a crash leaves a temp dir, "
             "never a half layer under its final name").do(os.rename, tmp, dest)


def _syncfs(path: Path) -> None:
    """Flush the filesystem holding ``path`` (one syncfs(2) instead of an fsync per file)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)


# ---- diffing: an overlay upper dir back into a layer tar --------------------------------

class _HashingWriter(io.RawIOBase):
    """Pass written bytes through to ``raw`` while feeding them to a hash."""

    def __init__(self, raw, hasher: "hashlib._Hash"):
        self.raw, self.hasher = raw, hasher

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.hasher.update(b)
        self.raw.write(b)
        return len(b)


class _GzipWriter(io.RawIOBase):
    """Deflate into a single gzip member (zlib with wbits=31 writes a fixed, mtime-0 header)."""

    def __init__(self, raw):
        self.raw = raw
        self.deflater = zlib.compressobj(6, zlib.DEFLATED, 31)

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[override]
        self.raw.write(self.deflater.compress(b))
        return len(b)

    def finish(self) -> None:
        self.raw.write(self.deflater.flush())


def diff_layer(upper: Path | str, out_path: Path | str, *,
               compression: Compression = "gzip") -> LayerResult:
    """Write an overlay upper dir as an OCI layer tar: 0/0 char devices become ``.wh.<name>``
    and opaque dirs get a ``.wh..wh..opq`` entry."""
    if compression not in ("gzip", "zstd", "none"):
        raise InvalidArgument(f"layer compression must be gzip, zstd or none, not {compression!r}")
    upper, out_path = Path(upper), Path(out_path)
    flags = {"gzip": "-czf", "zstd": "--zstd -cf", "none": "-cf"}[compression]
    step = Step(name="diff_layer", call=f"tar the overlay upper dir {upper} into {out_path} ({compression})",
                shell=f"tar {flags} {out_path} -C {upper} .",
                why="a container's changes are exactly its overlayfs upper dir; overlayfs "
                    "whiteouts and opaque dirs are rewritten as OCI .wh.* entries")
    outcome: list[LayerResult] = []
    step.do(_diff_layer, upper, out_path, compression, outcome,
            evidence=lambda: {"files": str(outcome[0].files), "diff_id": outcome[0].diff_id})
    if not outcome:
        return LayerResult(digest="", diff_id="", files=0, bytes=0)
    return outcome[0]


def _diff_layer(upper: Path, out_path: Path, compression: Compression,
                outcome: list[LayerResult]) -> str:
    if not upper.is_dir():
        raise LayerError(f"overlay upper dir {upper} does not exist: was the container created?")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out_path.name}.", dir=out_path.parent)
    blob_hash, tar_hash = hashlib.sha256(), hashlib.sha256()
    try:
        with os.fdopen(fd, "wb", buffering=_CHUNK) as f:
            blob = _HashingWriter(f, blob_hash)
            compressor = None
            if compression == "gzip":
                compressor = _GzipWriter(blob)
                sink = compressor
            elif compression == "zstd":
                compressor = zstandard.ZstdCompressor(level=3).stream_writer(blob, closefd=False)
                sink = compressor
            else:
                sink = blob
                tar_hash = blob_hash
            tar_out = _HashingWriter(sink, tar_hash) if compression != "none" else sink
            counts = _write_upper_tar(upper, tar_out)
            if isinstance(compressor, _GzipWriter):
                compressor.finish()
            elif compressor is not None:
                compressor.flush(zstandard.FLUSH_FRAME)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp_name, out_path)
    except BaseException:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
        raise
    result = LayerResult(digest=f"sha256:{blob_hash.hexdigest()}",
                         diff_id=f"sha256:{tar_hash.hexdigest()}", files=counts[0], bytes=counts[1])
    outcome.append(result)
    return f"{result.files} entries, digest {_short(result.digest)}"


def _write_upper_tar(upper: Path, out) -> tuple[int, int]:
    """Walk ``upper`` in sorted order and write each entry as a PAX tar member."""
    # Default bufsize: tarfile's stream writer re-copies its whole buffer on every write.
    tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT)
    seen_inodes: dict[tuple[int, int], str] = {}
    files = size = 0
    for rel, st, xattrs, opaque in _walk_upper(upper):
        path = upper / rel
        parent, _, name = rel.rpartition("/")
        info = tarfile.TarInfo(rel)
        info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        info.mtime = int(st.st_mtime)
        info.pax_headers = {f"SCHILY.xattr.{k}": v.decode("utf-8", "surrogateescape")
                            for k, v in xattrs.items()}
        data = None
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            # overlayfs whiteout (char 0/0) -> OCI whiteout file
            info = tarfile.TarInfo(f"{parent}/{WHITEOUT_PREFIX}{name}" if parent else WHITEOUT_PREFIX + name)
            info.mode, info.uid, info.gid, info.mtime = 0o600, st.st_uid, st.st_gid, int(st.st_mtime)
        elif stat.S_ISDIR(st.st_mode):
            info.type = tarfile.DIRTYPE
        elif stat.S_ISLNK(st.st_mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
        elif stat.S_ISREG(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if st.st_nlink > 1 and key in seen_inodes:
                info.type, info.linkname = tarfile.LNKTYPE, seen_inodes[key]
            else:
                if st.st_nlink > 1:
                    seen_inodes[key] = rel
                info.size = st.st_size
                data = path
        elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(st.st_mode):
            info.type = tarfile.FIFOTYPE
        else:
            continue  # sockets cannot be stored in a tar (Docker skips them too)
        if data is not None:
            with open(data, "rb") as f:
                tar.addfile(info, f)
            size += info.size
        else:
            tar.addfile(info)
        files += 1
        if opaque:  # overlayfs opaque dir -> the dir entry, then its OCI opaque marker
            marker = tarfile.TarInfo(f"{rel}/{OPAQUE_MARKER}")
            marker.mode, marker.uid, marker.gid, marker.mtime = 0o600, st.st_uid, st.st_gid, int(st.st_mtime)
            tar.addfile(marker)
            files += 1
    tar.close()
    return files, size


def _walk_upper(upper: Path, rel: str = "") -> Iterator[tuple[str, os.stat_result, dict[str, bytes], bool]]:
    """Yield (relative path, lstat, xattrs, opaque?) depth-first in sorted order: a stable tar."""
    with os.scandir(upper / rel if rel else upper) as it:
        names = sorted(e.name for e in it)
    for name in names:
        child = f"{rel}/{name}" if rel else name
        path = upper / child
        st = os.lstat(path)
        xattrs = _read_xattrs(path)
        if "trusted.overlay.redirect" in xattrs or "trusted.overlay.metacopy" in xattrs:
            raise LayerError(f"{path} uses overlayfs redirect_dir or metacopy, which a layer "
                             "cannot express: mount the overlay with redirect_dir=off,metacopy=off")
        opaque = stat.S_ISDIR(st.st_mode) and xattrs.get(OVERLAY_OPAQUE_XATTR) == b"y"
        yield child, st, {k: v for k, v in xattrs.items() if not k.startswith("trusted.overlay.")}, opaque
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_upper(upper, child)


def _read_xattrs(path: Path) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {n: os.getxattr(path, n, follow_symlinks=False) for n in sorted(names)}
