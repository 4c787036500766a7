"""The registry server against the OCI distribution spec v1.1: a real server on an
ephemeral 127.0.0.1 port, spoken to with httpx."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from minicontainer import trace
from minicontainer.errors import RegistryError
from minicontainer.registry import auth
from minicontainer.registry.server import RegistryServer
from minicontainer.registry.storage import RegistryStorage

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
EMPTY_JSON = "application/vnd.oci.empty.v1+json"


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def error_codes(response: httpx.Response) -> list[str]:
    return [e["code"] for e in response.json()["errors"]]


def push_blob(client: httpx.Client, name: str, data: bytes) -> str:
    digest = digest_of(data)
    r = client.post(f"/v2/{name}/blobs/uploads/", params={"digest": digest}, content=data)
    assert r.status_code == 201, r.text
    return digest


def descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": digest_of(data), "size": len(data)}


def image_manifest(client: httpx.Client, name: str, layer: bytes = b"layer bytes",
                   **extra) -> bytes:
    """Push a config and a layer; return a manifest naming them (not yet pushed)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [digest_of(layer)]}}).encode()
    push_blob(client, name, config)
    push_blob(client, name, layer)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": descriptor(OCI_CONFIG, config), "layers": [descriptor(OCI_LAYER, layer)], **extra}
    return json.dumps(manifest).encode()


def put_manifest(client: httpx.Client, name: str, reference: str, body: bytes,
                 media_type: str = OCI_MANIFEST) -> httpx.Response:
    return client.put(f"/v2/{name}/manifests/{reference}", content=body,
                      headers={"Content-Type": media_type})


@pytest.fixture
def registry(engine_root: Path):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        yield server


@pytest.fixture
def client(registry: RegistryServer):
    with httpx.Client(base_url=registry.url) as c:
        yield c


# ---- the API version check ----------------------------------------------------------------
def test_v2_endpoint_answers_200_and_names_the_api_version(client):
    r = client.get("/v2/")
    assert r.status_code == 200
    assert r.headers["Docker-Distribution-API-Version"] == "registry/2.0"


# ---- pushing blobs ------------------------------------------------------------------------
def test_monolithic_post_with_digest_stores_the_blob_in_one_request(client):
    data = os.urandom(3000)
    r = client.post("/v2/student/app/blobs/uploads/", params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201
    assert r.headers["Location"] == f"/v2/student/app/blobs/{digest_of(data)}"
    assert r.headers["Docker-Content-Digest"] == digest_of(data)
    assert client.get(f"/v2/student/app/blobs/{digest_of(data)}").content == data


def test_post_then_put_uploads_a_blob_through_an_upload_session(client):
    data = os.urandom(5000)
    r = client.post("/v2/student/app/blobs/uploads/")
    assert r.status_code == 202
    assert r.headers["Range"] == "0-0"
    location = r.headers["Location"]
    r = client.put(location, params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(data)
    assert client.head(f"/v2/student/app/blobs/{digest_of(data)}").status_code == 200


def test_chunked_patches_with_content_range_append_in_order(client):
    data = os.urandom(10_000)
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    for start in range(0, 10_000, 4000):
        chunk = data[start:start + 4000]
        r = client.patch(location, content=chunk,
                         headers={"Content-Range": f"{start}-{start + len(chunk) - 1}",
                                  "Content-Type": "application/octet-stream"})
        assert r.status_code == 202
        assert r.headers["Range"] == f"0-{start + len(chunk) - 1}"
        location = r.headers["Location"]
    r = client.put(location, params={"digest": digest_of(data)})
    assert r.status_code == 201
    assert client.get(f"/v2/student/app/blobs/{digest_of(data)}").content == data


def test_an_out_of_order_chunk_gets_416_with_the_range_already_stored(client):
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    client.patch(location, content=b"a" * 100, headers={"Content-Range": "0-99"})
    r = client.patch(location, content=b"b" * 100, headers={"Content-Range": "200-299"})
    assert r.status_code == 416
    assert r.headers["Range"] == "0-99"
    assert r.headers["Location"] == location
    # the connection is still usable and the upload unharmed
    r = client.patch(location, content=b"b" * 100, headers={"Content-Range": "100-199"})
    assert (r.status_code, r.headers["Range"]) == (202, "0-199")


def test_a_malformed_content_range_gets_416(client):
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=b"abc", headers={"Content-Range": "bogus"})
    assert r.status_code == 416


def test_a_streamed_patch_without_content_range_is_accepted(client):
    """docker and containerd send one PATCH with Transfer-Encoding: chunked and no Content-Range."""
    parts = [os.urandom(700_000) for _ in range(4)]
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=iter(parts))  # an iterator: httpx sends it chunked
    assert r.status_code == 202
    assert r.headers["Range"] == f"0-{2_800_000 - 1}"
    assert client.put(location, params={"digest": digest_of(b"".join(parts))}).status_code == 201


def test_upload_status_get_answers_204_with_the_range(client):
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    client.patch(location, content=b"x" * 1234)
    r = client.get(location)
    assert r.status_code == 204
    assert r.headers["Range"] == "0-1233"
    assert r.headers["Location"] == location


def test_the_last_chunk_may_come_with_the_put(client):
    data = os.urandom(2000)
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    location = client.patch(location, content=data[:1500], headers={"Content-Range": "0-1499"}).headers["Location"]
    r = client.put(location, params={"digest": digest_of(data)}, content=data[1500:],
                   headers={"Content-Range": "1500-1999"})
    assert r.status_code == 201
    assert client.get(f"/v2/student/app/blobs/{digest_of(data)}").content == data


