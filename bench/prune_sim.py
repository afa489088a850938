"""Prune under churn: 20 successive BuildKit builds through our registry, with and without a
size budget.

    python -m bench.prune_sim [--builds 20] [--unit-kib 1024] [--budget-share 0.6]
                              [--json out.json] [--workdir DIR]

Each build, like a CI job with the action:
1. starts the registry (`python -m cache_action serve`) on the root;
2. imports its cache as BuildKit does with `--cache-from` its branch's tag and main's: tag HEAD,
   manifest GET, cache-config GET;
3. exports as BuildKit's registry exporter does: per layer HEAD, and POST + PUT when the
   registry lacks it; then the cache config and the manifest under its branch's tag. A layer
   whose HEAD answers 200 is a cache hit: the registry already has what the build needs;
4. stops the registry (SIGTERM: it saves the access record and this run's stats) and runs
   `python -m cache_action prune --root ROOT [--max-size BUDGET]`, which protects what this
   build used (the run's start, from stats.json) and garbage-collects.

Churn: every image has 6 layers, bottom to top: two base layers (8 and 4 units, never change),
two dependency layers (3 and 2 units, change every 5 builds, and differ on branches that add a
dependency), two application layers (1 and 0.5 units, change every build). A layer's content
depends on everything below it, as BuildKit's cache keys do. Branches: main builds every third
job; five feature branches each live for a few builds, then are merged and never built again,
so their caches go stale, as in a real repository.

Run 1 has no budget (prune still runs: integrity and gc). Run 2 has a budget of
`--budget-share` of run 1's final size. Reported: per-build hits, the bounded run's hits
relative to the unbounded run's (target >= 95 %), and the final size against the budget (target
<= budget). A report, not a test: it fails only if a step fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import start_ours
from tests.buildkit_client import BuildKit, Layer, cache_export

MIB = 1024 * 1024
REPOSITORY = "cache"
# Which branch each job builds: main every third job, feature branches for a few jobs each.
SCHEDULE = [
    "main",
    "feat-1",
    "feat-1",
    "main",
    "feat-2",
    "feat-1",
    "main",
    "feat-2",
    "feat-3",
    "main",
    "feat-3",
    "feat-2",
    "main",
    "feat-4",
    "feat-3",
    "main",
    "feat-4",
    "feat-5",
    "main",
    "feat-5",
]
OWN_DEPENDENCIES = {"feat-2", "feat-4"}  # these branches add a dependency
# (name, size in units, what its version follows)
STACK = (
    ("base-os", 8.0, "stable"),
    ("base-toolchain", 4.0, "stable"),
    ("deps-lock", 3.0, "deps"),
    ("deps-vendor", 2.0, "deps"),
    ("app-build", 1.0, "build"),
    ("app-assets", 0.5, "build"),
)
DEPS_EVERY = 5


@dataclass
class Build:
    number: int
    branch: str
    layers: int
    hits: int
    layer_bytes: int
    hit_bytes: int
    imported: list[str]
    size_after: int  # bytes on disk after this build's prune
    removed: list[str] = field(default_factory=list)  # "tag (reason)" pruned after it

    @property
    def rate(self) -> float:
        return self.hits / self.layers if self.layers else 0.0


def layers_of(number: int, branch: str, unit: int) -> list[Layer]:
    """The build's layers, bottom to top; equal identities give byte-identical blobs."""
    deps = f"{number // DEPS_EVERY}" + (f"+{branch}" if branch in OWN_DEPENDENCIES else "")
    versions = {"stable": "0", "deps": deps, "build": f"{branch}#{number}"}
    layers: list[Layer] = []
    parent = ""
    for name, units, follows in STACK:
        parent = hashlib.sha256(f"{parent}|{name}@{versions[follows]}".encode()).hexdigest()
        data = random.Random(parent).randbytes(int(units * unit))
        created = f"2025-06-01T10:00:{len(layers):02d}Z"
        layers.append(Layer(data, f"sha256:{hashlib.sha256(data).hexdigest()}", created))
    return layers


def import_cache(client: BuildKit, tags: list[str]) -> list[str]:
    """cache-from each tag: HEAD, manifest GET, config GET. Returns the tags found."""
    found = []
    for tag in tags:
        head = client.resolve(REPOSITORY, tag)
        if head.status != 200:
            continue
        digest, media_type = head.header("Docker-Content-Digest"), head.header("Content-Type")
        manifest = client.fetch_manifest(REPOSITORY, str(digest), str(media_type))
        assert manifest.status == 200, manifest.body
        config = json.loads(manifest.body)["config"]
        assert client.fetch_config(REPOSITORY, config["digest"]).status == 200
        found.append(tag)
    return found


def export_cache(client: BuildKit, tag: str, layers: list[Layer]) -> tuple[int, int]:
    """Push like BuildKit's exporter; returns (layers the registry had, their bytes)."""
    export = cache_export(REPOSITORY, tag, layers)
    hits = hit_bytes = 0
    for layer in export.layers:
        exchanges = client.push_blob(REPOSITORY, layer.data, export.layer_media_type)
        if len(exchanges) == 1:  # HEAD answered 200: nothing to upload
            hits += 1
            hit_bytes += layer.size
        else:
            assert exchanges[-1].status == 201, exchanges[-1].body
    client.push_blob(REPOSITORY, export.config, "application/vnd.buildkit.cacheconfig.v0")
    put = client.push_manifest(REPOSITORY, tag, export.manifest, export.media_type)
    assert put[-1].status in (200, 201), put[-1].body
    return hits, hit_bytes


