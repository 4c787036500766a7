"""The registry client against hostile servers on 127.0.0.1 (issue 11).

Each server here is a small http.server that plays a registry and then misbehaves: a
300 MB manifest, a 400 MB config, a layer that never ends, sizes that lie, answers that
trickle one byte every two seconds, a connection reset in the middle of a push. The pull
or push runs as the real CLI in a child process, so that its peak memory (the kernel's
ru_maxrss for that child, from wait4) and its stderr are what a user would get: one line,
a non-zero exit, and never more than 100 MB of memory.
"""
from __future__ import annotations

import gzip
import hashlib
import http.server
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest

from minicontainer.errors import RegistryError
from minicontainer.image.store import OCI_MANIFEST, ImageStore, host_platform
from minicontainer.registry import client
from minicontainer.registry.client import pull
from test_registry_client import _reply as reply   # one answer, as the client tests' stubs give it

CLI = [sys.executable, "-m", "minicontainer"]
RSS_LIMIT_MB = 100
CHUNK = 64 << 10


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def small_image() -> tuple[bytes, bytes, bytes]:
    """(manifest, config, layer) of a valid one-layer image for this host."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        data = b"hello from a hostile registry\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = buf.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    os_name, arch = host_platform().split("/")
    config = json.dumps({"os": os_name, "architecture": arch, "config": {"Cmd": ["cat", "/hello.txt"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar_bytes)]}}).encode()
    return manifest_for(config, [layer]), config, layer


def manifest_for(config: bytes, layers: list[bytes], *, config_size: int | None = None,
                 layer_sizes: list[int] | None = None) -> bytes:
    sizes = layer_sizes or [len(layer) for layer in layers]
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config),
                   "size": len(config) if config_size is None else config_size},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha(layer), "size": size}
                   for layer, size in zip(layers, sizes)]}).encode()


# ---- a registry that misbehaves on demand --------------------------------------------------------

@dataclass
class Registry:
    """What the stub serves: a manifest for tag 1, blobs by digest, and per-path misbehaviour."""

    manifest: bytes
    blobs: dict[str, bytes]
    special: dict[str, Callable] = field(default_factory=dict)   # path suffix -> handler(h)
    requests: list[tuple[str, str]] = field(default_factory=list)


class HostileServer:
    """A threaded http.server on 127.0.0.1 playing ``registry``; every request is logged."""

    def __init__(self, registry: Registry):
        self.registry = registry
        served = registry

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_any(self):
                served.requests.append((self.command, self.path))
                try:
                    for suffix, special in served.special.items():
                        if self.path.endswith(suffix):
                            return special(self)
                    serve_normally(self, served)
                except (BrokenPipeError, ConnectionResetError):
                    pass   # the client stopped reading: what a bounded client does
            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "HostileServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def serve_normally(h, registry: Registry) -> None:
    if h.path == "/v2/":
        return reply(h, 200, b"{}")
    if "/manifests/" in h.path:
        return reply(h, 200, registry.manifest, {"Content-Type": OCI_MANIFEST,
                                                 "Docker-Content-Digest": sha(registry.manifest)})
    digest = h.path.rsplit("/", 1)[-1]
    if "/blobs/" in h.path and digest in registry.blobs:
        return reply(h, 200, registry.blobs[digest], {"Content-Type": "application/octet-stream"})
    reply(h, 404, json.dumps({"errors": [{"code": "BLOB_UNKNOWN", "message": "unknown"}]}).encode())


def endless(h, *, declared: int | None = None, fill: bytes = b" ", first: bytes = b"", pause: float = 0.0,
            piece: int = CHUNK, content_type: str = "application/octet-stream") -> None:
    """Send ``first`` then ``fill`` for ever (or until ``declared`` bytes, if the header says so)."""
    h.send_response(200)
    h.send_header("Content-Type", content_type)
    if declared is not None:
        h.send_header("Content-Length", str(declared))
    else:
        h.send_header("Connection", "close")   # a close-delimited body: no length announced
        h.close_connection = True
    h.end_headers()
    sent, block = 0, fill * (piece // len(fill) or 1)
    if first:
        h.wfile.write(first)
        sent += len(first)
    while declared is None or sent < declared:
        data = block if declared is None else block[:declared - sent]
        h.wfile.write(data)
        h.wfile.flush()
        sent += len(data)
        if pause:
            time.sleep(pause)


def trickle(h, body: bytes, *, every: float, headers_too: bool = False) -> None:
    """One byte every ``every`` seconds: of the body, or of the whole answer, headers included."""
    head = (f"HTTP/1.1 200 OK\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    if not headers_too:
        h.wfile.write(head)
        h.wfile.flush()
    for byte in (head + body if headers_too else body):
        h.wfile.write(bytes([byte]))
        h.wfile.flush()
        time.sleep(every)


# ---- running the CLI and measuring it ------------------------------------------------------------

@dataclass
class Outcome:
    returncode: int
    stderr: str
    peak_rss_mb: float


# The child's ru_maxrss counts the memory of whatever it was forked from until it exec'd
# (the kernel takes the old mm's high-water mark at exec): measured straight from pytest, it
# would report pytest's own peak. So a small Python starts the CLI and reports its wait4 figure.
MEASURE = ("import os, subprocess, sys; proc = subprocess.Popen(sys.argv[2:]); "
           "_, status, usage = os.wait4(proc.pid, 0); "
           "open(sys.argv[1], 'w').write(f'{os.waitstatus_to_exitcode(status)} {usage.ru_maxrss}')")


def run_cli(tmp: Path, *args: str, env: dict[str, str] | None = None) -> Outcome:
    """Run ``minicontainer ARGS`` in a child and take its peak RSS (ru_maxrss, from wait4)."""
    err, figures = tmp / "stderr", tmp / "figures"
    with open(err, "wb") as e:
        subprocess.run([sys.executable, "-c", MEASURE, str(figures), *CLI, *args], stdout=subprocess.DEVNULL,
                       stderr=e, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, check=True,
                       timeout=300)
    code, max_rss_kib = figures.read_text().split()
    print(f"minicontainer {' '.join(args)}: exit {code}, peak RSS {int(max_rss_kib) / 1024:.1f} MB")   # pytest -s
    return Outcome(int(code), err.read_text(), int(max_rss_kib) / 1024)


def assert_one_line_failure(outcome: Outcome, *expected: str) -> None:
    assert outcome.returncode != 0, outcome
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    for text in expected:
        assert text in lines[0], lines[0]


def index_is_empty(engine_root: Path) -> bool:
    index = engine_root / "image" / "index.json"
    return not index.exists() or not [m for m in json.loads(index.read_text())["manifests"]
                                      if "hostile" in json.dumps(m)]


@pytest.fixture
def image():
    return small_image()


# ---- memory: a hostile pull stays under 100 MB and ends in one line --------------------------------

def _huge_manifest_declared(manifest, config, layer) -> Registry:
    return Registry(manifest, {}, {"/manifests/1": lambda h: endless(h, declared=300 << 20, first=b"{")})


def _huge_manifest_undeclared(manifest, config, layer) -> Registry:
    return Registry(manifest, {}, {"/manifests/1": lambda h: endless(h, first=b'{"layers": [')})


def _empty_objects_manifest(manifest, config, layer) -> Registry:
    bomb = b'{"layers": [' + b"{}," * 1_300_000 + b"{}]}"    # 3.9 MB: under the 4 MiB cap, 100 MB parsed
    return Registry(bomb, {})


def _huge_config_that_lies_about_its_size(manifest, config, layer) -> Registry:
    return Registry(manifest, {sha(layer): layer}, {f"/blobs/{sha(config)}": lambda h: endless(h, first=config)})


def _huge_config_declared(manifest, config, layer) -> Registry:
    manifest = manifest_for(config, [layer], config_size=400 << 20)
    return Registry(manifest, {sha(layer): layer}, {f"/blobs/{sha(config)}": lambda h: endless(h, declared=400 << 20)})


def _endless_layer(manifest, config, layer) -> Registry:
    return Registry(manifest, {sha(config): config}, {f"/blobs/{sha(layer)}": lambda h: endless(h, first=layer)})


def _layer_longer_than_its_descriptor(manifest, config, layer) -> Registry:
    manifest = manifest_for(config, [layer], layer_sizes=[len(layer) - 10])
    return Registry(manifest, {sha(config): config, sha(layer): layer})


def _layer_shorter_than_its_descriptor(manifest, config, layer) -> Registry:
    manifest = manifest_for(config, [layer], layer_sizes=[len(layer) + 10])
    return Registry(manifest, {sha(config): config, sha(layer): layer})


def _layer_without_a_size(manifest, config, layer) -> Registry:
    body = json.loads(manifest_for(config, [layer]))
    del body["layers"][0]["size"]
    return Registry(json.dumps(body).encode(), {sha(config): config}, {f"/blobs/{sha(layer)}": lambda h: endless(h)})


def _image_larger_than_the_cap_by_its_descriptors(manifest, config, layer) -> Registry:
    manifest = manifest_for(config, [layer], layer_sizes=[1 << 50])
    return Registry(manifest, {sha(config): config}, {f"/blobs/{sha(layer)}": lambda h: endless(h)})


@pytest.mark.parametrize("make, expected", [
    (_huge_manifest_declared, ["manifest hostile/image:1 from", "is more than 4 MiB, the MINICONTAINER_MAX_MANIFEST_SIZE limit"]),
    (_huge_manifest_undeclared, ["is more than 4 MiB, the MINICONTAINER_MAX_MANIFEST_SIZE limit"]),
    (_empty_objects_manifest, ["JSON objects and arrays, more than the 100000"]),
    (_huge_config_that_lies_about_its_size, ["size mismatch", "is longer than the", "nothing was stored"]),
    (_huge_config_declared, ["more than 4 MiB, the MINICONTAINER_MAX_CONFIG_SIZE limit: refusing to download it"]),
    (_endless_layer, ["size mismatch", "received more", "stopped reading, nothing was stored"]),
    (_layer_longer_than_its_descriptor, ["size mismatch", "received more"]),
    (_layer_shorter_than_its_descriptor, ["size mismatch", "received", "nothing was stored"]),
    (_layer_without_a_size, ["gives layer", "no size, which every descriptor must have"]),
    (_image_larger_than_the_cap_by_its_descriptors, ["the MINICONTAINER_MAX_IMAGE_SIZE limit: nothing was downloaded"]),
], ids=lambda v: v.__name__.strip("_") if callable(v) else None)
def test_a_hostile_pull_keeps_memory_under_100_mb_and_ends_in_one_line(engine_root, tmp_path, image, make, expected):
    with HostileServer(make(*image)) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1")
    assert_one_line_failure(outcome, *expected)
    assert outcome.peak_rss_mb < RSS_LIMIT_MB, f"peak RSS {outcome.peak_rss_mb:.0f} MB"
    assert index_is_empty(engine_root)
    assert not [p for p in (engine_root / "tmp").iterdir()], "a refused blob leaves no temp file"


def test_the_same_stub_serves_a_good_image_so_the_hostile_cases_fail_for_their_hostility(engine_root, tmp_path, image):
    with HostileServer(Registry(image[0], {sha(image[1]): image[1], sha(image[2]): image[2]})) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1")
        assert outcome.returncode == 0, outcome.stderr
    store = ImageStore(engine_root)
    [lower] = store.lower_dirs(store.resolve(f"{server.host}/hostile/image:1"))
    assert (Path(lower) / "hello.txt").read_text() == "hello from a hostile registry\n"
    assert outcome.peak_rss_mb < RSS_LIMIT_MB


def test_the_manifest_cap_is_a_setting_and_a_bad_value_names_it(engine_root, tmp_path, image):
    with HostileServer(Registry(image[0], {sha(image[1]): image[1], sha(image[2]): image[2]})) as server:
        small = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1",
                        env={"MINICONTAINER_MAX_MANIFEST_SIZE": "100"})
        bad = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1",
                      env={"MINICONTAINER_MAX_MANIFEST_SIZE": "huge"})
    assert_one_line_failure(small, "is more than 100 bytes, the MINICONTAINER_MAX_MANIFEST_SIZE limit")
    assert_one_line_failure(bad, "invalid MINICONTAINER_MAX_MANIFEST_SIZE='huge'")


def test_a_gzip_encoded_answer_is_not_inflated_in_memory(engine_root, tmp_path, image):
    # 2 MiB of gzip that would inflate to 2 GiB if the client decoded Content-Encoding
    bomb = gzip.compress(b" " * (64 << 20), compresslevel=9) * 32
    def answer(h):
        reply(h, 200, bomb, {"Content-Type": OCI_MANIFEST, "Content-Encoding": "gzip"})
    with HostileServer(Registry(image[0], {}, {"/manifests/1": answer})) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1")
    assert_one_line_failure(outcome, "is not JSON")
    assert outcome.peak_rss_mb < RSS_LIMIT_MB, f"peak RSS {outcome.peak_rss_mb:.0f} MB"


# ---- time: a trickling or stalled server is timed out -------------------------------------------------

def test_a_server_that_trickles_one_byte_every_2_s_stalls_and_is_timed_out(engine_root, tmp_path, image):
    manifest = image[0]
    with HostileServer(Registry(manifest, {}, {"/manifests/1": lambda h: trickle(h, manifest, every=2)})) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1",
                          env={"MINICONTAINER_REGISTRY_STALL_TIMEOUT": "3"})
    assert_one_line_failure(outcome, f"{server.host} stalled during manifest download: less than 1 KiB in 3 s",
                            "MINICONTAINER_REGISTRY_STALL_TIMEOUT")


def test_headers_trickled_one_byte_at_a_time_are_timed_out_too(engine_root, tmp_path, image):
    manifest = image[0]
    special = {"/manifests/1": lambda h: trickle(h, manifest, every=0.5, headers_too=True)}
    with HostileServer(Registry(manifest, {}, special)) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1",
                          env={"MINICONTAINER_REGISTRY_STALL_TIMEOUT": "2"})
    assert_one_line_failure(outcome, "stalled during manifest download")


def test_a_steady_but_endless_layer_meets_the_total_timeout(engine_root, tmp_path, image):
    manifest, config, layer = image
    manifest = manifest_for(config, [layer], layer_sizes=[1 << 30])
    # 16 KiB every 0.1 s: far too slow to finish; the stall window (10 s) is longer than the total (3 s)
    special = {f"/blobs/{sha(layer)}": lambda h: endless(h, declared=1 << 30, pause=0.1, piece=16 << 10)}
    with HostileServer(Registry(manifest, {sha(config): config}, special)) as server:
        outcome = run_cli(tmp_path, "pull", "-q", f"{server.host}/hostile/image:1",
                          env={"MINICONTAINER_REGISTRY_TIMEOUT": "3", "MINICONTAINER_REGISTRY_STALL_TIMEOUT": "10"})
    assert_one_line_failure(outcome, f"{server.host} took longer than 3 s for blob download: timed out",
                            "MINICONTAINER_REGISTRY_TIMEOUT")
    assert outcome.peak_rss_mb < RSS_LIMIT_MB


def test_a_bad_timeout_setting_is_one_line_that_names_it(engine_root, tmp_path):
    outcome = run_cli(tmp_path, "pull", "-q", "127.0.0.1:9/hostile/image:1",
                      env={"MINICONTAINER_REGISTRY_STALL_TIMEOUT": "-1"})
    assert_one_line_failure(outcome, "invalid MINICONTAINER_REGISTRY_STALL_TIMEOUT='-1': give a number of seconds")


# ---- a server that dies mid-push, and retries ---------------------------------------------------------

def _reset(h) -> None:
    """Drop the connection with a TCP RST, as a killed server's kernel does to a peer still sending."""
    h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    h.connection.close()
    h.close_connection = True


