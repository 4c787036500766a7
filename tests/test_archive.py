"""save and load: OCI-layout and docker-save tarballs, the fixture archives made by others,
round trips that keep every digest, and archives that are truncated, tampered with or
hostile, which load nothing. Peer tests check skopeo and umoci read what we save."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

import minicontainer
from minicontainer.engine import images
from minicontainer.engine.containers import list_records
from minicontainer.engine.run import get_image
from minicontainer.errors import LayerError, MinicontainerError
from minicontainer.image.archive import ArchiveError
from minicontainer.image.layers import apply_layer
from minicontainer.image.reference import parse_reference
from minicontainer.image.store import ImageStore, host_platform

FIXTURES = Path("/work/shared/fixtures/images")
HELLO_CONFIG = "sha256:ee301c921b8aadc002973b2e0c3da17d701dcd994b606769a7e6eaa100b81d44"
OCI_TAR = "application/vnd.oci.image.layer.v1.tar"


# ---- building archives by hand ---------------------------------------------------------------

def layer_tar(files: dict[str, bytes]) -> bytes:
    """An uncompressed layer tar: root-owned files, mtime 0."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LAYER = layer_tar({"hello.txt": b"hello from a hand-made layer\n"})


def make_config(comment: str = "hand-made", layers: list[bytes] | None = None,
                diff_ids: list[str] | None = None) -> bytes:
    """An image config for this host whose diff_ids are the layers' sha256 (unless given)."""
    layers = [LAYER] if layers is None else layers
    os_name, arch = host_platform().split("/")
    config = {"architecture": arch, "os": os_name, "created": "2024-01-01T00:00:00Z",
              "config": {"Cmd": ["/hello"]},
              "rootfs": {"type": "layers",
                         "diff_ids": diff_ids or ["sha256:" + hashlib.sha256(l).hexdigest() for l in layers]},
              "history": [{"created_by": comment}]}
    return json.dumps(config).encode()


def add_member(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
               linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if info.size else None)


def write_docker_save(path: Path, entries: list[tuple[bytes, list[str]]], layers: list[bytes] | None = None,
                      extra: list[tuple[str, bytes, bytes, str]] = (), layer_names: list[str] | None = None) -> Path:
    """A legacy `docker save` archive: <config hex>.json, <layer id>/layer.tar, manifest.json.

    ``extra`` members (name, data, type, linkname) are added first, for hostile cases.
    """
    layers = [LAYER] if layers is None else layers
    names = layer_names or [f"{hashlib.sha256(b'id' + l).hexdigest()}/layer.tar" for l in layers]
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, kind, linkname in extra:
            add_member(tar, name, data, kind, linkname)
        for name, data in zip(names, layers):
            if not any(n == name for n, *_ in extra):
                add_member(tar, name, data)
        manifest = []
        for config, tags in entries:
            config_name = hashlib.sha256(config).hexdigest() + ".json"
            add_member(tar, config_name, config)
            manifest.append({"Config": config_name, "RepoTags": tags, "Layers": names})
        add_member(tar, "manifest.json", json.dumps(manifest).encode())
    return path


# ---- looking at the store ---------------------------------------------------------------------

def store_state(root: Path) -> tuple[str, list[str], list[str]]:
    """index.json, the blobs and the temp files: what a failed load must leave unchanged."""
    store = ImageStore(root)
    return ((store.layout / "index.json").read_text(), sorted(os.listdir(store.blobs)),
            sorted(os.listdir(store.tmp)))


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def flatten(store: ImageStore, ref: str, dest: Path) -> Path:
    """Apply every layer of an image in order onto one directory, as a flat rootfs."""
    image = store.resolve(ref)
    for desc, diff_id in zip(image.layers, image.diff_ids):
        apply_layer(store.blob_path(desc["digest"]), dest, media_type=desc["mediaType"],
                    digest=desc["digest"], diff_id=diff_id, mode="flatten")
    return dest