def test_a_wrong_digest_is_refused_and_the_blob_never_becomes_visible(registry, client):
    data = b"the real content"
    claimed = digest_of(b"something else")
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    r = client.put(location, params={"digest": claimed}, content=data)
    assert r.status_code == 400
    assert error_codes(r) == ["DIGEST_INVALID"]
    assert client.head(f"/v2/student/app/blobs/{claimed}").status_code == 404
    assert client.head(f"/v2/student/app/blobs/{digest_of(data)}").status_code == 404
    assert not (registry.root / "blobs" / "sha256" / claimed.split(":")[1]).exists()
    # cancelling the session removes every temporary byte
    assert client.delete(location).status_code == 204
    assert list((registry.root / "uploads").iterdir()) == []
    assert client.get(location).status_code == 404


def test_a_wrong_digest_on_a_monolithic_post_leaves_no_upload_behind(registry, client):
    r = client.post("/v2/student/app/blobs/uploads/", params={"digest": digest_of(b"other")}, content=b"data")
    assert error_codes(r) == ["DIGEST_INVALID"]
    assert list((registry.root / "uploads").iterdir()) == []
    assert [p for p in (registry.root / "blobs").rglob("*") if p.is_file()] == []


# ---- pulling blobs ------------------------------------------------------------------------
def test_head_and_get_blob_give_size_digest_and_bytes(client):
    data = os.urandom(100_000)
    digest = push_blob(client, "student/app", data)
    head = client.head(f"/v2/student/app/blobs/{digest}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == "100000"
    assert head.headers["Docker-Content-Digest"] == digest
    assert head.content == b""
    get = client.get(f"/v2/student/app/blobs/{digest}")
    assert get.content == data


def test_blob_range_requests_return_206_with_content_range(client):
    data = bytes(range(256)) * 10
    digest = push_blob(client, "student/app", data)
    r = client.get(f"/v2/student/app/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert r.status_code == 206
    assert r.content == data[10:20]
    assert r.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert client.get(f"/v2/student/app/blobs/{digest}", headers={"Range": "bytes=-5"}).content == data[-5:]
    r = client.get(f"/v2/student/app/blobs/{digest}", headers={"Range": "bytes=99999-"})
    assert r.status_code == 416


def test_a_blob_is_visible_only_in_repositories_it_was_pushed_or_mounted_to(client):
    digest = push_blob(client, "student/app", b"private layer")
    r = client.get(f"/v2/other/app/blobs/{digest}")
    assert r.status_code == 404
    assert error_codes(r) == ["BLOB_UNKNOWN"]


# ---- manifests ----------------------------------------------------------------------------
def test_a_manifest_pushed_by_tag_comes_back_with_its_media_type_and_digest(client):
    body = image_manifest(client, "student/app")
    r = put_manifest(client, "student/app", "v1", body)
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest_of(body)
    assert r.headers["Location"] == f"/v2/student/app/manifests/{digest_of(body)}"
    for reference in ("v1", digest_of(body)):
        got = client.get(f"/v2/student/app/manifests/{reference}", headers={"Accept": OCI_MANIFEST})
        assert got.status_code == 200
        assert got.content == body
        assert got.headers["Content-Type"] == OCI_MANIFEST
        assert got.headers["Docker-Content-Digest"] == digest_of(body)
    head = client.head("/v2/student/app/manifests/v1")
    assert head.headers["Content-Length"] == str(len(body))


def test_a_manifest_pushed_by_digest_must_match_that_digest(client):
    body = image_manifest(client, "student/app")
    assert put_manifest(client, "student/app", digest_of(body), body).status_code == 201
    r = put_manifest(client, "student/app", digest_of(b"not it"), body)
    assert r.status_code == 400
    assert error_codes(r) == ["DIGEST_INVALID"]


def test_a_manifest_naming_a_missing_blob_is_refused_with_manifest_blob_unknown(client):
    missing = digest_of(b"never pushed")
    config = push_blob(client, "student/app", b"{}")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                       "config": {"mediaType": OCI_CONFIG, "digest": config, "size": 2},
                       "layers": [{"mediaType": OCI_LAYER, "digest": missing, "size": 12}]}).encode()
    r = put_manifest(client, "student/app", "v1", body)
    assert r.status_code == 400
    assert r.json()["errors"][0]["code"] == "MANIFEST_BLOB_UNKNOWN"
    assert r.json()["errors"][0]["detail"] == {"digest": missing}
    assert client.get("/v2/student/app/manifests/v1").status_code == 404


def test_an_index_needs_its_manifests_in_the_repository(client):
    body = image_manifest(client, "student/app")
    put_manifest(client, "student/app", digest_of(body), body)
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [descriptor(OCI_MANIFEST, body)]}).encode()
    assert put_manifest(client, "student/app", "multi", index, OCI_INDEX).status_code == 201
    r = put_manifest(client, "other/app", "multi", index, OCI_INDEX)
    assert error_codes(r) == ["MANIFEST_BLOB_UNKNOWN"]


def test_a_malformed_manifest_is_refused_with_manifest_invalid(client):
    r = put_manifest(client, "student/app", "v1", b"{not json")
    assert (r.status_code, error_codes(r)) == (400, ["MANIFEST_INVALID"])


def test_unknown_manifest_tag_and_upload_have_their_own_error_codes(client):
    r = client.get("/v2/student/app/manifests/latest")
    assert (r.status_code, error_codes(r)) == (404, ["MANIFEST_UNKNOWN"])
    r = client.get("/v2/student/app/tags/list")
    assert (r.status_code, error_codes(r)) == (404, ["NAME_UNKNOWN"])
    r = client.get("/v2/student/app/blobs/uploads/" + "0" * 32)
    assert (r.status_code, error_codes(r)) == (404, ["BLOB_UPLOAD_UNKNOWN"])
    error = r.json()["errors"][0]
    assert set(error) >= {"code", "message"} and isinstance(error["message"], str)
    assert r.headers["Content-Type"] == "application/json"


