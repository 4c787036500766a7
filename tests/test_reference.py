"""Image references: Docker's normalization and the distribution reference grammar.

Pure parsing, no kernel: these tests are fast and run anywhere.
"""
from __future__ import annotations

import hashlib

import pytest

from minicontainer.errors import InvalidReference, MinicontainerError
from minicontainer.image.reference import (
    DEFAULT_DOMAIN,
    DEFAULT_TAG,
    LEGACY_DEFAULT_DOMAIN,
    OFFICIAL_REPO_PREFIX,
    Reference,
    is_digest,
    parse_reference,
)

DIGEST = "sha256:" + hashlib.sha256(b"an image manifest").hexdigest()

# input -> (normalized str, familiar form)
VALID = [
    ("busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/library/busybox", "docker.io/library/busybox:latest", "busybox:latest"),
    ("index.docker.io/busybox:1.36", "docker.io/library/busybox:1.36", "busybox:1.36"),
    ("user/repo", "docker.io/user/repo:latest", "user/repo:latest"),
    ("docker.io/library/a/b", "docker.io/library/a/b:latest", "library/a/b:latest"),
    ("localhost/foo", "localhost/foo:latest", "localhost/foo:latest"),
    ("localhost:5000/student/busybox:v1", "localhost:5000/student/busybox:v1",
     "localhost:5000/student/busybox:v1"),
    (f"quay.io/org/app@{DIGEST}", f"quay.io/org/app@{DIGEST}", f"quay.io/org/app@{DIGEST}"),
    (f"busybox:1.36@{DIGEST}", f"docker.io/library/busybox:1.36@{DIGEST}", f"busybox:1.36@{DIGEST}"),
    ("127.0.0.1:5000/a/b", "127.0.0.1:5000/a/b:latest", "127.0.0.1:5000/a/b:latest"),
    ("[::1]:5000/a", "[::1]:5000/a:latest", "[::1]:5000/a:latest"),
    ("[2001:db8::1]/a:v2", "[2001:db8::1]/a:v2", "[2001:db8::1]/a:v2"),
    ("foo.bar.com/x/y/z:tag", "foo.bar.com/x/y/z:tag", "foo.bar.com/x/y/z:tag"),
    ("registry:5000/team/app", "registry:5000/team/app:latest", "registry:5000/team/app:latest"),
    ("My-Registry.example.com/app", "My-Registry.example.com/app:latest",
     "My-Registry.example.com/app:latest"),
    ("a_b", "docker.io/library/a_b:latest", "a_b:latest"),
    ("a__b", "docker.io/library/a__b:latest", "a__b:latest"),
    ("a-b", "docker.io/library/a-b:latest", "a-b:latest"),
    ("a---b", "docker.io/library/a---b:latest", "a---b:latest"),
    ("a.b", "docker.io/library/a.b:latest", "a.b:latest"),
    ("web/a.b_c__d-e", "docker.io/web/a.b_c__d-e:latest", "web/a.b_c__d-e:latest"),
    ("busybox:_Tag.With-Mixed_CASE", "docker.io/library/busybox:_Tag.With-Mixed_CASE",
     "busybox:_Tag.With-Mixed_CASE"),
    ("busybox:" + "t" * 128, "docker.io/library/busybox:" + "t" * 128, "busybox:" + "t" * 128),
    # No host, no slash: "localhost:5000" is the image "localhost" with tag "5000", as in docker.
    ("localhost:5000", "docker.io/library/localhost:5000", "localhost:5000"),
]


@pytest.mark.parametrize("text, normalized, familiar", VALID)
def test_valid_reference_normalizes_to_the_full_name_and_back_to_the_familiar_form(
    text, normalized, familiar
):
    ref = parse_reference(text)
    assert str(ref) == normalized
    assert ref.familiar == familiar


@pytest.mark.parametrize("text, normalized, familiar", VALID)
def test_both_printed_forms_parse_back_to_the_same_reference(text, normalized, familiar):
    ref = parse_reference(text)
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


def test_reference_fields_of_a_course_registry_image():
    ref = parse_reference("localhost:5000/student/busybox:v1")
    assert ref == Reference(domain="localhost:5000", path="student/busybox", tag="v1", digest=None)
    assert ref.name == "localhost:5000/student/busybox"
    assert ref.familiar_name == "localhost:5000/student/busybox"
    assert ref.registry_host == "localhost:5000"


def test_short_name_lives_in_the_official_library_on_docker_hub():
    ref = parse_reference("busybox")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == (
        DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + "busybox", DEFAULT_TAG, None)
    assert ref.name == "docker.io/library/busybox"
    assert ref.familiar_name == "busybox"


def test_docker_hub_is_contacted_at_registry_1_docker_io():
    assert parse_reference("busybox").registry_host == "registry-1.docker.io"
    assert parse_reference(f"{LEGACY_DEFAULT_DOMAIN}/user/app").registry_host == "registry-1.docker.io"
    assert parse_reference("quay.io/org/app").registry_host == "quay.io"


def test_a_first_component_without_dot_colon_or_localhost_is_a_docker_hub_namespace():
    ref = parse_reference("student/busybox")
    assert (ref.domain, ref.path) == ("docker.io", "student/busybox")
    ref = parse_reference("localhostx/busybox")
    assert (ref.domain, ref.path) == ("docker.io", "localhostx/busybox")


def test_digest_without_tag_gets_no_default_tag():
    ref = parse_reference(f"busybox@{DIGEST}")
    assert ref.tag is None
    assert ref.digest == DIGEST
    assert str(ref) == f"docker.io/library/busybox@{DIGEST}"
    assert ref.familiar == f"busybox@{DIGEST}"