def merged_overlay_view(store: ImageStore, ref: str, mountpoint: Path) -> list[str]:
    """Mount the store's unpacked layers as overlay lower dirs in a throwaway mount
    namespace, and list the merged view."""
    lowers = store.lower_dirs(store.resolve(ref))
    mountpoint.mkdir()
    script = (f"mount --make-rprivate / && mount -t overlay overlay -o lowerdir={':'.join(lowers)} {mountpoint} "
              f"&& cd {mountpoint} && find . -mindepth 1 -printf '%p %y\\n' | sort")
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, check=True)
    return out.stdout.split("\n")[:-1]


# ---- the fixture archives ------------------------------------------------------------------------

@pytest.mark.parametrize("archive, line", [
    ("whiteout_image.tar", "Loaded image: bazel/pkg/v1/mutate:whiteout_image"),
    ("overwritten_file.tar", "Loaded image: bazel/pkg/v1/mutate:overwritten_file"),
    ("whiteout_dir.tar", "Loaded image: localhost:5000/whiteout:latest"),
    ("source_image.tar", "Loaded image: bazel/pkg/v1/mutate:source_image"),
    ("hello-world-v25.tar", f"Loaded image ID: {HELLO_CONFIG}"),
])
def test_each_fixture_archive_loads_with_the_name_docker_would_print(engine_root, archive, line):
    assert images.load_images(str(FIXTURES / archive)) == [line]
    assert list(ImageStore(engine_root).tmp.iterdir()) == []


def test_a_docker_save_image_keeps_its_config_bytes_and_stores_its_layers_as_they_are(engine_root):
    images.load_images(str(FIXTURES / "overwritten_file.tar"))
    store = ImageStore(engine_root)
    image = store.resolve("docker.io/bazel/pkg/v1/mutate:overwritten_file")
    with tarfile.open(FIXTURES / "overwritten_file.tar") as tar:
        manifest = json.load(tar.extractfile("manifest.json"))[0]
        config_bytes = tar.extractfile(manifest["Config"]).read()
        first_layer = tar.extractfile(manifest["Layers"][0]).read()
    assert image.id == "sha256:" + hashlib.sha256(config_bytes).hexdigest()   # docker's image id
    assert store.read_blob(image.id) == config_bytes
    assert [layer["mediaType"] for layer in image.layers] == [OCI_TAR] * 3
    assert [layer["digest"] for layer in image.layers] == image.diff_ids     # uncompressed: digest == diff_id
    assert store.read_blob(image.layers[0]["digest"]) == first_layer
    assert image.platform == "linux/amd64"


def test_gzipped_docker_save_layers_keep_their_gzip_digest_and_media_type(engine_root):
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    image = ImageStore(engine_root).resolve("localhost:5000/whiteout:latest")
    assert [layer["mediaType"] for layer in image.layers] == [OCI_TAR + "+gzip"] * 4
    assert image.layers[0]["digest"] == "sha256:e351ee8e5cab41e244c9a219e949dcc90cfa157f0a216157e3406eeef976a953"
    assert image.diff_ids[0] == "sha256:7e9fc0fd7367e0b3c3417cd2f96905d16b7314fcc5b38cab4c3e01d7ea719f48"


def test_whiteout_image_flattens_to_bar_without_foo(engine_root):
    images.load_images(str(FIXTURES / "whiteout_image.tar"))
    root = flatten(ImageStore(engine_root), "docker.io/bazel/pkg/v1/mutate:whiteout_image", engine_root.parent / "fs")
    assert tree(root) == ["bar.txt"]


def test_overwritten_file_flattens_to_a_symlink_to_bar(engine_root):
    images.load_images(str(FIXTURES / "overwritten_file.tar"))
    root = flatten(ImageStore(engine_root), "docker.io/bazel/pkg/v1/mutate:overwritten_file",
                   engine_root.parent / "fs")
    assert tree(root) == ["bar.txt", "foo.txt"]
    assert os.readlink(root / "foo.txt") == "bar.txt"
    assert (root / "foo.txt").read_bytes() == (root / "bar.txt").read_bytes()