# ---- content discovery --------------------------------------------------------------------
def test_tags_list_paginates_with_n_and_last_and_a_link_header(client):
    body = image_manifest(client, "student/app")
    for tag in ["v3", "v1", "latest", "v2"]:
        put_manifest(client, "student/app", tag, body)
    everything = client.get("/v2/student/app/tags/list").json()
    assert everything == {"name": "student/app", "tags": ["latest", "v1", "v2", "v3"]}

    first = client.get("/v2/student/app/tags/list", params={"n": 2})
    assert first.json()["tags"] == ["latest", "v1"]
    link = re.match(r'<([^>]+)>; rel="next"', first.headers["Link"])
    second = client.get(link[1])
    assert second.json()["tags"] == ["v2", "v3"]
    assert "Link" not in second.headers
    assert client.get("/v2/student/app/tags/list", params={"n": 5, "last": "v1"}).json()["tags"] == ["v2", "v3"]
    assert client.get("/v2/student/app/tags/list", params={"n": 0}).json()["tags"] == []


def test_catalog_lists_repositories(client):
    push_blob(client, "student/app", b"a")
    push_blob(client, "student/web/frontend", b"b")
    assert client.get("/v2/_catalog").json() == {"repositories": ["student/app", "student/web/frontend"]}


def test_referrers_lists_artifacts_whose_subject_is_the_image_and_filters_by_artifact_type(client):
    image = image_manifest(client, "student/app")
    put_manifest(client, "student/app", "v1", image)
    subject = descriptor(OCI_MANIFEST, image)
    empty = push_blob(client, "student/app", b"{}")
    artifacts = {}
    for kind in ("application/vnd.example.sbom", "application/vnd.example.signature"):
        payload = push_blob(client, "student/app", kind.encode())
        body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": kind,
                           "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2},
                           "layers": [{"mediaType": "text/plain", "digest": payload, "size": len(kind)}],
                           "subject": subject, "annotations": {"kind": kind}}).encode()
        r = put_manifest(client, "student/app", digest_of(body), body)
        assert r.status_code == 201
        assert r.headers["OCI-Subject"] == subject["digest"]
        artifacts[kind] = body

    r = client.get(f"/v2/student/app/referrers/{subject['digest']}")
    assert r.status_code == 200
    assert r.headers["Content-Type"] == OCI_INDEX
    index = r.json()
    assert index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    assert sorted(d["digest"] for d in index["manifests"]) == sorted(digest_of(b) for b in artifacts.values())
    sbom = next(d for d in index["manifests"] if d["artifactType"] == "application/vnd.example.sbom")
    assert sbom["size"] == len(artifacts["application/vnd.example.sbom"])
    assert sbom["annotations"] == {"kind": "application/vnd.example.sbom"}

    r = client.get(f"/v2/student/app/referrers/{subject['digest']}",
                   params={"artifactType": "application/vnd.example.signature"})
    assert r.headers["OCI-Filters-Applied"] == "artifactType"
    assert [d["digest"] for d in r.json()["manifests"]] == [
        digest_of(artifacts["application/vnd.example.signature"])]
    # an unknown subject has no referrers, which is an empty index and not a 404
    r = client.get(f"/v2/student/app/referrers/{digest_of(b'nothing')}")
    assert (r.status_code, r.json()["manifests"]) == (200, [])


def test_deleting_a_referrer_removes_it_from_the_referrers_list(client):
    image = image_manifest(client, "student/app")
    put_manifest(client, "student/app", "v1", image)
    empty = push_blob(client, "student/app", b"{}")
    body = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "a/b",
                       "config": {"mediaType": EMPTY_JSON, "digest": empty, "size": 2}, "layers": [],
                       "subject": descriptor(OCI_MANIFEST, image)}).encode()
    put_manifest(client, "student/app", digest_of(body), body)
    assert client.delete(f"/v2/student/app/manifests/{digest_of(body)}").status_code == 202
    assert client.get(f"/v2/student/app/referrers/{digest_of(image)}").json()["manifests"] == []


# ---- content management -------------------------------------------------------------------
def test_deleting_a_manifest_by_digest_removes_it_and_the_tags_pointing_at_it(client):
    body = image_manifest(client, "student/app")
    put_manifest(client, "student/app", "v1", body)
    put_manifest(client, "student/app", "latest", body)
    assert client.delete(f"/v2/student/app/manifests/{digest_of(body)}").status_code == 202
    for reference in ("v1", "latest", digest_of(body)):
        assert client.get(f"/v2/student/app/manifests/{reference}").status_code == 404
    assert client.get("/v2/student/app/tags/list").json()["tags"] == []
    r = client.delete(f"/v2/student/app/manifests/{digest_of(body)}")
    assert (r.status_code, error_codes(r)) == (404, ["MANIFEST_UNKNOWN"])


def test_deleting_a_tag_keeps_the_manifest(client):
    body = image_manifest(client, "student/app")
    put_manifest(client, "student/app", "v1", body)
    assert client.delete("/v2/student/app/manifests/v1").status_code == 202
    assert client.get("/v2/student/app/manifests/v1").status_code == 404
    assert client.get(f"/v2/student/app/manifests/{digest_of(body)}").status_code == 200


def test_deleting_a_blob_makes_it_unknown(client):
    digest = push_blob(client, "student/app", b"bye")
    assert client.delete(f"/v2/student/app/blobs/{digest}").status_code == 202
    assert client.head(f"/v2/student/app/blobs/{digest}").status_code == 404
    r = client.delete(f"/v2/student/app/blobs/{digest}")
    assert (r.status_code, error_codes(r)) == (404, ["BLOB_UNKNOWN"])


