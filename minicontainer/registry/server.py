"""A registry server that speaks the OCI distribution spec v1.1 over HTTP/1.1.

The four workflows of the spec, and the endpoints that carry them:

* pull: ``GET/HEAD /v2/<name>/manifests/<ref>``, ``GET/HEAD /v2/<name>/blobs/<digest>``
* push: ``POST /v2/<name>/blobs/uploads/`` (optionally ``?digest=``, ``?mount=&from=``, or
  ``?mount=`` alone: automatic cross-mount from any repository the caller may pull from),
  ``PATCH``/``PUT``/``GET``/``DELETE`` on the upload URL, ``PUT /v2/<name>/manifests/<ref>``
* content discovery: ``GET /v2/<name>/tags/list?n=&last=``, ``GET /v2/<name>/referrers/<digest>``
* content management: ``DELETE`` on manifests, tags and blobs

Every response carries ``Docker-Distribution-API-Version: registry/2.0`` and every error
the spec's body ``{"errors": [{"code", "message", "detail"}]}``. Each request is one line
in :attr:`RegistryServer.log`, so a notebook can show every request a push makes.
Upload sessions a client abandoned are swept while serving (``upload_max_age``).
"""
from __future__ import annotations

import html
import ipaddress
import json
import re
import socket
import socketserver
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, quote, unquote, urlsplit

from minicontainer import trace
from minicontainer.errors import RegistryError
from minicontainer.registry import auth
from minicontainer.registry.storage import (MAX_MANIFEST_BYTES, OCI_INDEX, DistributionError,
                                            RegistryStorage, check_name, parse_digest)

BUFFER_SIZE = 1 << 20         # read and hash request bodies a MiB at a time
DRAIN_LIMIT = 8 << 20         # past this, close the connection rather than read an unwanted body
API_VERSION_HEADER = ("Docker-Distribution-API-Version", "registry/2.0")

# The name may contain '/', so take the longest name that leaves a known endpoint after it.
ROUTE_RE = re.compile(r"^/v2/(?P<name>.+)/(?P<kind>blobs/uploads|blobs|manifests|referrers|tags)/(?P<ref>[^/]*)$")
# ASCII digits only ('\d' also matches other scripts' digits), and few enough for any real size
CONTENT_RANGE_RE = re.compile(r"^(?:bytes[ =])?([0-9]{1,18})-([0-9]{1,18})$")
BYTE_RANGE_RE = re.compile(r"^bytes=([0-9]{0,18})-([0-9]{0,18})$")
CONTENT_LENGTH_RE = re.compile(r"^[0-9]{1,18}$")
PAGE_SIZE_RE = re.compile(r"^[0-9]{1,9}$")
UPLOAD_MAX_AGE = 3600.0        # seconds an upload session may sit untouched before it is swept
SWEEP_INTERVAL = 600.0         # seconds between sweeps while serving


# ---- the request log ------------------------------------------------------------------
@dataclass
class RequestLogEntry:
    """One HTTP request the registry answered."""

    method: str
    path: str            # as the client sent it, query included ('?digest=sha256:...')
    status: int          # 0 when the client went away before an answer
    bytes_in: int        # body bytes received
    bytes_out: int       # body bytes sent (headers not counted)
    duration: float     # seconds
    auth: str = "none"   # "none", "basic:<user>" or "bearer:<user>"

    def __str__(self) -> str:
        return (f"{self.method:<6} {self.path}  -> {self.status}  in={self.bytes_in} "
                f"out={self.bytes_out} {self.duration * 1000:.1f} ms  [{self.auth}]")


class RequestLog(list):
    """The request log: a plain list of RequestLogEntry that also renders in a notebook."""

    def text(self) -> str:
        return "\n".join(f"{i:3d} {e}" for i, e in enumerate(self, 1))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{i}</td><td>{e.method}</td><td><code>{html.escape(e.path)}</code></td>"
            f"<td>{e.status}</td><td>{e.bytes_in}</td><td>{e.bytes_out}</td>"
            f"<td>{e.duration * 1000:.1f}</td><td>{html.escape(e.auth)}</td></tr>"
            for i, e in enumerate(self, 1))
        return ("<table><tr><th>#</th><th>method</th><th>path</th><th>status</th><th>in</th>"
                f"<th>out</th><th>ms</th><th>auth</th></tr>{rows}</table>")


