"""A job's action start from a prebuilt image against from the Dockerfile, on a fresh daemon.

    python -m bench.cold_start [--rounds 3] [--json out.json] [--workdir DIR]

What a job spends before the action's main stage has run, two ways, through tests/runner.py's
RunnerJob (the exact `docker pull` / `docker build` / `docker run`s the runner makes):

- prebuilt: action.yml with `runs.image: docker://127.0.0.1:PORT/cache-action@sha256:...`;
  "Set up job" pulls it by digest from this project's registry on loopback (`python -m
  cache_action serve`, the image registry here), then the main stage runs;
- Dockerfile: action.yml as it is (`runs.image: Dockerfile`); "Set up job" runs `docker build
  --no-cache` (a daemon that never built it: an empty build cache), then the main stage runs.

The base image (tests/runner.py's stand-in for python:3.12-slim) is present in both cases, as a
runner's daemon would have it after pulling it; nothing else of the action's image is. Set-up
(not timed): the prebuilt image is built once with --no-cache (layers of its own, shared with
no other image on the daemon), pushed, and removed locally. Per round, in alternating order:
prebuilt (pull, main, post; then the pulled image is removed again) and Dockerfile (build,
main, post; then the built image and its build stage are removed). Each job has a fresh
RUNNER_TEMP and an empty `local://` store, so main restores nothing and starts the registry.

Reports medians: pull vs build seconds, main and post seconds (wall time of their `docker
run`s), the action start (pull or build + main) of each way and the ratio prebuilt /
Dockerfile; bytes the pull downloaded (the registry's counters). It is a report: nothing is
asserted on times. Only images, containers and tags it made itself are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import MIB, median, require_tool, scratch_dir, settle_disk, write_report
from tests.components import RegistryProcess
from tests.docker_images import push_digest
from tests.runner import (
    ActionImage,
    RunnerJob,
    StageResult,
    action_with_image,
    build_action_image,
    docker,
    ensure_test_base_image,
    free_port,
    image_exists,
    registry_container_name,
    remove_container,
)

PREBUILT, DOCKERFILE = "prebuilt", "Dockerfile"


@dataclass
class Run:
    round: int
    way: str
    position: int  # 1 = went first in its round
    image_s: float  # pull (prebuilt) or build (Dockerfile)
    main_s: float
    post_s: float
    pulled_bytes: int = 0

    @property
    def start_s(self) -> float:
        """The job's action start: the image ready, then the main stage done."""
        return self.image_s + self.main_s


def _check(result: StageResult) -> StageResult:
    if result.exit_code != 0 or result.errors or result.warnings:
        raise SystemExit(
            f"error: the {result.stage} stage did not run cleanly:\n{result.describe()}"
        )
    return result


def _remove_image(*references: str) -> None:
    """`docker rmi` of references this bench made (tags, digests, image ids); missing is fine."""
    for reference in references:
        subprocess.run(["docker", "rmi", reference], capture_output=True, timeout=300)


def _remove_built(image: ActionImage) -> None:
    _remove_image(image.tag, *image.stage_images)


def _bytes_out(registry: RegistryProcess) -> int:
    with urllib.request.urlopen(f"{registry.url}/_cache/stats", timeout=10) as response:
        return int(json.loads(response.read())["bytes_out"])


def _stages(job: RunnerJob, store: Path) -> tuple[float, float]:
    """main then post of `job` on an empty local store: their wall seconds."""
    port = free_port()
    inputs = {"store": f"local://{store}", "scope": "app", "port": str(port)}
    try:
        main = _check(job.main(inputs))
        post = _check(job.post(inputs))
    finally:
        remove_container(registry_container_name(port))
    return main.seconds, post.seconds


def _prebuilt(
    number: int, position: int, reference: str, registry: RegistryProcess, workdir: Path
) -> Run:
    if image_exists(reference):
        raise SystemExit(f"error: {reference} is still present: the pull would not be real")
    before = _bytes_out(registry)
    settle_disk()
    job = RunnerJob(None, workdir / f"work-{number}-prebuilt", action=action_with_image(reference))
    assert job.pull is not None
    pulled = _bytes_out(registry) - before
    try:
        main_s, post_s = _stages(job, workdir / f"store-{number}-prebuilt")
    finally:
        _remove_image(reference)  # the next round pulls again
    return Run(number, PREBUILT, position, job.pull.seconds, main_s, post_s, pulled)


