"""A corpus of hostile layer tarballs, and a snapshot helper to prove nothing escaped.

Each ``case_*`` function builds one attack in a directory with :mod:`tarfile` (or by hand,
when tarfile refuses to write something that malformed) and returns a :class:`HostileCase`:
the layer blobs to apply in order (all but the last are harmless lower layers), what
should happen (``"refused"``: a LayerError; ``"contained"``: applied, but only inside the
target) and, for contained cases, a check on the target.

``outside`` is a sentinel directory next to the target that every attack aims at; the tests
snapshot it (and the target's parent) before and after.
"""
from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

MTIME = 1_600_000_000


@dataclass
class HostileCase:
    layers: list[Path]                       # applied in order; the last one is the attack
    expect: str                              # "refused" or "contained"
    check: Callable[[Path], None] | None = None
    refusal: str = ""                        # a fragment the LayerError must contain


# ---- building tar members ---------------------------------------------------------------

def member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"", *, linkname: str = "",
           mode: int = 0o644, uid: int = 0, gid: int = 0, devmajor: int = 0, devminor: int = 0,
           pax: dict[str, str] | None = None) -> tuple[tarfile.TarInfo, bytes]:
    """One tar member as (TarInfo, data)."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, mode
    info.uid, info.gid, info.mtime = uid, gid, MTIME
    info.devmajor, info.devminor = devmajor, devminor
    info.size = len(data) if kind in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
    if pax:
        info.pax_headers = dict(pax)
    return info, data


def dir_(name: str, mode: int = 0o755, **kw) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.DIRTYPE, mode=mode, **kw)


def symlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.SYMTYPE, linkname=target, mode=0o777)


def hardlink(name: str, target: str) -> tuple[tarfile.TarInfo, bytes]:
    return member(name, tarfile.LNKTYPE, linkname=target)


def write_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]],
              fmt: int = tarfile.PAX_FORMAT) -> Path:
    """Write members in order, exactly as given (tarfile does not sanitize names it writes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return path


def raw_header(name: str, kind: bytes, size: int) -> bytes:
    """A bare ustar header block, for headers that lie about what follows them."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mtime = kind, size, MTIME
    return info.tobuf(format=tarfile.USTAR_FORMAT)


# ---- the corpus -----------------------------------------------------------------------------

def case_absolute_path(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "abs.tar", [member(f"{outside}/pwned", data=b"x")])],
                       "refused", refusal="absolute path")


def case_dotdot_escape(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "dotdot.tar", [member("../outside/pwned", data=b"x")])],
                       "refused", refusal="'..'")


def case_dotdot_after_a_directory(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "dotdot2.tar", [dir_("a"), member("a/../../outside/pwned", data=b"x")])],
                       "refused", refusal="'..'")


def case_symlinked_parent_then_file_through_it(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "symparent.tar", [symlink("a", str(outside)),
                                                        member("a/pwned", data=b"x")])],
                       "refused", refusal="symlink")


def case_relative_symlink_out_then_file_through_it(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "relsym.tar", [symlink("a", "../outside"),
                                                     member("a/pwned", data=b"x")])],
                       "refused", refusal="symlink")


def case_symlink_to_dotdot_then_write_through(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "updot.tar", [symlink("up", ".."),
                                                    member("up/outside/pwned", data=b"x")])],
                       "refused", refusal="symlink")


def case_symlink_chain_then_write_through(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "chain.tar", [symlink("b", str(outside)), symlink("a", "b"),
                                                    member("a/pwned", data=b"x")])],
                       "refused", refusal="symlink")


def case_hardlink_to_etc_passwd(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "passwd.tar", [hardlink("passwd", "/etc/passwd")])],
                       "refused", refusal="hardlink target")


def case_hardlink_to_dotdot_outside(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "hlout.tar", [hardlink("secret", "../outside/secret")])],
                       "refused", refusal="'..'")


def case_hardlink_through_a_symlinked_parent(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "hlsym.tar", [symlink("s", str(outside)),
                                                    hardlink("x", "s/secret")])],
                       "refused", refusal="symlink")


def case_whiteout_through_a_symlinked_parent(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "whsym.tar", [symlink("a", str(outside)),
                                                    member("a/.wh.secret")])],
                       "refused", refusal="symlink")


def case_opaque_marker_through_a_symlinked_parent(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "opqsym.tar", [symlink("a", str(outside)),
                                                     member("a/.wh..wh..opq")])],
                       "refused", refusal="symlink")


def _odd_whiteout(name: str, refusal: str) -> Callable[[Path, Path], HostileCase]:
    def build(d: Path, outside: Path) -> HostileCase:
        safe = name.replace("/", "_")
        return HostileCase([write_tar(d / f"wh{safe}.tar", [dir_("a"), member(name)])],
                           "refused", refusal=refusal)
    build.__name__ = f"case_whiteout_named_{name!r}"
    return build


ODD_WHITEOUTS = [
    _odd_whiteout(".wh..wh..foo", "reserved"),
    _odd_whiteout(".wh..wh.", "reserved"),
    _odd_whiteout("a/.wh..wh.x", "reserved"),
    _odd_whiteout(".wh.", "whiteout of"),
    _odd_whiteout(".wh..", "whiteout of"),
    _odd_whiteout(".wh...", "whiteout of"),          # a whiteout of '..'
    _odd_whiteout("a/.wh...", "whiteout of"),
    _odd_whiteout(".wh.../outside/secret", "whiteout name used as a directory"),
    _odd_whiteout(".wh..wh..opq/x", "whiteout name used as a directory"),
]


def case_duplicate_entry_swaps_dir_for_symlink(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "swap.tar", [dir_("a"), member("a/ok", data=b"ok"),
                                                   symlink("a", str(outside)),
                                                   member("a/pwned", data=b"x")])],
                       "refused", refusal="symlink")


def case_oversized_pax_header(d: Path, outside: Path) -> HostileCase:
    huge = "A" * (2 << 20)
    return HostileCase([write_tar(d / "bigpax.tar", [member("f", data=b"x",
                                                            pax={"SCHILY.xattr.user.big": huge})])],
                       "refused", refusal="limit")


def case_pax_header_declaring_a_gigabyte(d: Path, outside: Path) -> HostileCase:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "gigapax.tar"
    path.write_bytes(raw_header("././@PaxHeader", tarfile.XHDTYPE, 1 << 30) + b"9 path=x\n".ljust(512, b"\0"))
    return HostileCase([path], "refused", refusal="limit")


def case_gnu_long_name_declaring_a_gigabyte(d: Path, outside: Path) -> HostileCase:
    d.mkdir(parents=True, exist_ok=True)
    path = d / "gigalong.tar"
    path.write_bytes(raw_header("././@LongLink", tarfile.GNUTYPE_LONGNAME, 1 << 30) + bytes(512))
    return HostileCase([path], "refused", refusal="limit")


def case_very_long_pax_name(d: Path, outside: Path) -> HostileCase:
    name = "/".join(["d" * 200] * 30)  # 6029 bytes
    return HostileCase([write_tar(d / "longpax.tar", [member(name, data=b"x")])],
                       "refused", refusal="PATH_MAX")


def case_very_long_gnu_name(d: Path, outside: Path) -> HostileCase:
    name = "/".join(["g" * 250] * 20)
    return HostileCase([write_tar(d / "longgnu.tar", [member(name, data=b"x")], fmt=tarfile.GNU_FORMAT)],
                       "refused", refusal="PATH_MAX")


def case_component_over_name_max(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "longcomp.tar", [member("n" * 300, data=b"x")])],
                       "refused", refusal="NAME_MAX")


def case_nul_byte_in_pax_path(d: Path, outside: Path) -> HostileCase:
    sneaky = member("ok", data=b"x", pax={"path": "a\0/../../outside/pwned"})
    return HostileCase([write_tar(d / "nul.tar", [sneaky])], "refused", refusal="NUL")


def case_char_device_named_with_dotdot(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "chr.tar", [member("../outside/null", tarfile.CHRTYPE,
                                                         devmajor=1, devminor=3)])],
                       "refused", refusal="'..'")


def case_block_device_at_an_absolute_path(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "blk.tar", [member(f"{outside}/sda", tarfile.BLKTYPE,
                                                         devmajor=8, devminor=0)])],
                       "refused", refusal="absolute path")


def case_fifo_through_a_symlinked_parent(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "fifo.tar", [symlink("p", str(outside)),
                                                   member("p/fifo", tarfile.FIFOTYPE)])],
                       "refused", refusal="symlink")


def case_root_entry_as_symlink(d: Path, outside: Path) -> HostileCase:
    return HostileCase([write_tar(d / "rootsym.tar", [symlink("./", str(outside)),
                                                      member("pwned", data=b"x")])],
                       "refused", refusal="root")


def case_file_replaces_a_symlink_instead_of_writing_through_it(d: Path, outside: Path) -> HostileCase:
    def check(target: Path) -> None:
        assert not (target / "f").is_symlink()
        assert (target / "f").read_bytes() == b"mine"
    return HostileCase([write_tar(d / "repl.tar", [symlink("f", f"{outside}/secret"),
                                                   member("f", data=b"mine")])],
                       "contained", check)


def case_dir_replaces_a_symlink_instead_of_chmodding_its_target(d: Path, outside: Path) -> HostileCase:
    def check(target: Path) -> None:
        assert (target / "d").is_dir() and not (target / "d").is_symlink()
        assert stat.S_IMODE((target / "d").lstat().st_mode) == 0o777
    return HostileCase([write_tar(d / "dirrepl.tar", [symlink("d", str(outside)), dir_("d", mode=0o777)])],
                       "contained", check)


def case_hardlink_to_a_symlink_then_overwrite(d: Path, outside: Path) -> HostileCase:
    def check(target: Path) -> None:
        assert os.readlink(target / "s") == f"{outside}/secret"
        assert (target / "h").read_bytes() == b"mine" and not (target / "h").is_symlink()
    return HostileCase([write_tar(d / "hlsl.tar", [symlink("s", f"{outside}/secret"), hardlink("h", "s"),
                                                   member("h", data=b"mine")])],
                       "contained", check)


def case_rewriting_a_hardlinked_name_does_not_write_through_the_link(d: Path, outside: Path) -> HostileCase:
    def check(target: Path) -> None:
        assert (target / "a").read_bytes() == b"first"
        assert (target / "b").read_bytes() == b"second"
    return HostileCase([write_tar(d / "hlrw.tar", [member("a", data=b"first"), hardlink("b", "a"),
                                                   member("b", data=b"second")])],
                       "contained", check)


def case_forged_overlay_xattrs_are_dropped(d: Path, outside: Path) -> HostileCase:
    def check(target: Path) -> None:
        for name in ("d", "f"):
            assert not [x for x in os.listxattr(target / name) if x.startswith("trusted.overlay.")]
        assert os.getxattr(target / "f", "user.kept") == b"1"
    forged = {"SCHILY.xattr.trusted.overlay.opaque": "y",
              "SCHILY.xattr.trusted.overlay.redirect": "/../../outside"}
    kept = {**forged, "SCHILY.xattr.user.kept": "1"}
    return HostileCase([write_tar(d / "forge.tar", [dir_("d", pax=forged), member("f", data=b"x", pax=kept)])],
                       "contained", check)


# Cases whose first layers are legitimate and already in the rootfs (flatten mode only).

def case_lower_layer_symlink_then_file_through_it(d: Path, outside: Path) -> HostileCase:
    lower = write_tar(d / "lower-etc.tar", [symlink("etc", str(outside))])
    attack = write_tar(d / "upper-etc.tar", [member("etc/pwned", data=b"x")])
    return HostileCase([lower, attack], "refused", refusal="symlink")


def case_lower_layer_symlink_then_opaque_marker(d: Path, outside: Path) -> HostileCase:
    lower = write_tar(d / "lower-opq.tar", [symlink("d", str(outside))])
    attack = write_tar(d / "upper-opq.tar", [member("d/.wh..wh..opq")])
    return HostileCase([lower, attack], "refused", refusal="symlink")


def case_whiteout_of_a_lower_symlink_removes_only_the_symlink(d: Path, outside: Path) -> HostileCase:
    lower = write_tar(d / "lower-wh.tar", [symlink("s", str(outside)), member("keep", data=b"k")])
    attack = write_tar(d / "upper-wh.tar", [member(".wh.s")])
    def check(target: Path) -> None:
        assert not os.path.lexists(target / "s")
        assert (target / "keep").read_bytes() == b"k"
    return HostileCase([lower, attack], "contained", check)


def case_absolute_hardlink_target_resolves_inside_the_rootfs(d: Path, outside: Path) -> HostileCase:
    lower = write_tar(d / "lower-pw.tar", [dir_("etc"), member("etc/passwd", data=b"root:x:0:0::/root:/bin/sh\n")])
    attack = write_tar(d / "upper-pw.tar", [hardlink("pw", "/etc/passwd")])
    def check(target: Path) -> None:
        assert os.stat(target / "pw").st_ino == os.stat(target / "etc/passwd").st_ino
        assert (target / "pw").read_bytes().startswith(b"root:x:0:0::/root")
    return HostileCase([lower, attack], "contained", check)


# These need their lower layers in the same rootfs, so they only make sense in flatten mode.
FLATTEN_ONLY = [
    case_lower_layer_symlink_then_file_through_it,
    case_lower_layer_symlink_then_opaque_marker,
    case_whiteout_of_a_lower_symlink_removes_only_the_symlink,
    case_absolute_hardlink_target_resolves_inside_the_rootfs,
]

CASES: list[Callable[[Path, Path], HostileCase]] = [
    case_absolute_path,
    case_dotdot_escape,
    case_dotdot_after_a_directory,
    case_symlinked_parent_then_file_through_it,
    case_relative_symlink_out_then_file_through_it,
    case_symlink_to_dotdot_then_write_through,
    case_symlink_chain_then_write_through,
    case_hardlink_to_etc_passwd,
    case_hardlink_to_dotdot_outside,
    case_hardlink_through_a_symlinked_parent,
    case_whiteout_through_a_symlinked_parent,
    case_opaque_marker_through_a_symlinked_parent,
    *ODD_WHITEOUTS,
    case_duplicate_entry_swaps_dir_for_symlink,
    case_oversized_pax_header,
    case_pax_header_declaring_a_gigabyte,
    case_gnu_long_name_declaring_a_gigabyte,
    case_very_long_pax_name,
    case_very_long_gnu_name,
    case_component_over_name_max,
    case_nul_byte_in_pax_path,
    case_char_device_named_with_dotdot,
    case_block_device_at_an_absolute_path,
    case_fifo_through_a_symlinked_parent,
    case_root_entry_as_symlink,
    case_file_replaces_a_symlink_instead_of_writing_through_it,
    case_dir_replaces_a_symlink_instead_of_chmodding_its_target,
    case_hardlink_to_a_symlink_then_overwrite,
    case_rewriting_a_hardlinked_name_does_not_write_through_the_link,
    case_forged_overlay_xattrs_are_dropped,
    *FLATTEN_ONLY,
]


# ---- the sentinel and the snapshot ---------------------------------------------------------

def make_sentinel(outside: Path) -> None:
    """A directory worth attacking: a secret file, a subdir, a fifo and a symlink."""
    (outside / "dir").mkdir(parents=True)
    (outside / "secret").write_bytes(b"do not touch\n")
    (outside / "dir" / "inner").write_bytes(b"inner\n")
    os.mkfifo(outside / "fifo")
    os.symlink("secret", outside / "link")
    os.chmod(outside / "secret", 0o600)


def snapshot(root: Path | str, *, skip: tuple[str, ...] = (), mtime_unit: int = 1) -> dict[str, list]:
    """Everything about a tree that an escape could change, keyed by relative path.

    Per entry: type, mode, uid, gid, mtime (in units of ``mtime_unit`` ns), the content's
    sha256 (files), the link target (symlinks), the device number (devices), the xattrs,
    and for hardlinked files the first path of their inode, so link identity compares too.
    The root itself is left out (creating a temp dir in it changes its mtime); paths in
    ``skip`` are left out with everything below them. Values are JSON-friendly.
    """
    root = str(root)
    out: dict[str, list] = {}
    first_path: dict[tuple[int, int], str] = {}

    def walk(rel: str) -> None:
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            if child in skip:
                continue
            path = os.path.join(root, child)
            st = os.lstat(path)
            mode = st.st_mode
            if stat.S_ISREG(mode):
                with open(path, "rb") as f:
                    detail = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(mode):
                detail = os.readlink(path)
            elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                detail = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
            else:
                detail = ""
            try:
                xattrs = sorted(f"{x}={os.getxattr(path, x, follow_symlinks=False).hex()}"
                                for x in os.listxattr(path, follow_symlinks=False))
            except OSError:
                xattrs = []
            link_group = ""
            if not stat.S_ISDIR(mode) and st.st_nlink > 1:
                link_group = first_path.setdefault((st.st_dev, st.st_ino), child)
            out[child] = [stat.S_IFMT(mode), stat.S_IMODE(mode), st.st_uid, st.st_gid,
                          st.st_mtime_ns // mtime_unit, detail, xattrs, link_group]
            if stat.S_ISDIR(mode):
                walk(child)

    walk("")
    return out


def host_file_state(path: str = "/etc/passwd") -> tuple:
    """Identity of a host file: a hardlink to it would raise st_nlink."""
    st = os.lstat(path)
    return st.st_ino, st.st_nlink, st.st_mtime_ns, st.st_size, st.st_mode
