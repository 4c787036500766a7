"""Authentication for the registry server: htpasswd Basic, and a Bearer token server.

Two schemes real registries use:

* **Basic**: every request carries ``Authorization: Basic base64(user:password)``,
  checked against an htpasswd file (what Debian's docker-registry ships with).
* **Bearer tokens** (Docker Hub's flow): the registry answers 401 with
  ``WWW-Authenticate: Bearer realm=...,service=...,scope=repository:<name>:pull,push``; the
  client asks the realm for a token with Basic credentials, and the token lists the
  actions it allows per repository. Our tokens are JWT-shaped (header.claims.signature,
  base64url) and signed with HMAC-SHA256 by a secret only the server knows.

htpasswd lines understood: ``user:{SHA}base64(sha1(pw))`` (``htpasswd -s``), bcrypt
``$2y$`` (only if the ``bcrypt`` module is importable), and our own
``user:$pbkdf2-sha256$<iterations>$<salt b64>$<hash b64>`` from :func:`make_htpasswd_line`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from minicontainer.errors import RegistryError

SERVICE = "minicontainer-registry"
PBKDF2_ITERATIONS = 200_000
ALL_ACTIONS = ("pull", "push", "delete")
CATALOG_SCOPE = "registry:catalog:*"  # the scope distribution's token servers grant to list /v2/_catalog


class AuthError(RegistryError):
    """Credentials or a token were refused."""


# ---- htpasswd -------------------------------------------------------------------------
def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def make_htpasswd_line(user: str, password: str, *, iterations: int = PBKDF2_ITERATIONS) -> str:
    """One htpasswd line with a salted PBKDF2-SHA256 hash (our native format)."""
    if not user or ":" in user:
        raise AuthError(f"htpasswd user name {user!r} is empty or contains ':': pick another name")
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    return f"{user}:$pbkdf2-sha256${iterations}${_b64(salt)}${_b64(digest)}"


def _bcrypt_available() -> bool:
    try:
        import bcrypt  # noqa: F401  (optional: not a dependency of minicontainer)
    except ImportError:
        return False
    return True


def load_htpasswd(path: Path | str) -> dict[str, str]:
    """Read an htpasswd file into {user: stored hash}; refuse hash formats we can't check."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise AuthError(f"htpasswd file {path} does not exist: create it with "
                        f"`minicontainer registry htpasswd {path} USER`") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored:
            raise AuthError(f"{path}:{number}: expected 'user:hash': fix or remove that line")
        if stored.startswith(("$2y$", "$2a$", "$2b$")):
            if not _bcrypt_available():
                raise AuthError(
                    f"{path}:{number}: user {user!r} has a bcrypt hash and the bcrypt module is not "
                    "installed: recreate the line with `minicontainer registry htpasswd` or `htpasswd -s` ({SHA})")
        elif not stored.startswith(("{SHA}", "$pbkdf2-sha256$")):
            raise AuthError(f"{path}:{number}: user {user!r} uses an unsupported hash format: "
                            "recreate the line with `minicontainer registry htpasswd` or `htpasswd -s` ({SHA})")
        users[user] = stored
    return users


def verify_password(stored: str, password: str) -> bool:
    """Check ``password`` against one stored htpasswd hash, in constant time where we can."""
    if stored.startswith("{SHA}"):
        expected = _b64(hashlib.sha1(password.encode()).digest())
        return hmac.compare_digest(stored[5:], expected)
    if stored.startswith("$pbkdf2-sha256$"):
        try:
            _, _, iterations, salt, digest = stored.split("$")
            actual = hashlib.pbkdf2_hmac("sha256", password.encode(),
                                         base64.b64decode(salt), int(iterations))
            return hmac.compare_digest(actual, base64.b64decode(digest))
        except (ValueError, binascii.Error):
            return False
    if stored.startswith(("$2y$", "$2a$", "$2b$")) and _bcrypt_available():
        import bcrypt
        # the C library knows $2b$; $2y$ (Apache's name) is the same algorithm
        return bcrypt.checkpw(password.encode(), ("$2b$" + stored[4:]).encode())
    return False


class Credentials:
    """Users the server accepts: htpasswd hashes plus plain passwords given in code."""

    def __init__(self, hashed: dict[str, str] | None = None, plain: dict[str, str] | None = None):
        self.hashed = dict(hashed or {})
        self.plain = dict(plain or {})
        self._verified: set[tuple[str, bytes]] = set()  # PBKDF2 is slow on purpose; check once

    def __bool__(self) -> bool:
        return bool(self.hashed or self.plain)

    def check(self, user: str, password: str) -> bool:
        if user in self.plain:
            return hmac.compare_digest(self.plain[user].encode(), password.encode())
        stored = self.hashed.get(user)
        if stored is None:
            return False
        key = (user, hashlib.sha256(f"{stored}\0{password}".encode()).digest())
        if key in self._verified:
            return True
        if verify_password(stored, password):
            self._verified.add(key)
            return True
        return False


def parse_basic(header: str | None) -> tuple[str, str] | None:
    """(user, password) from an ``Authorization: Basic ...`` header, or None."""
    if not header or not header[:6].lower() == "basic ":
        return None
    try:
        user, sep, password = base64.b64decode(header[6:].strip()).decode().partition(":")
    except (ValueError, UnicodeDecodeError):  # ValueError: not base64, or not even ASCII
        return None
    return (user, password) if sep else None


def parse_bearer(header: str | None) -> str | None:
    if not header or not header[:7].lower() == "bearer ":
        return None
    return header[7:].strip() or None


