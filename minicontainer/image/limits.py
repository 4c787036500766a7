"""How big an image's parts may be: the caps a hostile registry or archive runs into.

A manifest or config is JSON that the engine parses in memory, and a layer is a
compressed tar that can inflate a thousandfold (a *gzip bomb*). So each has a cap,
checked while the bytes stream in, never after they are all in memory or on disk:

* ``MINICONTAINER_MAX_MANIFEST_SIZE`` (default 4m): one manifest or index, as
  containers/image's ``ReadAtMost`` (the fix for CVE-2020-1702);
* ``MINICONTAINER_MAX_CONFIG_SIZE`` (default 4m): one image config;
* ``MINICONTAINER_MAX_IMAGE_SIZE`` (default 20g): everything one image unpacks to,
  all its layers' uncompressed tars together; also the cap on an archive that
  ``load`` inflates.

Sizes take docker's units: ``512k``, ``64m``, ``2g`` or a plain byte count.
"""
from __future__ import annotations

import os

from ..errors import InvalidArgument, LayerError

MANIFEST_SIZE_SETTING = "MINICONTAINER_MAX_MANIFEST_SIZE"
CONFIG_SIZE_SETTING = "MINICONTAINER_MAX_CONFIG_SIZE"
IMAGE_SIZE_SETTING = "MINICONTAINER_MAX_IMAGE_SIZE"
DEFAULTS = {MANIFEST_SIZE_SETTING: 4 << 20, CONFIG_SIZE_SETTING: 4 << 20, IMAGE_SIZE_SETTING: 20 << 30}
# A JSON document of 4 MiB can still be a million empty objects ("[{},{},…]"), 100 MB
# once parsed. Real manifests and configs hold hundreds of objects: refuse more than this.
MAX_JSON_CONTAINERS = 100_000


def size_setting(name: str) -> int:
    """The byte count the environment variable ``name`` sets, or its default."""
    text = os.environ.get(name, "").strip()
    if not text:
        return DEFAULTS[name]
    from ..kernel.cgroups import parse_memory   # docker's size units, parsed in one place

    try:
        return parse_memory(text)
    except InvalidArgument:
        raise InvalidArgument(f"invalid {name}={text!r}: give a size such as 4m, 512k or 20g, "
                              "or unset it for the default") from None


def max_manifest_bytes() -> int:
    return size_setting(MANIFEST_SIZE_SETTING)


def max_config_bytes() -> int:
    return size_setting(CONFIG_SIZE_SETTING)


def max_image_bytes() -> int:
    return size_setting(IMAGE_SIZE_SETTING)


def human(n: int) -> str:
    """A byte count in binary units, as the settings are written: 4 MiB, 20 GiB."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << (shift - 4)) == 0:
            return f"{n / (1 << shift):g} {unit}"
    return f"{n} bytes"


def check_json_shape(data: bytes, what: str) -> None:
    """Refuse JSON with more objects and arrays than any manifest or config has (a parse-time bomb)."""
    containers = data.count(b"{") + data.count(b"[")
    if containers > MAX_JSON_CONTAINERS:
        raise LayerError(f"{what} holds {containers} JSON objects and arrays, more than the {MAX_JSON_CONTAINERS} "
                         "any real manifest or config has: refusing to parse it (it is malformed or hostile)")


class UnpackBudget:
    """What is left of the MINICONTAINER_MAX_IMAGE_SIZE cap while one image's layers inflate."""

    def __init__(self, what: str, limit: int | None = None):
        self.what = what
        self.limit = max_image_bytes() if limit is None else limit
        self.used = 0

    def take(self, n: int) -> None:
        """Count ``n`` more uncompressed bytes; LayerError as soon as the cap is passed."""
        self.used += n
        if self.used > self.limit:
            raise LayerError(f"{self.what} unpacks to more than {human(self.limit)}, the {IMAGE_SIZE_SETTING} "
                             "limit (a gzip bomb, or a very large image): nothing was kept; raise the limit, "
                             f"e.g. {IMAGE_SIZE_SETTING}=50g, only if you trust the image")