def test_mount_links_a_blob_from_another_repository_or_falls_back_to_an_upload(client):
    digest = push_blob(client, "library/base", b"shared layer")
    r = client.post("/v2/student/app/blobs/uploads/", params={"mount": digest, "from": "library/base"})
    assert r.status_code == 201
    assert r.headers["Docker-Content-Digest"] == digest
    assert client.get(f"/v2/student/app/blobs/{digest}").content == b"shared layer"

    missing = digest_of(b"not there")
    r = client.post("/v2/student/app/blobs/uploads/", params={"mount": missing, "from": "library/base"})
    assert r.status_code == 202
    assert "/blobs/uploads/" in r.headers["Location"]
    assert client.put(r.headers["Location"], params={"digest": missing},
                      content=b"not there").status_code == 201


@pytest.mark.parametrize("path", ["/v2/Student/app/tags/list", "/v2/student/app-/tags/list",
                                  "/v2/student/a..b/tags/list", "/v2/student/_x/tags/list", "/v2/student//app/manifests/v1",
                                  "/v2/" + "a" * 256 + "/tags/list"])
def test_invalid_repository_names_are_refused_with_name_invalid(client, path):
    r = client.get(path)
    assert r.status_code == 400
    assert error_codes(r) == ["NAME_INVALID"]


def test_an_invalid_digest_is_refused_with_digest_invalid(client):
    r = client.get("/v2/student/app/blobs/sha256:nothex")
    assert (r.status_code, error_codes(r)) == (400, ["DIGEST_INVALID"])


