"""Shared pieces of the image and registry benchmarks: a generated test image, the peer
programs they are compared with (docker-registry, skopeo, umoci), and the result table.

Not a benchmark itself; ``unpack.py``, ``registry_server.py`` and ``registry_client.py``
import it. Everything it makes lives under a temp dir the caller removes.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def _use_the_venv() -> None:
    """Re-run the script under the project's venv when this interpreter lacks its
    dependencies, so `bench/unpack.py` works as well as `.venv/bin/python bench/unpack.py`."""
    try:
        import httpx, zstandard  # noqa: F401
    except ImportError:
        venv = REPO / ".venv" / "bin" / "python"
        if venv.exists() and Path(sys.executable) != venv:
            os.execv(venv, [str(venv), *sys.argv])
        raise


_use_the_venv()

from minicontainer.image.store import (OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST,  # noqa: E402
                                       ImageStore, sha256_digest)

# The ref.name annotation ImageStore writes: the full normalized reference. umoci 0.4.7
# (`--image <layout>:<ref>`) and skopeo 1.9 (`oci:<layout>:<ref>`) both accept it as the tag.
IMAGE_REF = "docker.io/library/benchimg:latest"
MTIME = 1_700_000_000                             # every tar entry: a reproducible image


# ---- a generated multi-layer image ---------------------------------------------------

@dataclass
class BenchImage:
    """The generated image: its store, manifest digest and a few sizes for the header line."""

    store: ImageStore
    manifest_digest: str
    layers: list[dict]          # manifest layer descriptors, bottom first
    diff_ids: list[str]
    tar_entries: int            # entries over all layer tars (whiteouts and dirs included)
    uncompressed: int           # bytes of all layer tars
    compressed: int             # bytes of all layer blobs

    @property
    def layout(self) -> Path:
        return self.store.layout

    def describe(self) -> str:
        return (f"image: {len(self.layers)} gzip layers, {self.tar_entries} tar entries, "
                f"{self.uncompressed / 1e6:.0f} MB uncompressed, {self.compressed / 1e6:.0f} MB compressed")


class _LayerTar:
    """One layer tar being written in memory: dir entries appear before their contents."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.tar = tarfile.open(fileobj=self.buf, mode="w", format=tarfile.PAX_FORMAT)
        self.dirs: set[str] = set()
        self.entries = 0

    def _info(self, name: str, kind: bytes, mode: int) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.mtime = kind, mode, MTIME
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    def _parents(self, name: str) -> None:
        parts = name.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                self.tar.addfile(self._info(d, tarfile.DIRTYPE, 0o755))
                self.entries += 1

    def directory(self, name: str) -> None:
        self._parents(name + "/x")

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._parents(name)
        info = self._info(name, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.tar.addfile(info, io.BytesIO(data))
        self.entries += 1

    def symlink(self, name: str, target: str) -> None:
        self._parents(name)
        info = self._info(name, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.tar.addfile(info)
        self.entries += 1

    def hardlink(self, name: str, target: str) -> None:
        self._parents(name)
        info = self._info(name, tarfile.LNKTYPE, 0o644)
        info.linkname = target
        self.tar.addfile(info)
        self.entries += 1

    def marker(self, name: str) -> None:
        """An empty regular file: how OCI spells a whiteout (.wh.x) or an opaque dir (.wh..wh..opq)."""
        self.file(name, b"", 0o600)

    def finish(self) -> bytes:
        self.tar.close()
        return self.buf.getvalue()


class _Text:
    """Deterministic text-like file contents, cut from one seeded pool of words."""

    WORDS = ("container namespace cgroup overlay layer image registry manifest digest blob "
             "config kernel mount pivot root process signal socket bridge veth route "
             "tar gzip whiteout opaque upper lower work merged bundle runtime").split()

    def __init__(self, rng: random.Random, size: int = 1 << 20):
        words = [rng.choice(self.WORDS) for _ in range(size // 6)]
        lines, line = [], []
        for w in words:
            line.append(w)
            if len(line) >= rng.randint(6, 14):
                lines.append(" ".join(line))
                line = []
        self.pool = ("\n".join(lines) + "\n").encode()
        self.rng = rng

    def size(self) -> int:
        """File sizes skewed small, like a distro tree: most under 2 KB, a few up to 32 KB."""
        r = self.rng.random()
        if r < 0.05:
            return 0
        if r < 0.80:
            return self.rng.randint(16, 2048)
        if r < 0.97:
            return self.rng.randint(2048, 8192)
        return self.rng.randint(8192, 32768)

    def content(self, name: str) -> bytes:
        n = self.size()
        start = self.rng.randrange(0, len(self.pool) - n - 1)
        return (f"# {name}\n".encode() + self.pool[start:start + n])[:max(n, 1)] if n else b""


def _tree_paths(rng: random.Random, top: str, count: int, fanout: int = 20) -> list[str]:
    """``count`` file paths nested three deep under ``top``: top/aNN/bNN/file-N.ext."""
    exts = (".txt", ".conf", ".py", ".h", ".md", "")
    paths = []
    for i in range(count):
        a, b = rng.randrange(fanout), rng.randrange(fanout // 2)
        paths.append(f"{top}/a{a:02d}/b{b:02d}/file-{i:05d}{rng.choice(exts)}")
    return paths


def _layers(seed: int, big_mb: int) -> list[bytes]:
    """The layer tars, bottom first: three trees of text files, a change layer with
    whiteouts and an opaque dir, and a layer of large random (incompressible) files."""
    rng = random.Random(seed)
    text = _Text(rng)
    tars: list[bytes] = []

    base = _LayerTar()                                # 1: a distro-like base tree
    base_files = _tree_paths(rng, "usr/lib", 8000)
    for p in base_files:
        base.file(p, text.content(p))
    for i in range(300):
        base.file(f"etc/conf.d/service-{i:03d}.conf", text.content("etc"))
    base.file("etc/removed.conf", b"whited out by layer 4\n")
    for i in range(400):
        base.file(f"opt/old/lib/part-{i:03d}.txt", text.content("opt"))      # whole dir whited out later
    for i in range(300):
        base.file(f"var/cache/app/entry-{i:03d}.bin", text.content("cache"))  # made opaque later
    base.file("bin/busybox-ish", text.content("bin"), 0o755)
    tars.append(base.finish())

    share = _LayerTar()                               # 2: more files, symlinks, hardlinks
    share_files = _tree_paths(rng, "usr/share", 5500)
    for p in share_files:
        share.file(p, text.content(p))
    for i in range(500):
        share.symlink(f"usr/bin/tool-{i:03d}", f"../share/{share_files[i].split('/', 2)[2]}")
    for i in range(500):
        share.hardlink(f"usr/share/links/hard-{i:03d}", share_files[1000 + i])
    tars.append(share.finish())

    app = _LayerTar()                                 # 3: an application tree, some overwrites
    for p in _tree_paths(rng, "srv/app", 4500):
        app.file(p, text.content(p))
    for p in rng.sample(base_files, 300):
        app.file(p, b"overwritten in layer 3\n" + text.content(p))
    tars.append(app.finish())

    change = _LayerTar()                              # 4: deletions and an opaque dir
    change.marker("etc/.wh.removed.conf")
    change.marker("opt/.wh.old")
    for p in rng.sample(base_files, 100):
        d, _, f = p.rpartition("/")
        change.marker(f"{d}/.wh.{f}")
    change.directory("var/cache/app")
    change.marker("var/cache/app/.wh..wh..opq")
    for i in range(50):
        change.file(f"var/cache/app/fresh-{i:02d}.bin", text.content("fresh"))
    for p in _tree_paths(rng, "home/user", 1000):
        change.file(p, text.content(p))
    tars.append(change.finish())

    data = _LayerTar()                                # 5: byte volume
    per_file = 10 << 20
    for i in range(max(1, big_mb // 10)):
        data.file(f"data/blob-{i:02d}.bin", rng.randbytes(per_file))
    tars.append(data.finish())
    return tars


def build_image(root: Path, *, seed: int = 20240601, big_mb: int = 40) -> BenchImage:
    """Write the generated image into an ImageStore at ``root``: layers, config, manifest,
    tagged IMAGE_REF as the engine tags what it pulls."""
    store = ImageStore(root)
    layers, diff_ids, entries, raw, packed = [], [], 0, 0, 0
    for tar in _layers(seed, big_mb):
        blob = gzip.compress(tar, compresslevel=6, mtime=0)   # level 6: what Go's gzip (docker) uses
        digest = store.write_blob(blob)
        layers.append({"mediaType": OCI_LAYER_GZIP, "digest": digest, "size": len(blob)})
        diff_ids.append(sha256_digest(tar))
        entries += _count_entries(tar)
        raw += len(tar)
        packed += len(blob)
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "created": "2023-11-14T22:13:20Z",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/local/bin:/usr/bin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created": "2023-11-14T22:13:20Z", "created_by": f"bench layer {i + 1}"}
                    for i in range(len(layers))],
    }, sort_keys=True).encode()
    config_digest = store.write_blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config)},
        "layers": layers,
    }).encode()
    manifest_digest = store.write_blob(manifest)
    desc = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest)}
    store.tag(IMAGE_REF, desc)
    return BenchImage(store, manifest_digest, layers, diff_ids, entries, raw, packed)


