"""Our registry client against real peers: Debian's docker-registry (distribution 2.8), with
and without htpasswd auth, and skopeo reading back what we pushed (and pushing what we pull)."""
from __future__ import annotations

import ctypes
import ctypes.util
import json
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from minicontainer.errors import RegistryError
from minicontainer.image.builtin import BUILTIN_REF, build_builtin_image
from minicontainer.image.store import OCI_INDEX, ImageStore
from minicontainer.registry import client
from minicontainer.registry.client import pull, push
from test_registry_client import add_fake_image, image_blobs

DOCKER_REGISTRY = "/usr/bin/docker-registry"
pytestmark = [pytest.mark.peer,
              pytest.mark.skipif(not Path(DOCKER_REGISTRY).exists(), reason="docker-registry is not installed")]


@pytest.fixture
def store(engine_root) -> ImageStore:
    s = ImageStore(engine_root / "local")
    build_builtin_image(s)
    return s


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def docker_registry(workdir: Path, htpasswd: Path | None = None) -> Iterator[tuple[str, Path]]:
    """Run docker-registry on a free 127.0.0.1 port with its own config; yield (host, access log)."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    auth = f"auth:\n  htpasswd:\n    realm: minicontainer-test\n    path: {htpasswd}\n" if htpasswd else ""
    config = workdir / "config.yml"
    config.write_text("version: 0.1\nlog:\n  level: warn\n"
                      f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'data'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n{auth}")
    log = workdir / "registry.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([DOCKER_REGISTRY, "serve", str(config)], stdout=out, stderr=subprocess.STDOUT)
    try:
        for _ in range(400):  # until it accepts connections (usually well under a second)
            if process.poll() is not None:
                raise AssertionError(f"docker-registry exited: {log.read_text()}")
            try:
                httpx.get(f"http://127.0.0.1:{port}/v2/")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield f"127.0.0.1:{port}", log
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def bcrypt_line(user: str, password: str) -> str | None:
    """An htpasswd line with a bcrypt hash (all docker-registry accepts), or None if we can't make one."""
    if shutil.which("htpasswd"):
        result = subprocess.run(["htpasswd", "-nbB", user, password], capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout.strip()
    # libxcrypt (Debian 12's libcrypt) does bcrypt; call it directly, since Python's crypt module is going away
    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    lib = ctypes.CDLL(name)
    lib.crypt_gensalt.restype = ctypes.c_char_p
    lib.crypt_gensalt.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p, ctypes.c_int]
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    salt = lib.crypt_gensalt(b"$2b$", 5, None, 0)
    hashed = lib.crypt(password.encode(), salt) if salt else None
    if not hashed or not hashed.startswith(b"$2b$"):
        return None
    return f"{user}:{hashed.decode()}"


def access_log(log: Path) -> list[str]:
    """'METHOD path status' for every request docker-registry logged."""
    lines = []
    for line in log.read_text().splitlines():
        if '"' in line and " HTTP/1.1\" " in line:
            request, status = line.split('"')[1], line.split('"')[2].split()[0]
            lines.append(f"{request.removesuffix(' HTTP/1.1')} {status}")
    return lines


# ---- docker-registry ---------------------------------------------------------------------
def test_push_to_and_pull_from_docker_registry_without_auth(store, engine_root):
    with docker_registry(engine_root / "dr") as (host, log):
        ref = f"{host}/student/busybox:v1"
        digest = push(ref, store, source_ref=BUILTIN_REF)
        pulled = ImageStore(engine_root / "pulled")
        assert pull(ref, pulled) == digest == store.descriptor(BUILTIN_REF)["digest"]
        assert image_blobs(pulled, ref) == image_blobs(store, BUILTIN_REF)

        before = len(access_log(log))
        push(ref, store, source_ref=BUILTIN_REF)
        again = access_log(log)[before:]
        assert not any("/blobs/uploads/" in line for line in again), again
        assert sum(line.startswith("HEAD ") and line.endswith(" 200") for line in again) == 2


