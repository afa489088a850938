"""What the action costs a job on a warm cache, against a plain archive round trip.

    python -m bench.action_overhead [--size-mb 1024] [--rounds 3] [--where runner-directory]
                                    [--json out.json] [--workdir DIR]

Set-up (not timed): the action's image is built as the runner builds it (tests/runner.py), a
first job pushes a ~1 GiB OCI image of random layers through the action's registry with skopeo,
and its post stage saves it to a `local://` store. Then, per round:

- action: a new job (fresh RUNNER_TEMP, same store) runs main (restore ~1 GiB of blobs, start
  the registry) and post (stop, prune, save: nothing new was pushed, so the save finds nothing
  changed), each a real `docker run` of the image exactly as the runner does it. Wall time of
  both stages; the phases come from the action itself (main's state; post's job summary, which
  rounds to 0.1 s). The difference is the docker-run overhead of the two action containers;
- reference: the same directory (the registry root that job restored) archived with
  `tar -cf - . | zstd -T0` and extracted again with `zstd -dc -T0 | tar -xf -` into a fresh
  directory: what a cache step built on an archive would do at the least.

Reports medians of the rounds, seconds per phase and the ratio action / reference (target
<= 1.5). `--where workspace` puts the store under the job's workspace (a path the action
container has mounted) instead of a runner directory outside its mounts (read and written by a
sibling container). It is a report: nothing is asserted on times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.common import MIB, median, require_tool, scratch_dir, settle_disk, write_report
from tests.images import make_image
from tests.runner import (
    RunnerJob,
    StageResult,
    build_action_image,
    ensure_test_base_image,
    free_port,
    registry_container_name,
    remove_container,
)

RATIO_TARGET = 1.5
LAYER_MIB = 64
MAIN_PHASES = ("restore", "start")
POST_PHASES = ("stop", "prune", "save")
_PHASE = re.compile(r"(\w+) ([0-9.]+) s")


@dataclass
class Round:
    number: int
    main_s: float
    post_s: float
    phases: dict[str, float] = field(default_factory=dict)
    reference_archive_s: float = 0.0
    reference_extract_s: float = 0.0
    restored_bytes: int = 0
    saved: str = ""

    @property
    def action_s(self) -> float:
        return self.main_s + self.post_s

    @property
    def reference_s(self) -> float:
        return self.reference_archive_s + self.reference_extract_s


def _check(result: StageResult) -> StageResult:
    if result.exit_code != 0 or result.errors or result.warnings:
        raise SystemExit(
            f"error: the {result.stage} stage did not run cleanly:\n{result.describe()}"
        )
    return result


def _post_phases(summary: str) -> dict[str, float]:
    for line in summary.splitlines():
        if line.startswith("| Seconds |"):
            return {name: float(value) for name, value in _PHASE.findall(line)}
    raise SystemExit(f"error: no Seconds row in the job summary:\n{summary}")


def _skopeo_push(skopeo: str, layout: Path, tag: str, ref: str) -> None:
    subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{ref}",
        ],
        check=True,
        timeout=1800,
    )


def _timed_shell(command: str) -> float:
    settle_disk()
    started = time.perf_counter()
    subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True, timeout=1800)
    return time.perf_counter() - started


def _tree_bytes(root: Path) -> int:
    """Bytes on disk: the repositories' blobs are hard links into the pool, counted once."""
    inodes = {}
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink():
            info = path.stat()
            inodes[(info.st_dev, info.st_ino)] = info.st_size
    return sum(inodes.values())


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    skopeo = require_tool("skopeo")
    for tool in ("tar", "zstd", "docker"):
        require_tool(tool)
    print("building the action image ...", end=" ", flush=True)
    image = build_action_image(ensure_test_base_image())
    print(f"{image.size / 1e6:.0f} MB in {image.build_seconds:.1f} s", flush=True)

    layers = [LAYER_MIB * MIB] * max(1, args.size_mb // LAYER_MIB)
    print(f"making a {sum(layers) // MIB} MiB OCI image ...", end=" ", flush=True)
    started = time.perf_counter()
    oci = make_image(workdir / "image", layers, tag="app")
    print(f"{time.perf_counter() - started:.1f} s", flush=True)

    port = free_port()
    work = workdir / "_work"
    work.mkdir()
    first = RunnerJob(image.tag, work)
    if args.where == "workspace":
        store_dir = first.workspace / ".buildkit-store"
        store = "local:///github/workspace/.buildkit-store"
    else:
        store_dir = workdir / "runner-cache"
        store = f"local://{store_dir}"
    inputs = {"store": store, "scope": "app", "port": str(port), "max-size": "4GB"}
    rounds: list[Round] = []
    try:
        print("job 0: main, skopeo push, post (fills the store) ...", end=" ", flush=True)
        started = time.perf_counter()
        main = _check(first.main(inputs))
        _skopeo_push(
            skopeo, oci.layout, oci.tag, main.outputs["cache-to"].split("ref=")[1].split(",")[0]
        )
        post = _check(first.post(inputs))
        print(f"{time.perf_counter() - started:.1f} s; {_post_phases(post.summary)}", flush=True)
        if not any(store_dir.glob("entries/**/*.json")):
            raise SystemExit(f"error: nothing was saved to {store_dir}:\n{post.describe()}")

        for number in range(1, args.rounds + 1):
            job = RunnerJob(image.tag, work)  # a fresh RUNNER_TEMP, as the next job has
            settle_disk()
            started = time.perf_counter()
            main = _check(job.main(inputs))
            main_s = time.perf_counter() - started
            if main.outputs.get("cache-hit") != "exact":
                raise SystemExit(f"error: expected an exact hit:\n{main.describe()}")
            settle_disk()
            started = time.perf_counter()
            post = _check(job.post(inputs))
            post_s = time.perf_counter() - started
            state = json.loads(main.state["cache_action"])
            phases = {name: float(state["seconds"].get(name, 0.0)) for name in MAIN_PHASES}
            phases.update({k: v for k, v in _post_phases(post.summary).items() if k in POST_PHASES})
            saved = next(
                (line for line in post.summary.splitlines() if line.startswith("| Saved |")), ""
            )
            record = Round(
                number,
                main_s,
                post_s,
                phases,
                restored_bytes=int(main.outputs["restored-bytes"]),
                saved=saved.strip("| ").removeprefix("Saved | "),
            )

            # The reference on the very directory that job restored.
            root = job.runner_temp / f"cache-action-{port}" / "root"
            archive = workdir / "reference.tar.zst"
            extracted = workdir / "reference-extracted"
            shutil.rmtree(extracted, ignore_errors=True)
            extracted.mkdir()
            archive.unlink(missing_ok=True)
            record.reference_archive_s = _timed_shell(
                f"tar -C '{root}' -cf - . | zstd -q -T0 -o '{archive}'"
            )
            record.reference_extract_s = _timed_shell(
                f"zstd -q -d -T0 -c '{archive}' | tar -C '{extracted}' -xf -"
            )
            if number == 1:
                print(
                    f"root {_tree_bytes(root) / MIB:.0f} MiB, archive "
                    f"{archive.stat().st_size / MIB:.0f} MiB",
                    flush=True,
                )
            rounds.append(record)
            print(
                f"round {number}: action {record.action_s:6.2f} s (main {main_s:5.2f}, post "
                f"{post_s:5.2f}; "
                + ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
                + f")  reference {record.reference_s:6.2f} s (archive "
                f"{record.reference_archive_s:5.2f}, extract {record.reference_extract_s:5.2f})",
                flush=True,
            )
    finally:
        remove_container(registry_container_name(port))
    return report(rounds, args, image.size, sum(layers))


def report(
    rounds: list[Round], args: argparse.Namespace, image_bytes: int, size: int
) -> dict[str, Any]:
    phases = {
        name: median([r.phases.get(name, 0.0) for r in rounds])
        for name in (*MAIN_PHASES, *POST_PHASES)
    }
    main_s = median([r.main_s for r in rounds])
    post_s = median([r.post_s for r in rounds])
    action_s = median([r.action_s for r in rounds])
    reference_s = median([r.reference_s for r in rounds])
    ratio = action_s / reference_s
    overhead = action_s - sum(phases.values())
    print(f"\nmedians of {len(rounds)} rounds, {size / MIB:.0f} MiB of layers, store {args.where}")
    print(f"  {'phase':<28}{'seconds':>8}")
    for name, value in phases.items():
        print(f"  {name:<28}{value:8.2f}")
    print(f"  {'docker run of 2 containers':<28}{overhead:8.2f}   (wall - phases)")
    print(f"  {'main (wall)':<28}{main_s:8.2f}")
    print(f"  {'post (wall)':<28}{post_s:8.2f}")
    print(f"  {'action: main + post':<28}{action_s:8.2f}")
    print(
        f"  {'reference: tar|zstd + back':<28}{reference_s:8.2f}   (archive "
        f"{median([r.reference_archive_s for r in rounds]):.2f}, extract "
        f"{median([r.reference_extract_s for r in rounds]):.2f})"
    )
    verdict = "met" if ratio <= RATIO_TARGET else "NOT met"
    print(f"  ratio action / reference    {ratio:8.2f}   (target <= {RATIO_TARGET}: {verdict})")
    print(f"  post saved: {rounds[-1].saved}")
    return {
        "size_bytes": size,
        "store": args.where,
        "image_bytes": image_bytes,
        "rounds": [
            asdict(r) | {"action_s": r.action_s, "reference_s": r.reference_s} for r in rounds
        ],
        "medians": {
            "phases": phases,
            "main_s": main_s,
            "post_s": post_s,
            "action_s": action_s,
            "reference_s": reference_s,
            "docker_run_overhead_s": overhead,
        },
        "ratio": ratio,
        "target": {"ratio_max": RATIO_TARGET, "met": ratio <= RATIO_TARGET},
        "load_average": os.getloadavg()[0],
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.action_overhead",
        description="the action's main + post on a warm cache against tar|zstd and back",
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="cache size in MiB (1024)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument(
        "--where",
        choices=("runner-directory", "workspace"),
        default="runner-directory",
        help="where the local store lives (runner-directory)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary directory (/tmp)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.size_mb < 1 or args.rounds < 1:
        raise SystemExit("error: --size-mb and --rounds must be at least 1")
    with scratch_dir(args.workdir, "action-bench-") as workdir:
        document = run(args, workdir)
    write_report(args.json, document)
    return 0


if __name__ == "__main__":
    sys.exit(main())