def test_whiteout_dir_flattens_to_a_baz_and_b_bar_without_a_foo(engine_root):
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    root = flatten(ImageStore(engine_root), "localhost:5000/whiteout:latest", engine_root.parent / "fs")
    assert tree(root) == ["a", "a/baz", "b", "b/bar"]


def test_source_image_flattens_to_its_two_files(engine_root):
    images.load_images(str(FIXTURES / "source_image.tar"))
    root = flatten(ImageStore(engine_root), "docker.io/bazel/pkg/v1/mutate:source_image", engine_root.parent / "fs")
    assert tree(root) == ["bar", "foo"]


def test_the_overlay_of_the_shared_unpacked_layers_shows_the_same_results(engine_root):
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    images.load_images(str(FIXTURES / "whiteout_image.tar"))
    store = ImageStore(engine_root)
    assert merged_overlay_view(store, "localhost:5000/whiteout:latest", engine_root.parent / "m1") == [
        "./a d", "./a/baz f", "./b d", "./b/bar f"]
    assert merged_overlay_view(store, "docker.io/bazel/pkg/v1/mutate:whiteout_image", engine_root.parent / "m2") == [
        "./bar.txt f"]
    # each layer was unpacked once, keyed by diff_id
    assert len(os.listdir(store.layers_dir)) == 4 + 3


def test_the_arm64_hello_world_loads_but_refuses_to_run_here_with_a_platform_error(engine_root):
    if host_platform() == "linux/arm64":
        pytest.skip("this host is arm64: the image would run")
    images.load_images(str(FIXTURES / "hello-world-v25.tar"))
    assert images.tag_image(HELLO_CONFIG[7:19], "hello-world:arm64") == "docker.io/library/hello-world:arm64"
    with pytest.raises(MinicontainerError) as err:
        get_image(ImageStore(engine_root), "hello-world:arm64")
    message = str(err.value)
    assert "linux/arm64" in message and host_platform() in message and "--platform" in message
    with pytest.raises(MinicontainerError) as err:
        minicontainer.run("hello-world:arm64")
    assert "linux/arm64" in str(err.value) and "exec format" not in str(err.value)
    assert list_records() == []


def test_a_gzipped_archive_loads_like_the_plain_one(engine_root):
    packed = engine_root.parent / "whiteout_image.tar.gz"
    packed.write_bytes(gzip.compress((FIXTURES / "whiteout_image.tar").read_bytes()))
    assert images.load_images(str(packed)) == ["Loaded image: bazel/pkg/v1/mutate:whiteout_image"]


# ---- save -> load round trips -----------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["oci", "docker"])
def test_save_then_load_into_a_fresh_root_keeps_every_digest(engine_root, monkeypatch, fmt):
    for name in ("whiteout_dir.tar", "overwritten_file.tar", "hello-world-v25.tar"):
        images.load_images(str(FIXTURES / name))
    names = ["localhost:5000/whiteout:latest", "bazel/pkg/v1/mutate:overwritten_file", HELLO_CONFIG]
    before = {n: images.inspect_image(n) for n in names}
    out = engine_root.parent / f"saved-{fmt}.tar"
    images.save_images(names, str(out), format=fmt)
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".saved")] == []   # no temp file left

    second = engine_root.parent / "second"
    monkeypatch.setenv("MINICONTAINER_ROOT", str(second))
    assert images.load_images(str(out)) == ["Loaded image: localhost:5000/whiteout:latest",
                                            "Loaded image: bazel/pkg/v1/mutate:overwritten_file",
                                            f"Loaded image ID: {HELLO_CONFIG}"]
    for n in names:
        after = images.inspect_image(n)
        for key in ("Id", "ManifestDigest", "RootFS", "Config", "Created", "Size", "RepoTags"):
            assert after[key] == before[n][key], (n, key)
    first, other = ImageStore(engine_root), ImageStore(second)
    for n in names[:2]:
        image = other.resolve(str(parse_reference(n)))
        for layer in image.layers:
            assert other.read_blob(layer["digest"]) == first.read_blob(layer["digest"])


