"""Push/pull throughput of our registry against CNCF distribution (docker-registry), with skopeo.

    python -m bench.registry_throughput [--size-mb 600] [--rounds 3] [--json out.json]
                                        [--workdir DIR]

Builds one multi-layer OCI layout of random gzip layers (~600 MiB by default), then for each
round starts each registry on a fresh, empty root and a free loopback port, pushes the image
with `skopeo copy` and pulls it back into a fresh OCI directory, timing both with
time.perf_counter. The order of the two registries alternates every round. It reports medians,
MiB/s, the ratios ours/reference (target <= 1.0) and our server's peak RSS (target < 150 MiB).
It is a report, not a test: nothing is asserted on times; it fails only if a copy fails or the
bytes did not make the trip unchanged.

Why a fresh server per round instead of a fresh repository name: skopeo (containers/image)
remembers in its blob-info cache (/var/lib/containers/cache as root) where it has seen each
blob, and on the next push to the same registry host:port it mounts the blobs from the earlier
repository instead of uploading them. A new empty root on a new port leaves it nothing to mount,
so every push uploads every byte. The push runs with skopeo --debug (a few dozen log lines), the
only output that tells an upload from a reuse, and the bench fails unless every blob was uploaded.

Both registries get identical bytes: `--preserve-digests` makes skopeo refuse any change to the
manifest or layers (no recompression; `--dest-compress` only concerns the `dir:` transport in
skopeo 1.9), and the pushed manifest digest is checked against the layout's. Between timed steps
the bench calls sync(), so writeback left by one step does not slow the next.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    ServerProcess,
    median,
    require_tool,
    settle_disk,
    start_ours,
    start_reference,
    tool_version,
)
from tests.images import Image, make_image

# Layer shares of the total, largest first: 300, 150, 100, 40 and 10 MiB of 600.
LAYER_WEIGHTS = (30, 15, 10, 4, 1)
REPOSITORY = "bench/img"
COPY_TIMEOUT_SECONDS = 900
RATIO_TARGET = 1.0
RSS_TARGET_MIB = 150.0
OURS, REFERENCE = "ours", "reference"
_UPLOADED = re.compile(r"Upload of layer (sha256:[0-9a-f]{64}) complete")
STARTERS: dict[str, Callable[[Path, Path, str], ServerProcess]] = {
    OURS: start_ours,
    REFERENCE: start_reference,
}


@dataclass
class Run:
    """One registry in one round."""

    round: int
    registry: str
    position: int  # 1 = went first in its round
    push_s: float
    pull_s: float
    peak_rss_mib: float
    rss_samples: int
    exit_code: int
    bytes_in: int | None  # ours only: the server's own count of uploaded bytes


@dataclass
class Summary:
    push_median_s: float
    pull_median_s: float
    push_mib_s: float
    pull_mib_s: float
    peak_rss_mib: float


def layer_sizes(total_mib: int) -> list[int]:
    """Split `total_mib` by LAYER_WEIGHTS into byte sizes (each layer at least 1 MiB)."""
    weight = sum(LAYER_WEIGHTS)
    return [max(1, round(total_mib * w / weight)) * MIB for w in LAYER_WEIGHTS]


def blob_bytes(image: Image) -> int:
    return sum(
        (image.layout / "blobs" / "sha256" / d.removeprefix("sha256:")).stat().st_size
        for d in image.blob_digests
    )


class Skopeo:
    def __init__(self, binary: str) -> None:
        self.binary = binary

    def copy(self, *args: str, debug: bool = False) -> tuple[float, str]:
        """Run `skopeo copy ARGS`; returns (seconds, combined output). Fails on a non-zero exit."""
        # --insecure-policy: do not depend on the machine's /etc/containers/policy.json.
        command = [self.binary, "--insecure-policy", *(["--debug"] if debug else [])]
        command += ["copy", "--preserve-digests", *args]
        started = time.perf_counter()
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=COPY_TIMEOUT_SECONDS
        )
        elapsed = time.perf_counter() - started
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} exited {result.returncode}:\n{output}")
        return elapsed, output


def push(skopeo: Skopeo, image: Image, address: str, tag: str, workdir: Path) -> float:
    """Push every byte of the layout; checks nothing was skipped and the digest is unchanged."""
    digest_file = workdir / f"push-{tag}.digest"
    seconds, output = skopeo.copy(
        "--dest-tls-verify=false",
        "--digestfile",
        str(digest_file),
        f"oci:{image.layout}:{image.tag}",
        f"docker://{address}/{REPOSITORY}:{tag}",
        debug=True,  # only the debug log tells an upload from a reuse (a mount, a HEAD hit)
    )
    uploaded = set(_UPLOADED.findall(output))
    if "Skipping blob" in output or uploaded != set(image.blob_digests):
        raise RuntimeError(
            f"push to {address} did not upload every blob (uploaded {sorted(uploaded)}, "
            f"want {sorted(image.blob_digests)}):\n{output[-5000:]}"
        )
    pushed = digest_file.read_text().strip()
    digest_file.unlink()
    if pushed != image.manifest_digest:
        raise RuntimeError(f"skopeo rewrote the manifest: {pushed} != {image.manifest_digest}")
    return seconds


def pull(skopeo: Skopeo, image: Image, address: str, tag: str, target: Path) -> float:
    """Pull into a fresh OCI directory; checks every blob arrived with its size, then deletes it."""
    try:
        seconds, _ = skopeo.copy(
            "--src-tls-verify=false",
            f"docker://{address}/{REPOSITORY}:{tag}",
            f"oci:{target}:{tag}",
        )
        for digest in image.blob_digests:
            hex_digest = digest.removeprefix("sha256:")
            got = target / "blobs" / "sha256" / hex_digest
            want = image.layout / "blobs" / "sha256" / hex_digest
            if not got.is_file() or got.stat().st_size != want.stat().st_size:
                raise RuntimeError(f"pulled layout lacks {digest} or has it at the wrong size")
    finally:
        shutil.rmtree(target, ignore_errors=True)
    return seconds


def _bytes_in(root: Path) -> int | None:
    """Our server writes its counters at graceful shutdown (`.cache-action/stats.json`)."""
    try:
        value = json.loads((root / ".cache-action" / "stats.json").read_text())["bytes_in"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return int(value)


def run_one(
    registry: str, round_no: int, position: int, skopeo: Skopeo, image: Image, workdir: Path
) -> Run:
    """Start `registry` on an empty root, push and pull once, stop it, delete its root."""
    label = f"{registry}-r{round_no}"
    root = workdir / f"root-{label}"
    root.mkdir()
    server = STARTERS[registry](root, workdir, label)
    try:
        tag = f"r{round_no}"
        settle_disk()
        push_s = push(skopeo, image, server.address, tag, workdir)
        settle_disk()
        pull_s = pull(skopeo, image, server.address, tag, workdir / f"pull-{label}")
        exit_code = server.stop()
    except BaseException:
        server.kill()
        print(f"--- {label} server log ---\n{server.log()}", file=sys.stderr)
        raise
    bytes_in = _bytes_in(root) if registry == OURS else None
    shutil.rmtree(root, ignore_errors=True)
    return Run(
        round=round_no,
        registry=registry,
        position=position,
        push_s=push_s,
        pull_s=pull_s,
        peak_rss_mib=server.sampler.peak_mib,
        rss_samples=server.sampler.samples,
        exit_code=exit_code,
        bytes_in=bytes_in,
    )


def summarize(runs: list[Run], registry: str, size_mib: float) -> Summary:
    mine = [r for r in runs if r.registry == registry]
    push_s = median([r.push_s for r in mine])
    pull_s = median([r.pull_s for r in mine])
    return Summary(
        push_median_s=push_s,
        pull_median_s=pull_s,
        push_mib_s=size_mib / push_s,
        pull_mib_s=size_mib / pull_s,
        peak_rss_mib=max(r.peak_rss_mib for r in mine),
    )


def _verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def report(
    runs: list[Run],
    image: Image,
    sizes: list[int],
    size_mib: float,
    tools: dict[str, str],
    load: tuple[float, float],
) -> dict[str, Any]:
    ours, ref = summarize(runs, OURS, size_mib), summarize(runs, REFERENCE, size_mib)
    push_ratio = ours.push_median_s / ref.push_median_s
    pull_ratio = ours.pull_median_s / ref.pull_median_s
    rounds = max(r.round for r in runs)

    print()
    print(
        f"image: {len(sizes)} layers ({'+'.join(str(s // MIB) for s in sizes)} MiB random data), "
        f"{size_mib:.1f} MiB of blobs; {rounds} rounds"
    )
    print(f"tools: {tools['skopeo']}; {tools['docker-registry']}; python {tools['python']}")
    print(
        f"load average (1 min) before/after: {load[0]:.2f} / {load[1]:.2f} on {os.cpu_count()} "
        "CPUs (anything else running skews the times; compare ratios from quiet runs)"
    )
    print()
    print(
        f"{'round':<6}{'registry':<11}{'order':>6}{'push s':>9}{'pull s':>9}"
        f"{'peak RSS MiB':>14}{'exit':>6}{'bytes in':>12}"
    )
    for r in runs:
        bytes_in = "-" if r.bytes_in is None else f"{r.bytes_in / MIB:.1f}M"
        print(
            f"{r.round:<6}{r.registry:<11}{r.position:>6}{r.push_s:>9.2f}{r.pull_s:>9.2f}"
            f"{r.peak_rss_mib:>14.1f}{r.exit_code:>6}{bytes_in:>12}"
        )
    print()
    print(
        f"{'median':<11}{'push s':>9}{'push MiB/s':>12}{'pull s':>9}{'pull MiB/s':>12}"
        f"{'peak RSS MiB':>14}"
    )
    for name, s in ((OURS, ours), (REFERENCE, ref)):
        print(
            f"{name:<11}{s.push_median_s:>9.2f}{s.push_mib_s:>12.1f}{s.pull_median_s:>9.2f}"
            f"{s.pull_mib_s:>12.1f}{s.peak_rss_mib:>14.1f}"
        )
    print()
    print(
        f"ratio ours/reference  push {push_ratio:.2f}  "
        f"(target <= {RATIO_TARGET:.1f}: {_verdict(push_ratio <= RATIO_TARGET)})"
    )
    print(
        f"ratio ours/reference  pull {pull_ratio:.2f}  "
        f"(target <= {RATIO_TARGET:.1f}: {_verdict(pull_ratio <= RATIO_TARGET)})"
    )
    print(
        f"our peak RSS          {ours.peak_rss_mib:.1f} MiB  "
        f"(target < {RSS_TARGET_MIB:.0f}: {_verdict(ours.peak_rss_mib < RSS_TARGET_MIB)}; "
        f"reference {ref.peak_rss_mib:.1f} MiB)"
    )

    return {
        "image": {
            "layer_bytes_requested": sizes,
            "blob_bytes": blob_bytes(image),
            "manifest_digest": image.manifest_digest,
        },
        "rounds": rounds,
        "tools": tools,
        "cpus": os.cpu_count(),
        "load_average_1min": {"before": load[0], "after": load[1]},
        "runs": [asdict(r) for r in runs],
        "summary": {OURS: asdict(ours), REFERENCE: asdict(ref)},
        "ratios": {"push": push_ratio, "pull": pull_ratio},
        "targets": {
            "push_ratio_max": RATIO_TARGET,
            "pull_ratio_max": RATIO_TARGET,
            "peak_rss_mib_max": RSS_TARGET_MIB,
            "met": {
                "push": push_ratio <= RATIO_TARGET,
                "pull": pull_ratio <= RATIO_TARGET,
                "rss": ours.peak_rss_mib < RSS_TARGET_MIB,
            },
        },
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.registry_throughput",
        description="skopeo push/pull: our registry against docker-registry (distribution)",
    )
    parser.add_argument("--size-mb", type=int, default=600, help="image size in MiB (600)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per registry (3)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--workdir", type=Path, help="parent of the temporary directory (default: /tmp)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.size_mb < 1 or args.rounds < 1:
        raise SystemExit("error: --size-mb and --rounds must be at least 1")
    skopeo = Skopeo(require_tool("skopeo"))
    tools = {
        "skopeo": tool_version(skopeo.binary, "--version"),
        "docker-registry": tool_version(require_tool("docker-registry"), "--version"),
        "python": sys.version.split()[0],
    }
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="registry-bench-", dir=args.workdir))
    try:
        sizes = layer_sizes(args.size_mb)
        print(f"workdir {workdir}", flush=True)
        print(f"building a {args.size_mb} MiB OCI layout ...", end=" ", flush=True)
        started = time.perf_counter()
        image = make_image(workdir / "image", sizes, tag="latest")
        size_mib = blob_bytes(image) / MIB
        print(f"{size_mib:.1f} MiB in {time.perf_counter() - started:.1f} s", flush=True)

        runs: list[Run] = []
        load_before = os.getloadavg()[0]
        for round_no in range(1, args.rounds + 1):
            order = (OURS, REFERENCE) if round_no % 2 else (REFERENCE, OURS)
            for position, registry in enumerate(order, start=1):
                run = run_one(registry, round_no, position, skopeo, image, workdir)
                runs.append(run)
                print(
                    f"round {round_no} {registry:<9} push {run.push_s:6.2f} s  "
                    f"pull {run.pull_s:6.2f} s  peak RSS {run.peak_rss_mib:6.1f} MiB",
                    flush=True,
                )
        load = (load_before, os.getloadavg()[0])
        document = report(runs, image, sizes, size_mib, tools, load)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json is not None:
        args.json.write_text(json.dumps(document, indent=1) + "\n")
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
