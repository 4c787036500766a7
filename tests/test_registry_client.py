"""The registry client (pull, push, login, logout) against real servers on 127.0.0.1:
our RegistryServer in its three auth modes, and tiny http.server stubs for the failures a
real registry rarely shows on demand (429, a self-signed certificate, odd answers)."""
from __future__ import annotations

import base64
import gzip
import hashlib
import http.server
import io
import json
import os
import shutil
import socket
import ssl
import stat
import subprocess
import tarfile
import threading
from pathlib import Path

import pytest

from minicontainer import trace
from minicontainer.errors import RegistryError
from minicontainer.image.builtin import BUILTIN_REF, build_builtin_image
from minicontainer.image.store import OCI_INDEX, OCI_MANIFEST, ImageStore
from minicontainer.registry import client
from minicontainer.registry.client import RegistryClient, parse_challenge, pull, push
from minicontainer.registry.credentials import (credentials_path, load_credentials, remove_credentials,
                                                save_credentials)
from minicontainer.registry.insecure import config_path, insecure_registries, scheme_for
from minicontainer.registry.progress import (Progress, TerminalProgress, auto_progress, human_size,
                                             progress_bar)
from minicontainer.registry.server import RegistryServer

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@pytest.fixture
def store(engine_root) -> ImageStore:
    """A store holding the built-in busybox image."""
    s = ImageStore(engine_root / "local")
    build_builtin_image(s)
    return s


@pytest.fixture
def other_store(engine_root) -> ImageStore:
    return ImageStore(engine_root / "pulled")