def test_a_docker_format_archive_has_docker_manifest_json_next_to_the_oci_layout(engine_root):
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    out = engine_root.parent / "docker.tar"
    images.save_images(["localhost:5000/whiteout", "busybox"], str(out), format="docker")
    store = ImageStore(engine_root)
    with tarfile.open(out) as tar:
        manifest = json.load(tar.extractfile("manifest.json"))
        index = json.load(tar.extractfile("index.json"))
        members = set(tar.getnames())
    assert {"oci-layout", "index.json", "manifest.json"} <= members
    whiteout = store.resolve("localhost:5000/whiteout:latest")
    assert manifest[0] == {"Config": f"blobs/sha256/{whiteout.id[7:]}",
                           "RepoTags": ["localhost:5000/whiteout:latest"],
                           "Layers": [f"blobs/sha256/{layer['digest'][7:]}" for layer in whiteout.layers]}
    assert manifest[1]["RepoTags"] == ["busybox:latest"]
    assert all(name in members for entry in manifest for name in [entry["Config"], *entry["Layers"]])
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]] == [
        "localhost:5000/whiteout:latest", "docker.io/library/busybox:latest"]


def test_save_of_a_missing_image_writes_nothing_and_keeps_an_existing_file(engine_root):
    out = engine_root.parent / "keep.tar"
    out.write_bytes(b"precious")
    with pytest.raises(MinicontainerError) as err:
        images.save_images(["busybox", "ghost:v1"], str(out))
    assert "ghost:v1" in str(err.value)
    assert out.read_bytes() == b"precious"
    assert [p.name for p in out.parent.iterdir() if p.name.startswith(".keep.tar")] == []


# ---- bad archives load nothing ------------------------------------------------------------------------

def _member_offsets(path: Path) -> dict[str, tuple[int, int]]:
    with tarfile.open(path) as tar:
        return {m.name: (m.offset, m.offset_data + m.size) for m in tar.getmembers()}


def _cuts() -> list[tuple[str, int]]:
    offsets = _member_offsets(FIXTURES / "whiteout_image.tar")
    layer = next(v for k, v in offsets.items() if k.startswith("5f98") and k.endswith("layer.tar"))
    return [("inside the first layer's data", layer[0] + 1024),
            ("just before manifest.json", offsets["manifest.json"][0]),
            ("without the end-of-archive blocks", max(end for _, end in offsets.values()) + 511)]


@pytest.mark.parametrize("where, cut", _cuts(), ids=[c[0] for c in _cuts()])
def test_a_truncated_archive_loads_nothing(engine_root, where, cut):
    images.list_images()
    before = store_state(engine_root)
    short = engine_root.parent / "short.tar"
    short.write_bytes((FIXTURES / "whiteout_image.tar").read_bytes()[:cut])
    with pytest.raises(LayerError) as err:
        images.load_images(str(short))
    assert "truncated or corrupt" in str(err.value) and "\n" not in str(err.value)
    assert store_state(engine_root) == before