# ---- request bodies -------------------------------------------------------------------
class _Body:
    """A request body read in large pieces: Content-Length, or chunked transfer coding."""

    def __init__(self, rfile: Any, headers: Any):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.received = 0
        self.remaining = 0
        self.done = True
        lengths = {value.strip() for value in headers.get_all("Content-Length", [])}
        if not self.chunked and lengths:
            # Like Go's net/http: anything but one plain decimal byte count leaves the body's end
            # unknowable, so answer 400 at once and hang up rather than read until the client does.
            length = lengths.pop()
            if lengths or not CONTENT_LENGTH_RE.match(length):
                raise DistributionError(400, "SIZE_INVALID",
                                        f"Content-Length {length!r} is not one non-negative decimal "
                                        "number: send the body's size in bytes",
                                        headers={"Connection": "close"})
            self.remaining = int(length)
        self.done = not self.chunked and self.remaining == 0
        self._buffer: memoryview | None = None

    @property
    def empty(self) -> bool:
        return self.done and self.received == 0

    def _read_exactly(self, count: int) -> Iterator[memoryview]:
        if self._buffer is None:
            self._buffer = memoryview(bytearray(BUFFER_SIZE))
        while count:
            got = self.rfile.readinto(self._buffer[:min(count, BUFFER_SIZE)])
            if not got:
                self.done = True
                raise ConnectionError("client closed the connection in the middle of a body")
            count -= got
            self.received += got
            yield self._buffer[:got]  # reused buffer: the consumer must use it before the next one

    def chunks(self) -> Iterator[memoryview]:
        """The body's bytes in pieces of up to 1 MiB (each piece valid until the next)."""
        if self.done:
            return
        if not self.chunked:
            for piece in self._read_exactly(self.remaining):
                self.remaining -= len(piece)
                yield piece
        else:
            # docker and containerd stream layers this way: "<hex size>\r\n<bytes>\r\n" ... "0\r\n\r\n"
            while True:
                line = self.rfile.readline(1024)
                if not line:
                    self.done = True
                    raise ConnectionError("client closed the connection in the middle of a chunked body")
                try:
                    size = int(line.split(b";")[0].strip(), 16)
                except ValueError:
                    self.done = True
                    raise DistributionError(400, "BLOB_UPLOAD_INVALID", "malformed chunked body") from None
                if size == 0:
                    while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                        pass  # trailers, which we ignore
                    break
                yield from self._read_exactly(size)
                self.rfile.readline(1024)  # the CRLF that ends a chunk
        self.done = True

    def read_all(self, limit: int) -> bytes:
        data = bytearray()
        for piece in self.chunks():
            data += piece
            if len(data) > limit:
                raise DistributionError(413, "SIZE_INVALID", f"body larger than {limit} bytes")
        return bytes(data)

    def drain(self) -> bool:
        """Read and drop what the handler didn't want; False if it was too big to bother."""
        try:
            for _ in self.chunks():
                if self.received > DRAIN_LIMIT:
                    return False
        except (ConnectionError, DistributionError, OSError):
            return False
        return True