def _dies_during_upload(h) -> None:
    if h.command == "PUT" and "/blobs/uploads/" in h.path:
        h.rfile.read(min(1024, int(h.headers.get("Content-Length") or 0)))   # take a little of the blob, then die
        return _reset(h)
    if h.command == "POST" and "/blobs/uploads/" in h.path:
        return reply(h, 202, b"", {"Location": "/v2/hostile/image/blobs/uploads/abc"})
    if h.command == "HEAD":
        return reply(h, 404)
    reply(h, 200, b"{}")


def test_a_server_that_dies_mid_push_is_reported_as_a_reset_not_as_an_insecure_registry(engine_root, tmp_path):
    registry = Registry(b"", {}, {"": _dies_during_upload})
    with HostileServer(registry) as server:
        ref = f"{server.host}/hostile/image:1"
        assert subprocess.run(CLI + ["tag", "busybox", ref], capture_output=True).returncode == 0
        outcome = run_cli(tmp_path, "push", "-q", ref)
    assert_one_line_failure(outcome, f"connection reset by {server.host} during blob upload")
    assert "insecure-registries" not in outcome.stderr and "HTTPS" not in outcome.stderr
    puts = [p for m, p in registry.requests if m == "PUT"]
    posts = [p for m, p in registry.requests if m == "POST"]
    assert puts and len(puts) == len(posts), "an upload (not idempotent) is not retried: one PUT per session"


