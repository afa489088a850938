"""Prune (`cache_action.storage.prune`): TTL with an injected clock, LRU under a size budget,
in-run protection, keep N, integrity repair, referrers and shared blobs, exact reports, dry-run.

Roots are built through the real registry (BuildKit-shaped pushes), then the access record is
set to chosen times; every check of what is left uses `tests.prune_helpers.closures`, an
implementation independent of the one under test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cache_action.storage.prune import PrunePolicy, PruneReport, Verify, prune
from cache_action.storage.root import Storage
from tests.buildkit_client import (
    OCI_INDEX,
    BuildKit,
    image_index,
    image_manifest,
    random_layers,
    sha256,
)
from tests.components import RegistryProcess
from tests.prune_helpers import (
    Incomplete,
    Pusher,
    access_tags,
    blob_files,
    closures,
    disk_bytes,
    layer,
    resolve_statuses,
    serve_every_tag,
    set_tag_times,
    snapshot,
    untagged,
)
from tests.roots import copy_root, corrupt_blob_files

NOW = 1_900_000_000.0  # far from the real clock: a prune reading time.time() would misjudge ages
DAY = 86_400.0
HOUR = 3_600.0


def clock(at: float) -> Callable[[], float]:
    return lambda: at


def removed(report: PruneReport) -> dict[str, str]:
    return {item["tag"]: item["reason"] for item in report.tags_removed}


def blob_path(root: Path, repo: str, digest: str) -> Path:
    return root / repo / "blobs" / "sha256" / digest.removeprefix("sha256:")


def pool_path(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.removeprefix("sha256:")


def expect_only(root: Path, expected: dict[str, set[str]]) -> None:
    """The root holds exactly these tags, each whole, and no blob beyond their union."""
    assert closures(root) == expected
    union = set().union(*expected.values()) if expected else set()
    files = blob_files(root)
    assert files.get("", set()) == union
    assert files.get("cache", set()) == union


# --- TTL ---


def test_ttl_drops_exactly_the_tags_unused_for_longer_than_the_ttl(
    registry: RegistryProcess,
) -> None:
    push = Pusher(registry.url)
    base = layer(50_000, "base")
    for i, tag in enumerate(("old", "edge-out", "edge-in", "fresh")):
        push.cache("cache", tag, [base, layer(10_000 + i, tag)])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    set_tag_times(
        root,
        {
            "cache:old": NOW - 30 * DAY,
            "cache:edge-out": NOW - 7 * DAY - 1,
            "cache:edge-in": NOW - 7 * DAY,  # exactly the TTL old: still within it
            "cache:fresh": NOW - HOUR,
        },
    )

    report = prune(Storage.open(root), PrunePolicy(ttl_seconds=7 * DAY), clock=clock(NOW))
    assert report.tags_removed == [
        {"tag": "cache:edge-out", "reason": "ttl"},
        {"tag": "cache:old", "reason": "ttl"},
    ]
    kept = ("cache:edge-in", "cache:fresh")
    expect_only(root, {label: set(pushed.closures[label]) for label in kept})
    assert base.digest in blob_files(root)[""]  # shared with kept tags: stays
    assert set(access_tags(root)) == set(kept)  # the record forgets dropped tags

    # A day later (the clock moved, nothing was used) edge-in has expired as well.
    report = prune(Storage.open(root), PrunePolicy(ttl_seconds=7 * DAY), clock=clock(NOW + DAY))
    assert removed(report) == {"cache:edge-in": "ttl"}
    expect_only(root, {"cache:fresh": set(pushed.closures["cache:fresh"])})


def test_ttl_without_an_access_record_goes_by_the_manifest_age(registry: RegistryProcess) -> None:
    """A root restored from elsewhere may have no record: the manifest file's mtime stands in."""
    push = Pusher(registry.url)
    for tag, size in (("old", 9_000), ("new", 9_001)):
        push.cache("cache", tag, [layer(size, tag)])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    (root / ".cache-action" / "access.json").unlink()
    for label, age in (("cache:old", 8 * DAY), ("cache:new", 6 * DAY)):
        manifest = blob_path(root, "cache", sha256(pushed.manifests[label]))
        os.utime(manifest, (NOW - age, NOW - age))

    report = prune(Storage.open(root), PrunePolicy(ttl_seconds=7 * DAY), clock=clock(NOW))
    assert removed(report) == {"cache:old": "ttl"}
    expect_only(root, {"cache:new": set(pushed.closures["cache:new"])})


