"""How long the image takes from `docker run` to a registry answering `/v2/`.

    python -m bench.time_to_ready [--rounds 7] [--image REF] [--json out.json]

Without `--image`, the action's image is built first as the tests build it (tests/runner.py:
the test base image, the tag `CACHE_ACTION_TEST_IMAGE_TAG` or its default). Per round, on a
fresh empty directory and a free loopback port:

    docker run -d -p 127.0.0.1:PORT:5000 -v DIR:/cache IMAGE        (the image default: serve)

is the standalone service (local store at /cache/store, nothing to restore), and the bench
GETs http://127.0.0.1:PORT/v2/ every 10 ms until it answers 200. It reports, as medians:

- run → ready: from just before `docker run -d` to the first 200 (the host's monotonic clock);
- started → ready: from the container's `State.StartedAt` (the daemon's clock, this machine's)
  to the first 200 (the host's wall clock): what the process itself takes;
- run → started: what the daemon takes to create and start the container.

It is a report: nothing is asserted on times. Each container is removed after its round.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.common import free_port, median, require_tool, scratch_dir, write_report
from tests.runner import INSTANCE_LABEL, build_action_image, ensure_test_base_image

POLL_SECONDS = 0.01
READY_TIMEOUT_SECONDS = 60.0


@dataclass
class Round:
    number: int
    run_to_ready_s: float
    started_to_ready_s: float
    run_to_started_s: float


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _docker(*args: str) -> str:
    result = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        raise SystemExit(f"error: docker {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


def parse_docker_time(text: str) -> float:
    """`2026-05-12T05:17:27.123456789Z` (RFC 3339, nanoseconds) → a POSIX timestamp."""
    main, _, fraction = text.rstrip("Z").partition(".")
    stamp = datetime.fromisoformat(main + "+00:00").timestamp()
    return stamp + (float("0." + fraction) if fraction else 0.0)


def measure(image: str, number: int, workdir: Path) -> Round:
    volume = workdir / f"volume-{number}"
    volume.mkdir()
    port = free_port()
    name = f"time-to-ready-{uuid.uuid4().hex[:8]}"
    url = f"http://127.0.0.1:{port}/v2/"
    argv = ["run", "-d", "--name", name, "--label", INSTANCE_LABEL, "-p", f"127.0.0.1:{port}:5000"]
    argv += ["-v", f"{volume}:/cache", image]
    try:
        started = time.monotonic()
        _docker(*argv)
        deadline = started + READY_TIMEOUT_SECONDS
        while not _answers(url):
            if time.monotonic() > deadline:
                raise SystemExit(f"error: not ready after {READY_TIMEOUT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
        ready_monotonic, ready_wall = time.monotonic(), time.time()
        state = json.loads(_docker("container", "inspect", name))[0]["State"]
        started_at = parse_docker_time(state["StartedAt"])
        run_to_ready = ready_monotonic - started
        started_to_ready = ready_wall - started_at
        return Round(number, run_to_ready, started_to_ready, run_to_ready - started_to_ready)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)
        shutil.rmtree(volume, ignore_errors=True)


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    require_tool("docker")
    image = args.image
    if image is None:
        print("building the action image ...", end=" ", flush=True)
        built = build_action_image(ensure_test_base_image())
        image = built.tag
        print(f"{built.tag}: {built.size / 1e6:.1f} MB, {built.own_size / 1e6:.1f} MB added")
    measure(image, 0, workdir)  # warm-up: the image's files into the page cache
    rounds = []
    for number in range(1, args.rounds + 1):
        record = measure(image, number, workdir)
        rounds.append(record)
        print(
            f"round {number}: run → ready {record.run_to_ready_s:5.2f} s, started → ready "
            f"{record.started_to_ready_s:5.2f} s, run → started {record.run_to_started_s:5.2f} s",
            flush=True,
        )
    medians = {
        key: median([getattr(r, key) for r in rounds])
        for key in ("run_to_ready_s", "started_to_ready_s", "run_to_started_s")
    }
    print(f"\nmedians of {len(rounds)} rounds, {image}")
    print(f"  {'docker run -d → /v2/ 200':<34}{medians['run_to_ready_s']:6.2f} s")
    print(f"  {'container started → /v2/ 200':<34}{medians['started_to_ready_s']:6.2f} s")
    print(f"  {'docker run -d → container started':<34}{medians['run_to_started_s']:6.2f} s")
    return {
        "image": image,
        "rounds": [asdict(r) for r in rounds],
        "medians": medians,
        "load_average": os.getloadavg()[0],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.time_to_ready",
        description="docker run of the standalone service until /v2/ answers 200",
    )
    parser.add_argument("--rounds", type=int, default=7, help="rounds (7)")
    parser.add_argument("--image", help="an image to measure instead of building the action's")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary directory (/tmp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.rounds < 1:
        raise SystemExit("error: --rounds must be at least 1")
    with scratch_dir(args.workdir, "ready-bench-") as workdir:
        document = run(args, workdir)
    write_report(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
