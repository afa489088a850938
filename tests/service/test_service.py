"""The standalone service in-process (the image runs the same code): periodic prune and save
while serving must not disturb requests, uploads in progress included."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from cache_action.storage.digests import Digest
from tests.components import RegistryProcess
from tests.prune_helpers import Pusher, access_tags, index_tags, layer, run_cli, set_tag_times

TIMEOUT = 30


def _start(
    tmp_path: Path, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], str, Path]:
    tmp_path.mkdir(exist_ok=True)
    ready = tmp_path / "ready.json"
    store = tmp_path / "store"
    env = {
        **os.environ,
        "CACHE_ROOT": str(tmp_path / "root"),
        "BUILDKIT_CACHE_REPO": f"local://{store}",
        "CACHE_LISTEN": "127.0.0.1:0",
        "CACHE_READY_FILE": str(ready),
        "CACHE_SAVE_INTERVAL": "1s",
        "CACHE_MAX_SIZE": "1B",  # over budget at once: only the last hour's use protects tags
    }
    if settings is not None:
        env.update(settings)
        env.pop("CACHE_MAX_SIZE")
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [sys.executable, "-m", "cache_action", "serve"], env=env, stdout=log, stderr=log
    )
    deadline = time.monotonic() + TIMEOUT
    while not ready.exists():
        assert process.poll() is None, (tmp_path / "service.log").read_text()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return process, "http://" + json.loads(ready.read_text())["address"], store


def test_maintenance_while_serving_keeps_uploads_and_saves(tmp_path: Path) -> None:
    process, url, store = _start(tmp_path)
    try:
        layer = os.urandom(256 * 1024)
        started = requests.post(f"{url}/v2/cache/blobs/uploads/", timeout=TIMEOUT)
        location = url + started.headers["Location"]
        first = requests.patch(location, data=layer[:1000], timeout=TIMEOUT)
        assert first.status_code == 202
        time.sleep(2.5)  # at least two prune + save rounds while the upload is open
        digest = Digest.of(layer)
        done = requests.put(f"{location}?digest={digest}", data=layer[1000:], timeout=TIMEOUT)
        assert done.status_code == 201, done.text
        config = b"{}"
        config_digest = Digest.of(config)
        assert (
            requests.post(
                f"{url}/v2/cache/blobs/uploads/?digest={config_digest}",
                data=config,
                timeout=TIMEOUT,
            ).status_code
            == 201
        )
        manifest = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {
                    "mediaType": "application/vnd.buildkit.cacheconfig.v0",
                    "digest": str(config_digest),
                    "size": len(config),
                },
                "layers": [
                    {
                        "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": str(digest),
                        "size": len(layer),
                    }
                ],
            }
        ).encode()
        pushed = requests.put(
            f"{url}/v2/cache/manifests/main",
            data=manifest,
            headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
            timeout=TIMEOUT,
        )
        assert pushed.status_code == 201
        time.sleep(2.5)  # the tag was used this hour: maintenance keeps it despite the budget
        assert requests.get(f"{url}/v2/cache/blobs/{digest}", timeout=TIMEOUT).content == layer
        entries = sorted((store / "entries").rglob("*.json"))
        assert entries, (tmp_path / "service.log").read_text()
        saved = json.loads(entries[-1].read_bytes())
        assert str(digest) in saved["blobs"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, (tmp_path / "service.log").read_text()
    log = (tmp_path / "service.log").read_text()
    assert log.count("pruned:") >= 3  # periodic rounds and the one at shutdown


def test_what_prune_forgets_while_serving_stays_forgotten(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    """One live access record for the server and maintenance: the server's next flush (or its
    last one, at stop) must not write back the tags prune dropped while it served."""
    pusher = Pusher(registry.url)
    pusher.cache("cache", "old", [layer(2000, "o")])
    pusher.cache("cache", "new", [layer(3000, "n")])
    pusher.close()
    assert registry.stop() == 0
    set_tag_times(registry.root, {"cache:old": time.time() - 30 * 86400})
    store = tmp_path / "store"
    saved = run_cli(
        "save",
        "--root",
        str(registry.root),
        "--store",
        f"local://{store}",
        "--namespace",
        "service",
        "--scope",
        "default",
        "--ref",
        "main",
    )
    assert saved.returncode == 0, saved.stderr

    root = tmp_path / "service-root"
    env = {
        "CACHE_ROOT": str(root),
        "BUILDKIT_CACHE_REPO": f"local://{store}",
        "CACHE_TTL": "7d",
        "CACHE_SAVE_INTERVAL": "1s",
    }
    process, url, _ = _start(tmp_path / "service", env)
    try:
        deadline = time.monotonic() + TIMEOUT
        while (
            "cache:old" in json.loads((root / ".cache-action" / "access.json").read_bytes())["tags"]
        ):
            assert time.monotonic() < deadline, "the periodic prune never dropped cache:old"
            time.sleep(0.2)
        # A request dirties the server's record after the prune; it must flush without "old".
        assert requests.get(f"{url}/v2/cache/manifests/new", timeout=TIMEOUT).status_code == 200
        time.sleep(6)  # past the server's 5 s flush
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    remembered = access_tags(root)
    assert "cache:old" not in remembered, remembered
    assert "cache:new" in remembered
    assert "old" not in index_tags(root).get("cache", {})
