"""Our registry server against a real client: skopeo pushes, pulls, inspects and lists
tags, with no auth, with htpasswd Basic, and through the token server; and beside a real
server: Debian's docker-registry (distribution 2.8) answers hostile requests as we do."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import httpx
import pytest

from minicontainer.registry import auth
from minicontainer.registry.server import RegistryServer
from minicontainer.registry.storage import RegistryStorage
from test_registry_server import raw_request

pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")]


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_blob(layout: Path, data: bytes) -> dict:
    digest = _sha256(data)
    (layout / "blobs" / "sha256" / digest.split(":")[1]).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def _layer(files: dict[str, bytes], links: dict[str, str] = {}) -> bytes:
    """An uncompressed tar of a few files and symlinks, deterministic (mtime 0, root-owned)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({str(Path(p).parent) for p in [*files, *links]} - {"."})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
        for path, target in links.items():
            info = tarfile.TarInfo(path)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return buffer.getvalue()


def build_busybox_layout(layout: Path, tag: str = "v1") -> dict:
    """A busybox-like OCI image layout, built here from the host's static busybox: two layers."""
    (layout / "blobs" / "sha256").mkdir(parents=True)
    busybox = Path("/bin/busybox").read_bytes() if Path("/bin/busybox").exists() else b"\x7fELF" + bytes(50_000)
    tars = [_layer({"bin/busybox": busybox}, {"bin/sh": "busybox", "bin/ls": "busybox"}),
            _layer({"etc/hostname": b"minicontainer\n", "etc/motd": b"built by a test\n"})]
    layers = []
    for tar in tars:
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       **_write_blob(layout, gzip.compress(tar, mtime=0))})
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["sh"], "Env": ["PATH=/bin"]},
                         "rootfs": {"type": "layers", "diff_ids": [_sha256(t) for t in tars]}}).encode()
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **_write_blob(layout, config)},
                "layers": layers}
    body = json.dumps(manifest).encode()
    index = {"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", **_write_blob(layout, body),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}
    (layout / "index.json").write_text(json.dumps(index))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return {"manifest": manifest, "digest": _sha256(body)}


def skopeo(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(args)} failed: {result.stderr}")
    return result


def blob_files(layout: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (layout / "blobs" / "sha256").iterdir()}


def reference(server: RegistryServer, name: str = "student/busybox", tag: str = "v1") -> str:
    return f"docker://{server.url.removeprefix('http://')}/{name}:{tag}"


def test_skopeo_pushes_pulls_inspects_and_lists_tags(engine_root):
    source, pulled = engine_root / "source", engine_root / "pulled"
    image = build_busybox_layout(source)
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference(server))
        skopeo("copy", "--src-tls-verify=false", reference(server), f"oci:{pulled}:v1")

        inspected = json.loads(skopeo("inspect", "--tls-verify=false", reference(server)).stdout)
        assert inspected["Digest"] == image["digest"]
        assert inspected["Layers"] == [layer["digest"] for layer in image["manifest"]["layers"]]
        assert inspected["Os"] == "linux" and inspected["Architecture"] == "amd64"

        tags = json.loads(skopeo("list-tags", "--tls-verify=false",
                                 reference(server).rsplit(":", 1)[0]).stdout)
        assert tags["Tags"] == ["v1"]
        assert any(e.method == "PUT" and "/manifests/v1" in e.path and e.status == 201 for e in server.log)
    assert blob_files(pulled) == blob_files(source)
    assert RegistryStorage(engine_root / "registry").fsck() == []


def test_a_second_skopeo_push_of_the_same_image_uploads_no_blob_again(engine_root):
    """A second push of the same image uploads no blob again: HEAD finds every one."""
    source = engine_root / "source"
    build_busybox_layout(source)
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference(server))
        first_push = len(server.log)
        skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference(server, tag="v2"))
        second = server.log[first_push:]
        assert not [e for e in second if e.method in ("PATCH", "POST")]
        tags = json.loads(skopeo("list-tags", "--tls-verify=false",
                                 reference(server).rsplit(":", 1)[0]).stdout)
        assert tags["Tags"] == ["v1", "v2"]


def test_skopeo_needs_the_htpasswd_credentials(engine_root):
    source = engine_root / "source"
    build_busybox_layout(source)
    htpasswd = engine_root / "htpasswd"
    htpasswd.write_text(auth.make_htpasswd_line("student", "s3cret") + "\n")
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", htpasswd=htpasswd) as server:
        refused = skopeo("copy", "--dest-tls-verify=false", f"oci:{source}:v1", reference(server), check=False)
        assert refused.returncode != 0
        assert "unauthorized" in refused.stderr.lower() or "authentication" in refused.stderr.lower()
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "student:s3cret",
               f"oci:{source}:v1", reference(server))
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "student:s3cret",
                                      reference(server)).stdout)
        assert inspected["Os"] == "linux"
        assert {e.auth for e in server.log if e.status < 400} == {"basic:student"}