def test_the_access_record_forgets_what_prune_deleted(registry: RegistryProcess) -> None:
    """Tags dropped, and blobs and manifests gc deleted, leave the record; the rest keep their
    times (otherwise the record grows with every blob ever pushed)."""
    push = Pusher(registry.url)
    shared = layer(9_000, "shared")
    push.cache("cache", "old", [shared, layer(9_001, "old")])
    push.cache("cache", "new", [shared, layer(9_002, "new")])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    set_tag_times(root, {"cache:old": NOW - 9 * DAY, "cache:new": NOW - HOUR})
    before = json.loads((root / ".cache-action" / "access.json").read_bytes())
    kept = pushed.digests_of("cache:new")
    assert set(before["blobs"]) == pushed.digests_of("cache:old", "cache:new")

    prune(Storage.open(root), PrunePolicy(ttl_seconds=7 * DAY), clock=clock(NOW))
    after = json.loads((root / ".cache-action" / "access.json").read_bytes())
    assert after["tags"] == {"cache:new": NOW - HOUR}
    assert after["blobs"] == {k: v for k, v in before["blobs"].items() if k in kept}
    assert after["manifests"] == {
        f"cache@{sha256(pushed.manifests['cache:new'])}": before["manifests"][
            f"cache@{sha256(pushed.manifests['cache:new'])}"
        ]
    }


# --- the size budget: LRU by the access record ---


def test_budget_drops_least_recently_used_tags_until_the_root_fits(
    registry: RegistryProcess,
) -> None:
    push = Pusher(registry.url)
    base = layer(40_000, "base")
    labels = [f"cache:t{i}" for i in range(5)]
    for i, label in enumerate(labels):
        push.cache("cache", label.split(":")[1], [base, layer(20_000 + 1_000 * i, label)])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    # Last use, oldest first: t2, t0, t4, t1, t3 (neither push order nor name order).
    order = ["cache:t2", "cache:t0", "cache:t4", "cache:t1", "cache:t3"]
    set_tag_times(root, {label: NOW - DAY + i * HOUR for i, label in enumerate(order)})
    kept = order[2:]
    budget = pushed.bytes_of(*kept) + 1_000  # dropping a third tag is not needed
    assert pushed.bytes_of(*order[1:]) > budget
    before = disk_bytes(root)
    assert before == pushed.bytes_of(*labels)

    report = prune(Storage.open(root), PrunePolicy(max_size_bytes=budget), clock=clock(NOW))
    assert removed(report) == {"cache:t2": "budget", "cache:t0": "budget"}
    expect_only(root, {label: set(pushed.closures[label]) for label in kept})
    after = disk_bytes(root)
    assert after <= budget
    assert report.to_json() == {
        "dry_run": False,
        "bytes_before": before,
        "bytes_after": after,
        "tags_removed": [
            {"tag": "cache:t0", "reason": "budget"},
            {"tag": "cache:t2", "reason": "budget"},
        ],
        "blobs_removed": 6,  # per dropped tag: its own layer, cache config and manifest
        "bytes_freed": before - after,
    }
    assert after == pushed.bytes_of(*kept)

    # Under budget now: a second prune removes nothing.
    again = prune(Storage.open(root), PrunePolicy(max_size_bytes=budget), clock=clock(NOW))
    assert (again.tags_removed, again.blobs_removed, again.bytes_freed) == ([], 0, 0)


def test_a_read_through_the_registry_makes_a_tag_recently_used(registry: RegistryProcess) -> None:
    """BuildKit's import (tag HEAD, manifest GET, config GET) moves the tag's last use."""
    push = Pusher(registry.url)
    exports = {
        tag: push.cache("cache", tag, [layer(30_000 + i, tag)]) for i, tag in enumerate("abc")
    }
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    past = time.time() - 10 * DAY
    set_tag_times(root, {"cache:a": past, "cache:b": past + 1, "cache:c": past + 2})

    registry.start()
    client = BuildKit(registry.url)
    head = client.resolve("cache", "a")
    assert head.status == 200
    export = exports["a"]
    assert client.fetch_manifest("cache", export.manifest_digest, export.media_type).status == 200
    assert client.fetch_config("cache", export.config_digest).status == 200
    client.close()
    assert registry.stop() == 0

    budget = pushed.bytes_of("cache:a", "cache:c")
    report = prune(Storage.open(root), PrunePolicy(max_size_bytes=budget))
    assert removed(report) == {"cache:b": "budget"}  # the least recently used, now that a was read
    expect_only(root, {label: set(pushed.closures[label]) for label in ("cache:a", "cache:c")})