def _dockerfile(number: int, position: int, base: str, workdir: Path) -> Run:
    settle_disk()
    tag = f"cache-action-cold-start:{uuid.uuid4().hex[:12]}"
    image = build_action_image(base, tag, no_cache=True)
    try:
        job = RunnerJob(image.tag, workdir / f"work-{number}-dockerfile")
        main_s, post_s = _stages(job, workdir / f"store-{number}-dockerfile")
    finally:
        _remove_built(image)
    return Run(number, DOCKERFILE, position, image.build_seconds, main_s, post_s)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    require_tool("docker")
    base = ensure_test_base_image()
    registry = RegistryProcess(
        workdir / "registry", workdir / "registry.ready.json", workdir / "registry.log"
    ).start()
    reference = ""
    runs: list[Run] = []
    try:
        print("building the prebuilt image (--no-cache) ...", end=" ", flush=True)
        prebuilt = build_action_image(
            base, f"cache-action-cold-start:{uuid.uuid4().hex[:12]}", no_cache=True
        )
        print(
            f"{prebuilt.size / 1e6:.1f} MB, {prebuilt.own_size / 1e6:.1f} MB over the base, "
            f"{prebuilt.build_seconds:.1f} s",
            flush=True,
        )
        pushed = f"{registry.address}/cache-action:cold-start"
        try:
            docker("tag", prebuilt.tag, pushed)
            started = time.monotonic()
            digest = push_digest(docker("push", pushed, timeout=1200))
            print(f"pushed to {registry.address} in {time.monotonic() - started:.1f} s", flush=True)
        finally:
            _remove_image(pushed)
            _remove_built(prebuilt)
        reference = f"{registry.address}/cache-action@{digest}"

        for number in range(1, args.rounds + 1):
            order = [PREBUILT, DOCKERFILE] if number % 2 else [DOCKERFILE, PREBUILT]
            for position, way in enumerate(order, start=1):
                if way == PREBUILT:
                    record = _prebuilt(number, position, reference, registry, workdir)
                else:
                    record = _dockerfile(number, position, base, workdir)
                runs.append(record)
                verb = "pull " if way == PREBUILT else "build"
                print(
                    f"round {number} {way:<10} {verb} {record.image_s:6.2f} s, main "
                    f"{record.main_s:5.2f} s, post {record.post_s:5.2f} s; start "
                    f"{record.start_s:6.2f} s"
                    + (
                        f" ({record.pulled_bytes / MIB:.1f} MiB pulled)"
                        if record.pulled_bytes
                        else ""
                    ),
                    flush=True,
                )
    finally:
        if reference:
            _remove_image(reference)
        registry.stop()
    return report(runs, prebuilt)


def report(runs: list[Run], image: ActionImage) -> dict[str, Any]:
    def medians(way: str) -> dict[str, float]:
        mine = [r for r in runs if r.way == way]
        return {
            "image_s": median([r.image_s for r in mine]),
            "main_s": median([r.main_s for r in mine]),
            "post_s": median([r.post_s for r in mine]),
            "start_s": median([r.start_s for r in mine]),
        }

    pre, built = medians(PREBUILT), medians(DOCKERFILE)
    ratio = pre["start_s"] / built["start_s"]
    rounds = len({r.round for r in runs})
    pulled = median([float(r.pulled_bytes) for r in runs if r.way == PREBUILT])
    print(
        f"\nmedians of {rounds} rounds; image {image.size / 1e6:.1f} MB, "
        f"{image.own_size / 1e6:.1f} MB over its base"
    )
    print(f"  {'seconds':<34}{PREBUILT:>10}{DOCKERFILE:>12}")
    print(
        f"  {'image: docker pull / docker build':<34}{pre['image_s']:10.2f}{built['image_s']:12.2f}"
    )
    print(f"  {'main stage':<34}{pre['main_s']:10.2f}{built['main_s']:12.2f}")
    print(f"  {'action start: image + main':<34}{pre['start_s']:10.2f}{built['start_s']:12.2f}")
    print(f"  {'post stage':<34}{pre['post_s']:10.2f}{built['post_s']:12.2f}")
    print(f"  ratio prebuilt / Dockerfile (action start) {ratio:6.3f}")
    print(f"  pulled from the registry: {pulled / MIB:.1f} MiB (compressed layers)")
    return {
        "image_bytes": image.size,
        "own_bytes": image.own_size,
        "runs": [asdict(r) | {"start_s": r.start_s} for r in runs],
        "medians": {PREBUILT: pre, DOCKERFILE: built},
        "pulled_bytes": pulled,
        "ratio_start_prebuilt_over_dockerfile": ratio,
        "load_average": os.getloadavg()[0],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.cold_start",
        description="a job's action start: pull of a prebuilt image against a Dockerfile build",
    )
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary directory (/tmp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    with scratch_dir(args.workdir, "cold-start-bench-") as workdir:
        document = run(args, workdir)
    write_report(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