def test_a_truncated_gzip_archive_loads_nothing(engine_root):
    images.list_images()
    before = store_state(engine_root)
    packed = gzip.compress((FIXTURES / "whiteout_dir.tar").read_bytes())
    short = engine_root.parent / "short.tar.gz"
    short.write_bytes(packed[:len(packed) // 2])
    with pytest.raises(ArchiveError) as err:
        images.load_images(str(short))
    assert "truncated or corrupt" in str(err.value)
    assert store_state(engine_root) == before


def test_a_layer_that_does_not_match_its_diff_id_is_refused(engine_root):
    images.list_images()
    before = store_state(engine_root)
    config = make_config(diff_ids=["sha256:" + "0" * 64])
    archive = write_docker_save(engine_root.parent / "tampered.tar", [(config, ["tampered:v1"])])
    with pytest.raises(ArchiveError) as err:
        images.load_images(str(archive))
    assert "uncompresses to" in str(err.value) and "tampered with" in str(err.value)
    assert store_state(engine_root) == before


def test_an_oci_blob_whose_content_does_not_match_its_name_is_refused(engine_root):
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    good = engine_root.parent / "good.tar"
    images.save_images(["localhost:5000/whiteout"], str(good))
    layer = ImageStore(engine_root).resolve("localhost:5000/whiteout:latest").layers[-1]["digest"]
    bad = engine_root.parent / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read() if m.isreg() else None
            if m.name == f"blobs/sha256/{layer[7:]}":
                data = data[:-9] + bytes([data[-9] ^ 1]) + data[-8:]   # one bit flipped
            dst.addfile(m, io.BytesIO(data) if data is not None else None)
    images.remove_image("localhost:5000/whiteout")
    images.collect_garbage(min_age=0)
    before = store_state(engine_root)
    with pytest.raises(ArchiveError) as err:
        images.load_images(str(bad))
    assert "does not match its digest" in str(err.value) and "\n" not in str(err.value)
    assert store_state(engine_root) == before


@pytest.mark.parametrize("case", ["dotdot member", "absolute member", "layer path with ..",
                                  "symlink out of the archive", "hardlink out of the archive"])
def test_a_hostile_archive_loads_nothing_and_writes_nothing_outside(engine_root, case):
    images.list_images()
    top = engine_root.parent
    victim = top / "evil"
    layer_id = hashlib.sha256(b"id" + LAYER).hexdigest()
    extra, names = [], None
    if case == "dotdot member":
        extra = [("../evil", b"pwned", tarfile.REGTYPE, "")]
    elif case == "absolute member":
        extra = [(str(victim), b"pwned", tarfile.REGTYPE, "")]
    elif case == "layer path with ..":
        names = ["../evil/layer.tar"]
        extra = [("../evil/layer.tar", LAYER, tarfile.REGTYPE, "")]
    elif case == "symlink out of the archive":
        extra = [(f"{layer_id}/layer.tar", b"", tarfile.SYMTYPE, "../../../../etc/passwd")]
    else:
        extra = [(f"{layer_id}/layer.tar", b"", tarfile.LNKTYPE, "/etc/passwd")]
    archive = write_docker_save(top / "hostile.tar", [(make_config(), ["hostile:v1"])], extra=extra,
                                layer_names=names)
    before, outside = store_state(engine_root), tree(top)
    cwd = os.getcwd()
    os.chdir(engine_root)   # so a relative "../evil" would land in the test's temp root
    try:
        with pytest.raises(ArchiveError) as err:
            images.load_images(str(archive))
    finally:
        os.chdir(cwd)
    assert ("outside the archive" in str(err.value)) and "\n" not in str(err.value)
    assert store_state(engine_root) == before
    assert tree(top) == outside and not victim.exists()


def test_an_old_docker_save_symlink_to_a_shared_layer_inside_the_archive_is_followed(engine_root):
    # docker before 1.10 wrote a duplicate layer as a relative symlink to the first copy
    first = hashlib.sha256(b"id" + LAYER).hexdigest()
    second = "f" * 64
    config = make_config(layers=[LAYER, LAYER])
    archive = write_docker_save(engine_root.parent / "linked.tar", [(config, ["linked:v1"])],
                                layers=[LAYER], layer_names=[f"{first}/layer.tar", f"{second}/layer.tar"],
                                extra=[(f"{second}/layer.tar", b"", tarfile.SYMTYPE, f"../{first}/layer.tar")])
    assert images.load_images(str(archive)) == ["Loaded image: linked:v1"]
    image = ImageStore(engine_root).resolve("docker.io/library/linked:v1")
    assert image.layers[0]["digest"] == image.layers[1]["digest"]


def test_a_file_that_is_no_image_archive_gets_a_one_line_error(engine_root):
    images.list_images()
    before = store_state(engine_root)
    junk = engine_root.parent / "junk.tar"
    with tarfile.open(junk, "w") as tar:
        add_member(tar, "notes.txt", b"just some notes")
    with pytest.raises(ArchiveError) as err:
        images.load_images(str(junk))
    assert "neither an OCI image layout" in str(err.value) and "\n" not in str(err.value)
    text = engine_root.parent / "text.tar"
    text.write_text("not a tar at all\n" * 100)
    with pytest.raises(MinicontainerError):
        images.load_images(str(text))
    with pytest.raises(MinicontainerError) as err:
        images.load_images(str(engine_root.parent / "missing.tar"))
    assert "does not exist" in str(err.value)
    assert store_state(engine_root) == before


# ---- peers: skopeo and umoci read what we save -------------------------------------------------------------

def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed")


@pytest.mark.peer
def test_skopeo_inspects_and_copies_our_docker_archive(engine_root):
    _need("skopeo")
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    out = engine_root.parent / "docker.tar"
    images.save_images(["localhost:5000/whiteout"], str(out), format="docker")
    info = json.loads(subprocess.run(["skopeo", "inspect", f"docker-archive:{out}"], capture_output=True,
                                     text=True, check=True).stdout)
    image = ImageStore(engine_root).resolve("localhost:5000/whiteout:latest")
    assert info["Architecture"] == "amd64" and len(info["Layers"]) == 4
    dest = engine_root.parent / "copied"
    subprocess.run(["skopeo", "copy", f"docker-archive:{out}", f"oci:{dest}:whiteout"], capture_output=True,
                   check=True)
    index = json.loads((dest / "index.json").read_text())
    blobs = dest / "blobs" / "sha256"
    manifest = json.loads((blobs / index["manifests"][0]["digest"][7:]).read_text())
    config = json.loads((blobs / manifest["config"]["digest"][7:]).read_text())
    assert config["rootfs"]["diff_ids"] == image.diff_ids   # every layer arrives intact


@pytest.mark.peer
def test_skopeo_and_umoci_read_our_oci_archive(engine_root):
    _need("skopeo")
    _need("umoci")
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))
    out = engine_root.parent / "oci.tar"
    images.save_images(["localhost:5000/whiteout"], str(out), format="oci")
    store = ImageStore(engine_root)
    desc = store.descriptor("localhost:5000/whiteout:latest")
    info = json.loads(subprocess.run(["skopeo", "inspect", f"oci-archive:{out}"], capture_output=True,
                                     text=True, check=True).stdout)
    assert info["Digest"] == desc["digest"]
    layout = engine_root.parent / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(layout)], check=True)   # umoci reads a directory
    bundle = engine_root.parent / "bundle"
    # umoci takes our full reference as the tag name
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:localhost:5000/whiteout:latest", str(bundle)],
                   capture_output=True, check=True)
    assert sorted(os.listdir(bundle / "rootfs")) == ["a", "b"]
    assert os.listdir(bundle / "rootfs" / "a") == ["baz"]


