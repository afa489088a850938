"""The access record (.cache-action/access.json), this run's counters (GET /_cache/stats and
stats.json), and the command line: `stats`, `serve --listen` validation, one server per root."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.buildkit_client import (
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    OCTET_STREAM,
    BuildKit,
    Connection,
    Exchange,
    image_manifest,
    layer_get_headers,
    sha256,
)
from tests.components import RegistryProcess
from tests.oci_http import COUNTERS


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cache_action", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def access_of(root: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((root / ".cache-action" / "access.json").read_bytes())
    return document


def stats_file(root: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads((root / ".cache-action" / "stats.json").read_bytes())
    return document


def counters(document: dict[str, Any]) -> dict[str, int]:
    return {name: document[name] for name in COUNTERS}


def get(connection: Connection, target: str, **headers: str) -> Exchange:
    return connection.request("GET", target, headers)


def push_image(client: BuildKit, repo: str, tag: str, cfg: bytes, layers: list[bytes]) -> bytes:
    for blob in (cfg, *layers):
        assert client.push_blob(repo, blob, OCI_LAYER_GZIP)[-1].status in (200, 201)
    body = image_manifest(cfg, layers)
    assert client.put_manifest(repo, tag, body, OCI_MANIFEST).status == 201
    return body


# --- the access record ---


def test_access_times_move_for_exactly_what_was_touched(registry: RegistryProcess) -> None:
    a, b = os.urandom(3000), os.urandom(4000)
    c1, c2 = b'{"n":1}', b'{"n":2}'
    client = BuildKit(registry.url)
    m1 = push_image(client, "cache", "t1", c1, [a])
    m2 = push_image(client, "cache", "t2", c2, [b])
    assert registry.stop() == 0
    first = access_of(registry.root)
    assert first["version"] == 1
    assert set(first["tags"]) == {"cache:t1", "cache:t2"}
    assert set(first["manifests"]) == {f"cache@{sha256(m1)}", f"cache@{sha256(m2)}"}
    assert set(first["blobs"]) == {sha256(x) for x in (a, b, c1, c2, m1, m2)}

    registry.start()
    time.sleep(0.05)
    started = time.time()
    client = BuildKit(registry.url)
    assert client.resolve("cache", "t1").status == 200
    assert get(client.connection, f"/v2/cache/blobs/{sha256(a)}").status == 200
    assert client.head_blob("cache", sha256(c1), OCI_LAYER_GZIP).status == 200
    assert client.fetch_manifest("cache", sha256(m2), OCI_MANIFEST).status == 200
    assert client.head_blob("cache", sha256(b"absent"), OCI_LAYER_GZIP).status == 404
    assert client.resolve("cache", "nope").status == 404
    finished = time.time()
    assert registry.stop() == 0
    second = access_of(registry.root)

    touched = {
        "tags": {"cache:t1"},
        "manifests": {f"cache@{sha256(m1)}", f"cache@{sha256(m2)}"},
        "blobs": {sha256(m1), sha256(a), sha256(c1), sha256(m2)},
    }
    for section, keys in touched.items():
        assert set(second[section]) == set(first[section]), section
        for key, when in second[section].items():
            if key in keys:
                assert started <= when <= finished, (section, key)
                assert when > first[section][key], (section, key)
            else:
                assert when == first[section][key], (section, key)
    assert counters(stats_file(registry.root)) == {
        "requests": 6,
        "manifest_hits": 2,
        "manifest_misses": 1,
        "blob_hits": 2,
        "blob_misses": 1,
        "blobs_pushed": 0,
        "manifests_pushed": 0,
        "bytes_in": 0,
        "bytes_out": len(a) + len(m2),
        "blobs_fetched": 0,  # nothing was left in a store by a lazy restore
        "bytes_fetched": 0,
    }

    # A run that touches nothing leaves the record as it was.
    saved = (registry.root / ".cache-action" / "access.json").read_bytes()
    registry.start()
    assert registry.stop() == 0
    assert (registry.root / ".cache-action" / "access.json").read_bytes() == saved

    # A later run adds to the loaded record instead of starting over.
    registry.start()
    d = os.urandom(5000)
    m3 = push_image(BuildKit(registry.url), "cache", "t2", c2, [d])
    assert registry.stop() == 0
    third = access_of(registry.root)
    assert set(third["tags"]) == {"cache:t1", "cache:t2"}
    assert third["tags"]["cache:t1"] == second["tags"]["cache:t1"]
    assert third["tags"]["cache:t2"] > second["tags"]["cache:t2"]
    assert set(third["manifests"]) == set(second["manifests"]) | {f"cache@{sha256(m3)}"}
    # The config was already there (HEAD 200 touches it) and d and the manifest are new.
    assert set(third["blobs"]) == set(second["blobs"]) | {sha256(d), sha256(m3)}
    for key in set(second["blobs"]) - {sha256(c2)}:
        assert third["blobs"][key] == second["blobs"][key], key
    assert third["blobs"][sha256(c2)] > second["blobs"][sha256(c2)]


def test_access_record_is_flushed_while_serving(registry: RegistryProcess) -> None:
    path = registry.root / ".cache-action" / "access.json"
    assert not path.exists()
    layer = os.urandom(1000)
    assert BuildKit(registry.url).push_blob("cache", layer, OCI_LAYER_GZIP)[-1].status == 201
    deadline = time.monotonic() + 12  # flushed every 5 seconds while dirty
    while not path.exists():
        assert time.monotonic() < deadline, "access.json was not written while serving"
        time.sleep(0.1)
    assert set(access_of(registry.root)["blobs"]) == {sha256(layer)}
    assert registry.process is not None and registry.process.poll() is None


# --- this run's counters ---


def test_stats_endpoint_counts_requests_hits_misses_and_bytes(registry: RegistryProcess) -> None:
    layer, cfg = os.urandom(70_000), b'{"os":"linux"}'
    manifest = image_manifest(cfg, [layer])
    client = BuildKit(registry.url)
    connection = client.connection
    assert get(connection, "/v2/").status == 200
    assert client.push_blob("cache", layer, OCI_LAYER_GZIP)[-1].status == 201  # HEAD, POST, PUT
    monolithic = connection.request(
        "POST",
        f"/v2/cache/blobs/uploads/?digest={sha256(cfg)}",
        {"Content-Type": OCTET_STREAM},
        cfg,
    )
    assert monolithic.status == 201
    assert client.head_blob("cache", sha256(layer), OCI_LAYER_GZIP).status == 200
    assert get(connection, f"/v2/cache/blobs/{sha256(layer)}").body == layer
    assert client.push_manifest("cache", "t", manifest, OCI_MANIFEST)[-1].status == 201
    assert client.resolve("cache", "t").status == 200
    assert client.fetch_manifest("cache", sha256(manifest), OCI_MANIFEST).body == manifest
    assert get(connection, "/v2/nosuchrepo/manifests/t").status == 404
    assert get(connection, f"/v2/cache/blobs/{sha256(b'nope')}").status == 404

    stats = get(connection, "/_cache/stats")
    assert stats.status == 200
    expected = {
        "requests": 14,
        "manifest_hits": 2,
        "manifest_misses": 2,
        "blob_hits": 2,
        "blob_misses": 2,
        "blobs_pushed": 2,
        "manifests_pushed": 1,
        "bytes_in": len(layer) + len(cfg) + len(manifest),
        "bytes_out": len(layer) + len(manifest),
        "blobs_fetched": 0,
        "bytes_fetched": 0,
    }
    document = json.loads(stats.body)
    assert counters(document) == expected
    assert document["stopped_at"] is None
    assert document["started_at"] <= time.time()

    assert registry.stop() == 0
    saved = stats_file(registry.root)
    assert counters(saved) == {**expected, "requests": 14}
    assert saved["started_at"] == document["started_at"]
    assert saved["stopped_at"] >= saved["started_at"]


def test_stats_bytes_out_counts_only_the_bytes_a_range_request_sends(
    registry: RegistryProcess,
) -> None:
    layer = os.urandom(100_000)
    client = BuildKit(registry.url)
    client.push_blob("cache", layer, OCI_LAYER_GZIP)
    resumed = client.connection.request(
        "GET", f"/v2/cache/blobs/{sha256(layer)}", layer_get_headers(OCI_LAYER_GZIP, 60_000)
    )
    assert (resumed.status, len(resumed.body)) == (206, 40_000)
    stats = json.loads(get(client.connection, "/_cache/stats").body)
    assert stats["bytes_out"] == 40_000


# --- the stats command ---


def test_stats_command_counts_shared_blobs_once(registry: RegistryProcess) -> None:
    shared, one, two = os.urandom(50_000), os.urandom(20_000), os.urandom(30_000)
    cfg_a, cfg_b = b'{"a":1}', b'{"b":2}'
    client = BuildKit(registry.url)
    ma = push_image(client, "cache", "a", cfg_a, [shared, one])
    mb = push_image(client, "cache", "b", cfg_b, [shared, two])
    mx = push_image(client, "org/other", "x", cfg_a, [shared])
    assert registry.stop() == 0
    (registry.root / "blobs" / "sha256" / ".leftover.tmp").write_bytes(b"z" * 999)

    result = run_cli("stats", "--root", str(registry.root))
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    distinct = {sha256(x): x for x in (shared, one, two, cfg_a, cfg_b, ma, mb, mx)}
    assert document == {
        "root": str(registry.root),
        "repositories": {"cache": ["a", "b"], "org/other": ["x"]},
        "blobs": len(distinct),
        "bytes": sum(len(x) for x in distinct.values()),
        "last_run": stats_file(registry.root),
    }
    assert document["last_run"]["manifests_pushed"] == 3


def test_stats_command_on_an_empty_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    result = run_cli("stats", "--root", str(tmp_path / "root"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "root": str(tmp_path / "root"),
        "repositories": {},
        "blobs": 0,
        "bytes": 0,
        "last_run": None,
    }


# --- serve: where it listens, and one server per root ---

LOOPBACK_ONLY = (
    "a loopback address such as 127.0.0.1:5000; beyond loopback the registry needs credentials "
    "(--htpasswd FILE, CACHE_HTPASSWD), or --insecure-no-auth (CACHE_INSECURE_NO_AUTH=true) to "
    "serve anyone who can connect"
)
HOST_PORT = "HOST:PORT with an IP address and a port from 0 to 65535, e.g. 127.0.0.1:5000"


@pytest.mark.parametrize(
    ("listen", "accepted"),
    [
        ("0.0.0.0:5000", LOOPBACK_ONLY),
        ("[::]:5000", LOOPBACK_ONLY),
        ("10.1.2.3:5000", LOOPBACK_ONLY),
        ("127.0.0.1", HOST_PORT),
        ("127.0.0.1:65536", HOST_PORT),
        ("example.com:5000", HOST_PORT),
    ],
)
def test_serve_refuses_a_listen_address_it_does_not_accept(
    tmp_path: Path, listen: str, accepted: str
) -> None:
    result = run_cli("serve", "--root", str(tmp_path / "root"), "--listen", listen)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip() == f"error: --listen: {listen!r} is not valid; expected {accepted}"
    assert not (tmp_path / "root").exists()


def test_second_serve_on_the_same_root_fails_and_leaves_the_first_alone(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    blob = os.urandom(10_000)
    client = BuildKit(registry.url)
    post = client.start_upload("cache")
    location = str(post.header("Location"))
    patch = client.connection.request(
        "PATCH", location, {"Content-Type": OCTET_STREAM}, blob[:4000]
    )
    assert patch.status == 202
    assert registry.process is not None

    ready = tmp_path / "second-ready.json"
    result = run_cli(
        "serve",
        "--root",
        str(registry.root),
        "--listen",
        "127.0.0.1:0",
        "--ready-file",
        str(ready),
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {registry.root} is in use by serve (pid {registry.process.pid}); "
        "stop it before running serve"
    )
    assert not ready.exists()

    # The first server still owns the root: its upload in progress finishes, gc still refuses.
    put = client.put_upload(location, sha256(blob), blob[4000:])
    assert (put.status, put.header("Docker-Content-Digest")) == (201, sha256(blob))
    assert client.head_blob("cache", sha256(blob), OCI_LAYER_GZIP).status == 200
    assert run_cli("gc", "--root", str(registry.root)).returncode == 2
    assert registry.stop() == 0