def test_a_dropped_blob_download_is_tried_again_and_then_succeeds(engine_root, image, monkeypatch):
    monkeypatch.setattr(client, "RETRY_BACKOFF", 0.01)
    manifest, config, layer = image
    drops = ["before the answer", "halfway through the body"]

    def flaky(h):
        if not drops:
            return reply(h, 200, layer)
        if drops.pop(0) == "halfway through the body":
            h.send_response(200)
            h.send_header("Content-Length", str(len(layer)))
            h.end_headers()
            h.wfile.write(layer[:len(layer) // 2])
            h.wfile.flush()
        _reset(h)
    registry = Registry(manifest, {sha(config): config}, {f"/blobs/{sha(layer)}": flaky})
    from minicontainer.registry.progress import Progress

    class Said(Progress):
        def __init__(self):
            super().__init__()
            self.said: list[str] = []

        def status(self, digest, text):
            self.said.append(text)
            super().status(digest, text)
    progress = Said()
    with HostileServer(registry) as server:
        pull(f"{server.host}/hostile/image:1", ImageStore(engine_root), progress=progress)
    assert [p for m, p in registry.requests if p.endswith(sha(layer))] == [f"/v2/hostile/image/blobs/{sha(layer)}"] * 3
    assert progress.said.count("Retrying in 0.01 seconds") == 1 and "Retrying in 0.02 seconds" in progress.said, \
        "like docker, the layer's line says it will try again"


def test_a_503_manifest_is_tried_again_a_bounded_number_of_times(engine_root, image, monkeypatch):
    monkeypatch.setattr(client, "RETRY_BACKOFF", 0.01)
    monkeypatch.setenv("MINICONTAINER_REGISTRY_ATTEMPTS", "3")
    registry = Registry(image[0], {}, {"/manifests/1": lambda h: reply(h, 503, b"busy")})
    with HostileServer(registry) as server:
        with pytest.raises(RegistryError, match=r"answered 503 Service Unavailable to GET /v2/hostile/image/manifests/1"
                                                r".*\(tried 3 times\)$"):
            pull(f"{server.host}/hostile/image:1", ImageStore(engine_root))
    assert [m for m, p in registry.requests if "/manifests/" in p] == ["GET"] * 3


def test_the_real_registry_killed_mid_push_is_reported_as_a_reset(engine_root, tmp_path):
    from minicontainer.registry.client import push
    from minicontainer.registry.progress import Progress

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        host = f"127.0.0.1:{s.getsockname()[1]}"
    server = subprocess.Popen(CLI + ["registry", "serve", "-q", "--addr", host, "--root", str(tmp_path / "registry")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with socket.create_connection(("127.0.0.1", int(host.split(":")[1])), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "registry serve did not start"
                time.sleep(0.05)
        store = ImageStore(engine_root)
        layer = os.urandom(1 << 20) * 8
        config = json.dumps({"os": "linux", "architecture": "amd64",
                             "rootfs": {"type": "layers", "diff_ids": [sha(layer)]}}).encode()
        manifest = manifest_for(config, [layer])
        for blob in (layer, config, manifest):
            store.write_blob(blob)
        ref = f"{host}/student/big:1"
        store.tag(ref, {"mediaType": OCI_MANIFEST, "digest": sha(manifest), "size": len(manifest)})

        config_pushed = threading.Event()

        class KillTheServerMidway(Progress):
            """kill -9 the registry once the config is in and the layer's first MiB has gone out."""

            def status(self, digest, text):
                if digest == sha(config) and text == "Pushed":
                    config_pushed.set()
                super().status(digest, text)

            def advance(self, digest, text, done, total):
                super().advance(digest, text, done, total)
                if digest == sha(layer) and done < total and server.poll() is None:
                    config_pushed.wait(30)   # the layer's sender waits here: the config's upload finishes first
                    server.kill()
                    server.wait()
        with pytest.raises(RegistryError) as err:
            push(ref, store, progress=KillTheServerMidway())
    finally:
        server.kill()
        server.wait()
    assert server.returncode == -9, "the registry must have died during the push, not before or after"
    message = str(err.value)
    assert message.startswith(f"connection reset by {host} during blob upload: the registry dropped the connection")
    assert "insecure-registries" not in message and "HTTPS" not in message


def test_a_pulled_gzip_bomb_fails_to_run_in_one_line_and_leaves_no_partial_layer(engine_root, tmp_path):
    from test_layers import compression_bomb

    layer = compression_bomb(tmp_path / "bomb.tar.gz", 256 << 20).read_bytes()   # ~250 KB that inflate to 256 MiB
    h = hashlib.sha256()
    with gzip.open(io.BytesIO(layer)) as inflated:
        while chunk := inflated.read(1 << 20):
            h.update(chunk)
    os_name, arch = host_platform().split("/")
    config = json.dumps({"os": os_name, "architecture": arch, "config": {"Cmd": ["/zeros"]},
                         "rootfs": {"type": "layers", "diff_ids": ["sha256:" + h.hexdigest()]}}).encode()
    manifest = manifest_for(config, [layer])
    with HostileServer(Registry(manifest, {sha(config): config, sha(layer): layer})) as server:
        ref = f"{server.host}/hostile/bomb:1"
        assert run_cli(tmp_path, "pull", "-q", ref).returncode == 0, "the blob itself is small and honest"
    ran = subprocess.run(CLI + ["run", "--rm", ref], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "MINICONTAINER_MAX_IMAGE_SIZE": "8m"})
    assert ran.returncode == 125 and ran.stderr.count("\n") == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert f"image {ref} unpacks to more than 8 MiB, the MINICONTAINER_MAX_IMAGE_SIZE limit" in ran.stderr
    assert os.listdir(engine_root / "layers" / "sha256") == [], "no partial layer, not even its temp dir"
    containers = engine_root / "containers"
    assert not containers.exists() or [n for n in os.listdir(containers) if n != ".lock"] == []