# --- in-run protection ---


@pytest.mark.parametrize(
    ("policy", "reason"),
    [
        (PrunePolicy(max_size_bytes=1), "budget"),
        (PrunePolicy(ttl_seconds=1.0), "ttl"),
        (PrunePolicy(keep=0), "keep"),
        (PrunePolicy(ttl_seconds=1.0, max_size_bytes=1, keep=0), "ttl"),
    ],
    ids=["budget", "ttl", "keep", "all"],
)
def test_tags_used_in_this_run_are_never_dropped(
    registry: RegistryProcess, policy: PrunePolicy, reason: str
) -> None:
    push = Pusher(registry.url)
    for i, tag in enumerate("abcd"):
        push.cache("cache", tag, [layer(25_000 + i, tag)])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    started = NOW - HOUR
    set_tag_times(
        root,
        {
            "cache:a": started - DAY,
            "cache:b": started - 1,
            "cache:c": started,  # used at the very start of the run: protected
            "cache:d": started + 60,
        },
    )
    protected = dataclasses.replace(policy, protect_since=started)
    report = prune(Storage.open(root), protected, clock=clock(NOW))
    assert removed(report) == {"cache:a": reason, "cache:b": reason}
    expect_only(root, {label: set(pushed.closures[label]) for label in ("cache:c", "cache:d")})
    if policy.max_size_bytes is not None:
        assert report.bytes_after > policy.max_size_bytes  # over budget, yet nothing of the run
    assert report.bytes_after == pushed.bytes_of("cache:c", "cache:d") == disk_bytes(root)


def test_in_run_protection_covers_tags_the_build_read_and_wrote(
    registry: RegistryProcess,
) -> None:
    """Through the real registry: protect_since = the run's start; the build imports `b` and
    exports `e`; a budget of one byte leaves exactly those two."""
    push = Pusher(registry.url)
    for i, tag in enumerate("abcd"):
        push.cache("cache", tag, [layer(25_000 + i, tag)])
    push.close()
    assert registry.stop() == 0
    root = registry.root
    past = time.time() - DAY
    set_tag_times(root, {f"cache:{t}": past + i for i, t in enumerate("abcd")})

    registry.start()
    started = time.time()
    push = Pusher(registry.url, push.pushed)
    assert push.client.resolve("cache", "b").status == 200
    push.cache("cache", "e", [layer(25_100, "e")])
    push.close()
    assert registry.stop() == 0

    report = prune(Storage.open(root), PrunePolicy(max_size_bytes=1, protect_since=started))
    assert removed(report) == {"cache:a": "budget", "cache:c": "budget", "cache:d": "budget"}
    pushed = push.pushed
    expect_only(root, {label: set(pushed.closures[label]) for label in ("cache:b", "cache:e")})


# --- keep N ---


def test_keep_n_most_recently_used_tags_per_repository(registry: RegistryProcess) -> None:
    push = Pusher(registry.url)
    for i in range(4):
        push.cache("x", f"x{i}", [layer(11_000 + i, f"x{i}")])
    for i in range(2):
        push.cache("y", f"y{i}", [layer(12_000 + i, f"y{i}")])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    # x1 is the newest, then x3, x0, x2.
    times = {"x:x2": 1.0, "x:x0": 2.0, "x:x3": 3.0, "x:x1": 4.0, "y:y0": 0.5, "y:y1": 0.6}
    set_tag_times(root, {label: NOW - DAY + t * HOUR for label, t in times.items()})

    report = prune(Storage.open(root), PrunePolicy(keep=2), clock=clock(NOW))
    assert removed(report) == {"x:x2": "keep", "x:x0": "keep"}
    kept = ("x:x1", "x:x3", "y:y0", "y:y1")
    assert closures(root) == {label: set(pushed.closures[label]) for label in kept}
    assert disk_bytes(root) == pushed.bytes_of(*kept) == report.bytes_after

    # keep 1, but x3 was used in this run: it stays with x1.
    report = prune(
        Storage.open(root),
        PrunePolicy(keep=1, protect_since=NOW - DAY + 3.0 * HOUR),
        clock=clock(NOW),
    )
    assert removed(report) == {"y:y0": "keep"}
    assert set(closures(root)) == {"x:x1", "x:x3", "y:y1"}


