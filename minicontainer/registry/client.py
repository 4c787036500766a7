"""The registry client: ``minicontainer pull``, ``push``, ``login`` and ``logout``.

It speaks the OCI distribution API (Docker's "Registry HTTP API v2"):

* ``GET /v2/`` first: 200 means "no auth", 401 carries a ``WWW-Authenticate`` challenge
  that says how to authenticate: ``Basic`` (send user:password on every request) or
  ``Bearer realm=…,service=…,scope=…`` (ask the realm for a token for that scope, which is
  what Docker Hub does: realm ``https://auth.docker.io/token``).
* pull: ``GET /v2/<name>/manifests/<tag>`` with an ``Accept`` header listing the manifest
  formats we read (OCI manifest and index, Docker schema2 manifest and manifest list); an
  index lists one manifest per platform and we pick one; then the config and every layer
  with ``GET /v2/<name>/blobs/<digest>``. Every byte is checked against its digest before
  it is stored.
* push: ``HEAD`` each blob (skip what the registry has), else try a cross-repository
  mount (``POST …/blobs/uploads/?mount=<digest>&from=<repo>``), else open an upload
  session (``POST``) and send the blob in one ``PUT …?digest=`` or in ``PATCH`` chunks;
  then ``PUT /v2/<name>/manifests/<tag>``.

One ``httpx.Client`` per registry keeps connections alive across requests, and layers
move three at a time, as docker and skopeo do.

A registry is untrusted, like an image archive. Nothing it sends is read whole before it
is checked: manifests and configs stop at MINICONTAINER_MAX_MANIFEST_SIZE and
MINICONTAINER_MAX_CONFIG_SIZE (4 MiB each, as containers/image), any other answer at
1 MiB, a layer at its descriptor's size; every request runs under a total and a stall
timeout (transfer.py); and a GET or HEAD whose connection fails is tried again, a few
times, as docker does.
"""
from __future__ import annotations

import base64
import json
import re
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterable, Iterator

import httpx

from ..errors import LayerError, RegistryError
from ..image.limits import (CONFIG_SIZE_SETTING, IMAGE_SIZE_SETTING, MANIFEST_SIZE_SETTING, check_json_shape,
                            human, max_config_bytes, max_image_bytes, max_manifest_bytes)
from ..image.reference import DOCKER_HUB_REGISTRY_HOST, is_digest, parse_reference
from ..image.store import (DOCKER_LIST, DOCKER_MANIFEST, INDEX_TYPES, MANIFEST_TYPES, OCI_INDEX,
                           OCI_MANIFEST, ImageStore, host_platform, sha256_digest)
from ..trace import Step, is_planning
from .credentials import DOCKER_HUB_NAMES, credentials_key, load_credentials, remove_credentials, save_credentials
from .insecure import config_path, insecure_hint, is_listed_insecure, is_loopback, scheme_for
from .progress import Progress
from .transfer import TransferLimits, Watch, watched_transport, watching

USER_AGENT = "minicontainer/0.1"
# Most specific first: a registry that holds an index for a tag sends the index.
ACCEPT_ANY_MANIFEST = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
ACCEPT_IMAGE_MANIFEST = ", ".join((OCI_MANIFEST, DOCKER_MANIFEST))
SCHEMA1_TYPES = ("application/vnd.docker.distribution.manifest.v1+json",
                 "application/vnd.docker.distribution.manifest.v1+prettyjws")
ANSWER_LIMIT = 1 << 20          # tokens, error bodies, upload answers (containers/image's limit for both)
RETRY_BACKOFF = 1.0             # seconds before the 2nd attempt; doubled for each one after
RETRIED_STATUSES = (500, 502, 503, 504)   # the registry or a proxy in front of it hiccupped
UPLOAD_PIECE = 1 << 20          # read blobs from disk a MiB at a time while sending them
CONCURRENT_TRANSFERS = 3        # docker's max-concurrent-downloads/uploads default
PRIVATE_REGISTRY_HINT = "for a private registry: minicontainer registry serve --addr 127.0.0.1:5000"


# ---- authentication challenges ----------------------------------------------------------
@dataclass
class Challenge:
    """A parsed ``WWW-Authenticate`` header: the scheme and its parameters."""

    scheme: str                     # "basic" or "bearer"
    params: dict[str, str] = field(default_factory=dict)

    @property
    def realm(self) -> str:
        return self.params.get("realm", "")


_AUTH_PARAM = re.compile(r'([A-Za-z_][\w-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))')


def parse_challenge(header: str | None) -> Challenge | None:
    """Parse ``Bearer realm="…",service="…",scope="…"`` or ``Basic realm="…"`` (RFC 7235)."""
    if not header:
        return None
    scheme, _, rest = header.strip().partition(" ")
    if scheme.lower() not in ("basic", "bearer"):
        return None
    params = {m[1].lower(): (m[2].replace('\\"', '"') if m[2] is not None else m[3])
              for m in _AUTH_PARAM.finditer(rest)}
    return Challenge(scheme.lower(), params)


def repository_scope(repo: str, actions: str = "pull") -> str:
    """The token scope for a repository: ``repository:student/busybox:pull,push``."""
    return f"repository:{repo}:{actions}"


def basic_authorization(user: str, password: str) -> str:
    """The Basic Authorization value: base64 of user:password (an encoding, not encryption)."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def api_host(host: str) -> str:
    """The host that serves the registry API: Docker Hub's names all mean registry-1.docker.io."""
    return DOCKER_HUB_REGISTRY_HOST if host.lower() in DOCKER_HUB_NAMES else host


def _media_type(header: str | None) -> str:
    return (header or "").split(";")[0].strip()


# ---- the client -------------------------------------------------------------------------
class TransientError(RegistryError):
    """A failure that trying again may cure: a dropped connection, a 502 from a proxy."""


# how a connection that the other side dropped shows up, in httpx's and the kernel's words
_DROPPED = ("Connection reset", "Broken pipe", "[Errno 104]", "[Errno 32]", "Server disconnected",
            "peer closed connection", "Connection aborted", "EOF occurred", "UNEXPECTED_EOF")