# ---- scopes and policy ----------------------------------------------------------------
@dataclass
class Scope:
    """One requested scope: 'repository:<name>:<actions>'."""

    type: str
    name: str
    actions: list[str]

    @classmethod
    def parse(cls, text: str) -> "Scope | None":
        # the name may hold ':' only in a registry host, which repositories here never have
        kind, _, rest = text.partition(":")
        name, _, actions = rest.rpartition(":")
        if not kind or not name:
            return None
        return cls(kind, name, [a for a in actions.split(",") if a])

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(self.actions)}"


def grant(user: str | None, requested: list[Scope]) -> list[dict[str, Any]]:
    """The teaching policy: '<user>/...' is yours (pull, push, delete); elsewhere pull; anonymous pull;
    the catalog only for a signed-in user."""
    access = []
    for scope in requested:
        if scope.type == "registry" and scope.name == "catalog":
            if user and "*" in scope.actions:  # listing every repository is for signed-in users
                access.append({"type": "registry", "name": "catalog", "actions": ["*"]})
            continue
        if scope.type != "repository":
            continue
        if user and scope.name.startswith(f"{user}/"):
            allowed = set(ALL_ACTIONS) | {"*"}
        else:
            allowed = {"pull"}
        actions = [a for a in scope.actions if a in allowed]
        if actions:
            access.append({"type": "repository", "name": scope.name, "actions": actions})
    return access


# ---- tokens ---------------------------------------------------------------------------
def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class TokenClaims:
    """What a verified token says: who, for which service, until when, which actions."""

    iss: str
    sub: str
    aud: str
    exp: int
    iat: int = 0
    access: list[dict[str, Any]] = field(default_factory=list)

    def allows(self, name: str, action: str, kind: str = "repository") -> bool:
        """Whether the token grants ``action`` on ``kind:name`` (``registry:catalog`` lists repositories)."""
        for entry in self.access:
            if entry.get("type") == kind and entry.get("name") == name:
                actions = entry.get("actions", [])
                if action in actions or "*" in actions:
                    return True
        return False


class TokenIssuer:
    """Signs and verifies HS256 JWT-shaped Bearer tokens scoped to repositories and actions."""

    def __init__(self, secret: bytes | None = None, *, issuer: str = SERVICE,
                 service: str = SERVICE, ttl: int = 300):
        self.secret = secret or secrets.token_bytes(32)
        self.issuer = issuer
        self.service = service
        self.ttl = ttl

    def _sign(self, signing_input: bytes) -> str:
        return _b64url(hmac.new(self.secret, signing_input, hashlib.sha256).digest())

    def issue(self, subject: str, access: list[dict[str, Any]]) -> str:
        """A token for ``subject`` ('' for anonymous) carrying exactly ``access``."""
        now = int(time.time())
        header = {"alg": "HS256", "typ": "JWT"}
        claims = {"iss": self.issuer, "sub": subject, "aud": self.service, "iat": now,
                  "nbf": now - 1, "exp": now + self.ttl, "jti": secrets.token_hex(8),
                  "access": access}
        signing_input = (_b64url(json.dumps(header, separators=(",", ":")).encode()) + "." +
                         _b64url(json.dumps(claims, separators=(",", ":")).encode()))
        return signing_input + "." + self._sign(signing_input.encode())

    def verify(self, token: str) -> TokenClaims:
        """Check signature, issuer, audience and expiry; AuthError says which one failed."""
        parts = token.split(".")
        if len(parts) != 3:
            raise AuthError("bearer token is not header.claims.signature: ask the token server for a new one")
        signing_input = f"{parts[0]}.{parts[1]}".encode()
        # as bytes: compare_digest refuses str with non-ASCII characters, which a header may carry
        if not hmac.compare_digest(self._sign(signing_input).encode(), parts[2].encode(errors="surrogateescape")):
            raise AuthError("bearer token signature is invalid: ask this registry's token server for a new one")
        try:
            header = json.loads(_unb64url(parts[0]))
            claims = json.loads(_unb64url(parts[1]))
        except (ValueError, binascii.Error):
            raise AuthError("bearer token is not valid base64url JSON: ask the token server for a new one") from None
        if header.get("alg") != "HS256":
            raise AuthError("bearer token is not HS256: ask this registry's token server for a new one")
        if claims.get("iss") != self.issuer or claims.get("aud") != self.service:
            raise AuthError(f"bearer token is for another service (aud {claims.get('aud')!r}): "
                            f"ask the token server for service {self.service!r}")
        if int(claims.get("exp", 0)) < time.time():
            raise AuthError("bearer token has expired: ask the token server for a new one")
        return TokenClaims(iss=claims["iss"], sub=claims.get("sub", ""), aud=claims["aud"],
                           exp=int(claims["exp"]), iat=int(claims.get("iat", 0)),
                           access=list(claims.get("access") or []))


def bearer_challenge(realm: str, service: str, scope: str | None = None,
                     error: str | None = None) -> str:
    """The WWW-Authenticate value that sends a client to the token server."""
    value = f'Bearer realm="{realm}",service="{service}"'
    if scope:
        value += f',scope="{scope}"'
    if error:
        value += f',error="{error}"'
    return value


def basic_challenge(realm: str = SERVICE) -> str:
    return f'Basic realm="{realm}"'


def add_htpasswd_user(path: Path | str, user: str, password: str) -> None:
    """``minicontainer registry htpasswd``: add or replace one user's line, atomically."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    lines = [line for line in lines if line.partition(":")[0] != user]
    lines.append(make_htpasswd_line(user, password))
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
        f.write("\n".join(lines) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