def _count_entries(tar: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        return sum(1 for _ in t)


def count_tree(path: Path) -> int:
    """Every entry under ``path`` (files, dirs, symlinks), not following symlinks."""
    n = 0
    for _, dirs, files in os.walk(path):
        n += len(dirs) + len(files)
    return n


# ---- peer programs -------------------------------------------------------------------

def have(program: str) -> bool:
    return shutil.which(program) is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_registry(url: str, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """Poll ``<url>/v2/`` until the registry answers (any HTTP status counts as up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"registry at {url} exited with status {proc.returncode} before answering")
        try:
            urllib.request.urlopen(f"{url}/v2/", timeout=1).close()
            return
        except urllib.error.HTTPError:
            return   # 401 and friends: it is up
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"registry at {url} did not answer /v2/ within {timeout:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def docker_registry(storage: Path) -> Iterator[str]:
    """Debian's docker-registry (distribution 2.8) on 127.0.0.1, storing under ``storage``;
    yields its host:port and always terminates it."""
    storage.mkdir(parents=True, exist_ok=True)
    port = free_port()
    config = storage.parent / f"{storage.name}.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", str(config)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_registry(f"http://127.0.0.1:{port}", proc)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)
        config.unlink(missing_ok=True)


@contextmanager
def our_registry(storage: Path) -> Iterator[str]:
    """minicontainer's registry server as its own process (``minicontainer registry serve``),
    deployed the way docker-registry is; yields its host:port and always stops it."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "minicontainer", "registry", "serve", "--quiet",
                             "--addr", f"127.0.0.1:{port}", "--root", str(storage)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_registry(f"http://127.0.0.1:{port}", proc)
        yield f"127.0.0.1:{port}"
    finally:
        _stop(proc)


def skopeo(*args: str) -> None:
    """Run skopeo with the permissive policy (local test images carry no signatures)."""
    out = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"skopeo {' '.join(args)} failed: {out.stderr.strip()}")


# ---- timing and the table ------------------------------------------------------------

def timed(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def p90(xs: list[float]) -> float:
    """The 90th percentile by nearest rank (with 5 runs: the slowest)."""
    s = sorted(xs)
    return s[max(0, -(-len(s) * 9 // 10) - 1)]


def print_table(title: str, rows: list[tuple[str, list[float], str | None]],
                ratio_label: str) -> None:
    """rows: (name, samples in seconds, name of the row its ratio is taken against or None)."""
    medians = {name: statistics.median(xs) for name, xs, _ in rows}
    width = max(len(name) for name, _, _ in rows) + 2
    print(f"\n{title}")
    print(f"{'name':<{width}} {'median s':>9} {'p90 s':>8} {'ratio':>7}  {ratio_label}")
    for name, xs, base in rows:
        ratio = f"{medians[name] / medians[base]:.2f}x" if base else "-"
        note = f"vs {base}" if base and base != name else ""
        print(f"{name:<{width}} {medians[name]:9.3f} {p90(xs):8.3f} {ratio:>7}  {note}")