def test_tag_and_digest_are_both_kept():
    ref = parse_reference(f"quay.io/org/app:v2@{DIGEST}")
    assert (ref.tag, ref.digest) == ("v2", DIGEST)


def test_default_tag_false_leaves_the_tag_unset():
    ref = parse_reference("busybox", default_tag=False)
    assert ref.tag is None
    assert str(ref) == "docker.io/library/busybox"
    assert ref.familiar == "busybox"


def test_with_tag_and_with_digest_return_new_references():
    ref = parse_reference("localhost:5000/student/busybox:v1")
    v2 = ref.with_tag("v2")
    assert str(v2) == "localhost:5000/student/busybox:v2"
    assert ref.tag == "v1"  # references are immutable values
    pinned = v2.with_digest(DIGEST)
    assert str(pinned) == f"localhost:5000/student/busybox:v2@{DIGEST}"


def test_with_tag_and_with_digest_refuse_malformed_values():
    ref = parse_reference("busybox")
    with pytest.raises(InvalidReference, match=r"invalid tag '-x': the tag starts with '-'"):
        ref.with_tag("-x")
    with pytest.raises(InvalidReference, match=r"invalid digest 'sha256:abc': sha256 digests are 64"):
        ref.with_digest("sha256:abc")


def test_is_digest_accepts_only_registered_algorithms_with_the_right_hex_length():
    assert is_digest(DIGEST)
    assert is_digest("sha512:" + hashlib.sha512(b"x").hexdigest())
    assert is_digest("sha384:" + hashlib.sha384(b"x").hexdigest())
    assert not is_digest("sha256:abc")
    assert not is_digest(DIGEST.upper().replace("SHA256", "sha256"))
    assert not is_digest("sha512:" + "a" * 64)
    assert not is_digest("md5:" + hashlib.md5(b"x").hexdigest())
    assert not is_digest(DIGEST.removeprefix("sha256:"))
    assert not is_digest("")


LONG_NAME = "a" * 300

# input -> fragments the one-line message must contain (the rule that was broken)
INVALID = [
    ("", ["invalid reference ''", "empty"]),
    ("Busybox", ["invalid reference 'Busybox'", "must be lowercase", "(try 'busybox')"]),
    ("Student/Busybox:V1", ["must be lowercase", "(try 'student/busybox:V1')"]),
    ("localhost:5000/Student/app", ["must be lowercase", "(try 'localhost:5000/student/app')"]),
    ("busybox:v@1", ["invalid tag in 'busybox:v@1'", "'@' is not allowed",
                     "up to 128 characters of letters, digits, '_', '.', '-'",
                     "can't start with '.' or '-'"]),
    ("busybox:.hidden", ["invalid tag", "starts with '.'"]),
    ("busybox:-x", ["invalid tag", "starts with '-'"]),
    ("busybox:", ["invalid tag", "empty"]),
    ("busybox:" + "t" * 129, ["invalid tag", "129 characters", "up to 128"]),
    (LONG_NAME, ["repository name 'docker.io/library/aaa", "318 characters, the limit is 255"]),
    ("quay.io/" + "b" * 250, ["258 characters, the limit is 255"]),
    ("busybox@sha256:abc", ["invalid digest 'sha256:abc'", "sha256 digests are 64 lowercase hex"]),
    ("busybox@" + DIGEST.upper().replace("SHA256", "sha256"), ["64 lowercase hex"]),
    ("busybox@md5:" + hashlib.md5(b"x").hexdigest(), ["unsupported digest algorithm 'md5'"]),
    ("busybox@latest", ["invalid digest 'latest'", "'<algorithm>:<hex>'"]),
    ("a//b", ["double slash", "empty path component"]),
    ("busybox/", ["ends with '/'", "trailing slash"]),
    ("/busybox", ["starts with '/'"]),
    ("quay.io/", ["repository name is missing"]),
    (":v1", ["repository name is missing"]),
    ("localhost:abc/app", ["port 'abc'", "number from 1 to 65535"]),
    ("localhost:/app", ["port ''", "number"]),
    ("localhost:99999/app", ["port '99999'", "1 to 65535"]),
    ("-bad.example.com/app", ["registry host '-bad.example.com'", "letters, digits and '-' between dots"]),
    ("my_registry.io/app", ["registry host 'my_registry.io'"]),
    ("[::1/app", ["registry host '[::1'"]),
    ("a..b", ["'a..b'", "separator", "'.', '_', '__' or dashes"]),
    ("a___b", ["'a___b'", "separator"]),
    ("_ab", ["'_ab'", "starts or ends with a separator"]),
    ("ab-", ["'ab-'", "starts or ends with a separator"]),
    ("user/my app", ["' ' is not allowed in path component 'my app'"]),
    (hashlib.sha256(b"an image config").hexdigest(), ["image ID, not a repository name"]),
]


@pytest.mark.parametrize("text, fragments", INVALID, ids=[t[:40] or "empty" for t, _ in INVALID])
def test_invalid_reference_error_names_the_rule_that_was_broken(text, fragments):
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    assert len(message) < 400, "long input is elided, not printed whole"
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_invalid_reference_is_a_minicontainer_error_the_cli_can_print():
    with pytest.raises(MinicontainerError):
        parse_reference("Busybox")


def test_name_of_exactly_255_characters_is_accepted():
    path = "p" * (255 - len("quay.io/"))
    assert len(parse_reference(f"quay.io/{path}").name) == 255