def test_chunked_upload_and_cross_repository_mount_work_with_docker_registry(store, engine_root):
    with docker_registry(engine_root / "dr") as (host, log):
        push(f"{host}/a/x:v1", store, source_ref=BUILTIN_REF, chunk_size=200_000)
        assert sum(line.startswith("PATCH /v2/a/x/blobs/uploads/") and line.endswith(" 202")
                   for line in access_log(log)) >= 6
        store.tag(f"{host}/a/x:v1", store.descriptor(BUILTIN_REF))
        push(f"{host}/b/y:v1", store, source_ref=f"{host}/a/x:v1")
        mounts = [line for line in access_log(log) if line.startswith("POST /v2/b/y/blobs/uploads/?mount=")]
        assert len(mounts) == 2 and all("from=a%2Fx" in m and m.endswith(" 201") for m in mounts)
        pulled = ImageStore(engine_root / "pulled")
        pull(f"{host}/b/y:v1", pulled)
        assert image_blobs(pulled, f"{host}/b/y:v1") == image_blobs(store, BUILTIN_REF)


def test_a_multi_platform_index_round_trips_through_docker_registry(store, engine_root):
    with docker_registry(engine_root / "dr") as (host, _):
        ref = f"{host}/student/multi:v1"
        arm64 = add_fake_image(store, "arm64", b"arm64 content\n")
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX,
                            "manifests": [store.descriptor(BUILTIN_REF) | {"annotations": {}}, arm64]}).encode()
        store.tag(ref, {"mediaType": OCI_INDEX, "digest": store.write_blob(index), "size": len(index)})
        push(ref, store)
        arm = ImageStore(engine_root / "arm")
        pull(ref, arm, platform="linux/arm64")
        assert arm.resolve(ref).platform == "linux/arm64"
        amd = ImageStore(engine_root / "amd")
        pull(ref, amd)
        assert image_blobs(amd, ref) == image_blobs(store, BUILTIN_REF)


def test_docker_registry_with_htpasswd_refuses_anonymous_and_accepts_after_login(store, engine_root):
    line = bcrypt_line("alice", "s3cret")
    if line is None:
        pytest.skip("no way to make a bcrypt htpasswd line here (no htpasswd, no libcrypt bcrypt)")
    htpasswd = engine_root.parent / "htpasswd"
    htpasswd.write_text(line + "\n")
    with docker_registry(engine_root / "dr", htpasswd) as (host, _):
        ref = f"{host}/alice/busybox:v1"
        with pytest.raises(RegistryError, match=rf"^unauthorized: .*log in with minicontainer login {host}$"):
            push(ref, store, source_ref=BUILTIN_REF)
        with pytest.raises(RegistryError, match=r"^login failed: "):
            client.login(host, "alice", "wrong")
        client.login(host, "alice", "s3cret")
        digest = push(ref, store, source_ref=BUILTIN_REF)
        pulled = ImageStore(engine_root / "pulled")
        assert pull(ref, pulled) == digest
        assert image_blobs(pulled, ref) == image_blobs(store, BUILTIN_REF)


# ---- skopeo ------------------------------------------------------------------------------
def skopeo(*args: str) -> str:
    result = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True)
    assert result.returncode == 0, f"skopeo {' '.join(args)} failed: {result.stderr}"
    return result.stdout


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspects_and_copies_back_what_our_client_pushed(store, engine_root):
    with docker_registry(engine_root / "dr") as (host, _):
        digest = push(f"{host}/student/busybox:v1", store, source_ref=BUILTIN_REF)
        inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{host}/student/busybox:v1"))
        image = store.resolve(BUILTIN_REF)
        assert inspected["Digest"] == digest
        assert inspected["Layers"] == [layer["digest"] for layer in image.layers]
        assert (inspected["Os"], inspected["Architecture"]) == ("linux", "amd64")

        copied = engine_root.parent / "copied"
        skopeo("copy", "--src-tls-verify=false", f"docker://{host}/student/busybox:v1", f"oci:{copied}:v1")
        index = json.loads((copied / "index.json").read_text())
        assert [m["digest"] for m in index["manifests"]] == [digest]
        for wanted, data in image_blobs(store, BUILTIN_REF).items():
            assert (copied / "blobs" / "sha256" / wanted.split(":")[1]).read_bytes() == data


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_our_client_pulls_what_skopeo_pushed_from_an_oci_layout(store, engine_root):
    with docker_registry(engine_root / "dr") as (host, _):
        # the store's layout dir is an OCI layout skopeo can read, by its ref-name annotation
        skopeo("copy", "--dest-tls-verify=false", f"oci:{store.layout}:{BUILTIN_REF}",
               f"docker://{host}/peer/busybox:v1")
        pulled = ImageStore(engine_root / "pulled")
        digest = pull(f"{host}/peer/busybox:v1", pulled)
        assert digest == store.descriptor(BUILTIN_REF)["digest"]
        assert image_blobs(pulled, f"{host}/peer/busybox:v1") == image_blobs(store, BUILTIN_REF)
