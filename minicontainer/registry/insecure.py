"""Which registries may be spoken to over plain HTTP: loopback, and what daemon.json lists.

A registry client uses HTTPS with certificate verification unless told otherwise. Docker
makes two exceptions, and so do we:

* registries on this machine (``localhost``, 127.0.0.0/8, ``::1``): the traffic never
  leaves the host, so there is nothing for TLS to protect;
* registries an administrator lists under ``insecure-registries`` in ``daemon.json``,
  as ``host:port`` names or as CIDR ranges::

      {"insecure-registries": ["myhost:5000", "10.0.0.0/8"]}

The file lives in ``$MINICONTAINER_CONFIG_DIR`` (default ``/etc/minicontainer``), next to
the credentials that ``minicontainer login`` stores.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
from pathlib import Path

from ..errors import RegistryError

DEFAULT_CONFIG_DIR = "/etc/minicontainer"


def config_dir() -> Path:
    """The directory for daemon.json and auth.json: $MINICONTAINER_CONFIG_DIR or /etc/minicontainer."""
    return Path(os.environ.get("MINICONTAINER_CONFIG_DIR") or DEFAULT_CONFIG_DIR)


def config_path() -> Path:
    """Where the daemon.json-style config lives."""
    return config_dir() / "daemon.json"


def insecure_registries() -> list[str]:
    """The ``insecure-registries`` entries of daemon.json (hosts or CIDRs); [] if there is no file."""
    path = config_path()
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise RegistryError(f"cannot read {path}: {exc}: fix the JSON "
                            '(e.g. {"insecure-registries": ["myhost:5000"]}) or remove the file') from None
    entries = config.get("insecure-registries", []) if isinstance(config, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, str) for e in entries):
        raise RegistryError(f'{path}: "insecure-registries" must be a list of strings '
                            '(like ["myhost:5000", "10.0.0.0/8"]): fix the file')
    return entries


def split_host_port(host: str) -> tuple[str, str | None]:
    """('127.0.0.1', '5000') from '127.0.0.1:5000'; the brackets of '[::1]:5000' are dropped."""
    if host.startswith("["):
        inside, _, after = host[1:].partition("]")
        return inside, (after[1:] if after.startswith(":") else None)
    if host.count(":") > 1:  # a bare IPv6 address: its colons are not a port separator
        return host, None
    name, colon, port = host.partition(":")
    return name, (port if colon else None)


def is_loopback(host: str) -> bool:
    """True for localhost, 127.0.0.0/8 and ::1, with or without a port."""
    name, _ = split_host_port(host)
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _addresses(name: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The IP addresses ``name`` stands for: itself if it is one, else what the resolver says."""
    try:
        return [ipaddress.ip_address(name)]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    return [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]


def is_listed_insecure(host: str, entries: list[str] | None = None) -> bool:
    """True if ``host`` matches an insecure-registries entry: the same host[:port], or an IP in a CIDR."""
    entries = insecure_registries() if entries is None else entries
    name, _ = split_host_port(host)
    networks = []
    for entry in entries:
        entry = entry.strip().lower()
        for prefix in ("http://", "https://"):  # people paste URLs; docker refuses, we forgive
            entry = entry.removeprefix(prefix)
        entry = entry.rstrip("/")
        if "/" in entry:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                raise RegistryError(f"{config_path()}: insecure-registries entry {entry!r} is neither "
                                    "host[:port] nor a CIDR like 10.0.0.0/8: fix it") from None
        elif entry == host.lower():  # like docker: the exact host[:port] a reference names
            return True
    if networks:
        # like docker: a name counts as insecure if any address it resolves to is in a listed range
        return any(addr in net for addr in _addresses(name) for net in networks)
    return False


def scheme_for(host: str) -> str:
    """'http' for loopback registries and those listed in daemon.json; 'https' for everything else."""
    if is_loopback(host) or is_listed_insecure(host):
        return "http"
    return "https"


def insecure_hint(host: str) -> str:
    """The fix to print when a registry only speaks plain HTTP."""
    return f'add "{host}" to insecure-registries in {config_path()}'
