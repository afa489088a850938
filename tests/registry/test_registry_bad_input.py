"""Hostile and malformed requests: always a 4xx with an OCI error body, never a 500, and nothing
read or written outside the registry root.

Requests whose path must reach the server byte for byte go through `raw_request`: `requests`
would remove `..` segments and decode `%2e` before sending.
"""

from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.components import RegistryProcess
from tests.oci_http import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_MANIFEST,
    OCTET_STREAM,
    TIMEOUT,
    PushedImage,
    RawResponse,
    descriptor,
    digest,
    dumps,
    error_code,
    image_manifest,
    push_blob,
    push_image,
    raw_request,
    start_upload,
)

HEX = "a" * 64
VALID_DIGEST = f"sha256:{HEX}"


@pytest.fixture
def url(registry: RegistryProcess) -> str:
    return registry.url


def _files_under(directory: Path) -> set[str]:
    if not directory.exists():
        return set()
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


def _assert_oci_error(response: RawResponse, status: int, code: str) -> None:
    assert response.status == status, response.body[:300]
    assert response.error_code() == code
    assert response.headers["Docker-Distribution-API-Version"] == "registry/2.0"


def _head_until_close(url: str, target: str) -> tuple[int, bytes]:
    """HEAD `target` on a raw socket: the status, and whatever follows the headers (nothing,
    if the server sends no body; http.client would drop such bytes unseen)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    request = f"HEAD {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(request.encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def _assert_nothing_stored(root: Path, name: str, *digests: str) -> None:
    assert _files_under(root / "blobs") == set()
    assert _files_under(root / name / "blobs") == set()
    assert _files_under(root / ".cache-action" / "uploads") == set()
    for blob in digests:
        hex_part = blob.split(":")[1]
        assert list(root.rglob(f"*{hex_part}*")) == []


# --- repository names ----------------------------------------------------------------------

BAD_NAMES = [
    "Upper",
    "upper/Case",
    "..",
    ".",
    "a/..",
    "a/../b",
    "a/./b",
    ".hidden",
    "a/.hidden",
    ".cache-action",
    "a/",
    "a//b",
    "-a",
    "a-",
    "a_",
    "_a",
    "a___b",
    "a.-b",
    "a..b",
    "blobs",
    "a/blobs",
    "blobs/sha256",
    "index.json",
    "a/index.json",
    "oci-layout",
    "a/oci-layout",
    "a/ingest",
    "x" * 256,
    "a/" * 127 + "bb",
    "a b",
    "a\x00b",
    "a\\b",
    "a:b",
    "a@b",
    "caf\u00e9",
]


def _encode_name(name: str) -> str:
    """Percent-encode only what HTTP cannot carry; dots and slashes go out as they are."""
    return "".join(
        c if c.isascii() and c.isprintable() and c not in " %?#" else _pct(c) for c in name
    )


def _pct(character: str) -> str:
    return "".join(f"%{byte:02X}" for byte in character.encode())


@pytest.mark.parametrize("name", BAD_NAMES, ids=lambda n: repr(n)[1:-1][:40])
def test_malformed_repository_name(url: str, registry: RegistryProcess, name: str) -> None:
    encoded = _encode_name(name)
    manifest = image_manifest(b"{}", [])
    calls: list[tuple[str, str, bytes | None]] = [
        ("GET", f"/v2/{encoded}/tags/list", None),
        ("GET", f"/v2/{encoded}/manifests/latest", None),
        ("PUT", f"/v2/{encoded}/manifests/latest", manifest),
        ("DELETE", f"/v2/{encoded}/manifests/latest", None),
        ("GET", f"/v2/{encoded}/blobs/{VALID_DIGEST}", None),
        ("DELETE", f"/v2/{encoded}/blobs/{VALID_DIGEST}", None),
        ("POST", f"/v2/{encoded}/blobs/uploads/", None),
        ("POST", f"/v2/{encoded}/blobs/uploads/?digest={digest(b'x')}", b"x"),
        ("POST", f"/v2/{encoded}/blobs/uploads/?mount={VALID_DIGEST}&from=a", None),
        ("GET", f"/v2/{encoded}/blobs/uploads/{'0' * 8}", None),
        ("GET", f"/v2/{encoded}/referrers/{VALID_DIGEST}", None),
    ]
    for method, target, body in calls:
        headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
        response = raw_request(url, method, target, body=body, headers=headers)
        assert response.status == 400, (method, target, response.body[:300])
        assert response.error_code() == "NAME_INVALID", (method, target)
    assert _files_under(registry.root) - {".cache-action/lock"} == set()
    assert sorted(p.name for p in registry.root.iterdir()) == [".cache-action"]


def test_head_with_malformed_name_is_400_without_body(url: str) -> None:
    response = raw_request(url, "HEAD", f"/v2/Upper/blobs/{VALID_DIGEST}")
    assert response.status == 400
    assert response.body == b""
    manifest = raw_request(url, "HEAD", "/v2/a/../b/manifests/latest")
    assert manifest.status == 400


@pytest.mark.parametrize(
    "name", ["a__b", "a-----b", "a.b_c-d/e0", "0/1/2/3/4/5/6/7/8/9", "x" * 255, "ab/" * 84 + "abc"]
)
def test_unusual_but_valid_repository_names_are_accepted(url: str, name: str) -> None:
    assert len(name) <= 255
    data = b"valid name"
    response = requests.post(
        f"{url}/v2/{name}/blobs/uploads/", params={"digest": digest(data)}, data=data, timeout=30
    )
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v2/{name}/blobs/{digest(data)}"
    tags = requests.get(f"{url}/v2/{name}/tags/list", timeout=TIMEOUT)
    assert tags.json() == {"name": name, "tags": []}


def test_very_long_request_line_is_rejected(url: str) -> None:
    response = raw_request(url, "GET", "/v2/" + "a" * 9000 + "/tags/list")
    assert response.status == 400
    assert raw_request(url, "GET", "/v2/").status == 200


# --- tags and references -------------------------------------------------------------------

BAD_TAGS = [
    "-lead",
    ".lead",
    ".INVALID_MANIFEST_NAME",  # what the conformance suite probes with
    "a" * 129,
    "t%20s",
    "t+s",
    "t~s",
    "caf%C3%A9",
    "a%2Fb",
    "..",
    ".",
]


@pytest.fixture
def image(url: str) -> PushedImage:
    return push_image(url, "repo", "latest")


@pytest.mark.parametrize("tag", BAD_TAGS)
def test_malformed_tag_is_refused_on_put_and_delete(url: str, image: PushedImage, tag: str) -> None:
    put = raw_request(
        url,
        "PUT",
        f"/v2/repo/manifests/{tag}",
        body=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
    )
    _assert_oci_error(put, 400, "MANIFEST_INVALID")
    delete = raw_request(url, "DELETE", f"/v2/repo/manifests/{tag}")
    _assert_oci_error(delete, 400, "MANIFEST_INVALID")
    tags = requests.get(f"{url}/v2/repo/tags/list", timeout=TIMEOUT)
    assert tags.json()["tags"] == ["latest"]


def test_longest_valid_tag_is_accepted(url: str, image: PushedImage) -> None:
    tag = "_" + "a.b-c" * 25 + "x" * 2
    assert len(tag) == 128
    put = requests.put(
        f"{url}/v2/repo/manifests/{tag}",
        data=image.manifest,
        headers={"Content-Type": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    assert put.status_code == 201
    assert requests.get(f"{url}/v2/repo/manifests/{tag}", timeout=TIMEOUT).content == (
        image.manifest
    )


def test_empty_reference_is_not_an_endpoint(url: str, image: PushedImage) -> None:
    response = raw_request(url, "GET", "/v2/repo/manifests/")
    _assert_oci_error(response, 404, "NAME_UNKNOWN")


# --- digests -------------------------------------------------------------------------------

BAD_DIGESTS = [
    "sha256:totallywrong",
    "sha256:" + "A" * 64,
    "SHA256:" + HEX,
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "g" * 64,
    "sha512:" + HEX,
    "sha256:",
    ":" + HEX,
    "sha256::" + HEX,
    "sha256:..%2F..%2F..%2Fetc%2Fpasswd",
    "sha256:" + HEX + "%0A",
    "sha256:" + HEX + "%20",
]
# Well formed in the image-spec grammar, which asks unknown algorithms to pass validation, but
# not sha256 or sha512: nothing can be stored under them, so a read finds nothing.
UNSUPPORTED_DIGESTS = [
    "md5:" + "d41d8cd98f00b204e9800998ecf8427e",
    "sha1:" + "a" * 40,
    "sha384:" + "a" * 96,
    "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
]


def _digest_writes(
    location: str, digest_text: str, manifest: bytes
) -> list[tuple[str, str, bytes | None]]:
    """Every request that writes or deletes by a client-given digest."""
    return [
        ("DELETE", f"/v2/repo/blobs/{digest_text}", None),
        ("PUT", f"/v2/repo/manifests/{digest_text}", manifest),
        ("DELETE", f"/v2/repo/manifests/{digest_text}", None),
        ("POST", f"/v2/repo/blobs/uploads/?digest={digest_text}", b"data"),
        ("PUT", f"{location}?digest={digest_text}", b"data"),
    ]


@pytest.mark.parametrize("bad", BAD_DIGESTS, ids=lambda d: d[:24])
def test_malformed_digest(
    url: str, registry: RegistryProcess, image: PushedImage, bad: str
) -> None:
    location = start_upload(url, "repo").removeprefix(url)
    calls = [
        *_digest_writes(location, bad, image.manifest),
        ("GET", f"/v2/repo/blobs/{bad}", None),
        ("GET", f"/v2/nosuchrepo/blobs/{bad}", None),  # malformed is 400 in any repository
        ("GET", f"/v2/repo/referrers/{bad}", None),
        ("GET", f"/v2/nosuchrepo/referrers/{bad}", None),
    ]
    for method, target, body in calls:
        headers = {"Content-Type": OCI_MANIFEST} if "manifests" in target else {}
        response = raw_request(url, method, target, body=body, headers=headers)
        assert response.status == 400, (method, target, response.body[:300])
        assert response.error_code() == "DIGEST_INVALID", (method, target)
    for name in ("repo", "nosuchrepo"):
        assert _head_until_close(url, f"/v2/{name}/blobs/{bad}") == (400, b"")
    # A malformed mount digest is an ordinary upload, as if no mount had been asked for.
    mount = raw_request(url, "POST", f"/v2/repo/blobs/uploads/?mount={bad}&from=repo")
    assert mount.status == 202
    assert mount.headers["Location"].startswith("/v2/repo/blobs/uploads/")
    # The rejected PUT left the session usable.
    status = raw_request(url, "GET", location)
    assert status.status == 204
    assert status.headers["Range"] == "0-0"


@pytest.mark.parametrize("unsupported", UNSUPPORTED_DIGESTS, ids=lambda d: d.split(":")[0])
def test_digest_of_an_unsupported_algorithm(
    url: str, registry: RegistryProcess, image: PushedImage, unsupported: str
) -> None:
    """Reads by it are well formed and find nothing; writes by it are refused, unverifiable."""
    for name in ("repo", "nosuchrepo"):
        target = f"/v2/{name}/blobs/{unsupported}"
        _assert_oci_error(raw_request(url, "GET", target), 404, "BLOB_UNKNOWN")
        assert _head_until_close(url, target) == (404, b""), target
        referrers = raw_request(url, "GET", f"/v2/{name}/referrers/{unsupported}")
        assert referrers.status == 200, referrers.body[:300]
        assert referrers.json() == {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    location = start_upload(url, "repo").removeprefix(url)
    for method, target, body in _digest_writes(location, unsupported, image.manifest):
        headers = {"Content-Type": OCI_MANIFEST} if "manifests" in target else {}
        response = raw_request(url, method, target, body=body, headers=headers)
        _assert_oci_error(response, 400, "DIGEST_INVALID")
    encoded = unsupported.split(":")[1]
    assert [p for p in registry.root.rglob("*") if encoded in p.name] == []
    assert requests.get(f"{url}/v2/repo/manifests/latest", timeout=TIMEOUT).ok


@pytest.mark.parametrize("bad", ["sha256", "latest-ish", "0" * 64], ids=["alg", "word", "hex"])
def test_blob_route_requires_a_digest(url: str, image: PushedImage, bad: str) -> None:
    response = raw_request(url, "GET", f"/v2/repo/blobs/{bad}")
    _assert_oci_error(response, 400, "DIGEST_INVALID")


# --- GET and HEAD by a reference that cannot exist -----------------------------------------


@pytest.mark.parametrize(
    "reference", [*BAD_TAGS, *BAD_DIGESTS, *UNSUPPORTED_DIGESTS], ids=lambda r: r[:24]
)
def test_pull_by_a_reference_that_cannot_exist_is_unknown(
    url: str, registry: RegistryProcess, image: PushedImage, reference: str
) -> None:
    """Neither a tag nor a digest we store: GET and HEAD find nothing (404), read nothing."""
    before = _files_under(registry.root)
    for name, code in [("repo", "MANIFEST_UNKNOWN"), ("nosuchrepo", "NAME_UNKNOWN")]:
        target = f"/v2/{name}/manifests/{reference}"
        _assert_oci_error(raw_request(url, "GET", target), 404, code)
        assert _head_until_close(url, target) == (404, b""), target
    assert _files_under(registry.root) == before


# --- Range on blob GET ---------------------------------------------------------------------

BLOB = bytes(range(256)) * 4


@pytest.fixture
def blob(url: str) -> str:
    return push_blob(url, "ranges", BLOB)


def _get_range(url: str, blob: str, value: str, method: str = "GET") -> requests.Response:
    return requests.request(
        method, f"{url}/v2/ranges/blobs/{blob}", headers={"Range": value}, timeout=TIMEOUT
    )


@pytest.mark.parametrize(
    "value", ["bytes=abc", "bytes=-", "bytes=5-2", "bytes=1024-", "bytes=99999999999999999999-"]
)
def test_malformed_or_unsatisfiable_range_is_416(url: str, blob: str, value: str) -> None:
    response = _get_range(url, blob, value)
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */1024"
    assert response.content == b""


def test_zero_length_suffix_range_is_unsatisfiable(url: str, blob: str) -> None:
    """RFC 9110 14.1.2: a suffix-range is satisfiable only with a non-zero suffix-length."""
    response = _get_range(url, blob, "bytes=-0")
    assert response.status_code == 416
    assert response.headers["Content-Range"] == "bytes */1024"


@pytest.mark.parametrize("value", ["items=0-5", "lines=1-2"])
def test_range_with_an_unknown_unit_is_ignored(url: str, blob: str, value: str) -> None:
    """RFC 9110 14.2: an origin server MUST ignore a Range header with a unit it does not know."""
    response = _get_range(url, blob, value)
    assert response.status_code == 200
    assert response.content == BLOB
    assert "Content-Range" not in response.headers


def test_satisfiable_multi_range_is_not_416(url: str, blob: str) -> None:
    """A server may ignore a multi-range (200) or answer multipart (206), never 416 for it."""
    response = _get_range(url, blob, "bytes=0-1,5-6")
    if response.status_code == 206:
        assert response.headers["Content-Type"].startswith("multipart/byteranges")
    else:
        assert response.status_code == 200
        assert response.content == BLOB


def test_range_on_head_is_ignored(url: str, blob: str) -> None:
    """RFC 9110 14.2: range handling is defined for GET only; HEAD answers like a plain HEAD."""
    response = _get_range(url, blob, "bytes=0-9", method="HEAD")
    assert response.status_code == 200
    assert response.headers["Content-Length"] == "1024"
    assert "Content-Range" not in response.headers


def test_range_on_the_empty_blob_is_416(url: str) -> None:
    empty = push_blob(url, "ranges", b"")
    for value in ("bytes=0-", "bytes=0-0", "bytes=-1"):
        response = _get_range(url, empty, value)
        assert response.status_code == 416, value
        assert response.headers["Content-Range"] == "bytes */0"


# --- Content-Range on PATCH ----------------------------------------------------------------


def _patch(location: str, data: Any, headers: dict[str, str]) -> requests.Response:
    return requests.patch(
        location, data=data, headers={"Content-Type": OCTET_STREAM, **headers}, timeout=TIMEOUT
    )


def _finish_cleanly(url: str, location: str, prefix: bytes) -> None:
    """After a rejected chunk the session still holds exactly `prefix` and can complete."""
    status = requests.get(location, timeout=TIMEOUT)
    assert status.status_code == 204
    assert status.headers["Range"] == f"0-{max(len(prefix) - 1, 0)}"
    tail = b"tail bytes"
    put = requests.put(
        location, params={"digest": digest(prefix + tail)}, data=tail, timeout=TIMEOUT
    )
    assert put.status_code == 201, put.text
    blob = requests.get(f"{url}{put.headers['Location']}", timeout=TIMEOUT)
    assert blob.content == prefix + tail


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "0-",
        "-9",
        "0-9/10",
        "bytes 0-9/10",
        "0 - 9",
        "0--9",
        "",
        "0-99999999999999999999",
        # Arabic-Indic digits for 10-19 are not `10-19`: only ASCII digits make a Content-Range.
        "\u0661\u0660-\u0661\u0669".encode(),
    ],
)
def test_malformed_content_range(url: str, value: str | bytes) -> None:
    location = start_upload(url, "chunks")
    first = b"0123456789"
    assert _patch(location, first, {"Content-Range": "0-9"}).status_code == 202
    raw = raw_request(
        url,
        "PATCH",
        location.removeprefix(url),
        body=b"x" * 10,
        headers={"Content-Range": value, "Content-Type": OCTET_STREAM},
    )
    _assert_oci_error(raw, 400, "BLOB_UPLOAD_INVALID")
    _finish_cleanly(url, location, first)


@pytest.mark.parametrize("value", ["9-0", "5-14", "11-20", "0-9"])
def test_content_range_that_does_not_continue_the_upload_is_416(url: str, value: str) -> None:
    location = start_upload(url, "chunks")
    first = b"0123456789"
    assert _patch(location, first, {"Content-Range": "0-9"}).status_code == 202
    start, end = (int(x) for x in value.split("-"))
    response = _patch(location, b"y" * max(end - start + 1, 1), {"Content-Range": value})
    assert response.status_code == 416
    assert error_code(response) == "BLOB_UPLOAD_INVALID"
    _finish_cleanly(url, location, first)


def test_content_length_disagreeing_with_content_range(url: str) -> None:
    location = start_upload(url, "chunks")
    response = _patch(location, b"short", {"Content-Range": "0-9"})
    assert response.status_code == 400
    assert error_code(response) == "SIZE_INVALID"
    _finish_cleanly(url, location, b"")


@pytest.mark.parametrize("body_size", [5, 20])
def test_streamed_chunk_of_the_wrong_size_is_rolled_back(url: str, body_size: int) -> None:
    location = start_upload(url, "chunks")
    first = b"first"
    assert _patch(location, first, {"Content-Range": "0-4"}).status_code == 202
    chunk = b"z" * body_size
    response = _patch(location, iter([chunk[:3], chunk[3:]]), {"Content-Range": "5-14"})
    assert response.request.headers["Transfer-Encoding"] == "chunked"
    assert response.status_code == 400
    assert error_code(response) == "SIZE_INVALID"
    _finish_cleanly(url, location, first)


# --- digest checks on upload ---------------------------------------------------------------


def test_put_with_mismatched_digest_stores_nothing(url: str, registry: RegistryProcess) -> None:
    data, claimed = b"the real bytes", b"what the client claims"
    location = start_upload(url, "mismatch")
    response = requests.put(
        location, params={"digest": digest(claimed)}, data=data, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    for blob in (digest(data), digest(claimed)):
        head = requests.head(f"{url}/v2/mismatch/blobs/{blob}", timeout=TIMEOUT)
        assert head.status_code == 404
    _assert_nothing_stored(registry.root, "mismatch", digest(data), digest(claimed))


def test_post_with_mismatched_digest_stores_nothing(url: str, registry: RegistryProcess) -> None:
    data, claimed = b"the real bytes", b"what the client claims"
    response = requests.post(
        f"{url}/v2/mismatch/blobs/uploads/",
        params={"digest": digest(claimed)},
        data=data,
        timeout=TIMEOUT,
    )
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    for blob in (digest(data), digest(claimed)):
        head = requests.head(f"{url}/v2/mismatch/blobs/{blob}", timeout=TIMEOUT)
        assert head.status_code == 404
    _assert_nothing_stored(registry.root, "mismatch", digest(data), digest(claimed))


def test_chunked_upload_finished_with_the_wrong_digest(url: str, registry: RegistryProcess) -> None:
    location = start_upload(url, "mismatch")
    assert _patch(location, b"chunk", {"Content-Range": "0-4"}).status_code == 202
    response = requests.put(location, params={"digest": digest(b"other")}, timeout=TIMEOUT)
    assert response.status_code == 400
    assert error_code(response) == "DIGEST_INVALID"
    _assert_nothing_stored(registry.root, "mismatch", digest(b"chunk"), digest(b"other"))


@pytest.mark.parametrize("query", ["", "?digest=", "?digest", "?other=1"])
def test_put_without_digest(url: str, registry: RegistryProcess, query: str) -> None:
    location = start_upload(url, "nodigest")
    data = b"bytes waiting for a digest"
    response = raw_request(url, "PUT", location.removeprefix(url) + query, body=data)
    _assert_oci_error(response, 400, "DIGEST_INVALID")
    assert _files_under(registry.root / "blobs") == set()
    assert _files_under(registry.root / "nodigest" / "blobs") == set()
    assert (
        requests.head(f"{url}/v2/nodigest/blobs/{digest(data)}", timeout=TIMEOUT).status_code == 404
    )
    # The session was left as it was: nothing of the rejected body was appended.
    _finish_cleanly(url, location, b"")


def test_put_to_an_unknown_session(url: str) -> None:
    response = requests.put(
        f"{url}/v2/repo/blobs/uploads/not-a-session",
        params={"digest": digest(b"x")},
        data=b"x",
        timeout=TIMEOUT,
    )
    assert response.status_code == 404
    assert error_code(response) == "BLOB_UPLOAD_UNKNOWN"


# --- manifest bodies -----------------------------------------------------------------------

CONFIG = dumps({"os": "linux"})
GOOD_CONFIG = descriptor(OCI_CONFIG, CONFIG)


def _manifest(**changes: Any) -> bytes:
    document: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": GOOD_CONFIG,
        "layers": [],
    }
    for key, value in changes.items():
        if value is None:
            document.pop(key)
        else:
            document[key] = value
    return dumps(document)


BAD_MANIFESTS: dict[str, bytes] = {
    "empty body": b"",
    "not json": b"this is not json",
    "truncated json": _manifest()[:-1],
    "invalid utf-8": b'{"schemaVersion":2,"x":"\xff\xfe"}',
    "json array": b"[]",
    "json string": b'"manifest"',
    "json null": b"null",
    "no schemaVersion": _manifest(schemaVersion=None),
    "schemaVersion 1": _manifest(schemaVersion=1),
    "schemaVersion string": _manifest(schemaVersion="2"),
    "no config": _manifest(config=None),
    "config not an object": _manifest(config="sha256:x"),
    "layers not a list": _manifest(layers={"a": 1}),
    "layer not an object": _manifest(layers=[7]),
    "descriptor without digest": _manifest(config={"mediaType": OCI_CONFIG, "size": 2}),
    "descriptor without mediaType": _manifest(config={"digest": digest(CONFIG), "size": 2}),
    "descriptor with bad digest": _manifest(config={**GOOD_CONFIG, "digest": "sha256:nothex"}),
    "descriptor with uppercase digest": _manifest(
        config={**GOOD_CONFIG, "digest": digest(CONFIG).upper()}
    ),
    "negative size": _manifest(config={**GOOD_CONFIG, "size": -1}),
    "size as string": _manifest(config={**GOOD_CONFIG, "size": "13"}),
    "size as bool": _manifest(config={**GOOD_CONFIG, "size": True}),
    "size as float": _manifest(config={**GOOD_CONFIG, "size": 13.5}),
    "annotations not an object": _manifest(annotations=["a"]),
    "mediaType not a string": _manifest(mediaType=5),
    "subject not a descriptor": _manifest(subject="sha256:" + HEX),
    "index without manifests list": dumps(
        {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": {}}
    ),
    "deeply nested json": b'{"schemaVersion":2,"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_malformed_manifest(url: str, registry: RegistryProcess, case: str) -> None:
    push_blob(url, "badmanifest", CONFIG)
    body = BAD_MANIFESTS[case]
    media_type = OCI_INDEX if case.startswith("index") else OCI_MANIFEST
    response = requests.put(
        f"{url}/v2/badmanifest/manifests/latest",
        data=body,
        headers={"Content-Type": media_type},
        timeout=TIMEOUT,
    )
    assert response.status_code == 400, response.text[:300]
    assert error_code(response) == "MANIFEST_INVALID"
    get = requests.get(f"{url}/v2/badmanifest/manifests/latest", timeout=TIMEOUT)
    assert get.status_code == 404
    assert _files_under(registry.root / "badmanifest" / "blobs") == {
        f"sha256/{digest(CONFIG).split(':')[1]}"
    }


def test_manifest_media_type_header_with_parameters(url: str) -> None:
    push_blob(url, "params", CONFIG)
    body = _manifest()
    response = requests.put(
        f"{url}/v2/params/manifests/latest",
        data=body,
        headers={"Content-Type": f"{OCI_MANIFEST}; charset=utf-8"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 201
    get = requests.get(f"{url}/v2/params/manifests/latest", timeout=TIMEOUT)
    assert get.headers["Content-Type"] == OCI_MANIFEST


def _peak_rss_mib(registry: RegistryProcess) -> int:
    assert registry.process is not None
    status = Path(f"/proc/{registry.process.pid}/status").read_text()
    line = next(line for line in status.splitlines() if line.startswith("VmHWM:"))
    return int(line.split()[1]) // 1024


@pytest.mark.parametrize("method", ["GET", "HEAD", "DELETE"])
def test_manifest_request_naming_a_large_layer_does_not_load_it(
    url: str, registry: RegistryProcess, method: str
) -> None:
    """A manifest is at most 4 MiB: a layer digest on /manifests/ must not be read into memory."""
    layer = os.urandom(64 * 1024 * 1024)
    layer_digest = push_blob(url, "biglayer", layer)
    before = _peak_rss_mib(registry)
    response = requests.request(
        method, f"{url}/v2/biglayer/manifests/{layer_digest}", timeout=TIMEOUT
    )
    assert response.status_code == 404
    grown = _peak_rss_mib(registry) - before
    assert grown < 16, f"peak RSS grew by {grown} MiB serving {method} /manifests/<layer>"
    assert requests.head(f"{url}/v2/biglayer/blobs/{layer_digest}", timeout=TIMEOUT).ok


# --- tags list query -----------------------------------------------------------------------


@pytest.mark.parametrize("n", ["%C2%B2", "%D9%A3", "1e3", "%201", "99999999999"])
def test_tags_list_unusual_n(url: str, image: PushedImage, n: str) -> None:
    """Only ASCII digits make a page size; anything else is 400, never a crash."""
    for name in ("repo", "nosuchrepo"):
        response = raw_request(url, "GET", f"/v2/{name}/tags/list?n={n}")
        _assert_oci_error(response, 400, "PAGINATION_NUMBER_INVALID")


# --- path traversal ------------------------------------------------------------------------

SENTINEL = b"SENTINEL: this file lives outside the registry root"


@pytest.fixture
def outside(registry: RegistryProcess) -> dict[str, Any]:
    """A complete OCI layout next to the root, as if it were a repository named `../outside`."""
    directory = registry.root.parent / "outside"
    blobs = directory / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    secret = SENTINEL * 3
    manifest = image_manifest(secret, [])
    for data in (secret, manifest):
        (blobs / digest(data).split(":")[1]).write_bytes(data)
    entry = descriptor(
        OCI_MANIFEST, manifest, annotations={"org.opencontainers.image.ref.name": "secret"}
    )
    (directory / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (directory / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [entry]}))
    (registry.root.parent / "secret.txt").write_bytes(SENTINEL)
    return {
        "dir": directory,
        "secret": digest(secret),
        "manifest": digest(manifest),
        "files": _outside_root(registry),
    }


def _outside_root(registry: RegistryProcess) -> set[str]:
    """Files next to the root (the sentinel layout, secret.txt, the log): none may change."""
    return _files_under(registry.root.parent) - {
        f"{registry.root.name}/{f}" for f in _files_under(registry.root)
    }


def _traversal_names(registry: RegistryProcess) -> list[str]:
    absolute = str(registry.root.parent / "outside")
    return [
        "../outside",
        "%2e%2e/outside",
        "%2E%2E/outside",
        ".%2e/outside",
        "..%2Foutside",
        "..%2foutside",
        "%2e%2e%2foutside",
        "a/../../outside",
        "a/..%2F..%2Foutside",
        "a/%2e%2e/%2e%2e/outside",
        "%252e%252e/outside",
        "..%5Coutside",
        "/" + absolute.lstrip("/"),
        "%2F" + absolute.lstrip("/").replace("/", "%2F"),
        "../" * len(registry.root.parts) + absolute.lstrip("/"),
    ]


def _assert_refused(response: RawResponse, what: str) -> None:
    assert 400 <= response.status < 500, (what, response.status, response.body[:300])
    assert SENTINEL not in response.body, what
    assert b'["secret"]' not in response.body, what


def test_traversal_in_repository_names_reads_nothing(
    url: str, registry: RegistryProcess, outside: dict[str, Any]
) -> None:
    for name in _traversal_names(registry):
        for method, target in [
            ("GET", f"/v2/{name}/blobs/{outside['secret']}"),
            ("HEAD", f"/v2/{name}/blobs/{outside['secret']}"),
            ("GET", f"/v2/{name}/manifests/secret"),
            ("HEAD", f"/v2/{name}/manifests/secret"),
            ("GET", f"/v2/{name}/manifests/{outside['manifest']}"),
            ("GET", f"/v2/{name}/tags/list"),
            ("GET", f"/v2/{name}/referrers/{outside['secret']}"),
        ]:
            response = raw_request(url, method, target)
            _assert_refused(response, f"{method} {target}")
            assert response.status == 400, (method, target)
            if method == "GET":
                assert response.error_code() == "NAME_INVALID", (method, target)
    assert _outside_root(registry) == outside["files"]


def test_traversal_in_repository_names_writes_nothing(
    url: str, registry: RegistryProcess, outside: dict[str, Any]
) -> None:
    config = dumps({"os": "linux"})
    manifest = image_manifest(config, [])
    for name in _traversal_names(registry):
        for method, target, body in [
            ("POST", f"/v2/{name}/blobs/uploads/", None),
            ("POST", f"/v2/{name}/blobs/uploads/?digest={digest(config)}", config),
            ("POST", f"/v2/{name}/blobs/uploads/?mount={outside['secret']}&from=repo", None),
            ("PUT", f"/v2/{name}/manifests/pwned", manifest),
            ("PUT", f"/v2/{name}/manifests/{digest(manifest)}", manifest),
            ("DELETE", f"/v2/{name}/manifests/secret", None),
            ("DELETE", f"/v2/{name}/manifests/{outside['manifest']}", None),
            ("DELETE", f"/v2/{name}/blobs/{outside['secret']}", None),
        ]:
            headers = {"Content-Type": OCI_MANIFEST} if method == "PUT" else {}
            response = raw_request(url, method, target, body=body, headers=headers)
            _assert_refused(response, f"{method} {target}")
            _assert_oci_error(response, 400, "NAME_INVALID")
    assert _outside_root(registry) == outside["files"]
    index = json.loads((outside["dir"] / "index.json").read_text())
    assert [entry["annotations"] for entry in index["manifests"]] == [
        {"org.opencontainers.image.ref.name": "secret"}
    ]
    assert (registry.root.parent / "secret.txt").read_bytes() == SENTINEL
    assert sorted(p.name for p in registry.root.iterdir()) == [".cache-action"]


def test_traversal_in_digests_sessions_and_references(
    url: str, registry: RegistryProcess, outside: dict[str, Any], image: PushedImage
) -> None:
    up = "..%2F..%2F..%2Fsecret.txt"
    into_outside = f"..%2F..%2Foutside%2Fblobs%2Fsha256%2F{outside['secret'].split(':')[1]}"
    cases: list[tuple[str, str, int, str]] = [
        ("GET", f"/v2/repo/blobs/{up}", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/repo/blobs/sha256:{up}", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/repo/blobs/sha256:{into_outside}", 400, "DIGEST_INVALID"),
        ("DELETE", f"/v2/repo/blobs/sha256:{up}", 400, "DIGEST_INVALID"),
        ("GET", f"/v2/repo/referrers/sha256:{up}", 400, "DIGEST_INVALID"),
        ("GET", "/v2/repo/manifests/..%2F..%2F..%2Foutside%2Findex.json", 404, "MANIFEST_UNKNOWN"),
        ("GET", "/v2/repo/manifests/%2e%2e", 404, "MANIFEST_UNKNOWN"),
        ("GET", f"/v2/repo/manifests/sha256:{into_outside}", 404, "MANIFEST_UNKNOWN"),
        ("DELETE", f"/v2/repo/manifests/{up}", 400, "MANIFEST_INVALID"),
        ("PUT", f"/v2/repo/manifests/{up}", 400, "MANIFEST_INVALID"),
        ("GET", f"/v2/repo/blobs/uploads/{up}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PATCH", f"/v2/repo/blobs/uploads/{up}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("PUT", f"/v2/repo/blobs/uploads/{up}?digest={VALID_DIGEST}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", f"/v2/repo/blobs/uploads/{up}", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "/v2/repo/blobs/uploads/..%2F..%2Flock", 404, "BLOB_UPLOAD_UNKNOWN"),
        ("DELETE", "/v2/repo/blobs/uploads/..", 404, "BLOB_UPLOAD_UNKNOWN"),
    ]
    for method, target, status, code in cases:
        body = None if method == "GET" else image.manifest
        headers = {"Content-Type": OCI_MANIFEST} if "manifests" in target else {}
        response = raw_request(url, method, target, body=body, headers=headers)
        _assert_refused(response, f"{method} {target}")
        _assert_oci_error(response, status, code)
    assert (registry.root.parent / "secret.txt").read_bytes() == SENTINEL
    assert (registry.root / ".cache-action" / "lock").exists()
    assert _outside_root(registry) == outside["files"]


@pytest.mark.parametrize("source", ["../outside", "%2e%2e%2Foutside", "..%2Foutside", "/tmp"])
def test_mount_from_a_traversal_name_mounts_nothing(
    url: str, registry: RegistryProcess, outside: dict[str, Any], image: PushedImage, source: str
) -> None:
    secret = outside["secret"]
    response = raw_request(url, "POST", f"/v2/repo/blobs/uploads/?mount={secret}&from={source}")
    assert response.status == 202
    assert response.headers["Location"].startswith("/v2/repo/blobs/uploads/")
    assert raw_request(url, "HEAD", f"/v2/repo/blobs/{secret}").status == 404
    assert list(registry.root.rglob(secret.split(":")[1])) == []


def test_the_literal_etc_passwd_attempts(url: str) -> None:
    for target in (
        "/v2/../../etc/passwd",
        "/v2/%2e%2e/%2e%2e/etc/passwd",
        "/v2/..%2F..%2Fetc%2Fpasswd",
        "/../../etc/passwd",
        "/v2/../../etc/passwd/tags/list",
    ):
        response = raw_request(url, "GET", target)
        assert 400 <= response.status < 500, target
        assert b"root:" not in response.body, target
        response.error_code()


def test_encoded_slash_names_the_same_nested_repository(url: str) -> None:
    push_image(url, "a/b", "latest")
    encoded = raw_request(url, "GET", "/v2/a%2Fb/tags/list")
    assert encoded.status == 200
    assert encoded.json() == {"name": "a/b", "tags": ["latest"]}
    for target in ("/v2/a%2F/tags/list", "/v2/%2Fa/tags/list", "/v2/a%2F%2Fb/tags/list"):
        _assert_oci_error(raw_request(url, "GET", target), 400, "NAME_INVALID")


# --- the HTTP layer itself -----------------------------------------------------------------


def _raw_exchange(url: str, payload: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(payload)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks):
                break
    return b"".join(chunks)


@pytest.mark.parametrize(
    "payload",
    [
        b"THIS IS NOT HTTP\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32) + b"\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nBad Header Without Colon\r\n\r\n",
        b"GET /v2/\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    ],
    ids=["junk", "tls-hello", "bad-length", "double-length", "no-colon", "nul"],
)
def test_junk_on_the_wire_gets_400(url: str, payload: bytes) -> None:
    answer = _raw_exchange(url, payload)
    assert re.match(rb"HTTP/1\.[01] 400 ", answer), answer[:200]
    assert requests.get(f"{url}/v2/", timeout=TIMEOUT).status_code == 200


@pytest.mark.parametrize("method", ["OPTIONS", "PATCH", "PUT"])
def test_method_not_allowed_is_405(url: str, method: str) -> None:
    response = raw_request(url, method, "/v2/")
    _assert_oci_error(response, 405, "UNSUPPORTED")
    assert response.headers["Allow"] == "GET,HEAD"


def test_unknown_method_is_rejected(url: str) -> None:
    response = raw_request(url, "FOO", "/v2/")
    assert response.status in (400, 405, 501)


def test_server_survives_a_client_that_hangs_up_mid_upload(
    url: str, registry: RegistryProcess
) -> None:
    location = start_upload(url, "hangup")
    host, port = url.removeprefix("http://").rsplit(":", 1)
    path = location.removeprefix(url)
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
        sock.sendall(
            f"PATCH {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n".encode()
            + b"partial"
        )
    data = b"after the hang-up"
    response = requests.post(
        f"{url}/v2/hangup/blobs/uploads/", params={"digest": digest(data)}, data=data, timeout=30
    )
    assert response.status_code == 201
    assert registry.process is not None and registry.process.poll() is None
