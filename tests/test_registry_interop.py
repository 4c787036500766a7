"""Our registry server against a real client: skopeo pushes, pulls, inspects and lists
tags, with no auth, with htpasswd Basic, and through the token server."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from minicontainer.registry import auth
from minicontainer.registry.server import RegistryServer
from minicontainer.registry.storage import RegistryStorage

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