@pytest.mark.peer
def test_we_load_what_skopeo_writes_as_an_oci_archive(engine_root):
    _need("skopeo")
    images.load_images(str(FIXTURES / "overwritten_file.tar"))
    store = ImageStore(engine_root)
    out = engine_root.parent / "by-skopeo.tar"
    subprocess.run(["skopeo", "copy", f"oci:{store.layout}:docker.io/bazel/pkg/v1/mutate:overwritten_file",
                    f"oci-archive:{out}:student/overwritten:v2"], capture_output=True, check=True)
    assert images.load_images(str(out)) == ["Loaded image: student/overwritten:v2"]
    assert images.inspect_image("student/overwritten:v2")["Id"] == \
        images.inspect_image("bazel/pkg/v1/mutate:overwritten_file")["Id"]


@pytest.mark.peer
@pytest.mark.parametrize("ref", ["busybox:latest", "localhost:5000/whiteout:latest"])
def test_umoci_unpacks_what_we_export_to_the_same_bytes_as_our_own_unpack(engine_root, tmp_path, ref):
    """umoci, which nobody here wrote, and our apply_layer must build the identical rootfs
    from an image our store exported: every path, type, mode, owner, link and content byte."""
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from hostile_tars import snapshot

    _need("umoci")
    images.open_store()
    images.load_images(str(FIXTURES / "whiteout_dir.tar"))  # 4 layers with a whited-out directory
    out = tmp_path / "export.tar"
    images.save_images([ref], str(out), format="oci")
    layout = tmp_path / "layout"
    layout.mkdir()
    subprocess.run(["tar", "-xf", str(out), "-C", str(layout)], check=True)
    full = str(parse_reference(ref))
    subprocess.run(["umoci", "unpack", "--image", f"{layout}:{full}", str(tmp_path / "bundle")],
                   capture_output=True, check=True)

    store = ImageStore(engine_root)
    image = store.resolve(full)
    ours = tmp_path / "ours"
    ours.mkdir()
    for desc, diff_id in zip(image.layers, image.diff_ids):
        apply_layer(store.blob_path(desc["digest"]), ours, media_type=desc.get("mediaType"),
                    digest=desc["digest"], diff_id=diff_id, mode="flatten")
    theirs = snapshot(tmp_path / "bundle" / "rootfs")
    assert theirs == snapshot(ours)
    assert len(theirs) >= 2


