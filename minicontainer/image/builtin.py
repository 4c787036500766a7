"""The built-in image: a real OCI image ``busybox:latest`` made from the host's static busybox.

There is no internet in CI, so the engine builds its default image locally: one gzip
layer holding /bin/busybox and a symlink per applet, a config (Cmd ["sh"], PATH), a
manifest and an index entry, all content-addressed like any image pulled from a registry.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile

from ..errors import MinicontainerError
from ..trace import Step
from .store import (BUILTIN_REF, OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST, ImageStore, host_platform,
                    sha256_digest)

PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hostname": "busybox\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost\n",
}
DIRS = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "home": 0o755, "proc": 0o555, "root": 0o700,
        "sbin": 0o755, "sys": 0o555, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
        "usr/sbin": 0o755, "var": 0o755}


def find_busybox() -> str:
    """The host's static busybox binary, or a one-line error naming the package to install."""
    for path in ("/bin/busybox", "/usr/bin/busybox"):
        if os.path.exists(path):
            return path
    found = shutil.which("busybox")
    if found:
        return found
    raise MinicontainerError("no busybox binary on this host: install it with `apt-get install busybox-static` "
                             "(or run `make setup`)")


def _applets(busybox: str) -> list[str]:
    out = subprocess.run([busybox, "--list-full"], capture_output=True, text=True, check=True).stdout
    return sorted({line.strip() for line in out.splitlines() if line.strip() and line.strip() != "bin/busybox"})


def build_layer_tar(busybox: str, mtime: int) -> bytes:
    """An uncompressed, reproducible layer tar: fixed mtimes, sorted entries, root-owned."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(info: tarfile.TarInfo, data: bytes | None = None) -> None:
            info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        dirs = dict(DIRS)
        applets = _applets(busybox)
        for applet in applets:
            parent = os.path.dirname(applet)
            while parent and parent not in dirs:
                dirs[parent] = 0o755
                parent = os.path.dirname(parent)
        for d in sorted(dirs):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, dirs[d]
            add(info)
        with open(busybox, "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.mode, info.size = 0o755, len(data)
        add(info, data)
        for applet in applets:
            info = tarfile.TarInfo(applet)
            info.type, info.linkname, info.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
            add(info)
        for name, text in sorted(FILES.items()):
            info = tarfile.TarInfo(name)
            info.mode, info.size = 0o644, len(text)
            add(info, text.encode())
    return buf.getvalue()


def _write_builtin(store: ImageStore, busybox: str) -> dict:
    mtime = int(os.stat(busybox).st_mtime)
    tar = build_layer_tar(busybox, mtime)
    layer = gzip.compress(tar, compresslevel=6, mtime=0)
    layer_digest = store.write_blob(layer)
    arch = host_platform().split("/")[1]
    version = subprocess.run([busybox], capture_output=True, text=True).stdout.splitlines()[0]
    created = _iso(mtime)
    config = {
        "architecture": arch, "os": "linux", "created": created,
        "config": {"Env": [PATH_ENV], "Cmd": ["sh"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(tar)]},
        "history": [{"created": created, "created_by": f"minicontainer: {busybox} ({version}) and its applet links"}],
    }
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = store.write_blob(config_bytes)
    manifest = {
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    manifest_digest = store.write_blob(manifest_bytes)
    descriptor = {"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
                  "platform": {"os": "linux", "architecture": arch}}
    store.tag(BUILTIN_REF, descriptor)
    return descriptor


def _iso(ts: int) -> str:
    import datetime
    return datetime.datetime.fromtimestamp(ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def build_builtin_image(store: ImageStore) -> Step:
    """Build busybox:latest from the host's busybox into the store (a no-op if it is there)."""
    busybox = find_busybox()
    step = Step("build_image", call=f"tar {busybox} + applet links | gzip → blob; config; manifest; tag {BUILTIN_REF}",
                shell=f"tar -czf layer.tar.gz -C rootfs . && sha256sum layer.tar.gz",
                why="an image is just content-addressed blobs: a layer tarball, a config and a manifest that names them")
    step.do(lambda: _write_builtin(store, busybox)["digest"])
    return step