class RegistryClient:
    """One registry: a keep-alive HTTP client, its auth challenge, and tokens per scope."""

    def __init__(self, host: str, *, credentials: tuple[str, str] | None = None,
                 progress: Progress | None = None, limits: TransferLimits | None = None,
                 scheme: str | None = None):
        """``scheme`` overrides the http/https choice that daemon.json makes (tests use it);
        ``limits`` the timeouts and attempts that the environment sets."""
        self.host = api_host(host)
        self.login_name = credentials_key(host)   # what to type after `minicontainer login`
        self.scheme = scheme or scheme_for(self.host)
        self.credentials = credentials
        self.progress = progress if progress is not None else Progress()
        self.limits = limits or TransferLimits.from_environment()
        self.base_url = f"{self.scheme}://{self.host}"
        # Plain HTTP needs no certificates: loading the CA bundle would cost ~50 ms per process
        # for nothing. Other origins (an https token realm, a CDN a blob redirects to) get a
        # verifying client of their own, made when first needed.
        verify: ssl.SSLContext | bool = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT) if self.scheme == "http" else True
        self._http = self._new_client(verify, base_url=self.base_url)
        self._elsewhere: httpx.Client | None = None
        self.challenge: Challenge | None = None
        self._tokens: dict[str, tuple[str, float]] = {}   # scope -> (token, expiry)
        self._lock = threading.Lock()
        self._token_lock = threading.Lock()

    def _new_client(self, verify: ssl.SSLContext | bool, base_url: str = "") -> httpx.Client:
        # identity: a registry's bytes are content-addressed as sent; a gzip Content-Encoding
        # would also let a 64 KiB answer inflate in memory before any limit saw it
        return httpx.Client(base_url=base_url, timeout=self.limits.stall,
                            transport=watched_transport(verify, httpx.Limits(max_connections=16,
                                                                             max_keepalive_connections=8)),
                            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def __repr__(self) -> str:
        return f"<RegistryClient {self.base_url} auth={self.challenge.scheme if self.challenge else 'none'}>"

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        if self._elsewhere is not None:
            self._elsewhere.close()

    def _client_for(self, url: str | httpx.URL) -> httpx.Client:
        """The keep-alive client for the registry itself, or a verifying one for any other origin."""
        target = httpx.URL(url)
        if target.is_relative_url or (target.scheme, target.host, target.port) == \
                (self._http.base_url.scheme, self._http.base_url.host, self._http.base_url.port):
            return self._http
        with self._lock:
            if self._elsewhere is None:
                self._elsewhere = self._new_client(True)
            return self._elsewhere

    # ---- time limits, retries and bounded answers ---------------------------------------
    @contextmanager
    def _timed(self, during: str, what: str | None = None, host: str | None = None) -> Iterator[Watch]:
        """Run one request under a fresh watch (total and stall timeouts); a failed connection
        becomes a one-line error that says what was going on."""
        watch = Watch(self.limits, host or self.host, during)
        with watching(watch):
            try:
                yield watch
            except httpx.TimeoutException:
                raise watch.timeout_error() from None
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, during, what=what, host=host) from None

    def _attempts(self, action: Callable[[], Any], on_retry: Callable[[float], None] | None = None) -> Any:
        """Run an idempotent exchange (GET, HEAD), again after a failure that may pass, with a
        growing pause, at most MINICONTAINER_REGISTRY_ATTEMPTS times in all (docker: 5)."""
        for attempt in range(1, self.limits.attempts + 1):
            try:
                return action()
            except TransientError as exc:
                if attempt == self.limits.attempts:
                    if attempt == 1:
                        raise
                    raise TransientError(f"{exc} (tried {attempt} times)") from None
                delay = RETRY_BACKOFF * 2 ** (attempt - 1)
                if on_retry is not None:
                    on_retry(delay)
                time.sleep(delay)
        raise AssertionError("not reached")

    def _buffered(self, response: httpx.Response, limit: int = ANSWER_LIMIT,
                  too_big: str | None = None) -> httpx.Response:
        """The answer with its body read, never more than ``limit`` bytes and never decoded.

        More than that is an error (``too_big`` says which); an error answer is cut off
        instead, at 1 MiB: its message is all we want from it.
        """
        try:
            failed = response.status_code >= 400
            cap = min(limit, ANSWER_LIMIT) if failed else limit
            declared = response.headers.get("Content-Length", "")
            refuse = too_big or (f"an answer from {self.host} is more than {human(cap)}, more than any registry "
                                 "answer needs: refusing it (the registry is broken or hostile)")
            if not failed and response.request.method != "HEAD" and declared.isdigit() and int(declared) > cap:
                raise RegistryError(refuse)
            data = bytearray()
            for chunk in response.iter_raw():
                data += chunk
                if len(data) > cap:
                    if not failed:
                        raise RegistryError(refuse)
                    del data[cap:]
                    break
        finally:
            response.close()
        headers = [(k, v) for k, v in response.headers.multi_items()
                   if k.lower() not in ("content-encoding", "transfer-encoding", "content-length")]
        return httpx.Response(response.status_code, headers=headers, content=bytes(data), request=response.request)

    def _too_big(self, what: str, cap: int, setting: str) -> str:
        return (f"{what} from {self.host} is more than {human(cap)}, the {setting} limit: refusing it "
                f"(the registry is broken or hostile; raise {setting} only if you trust it)")

    # ---- requests, errors and auth -----------------------------------------------------
    def _auth_headers(self, scope: str | None) -> dict[str, str]:
        """The Authorization header for a request in ``scope``, fetching a token if needed."""
        if self.challenge is None:
            return {}
        if self.challenge.scheme == "basic":
            if self.credentials is None:
                return {}
            return {"Authorization": basic_authorization(*self.credentials)}
        return {"Authorization": f"Bearer {self._token(scope)}"}

    def _token(self, scope: str | None) -> str:
        """A Bearer token for ``scope`` from the realm the registry named (cached until it expires)."""
        # one fetch at a time: three uploads starting together need one token, not three
        with self._token_lock:
            return self._fetch_token(scope)

    def _fetch_token(self, scope: str | None) -> str:
        key = scope or ""
        with self._lock:
            cached = self._tokens.get(key)
            if cached and cached[1] > time.monotonic():
                return cached[0]
        challenge = self.challenge
        assert challenge is not None and challenge.scheme == "bearer"
        if not challenge.realm:
            raise RegistryError(f"registry {self.host} asked for a Bearer token but named no realm: "
                                "it is misconfigured; tell its operator")
        params: list[tuple[str, str]] = []
        if challenge.params.get("service"):
            params.append(("service", challenge.params["service"]))
        for one in (scope or "").split():
            params.append(("scope", one))
        auth = httpx.BasicAuth(*self.credentials) if self.credentials else None
        if self.credentials:
            params.append(("account", self.credentials[0]))
        realm = httpx.URL(challenge.realm)

        def ask() -> httpx.Response:
            with self._timed("a token request", what=f"token server {challenge.realm}", host=realm.netloc.decode()):
                client = self._client_for(realm)
                request = client.build_request("GET", realm, params=params)
                return self._buffered(client.send(request, auth=auth, stream=True))
        response = self._attempts(ask)
        if response.status_code == 401:
            refused = f"refused {self._who()}'s credentials" if self.credentials else "wants credentials"
            raise RegistryError(f"unauthorized: the token server {challenge.realm} {refused}: "
                                f"log in with minicontainer login {self.login_name}")
        self._check(response, what=f"token from {challenge.realm}")
        try:
            body = response.json()
            token = body.get("token") or body.get("access_token")
            expires_in = float(body.get("expires_in") or 60)
        except (ValueError, AttributeError, TypeError, RecursionError):
            token, expires_in = None, 0.0
        if not token or not isinstance(token, str):
            raise RegistryError(f"the token server {challenge.realm} answered without a token: "
                                "it is misconfigured; tell the registry's operator")
        with self._lock:
            # refresh a little early: a token that expires mid-upload costs a retry
            self._tokens[key] = (token, time.monotonic() + max(expires_in - 10, 1))
        return token

    def _learn(self, response: httpx.Response, scope: str | None, sent_auth: bool) -> bool:
        """Take in a 401's challenge; True if retrying with new credentials may succeed."""
        challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
        if challenge is None:
            return False
        known = self.challenge
        self.challenge = challenge
        if challenge.scheme == "basic":
            return self.credentials is not None and not sent_auth
        if known is not None and known.scheme == "bearer" and not challenge.params.get("service"):
            challenge.params["service"] = known.params.get("service", "")
        with self._lock:
            self._tokens.pop(scope or "", None)  # refused or expired: ask for a fresh one
        return True

    def _send(self, method: str, url: str | httpx.URL, *, scope: str | None,
              headers: dict[str, str] | None = None,
              body: bytes | Callable[[], Iterable[bytes]] | None = None,
              params: dict[str, str] | None = None, stream: bool = False,
              limit: int = ANSWER_LIMIT, too_big: str | None = None) -> httpx.Response:
        """One request with auth; on 401, learn the challenge and retry once. Call it in _timed().

        ``body`` may be a function returning the body's chunks, so a retry can send it again.
        Unless ``stream``, the answer's body is read here, at most ``limit`` bytes (``too_big``
        is the error past that). A 5xx to a GET or HEAD is a TransientError: worth a retry.
        """
        response: httpx.Response | None = None
        for attempt in range(2):
            auth = self._auth_headers(scope)
            content = body() if callable(body) else body
            request = self._http.build_request(method, url, headers={**(headers or {}), **auth},
                                               content=content, params=params)
            response = self._http.send(request, stream=True)
            if response.status_code == 401 and attempt == 0 and self._learn(response, scope, sent_auth=bool(auth)):
                response.close()
                continue
            break
        assert response is not None
        if response.status_code in RETRIED_STATUSES and method in ("GET", "HEAD"):
            response.close()
            raise TransientError(f"registry {self.host} answered {response.status_code} {response.reason_phrase} "
                                 f"to {method} {response.request.url.path}: it is failing or overloaded; "
                                 "try again later")
        return response if stream else self._buffered(response, limit, too_big)

    def _who(self) -> str:
        return self.credentials[0] if self.credentials else "an anonymous user"

    def _check(self, response: httpx.Response, *, what: str, repo: str | None = None,
               ref: str | None = None) -> None:
        """Raise a one-line RegistryError for anything but 2xx."""
        status = response.status_code
        if 200 <= status < 300:
            return
        try:
            response.content
        except httpx.ResponseNotRead:   # a streamed answer: read what the message needs, no more
            response = self._buffered(response)
        if status == 429:
            raise RegistryError(self._rate_limit_message(response))
        if status == 401:
            if self.credentials:
                raise RegistryError(f"unauthorized: {self.host} refused {self._who()}'s credentials for {what}: "
                                    f"log in again with minicontainer login {self.login_name}")
            raise RegistryError(f"unauthorized: {what} needs credentials: "
                                f"log in with minicontainer login {self.login_name}")
        if status == 403:
            raise RegistryError(f"denied: {self.host} does not allow {self._who()} {what}: log in as a user "
                                f"with that permission (minicontainer login {self.login_name})")
        codes = _error_codes(response)
        if status == 404 and ref is not None and (not codes or "MANIFEST_UNKNOWN" in codes
                                                  or "NAME_UNKNOWN" in codes):
            sep = "@" if is_digest(ref) else ":"
            raise RegistryError(f"manifest unknown: {repo}{sep}{ref} not found in {self.host}: "
                                "check the name and tag (list tags with GET /v2/<name>/tags/list)")
        detail = "; ".join(f"{c}: {m}" for c, m in _error_messages(response)) or response.reason_phrase
        raise RegistryError(f"registry {self.host} refused {what}: {status} {' '.join(detail.split())[:300]}")

    def _rate_limit_message(self, response: httpx.Response) -> str:
        who = "Docker Hub" if self.host == DOCKER_HUB_REGISTRY_HOST else f"registry {self.host}"
        limit = response.headers.get("ratelimit-limit", "").split(";")[0]
        retry = response.headers.get("Retry-After")
        facts = []
        if limit:
            facts.append(f"{limit} pulls per window")
        if retry:
            facts.append(f"retry after {retry} s")
        detail = f" ({', '.join(facts)})" if facts else ""
        return (f"{who} rate limit reached (429): too many requests{detail}: wait and try again, "
                f"or log in with minicontainer login {self.login_name} for a higher limit")

    def _transport_error(self, exc: httpx.HTTPError, during: str, what: str | None = None,
                         host: str | None = None) -> RegistryError:
        """Turn a connection-level failure into a one-line error: what happened, during what, what to do."""
        host = host or self.host
        what = what or f"registry {host}"
        text = " ".join((str(exc) or type(exc).__name__).split())
        hint = insecure_hint(host)
        if "CERTIFICATE_VERIFY_FAILED" in text:
            return RegistryError(f"TLS certificate of {what} could not be verified: if you trust it "
                                 f"and it has no proper certificate, {hint}")
        if any(s in text for s in ("WRONG_VERSION_NUMBER", "record layer failure", "packet length too long",
                                   "http request", "unknown protocol")):
            return RegistryError(f"{what} answered plain HTTP to an HTTPS request: "
                                 f"if this registry has no TLS, {hint}")
        if "SSL" in text and not any(s in text for s in _DROPPED) or "TLS" in text:
            return RegistryError(f"TLS handshake with {what} failed ({text}): if it has no TLS, {hint}")
        if "Connection refused" in text or "[Errno 111]" in text:
            return TransientError(f"cannot reach {what}: connection refused during {during} — is it running? "
                                  f"{PRIVATE_REGISTRY_HINT}")
        if "Name or service not known" in text or "name resolution" in text or "No address" in text:
            return RegistryError(f"cannot reach {what}: the name does not resolve — "
                                 "check the spelling and your network")
        if any(s in text for s in _DROPPED) or isinstance(exc, (httpx.ReadError, httpx.WriteError)):
            return TransientError(f"connection reset by {host} during {during}: the registry dropped the "
                                  "connection (it stopped, crashed or restarted): check that it is running, "
                                  "then try again")
        if isinstance(exc, httpx.RemoteProtocolError):
            if self.scheme == "http" and not is_loopback(host) and is_listed_insecure(host):
                return RegistryError(f"{what} broke the HTTP exchange during {during} ({text}): if it speaks "
                                     f"HTTPS, remove {host} from insecure-registries in {config_path()}")
            return RegistryError(f"{what} sent a malformed HTTP answer during {during} ({text}): "
                                 "it is not a registry, or it is broken")
        if isinstance(exc, httpx.ConnectError):
            return TransientError(f"cannot reach {what} during {during}: {text}")
        return RegistryError(f"{during} with {what} failed: {text}")

    # ---- Steps ------------------------------------------------------------------------
    def _curl(self, method: str, url: str, extra: str = "") -> str:
        """The curl command a learner could type for the same request."""
        auth = ""
        if self.challenge is not None and self.challenge.scheme == "bearer":
            auth = ' -H "Authorization: Bearer $TOKEN"'
        elif self.challenge is not None and self.credentials:
            auth = f" -u {self.credentials[0]}"
        verb = "-I" if method == "HEAD" else f"-X {method}"
        return f"curl {verb}{auth}{extra} '{self.base_url}{url}'"

    # ---- the API ----------------------------------------------------------------------
    def ping(self) -> None:
        """``GET /v2/``: check this is a registry and learn how it wants us to authenticate."""
        # no retries here, as docker: a registry that isn't there should be said at once
        with self._timed("GET /v2/"):
            response = self._buffered(self._http.send(self._http.build_request("GET", "/v2/"), stream=True))
        if response.status_code == 401:
            challenge = parse_challenge(response.headers.get("WWW-Authenticate"))
            if challenge is None:
                raise RegistryError(f"registry {self.host} answered 401 without a usable WWW-Authenticate "
                                    "challenge: it is misconfigured; tell its operator")
            self.challenge = challenge
            return
        if response.status_code == 400 and "HTTPS server" in response.text:
            raise RegistryError(f"registry {self.host} speaks HTTPS, not HTTP: remove it from "
                                f"insecure-registries in {config_path()}")
        if response.status_code == 404:
            raise RegistryError(f"{self.base_url} is not a registry (GET /v2/ answered 404): "
                                "check the host and port")
        self._check(response, what="GET /v2/")

    def login(self, user: str, password: str) -> None:
        """Check user:password against the registry (Basic, or the token realm); raise 'login failed: …'."""
        self.credentials = (user, password)
        self.ping()
        if self.challenge is None:
            return  # the registry needs no credentials; docker says "Login Succeeded" here too
        if self.challenge.scheme == "bearer":
            try:
                self._token(None)
            except RegistryError as exc:
                raise RegistryError(f"login failed: {exc}") from None
        try:
            with self._timed("the login check (GET /v2/)"):
                response = self._send("GET", "/v2/", scope=None)
        except RegistryError as exc:
            raise RegistryError(f"login failed: {exc}") from None
        if response.status_code == 401:
            raise RegistryError(f"login failed: {self.host} refused the password of {user}: "
                                f"check them and run minicontainer login {self.login_name} again")
        try:
            self._check(response, what="GET /v2/")
        except RegistryError as exc:
            raise RegistryError(f"login failed: {exc}") from None

    def get_manifest(self, repo: str, ref: str, accept: str = ACCEPT_ANY_MANIFEST) -> tuple[bytes, str, str]:
        """``GET /v2/<repo>/manifests/<ref>``: (body, media type, digest); the digest is checked.

        At most MINICONTAINER_MAX_MANIFEST_SIZE bytes are read (4 MiB, as containers/image).
        """
        path = f"/v2/{repo}/manifests/{ref}"
        name = f"{repo}{'@' if is_digest(ref) else ':'}{ref}"
        step = Step("pull_manifest", call=f"GET {path}",
                    shell=self._curl("GET", path, f" -H 'Accept: {accept}'"),
                    why="the manifest names the config and layers by digest; Accept lists the formats we read")
        cap = max_manifest_bytes()

        def download() -> httpx.Response:
            with self._timed("manifest download"):
                response = self._send("GET", path, scope=repository_scope(repo), headers={"Accept": accept},
                                      limit=cap, too_big=self._too_big(f"manifest {name}", cap,
                                                                       MANIFEST_SIZE_SETTING))
            self._check(response, what=f"GET {path}", repo=repo, ref=ref)
            return response

        def fetch() -> tuple[bytes, str, str]:
            response = self._attempts(download)
            body = response.content
            digest = sha256_digest(body)
            claimed = ref if is_digest(ref) else response.headers.get("Docker-Content-Digest")
            if claimed and claimed.startswith("sha256:") and claimed != digest:
                raise RegistryError(f"digest mismatch: manifest {repo}@{claimed} from {self.host} hashes to "
                                    f"{digest}; nothing was stored — the registry's copy is corrupt or was tampered with")
            if claimed and not claimed.startswith("sha256:") and is_digest(ref):
                raise RegistryError(f"only sha256 digests are supported, not {ref.split(':')[0]}: "
                                    "pull by tag or by a sha256 digest")
            media_type = _media_type(response.headers.get("Content-Type"))
            if media_type not in (*INDEX_TYPES, *MANIFEST_TYPES):
                try:
                    media_type = _json(body, f"manifest {name}").get("mediaType") or media_type
                except RegistryError:
                    pass
            if media_type in SCHEMA1_TYPES:
                raise RegistryError(f"{repo}:{ref} on {self.host} is a Docker schema 1 manifest, which is "
                                    "deprecated and not supported: push the image again with a current tool")
            step.result = f"{response.status_code} {media_type} {digest}"
            return body, media_type, digest
        return step.do(fetch)

    def blob_exists(self, repo: str, digest: str) -> bool:
        """``HEAD /v2/<repo>/blobs/<digest>``: does the registry already have this blob here?"""
        def head() -> httpx.Response:
            with self._timed("a blob check (HEAD)"):
                return self._send("HEAD", f"/v2/{repo}/blobs/{digest}", scope=repository_scope(repo, "pull,push"))
        response = self._attempts(head)
        if response.status_code == 404:
            return False
        self._check(response, what=f"HEAD /v2/{repo}/blobs/{digest}")
        return True

    def _blob_step(self, repo: str, digest: str) -> Step:
        path = f"/v2/{repo}/blobs/{digest}"
        return Step("pull_blob", call=f"GET {path}", shell=self._curl("GET", path, " -L -o blob"),
                    why="download one content-addressed blob; it is stored only if it hashes to its digest")

    def _get_blob_response(self, repo: str, digest: str, during: str) -> httpx.Response:
        """``GET`` a blob as a stream, following a redirect (Docker Hub sends blobs from a CDN)
        without our credentials. Call it in _timed()."""
        response = self._send("GET", f"/v2/{repo}/blobs/{digest}", scope=repository_scope(repo), stream=True)
        for _ in range(5):
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            response.close()
            url = self._http.base_url.join(location)
            client = self._client_for(url)
            if client is self._http:
                response = self._send("GET", url, scope=repository_scope(repo), stream=True)
                continue
            try:
                # a signed CDN URL carries its own permission; the registry's token stays with the registry
                response = client.send(client.build_request("GET", url), stream=True)
            except httpx.TimeoutException:
                raise
            except httpx.HTTPError as exc:
                raise self._transport_error(exc, during, what=f"blob server {url.host}", host=url.host) from None
        return response

    def get_blob(self, repo: str, digest: str, size: int | None = None) -> bytes:
        """A config into memory: at most its descriptor's size and MINICONTAINER_MAX_CONFIG_SIZE
        (4 MiB), checked against its digest."""
        step = self._blob_step(repo, digest)
        cap = max_config_bytes()
        if size is not None and size > cap:
            raise RegistryError(f"config {digest} of {self.host}/{repo} is {size} bytes by its descriptor, more "
                                f"than {human(cap)}, the {CONFIG_SIZE_SETTING} limit: refusing to download it "
                                f"(raise {CONFIG_SIZE_SETTING} only if you trust the registry)")
        limit = cap if size is None else size
        too_big = self._too_big(f"config {digest}", cap, CONFIG_SIZE_SETTING) if size is None else \
            (f"size mismatch: blob {digest} from {self.host}/{repo} is longer than the {size} bytes the manifest "
             "says; stopped reading, nothing was stored")

        def download() -> httpx.Response:
            with self._timed("config download") as watch:
                response = self._get_blob_response(repo, digest, watch.during)
                if response.is_success:
                    return self._buffered(response, limit, too_big)
                self._check(response, what=f"GET /v2/{repo}/blobs/{digest}")
                return response

        def fetch() -> bytes:
            response = self._attempts(download)
            data = response.content
            got = sha256_digest(data)
            if got != digest:
                raise RegistryError(f"digest mismatch: blob {digest} from {self.host}/{repo} hashes to {got}; "
                                    "nothing was stored — the registry's copy is corrupt or was tampered with")
            if size is not None and len(data) != size:
                raise RegistryError(f"size mismatch: blob {digest} from {self.host}/{repo} is {len(data)} bytes, "
                                    f"the manifest says {size}; nothing was stored")
            step.result = f"{response.status_code}, {len(data)} bytes, digest verified"
            return data
        return step.do(fetch)

    def fetch_blob(self, repo: str, digest: str, size: int | None, into: ImageStore) -> None:
        """Stream a blob into the store; ImageStore.ingest_blob stops at ``size`` and keeps it
        only if the digest checks out. A dropped connection starts it again (docker: 5 attempts)."""
        if into.has_blob(digest):
            self.progress.status(digest, "Already exists")
            return
        step = self._blob_step(repo, digest)

        def fetch() -> str:
            return self._attempts(lambda: self._download_blob(repo, digest, size, into),
                                  on_retry=lambda delay: self.progress.status(
                                      digest, f"Retrying in {delay:g} second{'' if delay == 1 else 's'}"))
        step.do(fetch)

    def _download_blob(self, repo: str, digest: str, size: int | None, into: ImageStore) -> str:
        total = size or 0
        with self._timed("blob download") as watch:
            response = self._get_blob_response(repo, digest, watch.during)
            try:
                self._check(response, what=f"GET /v2/{repo}/blobs/{digest}")
                received = 0

                def chunks() -> Iterator[bytes]:
                    nonlocal received
                    for chunk in response.iter_raw():   # raw: as stored, and never inflated in memory
                        received += len(chunk)
                        self.progress.advance(digest, "Downloading", received, total)
                        yield chunk
                try:
                    into.ingest_blob(chunks(), digest, size)
                except LayerError as exc:
                    raise RegistryError(f"{self.host}/{repo}: {exc} — the registry's copy is corrupt "
                                        "or was tampered with") from None
            finally:
                response.close()
        self.progress.status(digest, "Download complete")
        return f"{response.status_code}, {received} bytes, digest verified"

    def _upload_url(self, location: str | None, repo: str) -> httpx.URL:
        if not location:
            raise RegistryError(f"registry {self.host} opened an upload for {repo} without a Location header: "
                                "it does not follow the distribution spec")
        return self._http.base_url.join(location)

    def _start_upload(self, repo: str, scope: str) -> httpx.URL:
        """``POST /v2/<repo>/blobs/uploads/``: open an upload session; its URL comes back in Location."""
        with self._timed("the start of a blob upload"):
            response = self._send("POST", f"/v2/{repo}/blobs/uploads/", scope=scope, body=b"")
        self._check(response, what=f"push to {repo} (POST /v2/{repo}/blobs/uploads/)")
        return self._upload_url(response.headers.get("Location"), repo)

    def _mount(self, repo: str, digest: str, mount_from: str, scope: str) -> httpx.URL | None:
        """Ask the registry to link a blob ``mount_from`` has into ``repo``; None if it did (201)."""
        path = f"/v2/{repo}/blobs/uploads/"
        step = Step("mount_blob", call=f"POST {path}?mount={digest}&from={mount_from}",
                    shell=self._curl("POST", f"{path}?mount={digest}&from={mount_from}"),
                    why="the registry already has this blob in another repository: link it, send no bytes")
        outcome: dict[str, httpx.URL] = {}

        def mount() -> str:
            with self._timed("a blob mount"):
                response = self._send("POST", path, scope=scope, params={"mount": digest, "from": mount_from},
                                      body=b"")
            if response.status_code == 201:
                return "201 Created: mounted"
            self._check(response, what=f"push to {repo} (mount from {mount_from})")
            outcome["upload"] = self._upload_url(response.headers.get("Location"), repo)
            return f"{response.status_code}: not mountable, the registry opened an upload session instead"
        step.do(mount)
        return outcome.get("upload")

    def _read_pieces(self, open_fn: Callable[[], BinaryIO], digest: str, size: int) -> Iterator[bytes]:
        with open_fn() as f:
            sent = 0
            while True:
                piece = f.read(UPLOAD_PIECE)
                if not piece:
                    return
                sent += len(piece)
                self.progress.advance(digest, "Pushing", sent, size)
                yield piece

    def upload_blob(self, repo: str, digest: str, size: int, open_fn: Callable[[], BinaryIO], *,
                    mount_from: str | None = None, chunk_size: int | None = None) -> str:
        """Make the registry hold a blob: 'exists' (HEAD found it), 'mounted' or 'uploaded'."""
        scope = repository_scope(repo, "pull,push")
        if mount_from and mount_from != repo:
            scope += " " + repository_scope(mount_from, "pull")
        if self.blob_exists(repo, digest):
            self.progress.status(digest, "Layer already exists")
            return "exists"
        upload = None
        if mount_from and mount_from != repo:
            upload = self._mount(repo, digest, mount_from, scope)
            if upload is None:
                self.progress.status(digest, f"Mounted from {mount_from}")
                return "mounted"
        if upload is None:
            upload = self._start_upload(repo, scope)
        if chunk_size:
            self._upload_chunked(repo, digest, size, open_fn, upload, scope, chunk_size)
        else:
            self._upload_monolithic(repo, digest, size, open_fn, upload, scope)
        self.progress.status(digest, "Pushed")
        return "uploaded"

    def _upload_monolithic(self, repo: str, digest: str, size: int, open_fn: Callable[[], BinaryIO],
                           upload: httpx.URL, scope: str) -> None:
        """The whole blob in one ``PUT <upload URL>?digest=``: one request, streamed from disk."""
        url = upload.copy_merge_params({"digest": digest})
        step = Step("push_blob", call=f"PUT {upload.path}?digest={digest}",
                    shell=self._curl("PUT", f"{upload.path}?digest={digest}",
                                     " -H 'Content-Type: application/octet-stream' --data-binary @blob"),
                    why="send the blob; the registry hashes it and keeps it only if it matches the digest")

        def put() -> str:
            with self._timed("blob upload"):
                response = self._send("PUT", url, scope=scope,
                                      body=lambda: self._read_pieces(open_fn, digest, size),
                                      headers={"Content-Type": "application/octet-stream",
                                               "Content-Length": str(size)})
            self._check(response, what=f"upload of {digest} to {repo}")
            return f"{response.status_code} Created, {size} bytes"
        step.do(put)

    def _upload_chunked(self, repo: str, digest: str, size: int, open_fn: Callable[[], BinaryIO],
                        upload: httpx.URL, scope: str, chunk_size: int) -> None:
        """``PATCH`` one chunk at a time (Content-Range says where it goes), then ``PUT ?digest=``."""
        count = max(1, -(-size // chunk_size))
        step = Step("push_blob",
                    call=f"PATCH {upload.path} ×{count} (chunks of {chunk_size} bytes), "
                         f"then PUT {upload.path}?digest={digest}",
                    shell=self._curl("PATCH", upload.path, " -H 'Content-Range: 0-N' --data-binary @chunk"),
                    why="a chunked upload can resume after a failure; the final PUT names the digest to check")

        def send() -> str:
            location, offset = upload, 0
            with open_fn() as f:
                while offset < size:
                    data = f.read(chunk_size)
                    if not data:
                        raise RegistryError(f"blob {digest} is shorter than the {size} bytes its descriptor "
                                            "says: the local store is damaged; pull or build the image again")
                    with self._timed("blob upload (a PATCH of one chunk)"):
                        response = self._send("PATCH", location, scope=scope, body=data, headers={
                            "Content-Type": "application/octet-stream",
                            "Content-Range": f"{offset}-{offset + len(data) - 1}"})
                    self._check(response, what=f"chunked upload of {digest} to {repo}")
                    # each answer may move the session: always continue at the Location it gives
                    location = self._upload_url(response.headers.get("Location") or str(location), repo)
                    offset += len(data)
                    self.progress.advance(digest, "Pushing", offset, size)
            with self._timed("blob upload (the closing PUT)"):
                response = self._send("PUT", location.copy_merge_params({"digest": digest}), scope=scope,
                                      body=b"", headers={"Content-Type": "application/octet-stream"})
            self._check(response, what=f"upload of {digest} to {repo}")
            return f"{response.status_code} Created after {count} PATCH requests, {size} bytes"
        step.do(send)

    def put_manifest(self, repo: str, ref: str, body: bytes, media_type: str) -> str:
        """``PUT /v2/<repo>/manifests/<ref>``: publish the image under a tag (or digest); return its digest."""
        path = f"/v2/{repo}/manifests/{ref}"
        digest = sha256_digest(body)
        step = Step("push_manifest", call=f"PUT {path}",
                    shell=self._curl("PUT", path, f" -H 'Content-Type: {media_type}' --data-binary @manifest.json"),
                    why="the manifest names config and layers by digest; putting it under a tag publishes the image")

        def put() -> str:
            with self._timed("manifest upload"):
                response = self._send("PUT", path, scope=repository_scope(repo, "pull,push"), body=body,
                                      headers={"Content-Type": media_type})
            self._check(response, what=f"push of manifest {repo}:{ref}")
            answered = response.headers.get("Docker-Content-Digest")
            if answered and answered.startswith("sha256:") and answered != digest:
                raise RegistryError(f"digest mismatch: {self.host} stored manifest {repo}:{ref} as {answered}, "
                                    f"but it hashes to {digest}: the registry rewrote it; use another registry")
            return f"{response.status_code} Created, {digest}"
        step.do(put)
        return digest



def _error_messages(response: httpx.Response) -> list[tuple[str, str]]:
    """(code, message) pairs from the spec's error body, if the body is one."""
    try:
        errors = response.json().get("errors") or []
        return [(str(e.get("code", "")), str(e.get("message", ""))) for e in errors if isinstance(e, dict)]
    except (ValueError, AttributeError, TypeError, RecursionError):
        return []


def _error_codes(response: httpx.Response) -> list[str]:
    return [code for code, _ in _error_messages(response)]


# ---- platforms --------------------------------------------------------------------------
def platform_of(value: dict[str, Any]) -> str:
    """'os/arch[/variant]' of an index entry's ``platform`` or of an image config."""
    text = f"{value.get('os', '?')}/{value.get('architecture', '?')}"
    return f"{text}/{value['variant']}" if value.get("variant") else text


def platform_matches(have: dict[str, Any], want: str) -> bool:
    """Does a platform dict match 'os/arch' (any variant) or 'os/arch/variant'?"""
    parts = want.split("/")
    if have.get("os") != parts[0] or have.get("architecture") != parts[1]:
        return False
    return len(parts) < 3 or have.get("variant") == parts[2]


def check_platform_text(platform: str) -> str:
    parts = platform.split("/")
    if len(parts) not in (2, 3) or not all(parts):
        raise RegistryError(f"invalid platform {platform!r}: use os/arch[/variant], e.g. linux/amd64 or linux/arm64/v8")
    return platform


def choose_manifest(index: dict[str, Any], want: str, name: str) -> dict[str, Any]:
    """The index entry for platform ``want``, or an error that lists the platforms there are."""
    # attestations and other non-images carry platform unknown/unknown: never candidates
    images = [m for m in index.get("manifests", [])
              if isinstance(m, dict) and m.get("platform", {}).get("os") not in (None, "unknown")]
    for entry in images:
        if platform_matches(entry["platform"], want):
            return entry
    have = ", ".join(platform_of(m["platform"]) for m in images) or "none"
    raise RegistryError(f"{name} has no {want} image (it has: {have}): pick one with --platform")


# ---- pull -------------------------------------------------------------------------------
def _run_concurrently(action: Callable[[Any], Any], items: list[Any]) -> None:
    """Run ``action`` on every item, CONCURRENT_TRANSFERS at a time; the first error stops the rest."""
    if len(items) <= 1:
        for item in items:
            action(item)
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed  # here: it costs every CLI start ~6 ms

    with ThreadPoolExecutor(max_workers=CONCURRENT_TRANSFERS, thread_name_prefix="transfer") as pool:
        futures = [pool.submit(action, item) for item in items]
        try:
            for future in as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise


def _layer_descriptors(manifest: dict[str, Any], what: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    config = manifest.get("config")
    layers = manifest.get("layers", [])
    if not isinstance(config, dict) or not isinstance(layers, list) or \
            not all(isinstance(d, dict) and is_digest(str(d.get("digest", ""))) for d in [config, *layers]):
        raise RegistryError(f"{what} is not an image manifest (no config and layers with digests): "
                            "it may be an artifact, not an image")
    for d in [config, *layers]:
        size = d.get("size")
        if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
            raise RegistryError(f"{what} gives blob {d['digest']} the size {size!r}, which is no byte count: "
                                "the manifest is malformed; the registry is broken or hostile")
    return config, layers


def _check_image_size(config: dict[str, Any], layers: list[dict[str, Any]], name: str) -> None:
    """Refuse, before downloading anything, an image whose layers already exceed MINICONTAINER_MAX_IMAGE_SIZE
    compressed (a layer never unpacks to less than its compressed size, by much), or whose layers have no
    size to stop their download at."""
    unsized = [d["digest"] for d in layers if d.get("size") is None]
    if unsized:
        raise RegistryError(f"{name}'s manifest gives layer {unsized[0]} no size, which every descriptor must have: "
                            "the manifest is malformed; the registry is broken or hostile")
    total = sum(d["size"] for d in layers) + (config.get("size") or 0)
    cap = max_image_bytes()
    if total > cap:
        raise RegistryError(f"{name} is {total} bytes by its manifest, more than {human(cap)}, the "
                            f"{IMAGE_SIZE_SETTING} limit: nothing was downloaded (raise {IMAGE_SIZE_SETTING} "
                            "only if you trust the image)")


def pull(ref: str, store: ImageStore, *, platform: str | None = None, progress: Progress | None = None) -> str:
    """Pull ``ref`` into ``store`` and tag it under its full name; return the digest ``ref`` resolved to.

    For a multi-platform index the index is stored too, and the tag points at the manifest
    of the chosen platform (the host's unless ``platform`` says otherwise).
    """
    _refuse_planning("pull")
    reference = parse_reference(ref)
    want = check_platform_text(platform or host_platform())
    progress = progress if progress is not None else Progress()
    name = str(reference)
    with RegistryClient(reference.registry_host, credentials=load_credentials(reference.domain),
                        progress=progress) as client, progress:
        client.ping()
        wanted = reference.digest or reference.tag or "latest"
        progress.message(f"{reference.tag or reference.digest}: Pulling from {reference.path}")
        body, media_type, top_digest = client.get_manifest(reference.path, wanted)
        manifest = _json(body, f"manifest of {name}")
        index_body = None
        manifest_digest, platform_field = top_digest, None
        if media_type in INDEX_TYPES or "manifests" in manifest:
            index_body = body
            entry = choose_manifest(manifest, want, name)
            platform_field = entry["platform"]
            body, media_type, manifest_digest = client.get_manifest(reference.path, entry["digest"],
                                                                    accept=ACCEPT_IMAGE_MANIFEST)
            manifest = _json(body, f"manifest {entry['digest']} of {name}")
        config_desc, layers = _layer_descriptors(manifest, f"{name} ({manifest_digest})")
        _check_image_size(config_desc, layers, name)

        config_bytes = client.get_blob(reference.path, config_desc["digest"], config_desc.get("size"))
        config = _json(config_bytes, f"config of {name}")
        if not platform_matches(config, want):
            raise RegistryError(f"{name} is a {platform_of(config)} image, not {want} "
                                f"(it has: {platform_of(config)}): pick it with --platform {platform_of(config)}")
        platform_field = platform_field or {k: config[k] for k in ("os", "architecture", "variant") if config.get(k)}

        for layer in layers:
            progress.status(layer["digest"], "Pulling fs layer")
        _run_concurrently(lambda d: client.fetch_blob(reference.path, d["digest"], d.get("size"), store), layers)

        # content first, the tag last: a crash in between leaves blobs no tag points at, never a broken tag
        store.write_blob(config_bytes, expected=config_desc["digest"])
        store.write_blob(body, expected=manifest_digest)
        if index_body is not None:
            store.write_blob(index_body, expected=top_digest)
        previous = _tagged_digest(store, name)
        store.tag(name, {"mediaType": media_type, "digest": manifest_digest, "size": len(body),
                         "platform": platform_field})
        for layer in layers:
            progress.status(layer["digest"], "Pull complete")
        progress.message(f"Digest: {top_digest}")
        progress.message(f"Status: {'Image is up to date' if previous == manifest_digest else 'Downloaded newer image'}"
                         f" for {reference.familiar}")
    return top_digest


def _refuse_planning(verb: str) -> None:
    """Which requests a pull or push makes depends on the registry's answers: it can't be planned offline."""
    if is_planning():
        raise RegistryError(f"{verb} can't be shown without running: which requests it makes depends on what "
                            "the registry answers; run it with --trace instead of --explain")


def _tagged_digest(store: ImageStore, name: str) -> str | None:
    for ref, desc in store.list_refs():
        if ref == name:
            return desc.get("digest")
    return None


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        check_json_shape(data, what)
    except LayerError as exc:
        raise RegistryError(str(exc)) from None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise RegistryError(f"{what} is not JSON: the registry sent something else; check the reference") from None
    if not isinstance(value, dict):
        raise RegistryError(f"{what} is not a JSON object: the registry sent something else")
    return value


# ---- push -------------------------------------------------------------------------------
def _push_image_blobs(client: RegistryClient, store: ImageStore, repo: str, manifest: dict[str, Any],
                      what: str, mount_from: str | None, chunk_size: int | None) -> None:
    """Make the registry hold the config and every layer of one image manifest."""
    config, layers = _layer_descriptors(manifest, what)
    blobs = [d for d in layers if not d.get("urls")] + [config]  # foreign layers stay where their urls say
    for d in blobs:
        if not store.has_blob(d["digest"]):
            raise RegistryError(f"blob {d['digest']} of {what} is not in the local store: "
                                "pull or build the image again, then push")
    client.progress.hide(config["digest"])
    for d in layers:
        client.progress.status(d["digest"], "Preparing")

    def upload(d: dict[str, Any]) -> str:
        size = d.get("size")
        if size is None:
            size = store.blob_path(d["digest"]).stat().st_size
        return client.upload_blob(repo, d["digest"], size, lambda: store.open_blob(d["digest"]),
                                  mount_from=mount_from, chunk_size=chunk_size)
    _run_concurrently(upload, blobs)


def push(ref: str, store: ImageStore, *, source_ref: str | None = None, progress: Progress | None = None,
         chunk_size: int | None = None) -> str:
    """Push the stored image ``source_ref`` (default: ``ref``) to ``ref``'s registry; return the manifest digest.

    When the source is another repository of the same registry, its blobs are mounted
    rather than uploaded again.
    """
    _refuse_planning("push")
    target = parse_reference(ref)
    source = parse_reference(source_ref) if source_ref else target
    descriptor = store.descriptor(str(source))
    progress = progress if progress is not None else Progress()
    mount_from = source.path if source.domain == target.domain and source.path != target.path else None
    body = store.read_blob(descriptor["digest"])
    manifest = _json(body, f"manifest of {source}")
    media_type = manifest.get("mediaType") or descriptor.get("mediaType") or OCI_MANIFEST
    with RegistryClient(target.registry_host, credentials=load_credentials(target.domain),
                        progress=progress) as client, progress:
        client.ping()
        progress.message(f"The push refers to repository [{target.name}]")
        if media_type in INDEX_TYPES or "manifests" in manifest:
            children = [m for m in manifest.get("manifests", []) if isinstance(m, dict)]
            missing = [platform_of(m.get("platform", {})) for m in children if not store.has_blob(m["digest"])]
            if missing:
                raise RegistryError(f"{source} is a multi-platform index, and the manifests for {', '.join(missing)} "
                                    "are not in the local store: push one platform's image instead")
            for child in children:
                child_body = store.read_blob(child["digest"])
                child_manifest = _json(child_body, f"manifest {child['digest']}")
                _push_image_blobs(client, store, target.path, child_manifest, f"{source} ({child['digest']})",
                                  mount_from, chunk_size)
                child_type = child_manifest.get("mediaType") or child.get("mediaType") or OCI_MANIFEST
                client.put_manifest(target.path, child["digest"], child_body, child_type)
        else:
            _push_image_blobs(client, store, target.path, manifest, str(source), mount_from, chunk_size)
        digest = client.put_manifest(target.path, target.tag or descriptor["digest"], body, media_type)
        if target.digest and target.digest != digest:
            raise RegistryError(f"{ref} names digest {target.digest}, but the stored image is {digest}: "
                                "push by tag, or by the image's own digest")
        progress.message(f"{target.tag or 'digest'}: digest: {digest} size: {len(body)}")
    return digest


# ---- login and logout -------------------------------------------------------------------
def login(host: str, user: str, password: str) -> None:
    """Check the credentials against ``host`` and save them (mode 0600) for pull and push."""
    with RegistryClient(host) as client:
        client.login(user, password)
    save_credentials(host, user, password)


def logout(host: str) -> bool:
    """Forget the saved credentials for ``host``; True if there were any."""
    return remove_credentials(host)
