"""The image store commands: tag, rmi (with its refusal while a container uses the image),
short ids, inspect, history, images, and garbage collection of blobs and unpacked layers."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import minicontainer
from minicontainer.engine import images
from minicontainer.engine.containers import create_record, list_records, remove_record
from minicontainer.errors import ImageNotFound, InvalidArgument, InvalidReference, StateError
from minicontainer.image.builtin import BUILTIN_REF
from minicontainer.image.store import ImageStore
from test_archive import make_config, write_docker_save

FIXTURES = Path("/work/shared/fixtures/images")
SOURCE_IMAGE = "docker.io/bazel/pkg/v1/mutate:source_image"
SOURCE_CONFIG = "sha256:6e0b05049ed9c17d02e1a55e80d6599dbfcce7f4f4b022e3c673e685789c470e"
WHITEOUT_DIR_CONFIG = "sha256:92f1e3d53acdc7e137e73869abc4e87aba6614440a31723423790ca0d5db9111"
HELLO_CONFIG = "sha256:ee301c921b8aadc002973b2e0c3da17d701dcd994b606769a7e6eaa100b81d44"
# overwritten_file and whiteout_image share their last (empty) layer
SHARED_EMPTY_LAYER = "sha256:84ff92691f909a05b224e1c56abb4864f01b4f8e3c854e4bb4c7baf1d3f6d652"
OVERWRITTEN_ONLY = ["sha256:48ebc8f0e90eb81bd1819e8128dbaeddca99afe50f5bd07e0d582b8f683cb0b9",
                    "sha256:6f23bf1fbcc92daa1e5c92aa1125ce8d6fcabbbe29a903f0a56317035fc46b19"]
WHITEOUT_IMAGE_LAYERS = ["sha256:891f36a008624b6450292efb6ff06b633a179c7cc08456fefcc08c2b34f3b31c",
                         "sha256:88d2a7b2ae6dddeb3490c9370cfc070aaa1aab9c22a6fb03523787d8b21c17db",
                         SHARED_EMPTY_LAYER]


def load(name: str) -> list[str]:
    return images.load_images(str(FIXTURES / name))


def refs() -> list[str]:
    return [row["ref"] for row in images.list_images()]


def index_json(engine_root: Path) -> dict:
    return json.loads((engine_root / "image" / "index.json").read_text())


def unpack(store: ImageStore, ref: str) -> list[str]:
    """Unpack an image's layers into the store's shared layer dirs, as `run` does."""
    return store.lower_dirs(store.resolve(ref))


def blob_exists(store: ImageStore, digest: str) -> bool:
    return store.blob_path(digest).exists()


def layer_dir_exists(store: ImageStore, diff_id: str) -> bool:
    return store.layer_dir(diff_id).exists()


# ---- tag -----------------------------------------------------------------------------------

def test_tag_points_a_second_normalized_name_at_the_same_image(engine_root):
    new = images.tag_image("busybox", "student/tools:v1")
    assert new == "docker.io/student/tools:v1"
    rows = {row["ref"]: row for row in images.list_images()}
    assert rows[new]["id"] == rows[BUILTIN_REF]["id"]
    assert (rows[new]["repository"], rows[new]["tag"]) == ("student/tools", "v1")
    assert images.inspect_image("student/tools:v1")["RepoTags"] == ["busybox:latest", "student/tools:v1"]


def test_tag_moves_an_existing_name_and_keeps_the_old_image_untagged_like_docker(engine_root):
    load("source_image.tar")
    images.tag_image("busybox", "bazel/pkg/v1/mutate:source_image")
    rows = images.list_images()
    moved = [r for r in rows if r["ref"] == SOURCE_IMAGE]
    assert moved[0]["id"] != SOURCE_CONFIG
    dangling = [r for r in rows if r["id"] == SOURCE_CONFIG]
    assert [(r["repository"], r["tag"]) for r in dangling] == [("<none>", "<none>")]


def test_tag_of_a_missing_image_names_the_image_and_the_fix(engine_root):
    with pytest.raises(ImageNotFound) as err:
        images.tag_image("nosuch:v9", "other:v1")
    assert "nosuch:v9" in str(err.value) and "\n" not in str(err.value)
    assert "docker.io/library/other:v1" not in refs()


def test_tag_refuses_a_target_with_a_digest(engine_root):
    with pytest.raises(InvalidReference):
        images.tag_image("busybox", "other@sha256:" + "a" * 64)


# ---- rmi -------------------------------------------------------------------------------------

def test_rmi_of_one_of_two_tags_only_untags(engine_root):
    images.tag_image("busybox", "mine:v1")
    assert images.remove_image("mine:v1") == ["Untagged: mine:v1"]
    assert "docker.io/library/mine:v1" not in refs()
    assert BUILTIN_REF in refs()


def test_rmi_of_the_last_tag_deletes_the_image_and_prints_docker_lines(engine_root):
    assert load("source_image.tar") == ["Loaded image: bazel/pkg/v1/mutate:source_image"]
    lines = images.remove_image("bazel/pkg/v1/mutate:source_image")
    assert lines == ["Untagged: bazel/pkg/v1/mutate:source_image", f"Deleted: {SOURCE_CONFIG}"]
    assert SOURCE_CONFIG not in [row["id"] for row in images.list_images()]
    assert all(SOURCE_CONFIG.split(":")[1] not in json.dumps(m) for m in index_json(engine_root)["manifests"])


def test_rmi_accepts_a_short_image_id_like_docker(engine_root):
    load("source_image.tar")
    lines = images.remove_image(SOURCE_CONFIG[7:19])
    assert lines == ["Untagged: bazel/pkg/v1/mutate:source_image", f"Deleted: {SOURCE_CONFIG}"]


def test_a_short_id_needs_four_hex_digits_and_must_be_unambiguous(engine_root):
    load("source_image.tar")
    with pytest.raises(ImageNotFound):
        images.remove_image(SOURCE_CONFIG[7:10])
    assert SOURCE_IMAGE in refs()
    images.remove_image(SOURCE_CONFIG[7:11])
    assert SOURCE_IMAGE not in refs()


def test_rmi_by_id_of_an_image_with_two_tags_needs_force(engine_root):
    load("source_image.tar")
    images.tag_image(SOURCE_IMAGE, "copy:v1")
    with pytest.raises(StateError) as err:
        images.remove_image(SOURCE_CONFIG)
    assert "copy:v1" in str(err.value) and "-f" in str(err.value)
    assert SOURCE_IMAGE in refs()
    lines = images.remove_image(SOURCE_CONFIG, force=True)
    assert sorted(lines[:2]) == ["Untagged: bazel/pkg/v1/mutate:source_image", "Untagged: copy:v1"]
    assert lines[2] == f"Deleted: {SOURCE_CONFIG}"


def test_rmi_removes_an_untagged_image_by_its_id(engine_root):
    assert load("hello-world-v25.tar") == [f"Loaded image ID: {HELLO_CONFIG}"]
    assert images.remove_image(HELLO_CONFIG[7:15]) == [f"Deleted: {HELLO_CONFIG}"]
    assert HELLO_CONFIG not in [row["id"] for row in images.list_images()]


def test_rmi_is_refused_while_a_container_record_uses_the_image_unless_forced(engine_root):
    result = minicontainer.run("busybox", "true", remove=False)
    assert result.exit_code == 0
    before = index_json(engine_root)
    with pytest.raises(StateError) as err:
        images.remove_image("busybox")
    assert str(err.value) == (f"image busybox:latest is used by container {result.container_id[:12]} "
                              f"({result.name}): remove the container first or use -f")
    assert index_json(engine_root) == before
    image_id = images.inspect_image("busybox")["Id"]
    assert images.remove_image("busybox", force=True) == ["Untagged: busybox:latest", f"Deleted: {image_id}"]
    store = ImageStore(engine_root)
    assert BUILTIN_REF not in [ref for ref, _ in store.list_refs()]


def test_rmi_of_a_missing_image_is_one_line_and_changes_nothing(engine_root):
    images.list_images()
    before = index_json(engine_root)
    with pytest.raises(ImageNotFound) as err:
        images.remove_image("ghost:v1")
    assert "ghost:v1" in str(err.value) and "\n" not in str(err.value)
    assert index_json(engine_root) == before


def test_an_ambiguous_short_id_is_refused_and_changes_nothing(engine_root, tmp_path):
    # two configs whose digests share their first four hex digits (a birthday search)
    seen: dict[str, bytes] = {}
    for n in range(100_000):
        config = make_config(f"twin {n}")
        prefix = hashlib.sha256(config).hexdigest()[:4]
        if prefix in seen:
            break
        seen[prefix] = config
    archive = write_docker_save(tmp_path / "twins.tar", [(seen[prefix], ["twin:a"]), (config, ["twin:b"])])
    images.load_images(str(archive))
    with pytest.raises(InvalidArgument) as err:
        images.remove_image(prefix)
    assert "ambiguous" in str(err.value)
    assert {"docker.io/library/twin:a", "docker.io/library/twin:b"} <= set(refs())


# ---- inspect, history, images --------------------------------------------------------------------

def test_inspect_reads_ids_tags_platform_and_layers_from_manifest_and_config(engine_root):
    load("whiteout_dir.tar")
    info = images.inspect_image("localhost:5000/whiteout")
    store = ImageStore(engine_root)
    desc = store.descriptor("localhost:5000/whiteout:latest")
    config = json.loads(store.read_blob(WHITEOUT_DIR_CONFIG))
    assert info["Id"] == WHITEOUT_DIR_CONFIG
    assert info["RepoTags"] == ["localhost:5000/whiteout:latest"]
    assert info["RepoDigests"] == [f"localhost:5000/whiteout@{desc['digest']}"]
    assert (info["Os"], info["Architecture"]) == ("linux", "amd64")
    assert info["RootFS"] == {"Type": "layers", "Layers": config["rootfs"]["diff_ids"]}
    assert info["Config"]["Env"] == ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    assert info["Created"] == "2026-01-13T23:52:36.256360939Z"
    assert info["Size"] == 129 + 128 + 95 + 129   # the four gzip layer files, as stored
    assert info["ManifestDigest"] == desc["digest"]
    assert info["MediaType"] == "application/vnd.oci.image.manifest.v1+json"


def test_inspect_by_short_id_finds_an_untagged_image(engine_root):
    load("hello-world-v25.tar")
    info = images.inspect_image(HELLO_CONFIG[7:19])
    assert info["Id"] == HELLO_CONFIG
    assert info["RepoTags"] == [] and info["Architecture"] == "arm64"
    assert info["Config"]["Cmd"] == ["/hello"]


def test_history_is_newest_first_and_empty_layers_have_size_zero(engine_root):
    load("hello-world-v25.tar")
    rows = images.image_history(HELLO_CONFIG)
    assert [r["created_by"] for r in rows] == ['CMD ["/hello"]', "COPY hello / # buildkit"]
    assert [r["size"] for r in rows] == [0, 10752]
    assert [r["comment"] for r in rows] == ["buildkit.dockerfile.v0"] * 2
    assert [r["id"] for r in rows] == [HELLO_CONFIG, "<missing>"]
    assert rows[1]["created"] == "2023-05-02T16:49:27Z"


def test_history_matches_each_entry_to_its_own_layer(engine_root):
    load("whiteout_dir.tar")
    rows = images.image_history("localhost:5000/whiteout:latest")
    assert [r["size"] for r in rows] == [129, 95, 128, 129]   # newest first
    assert ".wh.a" in rows[1]["created_by"]


def test_images_lists_untagged_images_as_none_and_all_adds_unreferenced_manifests(engine_root):
    load("hello-world-v25.tar")
    load("source_image.tar")
    rows = images.list_images()
    assert {(r["repository"], r["tag"], r["id"]) for r in rows} >= {
        ("<none>", "<none>", HELLO_CONFIG), ("bazel/pkg/v1/mutate", "source_image", SOURCE_CONFIG)}
    images.remove_image(SOURCE_IMAGE)
    assert SOURCE_CONFIG not in [r["id"] for r in images.list_images()]
    assert SOURCE_CONFIG in [r["id"] for r in images.list_images(all=True)]


# ---- garbage collection ----------------------------------------------------------------------------

def test_gc_removes_an_untagged_images_blobs_and_layers_but_keeps_shared_busybox_and_container_ones(engine_root):
    load("overwritten_file.tar")
    load("whiteout_image.tar")
    store = ImageStore(engine_root)
    unpack(store, "docker.io/bazel/pkg/v1/mutate:overwritten_file")
    unpack(store, "docker.io/bazel/pkg/v1/mutate:whiteout_image")
    result = minicontainer.run("busybox", "true", remove=False)   # a stopped container of busybox
    busybox = store.resolve(BUILTIN_REF)
    overwritten = store.resolve("docker.io/bazel/pkg/v1/mutate:overwritten_file")

    images.remove_image("bazel/pkg/v1/mutate:overwritten_file")
    freed = images.collect_garbage(min_age=0)

    assert not blob_exists(store, overwritten.manifest_digest)
    assert not blob_exists(store, overwritten.id)
    for diff_id in OVERWRITTEN_ONLY:
        assert not blob_exists(store, diff_id) and not layer_dir_exists(store, diff_id)
    assert freed["blobs_removed"] == 4 and freed["layers_removed"] == 2
    assert freed["bytes_freed"] > 2 * 10240
    # the empty layer is shared with whiteout_image, which is still tagged
    assert blob_exists(store, SHARED_EMPTY_LAYER) and layer_dir_exists(store, SHARED_EMPTY_LAYER)
    # busybox: still tagged, and its layer is the lower dir of a container
    for digest in [busybox.manifest_digest, busybox.id, *(layer["digest"] for layer in busybox.layers)]:
        assert blob_exists(store, digest)
    assert layer_dir_exists(store, busybox.diff_ids[0])
    assert [r.id for r in list_records()] == [result.container_id]


def test_gc_keeps_the_layers_of_an_image_a_container_uses_even_after_rmi_force(engine_root):
    load("whiteout_image.tar")
    store = ImageStore(engine_root)
    image = store.resolve("docker.io/bazel/pkg/v1/mutate:whiteout_image")
    unpack(store, image.ref)
    # the record `run` writes for a container of this image (the image has no shell to run)
    record = create_record(name="keeper", image=image.ref, image_id=image.id, args=["/bin/true"], env=[])
    with pytest.raises(StateError):
        images.remove_image(image.ref)
    images.remove_image(image.ref, force=True)

    images.collect_garbage(min_age=0)
    assert all(layer_dir_exists(store, d) for d in WHITEOUT_IMAGE_LAYERS)
    assert blob_exists(store, image.id)               # its config: the list of its layers
    assert not blob_exists(store, image.manifest_digest)

    remove_record(record)
    freed = images.collect_garbage(min_age=0)
    assert not any(layer_dir_exists(store, d) for d in WHITEOUT_IMAGE_LAYERS)
    assert not blob_exists(store, image.id)
    assert freed["layers_removed"] == 3


def test_gc_spares_files_younger_than_a_minute_for_a_pull_in_flight(engine_root):
    load("source_image.tar")
    store = ImageStore(engine_root)
    manifest = store.descriptor(SOURCE_IMAGE)["digest"]
    images.remove_image(SOURCE_IMAGE)
    freed = images.collect_garbage()     # default min_age: 60 s
    assert freed["blobs_removed"] == 0 and freed["skipped_young"] == 3
    assert blob_exists(store, manifest)
    assert images.collect_garbage(min_age=0)["blobs_removed"] == 3


def test_gc_clears_abandoned_staging_dirs_but_not_one_a_load_holds(engine_root):
    from minicontainer.image.archive import staging_area

    store = ImageStore(engine_root)
    abandoned = store.tmp / "load-1-dead"
    (abandoned / "store").mkdir(parents=True)
    (store.tmp / "ingest-0123-1-beef").write_bytes(b"half a blob")
    with staging_area(store, "load") as busy:
        freed = images.collect_garbage(min_age=0)
        assert busy.exists()
    assert not abandoned.exists() and not (store.tmp / "ingest-0123-1-beef").exists()
    assert freed["temp_removed"] == 2
    assert list(store.tmp.iterdir()) == []