# ---- concurrency and crash safety ---------------------------------------------------------
def test_two_concurrent_pushes_of_the_same_blob_both_succeed_and_store_it_intact(registry):
    data = os.urandom(6 << 20)
    digest = digest_of(data)
    start = threading.Barrier(2)
    results: list[int] = []

    def push(repo: str) -> None:
        with httpx.Client(base_url=registry.url) as c:
            location = c.post(f"/v2/{repo}/blobs/uploads/").headers["Location"]
            start.wait()
            pieces = (data[i:i + 256 * 1024] for i in range(0, len(data), 256 * 1024))
            location = c.patch(location, content=pieces).headers["Location"]
            results.append(c.put(location, params={"digest": digest}).status_code)

    threads = [threading.Thread(target=push, args=(repo,)) for repo in ("student/one", "student/two")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [201, 201]
    stored = registry.root / "blobs" / "sha256" / digest.split(":")[1]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest.split(":")[1]
    assert RegistryStorage(registry.root).fsck() == []
    assert list((registry.root / "uploads").iterdir()) == []


SERVER_CHILD = """
import sys
from minicontainer.registry.server import RegistryServer
server = RegistryServer(sys.argv[1], "127.0.0.1:0")
print(server.url, flush=True)
server.serve_forever()
"""


def test_a_server_killed_mid_upload_leaves_no_partial_or_corrupt_blob(engine_root):
    root = engine_root / "registry"
    child = subprocess.Popen([sys.executable, "-c", SERVER_CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        kept = os.urandom(10_000)
        big = os.urandom(8 << 20)
        paused = threading.Event()
        outcome: list[object] = []
        with httpx.Client(base_url=url) as c:
            push_blob(c, "student/app", kept)
            location = c.post("/v2/student/app/blobs/uploads/").headers["Location"]

            def stream():
                yield big[: 3 << 20]
                paused.wait()  # the rest never comes: the server dies first
                yield big[3 << 20:]

            def upload():
                try:
                    with httpx.Client(base_url=url) as u:
                        outcome.append(u.put(location, params={"digest": digest_of(big)}, content=stream()))
                except httpx.HTTPError as exc:
                    outcome.append(exc)
            uploader = threading.Thread(target=upload)
            uploader.start()
            while int(c.get(location).headers["Range"].split("-")[1]) < (2 << 20):
                time.sleep(0.01)  # the server has written at least 2 MiB of the 8 MiB blob
            child.send_signal(signal.SIGKILL)
            child.wait()
            paused.set()
            uploader.join()
        assert isinstance(outcome[0], httpx.HTTPError)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()

    with RegistryServer(root, "127.0.0.1:0") as server, httpx.Client(base_url=server.url) as c:
        assert c.head(f"/v2/student/app/blobs/{digest_of(big)}").status_code == 404
        assert c.get(f"/v2/student/app/blobs/{digest_of(kept)}").content == kept
        # the half-received upload is still a session, not a blob; its status survived the crash
        status = c.get(location)
        assert status.status_code == 204
        assert int(status.headers["Range"].split("-")[1]) + 1 < len(big)
    assert RegistryStorage(root).fsck() == []
    assert sorted(p.name for p in (root / "blobs" / "sha256").iterdir()) == [digest_of(kept).split(":")[1]]


def test_an_upload_interrupted_by_a_restart_can_be_resumed(engine_root):
    root = engine_root / "registry"
    data = os.urandom(300_000)
    with RegistryServer(root, "127.0.0.1:0") as server, httpx.Client(base_url=server.url) as c:
        location = c.post("/v2/student/app/blobs/uploads/").headers["Location"]
        c.patch(location, content=data[:100_000], headers={"Content-Range": "0-99999"})
    with RegistryServer(root, "127.0.0.1:0") as server, httpx.Client(base_url=server.url) as c:
        assert c.get(location).headers["Range"] == "0-99999"
        c.patch(location, content=data[100_000:], headers={"Content-Range": f"100000-{len(data) - 1}"})
        assert c.put(location, params={"digest": digest_of(data)}).status_code == 201


# ---- authentication -----------------------------------------------------------------------
def test_htpasswd_basic_auth_challenges_then_accepts_the_right_password(engine_root):
    htpasswd = engine_root / "htpasswd"
    htpasswd.parent.mkdir(parents=True, exist_ok=True)
    sha = base64.b64encode(hashlib.sha1(b"s3cret").digest()).decode()
    htpasswd.write_text(auth.make_htpasswd_line("alice", "wonder") + f"\nbob:{{SHA}}{sha}\n")
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", htpasswd=htpasswd) as server:
        with httpx.Client(base_url=server.url) as c:
            r = c.get("/v2/")
            assert r.status_code == 401
            assert r.headers["WWW-Authenticate"].startswith("Basic realm=")
            assert error_codes(r) == ["UNAUTHORIZED"]
            assert c.get("/v2/", auth=("alice", "wrong")).status_code == 401
            assert c.get("/v2/", auth=("alice", "wonder")).status_code == 200
            assert c.get("/v2/", auth=("bob", "s3cret")).status_code == 200
            data = b"authenticated layer"
            r = c.post("/v2/alice/app/blobs/uploads/", params={"digest": digest_of(data)},
                       content=data, auth=("alice", "wonder"))
            assert r.status_code == 201
        assert [e.auth for e in server.log] == ["none", "none", "basic:alice", "basic:bob", "basic:alice"]


def test_load_htpasswd_explains_what_to_do_with_bcrypt_when_bcrypt_is_missing(engine_root):
    try:
        import bcrypt  # noqa: F401
        pytest.skip("the bcrypt module is installed here, so bcrypt lines are accepted")
    except ImportError:
        pass
    engine_root.mkdir(parents=True, exist_ok=True)
    path = engine_root / "htpasswd"
    path.write_text("alice:$2y$05$abcdefghijklmnopqrstuuJ5d8cUq0ZKp3m7yQ4tqHn2Xr3s3v1zS\n")
    with pytest.raises(RegistryError) as info:
        auth.load_htpasswd(path)
    message = str(info.value)
    assert "\n" not in message and "bcrypt" in message and "{SHA}" in message
    assert "minicontainer registry htpasswd" in message


def test_add_htpasswd_user_writes_a_line_that_verifies(engine_root):
    path = engine_root / "htpasswd"
    path.parent.mkdir(parents=True, exist_ok=True)
    auth.add_htpasswd_user(path, "carol", "first")
    auth.add_htpasswd_user(path, "carol", "second")
    users = auth.load_htpasswd(path)
    assert list(users) == ["carol"]
    assert auth.verify_password(users["carol"], "second")
    assert not auth.verify_password(users["carol"], "first")


def parse_challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.partition(" ")
    assert scheme == "Bearer"
    return dict(re.findall(r'(\w+)="([^"]*)"', params))


def test_token_flow_challenge_then_token_then_bearer_access(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", token_realm=True,
                        users={"student": "pw"}) as server, httpx.Client(base_url=server.url) as c:
        r = c.post("/v2/student/app/blobs/uploads/")
        assert r.status_code == 401
        challenge = parse_challenge(r.headers["WWW-Authenticate"])
        assert challenge == {"realm": f"{server.url}/token", "service": "minicontainer-registry",
                             "scope": "repository:student/app:pull,push"}

        r = c.get(challenge["realm"], params={"service": challenge["service"], "scope": challenge["scope"]},
                  auth=("student", "pw"))
        assert r.status_code == 200
        token = r.json()["token"]
        claims = auth.TokenIssuer(server.issuer.secret).verify(token)
        assert claims.sub == "student" and claims.aud == "minicontainer-registry"
        assert claims.access == [{"type": "repository", "name": "student/app", "actions": ["pull", "push"]}]

        bearer = {"Authorization": f"Bearer {token}"}
        data = b"pushed with a token"
        r = c.post("/v2/student/app/blobs/uploads/", params={"digest": digest_of(data)},
                   content=data, headers=bearer)
        assert r.status_code == 201
        assert c.get(f"/v2/student/app/blobs/{digest_of(data)}", headers=bearer).content == data
        assert c.get(challenge["realm"], params={"scope": challenge["scope"]},
                     auth=("student", "wrong")).status_code == 401
    assert server.log[-2].auth == "bearer:student"


def test_a_pull_only_token_cannot_push(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", token_realm=True,
                        users={"student": "pw"}) as server, httpx.Client(base_url=server.url) as c:
        # the policy gives 'student' pull only outside student/..., and anonymous pull only
        for creds in [("student", "pw"), None]:
            r = c.get("/token", params={"service": "minicontainer-registry",
                                        "scope": "repository:library/busybox:pull,push"}, auth=creds)
            token = r.json()["token"]
            claims = server.issuer.verify(token)
            assert claims.access == [{"type": "repository", "name": "library/busybox", "actions": ["pull"]}]
            r = c.post("/v2/library/busybox/blobs/uploads/", headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 403
            assert error_codes(r) == ["DENIED"]
            assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]


def test_token_issuer_rejects_tampered_foreign_and_expired_tokens():
    issuer = auth.TokenIssuer(b"k" * 32)
    token = issuer.issue("student", [{"type": "repository", "name": "student/app", "actions": ["pull"]}])
    assert issuer.verify(token).allows("student/app", "pull")
    assert not issuer.verify(token).allows("student/app", "push")
    header, claims, signature = token.split(".")
    forged = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged["access"][0]["actions"] = ["pull", "push"]
    forged_b64 = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    with pytest.raises(auth.AuthError):
        issuer.verify(f"{header}.{forged_b64}.{signature}")
    with pytest.raises(auth.AuthError):
        auth.TokenIssuer(b"other" * 8).verify(token)
    with pytest.raises(auth.AuthError):
        auth.TokenIssuer(b"k" * 32, ttl=-10).verify(auth.TokenIssuer(b"k" * 32, ttl=-10).issue("x", []))


# ---- the request log and the trace ----------------------------------------------------------
def test_the_request_log_lists_every_request_of_a_push_in_order(registry, client):
    layer = os.urandom(2000)
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    location = client.patch(location, content=layer).headers["Location"]
    client.put(location, params={"digest": digest_of(layer)})
    client.head(f"/v2/student/app/blobs/{digest_of(layer)}")
    log = [(e.method, e.path.split("?")[0], e.status) for e in registry.log]
    upload_path = location.split("?")[0]
    assert log == [("POST", "/v2/student/app/blobs/uploads/", 202),
                   ("PATCH", upload_path, 202),
                   ("PUT", upload_path, 201),
                   ("HEAD", f"/v2/student/app/blobs/{digest_of(layer)}", 200)]
    assert registry.log[1].bytes_in == 2000
    assert registry.log[2].path.endswith(f"?digest={digest_of(layer)}")
    assert "PATCH" in registry.log.text() and "<table>" in registry.log._repr_html_()


def test_state_changing_requests_are_recorded_as_steps_in_the_servers_own_trace(registry, client):
    with trace.recording() as callers:
        body = image_manifest(client, "student/app")
        put_manifest(client, "student/app", "v1", body)
        client.delete("/v2/student/app/manifests/v1")
        client.get("/v2/student/app/tags/list")  # reads are not steps
    recorded = registry.trace
    assert recorded.names() == ["push_blob", "push_blob", "push_manifest", "delete_manifest"]
    # not in the caller's trace: with client and server in one process, steps would show twice
    assert callers.names() == []
    step = recorded.find("push_manifest")
    assert step.call == "PUT /v2/student/app/manifests/v1" and step.ok
    assert step.result == digest_of(body)
    assert step.shell.startswith("curl -X PUT")


def test_a_notebook_planning_a_trace_does_not_stop_the_server_from_storing(client):
    """plan() records steps without running them; the server must still do its work."""
    with trace.planning() as planned:
        digest = push_blob(client, "student/app", b"stored anyway")
    assert client.get(f"/v2/student/app/blobs/{digest}").content == b"stored anyway"
    assert planned.names() == []


def test_ctrl_c_stops_a_foreground_server_cleanly(engine_root):
    child = subprocess.Popen([sys.executable, "-c", SERVER_CHILD, str(engine_root / "registry")],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        assert httpx.get(f"{url}/v2/").status_code == 200
        child.send_signal(signal.SIGINT)
        assert child.wait() == 0
        assert "Traceback" not in child.stderr.read()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
        child.stderr.close()


def test_the_server_refuses_to_listen_beyond_loopback_unless_asked(engine_root):
    with pytest.raises(RegistryError) as info:
        RegistryServer(engine_root / "registry", "0.0.0.0:0")
    assert "allow_remote" in str(info.value) and "\n" not in str(info.value)


def test_stop_closes_idle_keep_alive_connections(engine_root):
    server = RegistryServer(engine_root / "registry", "127.0.0.1:0").start()
    with httpx.Client(base_url=server.url) as c:
        assert c.get("/v2/").status_code == 200  # the connection stays open (keep-alive)
        server.stop()
        with pytest.raises(httpx.HTTPError):
            c.get("/v2/")


# ---- hostile input (issue 11): each of these once gave a 500, a wrong status or stray state ----
def stored_files(root: Path) -> set[str]:
    """Every file under the registry root, as paths relative to it (the lock files aside)."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "_lock"}


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
@pytest.mark.parametrize("reference", [".INVALID_MANIFEST_NAME", "sha256:nothex", "md5:" + "0" * 32,
                                       "-dash", "a" * 129])
def test_a_reference_that_is_neither_tag_nor_digest_names_no_manifest(client, method, reference):
    # distribution and the OCI conformance suite: such a manifest is simply unknown (404)
    r = client.request(method, f"/v2/student/app/manifests/{reference}")
    assert r.status_code == 404
    if method != "HEAD":
        assert error_codes(r) == ["MANIFEST_UNKNOWN"]


def test_mount_without_from_links_a_blob_the_registry_already_holds(registry, client):
    digest = push_blob(client, "library/base", b"a layer everybody has")
    r = client.post("/v2/student/app/blobs/uploads/", params={"mount": digest})
    assert r.status_code == 201, r.text
    assert r.headers["Location"] == f"/v2/student/app/blobs/{digest}"
    assert client.get(f"/v2/student/app/blobs/{digest}").content == b"a layer everybody has"
    # the repository that already has it may ask again: still 201, nothing to upload
    assert client.post("/v2/student/app/blobs/uploads/", params={"mount": digest}).status_code == 201
    # a digest nobody holds starts an ordinary upload, as a mount that can't be done always does
    r = client.post("/v2/student/app/blobs/uploads/", params={"mount": digest_of(b"nobody has this")})
    assert r.status_code == 202 and "/blobs/uploads/" in r.headers["Location"]
    assert "mount_blob" in registry.trace.names()


def test_automatic_mount_only_takes_blobs_from_repositories_the_token_may_read(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", token_realm=True,
                        users={"alice": "a", "bob": "b"}) as server, httpx.Client(base_url=server.url) as c:
        def token(user: str, *scopes: str) -> dict[str, str]:
            r = c.get("/token", params={"service": "minicontainer-registry", "scope": list(scopes)},
                      auth=(user, user[0]))
            return {"Authorization": f"Bearer {r.json()['token']}"}
        secret = b"alice's private layer"
        alice = token("alice", "repository:alice/app:pull,push")
        assert c.post("/v2/alice/app/blobs/uploads/", params={"digest": digest_of(secret)},
                      content=secret, headers=alice).status_code == 201

        only_own = token("bob", "repository:bob/app:pull,push")
        r = c.post("/v2/bob/app/blobs/uploads/", params={"mount": digest_of(secret)}, headers=only_own)
        assert r.status_code == 202, "a token without pull on alice/app must not learn that alice has the blob"
        assert c.head(f"/v2/bob/app/blobs/{digest_of(secret)}", headers=only_own).status_code == 404

        with_read = token("bob", "repository:bob/app:pull,push", "repository:alice/app:pull")
        r = c.post("/v2/bob/app/blobs/uploads/", params={"mount": digest_of(secret)}, headers=with_read)
        assert r.status_code == 201
        assert c.get(f"/v2/bob/app/blobs/{digest_of(secret)}", headers=only_own).content == secret


@pytest.mark.parametrize("content_type,body", [
    (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": 5}),
    ("", {"schemaVersion": 2, "mediaType": 5}),
    (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "subject": "str"}),
    (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": []}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": "sha256:x", "size": 2}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "size": 2}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": 7, "digest": digest_of(b"{}"), "size": 2}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"),
                                                   "size": "2"}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"),
                                                   "size": -1}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "annotations": ["not", "a", "map"],
                    "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"), "size": 2}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "artifactType": {}, "config": {
        "mediaType": OCI_CONFIG, "digest": digest_of(b"{}"), "size": 2}}),
    (OCI_MANIFEST, {"schemaVersion": 2, "config": {"mediaType": OCI_CONFIG, "digest": digest_of(b"{}"),
                                                   "size": 2}, "layers": {"not": "a list"}}),
    (OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX}),
    (OCI_INDEX, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [5]}),
    ("text/plain", {"schemaVersion": 2}),
    ("not a media type", {"schemaVersion": 2}),
    (OCI_MANIFEST, ["a", "list"]),
])
def test_a_structurally_wrong_manifest_is_manifest_invalid_and_nothing_is_stored(registry, client,
                                                                                 content_type, body):
    push_blob(client, "student/app", b"{}")
    before = stored_files(registry.root)
    r = put_manifest(client, "student/app", "v1", json.dumps(body).encode(), content_type)
    assert (r.status_code, error_codes(r)) == (400, ["MANIFEST_INVALID"]), r.text
    assert stored_files(registry.root) == before
    assert client.get("/v2/student/app/manifests/v1").status_code == 404


def test_a_manifest_nested_beyond_the_parsers_depth_is_manifest_invalid(client):
    body = b"[" * 200_000 + b"]" * 200_000  # json.loads would recurse until RecursionError
    r = put_manifest(client, "student/app", "v1", body)
    assert (r.status_code, error_codes(r)) == (400, ["MANIFEST_INVALID"])


def raw_request(url: str, request: bytes, *, done_sending: bool = False) -> bytes:
    """Send bytes on a fresh connection and read the answer until the server closes it
    (``done_sending``: shut our side first, so a server waiting for more sees the end)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    # the timeout only keeps a server that waits for a body that never comes from hanging the test
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(request)
        if done_sending:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


@pytest.mark.parametrize("length", ["-1", "-99999", "+5", "5_0", " 0x10", "1" * 30])
def test_a_content_length_that_is_not_a_plain_decimal_is_refused_at_once(registry, client, length):
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    answer = raw_request(registry.url, f"PATCH {location} HTTP/1.1\r\nHost: x\r\n"
                                       f"Content-Length: {length}\r\n\r\n".encode())
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line.startswith(b"HTTP/1.1 400 "), answer[:300]
    assert b"Connection: close" in answer  # the body's end is unknowable: the server hangs up


@pytest.mark.parametrize("headers", [{"Content-Range": "0-" + "9" * 5000},
                                     {"Content-Range": "9" * 5000 + "-" + "9" * 5001},
                                     {"Content-Range": "\u0661-\u0662"}])
def test_content_ranges_with_absurd_numbers_get_416_not_an_error(client, headers):
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    r = client.patch(location, content=b"x", headers={k: v.encode() for k, v in headers.items()})
    assert r.status_code == 416


@pytest.mark.parametrize("range_header", ["bytes=0-" + "9" * 5000, "bytes=" + "9" * 5000 + "-",
                                          "bytes=-" + "9" * 5000])
def test_blob_ranges_with_absurd_numbers_are_answered_not_crashed_on(client, range_header):
    digest = push_blob(client, "student/app", b"0123456789")
    r = client.get(f"/v2/student/app/blobs/{digest}", headers={"Range": range_header})
    assert r.status_code in (206, 416)


@pytest.mark.parametrize("n", ["9" * 5000, "\u00b2", "-1"])
def test_tag_list_page_sizes_that_are_not_small_integers_get_a_clean_answer(client, n):
    assert put_manifest(client, "student/app", "v1", image_manifest(client, "student/app")).status_code == 201
    r = client.get("/v2/student/app/tags/list", params={"n": n})
    assert r.status_code in (200, 400)


def test_an_anonymous_token_cannot_list_the_catalog(engine_root):
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", token_realm=True,
                        users={"student": "pw"}) as server, httpx.Client(base_url=server.url) as c:
        r = c.get("/v2/_catalog")
        assert r.status_code == 401
        challenge = parse_challenge(r.headers["WWW-Authenticate"])
        assert challenge["scope"] == "registry:catalog:*"
        anonymous = c.get("/token", params={"service": challenge["service"], "scope": challenge["scope"]})
        assert server.issuer.verify(anonymous.json()["token"]).access == []
        r = c.get("/v2/_catalog", headers={"Authorization": f"Bearer {anonymous.json()['token']}"})
        assert r.status_code == 403 and error_codes(r) == ["DENIED"]
        student = c.get("/token", params={"service": challenge["service"], "scope": challenge["scope"]},
                        auth=("student", "pw"))
        r = c.get("/v2/_catalog", headers={"Authorization": f"Bearer {student.json()['token']}"})
        assert r.status_code == 200 and r.json() == {"repositories": []}


def test_abandoned_uploads_are_swept_while_serving_after_a_kill_9_mid_push(engine_root):
    root = engine_root / "registry"
    child = subprocess.Popen([sys.executable, "-c", SERVER_CHILD, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        url = child.stdout.readline().strip()
        paused = threading.Event()
        with httpx.Client(base_url=url) as c:
            location = c.post("/v2/student/app/blobs/uploads/").headers["Location"]

            def stream():
                yield os.urandom(2 << 20)
                paused.wait()  # the rest of the layer never comes: the server dies first

            outcome: list[object] = []

            def upload():
                try:
                    with httpx.Client(base_url=url) as u:
                        outcome.append(u.patch(location, content=stream()))
                except httpx.HTTPError as exc:
                    outcome.append(exc)
            uploader = threading.Thread(target=upload)
            uploader.start()
            while int(c.get(location).headers["Range"].split("-")[1]) < (1 << 20):
                time.sleep(0.01)  # the push is under way: the server has stored at least 1 MiB
            child.send_signal(signal.SIGKILL)
            child.wait()
            paused.set()
            uploader.join()
        assert isinstance(outcome[0], httpx.HTTPError), "the push was cut off by the kill"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stdout.close()
    abandoned = root / "uploads" / location.rsplit("/", 1)[1]
    assert (abandoned / "data").stat().st_size >= 1 << 20
    an_hour_ago = time.time() - 3600
    for path in (abandoned, *abandoned.iterdir()):
        os.utime(path, (an_hour_ago, an_hour_ago))  # as if nobody touched it for an hour

    with RegistryServer(root, "127.0.0.1:0", upload_max_age=600, sweep_interval=0.05) as server, \
            httpx.Client(base_url=server.url) as c:
        fresh = c.post("/v2/student/app/blobs/uploads/").headers["Location"]
        swept_at_start = not abandoned.exists()
        for _ in range(2000):  # the sweeper runs every 50 ms; give it plenty of rounds
            if not abandoned.exists() and server.uploads_swept:
                break
            time.sleep(0.05)
        assert not abandoned.exists(), "an upload untouched for longer than upload_max_age is removed"
        assert c.get(location).status_code == 404
        assert c.get(fresh).status_code == 204, "a session in use is never swept"
        assert swept_at_start or server.uploads_swept >= 1


def test_the_sweeper_keeps_running_while_serving(engine_root):
    root = engine_root / "registry"
    with RegistryServer(root, "127.0.0.1:0", upload_max_age=600, sweep_interval=0.05) as server, \
            httpx.Client(base_url=server.url) as c:
        location = c.post("/v2/student/app/blobs/uploads/").headers["Location"]
        directory = root / "uploads" / location.rsplit("/", 1)[1]
        an_hour_ago = time.time() - 3600
        for path in (directory, *directory.iterdir()):
            os.utime(path, (an_hour_ago, an_hour_ago))  # abandoned after the server started
        for _ in range(2000):
            if not directory.exists():
                break
            time.sleep(0.05)
        assert not directory.exists()
        r = c.patch(location, content=b"too late")
        assert (r.status_code, error_codes(r)) == (404, ["BLOB_UPLOAD_UNKNOWN"])


def test_a_session_finished_twice_at_once_is_stored_once_and_answered_cleanly(registry, client):
    data = os.urandom(4 << 20)
    location = client.post("/v2/student/app/blobs/uploads/").headers["Location"]
    client.patch(location, content=data)
    statuses: list[int] = []

    def finish():
        with httpx.Client(base_url=registry.url) as c:
            statuses.append(c.put(location, params={"digest": digest_of(data)}).status_code)
    threads = [threading.Thread(target=finish) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses)[0] == 201 and set(statuses) <= {201, 404}
    assert client.get(f"/v2/student/app/blobs/{digest_of(data)}").content == data


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minicontainer", *args], capture_output=True, text=True)


def test_serve_with_a_missing_htpasswd_file_gives_the_real_syntax_and_creates_no_root(engine_root):
    root = engine_root / "never-made"
    done = run_cli("registry", "serve", "--root", str(root), "--addr", "127.0.0.1:0",
                   "--htpasswd", "/nonexistent")
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert "minicontainer registry htpasswd /nonexistent USER" in done.stderr
    assert not root.exists()


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "127.0.0.1", "127.0.0.1:99999"])
def test_serve_that_cannot_listen_creates_no_root(engine_root, addr):
    root = engine_root / "never-made"
    done = run_cli("registry", "serve", "--root", str(root), "--addr", addr)
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not root.exists()


@pytest.mark.parametrize("header", ["Basic w6k=:x", "Basic \u00e9\u00e9\u00e9\u00e9", "Bearer a.b.\u00e9",
                                    "Bearer \u00ff.\u00ff.\u00ff", "Basic " + "A" * 7])
def test_authorization_headers_that_are_not_ascii_get_401_not_an_error(engine_root, header):
    for options in ({"users": {"student": "pw"}}, {"token_realm": True, "users": {"student": "pw"}}):
        with RegistryServer(engine_root / "registry", "127.0.0.1:0", **options) as server, \
                httpx.Client(base_url=server.url) as c:
            r = c.get("/v2/student/app/tags/list", headers={"Authorization": header.encode("latin-1")})
            assert (r.status_code, error_codes(r)) == (401, ["UNAUTHORIZED"])


def test_deleting_from_a_repository_that_does_not_exist_creates_nothing(registry, client):
    for reference in ("v1", digest_of(b"nothing")):
        r = client.delete(f"/v2/nobody/here/manifests/{reference}")
        assert (r.status_code, error_codes(r)) == (404, ["MANIFEST_UNKNOWN"])
    assert list((registry.root / "repos").iterdir()) == []