# --- integrity repair ---


class Damaged:
    """A root with BuildKit caches (manifest and index form) and an image index, and ways to
    damage one blob of it."""

    def __init__(self, registry: RegistryProcess) -> None:
        push = Pusher(registry.url)
        self.base = layer(60_000, "base")
        self.la, self.lb, self.lc = (layer(20_000 + i, n) for i, n in enumerate("abc"))
        push.cache("cache", "a", [self.base, self.la])
        push.cache("cache", "b", [self.base, self.lb])
        push.cache("cache", "c", [self.lc])
        self.bkidx = push.cache("cache", "bkidx", random_layers([15_001, 15_002]), "index")
        # An image index tagged `multi` whose children were pushed by digest; `single` tags the
        # second child as well.
        k1, k2 = (json.dumps({"os": "linux", "n": n}).encode() for n in (1, 2))
        self.l6, self.l7 = os.urandom(7_000), os.urandom(7_001)
        self.c1 = push.image("cache", None, k1, [self.l6])
        self.c2 = push.image("cache", "single", k2, [self.l7])
        self.ix = image_index([self.c1, self.c2])
        push.manifest("cache", "multi", self.ix, OCI_INDEX)
        push.pushed.closures["cache:multi"] = {
            sha256(x): x for x in (self.ix, self.c1, k1, self.l6, self.c2, k2, self.l7)
        }
        push.close()
        assert registry.stop() == 0
        self.root = registry.root
        self.registry = registry
        self.pushed = push.pushed
        self.k1 = k1

    def delete(self, digest: str) -> None:
        blob_path(self.root, "cache", digest).unlink()
        pool_path(self.root, digest).unlink()

    def truncate(self, digest: str) -> None:
        path = blob_path(self.root, "cache", digest)
        path.write_bytes(path.read_bytes()[:-100])

    def corrupt(self, digest: str) -> None:
        path = blob_path(self.root, "cache", digest)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("damage", "verify", "broken"),
    [
        ("layer", Verify.SIZE, {"cache:a"}),
        ("shared layer", Verify.SIZE, {"cache:a", "cache:b"}),
        ("config", Verify.SIZE, {"cache:b"}),
        ("manifest", Verify.SIZE, {"cache:c"}),
        ("child manifest", Verify.SIZE, {"cache:multi"}),
        ("layer of a child manifest", Verify.SIZE, {"cache:multi", "cache:single"}),
        ("layer of an index-form cache", Verify.SIZE, {"cache:bkidx"}),
        ("truncated layer", Verify.SIZE, {"cache:a"}),
        ("truncated config", Verify.SIZE, {"cache:b"}),
        ("corrupted layer", Verify.FULL, {"cache:a"}),
        ("corrupted config", Verify.FULL, {"cache:b"}),
    ],
)
def test_integrity_repair_drops_exactly_the_broken_tags(
    registry: RegistryProcess, tmp_path: Path, damage: str, verify: Verify, broken: set[str]
) -> None:
    root = Damaged(registry)
    export_b = root.pushed.closures["cache:b"]
    config_b = next(d for d, data in export_b.items() if data.startswith(b'{"layers"'))
    action: dict[str, Callable[[], None]] = {
        "layer": lambda: root.delete(root.la.digest),
        "shared layer": lambda: root.delete(root.base.digest),
        "config": lambda: root.delete(config_b),
        "manifest": lambda: root.delete(sha256(root.pushed.manifests["cache:c"])),
        "child manifest": lambda: root.delete(sha256(root.c1)),
        "layer of a child manifest": lambda: root.delete(sha256(root.l7)),
        "layer of an index-form cache": lambda: root.delete(root.bkidx.layers[0].digest),
        "truncated layer": lambda: root.truncate(root.la.digest),
        "truncated config": lambda: root.truncate(config_b),
        "corrupted layer": lambda: root.corrupt(root.la.digest),
        "corrupted config": lambda: root.corrupt(config_b),
    }
    action[damage]()
    with pytest.raises(Incomplete):
        closures(root.root)

    report = prune(Storage.open(root.root), PrunePolicy(verify=verify))
    assert removed(report) == dict.fromkeys(broken, "broken")
    kept = sorted(set(root.pushed.closures) - broken)
    expected = {label: set(root.pushed.closures[label]) for label in kept}
    assert closures(root.root) == expected  # every other tag whole
    assert corrupt_blob_files(root.root) == []  # the damaged file went with its tags
    union = set().union(*expected.values())
    assert blob_files(root.root)["cache"] == union

    # BuildKit now misses the dropped tags cleanly, and everything else serves whole.
    root.registry.start()
    statuses = resolve_statuses(root.registry.url, sorted(root.pushed.closures))
    assert statuses == {label: 404 if label in broken else 200 for label in statuses}
    assert root.registry.stop() == 0
    serve_every_tag(root.root, tmp_path / "check", expected)