# ---- the HTTP handler -----------------------------------------------------------------
class _Handler(BaseHTTPRequestHandler):
    """Answers one connection's requests; keep-alive, so many requests per connection."""

    protocol_version = "HTTP/1.1"      # keep-alive: a push reuses one connection for all its requests
    disable_nagle_algorithm = True     # headers and body go in separate writes; don't wait 40 ms for an ACK
    timeout = 600                      # an idle keep-alive connection gives its thread back eventually
    server_version = "minicontainer-registry/0.1"
    server: "_HTTPServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass  # our own request log replaces http.server's stderr lines

    def setup(self) -> None:
        super().setup()
        self.server.registry._connections.add(self.connection)

    def finish(self) -> None:
        self.server.registry._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = lambda self: self._dispatch()

    # ---- plumbing ---------------------------------------------------------------------
    def _dispatch(self) -> None:
        self._started = time.perf_counter()
        self._status, self._bytes_out, self._auth = 0, 0, "none"
        self._body: _Body | None = None
        self._entry: RequestLogEntry | None = None
        try:
            url = urlsplit(self.path)
            self._query = parse_qs(url.query, keep_blank_values=True)
            self._body = _Body(self.rfile, self.headers)
            self._route(unquote(url.path))
        except DistributionError as error:
            self._send_error(error)
        except (ConnectionError, TimeoutError, socket.timeout):
            self.close_connection = True
        except Exception as exc:  # a bug here must not kill the connection thread silently
            traceback.print_exc(file=sys.stderr)
            self._send_error(DistributionError(500, "UNKNOWN", f"internal error: {type(exc).__name__}"))
        finally:
            if self._body is None or (not self._body.done and not self._body.drain()):
                self.close_connection = True
            entry = self._log_entry()
            entry.bytes_in = self._body.received if self._body else 0
            entry.bytes_out, entry.duration = self._bytes_out, time.perf_counter() - self._started
            if self.server.registry.on_request is not None:
                self.server.registry.on_request(entry)

    def _log_entry(self) -> RequestLogEntry:
        """Log the request when its answer starts, so a client that has the answer finds it logged."""
        if self._entry is None:
            self._entry = RequestLogEntry(self.command, unquote(self.path), self._status,
                                          self._body.received if self._body else 0, 0,
                                          time.perf_counter() - self._started, self._auth)
            self.server.registry._record(self._entry)
        return self._entry

    def _send(self, status: int, headers: dict[str, str] | None = None, body: bytes = b"",
              length: int | None = None) -> None:
        """Status line, headers, Content-Length (always right: keep-alive depends on it), body."""
        self.send_response(status)
        self.send_header(*API_VERSION_HEADER)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if status != 204:
            self.send_header("Content-Length", str(len(body) if length is None else length))
        self._status = status
        self._log_entry()
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
            self._bytes_out += len(body)

    def _send_json(self, status: int, value: Any, headers: dict[str, str] | None = None,
                   content_type: str = "application/json") -> None:
        self._send(status, {"Content-Type": content_type, **(headers or {})},
                   json.dumps(value).encode())

    def _send_error(self, error: DistributionError) -> None:
        if self._status:  # an answer has already started: all we can do is hang up
            self.close_connection = True
            return
        try:
            self._send_json(error.status, error.body(), error.headers)
        except OSError:
            self.close_connection = True

    def _param(self, key: str) -> str | None:
        values = self._query.get(key)
        return values[0] if values else None

    def _traced(self, name: str, why: str, shell: str, action: Callable[[], Any]) -> Any:
        """Run a state-changing action as a Step in the server's own trace (``server.trace``).

        Not the process-wide active trace: with client and server in one process (a
        notebook), the client's steps would otherwise show up twice.
        """
        step = trace.Step(name=name, call=f"{self.command} {self.path}", shell=shell, why=why)
        return step.do(action, into=self.server.registry.trace)

    def _curl(self, extra: str = "") -> str:
        return f"curl -X {self.command}{extra} '{self.server.registry.url}{self.path}'"

    # ---- authentication ---------------------------------------------------------------
    def _authorize(self, name: str | None, action: str, *, catalog: bool = False) -> None:
        """Let the request through, or raise 401/403 with the challenge that tells the client how.

        ``catalog``: listing every repository, which a token must grant as ``registry:catalog:*``.
        """
        registry = self.server.registry
        header = self.headers.get("Authorization")
        if registry.mode == "none":
            return
        if registry.mode == "basic":
            creds = auth.parse_basic(header)
            if creds and registry.credentials.check(*creds):
                self._auth = f"basic:{creds[0]}"
                return
            raise DistributionError(401, "UNAUTHORIZED", "authentication required",
                                    headers={"WWW-Authenticate": auth.basic_challenge()})
        scope = f"repository:{name}:{_scope_actions(action)}" if name else None
        if catalog:
            scope = auth.CATALOG_SCOPE
        challenge = {"WWW-Authenticate": auth.bearer_challenge(registry.realm, registry.issuer.service, scope)}
        token = auth.parse_bearer(header)
        if token is None:
            raise DistributionError(401, "UNAUTHORIZED", "authentication required", headers=challenge)
        try:
            claims = registry.issuer.verify(token)
        except auth.AuthError as exc:
            challenge = {"WWW-Authenticate": auth.bearer_challenge(
                registry.realm, registry.issuer.service, scope, "invalid_token")}
            raise DistributionError(401, "UNAUTHORIZED", str(exc), headers=challenge) from None
        self._claims = claims
        self._auth = f"bearer:{claims.sub or 'anonymous'}"
        if catalog and not claims.allows("catalog", "*", kind="registry"):
            challenge = {"WWW-Authenticate": auth.bearer_challenge(
                registry.realm, registry.issuer.service, scope, "insufficient_scope")}
            raise DistributionError(403, "DENIED", "listing the catalog needs a token for a signed-in user",
                                    {"scope": scope}, headers=challenge)
        if name is not None and not claims.allows(name, action):
            # RFC 6750: a valid token without the needed scope is 403 insufficient_scope
            challenge = {"WWW-Authenticate": auth.bearer_challenge(
                registry.realm, registry.issuer.service, scope, "insufficient_scope")}
            raise DistributionError(403, "DENIED", "requested access to the resource is denied",
                                    {"name": name, "action": action}, headers=challenge)

    def _may(self, name: str, action: str) -> bool:
        """Whether the already-authorized client may also do ``action`` on ``name`` (mount's source)."""
        if self.server.registry.mode != "token":
            return True
        return self._claims.allows(name, action)

    # ---- routing ----------------------------------------------------------------------
    def _route(self, path: str) -> None:
        registry = self.server.registry
        if path == "/token" and registry.mode == "token":
            return self._token()
        if path in ("/v2", "/v2/"):
            self._only("GET", "HEAD")
            self._authorize(None, "pull")
            return self._send_json(200, {})
        if path == "/v2/_catalog":
            self._only("GET")
            self._authorize(None, "pull", catalog=True)
            return self._catalog()
        match = ROUTE_RE.match(path)
        if not path.startswith("/v2/") or match is None:
            raise DistributionError(404, "UNSUPPORTED", f"no such endpoint: {path}")
        name, kind, ref = check_name(match["name"]), match["kind"], match["ref"]
        if kind == "blobs/uploads":
            if ref == "":
                self._only("POST")
                return self._start_upload(name)
            return self._upload(name, ref)
        if kind == "blobs":
            return self._blob(name, ref)
        if kind == "manifests":
            return self._manifest(name, ref)
        if kind == "tags" and ref == "list":
            self._only("GET", "HEAD")
            return self._tags(name)
        if kind == "referrers":
            self._only("GET", "HEAD")
            return self._referrers(name, ref)
        raise DistributionError(404, "UNSUPPORTED", f"no such endpoint: {path}")

    def _only(self, *methods: str) -> None:
        if self.command not in methods:
            raise DistributionError(405, "UNSUPPORTED", f"{self.command} is not supported here",
                                    headers={"Allow": ", ".join(methods)})

    # ---- push: upload sessions ----------------------------------------------------------
    def _created_blob(self, name: str, digest: str) -> None:
        self._send(201, {"Location": f"/v2/{name}/blobs/{digest}", "Docker-Content-Digest": digest})

    def _start_upload(self, name: str) -> None:
        """POST: mount from another repository, take the whole blob at once, or open a session."""
        self._authorize(name, "push")
        storage = self.server.registry.storage
        mount = self._param("mount")
        if mount:
            parse_digest(mount)
            source = self._mount_source(name, mount, self._param("from"))
            if source is not None:
                self._traced("mount_blob", f"link a blob {source} already has into {name}: no upload",
                             self._curl(), lambda: storage.mount_blob(name, mount, source) and mount)
                return self._created_blob(name, mount)
            # the spec's fallback when the blob can't be mounted: an ordinary upload session
        digest = self._param("digest")
        if digest is not None:
            parse_digest(digest)
            body = self._body
            self._traced("push_blob", "monolithic upload: the registry checks the digest, then stores the blob",
                         self._curl(" --data-binary @blob"),
                         lambda: storage.put_blob(name, digest, body.chunks()))
            return self._created_blob(name, digest)
        upload_id = storage.start_upload(name)
        self._send(202, storage.range_headers(name, upload_id, 0))

    def _mount_source(self, name: str, digest: str, source: str | None) -> str | None:
        """The repository a mount takes the blob from, or None to fall back to an upload.

        With ``from``, that repository, if the caller may pull from it. Without (automatic
        cross-mount, OCI distribution spec v1.1), any repository holding the blob that the
        caller may pull from, so a mount never reveals a blob the caller could not read.
        """
        storage = self.server.registry.storage
        if source:
            readable = _valid_name(source) and self._may(source, "pull")
            return source if readable and storage.has_blob(source, digest) else None
        for candidate in storage.repositories_holding(digest):
            if candidate == name or self._may(candidate, "pull"):
                return candidate
        return None

    def _append(self, name: str, upload_id: str) -> int:
        """Append this request's body to the upload, honouring Content-Range when given."""
        storage = self.server.registry.storage
        start = None
        content_range = self.headers.get("Content-Range")
        if content_range is not None:
            match = CONTENT_RANGE_RE.match(content_range.strip())
            size = storage.upload_size(name, upload_id)
            if not match or int(match[2]) < int(match[1]):
                raise DistributionError(416, "BLOB_UPLOAD_INVALID", f"invalid Content-Range {content_range!r}",
                                        headers=storage.range_headers(name, upload_id, size))
            start = int(match[1])
            declared = int(match[2]) - start + 1
            length = self.headers.get("Content-Length")
            if length is not None and not self._body.chunked and int(length) != declared:
                raise DistributionError(416, "BLOB_UPLOAD_INVALID",
                                        "Content-Range and Content-Length disagree",
                                        headers=storage.range_headers(name, upload_id, size))
        if self._body.done and start is None:
            return storage.upload_size(name, upload_id)
        return storage.append_upload(name, upload_id, self._body.chunks(), start)

    def _upload(self, name: str, upload_id: str) -> None:
        """The upload URL: status (GET), chunk (PATCH), last chunk and digest (PUT), cancel (DELETE)."""
        self._only("GET", "PATCH", "PUT", "DELETE")
        self._authorize(name, "push")
        storage = self.server.registry.storage
        if self.command == "GET":
            size = storage.upload_size(name, upload_id)
            return self._send(204, storage.range_headers(name, upload_id, size))
        if self.command == "PATCH":
            size = self._append(name, upload_id)
            return self._send(202, storage.range_headers(name, upload_id, size))
        if self.command == "DELETE":
            storage.cancel_upload(name, upload_id)
            return self._send(204)
        digest = self._param("digest")
        if not digest:
            storage.upload_size(name, upload_id)  # BLOB_UPLOAD_UNKNOWN first, if that is the problem
            raise DistributionError(400, "DIGEST_INVALID", "PUT needs ?digest= to complete an upload")
        parse_digest(digest)

        def complete() -> str:
            self._append(name, upload_id)
            return storage.finish_upload(name, upload_id, digest)
        self._traced("push_blob", "complete the upload: the registry checks the digest, then renames the blob into place",
                     self._curl(" --data-binary @last-chunk"), complete)
        self._created_blob(name, digest)

    # ---- pull and delete: blobs ---------------------------------------------------------
    def _blob(self, name: str, digest: str) -> None:
        self._only("GET", "HEAD", "DELETE")
        storage = self.server.registry.storage
        if self.command == "DELETE":
            self._authorize(name, "delete")
            self._traced("delete_blob", "unlink the blob from this repository", self._curl(),
                         lambda: storage.delete_blob(name, digest) or digest)
            return self._send(202, {"Docker-Content-Digest": digest})
        self._authorize(name, "pull")
        size = storage.blob_size(name, digest)
        headers = {"Content-Type": "application/octet-stream", "Docker-Content-Digest": digest,
                   "ETag": f'"{digest}"', "Accept-Ranges": "bytes",
                   "Cache-Control": "max-age=31536000"}  # a digest's bytes never change
        start, end = 0, size - 1
        status = 200
        wanted = self.headers.get("Range")
        if wanted:
            span = _byte_range(wanted, size)
            if span is None:
                raise DistributionError(416, "BLOB_UNKNOWN", f"range {wanted!r} not satisfiable",
                                        {"size": size}, headers={"Content-Range": f"bytes */{size}"})
            start, end = span
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        count = end - start + 1 if size else 0
        # open before answering: once the headers are out, an error can no longer be reported
        with open(storage.blob_file(digest), "rb") as f:
            self._send(status, headers, length=count)
            if self.command == "GET" and count:
                # sendfile(2): the kernel copies page cache to socket; the bytes never enter Python
                self._bytes_out += self.connection.sendfile(f, start, count)

    # ---- manifests ----------------------------------------------------------------------
    def _manifest(self, name: str, reference: str) -> None:
        self._only("GET", "HEAD", "PUT", "DELETE")
        storage = self.server.registry.storage
        if self.command == "PUT":
            self._authorize(name, "push")
            body = self._body.read_all(MAX_MANIFEST_BYTES)
            content_type = self.headers.get("Content-Type", "")
            result: dict[str, Any] = {}

            def put() -> str:
                result["digest"], result["subject"] = storage.put_manifest(name, reference, body, content_type)
                return result["digest"]
            self._traced("push_manifest", "the manifest names the image; pushing it (by tag) publishes the image",
                         self._curl(f" -H 'Content-Type: {content_type}' --data-binary @manifest.json"), put)
            headers = {"Location": f"/v2/{name}/manifests/{result['digest']}",
                       "Docker-Content-Digest": result["digest"]}
            if result["subject"]:
                headers["OCI-Subject"] = result["subject"]
            return self._send(201, headers)
        if self.command == "DELETE":
            self._authorize(name, "delete")
            self._traced("delete_manifest", "delete a tag, or a manifest with every tag pointing at it",
                         self._curl(), lambda: storage.delete_manifest(name, reference))
            return self._send(202)
        self._authorize(name, "pull")
        body, media_type, digest = storage.get_manifest(name, reference)
        self._send(200, {"Content-Type": media_type, "Docker-Content-Digest": digest,
                         "ETag": f'"{digest}"'}, body)

    # ---- content discovery --------------------------------------------------------------
    def _page(self, items: list[str], path: str) -> tuple[list[str], dict[str, str]]:
        """Apply ?last= and ?n= and build the Link header that points at the next page."""
        last, n = self._param("last"), self._param("n")
        if last:
            items = [i for i in items if i > last]
        if n is None or n == "":
            return items, {}
        if not PAGE_SIZE_RE.match(n):
            raise DistributionError(400, "UNSUPPORTED", "n must be a non-negative integer", {"n": n})
        page = items[:int(n)]
        if page and len(items) > len(page):
            return page, {"Link": f'<{path}?n={n}&last={quote(page[-1])}>; rel="next"'}
        return page, {}

    def _tags(self, name: str) -> None:
        self._authorize(name, "pull")
        tags, headers = self._page(self.server.registry.storage.tags(name), f"/v2/{name}/tags/list")
        self._send_json(200, {"name": name, "tags": tags}, headers)

    def _catalog(self) -> None:
        names, headers = self._page(self.server.registry.storage.repositories(), "/v2/_catalog")
        self._send_json(200, {"repositories": names}, headers)

    def _referrers(self, name: str, digest: str) -> None:
        """An image index of the manifests whose ``subject`` is ``digest``."""
        self._authorize(name, "pull")
        parse_digest(digest)
        artifact_type = self._param("artifactType")
        found = self.server.registry.storage.referrers(name, digest, artifact_type)
        headers = {"OCI-Filters-Applied": "artifactType"} if artifact_type else {}
        self._send_json(200, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": found},
                        headers, content_type=OCI_INDEX)

    # ---- the token server ---------------------------------------------------------------
    def _token(self) -> None:
        """Issue a Bearer token for the scopes asked, limited by the policy in auth.grant()."""
        self._only("GET", "POST")
        registry = self.server.registry
        if self.command == "POST":  # the OAuth2 form docker uses: grant_type=password
            form = parse_qs(self._body.read_all(65536).decode(errors="replace"))
            if (form.get("grant_type") or [""])[0] != "password":
                raise DistributionError(400, "UNSUPPORTED", "only grant_type=password is supported")
            creds = ((form.get("username") or [""])[0], (form.get("password") or [""])[0])
            scopes = " ".join(form.get("scope", [])).split()
        else:
            creds = auth.parse_basic(self.headers.get("Authorization"))
            scopes = " ".join(self._query.get("scope", [])).split()
        user = None
        if creds:
            if not registry.credentials.check(*creds):
                raise DistributionError(401, "UNAUTHORIZED", "invalid username or password",
                                        headers={"WWW-Authenticate": auth.basic_challenge()})
            user = creds[0]
            self._auth = f"basic:{user}"
        requested = [s for s in (auth.Scope.parse(text) for text in scopes) if s]
        access = auth.grant(user, requested)
        token = registry.issuer.issue(user or "", access)
        issued = datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
        self._send_json(200, {"token": token, "access_token": token,
                              "expires_in": registry.issuer.ttl, "issued_at": issued,
                              "scope": " ".join(f"repository:{a['name']}:{','.join(a['actions'])}"
                                                for a in access)})