def prune(root: Path, budget: int | None) -> dict[str, Any]:
    args = [sys.executable, "-m", "cache_action", "prune", "--root", str(root), "--json"]
    if budget is not None:
        args += ["--max-size", str(budget)]
    result = subprocess.run(args, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"prune failed:\n{result.stderr}")
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def simulate(workdir: Path, label: str, builds: int, unit: int, budget: int | None) -> list[Build]:
    root = workdir / f"{label}-root"
    results = []
    for number in range(builds):
        branch = SCHEDULE[number % len(SCHEDULE)]
        layers = layers_of(number, branch, unit)
        server = start_ours(root, workdir, label)
        try:
            client = BuildKit(f"http://{server.address}")
            imported = import_cache(client, list(dict.fromkeys([branch, "main"])))
            hits, hit_bytes = export_cache(client, branch, layers)
            client.close()
        finally:
            code = server.stop()
        if code != 0:
            raise RuntimeError(f"the registry exited {code}:\n{server.log()}")
        report = prune(root, budget)
        results.append(
            Build(
                number + 1,
                branch,
                len(layers),
                hits,
                sum(layer.size for layer in layers),
                hit_bytes,
                imported,
                report["bytes_after"],
                [f"{t['tag']} ({t['reason']})" for t in report["tags_removed"]],
            )
        )
    return results


def _mib(value: float) -> str:
    return f"{value / MIB:7.1f}"


def report(unbounded: list[Build], bounded: list[Build], budget: int) -> dict[str, Any]:
    print(
        f"{'build':>5} {'branch':<7} {'hits U':>6} {'hits B':>6} {'rate U':>6} {'rate B':>6}"
        f" {'MiB U':>7} {'MiB B':>7}  pruned after the build (bounded run)"
    )
    for u, b in zip(unbounded, bounded, strict=True):
        print(
            f"{u.number:>5} {u.branch:<7} {u.hits:>3}/{u.layers:<2} {b.hits:>3}/{b.layers:<2}"
            f" {u.rate:>6.0%} {b.rate:>6.0%} {_mib(u.size_after)} {_mib(b.size_after)}"
            f"  {', '.join(b.removed) or '-'}"
        )
    hits_u, hits_b = sum(b.hits for b in unbounded), sum(b.hits for b in bounded)
    bytes_u, bytes_b = sum(b.hit_bytes for b in unbounded), sum(b.hit_bytes for b in bounded)
    needed = sum(b.layers for b in unbounded)
    relative = hits_b / hits_u if hits_u else 1.0
    final = bounded[-1].size_after
    peak = max(b.size_after for b in bounded)
    print()
    print(
        f"unbounded: {hits_u}/{needed} layer hits, final size {_mib(unbounded[-1].size_after)} MiB"
    )
    print(f"bounded:   {hits_b}/{needed} layer hits, budget {_mib(budget)} MiB")
    print(
        f"hit rate, bounded relative to unbounded: {relative:.1%} of layers "
        f"({bytes_b / bytes_u if bytes_u else 1.0:.1%} of bytes) "
        f"(target >= 95 %: {'met' if relative >= 0.95 else 'NOT met'})"
    )
    print(
        f"final size vs budget: {_mib(final).strip()} MiB / {_mib(budget).strip()} MiB = "
        f"{final / budget:.1%} (target <= 100 %: {'met' if final <= budget else 'NOT met'}); "
        f"largest after any prune: {_mib(peak).strip()} MiB"
    )
    return {
        "budget": budget,
        "unbounded": [asdict(b) for b in unbounded],
        "bounded": [asdict(b) for b in bounded],
        "relative_hit_rate": relative,
        "final_size": final,
        "final_over_budget": final / budget,
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.prune_sim", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--builds", type=int, default=20, help="successive builds (20)")
    parser.add_argument("--unit-kib", type=int, default=1024, help="layer size unit (1024 KiB)")
    parser.add_argument("--budget-share", type=float, default=0.6, help="of unbounded final size")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep the roots here (default: a temp dir)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    unit = args.unit_kib * 1024
    with tempfile.TemporaryDirectory(prefix="prune-sim-") as temp:
        workdir = args.workdir or Path(temp)
        workdir.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        unbounded = simulate(workdir, "unbounded", args.builds, unit, None)
        budget = int(unbounded[-1].size_after * args.budget_share)
        print(
            f"{args.builds} builds, layer unit {args.unit_kib} KiB; budget = "
            f"{args.budget_share:.0%} of the unbounded final size = {budget} bytes\n"
        )
        bounded = simulate(workdir, "bounded", args.builds, unit, budget)
        results = report(unbounded, bounded, budget)
        print(f"\n(ran in {time.monotonic() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