def test_a_corrupted_blob_of_the_right_size_needs_verify_full(registry: RegistryProcess) -> None:
    root = Damaged(registry)
    root.corrupt(root.la.digest)
    report = prune(Storage.open(root.root), PrunePolicy(verify=Verify.SIZE))
    assert report.tags_removed == []  # size and presence only: the cheap default
    report = prune(Storage.open(root.root), PrunePolicy(verify=Verify.FULL))
    assert removed(report) == {"cache:a": "broken"}
    assert root.la.digest not in blob_files(root.root)[""]


def test_a_broken_tag_goes_even_when_used_in_this_run(registry: RegistryProcess) -> None:
    root = Damaged(registry)
    root.delete(root.lc.digest)
    report = prune(Storage.open(root.root), PrunePolicy(protect_since=0.0))
    assert removed(report) == {"cache:c": "broken"}


# --- referrers and shared blobs ---


def test_referrers_and_shared_blobs_of_kept_tags_survive(registry: RegistryProcess) -> None:
    push = Pusher(registry.url)
    shared, own, own2, sig_layer, dead_layer = (os.urandom(9_000 + i) for i in range(5))
    cfg, cfg2, sig_cfg, dead_cfg, x_cfg = (
        json.dumps({"os": "linux", "n": n}).encode() for n in range(5)
    )
    keep = push.image("cache", "keep", cfg, [shared, own])
    gone = push.image("cache", "gone", cfg2, [shared, own2])
    sig = push.image("cache", None, sig_cfg, [sig_layer], subject=keep)
    dead = push.image("cache", None, dead_cfg, [dead_layer], subject=gone)
    push.image("other", "x", x_cfg, [own2])  # another repository shares gone's layer
    push.close()
    assert registry.stop() == 0
    root = registry.root
    set_tag_times(
        root, {"cache:keep": NOW - HOUR, "cache:gone": NOW - 9 * DAY, "other:x": NOW - HOUR}
    )

    report = prune(Storage.open(root), PrunePolicy(ttl_seconds=7 * DAY), clock=clock(NOW))
    assert removed(report) == {"cache:gone": "ttl"}
    keep_closure = {sha256(x) for x in (keep, cfg, shared, own)}
    sig_closure = {sha256(x) for x in (sig, sig_cfg, sig_layer)}
    x_closure = push.pushed.digests_of("other:x")
    assert closures(root) == {"cache:keep": keep_closure, "other:x": x_closure}
    files = blob_files(root)
    assert files["cache"] == keep_closure | sig_closure  # the referrer stays with its subject
    assert files["other"] == x_closure  # gone's layer, still used here
    assert files[""] == keep_closure | sig_closure | x_closure
    assert untagged(root, "cache") == [sha256(sig)]  # dead (gone's referrer) is untracked
    assert sha256(dead) not in files[""]


def test_budget_counts_the_referrers_a_kept_tag_holds(registry: RegistryProcess) -> None:
    """A referrer lives as long as its subject's tag, so its bytes count against the budget."""
    push = Pusher(registry.url)
    old = push.cache("cache", "old", [layer(10_000, "old")])
    push.cache("cache", "new", [layer(10_001, "new")])
    sbom_cfg, sbom = b'{"sbom":true}', os.urandom(80_000)
    referrer = push.image("cache", None, sbom_cfg, [sbom], subject=old.manifest)
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    set_tag_times(root, {"cache:old": NOW - 2 * HOUR, "cache:new": NOW - HOUR})
    assert referrer == image_manifest(sbom_cfg, [sbom], subject=old.manifest)
    budget = pushed.bytes_of("cache:old", "cache:new") + 1_000  # fits only without the sbom
    assert disk_bytes(root) > budget

    report = prune(Storage.open(root), PrunePolicy(max_size_bytes=budget), clock=clock(NOW))
    assert removed(report) == {"cache:old": "budget"}
    assert disk_bytes(root) == report.bytes_after <= budget
    assert closures(root) == {"cache:new": set(pushed.closures["cache:new"])}
    assert untagged(root, "cache") == []


