"""Time limits on every byte moved to and from a registry, and how often to try again.

A registry that stops answering, or answers one byte every two seconds, must not hang a
pull for ever. Each request (its answer's body included) runs under a *watch* with two
limits, both set in the environment:

* ``MINICONTAINER_REGISTRY_TIMEOUT`` (seconds, default 3600): the *total* time one
  request may take, from connecting to its last byte;
* ``MINICONTAINER_REGISTRY_STALL_TIMEOUT`` (seconds, default 30): a transfer that moves
  less than 1 KiB in that long has *stalled* (curl's ``--speed-limit 1024 --speed-time 30``).

The watch sits where the bytes are: under httpx, in the network stream that reads and
writes the socket, so waiting for headers, a trickled body and a slow upload all count.

``MINICONTAINER_REGISTRY_ATTEMPTS`` (default 5, docker's ``max-download-attempts``) is how
many times an idempotent request (GET, HEAD) is tried when the connection fails.
"""
from __future__ import annotations

import os
import ssl
import threading
import time
import typing
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import httpcore
import httpx

from ..errors import InvalidArgument, RegistryError

TOTAL_SETTING = "MINICONTAINER_REGISTRY_TIMEOUT"
STALL_SETTING = "MINICONTAINER_REGISTRY_STALL_TIMEOUT"
ATTEMPTS_SETTING = "MINICONTAINER_REGISTRY_ATTEMPTS"
DEFAULT_TOTAL = 3600.0
DEFAULT_STALL = 30.0
DEFAULT_ATTEMPTS = 5
STALL_BYTES = 1024          # fewer bytes than this in a stall window: the transfer has stalled
WRITE_PIECE = 64 << 10      # uploads are written in pieces, so a slow reader's progress counts


def _number_setting(name: str, default: float, *, whole: bool = False) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text) if whole else float(text)
    except ValueError:
        value = 0
    if not value > 0:
        kind = "a whole number, e.g. 3" if whole else "a number of seconds, e.g. 30"
        raise InvalidArgument(f"invalid {name}={text!r}: give {kind}, or unset it for the default")
    return value


@dataclass(frozen=True)
class TransferLimits:
    """The total and stall timeouts of one request, and how many attempts a GET or HEAD gets."""

    total: float = DEFAULT_TOTAL
    stall: float = DEFAULT_STALL
    attempts: int = DEFAULT_ATTEMPTS

    @classmethod
    def from_environment(cls) -> "TransferLimits":
        return cls(total=_number_setting(TOTAL_SETTING, DEFAULT_TOTAL),
                   stall=_number_setting(STALL_SETTING, DEFAULT_STALL),
                   attempts=int(_number_setting(ATTEMPTS_SETTING, DEFAULT_ATTEMPTS, whole=True)))


class Watch:
    """The clock of one request: its deadline, and the bytes moved in the current stall window."""

    def __init__(self, limits: TransferLimits, host: str, during: str):
        self.limits, self.host, self.during = limits, host, during
        now = time.monotonic()
        self.deadline = now + limits.total
        self.window_start, self.window_bytes = now, 0

    def allowed_wait(self) -> float:
        """How long the next socket read or write may block; a timeout once either limit is spent."""
        left = min(self.deadline, self.window_start + self.limits.stall) - time.monotonic()
        if left <= 0:
            raise httpcore.ReadTimeout("transfer time limit reached")
        return left

    def moved(self, n: int) -> None:
        """Count bytes read or written; every STALL_BYTES of them start a new stall window."""
        self.window_bytes += n
        if self.window_bytes >= STALL_BYTES:
            self.window_start, self.window_bytes = time.monotonic(), 0

    def timeout_error(self) -> RegistryError:
        """The one-line error for whichever limit ran out."""
        if time.monotonic() >= self.deadline - 0.01:
            return RegistryError(f"{self.host} took longer than {self.limits.total:g} s for {self.during}: "
                                 f"timed out (raise {TOTAL_SETTING} for a slow link, or check the registry)")
        return RegistryError(f"{self.host} stalled during {self.during}: less than 1 KiB in "
                             f"{self.limits.stall:g} s, timed out (raise {STALL_SETTING} for a slow link, "
                             "or check the registry)")


_current = threading.local()


def current_watch() -> Watch | None:
    """The watch of the request this thread is making, if any."""
    return getattr(_current, "watch", None)


@contextmanager
def watching(watch: Watch) -> Iterator[Watch]:
    """Put ``watch`` on this thread's requests for the block (the previous one comes back after)."""
    previous = current_watch()
    _current.watch = watch
    try:
        yield watch
    finally:
        _current.watch = previous


class _WatchedStream(httpcore.NetworkStream):
    """A socket stream whose every read and write waits no longer than the current watch allows."""

    def __init__(self, inner: httpcore.NetworkStream):
        self.inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        watch = current_watch()
        if watch is None:
            return self.inner.read(max_bytes, timeout)
        data = self.inner.read(max_bytes, watch.allowed_wait())
        watch.moved(len(data))
        return data

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        watch = current_watch()
        if watch is None:
            return self.inner.write(buffer, timeout)
        view = memoryview(buffer)
        for start in range(0, len(view), WRITE_PIECE):
            piece = view[start:start + WRITE_PIECE]
            self.inner.write(bytes(piece), watch.allowed_wait())
            watch.moved(len(piece))

    def close(self) -> None:
        self.inner.close()

    def start_tls(self, ssl_context: ssl.SSLContext, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        watch = current_watch()
        wait = watch.allowed_wait() if watch is not None else timeout
        return _WatchedStream(self.inner.start_tls(ssl_context, server_hostname, wait))

    def get_extra_info(self, info: str) -> typing.Any:
        return self.inner.get_extra_info(info)


class _WatchedBackend(httpcore.NetworkBackend):
    """httpcore's own socket backend, with every stream it opens watched."""

    def __init__(self) -> None:
        self.inner = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, local_address: str | None = None,
                    socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        watch = current_watch()
        wait = watch.allowed_wait() if watch is not None else timeout
        return _WatchedStream(self.inner.connect_tcp(host, port, wait, local_address, socket_options))

    def connect_unix_socket(self, path: str, timeout: float | None = None,
                            socket_options: typing.Iterable[typing.Any] | None = None) -> httpcore.NetworkStream:
        return _WatchedStream(self.inner.connect_unix_socket(path, timeout, socket_options))

    def sleep(self, seconds: float) -> None:
        self.inner.sleep(seconds)


def watched_transport(verify: ssl.SSLContext | bool, limits: httpx.Limits) -> httpx.HTTPTransport:
    """An httpx transport whose connections use the watched backend.

    httpx does not take a network backend itself; its transport is a thin layer over an
    httpcore pool, so the pool it made is swapped for one built the same way with ours.
    """
    context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)
    transport = httpx.HTTPTransport(verify=context, limits=limits)
    transport._pool = httpcore.ConnectionPool(
        ssl_context=context, max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections, keepalive_expiry=limits.keepalive_expiry,
        network_backend=_WatchedBackend())
    return transport
