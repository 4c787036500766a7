"""Layer apply and diff: OCI whiteouts, overlayfs whiteouts, metadata, digests, atomic
unpack, a corpus of hostile tarballs, real image archives, and umoci as a peer."""
from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import zstandard

import hostile_tars as ht
from fs_features import needs_user_xattrs
from hostile_tars import dir_, hardlink, member, snapshot, symlink, write_tar
from minicontainer.errors import LayerError
from minicontainer.image.layers import (MEDIA_TYPES, LayerResult, apply_layer, diff_layer,
                                        open_layer_stream, unpack_layer)
from minicontainer.trace import planning, recording

FIXTURES = Path("/work/shared/fixtures/images")
TESTS_DIR = Path(__file__).resolve().parent


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def compress(tar_path: Path, how: str) -> Path:
    """The tar at ``tar_path`` as a blob compressed with ``how`` (gzip, zstd or none)."""
    raw = tar_path.read_bytes()
    if how == "none":
        return tar_path
    out = tar_path.with_name(tar_path.name + (".gz" if how == "gzip" else ".zst"))
    out.write_bytes(gzip.compress(raw, mtime=0) if how == "gzip"
                    else zstandard.ZstdCompressor().compress(raw))
    return out


def tree(root: Path) -> dict[str, list]:
    """A snapshot normalized through JSON, to compare with one taken in another process."""
    return json.loads(json.dumps(snapshot(root)))


def merged_view(lowers: list[Path], *, upper: Path | None = None, work: Path | None = None,
                commands: str = "", mtime_unit: int = 1) -> dict[str, list]:
    """Mount overlayfs (lowerdir=top:...:bottom) in a throwaway mount namespace, optionally
    run shell ``commands`` in the merged dir, and return a snapshot of the merged view."""
    merged = (upper or lowers[0]).parent / "merged"
    merged.mkdir(exist_ok=True)
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None:
        opts += f",upperdir={upper},workdir={work}"
    script = (
        "import json, subprocess, sys\n"
        "sys.path.insert(0, sys.argv[1])\n"
        "from hostile_tars import snapshot\n"
        "subprocess.run(['mount', '-t', 'overlay', 'overlay', '-o', sys.argv[2], sys.argv[3]], check=True)\n"
        "if sys.argv[4]:\n"
        "    subprocess.run(['sh', '-ec', sys.argv[4]], cwd=sys.argv[3], check=True)\n"
        "print(json.dumps(snapshot(sys.argv[3], mtime_unit=int(sys.argv[5]))))\n")
    # unshare -m: the mount lives and dies with this one process, so nothing can leak.
    out = subprocess.run(["unshare", "-m", sys.executable, "-c", script, str(TESTS_DIR), opts,
                          str(merged), commands, str(mtime_unit)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


@pytest.fixture
def blobs(tmp_path: Path) -> Path:
    d = tmp_path / "blobs"
    d.mkdir()
    return d


# ---- reading blobs ----------------------------------------------------------------------------

def test_media_types_name_the_oci_and_docker_layer_formats():
    assert MEDIA_TYPES["application/vnd.oci.image.layer.v1.tar"] == "none"
    assert MEDIA_TYPES["application/vnd.oci.image.layer.v1.tar+gzip"] == "gzip"
    assert MEDIA_TYPES["application/vnd.oci.image.layer.v1.tar+zstd"] == "zstd"
    assert MEDIA_TYPES["application/vnd.docker.image.rootfs.diff.tar.gzip"] == "gzip"


@pytest.mark.parametrize("how,media_type", [
    ("none", "application/vnd.oci.image.layer.v1.tar"),
    ("gzip", "application/vnd.oci.image.layer.v1.tar+gzip"),
    ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
    ("gzip", "application/vnd.docker.image.rootfs.diff.tar.gzip"),
    ("none", None), ("gzip", None), ("zstd", None),
])
def test_open_layer_stream_yields_the_uncompressed_tar(blobs, how, media_type):
    tar = write_tar(blobs / "l.tar", [member("hello", data=b"hi\n" * 1000)])
    with open_layer_stream(compress(tar, how), media_type) as stream:
        assert stream.read() == tar.read_bytes()


def test_docker_gzip_media_type_holding_a_plain_tar_is_sniffed_like_docker_does(blobs):
    tar = write_tar(blobs / "l.tar", [member("hello", data=b"hi")])
    with open_layer_stream(tar, "application/vnd.docker.image.rootfs.diff.tar.gzip") as stream:
        assert stream.read() == tar.read_bytes()


def test_unknown_media_type_is_a_one_line_layer_error(blobs):
    tar = write_tar(blobs / "l.tar", [member("hello", data=b"hi")])
    with pytest.raises(LayerError, match="unsupported layer media type") as err:
        open_layer_stream(tar, "application/vnd.example.layer+lz4")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("how", ["none", "gzip", "zstd"])
def test_apply_reports_the_blob_digest_and_the_diff_id(blobs, tmp_path, how):
    tar = write_tar(blobs / "l.tar", [dir_("etc"), member("etc/hostname", data=b"box\n"),
                                      member("big", data=os.urandom(3 << 20))])
    blob = compress(tar, how)
    result = apply_layer(blob, tmp_path / "root")
    assert result == LayerResult(digest=sha256(blob.read_bytes()), diff_id=sha256(tar.read_bytes()),
                                 files=3, bytes=4 + (3 << 20))
    assert (tmp_path / "root/big").read_bytes() == tar_member_bytes(tar, "big")


def tar_member_bytes(tar: Path, name: str) -> bytes:
    with tarfile.open(tar) as t:
        return t.extractfile(name).read()


def test_multi_member_gzip_and_multi_frame_zstd_are_read_to_the_end(blobs, tmp_path):
    tar = write_tar(blobs / "l.tar", [member(f"f{i}", data=os.urandom(5000)) for i in range(20)])
    raw = tar.read_bytes()
    cut = 12345  # not on a block boundary: members and frames split anywhere
    gz = blobs / "multi.tar.gz"
    gz.write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]) + bytes(64))
    zst = blobs / "multi.tar.zst"
    c = zstandard.ZstdCompressor()
    zst.write_bytes(c.compress(raw[:cut]) + c.compress(raw[cut:]))
    for i, blob in enumerate((gz, zst)):
        result = apply_layer(blob, tmp_path / f"r{i}", digest=sha256(blob.read_bytes()), diff_id=sha256(raw))
        assert result.files == 20
        assert (tmp_path / f"r{i}/f19").read_bytes() == tar_member_bytes(tar, "f19")