# --- exact report, dry-run ---


def mixed_root(registry: RegistryProcess) -> tuple[Path, dict[str, set[str]], PrunePolicy]:
    """Tags that go for each reason, an orphan blob (an export that died before its manifest),
    an unreferenced untagged manifest, a referrer and a crash's temp file."""
    push = Pusher(registry.url)
    base = layer(30_000, "base")
    own = {}
    for i, tag in enumerate(("expired", "lru", "broken", "kept1", "kept2", "run")):
        own[tag] = layer(12_000 + 500 * i, tag)
        push.cache("cache", tag, [base, own[tag]])
    orphan = os.urandom(4_321)
    push.blobs("cache", orphan)
    push.image("cache", None, b'{"untagged":1}', [os.urandom(1_234)])
    push.image("cache", None, b'{"sig":1}', [], subject=push.pushed.manifests["cache:kept1"])
    push.close()
    assert registry.stop() == 0
    root, pushed = registry.root, push.pushed
    set_tag_times(
        root,
        {
            "cache:expired": NOW - 30 * DAY,
            "cache:lru": NOW - 5 * DAY,
            "cache:broken": NOW - HOUR,
            "cache:kept1": NOW - 4 * DAY,
            "cache:kept2": NOW - 3 * DAY,
            "cache:run": NOW - 60,
        },
    )
    broken_layer = own["broken"].digest
    blob_path(root, "cache", broken_layer).unlink()
    (root / "blobs" / "sha256" / f".{'cd' * 32}.0123.tmp").write_bytes(b"t" * 999)
    kept = ("cache:kept1", "cache:kept2", "cache:run")
    budget = pushed.bytes_of(*kept) + 2_000
    expected = {label: set(pushed.closures[label]) for label in kept}
    policy = PrunePolicy(
        ttl_seconds=7 * DAY, max_size_bytes=budget, verify=Verify.SIZE, protect_since=NOW - HOUR
    )
    return root, expected, policy


def test_report_numbers_are_exact_and_a_dry_run_reports_the_same(
    registry: RegistryProcess, tmp_path: Path
) -> None:
    root, expected, policy = mixed_root(registry)
    dry_root = copy_root(root, tmp_path / "dry")
    before_files = snapshot(dry_root)
    before_bytes = disk_bytes(root)
    before_blobs = set().union(*blob_files(root).values())

    dry = prune(
        Storage.open(dry_root),
        dataclasses.replace(policy, dry_run=True),
        clock=clock(NOW),
    )
    assert snapshot(dry_root) == before_files  # not a byte changed, access record included

    real = prune(Storage.open(root), policy, clock=clock(NOW))
    assert removed(real) == {
        "cache:expired": "ttl",
        "cache:lru": "budget",
        "cache:broken": "broken",
    }
    assert closures(root) == expected
    after_bytes = disk_bytes(root)
    after_blobs = set().union(*blob_files(root).values())
    assert real.to_json() == {
        "dry_run": False,
        "bytes_before": before_bytes,
        "bytes_after": after_bytes,
        "tags_removed": real.tags_removed,
        "blobs_removed": len(before_blobs - after_blobs),
        "bytes_freed": before_bytes - after_bytes,
    }
    assert after_bytes <= policy.max_size_bytes  # type: ignore[operator]
    assert {**dry.to_json(), "dry_run": False} == real.to_json()
    assert dry.dry_run is True


def test_dry_run_with_only_garbage_to_collect(registry: RegistryProcess, tmp_path: Path) -> None:
    """No tag goes, but an orphan blob and a crash's temp file do: the dry run's numbers match
    the real run's (temp files are not blobs and count in neither)."""
    push = Pusher(registry.url)
    push.cache("cache", "a", [layer(10_000, "a")])
    push.blobs("cache", os.urandom(5_555))
    push.close()
    assert registry.stop() == 0
    root = registry.root
    (root / "cache" / "blobs" / "sha256" / f".{'ef' * 32}.9.tmp").write_bytes(b"x" * 777)
    dry_root = copy_root(root, tmp_path / "dry")
    dry = prune(Storage.open(dry_root), PrunePolicy(dry_run=True))
    real = prune(Storage.open(root), PrunePolicy())
    assert (real.blobs_removed, real.bytes_freed) == (1, 5_555)
    assert {**dry.to_json(), "dry_run": False} == real.to_json()
