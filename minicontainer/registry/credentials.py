"""The credentials ``minicontainer login`` saves and ``logout`` removes.

The file has the shape of docker's ``~/.docker/config.json``::

    {"auths": {"localhost:5000": {"auth": "<base64 of user:password>"}}}

base64 is an encoding, not encryption: anyone who can read the file has the password.
That is why the file is mode 0600 in a directory of mode 0700, readable by root only,
and why docker offers credential helpers (which we leave out).
"""
from __future__ import annotations

import base64
import binascii
import json
import os
from pathlib import Path

from ..atomic import file_lock, write_atomic
from ..errors import RegistryError
from .insecure import config_dir

# Docker Hub answers to several names; store one key for all of them.
DOCKER_HUB_NAMES = ("docker.io", "index.docker.io", "registry-1.docker.io", "registry.hub.docker.com")


def credentials_path() -> Path:
    """$MINICONTAINER_CONFIG_DIR/auth.json (default /etc/minicontainer/auth.json)."""
    return config_dir() / "auth.json"


def credentials_key(host: str) -> str:
    """The key a registry's credentials are stored under: the host[:port], Docker Hub as docker.io."""
    host = host.strip().lower()
    for prefix in ("https://", "http://"):
        host = host.removeprefix(prefix)
    host = host.split("/", 1)[0]
    return "docker.io" if host in DOCKER_HUB_NAMES else host


def _read() -> dict:
    path = credentials_path()
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {"auths": {}}
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read credentials file {path}: {exc}: remove it and log in again") from None
    if not isinstance(data, dict) or not isinstance(data.get("auths", {}), dict):
        raise RegistryError(f"credentials file {path} is not {{\"auths\": {{...}}}}: remove it and log in again")
    data.setdefault("auths", {})
    return data


def _write(data: dict) -> None:
    """Write the file 0600 inside a 0700 directory: only root may read saved passwords."""
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True).encode() + b"\n", mode=0o600)
    os.chmod(path, 0o600)  # in case the umask took bits off, or put none back: be explicit


def save_credentials(host: str, user: str, password: str) -> None:
    """Remember user:password for ``host`` (what ``minicontainer login`` does after checking them)."""
    if ":" in user:
        raise RegistryError(f"user name {user!r} contains ':', which Basic auth can't carry: use another name")
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with file_lock(path.parent / ".auth.json.lock"):
        data = _read()
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        data["auths"][credentials_key(host)] = {"auth": token}
        _write(data)


def load_credentials(host: str) -> tuple[str, str] | None:
    """(user, password) saved for ``host``, or None if nobody logged in to it."""
    entry = _read()["auths"].get(credentials_key(host))
    if not isinstance(entry, dict) or not entry.get("auth"):
        return None
    try:
        user, sep, password = base64.b64decode(entry["auth"]).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise RegistryError(f"saved credentials for {credentials_key(host)} in {credentials_path()} are "
                            f"not base64 user:password: run minicontainer logout {host} and log in again") from None
    return (user, password) if sep else None


def remove_credentials(host: str) -> bool:
    """Forget ``host``'s credentials (``minicontainer logout``); True if there were any."""
    path = credentials_path()
    if not path.exists():
        return False
    with file_lock(path.parent / ".auth.json.lock"):
        data = _read()
        if data["auths"].pop(credentials_key(host), None) is None:
            return False
        _write(data)
        return True