@pytest.mark.parametrize("which", ["digest", "diff_id"])
def test_a_digest_mismatch_names_which_digest_with_expected_and_got(blobs, tmp_path, which):
    tar = write_tar(blobs / "l.tar", [member("f", data=b"x")])
    blob = compress(tar, "gzip")
    wrong = "sha256:" + "0" * 64
    kwargs = {"digest": sha256(blob.read_bytes()), "diff_id": sha256(tar.read_bytes()), which: wrong}
    with pytest.raises(LayerError) as err:
        apply_layer(blob, tmp_path / "root", **kwargs)
    got = sha256(blob.read_bytes()) if which == "digest" else sha256(tar.read_bytes())
    message = str(err.value)
    assert f"{which} (" in message and f"expected {wrong}, got {got}" in message
    assert "\n" not in message


def test_a_truncated_gzip_blob_is_refused(blobs, tmp_path):
    blob = compress(write_tar(blobs / "l.tar", [member("f", data=os.urandom(100_000))]), "gzip")
    blob.write_bytes(blob.read_bytes()[:-5000])
    with pytest.raises(LayerError, match="truncated"):
        apply_layer(blob, tmp_path / "root")


def test_a_header_with_a_bad_checksum_is_refused(blobs, tmp_path):
    tar = write_tar(blobs / "l.tar", [member("f", data=b"x")])
    raw = bytearray(tar.read_bytes())
    raw[0] ^= 0x20  # flip a bit in the name; the checksum no longer matches
    tar.write_bytes(bytes(raw))
    with pytest.raises(LayerError, match="corrupt header"):
        apply_layer(tar, tmp_path / "root")


# ---- the trace ----------------------------------------------------------------------------------

def test_apply_layer_records_one_step_with_call_shell_and_file_count(blobs, tmp_path):
    blob = compress(write_tar(blobs / "l.tar", [dir_("a"), member("a/b", data=b"1"), symlink("c", "a/b")]), "gzip")
    digest = sha256(blob.read_bytes())
    with recording() as trace:
        apply_layer(blob, tmp_path / "root", digest=digest)
    assert trace.names() == ["apply_layer"]
    step = trace.find("apply_layer")
    assert step.call == f"untar {digest[:19]}… (gzip) into {tmp_path / 'root'}"
    assert step.shell == f"tar -xzf {blob} -C {tmp_path / 'root'}"
    assert step.why and step.ok
    assert step.evidence == {"files": "3"}


def test_planning_an_apply_records_the_step_and_writes_nothing(blobs, tmp_path):
    blob = write_tar(blobs / "l.tar", [member("f", data=b"x")])
    with planning() as trace:
        apply_layer(blob, tmp_path / "root")
        unpack_layer(blob, tmp_path / "layers" / "l1")
    assert trace.names() == ["apply_layer", "apply_layer", "rename"]
    assert not (tmp_path / "root").exists() and not (tmp_path / "layers").exists()


def test_a_refused_entry_is_recorded_as_a_failed_step(blobs, tmp_path):
    blob = write_tar(blobs / "l.tar", [member("../evil", data=b"x")])
    with recording() as trace, pytest.raises(LayerError):
        apply_layer(blob, tmp_path / "root")
    assert "'..'" in trace.find("apply_layer").error


# ---- entry types and metadata -------------------------------------------------------------------

