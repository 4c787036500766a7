"""Image references: the names you type after ``pull``, ``run`` and ``push``.

A reference names a repository on a registry and, optionally, one image in it::

    [registry-host[:port]/]path[:tag][@digest]
    localhost:5000/student/busybox:v1
    quay.io/org/app@sha256:<64 hex>

The grammar is the one Docker and the OCI distribution tools share:

- the *registry host* is a DNS-style name (letters, digits, '-' between dots), an IPv4
  address, or an IPv6 address in brackets, with an optional ``:port``;
- the *path* is one or more components separated by '/', each made of lowercase letters
  and digits joined by one '.', one or two '_', or any number of '-';
- the *tag* is up to 128 letters, digits, '_', '.', '-', not starting with '.' or '-';
- the *digest* is ``algorithm:hex`` (``sha256:`` + 64 lowercase hex characters);
- the whole name (host + path) is at most 255 characters.

Docker also *normalizes* short names: ``busybox`` means
``docker.io/library/busybox:latest``. The first path component is taken as a registry
host only when it contains '.' or ':' or is exactly ``localhost``; otherwise the name
lives on Docker Hub (``docker.io``), and one-component Hub names get the ``library/``
namespace of the official images.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, replace

from minicontainer.errors import InvalidReference

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"

# docker.io is the name people write; the registry API for Docker Hub answers on this host.
DOCKER_HUB_REGISTRY_HOST = "registry-1.docker.io"

NAME_TOTAL_LENGTH_MAX = 255
TAG_LENGTH_MAX = 128
LOCALHOST = "localhost"

# Registered digest algorithms and the length of their lowercase-hex encoding.
DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

# Building blocks of the grammar, one regexp per rule so each can be named in an error.
_ALPHANUMERIC = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = re.compile(rf"{_ALPHANUMERIC}(?:{_SEPARATOR}{_ALPHANUMERIC})*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = re.compile(rf"{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*")
_IPV6_IN_BRACKETS = re.compile(r"\[[a-fA-F0-9:]+\]")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_IMAGE_ID = re.compile(r"[a-f0-9]{64}")

TAG_RULE = (
    f"a tag is up to {TAG_LENGTH_MAX} characters of letters, digits, '_', '.', '-' "
    "and can't start with '.' or '-'"
)
COMPONENT_RULE = (
    "path components are lowercase letters and digits joined by '.', '_', '__' or dashes, "
    "and start and end with a letter or digit"
)
HOST_RULE = (
    "a registry host is letters, digits and '-' between dots (like 'quay.io' or "
    "'127.0.0.1'), or an IPv6 address in brackets (like '[::1]'), with an optional ':port'"
)


@dataclass(frozen=True)
class Reference:
    """A normalized image reference: registry domain, repository path, tag and digest."""

    domain: str            # "docker.io", "localhost:5000", "quay.io"
    path: str              # "library/busybox", "student/busybox"
    tag: str | None        # None when a digest is given without a tag (or default_tag=False)
    digest: str | None     # "sha256:<64 hex>"

    @property
    def name(self) -> str:
        """The full repository name: ``docker.io/library/busybox``."""
        return f"{self.domain}/{self.path}"

    @property
    def familiar_name(self) -> str:
        """The short name Docker shows: ``docker.io/library/busybox`` is ``busybox``."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        # Only official images drop "library/"; a nested "library/a/b" keeps it, so the
        # short form still parses back to the same name.
        short = self.path.removeprefix(OFFICIAL_REPO_PREFIX)
        if self.path.startswith(OFFICIAL_REPO_PREFIX) and "/" not in short:
            return short
        return self.path

    @property
    def familiar(self) -> str:
        """The short form Docker shows in ``docker images``: ``busybox:latest``."""
        return self.familiar_name + self._suffix()

    @property
    def registry_host(self) -> str:
        """The host to contact for the registry API (Docker Hub serves it elsewhere)."""
        if self.domain == DEFAULT_DOMAIN:
            return DOCKER_HUB_REGISTRY_HOST
        return self.domain

    def with_tag(self, tag: str) -> Reference:
        """The same repository (and digest, if any) with another tag."""
        problem = tag_problem(tag)
        if problem:
            raise InvalidReference(f"invalid tag {_shown(tag)}: {problem}")
        return replace(self, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        """The same repository and tag, pinned to one image by its content digest."""
        problem = digest_problem(digest)
        if problem:
            raise InvalidReference(f"invalid digest {_shown(digest)}: {problem}")
        return replace(self, digest=digest)

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag else ""
        digest = f"@{self.digest}" if self.digest else ""
        return tag + digest

    def __str__(self) -> str:
        return self.name + self._suffix()


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse and normalize ``text`` the way ``docker pull`` does, or raise InvalidReference.

    With ``default_tag`` a reference without tag or digest gets the tag ``latest``.
    """
    if text == "":
        raise InvalidReference(
            "invalid reference '': the image name is empty; give one such as 'busybox' "
            "or 'localhost:5000/student/busybox:v1'"
        )
    if _IMAGE_ID.fullmatch(text):
        # A bare 64-hex string looks like an image ID; Docker refuses it as a name so
        # that "run <id>" can never silently mean "pull a repository named <id>".
        raise InvalidReference(
            f"invalid reference {_shown(text)}: a 64-character hex string is an image ID, "
            "not a repository name"
        )
    name_and_tag, digest = _split_digest(text)
    name, tag = _split_tag(name_and_tag)
    domain_text, remote = _split_domain(name)

    if domain_text is not None:
        problem = domain_problem(domain_text)
        if problem:
            raise InvalidReference(f"invalid reference {_shown(text)}: {problem}")
    problem = path_problem(remote)
    if problem:
        raise InvalidReference(f"invalid reference {_shown(text)}: {problem}")
    if remote != remote.lower():
        suggestion = (f"{domain_text}/" if domain_text is not None else "") + remote.lower()
        suggestion += text[len(name):]  # keep the tag and digest as typed
        raise InvalidReference(
            f"invalid reference {_shown(text)}: repository names must be lowercase "
            f"(try {_shown(suggestion)})"
        )
    for component in remote.split("/"):
        problem = component_problem(component)
        if problem:
            raise InvalidReference(f"invalid reference {_shown(text)}: {problem}")

    domain, path = normalize_name(domain_text, remote)
    full_name = f"{domain}/{path}"
    if len(full_name) > NAME_TOTAL_LENGTH_MAX:
        raise InvalidReference(
            f"invalid reference {_shown(text)}: repository name {_shown(full_name)} is "
            f"{len(full_name)} characters, the limit is {NAME_TOTAL_LENGTH_MAX}"
        )
    if tag is not None:
        problem = tag_problem(tag)
        if problem:
            raise InvalidReference(f"invalid tag in {_shown(text)}: {problem}")
    if digest is not None:
        problem = digest_problem(digest)
        if problem:
            raise InvalidReference(f"invalid digest {_shown(digest)} in {_shown(text)}: {problem}")
    if tag is None and digest is None and default_tag:
        tag = DEFAULT_TAG
    return Reference(domain=domain, path=path, tag=tag, digest=digest)


def normalize_name(domain: str | None, remote: str) -> tuple[str, str]:
    """Docker's normalization: no host means Docker Hub; official images live in ``library/``."""
    if domain is None or domain == LEGACY_DEFAULT_DOMAIN:
        # index.docker.io is the old name of Docker Hub ("the Docker Index").
        domain = DEFAULT_DOMAIN
    if domain == DEFAULT_DOMAIN and "/" not in remote:
        remote = OFFICIAL_REPO_PREFIX + remote
    return domain, remote


def is_digest(text: str) -> bool:
    """True if ``text`` is a well-formed content digest such as ``sha256:<64 hex>``."""
    return isinstance(text, str) and digest_problem(text) is None


def digest_problem(digest: str) -> str | None:
    """Why ``digest`` is not ``algorithm:hex`` with the algorithm's hex length, or None."""
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not algorithm:
        return "a digest is '<algorithm>:<hex>', such as 'sha256:' followed by 64 lowercase hex characters"
    if algorithm not in DIGEST_HEX_LENGTHS:
        known = ", ".join(DIGEST_HEX_LENGTHS)
        return f"unsupported digest algorithm '{algorithm}' (use one of {known})"
    length = DIGEST_HEX_LENGTHS[algorithm]
    if len(encoded) != length or not re.fullmatch(r"[0-9a-f]+", encoded):
        return f"{algorithm} digests are {length} lowercase hex characters"
    return None


def tag_problem(tag: str) -> str | None:
    """Why ``tag`` breaks the tag rule (``[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}``), or None."""
    if tag == "":
        return f"the tag after ':' is empty; {TAG_RULE}"
    if _TAG.fullmatch(tag):
        return None
    if len(tag) > TAG_LENGTH_MAX:
        return f"the tag is {len(tag)} characters; {TAG_RULE}"
    if tag[0] in ".-":
        return f"the tag starts with '{tag[0]}'; {TAG_RULE}"
    bad = next(c for c in tag if not re.fullmatch(r"[\w.-]", c, re.ASCII))
    return f"{bad!r} is not allowed; {TAG_RULE}"


def domain_problem(domain: str) -> str | None:
    """Why ``domain`` is not ``host[:port]``, or None."""
    host, port = _split_port(domain)
    if port is not None and not (port.isascii() and port.isdigit() and 0 < int(port) <= 65535):
        return f"port {port!r} of registry host '{domain}' must be a number from 1 to 65535"
    if not (_DOMAIN_NAME.fullmatch(host) or _IPV6_IN_BRACKETS.fullmatch(host)):
        return f"registry host '{domain}' is not valid: {HOST_RULE}"
    return None


def path_problem(remote: str) -> str | None:
    """Why the '/'-separated repository path has an empty component, or None."""
    if remote == "":
        return "the repository name is missing (nothing before ':' or '@', or after the registry host)"
    if remote.startswith("/"):
        return "the repository path starts with '/'; remove the leading slash"
    if remote.endswith("/"):
        return "the repository path ends with '/'; remove the trailing slash"
    if "//" in remote:
        return "double slash '//' leaves an empty path component; use a single '/'"
    return None


def component_problem(component: str) -> str | None:
    """Why one lowercase path component breaks the component rule, or None."""
    if _PATH_COMPONENT.fullmatch(component):
        return None
    bad = [c for c in component if not re.fullmatch(r"[a-z0-9._-]", c)]
    if bad:
        return f"{bad[0]!r} is not allowed in path component {component!r}; {COMPONENT_RULE}"
    if component[0] in "._-" or component[-1] in "._-":
        return f"path component {component!r} starts or ends with a separator; {COMPONENT_RULE}"
    return f"path component {component!r} has a separator that is not allowed; {COMPONENT_RULE}"


def _split_digest(text: str) -> tuple[str, str | None]:
    """Split ``name[:tag]@digest``; a stray '@' inside a tag stays with the tag."""
    name_and_tag, at, digest = text.partition("@")
    if not at:
        return text, None
    _, tag = _split_tag(name_and_tag)
    if tag is not None and ":" not in digest:
        # "busybox:v@1": the '@' reads as a bad tag character, not as a digest.
        return text, None
    return name_and_tag, digest


def _split_tag(name_and_tag: str) -> tuple[str, str | None]:
    """Split ``name:tag``; a ':' before the last '/' belongs to a registry port instead."""
    colon = name_and_tag.rfind(":")
    if colon == -1 or colon < name_and_tag.rfind("/"):
        return name_and_tag, None
    return name_and_tag[:colon], name_and_tag[colon + 1:]


def _split_domain(name: str) -> tuple[str | None, str]:
    """Split off the registry host: a first component with '.' or ':', or ``localhost``."""
    first, slash, rest = name.partition("/")
    if slash and (first == LOCALHOST or "." in first or ":" in first):
        return first, rest
    return None, name


def _split_port(domain: str) -> tuple[str, str | None]:
    """Split ``host:port``; the colons inside ``[::1]`` are part of the host."""
    if domain.startswith("["):
        host, bracket, after = domain.partition("]")
        if not bracket:
            return domain, None
        if after.startswith(":"):
            return host + "]", after[1:]
        return domain, None
    host, colon, port = domain.partition(":")
    return (host, port) if colon else (domain, None)


def _shown(text: str, limit: int = 60) -> str:
    """Quote ``text`` for a one-line message, eliding the middle of very long input."""
    if len(text) > limit:
        text = text[: limit - 12] + "…" + text[-11:]
    return f"'{text}'"