# ---- decompression bounds (issue 11) -----------------------------------------------------------------

def test_a_gzipped_archive_that_inflates_past_the_image_size_cap_loads_nothing(engine_root, monkeypatch):
    from test_layers import compression_bomb

    images.list_images()
    before = store_state(engine_root)
    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "8m")
    bomb = compression_bomb(engine_root.parent / "bomb.tar.gz", 256 << 20)   # a tar inside: load inflates it
    with pytest.raises(ArchiveError) as err:
        images.load_images(str(bomb))
    message = str(err.value)
    assert message.startswith(f"archive {bomb} unpacks to more than 8 MiB, the MINICONTAINER_MAX_IMAGE_SIZE limit")
    assert "nothing was loaded" in message and "\n" not in message
    assert store_state(engine_root) == before


def test_an_archive_whose_gzip_layer_is_a_bomb_loads_nothing(engine_root, monkeypatch):
    from test_layers import compression_bomb

    images.list_images()
    before = store_state(engine_root)
    bomb = compression_bomb(engine_root.parent / "layer.tar.gz", 64 << 20).read_bytes()
    # a correct diff_id: only the size gives the bomb away
    h = hashlib.sha256()
    with gzip.open(io.BytesIO(bomb)) as inflated:
        while chunk := inflated.read(1 << 20):
            h.update(chunk)
    config = make_config(layers=[bomb], diff_ids=["sha256:" + h.hexdigest()])
    archive = write_docker_save(engine_root.parent / "bomb.tar", [(config, ["bomb:v1"])], layers=[bomb])
    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "8m")
    with pytest.raises(ArchiveError, match=r"unpacks to more than 8 MiB, the MINICONTAINER_MAX_IMAGE_SIZE limit"):
        images.load_images(str(archive))
    assert store_state(engine_root) == before
    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "128m")   # trusted, with a cap that fits: it loads
    assert images.load_images(str(archive)) == ["Loaded image: bomb:v1"]


def test_an_archive_json_of_a_million_empty_objects_is_refused_before_parsing(engine_root):
    images.list_images()
    before = store_state(engine_root)
    path = engine_root.parent / "objects.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        add_member(tar, "manifest.json", b"[" + b"{}," * 1_000_000 + b"{}]")
    with pytest.raises(LayerError, match="more than the 100000 any real manifest or config has"):
        images.load_images(str(path))
    assert store_state(engine_root) == before


def test_an_endless_archive_on_stdin_stops_at_the_image_size_cap(engine_root, tmp_path):
    import subprocess
    import sys

    images.list_images()
    before = store_state(engine_root)
    env = {**os.environ, "MINICONTAINER_MAX_IMAGE_SIZE": "8m"}
    with subprocess.Popen(["cat", "/dev/zero"], stdout=subprocess.PIPE) as zeros:
        done = subprocess.run([sys.executable, "-m", "minicontainer", "load"], stdin=zeros.stdout, env=env,
                              capture_output=True, text=True, timeout=120)
        zeros.kill()
    assert done.returncode == 125 and done.stderr.count("\n") == 1, done.stderr
    assert "archive stdin unpacks to more than 8 MiB, the MINICONTAINER_MAX_IMAGE_SIZE limit" in done.stderr
    assert store_state(engine_root) == before
