"""kill -9 during `python -m cache_action prune` leaves a consistent root; an image pushed with
skopeo survives prune and pulls byte-identical.

A large root (BuildKit caches in three repositories, shared and own layers, a few broken tags)
is pruned with a TTL and a size budget, and killed:
- at every kind of moment, deterministically: a wrapper makes the process SIGKILL itself at its
  k-th filesystem mutation (unlink, rmdir, fsync, replace), for k spread over the whole run;
- at random moments from outside, after a random delay.
After each kill the root must be consistent: every remaining tag's closure complete (checked by
an implementation independent of prune's), no tag gone that the full prune keeps, and the
registry starts and serves every remaining tag. A prune run to completion afterwards must end
exactly where an uninterrupted prune ends.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_action.storage.digests import Digest
from cache_action.storage.index import descriptor
from cache_action.storage.root import Storage
from tests.buildkit_client import BuildKit, Layer, cache_export, sha256
from tests.components import RegistryProcess, require_tool
from tests.prune_helpers import (
    blob_path,
    closures,
    index_tags,
    run_cli,
    set_tag_times,
)
from tests.roots import add_image, add_layer, copy_root, corrupt_blob_files, tree

DAY = 86_400.0
REPOSITORIES = ("cache", "org/app", "other")
TAGS_PER_REPOSITORY = 40
BROKEN = frozenset({"cache:t3", "org/app:t17", "other:t29"})

# Runs `python -m cache_action prune ARGS...`, SIGKILLing itself at the CRASH_AT-th filesystem
# mutation (0: never); at exit it prints how many mutations it made.
CRASHING_PRUNE = """
import atexit, os, runpy, signal, sys
crash_at = int(os.environ["CRASH_AT"])
made = 0
def hooked(original):
    def mutation(*args, **kwargs):
        global made
        made += 1
        if made == crash_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return mutation
for name in ("unlink", "rmdir", "fsync", "replace", "rename"):
    setattr(os, name, hooked(getattr(os, name)))