def test_apply_restores_types_modes_owners_mtimes_and_xattrs(blobs, tmp_path):
    needs_user_xattrs(tmp_path)
    members = [
        member("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755, uid=1000, gid=1001,
               pax={"mtime": "1600000000.123456789", "SCHILY.xattr.user.origin": "layer1",
                    "SCHILY.xattr.trusted.note": "t"}),
        dir_("usr/bin", mode=0o750, uid=2, gid=3),           # after its child: mtime still applies
        dir_("usr", mode=0o755),
        hardlink("usr/bin/tool-again", "usr/bin/tool"),
        symlink("usr/bin/t", "tool"),
        symlink("abs", "/etc/passwd"),                        # stored, never followed
        member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
        member("dev/loop0", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=0, gid=6),
        member("run/fifo", tarfile.FIFOTYPE, mode=0o620, uid=5),
        member("empty", data=b""),
    ]
    root = tmp_path / "root"
    result = apply_layer(write_tar(blobs / "l.tar", members), root)
    assert result.files == len(members)

    tool = os.lstat(root / "usr/bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755 and (tool.st_uid, tool.st_gid) == (1000, 1001)
    assert tool.st_mtime_ns == 1_600_000_000_123_456_789
    assert os.getxattr(root / "usr/bin/tool", "user.origin") == b"layer1"
    assert os.getxattr(root / "usr/bin/tool", "trusted.note") == b"t"
    assert os.lstat(root / "usr/bin/tool-again").st_ino == tool.st_ino and tool.st_nlink == 2

    bindir = os.lstat(root / "usr/bin")
    assert stat.S_IMODE(bindir.st_mode) == 0o750 and (bindir.st_uid, bindir.st_gid) == (2, 3)
    assert bindir.st_mtime == ht.MTIME

    link = os.lstat(root / "usr/bin/t")
    assert stat.S_ISLNK(link.st_mode) and os.readlink(root / "usr/bin/t") == "tool"
    assert link.st_mtime == ht.MTIME
    assert os.readlink(root / "abs") == "/etc/passwd"

    null, loop = os.lstat(root / "dev/null"), os.lstat(root / "dev/loop0")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3) and stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(loop.st_mode) and loop.st_rdev == os.makedev(7, 0) and loop.st_gid == 6
    fifo = os.lstat(root / "run/fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620 and fifo.st_uid == 5
    assert (root / "empty").read_bytes() == b""
    implied = os.lstat(root / "run")  # a parent the tar never listed is created 0755 root
    assert stat.S_IMODE(implied.st_mode) == 0o755 and implied.st_uid == 0


def test_the_root_entry_sets_the_target_directory_metadata(blobs, tmp_path):
    root = tmp_path / "root"
    apply_layer(write_tar(blobs / "l.tar", [dir_("./", mode=0o711, uid=7), member("f", data=b"x")]), root)
    st = os.stat(root)
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_uid == 7 and st.st_mtime == ht.MTIME


def test_a_later_duplicate_entry_replaces_an_earlier_one(blobs, tmp_path):
    root = tmp_path / "root"
    apply_layer(write_tar(blobs / "l.tar", [
        member("f", data=b"old"), member("f", data=b"new"),
        dir_("d"), member("d/child", data=b"c"), member("d", data=b"now a file"),
        member("e", data=b"file"), dir_("e", mode=0o700),
        dir_("m", mode=0o700), dir_("m", mode=0o755),  # two dir entries merge; the last metadata wins
    ]), root)
    assert (root / "f").read_bytes() == b"new"
    assert (root / "d").read_bytes() == b"now a file"
    assert (root / "e").is_dir() and stat.S_IMODE(os.stat(root / "e").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(root / "m").st_mode) == 0o755


def test_a_hardlink_may_point_at_a_file_of_a_lower_layer_when_flattening(blobs, tmp_path):
    root = tmp_path / "root"
    apply_layer(write_tar(blobs / "1.tar", [member("lib/libc.so", data=b"elf")]), root)
    apply_layer(write_tar(blobs / "2.tar", [hardlink("lib/libc.so.6", "./lib/libc.so")]), root)
    assert os.stat(root / "lib/libc.so.6").st_ino == os.stat(root / "lib/libc.so").st_ino


def test_a_hardlink_to_something_not_in_the_layer_is_refused_in_overlay_mode(blobs, tmp_path):
    with pytest.raises(LayerError, match="hardlink target 'lib/libc.so' is not in this layer"):
        apply_layer(write_tar(blobs / "2.tar", [hardlink("lib/libc.so.6", "lib/libc.so")]),
                    tmp_path / "l2", mode="overlay")


def test_a_hardlink_to_a_directory_is_refused(blobs, tmp_path):
    with pytest.raises(LayerError, match="hardlink to a directory"):
        apply_layer(write_tar(blobs / "l.tar", [dir_("d"), hardlink("x", "d")]), tmp_path / "root")


def test_unsupported_entry_types_are_refused(blobs, tmp_path):
    with pytest.raises(LayerError, match="unsupported tar entry type"):
        apply_layer(write_tar(blobs / "l.tar", [member("vol", b"V")]),
                    tmp_path / "root")


# ---- whiteouts: flatten -------------------------------------------------------------------------

def lower_rootfs(blobs: Path, root: Path) -> None:
    apply_layer(write_tar(blobs / "lower.tar", [
        dir_("a"), member("a/b", data=b"b"), member("a/c", data=b"c"),
        dir_("d"), member("d/old", data=b"o"), dir_("d/sub"), member("d/sub/old2", data=b"o2"),
        symlink("d/link", "/etc"),
    ]), root)


def test_a_whiteout_deletes_the_lower_file_and_leaves_its_siblings(blobs, tmp_path):
    root = tmp_path / "root"
    lower_rootfs(blobs, root)
    apply_layer(write_tar(blobs / "wh.tar", [member("a/.wh.b")]), root)
    assert sorted(os.listdir(root / "a")) == ["c"]


def test_a_whiteout_of_a_directory_deletes_it_with_everything_below(blobs, tmp_path):
    root = tmp_path / "root"
    lower_rootfs(blobs, root)
    apply_layer(write_tar(blobs / "wh.tar", [member(".wh.d")]), root)
    assert sorted(os.listdir(root)) == ["a"]


def test_a_whiteout_of_something_that_never_existed_is_harmless(blobs, tmp_path):
    root = tmp_path / "root"
    lower_rootfs(blobs, root)
    apply_layer(write_tar(blobs / "wh.tar", [member("nowhere/.wh.x"), member(".wh.ghost")]), root)
    assert sorted(os.listdir(root)) == ["a", "d"]


def test_a_whiteout_never_hides_an_entry_of_its_own_layer(blobs, tmp_path):
    root = tmp_path / "root"
    lower_rootfs(blobs, root)
    apply_layer(write_tar(blobs / "wh.tar", [member("a/b", data=b"new b"), member("a/.wh.b"),
                                             member("d/new", data=b"n"), member(".wh.d")]), root)
    assert (root / "a/b").read_bytes() == b"new b"
    # d itself came from this layer (as a parent of d/new), so only the lower content goes
    assert sorted(os.listdir(root / "d")) == ["new"]


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_an_opaque_marker_empties_lower_content_but_keeps_this_layers_entries_wherever_it_sits(
        blobs, tmp_path, where):
    root = tmp_path / "root"
    lower_rootfs(blobs, root)
    entries = [dir_("d", mode=0o750), dir_("d/sub"), member("d/sub/new", data=b"n")]
    marker = member("d/.wh..wh..opq")
    position = {"first": 0, "middle": 2, "last": len(entries)}[where]
    entries.insert(position, marker)
    apply_layer(write_tar(blobs / f"opq-{where}.tar", entries), root)
    assert snapshot(root / "d").keys() == {"sub", "sub/new"}
    assert sorted(os.listdir(root / "a")) == ["b", "c"]  # other dirs untouched
    assert stat.S_IMODE(os.stat(root / "d").st_mode) == 0o750


# ---- whiteouts: overlay -------------------------------------------------------------------------

def test_overlay_mode_turns_a_whiteout_into_a_char_0_0_device(blobs, tmp_path):
    layer = tmp_path / "l2"
    apply_layer(write_tar(blobs / "wh.tar", [dir_("a"), member("a/.wh.b")]), layer, mode="overlay")
    st = os.lstat(layer / "a/b")
    assert stat.S_ISCHR(st.st_mode) and st.st_rdev == 0
    assert os.listdir(layer / "a") == ["b"]  # the .wh. entry itself is not created


def test_overlay_mode_turns_an_opaque_marker_into_the_opaque_xattr(blobs, tmp_path):
    layer = tmp_path / "l2"
    apply_layer(write_tar(blobs / "opq.tar", [member("d/.wh..wh..opq"), member("d/new", data=b"n")]),
                layer, mode="overlay")
    assert os.getxattr(layer / "d", "trusted.overlay.opaque") == b"y"
    assert os.listdir(layer / "d") == ["new"]


def test_overlay_mode_whiteout_then_recreate_in_one_layer_makes_an_opaque_dir(blobs, tmp_path):
    layer = tmp_path / "l2"
    apply_layer(write_tar(blobs / "wh.tar", [member(".wh.d"), member("d/new", data=b"n")]),
                layer, mode="overlay")
    assert (layer / "d").is_dir() and os.listdir(layer / "d") == ["new"]
    assert os.getxattr(layer / "d", "trusted.overlay.opaque") == b"y"


def test_overlay_layers_mounted_together_show_what_flatten_builds(blobs, tmp_path):
    layers = [
        write_tar(blobs / "1.tar", [dir_("a"), member("a/b", data=b"b"), member("a/c", data=b"c"),
                                    dir_("d"), member("d/old", data=b"o"), member("x", data=b"x")]),
        write_tar(blobs / "2.tar", [dir_("a"), member("a/.wh.b"), dir_("d"), member("d/.wh..wh..opq"),
                                    member("d/new", data=b"n"), member(".wh.x")]),
        write_tar(blobs / "3.tar", [member(".wh.d"), dir_("d", mode=0o700), member("d/again", data=b"g"),
                                    member("x", data=b"back")]),
    ]
    flat = tmp_path / "flat"
    dirs = []
    for i, layer in enumerate(layers):
        apply_layer(layer, flat)
        dirs.append(tmp_path / f"l{i}")
        apply_layer(layer, dirs[-1], mode="overlay")
    assert merged_view(dirs[::-1]) == tree(flat)
    assert snapshot(flat).keys() == {"a", "a/c", "d", "d/again", "x"}


# ---- unpack_layer: once, atomically ---------------------------------------------------------------

def test_unpack_layer_unpacks_once_and_leaves_no_temp_dir(blobs, tmp_path):
    blob = compress(write_tar(blobs / "l.tar", [member("f", data=b"x"), member(".wh.gone")]), "gzip")
    dest = tmp_path / "layers" / "abc"
    first = unpack_layer(blob, dest, digest=sha256(blob.read_bytes()))
    assert first.files == 2 and (dest / "f").read_bytes() == b"x"
    assert stat.S_ISCHR(os.lstat(dest / "gone").st_mode)  # overlay mode by default
    assert os.listdir(dest.parent) == ["abc"]
    with recording() as trace:
        again = unpack_layer(blob, dest)
    assert again.files == 0 and len(trace) == 0


def test_a_failed_unpack_leaves_neither_dest_nor_temp_dir(blobs, tmp_path):
    blob = write_tar(blobs / "l.tar", [member("f", data=b"x"), member("../escape", data=b"x")])
    dest = tmp_path / "layers" / "abc"
    with pytest.raises(LayerError):
        unpack_layer(blob, dest)
    assert os.listdir(dest.parent) == []


def test_a_digest_mismatch_during_unpack_leaves_no_dest(blobs, tmp_path):
    blob = write_tar(blobs / "l.tar", [member("f", data=b"x")])
    dest = tmp_path / "layers" / "abc"
    with pytest.raises(LayerError, match="diff_id"):
        unpack_layer(blob, dest, diff_id="sha256:" + "1" * 64)
    assert os.listdir(dest.parent) == []


def test_an_unpack_killed_halfway_never_leaves_a_dest_that_looks_complete(blobs, tmp_path):
    tar = write_tar(blobs / "l.tar", [member(f"f{i:03d}", data=os.urandom(4096)) for i in range(200)])
    raw = tar.read_bytes()
    fifo = tmp_path / "blob.fifo"  # we feed the blob by hand, so we choose when to kill
    os.mkfifo(fifo)
    dest = tmp_path / "layers" / "abc"
    dest.parent.mkdir()
    child = subprocess.Popen([sys.executable, "-c",
                              "import sys; from minicontainer.image.layers import unpack_layer; "
                              "unpack_layer(sys.argv[1], sys.argv[2], "
                              "media_type='application/vnd.oci.image.layer.v1.tar')", str(fifo), str(dest)],
                             cwd=TESTS_DIR.parent)
    try:
        while True:  # open the write end only once the unpacker has opened the read end
            assert child.poll() is None, "the unpacker exited before reading its blob"
            try:
                fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
                break
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                time.sleep(0.01)
        os.set_blocking(fd, True)
        with open(fd, "wb") as feed:
            feed.write(raw[: len(raw) // 2])  # half the files, then the unpacker waits for more
            feed.flush()
            temp = None
            while temp is None or len(os.listdir(temp)) < 50:  # wait until half the files exist
                assert child.poll() is None, "the unpacker exited before it was killed"
                found = [p for p in dest.parent.iterdir() if p.name.startswith(".abc.unpacking-")]
                temp = found[0] if found else None
                time.sleep(0.01)
            child.send_signal(signal.SIGKILL)
            child.wait()
    except BrokenPipeError:
        pass
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    assert not dest.exists()
    left = [p.name for p in dest.parent.iterdir()]
    assert len(left) == 1 and left[0].startswith(".abc.unpacking-")  # recognizably a temp dir
    # the next unpack is not fooled by the leftover and completes normally
    result = unpack_layer(tar, dest)
    assert result.files == 200 and len(os.listdir(dest)) == 200


# ---- the hostile corpus ------------------------------------------------------------------------

HOSTILE = [(build, how) for build in ht.CASES for how in ("flatten", "overlay", "unpack")
           if how == "flatten" or build not in ht.FLATTEN_ONLY]


@pytest.mark.parametrize("build,how", HOSTILE,
                         ids=[f"{b.__name__.removeprefix('case_')}-{how}" for b, how in HOSTILE])
def test_a_hostile_layer_changes_nothing_outside_its_target(tmp_path, build, how):
    if "xattr" in build.__name__:
        needs_user_xattrs(tmp_path)
    outside = tmp_path / "outside"
    ht.make_sentinel(outside)
    case = build(tmp_path / "blobs", outside)
    target = tmp_path / "target"
    before, passwd = snapshot(tmp_path, skip=("target",)), ht.host_file_state()
    *lowers, attack = case.layers
    for lower in lowers:
        apply_layer(lower, target)

    def apply() -> None:
        if how == "unpack":
            unpack_layer(attack, target)
        else:
            apply_layer(attack, target, mode=how)

    if case.expect == "refused":
        with pytest.raises(LayerError, match="refused") as err:
            apply()
        assert case.refusal in str(err.value) and "\n" not in str(err.value)
        if how == "unpack":
            assert not target.exists()
    else:
        apply()
        case.check(target)
    assert snapshot(tmp_path, skip=("target",)) == before  # incl. no temp dir left behind
    assert ht.host_file_state() == passwd                   # no new hardlink to /etc/passwd


# ---- diff_layer ---------------------------------------------------------------------------------

def make_upper_by_hand(upper: Path) -> None:
    """An overlay upper dir as overlayfs would leave it, built without mounting."""
    (upper / "etc").mkdir(parents=True)
    (upper / "etc/hosts").write_bytes(b"127.0.0.1 box\n")
    os.mknod(upper / "etc/gone", stat.S_IFCHR, os.makedev(0, 0))
    (upper / "var").mkdir()
    os.setxattr(upper / "var", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "var", "trusted.overlay.origin", b"\x00\x01")
    (upper / "var/new").write_bytes(b"n")
    os.link(upper / "var/new", upper / "etc/new-link")
    os.symlink("../var/new", upper / "etc/sym")
    os.mkfifo(upper / "fifo")
    os.setxattr(upper / "etc/hosts", "user.kept", b"\xff\x00binary")


def test_diff_layer_converts_overlay_whiteouts_and_opaque_dirs_to_oci_entries(tmp_path):
    needs_user_xattrs(tmp_path)
    upper = tmp_path / "upper"
    make_upper_by_hand(upper)
    result = diff_layer(upper, tmp_path / "out" / "layer.tar", compression="none")
    with tarfile.open(tmp_path / "out" / "layer.tar") as t:
        members = {m.name: m for m in t.getmembers()}
    assert list(members) == ["etc", "etc/.wh.gone", "etc/hosts", "etc/new-link", "etc/sym",
                             "fifo", "var", "var/.wh..wh..opq", "var/new"]
    assert members["etc/.wh.gone"].isreg() and members["etc/.wh.gone"].size == 0
    assert members["etc/new-link"].isreg() and members["var/new"].islnk()  # sorted walk: first seen keeps the data
    assert members["var/new"].linkname == "etc/new-link"
    assert members["etc/sym"].linkname == "../var/new" and members["fifo"].isfifo()
    assert members["etc/hosts"].pax_headers["SCHILY.xattr.user.kept"].encode("utf-8", "surrogateescape") \
        == b"\xff\x00binary"
    assert not [k for m in members.values() for k in m.pax_headers if "trusted.overlay" in k]
    assert result.files == len(members) and result.bytes == len(b"127.0.0.1 box\n") + 1
    raw = (tmp_path / "out" / "layer.tar").read_bytes()
    assert result.digest == result.diff_id == sha256(raw)
    assert os.listdir(tmp_path / "out") == ["layer.tar"]  # written via temp + rename


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_diff_layer_is_deterministic_and_reports_both_digests(tmp_path, how):
    needs_user_xattrs(tmp_path)
    upper = tmp_path / "upper"
    make_upper_by_hand(upper)
    a = diff_layer(upper, tmp_path / "a.blob", compression=how)
    b = diff_layer(upper, tmp_path / "b.blob", compression=how)
    blob = (tmp_path / "a.blob").read_bytes()
    assert a == b and a.digest == sha256(blob) and blob == (tmp_path / "b.blob").read_bytes()
    with open_layer_stream(tmp_path / "a.blob", None) as stream:
        assert a.diff_id == sha256(stream.read())


def test_diff_layer_refuses_an_upper_dir_that_uses_redirect_dir(tmp_path):
    upper = tmp_path / "upper"
    (upper / "moved").mkdir(parents=True)
    os.setxattr(upper / "moved", "trusted.overlay.redirect", b"/orig")
    with pytest.raises(LayerError, match="redirect_dir=off"):
        diff_layer(upper, tmp_path / "out.tar")
    assert os.listdir(tmp_path) == ["upper"]


def test_diff_layer_records_a_step(tmp_path):
    needs_user_xattrs(tmp_path)
    upper = tmp_path / "upper"
    make_upper_by_hand(upper)
    with recording() as trace:
        result = diff_layer(upper, tmp_path / "l.tar.gz")
    step = trace.find("diff_layer")
    assert step.shell == f"tar -czf {tmp_path / 'l.tar.gz'} -C {upper} ."
    assert step.evidence == {"files": str(result.files), "diff_id": result.diff_id}


def test_a_container_diff_applied_on_its_lower_layer_reproduces_the_merged_view(blobs, tmp_path):
    base = write_tar(blobs / "base.tar", [
        dir_("etc"), member("etc/passwd", data=b"root:x:0:0\n"), member("etc/motd", data=b"hi\n"),
        dir_("srv", mode=0o750), member("srv/a", data=b"a"), dir_("srv/sub"), member("srv/sub/b", data=b"b"),
        dir_("opt"), member("opt/tool", data=b"t", mode=0o755), symlink("opt/link", "tool"),
    ])
    lower = tmp_path / "lower"
    apply_layer(base, lower, mode="overlay")
    upper, work = tmp_path / "upper", tmp_path / "work"
    upper.mkdir()
    work.mkdir()
    changes = ("echo changed > etc/motd; rm etc/passwd; "
               "rm -rf srv; mkdir srv; echo fresh > srv/new; "     # -> opaque dir
               "ln opt/tool opt/tool-hard; mkfifo opt/fifo; chmod 700 opt; "
               "chown 12:34 etc/motd; ln -s /nowhere dangling")
    merged = merged_view([lower], upper=upper, work=work, commands=changes, mtime_unit=10**9)
    assert stat.S_ISCHR(os.lstat(upper / "etc/passwd").st_mode)               # overlayfs whiteout
    assert os.getxattr(upper / "srv", "trusted.overlay.opaque") == b"y"        # overlayfs opaque dir

    result = diff_layer(upper, blobs / "diff.tar.gz")
    flat = tmp_path / "flat"
    apply_layer(base, flat)
    apply_layer(blobs / "diff.tar.gz", flat, digest=result.digest, diff_id=result.diff_id)
    assert json.loads(json.dumps(snapshot(flat, mtime_unit=10**9))) == merged
    assert "etc/passwd" not in merged and "srv/a" not in merged and "srv/new" in merged


# ---- real image archives made elsewhere (go-containerregistry testdata) ---------------------------

def docker_save_layers(archive: Path, into: Path) -> tuple[list[Path], list[str]]:
    """Extract the layer blobs of a docker-save archive, in order, and the config's diff_ids."""
    into.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as t:
        manifest = json.load(t.extractfile("manifest.json"))[0]
        config = json.load(t.extractfile(manifest["Config"]))
        layers = []
        for i, name in enumerate(manifest["Layers"]):
            path = into / f"{i}-{Path(name).name}"
            path.write_bytes(t.extractfile(name).read())
            layers.append(path)
    return layers, config["rootfs"]["diff_ids"]


FIXTURE_ARCHIVES = ["whiteout_image.tar", "overwritten_file.tar", "whiteout_dir.tar"]


def apply_fixture(name: str, tmp_path: Path) -> Path:
    layers, diff_ids = docker_save_layers(FIXTURES / name, tmp_path / "blobs")
    root = tmp_path / "rootfs"
    for blob, diff_id in zip(layers, diff_ids):
        media_type = "application/vnd.docker.image.rootfs.diff.tar.gzip"
        result = apply_layer(blob, root, media_type=media_type, diff_id=diff_id)
        assert result.diff_id == diff_id
    return root


def test_whiteout_image_fixture_leaves_bar_and_removes_foo(tmp_path):
    root = apply_fixture("whiteout_image.tar", tmp_path)
    assert (root / "bar.txt").is_file()
    assert not os.path.lexists(root / "foo.txt")
    assert not [p for p in snapshot(root) if Path(p).name.startswith(".wh.")]


def test_overwritten_file_fixture_leaves_foo_as_a_symlink_to_bar(tmp_path):
    root = apply_fixture("overwritten_file.tar", tmp_path)
    assert (root / "foo.txt").is_symlink() and os.readlink(root / "foo.txt") == "bar.txt"
    assert (root / "foo.txt").read_bytes() == (root / "bar.txt").read_bytes()
    assert snapshot(root).keys() == {"bar.txt", "foo.txt"}  # the old foo.txt content is gone


def test_whiteout_dir_fixture_removes_the_whole_directory_a_before_a_baz_returns(tmp_path):
    root = apply_fixture("whiteout_dir.tar", tmp_path)
    assert (root / "a/baz").is_file() and (root / "b/bar").is_file()
    assert not os.path.lexists(root / "a/foo")


def test_whiteout_dir_fixture_blobs_match_their_content_addressed_names(tmp_path):
    layers, _ = docker_save_layers(FIXTURES / "whiteout_dir.tar", tmp_path / "blobs")
    for blob in layers:
        digest = "sha256:" + blob.name.split("-", 1)[1].removesuffix(".tar.gz")
        assert apply_layer(blob, tmp_path / "root", digest=digest).digest == digest


@pytest.mark.parametrize("archive", FIXTURE_ARCHIVES)
def test_fixture_layers_mounted_as_overlay_lowers_match_the_flattened_rootfs(tmp_path, archive):
    root = apply_fixture(archive, tmp_path)
    layers, diff_ids = docker_save_layers(FIXTURES / archive, tmp_path / "blobs2")
    dirs = []
    for i, blob in enumerate(layers):
        dirs.append(tmp_path / "layers" / str(i))
        unpack_layer(blob, dirs[-1], diff_id=diff_ids[i])
    merged = merged_view(dirs[::-1])
    assert merged == tree(root)
    assert merged  # an empty view would match an empty rootfs trivially


# ---- umoci as a peer ------------------------------------------------------------------------------

def write_oci_layout(layout: Path, layer_blobs: list[Path], tag: str) -> None:
    """A minimal OCI image layout: blobs, a config with diff_ids, a manifest, index.json."""
    shas = layout / "blobs" / "sha256"
    shas.mkdir(parents=True)

    def put(data: bytes) -> dict:
        digest = sha256(data)
        (shas / digest.split(":")[1]).write_bytes(data)
        return {"digest": digest, "size": len(data)}

    layers, diff_ids = [], []
    for blob in layer_blobs:
        with open_layer_stream(blob, None) as s:
            diff_ids.append(sha256(s.read()))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **put(blob.read_bytes())})
    config = put(json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                             "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode())
    manifest = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                               "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
                               "layers": layers}).encode())
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
         "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')