def test_skopeo_goes_through_the_token_server(engine_root):
    source, pulled = engine_root / "source", engine_root / "pulled"
    image = build_busybox_layout(source)
    with RegistryServer(engine_root / "registry", "127.0.0.1:0", token_realm=True,
                        users={"student": "pw", "other": "pw2"}) as server:
        skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "student:pw",
               f"oci:{source}:v1", reference(server))
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", "--creds", "student:pw",
                                      reference(server)).stdout)
        assert inspected["Digest"] == image["digest"]
        tags = json.loads(skopeo("list-tags", "--tls-verify=false", "--creds", "student:pw",
                                 reference(server).rsplit(":", 1)[0]).stdout)
        assert tags["Tags"] == ["v1"]
        # anyone may pull; only 'student' may push under student/
        skopeo("copy", "--src-tls-verify=false", "--src-creds", "other:pw2", reference(server), f"oci:{pulled}:v1")
        denied = skopeo("copy", "--dest-tls-verify=false", "--dest-creds", "other:pw2",
                        f"oci:{source}:v1", reference(server, tag="stolen"), check=False)
        assert denied.returncode != 0 and "denied" in denied.stderr
        assert "stolen" not in json.loads(skopeo("list-tags", "--tls-verify=false",
                                                 reference(server).rsplit(":", 1)[0]).stdout)["Tags"]
        token_requests = [e for e in server.log if e.path.startswith("/token")]
        assert token_requests and all(e.status == 200 for e in token_requests)
        assert "bearer:student" in {e.auth for e in server.log}
    assert blob_files(pulled) == blob_files(source)


# ---- side by side with distribution (issue 11) ------------------------------------------------
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _negative_content_length(url: str, location: str) -> int:
    """Status of a PATCH whose Content-Length is -1."""
    answer = raw_request(url, f"PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n".encode())
    return int(answer.split(b" ", 2)[1])


def hostile_probes(url: str) -> dict[str, int]:
    """The statuses a registry gives the requests issue 11 found answered wrongly."""
    with httpx.Client(base_url=url) as c:
        seen = {f"{method} manifest .INVALID_MANIFEST_NAME":
                c.request(method, "/v2/probe/app/manifests/.INVALID_MANIFEST_NAME").status_code
                for method in ("GET", "HEAD")}
        for label, content_type, body in [
                ("config 5", MANIFEST, {"schemaVersion": 2, "mediaType": MANIFEST, "config": 5}),
                ("mediaType 5", "", {"schemaVersion": 2, "mediaType": 5}),
                ("subject 'str' without config", MANIFEST, {"schemaVersion": 2, "mediaType": MANIFEST,
                                                            "subject": "str"}),
                ("text/plain", "text/plain", {"schemaVersion": 2})]:
            seen[f"PUT manifest with {label}"] = c.put(
                "/v2/probe/app/manifests/v1", content=json.dumps(body).encode(),
                headers={"Content-Type": content_type}).status_code
        location = c.post("/v2/probe/app/blobs/uploads/").headers["Location"]
        seen["PATCH with Content-Length -1"] = _negative_content_length(url, location)
        seen["manifest v1 afterwards"] = c.get("/v2/probe/app/manifests/v1").status_code
    return seen


@pytest.mark.skipif(not Path("/usr/bin/docker-registry").exists(), reason="docker-registry is not installed")
def test_hostile_requests_get_the_answers_distribution_gives(engine_root):
    from test_registry_client_interop import docker_registry
    expected = {"GET manifest .INVALID_MANIFEST_NAME": 404, "HEAD manifest .INVALID_MANIFEST_NAME": 404,
                "PUT manifest with config 5": 400, "PUT manifest with mediaType 5": 400,
                "PUT manifest with subject 'str' without config": 400, "PUT manifest with text/plain": 400,
                "PATCH with Content-Length -1": 400, "manifest v1 afterwards": 404}
    with docker_registry(engine_root / "docker-registry") as (host, _log):
        assert hostile_probes(f"http://{host}") == expected, "the expectations are what distribution does"
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        assert hostile_probes(server.url) == expected
    assert sorted((engine_root / "registry" / "blobs").rglob("*")) == [], "a refused manifest stores nothing"


@pytest.mark.skipif(not Path("/usr/bin/docker-registry").exists(), reason="docker-registry is not installed")
def test_automatic_cross_mount_is_201_here_where_distribution_2_8_opens_an_upload(engine_root):
    """The spec lets a registry mount a blob asked for by digest alone; distribution 2.8 doesn't
    (202, an upload), we do (201), and both answers are allowed clients must handle."""
    from test_registry_client_interop import docker_registry
    data = b"a layer both registries hold"
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def mount_without_from(url: str) -> int:
        with httpx.Client(base_url=url) as c:
            location = c.post("/v2/probe/base/blobs/uploads/").headers["Location"]
            separator = "&" if "?" in location else "?"  # distribution's Location carries its _state
            c.put(f"{location}{separator}digest={digest}", content=data).raise_for_status()
            return c.post("/v2/probe/app/blobs/uploads/", params={"mount": digest}).status_code
    with docker_registry(engine_root / "docker-registry") as (host, _log):
        assert mount_without_from(f"http://{host}") == 202
    with RegistryServer(engine_root / "registry", "127.0.0.1:0") as server:
        assert mount_without_from(server.url) == 201