def _scope_actions(action: str) -> str:
    return "pull,push" if action == "push" else action


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
        return True
    except DistributionError:
        return False


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """(first, last) byte of a single 'bytes=a-b' range, or None if it can't be served."""
    match = BYTE_RANGE_RE.match(header.strip())
    if not match or (match[1] == "" and match[2] == ""):
        return None
    if match[1] == "":  # suffix range: the last N bytes
        length = int(match[2])
        return (max(size - length, 0), size - 1) if length and size else None
    first = int(match[1])
    last = min(int(match[2]), size - 1) if match[2] else size - 1
    return (first, last) if first <= last and first < size else None


# ---- the server ------------------------------------------------------------------------
class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64
    registry: "RegistryServer"

    def server_bind(self) -> None:
        # HTTPServer.server_bind() also resolves our name via DNS (getfqdn); skip that.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


class _HTTPServer6(_HTTPServer):
    address_family = socket.AF_INET6


def _split_addr(addr: str) -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise RegistryError(f"registry address {addr!r} is not HOST:PORT: use e.g. 127.0.0.1:5000")
    host = host.strip("[]")
    if int(port) > 65535:
        raise RegistryError(f"registry address {addr!r} has port {port}: ports go from 0 to 65535")
    return ("127.0.0.1" if host == "localhost" else host), int(port)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class RegistryServer:
    """An OCI distribution registry on a local port, with an optional Basic or token auth mode."""

    def __init__(self, root: Path | str, addr: str = "127.0.0.1:5000", *,
                 htpasswd: Path | str | None = None, token_realm: bool = False,
                 users: dict[str, str] | None = None, allow_remote: bool = False,
                 token_secret: bytes | None = None,
                 on_request: Callable[[RequestLogEntry], None] | None = None,  # called when a request is done
                 log_limit: int = 100_000, upload_max_age: float = UPLOAD_MAX_AGE,
                 sweep_interval: float = SWEEP_INTERVAL):
        """``users`` maps user names to plain passwords (handy in tests and notebooks).

        Upload sessions untouched for ``upload_max_age`` seconds are removed at start-up and
        then every ``sweep_interval`` seconds while serving (a client that died mid-push).
        """
        host, port = _split_addr(addr)
        if not allow_remote and not _is_loopback(host):
            raise RegistryError(f"refusing to listen on {host or '*'}:{port}, which other machines can reach: "
                                "use 127.0.0.1 or pass allow_remote=True (--allow-remote)")
        if upload_max_age <= 0 or sweep_interval <= 0:
            raise RegistryError(f"upload max age {upload_max_age} and sweep interval {sweep_interval} must be "
                                "positive numbers of seconds: give --upload-max-age e.g. 3600")
        # everything that can refuse comes first: a server that fails to start creates no storage
        hashed = auth.load_htpasswd(htpasswd) if htpasswd is not None else {}
        self.root = Path(root)
        self.upload_max_age, self.sweep_interval = upload_max_age, sweep_interval
        self.uploads_swept = 0  # upload sessions the sweeper removed (start-up included)
        self._stop_sweeping = threading.Event()
        self._sweeper: threading.Thread | None = None
        self.credentials = auth.Credentials(hashed, users)
        self.mode = "token" if token_realm else ("basic" if htpasswd is not None or users else "none")
        self.issuer = auth.TokenIssuer(token_secret)
        self.log: RequestLog = RequestLog()
        self.trace = trace.Trace()  # every state-changing request, as a Step
        self.on_request = on_request
        self.log_limit = log_limit
        self._log_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread: threading.Thread | None = None
        server_class = _HTTPServer6 if ":" in host else _HTTPServer
        try:
            self._httpd = server_class((host, port), _Handler)
        except OSError as exc:
            raise RegistryError(f"cannot listen on {host}:{port}: {exc.strerror}: "
                                "stop the other server or pick another address") from None
        self._httpd.registry = self
        try:
            self.storage = RegistryStorage(self.root)
        except OSError as exc:
            self._httpd.server_close()
            raise RegistryError(f"cannot use {self.root} as the registry's storage: {exc.strerror}: "
                                "pick a directory the registry may create and write") from None
        bound_port = self._httpd.server_address[1]
        self.url = f"http://[{host}]:{bound_port}" if ":" in host else f"http://{host}:{bound_port}"
        self.realm = f"{self.url}/token"

    def __repr__(self) -> str:
        return f"<RegistryServer {self.url} root={self.root} auth={self.mode}>"

    def _record(self, entry: RequestLogEntry) -> None:
        with self._log_lock:
            self.log.append(entry)
            if len(self.log) > self.log_limit:
                del self.log[: len(self.log) - self.log_limit]

    def sweep_uploads(self) -> int:
        """Remove upload sessions untouched for ``upload_max_age`` seconds; how many went."""
        removed = self.storage.sweep_uploads(self.upload_max_age)
        self.uploads_swept += removed
        return removed

    def _sweep_while_serving(self) -> None:
        while not self._stop_sweeping.wait(self.sweep_interval):
            try:
                self.sweep_uploads()
            except OSError:
                traceback.print_exc(file=sys.stderr)  # try again next round; serving goes on

    def _start_sweeper(self) -> None:
        self.sweep_uploads()
        self._stop_sweeping.clear()
        self._sweeper = threading.Thread(target=self._sweep_while_serving, name=f"sweeper {self.url}",
                                         daemon=True)
        self._sweeper.start()

    def _stop_sweeper(self) -> None:
        self._stop_sweeping.set()
        if self._sweeper is not None:
            self._sweeper.join()
            self._sweeper = None

    def start(self) -> "RegistryServer":
        """Serve in a background thread; returns self so ``srv = RegistryServer(...).start()`` works."""
        if self._thread is None:
            self._start_sweeper()
            self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                            name=f"registry {self.url}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close idle keep-alive connections, and release the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._stop_sweeper()
        self._close_connections()

    def _close_connections(self, wait: float = 5.0) -> None:
        self._httpd.server_close()
        for conn in list(self._connections):
            try:
                conn.shutdown(socket.SHUT_RDWR)  # wakes the thread blocked reading the next request
            except OSError:
                pass
        deadline = time.monotonic() + wait
        while self._connections and time.monotonic() < deadline:
            time.sleep(0.01)  # let handler threads finish, so nothing writes to storage after stop()

    def serve_forever(self) -> None:
        """Serve in the foreground (the CLI); Ctrl-C stops cleanly."""
        self._start_sweeper()
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self._stop_sweeper()
            self._close_connections()

    def __enter__(self) -> "RegistryServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(root: Path | str, addr: str = "127.0.0.1:5000", *, htpasswd: Path | str | None = None,
          token_realm: bool = False, allow_remote: bool = False, quiet: bool = False,
          upload_max_age: float = UPLOAD_MAX_AGE, out: Any = None) -> int:
    """``minicontainer registry serve``: run in the foreground, one log line per request."""
    out = out or sys.stderr

    def show(entry: RequestLogEntry) -> None:
        print(entry, file=out, flush=True)
    server = RegistryServer(root, addr, htpasswd=htpasswd, token_realm=token_realm,
                            allow_remote=allow_remote, on_request=None if quiet else show,
                            upload_max_age=upload_max_age, sweep_interval=min(SWEEP_INTERVAL, upload_max_age / 2))
    extra = f", token realm {server.realm}" if server.mode == "token" else ""
    print(f"registry listening on {server.url} (storage {server.root}, auth {server.mode}{extra}); "
          "Ctrl-C stops", file=out, flush=True)
    server.serve_forever()
    return 0