@pytest.mark.peer
def test_flatten_apply_builds_the_same_tree_as_umoci(blobs, tmp_path):
    if shutil.which("umoci") is None:
        pytest.skip("umoci is not installed")
    layers = [
        write_tar(blobs / "1.tar", [
            dir_("etc"), member("etc/passwd", data=b"root:x:0:0\n", pax={"SCHILY.xattr.user.mc": "1"}),
            dir_("usr"), dir_("usr/bin"), member("usr/bin/tool", data=b"\x7fELF", mode=0o755, uid=1000, gid=100),
            hardlink("usr/bin/tool2", "usr/bin/tool"), symlink("usr/bin/t", "tool"),
            member("usr/bin/su", data=b"su", mode=0o4755), dir_("usr/lib"), member("usr/lib/libx.so", data=b"x"),
            dir_("run"), member("run/fifo", tarfile.FIFOTYPE, mode=0o600),
            dir_("dev"), member("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3),
            dir_("opt"), dir_("opt/old"), member("opt/old/a", data=b"a"), dir_("opt/old/sub"),
            member("opt/old/sub/b", data=b"b"), dir_("srv"), member("srv/data", data=b"d"),
        ]),
        write_tar(blobs / "2.tar", [
            member("usr/lib/.wh.libx.so"), member("etc/passwd", data=b"root:x:0:0\nuser:x:1:1\n"),
            hardlink("usr/lib/tool-link", "usr/bin/tool"),
            dir_("opt/old", mode=0o700), member("opt/old/new", data=b"new"), member("opt/old/.wh..wh..opq"),
        ]),
        write_tar(blobs / "3.tar", [
            member("srv", data=b"srv is now a file"), member(".wh.run"),
            symlink("etc/alt", "/usr/bin/t"), dir_("usr/bin", mode=0o711),
        ]),
    ]
    gz = [compress(layer, "gzip") for layer in layers]
    write_oci_layout(tmp_path / "oci", gz, "t")
    subprocess.run(["umoci", "raw", "unpack", "--image", f"{tmp_path / 'oci'}:t", str(tmp_path / "umoci")],
                   check=True, capture_output=True)
    ours = tmp_path / "ours"
    for blob in gz:
        apply_layer(blob, ours, media_type="application/vnd.oci.image.layer.v1.tar+gzip")
    theirs = snapshot(tmp_path / "umoci")
    assert snapshot(ours) == theirs
    assert "opt/old/a" not in theirs and "opt/old/new" in theirs and "usr/lib/libx.so" not in theirs


# ---- decompression bounds: a gzip bomb stops at MINICONTAINER_MAX_IMAGE_SIZE (issue 11) ------------

class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read lazily: a bomb's payload never sits in the test's memory."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        n = min(len(b), self.left)
        b[:n] = bytes(n)
        self.left -= n
        return n


def compression_bomb(path: Path, size: int, how: str = "gzip") -> Path:
    """A layer blob holding one file of ``size`` zeros: a few KiB that inflate to ``size`` bytes."""
    with open(path, "wb") as raw:
        out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if how == "gzip" \
            else zstandard.ZstdCompressor().stream_writer(raw)
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("zeros")
            info.size = size
            tar.addfile(info, io.BufferedReader(_Zeros(size)))
        out.close()
    return path


@pytest.mark.parametrize("how", ["gzip", "zstd"])
def test_a_compression_bomb_stops_at_the_image_size_cap_and_leaves_no_partial_layer(blobs, tmp_path, monkeypatch, how):
    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "8m")
    bomb = compression_bomb(blobs / "bomb", 256 << 20, how)
    assert bomb.stat().st_size < 1 << 20, "the bomb is small: all its size is in the inflating"
    dest = tmp_path / "layers" / "abc"
    with pytest.raises(LayerError) as err:
        unpack_layer(bomb, dest)
    message = str(err.value)
    assert "unpacks to more than 8 MiB, the MINICONTAINER_MAX_IMAGE_SIZE limit" in message and "\n" not in message
    assert os.listdir(dest.parent) == [], "the failed layer's temp dir is removed"