@pytest.fixture
def registry(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        yield server


def host_of(server: RegistryServer) -> str:
    return server.url.removeprefix("http://")


def image_blobs(s: ImageStore, ref: str) -> dict[str, bytes]:
    """Every blob the image ``ref`` needs, by digest: manifest, config and layers."""
    image = s.resolve(ref)
    digests = [image.manifest_digest, image.manifest["config"]["digest"], *(l["digest"] for l in image.layers)]
    return {d: s.read_blob(d) for d in digests}


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def add_fake_image(s: ImageStore, arch: str, content: bytes, *, docker_types: bool = False) -> dict:
    """A one-layer image for ``arch`` (one small file), written into ``s``; returns its descriptor."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    tar_bytes = buffer.getvalue()
    layer = gzip.compress(tar_bytes, mtime=0)
    config = json.dumps({"architecture": arch, "os": "linux", "config": {"Cmd": ["/hello"]},
                         "rootfs": {"type": "layers", "diff_ids": [sha(tar_bytes)]}}).encode()
    manifest_type = DOCKER_MANIFEST if docker_types else OCI_MANIFEST
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": manifest_type,
        "config": {"mediaType": DOCKER_CONFIG if docker_types else "application/vnd.oci.image.config.v1+json",
                   "digest": s.write_blob(config), "size": len(config)},
        "layers": [{"mediaType": DOCKER_LAYER if docker_types else "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": s.write_blob(layer), "size": len(layer)}]}).encode()
    return {"mediaType": manifest_type, "digest": s.write_blob(manifest), "size": len(manifest),
            "platform": {"os": "linux", "architecture": arch}}


def blob_requests(server: RegistryServer, since: int = 0) -> list[str]:
    """The requests that sent blob bytes or opened uploads, after log entry ``since``."""
    return [f"{e.method} {e.path}" for e in server.log[since:]
            if "/blobs/uploads/" in e.path and e.method in ("POST", "PATCH", "PUT")]


# ---- push and pull against our registry -----------------------------------------------------
def test_push_then_pull_gives_the_same_blobs_byte_for_byte(store, other_store, registry):
    ref = f"{host_of(registry)}/student/busybox:v1"
    pushed = push(ref, store, source_ref=BUILTIN_REF)
    pulled = pull(ref, other_store)

    assert pulled == pushed == store.descriptor(BUILTIN_REF)["digest"]
    assert image_blobs(other_store, ref) == image_blobs(store, BUILTIN_REF)
    assert other_store.resolve(ref).platform == "linux/amd64"
    assert other_store.descriptor(ref)["platform"] == {"os": "linux", "architecture": "amd64"}


def test_push_and_pull_record_each_registry_request_as_a_step(store, other_store, registry):
    host = host_of(registry)
    ref = f"{host}/student/busybox:v1"
    layer = store.resolve(BUILTIN_REF).layers[0]["digest"]
    with trace.recording() as recorded:
        push(ref, store, source_ref=BUILTIN_REF)
        pull(ref, other_store)

    # the server records its own steps too; the client's are the ones with an unencoded digest
    uploads = [s for s in recorded if s.name == "push_blob" and s.call.endswith(f"?digest={layer}")]
    assert len(uploads) == 1 and uploads[0].ok
    assert uploads[0].call.startswith("PUT /v2/student/busybox/blobs/uploads/")
    assert uploads[0].shell.startswith("curl -X PUT") and f"http://{host}/v2/student/busybox/blobs/uploads/" in uploads[0].shell
    assert uploads[0].why
    manifest_puts = [s for s in recorded if s.name == "push_manifest" and s.shell.startswith("curl")
                     and "--data-binary @manifest.json" in s.shell and "Content-Type: application/vnd.oci" in s.shell]
    assert [s.call for s in manifest_puts][-1] == "PUT /v2/student/busybox/manifests/v1"
    assert recorded.find("pull_manifest").call == "GET /v2/student/busybox/manifests/v1"
    assert f"GET /v2/student/busybox/blobs/{layer}" in [s.call for s in recorded if s.name == "pull_blob"]


def test_a_second_push_uploads_no_blob_because_head_finds_each_one(store, registry):
    ref = f"{host_of(registry)}/student/busybox:v1"
    push(ref, store, source_ref=BUILTIN_REF)
    first = len(registry.log)
    assert blob_requests(registry) != []

    push(ref, store, source_ref=BUILTIN_REF)
    second = registry.log[first:]
    assert blob_requests(registry, first) == []
    heads = [e for e in second if e.method == "HEAD"]
    assert len(heads) == 2 and all(e.status == 200 for e in heads)  # the layer and the config
    assert [e.method for e in second if "/manifests/" in e.path] == ["PUT"]


def test_cross_repository_mount_links_a_blob_without_sending_it(store, registry):
    host = host_of(registry)
    push(f"{host}/a/x:v1", store, source_ref=BUILTIN_REF)
    layer = store.resolve(BUILTIN_REF).layers[0]
    before = len(registry.log)
    with trace.recording() as recorded, RegistryClient(host) as c:
        outcome = c.upload_blob("b/y", layer["digest"], layer["size"],
                                lambda: store.open_blob(layer["digest"]), mount_from="a/x")
    assert outcome == "mounted"
    mounts = [e for e in registry.log[before:] if e.method == "POST"]
    assert [(e.path, e.status) for e in mounts] == [
        (f"/v2/b/y/blobs/uploads/?mount={layer['digest']}&from=a/x", 201)]
    assert not any(e.method in ("PUT", "PATCH") for e in registry.log[before:])
    step = [s for s in recorded if s.name == "mount_blob" and s.call == f"POST /v2/b/y/blobs/uploads/?mount={layer['digest']}&from=a/x"]
    assert step and step[0].result == "201 Created: mounted"


def test_pushing_a_stored_image_to_another_repository_of_the_same_registry_mounts_its_blobs(store, other_store, registry):
    host = host_of(registry)
    push(f"{host}/a/x:v1", store, source_ref=BUILTIN_REF)
    store.tag(f"{host}/a/x:v1", store.descriptor(BUILTIN_REF))
    before = len(registry.log)
    push(f"{host}/b/y:v2", store, source_ref=f"{host}/a/x:v1")
    posts = [e for e in registry.log[before:] if e.method == "POST"]
    assert len(posts) == 2 and all("&from=a/x" in e.path and e.status == 201 for e in posts)
    pull(f"{host}/b/y:v2", other_store)
    assert image_blobs(other_store, f"{host}/b/y:v2") == image_blobs(store, BUILTIN_REF)


def test_chunked_upload_sends_one_patch_per_chunk_then_a_put(store, other_store, registry):
    ref = f"{host_of(registry)}/student/chunky:v1"
    layer = store.resolve(BUILTIN_REF).layers[0]
    chunk = 256 * 1024
    with trace.recording() as recorded:
        push(ref, store, source_ref=BUILTIN_REF, chunk_size=chunk)
    patches = [e for e in registry.log if e.method == "PATCH"]
    expected = -(-layer["size"] // chunk) + 1  # the layer's chunks, plus the config's single chunk
    assert len(patches) == expected and all(e.status == 202 for e in patches)
    assert sum(e.bytes_in for e in patches) == layer["size"] + store.resolve(BUILTIN_REF).manifest["config"]["size"]
    assert any(s.name == "push_blob" and s.call.startswith("PATCH /v2/student/chunky/blobs/uploads/") and
               f"×{expected - 1}" in s.call for s in recorded)
    pull(ref, other_store)
    assert image_blobs(other_store, ref) == image_blobs(store, BUILTIN_REF)


def test_a_multi_platform_index_is_pushed_whole_and_pulled_for_the_chosen_platform(store, engine_root, registry):
    host = host_of(registry)
    ref = f"{host}/student/multi:v1"
    amd64 = store.descriptor(BUILTIN_REF)
    arm64 = add_fake_image(store, "arm64", b"hello from arm64\n")
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [{**amd64, "annotations": {}}, arm64]}).encode()
    index_digest = store.write_blob(index)
    store.tag(ref, {"mediaType": OCI_INDEX, "digest": index_digest, "size": len(index)})

    assert push(ref, store) == index_digest
    assert registry.storage.get_manifest("student/multi", "v1")[1] == OCI_INDEX

    default = ImageStore(engine_root / "default")
    assert pull(ref, default) == index_digest
    assert default.resolve(ref).platform == "linux/amd64"
    assert default.has_blob(index_digest) and default.descriptor(ref)["digest"] == amd64["digest"]
    assert not default.has_blob(store.resolve(ref, "linux/arm64").layers[0]["digest"])

    arm = ImageStore(engine_root / "arm")
    pull(ref, arm, platform="linux/arm64")
    image = arm.resolve(ref)
    assert image.platform == "linux/arm64" and image.manifest_digest == arm64["digest"]
    assert not arm.has_blob(store.resolve(BUILTIN_REF).layers[0]["digest"])

    with pytest.raises(RegistryError, match=r"has no linux/s390x image \(it has: linux/amd64, linux/arm64\)"):
        pull(ref, ImageStore(engine_root / "s390x"), platform="linux/s390x")


def test_pulling_a_single_platform_image_for_another_platform_names_the_one_it_has(store, other_store, registry):
    ref = f"{host_of(registry)}/student/busybox:v1"
    push(ref, store, source_ref=BUILTIN_REF)
    index_before = (other_store.layout / "index.json").read_bytes()
    with pytest.raises(RegistryError, match=r"is a linux/amd64 image, not linux/arm64.*--platform linux/amd64"):
        pull(ref, other_store, platform="linux/arm64")
    assert (other_store.layout / "index.json").read_bytes() == index_before


def test_docker_schema2_manifests_push_and_pull_with_their_own_media_type(store, other_store, registry):
    ref = f"{host_of(registry)}/student/dockerish:v1"
    store.tag(ref, add_fake_image(store, "amd64", b"docker types\n", docker_types=True))
    digest = push(ref, store)
    assert pull(ref, other_store) == digest
    assert other_store.descriptor(ref)["mediaType"] == DOCKER_MANIFEST
    assert image_blobs(other_store, ref) == image_blobs(store, ref)


def test_pull_by_digest_checks_the_manifest_against_that_digest(store, other_store, registry):
    host = host_of(registry)
    digest = push(f"{host}/student/busybox:v1", store, source_ref=BUILTIN_REF)
    assert pull(f"{host}/student/busybox@{digest}", other_store) == digest
    assert other_store.resolve(f"{host}/student/busybox@{digest}").manifest_digest == digest


def test_a_tampered_layer_is_refused_and_nothing_is_stored_or_tagged(store, other_store, registry):
    ref = f"{host_of(registry)}/student/busybox:v1"
    push(ref, store, source_ref=BUILTIN_REF)
    layer = store.resolve(BUILTIN_REF).layers[0]["digest"]
    stored = registry.storage.blob_file(layer)
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, different bytes
    stored.write_bytes(bytes(data))
    index_before = (other_store.layout / "index.json").read_bytes()

    with pytest.raises(RegistryError, match=r"digest mismatch.*nothing was stored"):
        pull(ref, other_store)
    assert not other_store.has_blob(layer)
    assert (other_store.layout / "index.json").read_bytes() == index_before
    assert list(other_store.tmp.iterdir()) == []


def test_a_tampered_manifest_is_refused_and_nothing_is_tagged(store, other_store, registry):
    ref = f"{host_of(registry)}/student/busybox:v1"
    digest = push(ref, store, source_ref=BUILTIN_REF)
    stored = registry.storage.blob_file(digest)
    stored.write_bytes(stored.read_bytes().replace(b'"schemaVersion":2', b'"schemaVersion":2 '))
    index_before = (other_store.layout / "index.json").read_bytes()
    with pytest.raises(RegistryError, match=r"digest mismatch: manifest .*nothing was stored"):
        pull(ref, other_store)
    assert (other_store.layout / "index.json").read_bytes() == index_before
    assert not other_store.has_blob(digest)


def test_a_missing_tag_says_manifest_unknown_with_name_tag_and_host(other_store, registry):
    host = host_of(registry)
    with pytest.raises(RegistryError, match=rf"^manifest unknown: student/nothing:v9 not found in {host}"):
        pull(f"{host}/student/nothing:v9", other_store)


# ---- authentication -------------------------------------------------------------------------
def test_basic_auth_refuses_anonymous_then_login_saves_credentials_that_push_and_pull_use(
        store, other_store, engine_root, config_dir):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", users={"alice": "s3cret"}) as server:
        host = host_of(server)
        ref = f"{host}/alice/busybox:v1"
        with pytest.raises(RegistryError, match=rf"^unauthorized: .*log in with minicontainer login {host}$"):
            push(ref, store, source_ref=BUILTIN_REF)
        with pytest.raises(RegistryError, match=r"^login failed: "):
            client.login(host, "alice", "wrong")
        assert load_credentials(host) is None

        client.login(host, "alice", "s3cret")
        assert load_credentials(host) == ("alice", "s3cret")
        push(ref, store, source_ref=BUILTIN_REF)
        pull(ref, other_store)
        assert image_blobs(other_store, ref) == image_blobs(store, BUILTIN_REF)
        pushes = [e for e in server.log if e.method == "PUT"]
        assert pushes and all(e.auth == "basic:alice" for e in pushes)

    assert client.logout(host) is True
    assert load_credentials(host) is None
    assert client.logout(host) is False


def test_token_flow_gets_a_scoped_bearer_token_from_the_realm_and_reuses_it(store, other_store, engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", users={"alice": "s3cret"},
                        token_realm=True) as server:
        host = host_of(server)
        ref = f"{host}/alice/busybox:v1"
        with pytest.raises(RegistryError, match=r"^(denied|unauthorized): .*minicontainer login"):
            push(ref, store, source_ref=BUILTIN_REF)  # anonymous tokens only grant pull

        client.login(host, "alice", "s3cret")
        before = len(server.log)
        push(ref, store, source_ref=BUILTIN_REF)
        token_requests = [e for e in server.log[before:] if e.path.startswith("/token")]
        assert [e.path for e in token_requests] == [
            "/token?service=minicontainer-registry&scope=repository:alice/busybox:pull,push&account=alice"]
        assert token_requests[0].auth == "basic:alice"
        registry_requests = [e for e in server.log[before:] if e.path.startswith("/v2/alice/")]
        assert registry_requests and all(e.auth == "bearer:alice" for e in registry_requests)
        assert all(e.status != 401 for e in registry_requests)  # the token was fetched before, not after a 401

        client.logout(host)
        pull(ref, other_store)  # anonymous users may pull
        assert image_blobs(other_store, ref) == image_blobs(store, BUILTIN_REF)
        assert any(e.auth == "bearer:anonymous" for e in server.log if e.path.startswith("/v2/alice/"))


def test_login_through_a_token_realm_refuses_a_wrong_password(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", users={"alice": "s3cret"},
                        token_realm=True) as server:
        with pytest.raises(RegistryError, match=r"^login failed: unauthorized: the token server .* refused alice"):
            client.login(host_of(server), "alice", "nope")
    assert not credentials_path().exists()


def test_an_expired_or_refused_token_is_fetched_again_once(store, engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", users={"alice": "s3cret"},
                        token_realm=True) as server:
        host = host_of(server)
        with RegistryClient(host, credentials=("alice", "s3cret")) as c:
            c.ping()
            assert c.blob_exists("alice/x", "sha256:" + "0" * 64) is False
            server.issuer.secret = os.urandom(32)  # every token issued so far is now invalid
            assert c.blob_exists("alice/x", "sha256:" + "0" * 64) is False
        assert len([e for e in server.log if e.path.startswith("/token")]) == 2


def test_challenges_are_parsed_like_docker_hub_sends_them():
    hub = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                          'scope="repository:library/busybox:pull"')
    assert hub.scheme == "bearer"
    assert hub.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                          "scope": "repository:library/busybox:pull"}
    assert parse_challenge('Basic realm="Registry Realm"').scheme == "basic"
    assert parse_challenge("Negotiate abc") is None and parse_challenge(None) is None


def test_docker_io_references_go_to_registry_1_docker_io_and_share_one_credentials_entry():
    assert RegistryClient("docker.io").base_url == "https://registry-1.docker.io"
    assert RegistryClient("index.docker.io").login_name == "docker.io"
    save_credentials("docker.io", "bob", "pw")
    assert load_credentials("registry-1.docker.io") == ("bob", "pw")
    assert remove_credentials("index.docker.io") is True


def test_credentials_file_is_docker_shaped_and_readable_by_root_only(config_dir):
    save_credentials("localhost:5000", "alice", "pa:ss")
    path = credentials_path()
    assert path == config_dir / "auth.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(config_dir.stat().st_mode) == 0o700
    data = json.loads(path.read_text())
    assert data == {"auths": {"localhost:5000": {"auth": base64.b64encode(b"alice:pa:ss").decode()}}}
    assert load_credentials("localhost:5000") == ("alice", "pa:ss")
    save_credentials("other:5000", "bob", "x")
    assert remove_credentials("localhost:5000") is True
    assert list(json.loads(path.read_text())["auths"]) == ["other:5000"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


# ---- plain HTTP or HTTPS --------------------------------------------------------------------
def test_loopback_registries_use_plain_http_and_everything_else_https():
    for host in ("localhost", "localhost:5000", "127.0.0.1:5000", "127.8.9.10", "[::1]:5000", "::1"):
        assert scheme_for(host) == "http", host
    for host in ("quay.io", "registry-1.docker.io", "myhost:5000", "10.1.2.3:5000", "[2001:db8::1]:5000"):
        assert scheme_for(host) == "https", host


def test_registries_listed_in_daemon_json_use_plain_http(config_dir):
    config_dir.mkdir()
    config_path().write_text(json.dumps({"insecure-registries": ["myhost:5000", "10.0.0.0/8", "[2001:db8::1]:443"]}))
    assert insecure_registries() == ["myhost:5000", "10.0.0.0/8", "[2001:db8::1]:443"]
    assert scheme_for("myhost:5000") == "http"
    assert scheme_for("myhost:5001") == "https"    # the exact host:port, as docker matches it
    assert scheme_for("10.1.2.3:5000") == "http"   # inside a listed CIDR
    assert scheme_for("11.1.2.3:5000") == "https"
    assert scheme_for("[2001:db8::1]:443") == "http"


def test_a_malformed_daemon_json_is_an_error_that_names_the_file(config_dir):
    config_dir.mkdir()
    config_path().write_text('{"insecure-registries": "myhost:5000"}')
    with pytest.raises(RegistryError, match=rf"{config_path()}: .*must be a list"):
        scheme_for("myhost:5000")


def test_https_to_a_plain_http_registry_says_how_to_mark_it_insecure(registry):
    host = host_of(registry)
    with pytest.raises(RegistryError, match=rf'plain HTTP .*add "{host}" to insecure-registries in {config_path()}'):
        RegistryClient(host, scheme="https").ping()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_registry_says_connection_refused_and_how_to_start_one(other_store):
    host = f"127.0.0.1:{_free_port()}"
    with pytest.raises(RegistryError, match=rf"^cannot reach registry {host}: connection refused during GET /v2/ — "
                                            r"is it running\? for a private registry: minicontainer registry serve"):
        pull(f"{host}/student/busybox:v1", other_store)


# ---- stub servers for what our registry never does ------------------------------------------
class _Stub:
    """An http.server on 127.0.0.1 in a thread; ``answer(handler)`` answers each request."""

    def __init__(self, answer, context: ssl.SSLContext | None = None):
        stub = self
        self.requests: list[tuple[str, str, dict[str, str]]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_any(self):
                stub.requests.append((self.command, self.path, dict(self.headers)))
                answer(self)
            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_any

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if context is not None:
            self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _reply(handler, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)


def test_a_429_says_the_rate_limit_was_reached_and_to_wait_or_log_in(other_store):
    body = json.dumps({"errors": [{"code": "TOOMANYREQUESTS", "message": "You have reached your pull rate limit"}]})
    with _Stub(lambda h: _reply(h, 429, body.encode(), {"ratelimit-limit": "100;w=21600",
                                                          "Retry-After": "3600"})) as stub:
        index_before = (other_store.layout / "index.json").read_bytes()
        with pytest.raises(RegistryError, match=r"rate limit reached \(429\).*100 pulls per window.*"
                                                rf"wait and try again, or log in with minicontainer login {stub.host}"):
            pull(f"{stub.host}/library/busybox:latest", other_store)
    assert (other_store.layout / "index.json").read_bytes() == index_before


def test_manifest_requests_accept_oci_and_docker_manifests_and_indexes(other_store):
    def answer(h):
        if h.path == "/v2/":
            return _reply(h, 200, b"{}")
        _reply(h, 404, json.dumps({"errors": [{"code": "MANIFEST_UNKNOWN", "message": "unknown"}]}).encode())
    with _Stub(answer) as stub:
        with pytest.raises(RegistryError, match=r"^manifest unknown: library/busybox:latest not found"):
            pull(f"{stub.host}/library/busybox", other_store)
    accept = [r[2].get("Accept", "") for r in stub.requests if "/manifests/" in r[1]][0]
    assert {a.strip() for a in accept.split(",")} == {
        OCI_INDEX, OCI_MANIFEST, "application/vnd.docker.distribution.manifest.list.v2+json", DOCKER_MANIFEST}


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_a_registry_whose_certificate_does_not_verify_says_how_to_mark_it_insecure(engine_root):
    key, cert = engine_root.parent / "key.pem", engine_root.parent / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    with _Stub(lambda h: _reply(h, 200, b"{}"), context) as stub:
        with pytest.raises(RegistryError, match=rf'^TLS certificate of registry {stub.host} could not be verified: '
                                                rf'.*add "{stub.host}" to insecure-registries'):
            RegistryClient(stub.host, scheme="https").ping()


# ---- progress -------------------------------------------------------------------------------
class _FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_push_on_a_terminal_draws_a_line_per_layer_and_redraws_it_in_place(store, registry):
    screen = _FakeTerminal()
    progress = auto_progress(screen)
    assert isinstance(progress, TerminalProgress)
    push(f"{host_of(registry)}/student/busybox:v1", store, source_ref=BUILTIN_REF, progress=progress)
    layer = store.resolve(BUILTIN_REF).layers[0]["digest"].split(":")[1][:12]
    out = screen.getvalue()
    assert "The push refers to repository" in out
    assert f"{layer}: Preparing" in out and f"{layer}: Pushed" in out
    assert "\x1b[" in out and "A\r\x1b[2K" in out  # cursor up, erase line: redrawn, not appended
    final = progress.text().splitlines()
    assert f"{layer}: Pushed" in final and final[-1].startswith("v1: digest: sha256:")
    config = store.resolve(BUILTIN_REF).manifest["config"]["digest"].split(":")[1][:12]
    assert config not in out  # like docker: one line per layer, none for the config


def test_progress_is_silent_when_stdout_is_not_a_terminal(store, registry):
    pipe = io.StringIO()
    progress = auto_progress(pipe)
    assert type(progress) is Progress
    push(f"{host_of(registry)}/student/busybox:v1", store, source_ref=BUILTIN_REF, progress=progress)
    assert pipe.getvalue() == ""
    assert "Pushed" in progress.text()  # the state is kept; only nothing is drawn


def test_progress_bars_and_sizes_read_like_docker():
    assert progress_bar(0, 100, 10) == "[>         ]"
    assert progress_bar(50, 100, 10) == "[=====>    ]"
    assert progress_bar(100, 100, 10) == "[==========]"
    assert human_size(512) == "512B" and human_size(1_234_567) == "1.23MB" and human_size(5_000_000) == "5MB"


def test_notebook_progress_renders_an_html_table_with_progress_elements():
    pytest.importorskip("IPython")
    from minicontainer.registry.progress import NotebookProgress
    progress = NotebookProgress()
    progress.message("v1: Pulling from student/busybox")
    progress.advance("sha256:" + "ab" * 32, "Downloading", 500, 1000)
    html = progress._render()
    assert "<progress value='500' max='1000'>" in html and "abababababab" in html and "Downloading" in html


def test_pull_and_push_refuse_to_be_planned_because_the_registry_decides_what_happens(store, registry):
    with trace.planning(), pytest.raises(RegistryError, match=r"^pull can't be shown without running"):
        pull(f"{host_of(registry)}/student/busybox:v1", store)
    with trace.planning(), pytest.raises(RegistryError, match=r"^push can't be shown without running"):
        push(f"{host_of(registry)}/student/busybox:v1", store, source_ref=BUILTIN_REF)
    assert len(registry.log) == 0