atexit.register(lambda: print(f"mutations={made}", file=sys.stderr))
sys.argv = ["cache_action", "prune", *sys.argv[1:]]
runpy.run_module("cache_action", run_name="__main__")
"""


@dataclass(frozen=True)
class Template:
    root: Path
    args: tuple[str, ...]  # the prune policy, as command-line arguments
    final_tags: frozenset[str]  # what an uninterrupted prune keeps
    final_tree: dict[str, bytes]  # and every file it leaves (bookkeeping aside)
    all_tags: frozenset[str]


def build_large_root(root: Path, seed: int = 7) -> dict[str, float]:
    """Three repositories of BuildKit caches written through the storage API; returns the tags'
    ages in seconds."""
    rng = random.Random(seed)
    storage = Storage.open(root)

    def make_layer(name: str) -> Layer:
        data = rng.randbytes(rng.randint(2_000, 9_000))
        return Layer(data, sha256(name.encode()), "2025-06-01T10:00:00Z")

    everywhere = [make_layer(f"base{i}") for i in range(3)]
    ages: dict[str, float] = {}
    for repository in REPOSITORIES:
        mid = [make_layer(f"{repository}-mid{i}") for i in range(8)]
        for t in range(TAGS_PER_REPOSITORY):
            layers = [*everywhere, *rng.sample(mid, 3)]
            layers += [make_layer(f"{repository}-t{t}-{i}") for i in range(3)]
            export = cache_export(repository, f"t{t}", layers, rng.choice(["manifest", "index"]))
            for digest, data in export.blobs().items():
                storage.blobs.put_bytes(repository, Digest.parse(digest), data)
            manifest_digest = Digest.parse(export.manifest_digest)
            storage.blobs.put_bytes(repository, manifest_digest, export.manifest)
            storage.indexes.set_tag(
                repository,
                f"t{t}",
                descriptor(export.media_type, manifest_digest, len(export.manifest)),
            )
            ages[f"{repository}:t{t}"] = rng.uniform(0, 20 * DAY)
    return ages


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    work = tmp_path_factory.mktemp("template")
    root = work / "root"
    ages = build_large_root(root)
    now = time.time()
    set_tag_times(root, {label: now - age for label, age in ages.items()})
    before = closures(root)
    for label in sorted(BROKEN):  # one layer of each of these tags is lost
        repository = label.rsplit(":", 1)[0]
        own = next(d for d in sorted(before[label]) if sum(d in c for c in before.values()) == 1)
        blob_path(root, repository, own).unlink()
    all_tags = frozenset(before) - BROKEN
    size = sum(p.stat().st_size for p in (root / "blobs").rglob("*") if p.is_file())
    args = ("--root", str(root), "--ttl", "14d", "--max-size", str(size // 3), "--json")

    reference = copy_root(root, work / "reference")
    result = run_cli("prune", *_with_root(args, reference))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    reasons = {item["reason"] for item in report["tags_removed"]}
    assert reasons == {"ttl", "budget", "broken"}, report  # the run exercises every path
    final = closures(reference)
    assert len(final) >= 10
    return Template(root, args, frozenset(final), tree(reference), all_tags)


def _with_root(args: tuple[str, ...], root: Path) -> list[str]:
    return [str(root) if i > 0 and args[i - 1] == "--root" else a for i, a in enumerate(args)]


def check_consistent(root: Path, template: Template, work: Path) -> set[str]:
    """The invariants that must hold after any kill; returns the remaining tags."""
    remaining = closures(root, BROKEN)  # raises if another tag's closure is incomplete
    assert template.final_tags <= set(remaining) <= template.all_tags
    assert [f for f in corrupt_blob_files(root) if not f.startswith("temp file")] == []
    # On a copy: serving records this run's use of every tag, which a prune would then protect.
    serve_tags(copy_root(root, work / "copy"), work, remaining)
    return set(remaining)


def serve_tags(root: Path, work: Path, remaining: dict[str, set[str]]) -> None:
    """The registry starts on the killed root; every tag resolves, its manifest downloads and
    every blob of its closure is there (HEAD)."""
    work.mkdir(parents=True, exist_ok=True)
    server = RegistryProcess(root, work / "ready.json", work / "registry.log").start()
    try:
        client = BuildKit(server.url)
        heads: dict[str, int] = {}
        for label, needed in remaining.items():
            repository, tag = label.rsplit(":", 1)
            head = client.resolve(repository, tag)
            assert head.status == 200, (label, head.body)
            digest = str(head.header("Docker-Content-Digest"))
            got = client.fetch_manifest(repository, digest, str(head.header("Content-Type")))
            assert (got.status, sha256(got.body)) == (200, digest), label
            for blob in needed:
                key = f"{repository}@{blob}"
                if key not in heads:  # shared blobs once per repository
                    heads[key] = client.connection.request(
                        "HEAD", f"/v2/{repository}/blobs/{blob}", {}
                    ).status
        client.close()
        assert {k: v for k, v in heads.items() if v != 200} == {}
    finally:
        code = server.stop()
    assert code == 0, server.log()


def finish_and_compare(root: Path, template: Template) -> None:
    """A prune to completion ends exactly where the uninterrupted one did."""
    result = run_cli("prune", *_with_root(template.args, root))
    assert result.returncode == 0, result.stderr
    assert set(closures(root)) == template.final_tags
    assert tree(root) == template.final_tree
    leftovers = sorted(
        p.name for p in (root / ".cache-action").iterdir() if p.name.endswith(".tmp")
    )
    assert leftovers == []


def crashing_prune(
    root: Path, args: tuple[str, ...], crash_at: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CRASHING_PRUNE, *_with_root(args, root)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CRASH_AT": str(crash_at)},
    )


def test_kill_at_every_kind_of_moment_leaves_a_consistent_root(
    template: Template, tmp_path: Path
) -> None:
    # Count the mutations of an uninterrupted run, then crash at points spread over all of them.
    counting = copy_root(template.root, tmp_path / "count")
    result = crashing_prune(counting, template.args, crash_at=0)
    assert result.returncode == 0, result.stderr
    total = int(result.stderr.strip().rsplit("mutations=", 1)[1])
    assert total > 200, total  # a large root: many index rewrites and deletions
    assert tree(counting) == template.final_tree

    rng = random.Random(20250601)
    # Tags are dropped (index rewrites) early in the run, blobs deleted after: sample both.
    early = rng.sample(range(3, total // 4), 6)
    late = rng.sample(range(total // 4, total - 1), 6)
    points = sorted({1, 2, *early, *late, total - 1, total})
    states: set[int] = set()
    for point in points:
        root = copy_root(template.root, tmp_path / f"crash-{point}")
        result = crashing_prune(root, template.args, crash_at=point)
        assert result.returncode == -signal.SIGKILL, (point, result.stderr)
        remaining = check_consistent(root, template, tmp_path / f"serve-{point}")
        states.add(len(remaining))
        finish_and_compare(root, template)
    # The kills landed before, between and after the tag drops, not all in one place.
    assert len(states) >= 4, states


def started_prune(root: Path, args: tuple[str, ...]) -> tuple[subprocess.Popen[bytes], float]:
    """`python -m cache_action prune` on `root`, once it holds the root lock (imports done,
    work begun); returns the process and that moment (monotonic)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "cache_action", "prune", *_with_root(args, root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    lock = root / ".cache-action" / "lock"
    holder = f"prune (pid {process.pid})".encode()
    deadline = time.monotonic() + 60
    while not (lock.is_file() and lock.read_bytes() == holder):
        assert process.poll() is None and time.monotonic() < deadline, "prune never started"
        time.sleep(0.002)
    return process, time.monotonic()


def test_kill_after_a_random_delay_leaves_a_consistent_root(
    template: Template, tmp_path: Path
) -> None:
    timing = copy_root(template.root, tmp_path / "timing")
    process, began = started_prune(timing, template.args)
    assert process.wait(120) == 0
    work = time.monotonic() - began
    original = tree(template.root)

    rng = random.Random()
    outcomes: list[str] = []
    for attempt in range(16):
        root = copy_root(template.root, tmp_path / f"kill-{attempt}")
        process, _ = started_prune(root, template.args)
        time.sleep(rng.uniform(0, work))
        process.kill()  # SIGKILL, to this child only
        code = process.wait(30)
        check_consistent(root, template, tmp_path / f"serve-{attempt}")
        state = tree(root)
        if code == 0:
            outcomes.append("finished")
            work *= 0.7  # the machine got faster (or the timing run was slow): aim earlier
        elif state == original:
            outcomes.append("untouched")
        else:
            outcomes.append("done" if state == template.final_tree else "mid-way")
        finish_and_compare(root, template)
        if outcomes.count("mid-way") >= 4:
            break
    assert outcomes.count("mid-way") >= 3, outcomes  # the kills really interrupted the work


# --- a real client's image survives prune ---


@pytest.mark.skopeo
def test_an_image_pushed_with_skopeo_survives_prune_and_pulls_byte_identical(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    skopeo = require_tool("skopeo")
    layout = tmp_path / "layout"
    base = [add_layer(layout, size, f"base{i}") for i, size in enumerate((1_500_000, 700_000))]
    v0 = add_image(layout, [*base, add_layer(layout, 400_000, "old")], "v0")
    v1 = add_image(layout, [*base, add_layer(layout, 500_000, "new")], "v1")
    for image in (v0, v1):
        subprocess.run(
            [
                skopeo,
                "--insecure-policy",
                "copy",
                "--quiet",
                "--preserve-digests",
                "--dest-tls-verify=false",
                f"oci:{layout}:{image.tag}",
                f"docker://{registry.address}/team/app:{image.tag}",
            ],
            check=True,
            capture_output=True,
            timeout=300,
        )
    BuildKit(registry.url).export(
        cache_export("cache", "main", [Layer(b"x" * 300_000, sha256(b"d"), "2025-01-01T00:00:00Z")])
    )
    assert registry.stop() == 0
    now = time.time()
    set_tag_times(
        registry.root,
        {"team/app:v0": now - 3 * 3600, "team/app:v1": now - 3600, "cache:main": now - 9 * DAY},
    )
    v1_bytes = sum((layout / "blobs" / "sha256" / d[7:]).stat().st_size for d in v1.blobs)
    result = run_cli(
        "prune", "--root", str(registry.root), "--ttl", "7d", "--max-size", str(v1_bytes), "--json"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tags_removed"] == [
        {"tag": "cache:main", "reason": "ttl"},
        {"tag": "team/app:v0", "reason": "budget"},
    ]
    assert set(index_tags(registry.root)) == {"team/app:v1"}

    registry.start()
    out = tmp_path / "pulled"
    pulled = subprocess.run(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{registry.address}/team/app:v1",
            f"oci:{out}:v1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr
    gone = subprocess.run(
        [
            skopeo,
            "--insecure-policy",
            "inspect",
            "--raw",
            "--tls-verify=false",
            f"docker://{registry.address}/team/app:v0",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert gone.returncode != 0 and "manifest unknown" in gone.stderr.lower(), gone.stderr
    assert registry.stop() == 0

    source = {d: (layout / "blobs" / "sha256" / d[7:]).read_bytes() for d in v1.blobs}
    pulled_blobs = {
        f"sha256:{p.name}": p.read_bytes() for p in (out / "blobs" / "sha256").iterdir()
    }
    assert pulled_blobs == source  # manifest, config and every layer, byte for byte
    index = json.loads((out / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [v1.manifest_digest]