def test_the_layers_of_one_image_share_one_budget(blobs, tmp_path):
    from minicontainer.image.limits import UnpackBudget

    budget = UnpackBudget("image test", limit=12 << 20)
    first = compression_bomb(blobs / "one", 8 << 20)
    second = compression_bomb(blobs / "two", 8 << 20)
    unpack_layer(first, tmp_path / "layers" / "one", budget=budget)   # 8 MiB of 12: fine alone
    with pytest.raises(LayerError, match="image test unpacks to more than 12 MiB"):
        unpack_layer(second, tmp_path / "layers" / "two", budget=budget)
    assert sorted(os.listdir(tmp_path / "layers")) == ["one"]


def test_a_layer_under_the_cap_unpacks_and_a_bad_cap_setting_names_the_variable(blobs, tmp_path, monkeypatch):
    from minicontainer.errors import InvalidArgument

    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "8m")
    result = unpack_layer(compression_bomb(blobs / "small", 4 << 20), tmp_path / "ok")
    assert result.files == 1 and (tmp_path / "ok" / "zeros").stat().st_size == 4 << 20
    monkeypatch.setenv("MINICONTAINER_MAX_IMAGE_SIZE", "lots")
    with pytest.raises(InvalidArgument, match=r"^invalid MINICONTAINER_MAX_IMAGE_SIZE='lots': give a size such as"):
        unpack_layer(compression_bomb(blobs / "small2", 1 << 10), tmp_path / "never")
    assert not (tmp_path / "never").exists()
