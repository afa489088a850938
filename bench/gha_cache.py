"""Save + restore through the GitHub Actions cache: our GhaStore against the official client.

    python -m bench.gha_cache [--size-mb 1024] [--rounds 3] [--json out.json] [--workdir DIR]

1. Builds a registry root of `--size-mb` MiB (default 1 GiB): one repository, two tags, eight
   layers of random (incompressible, like real gzip layers) bytes, written through the storage
   API (pool blob + repository link + index.json), as a pushed root looks.
2. Uses Azurite and the cache emulator of the tests (tests/gha_emulator.py): v2 Twirp calls,
   signed blob URLs, the archive stored in Azurite. Every round and client gets a fresh Azurite
   process (started outside the timed part): in-memory Azurite keeps about the archive's size
   of RSS after the blob is deleted, and a node heap growing by 1 GiB per run slowed each
   later run in an earlier version of this bench.
3. Per round, for each client (order alternating by round):
   - ours:     `python -m cache_action save --store gha` on the root, then `restore` into an empty
               root: GhaStore → reserve, tar+zstd straight into the upload (16 MiB blocks, 8
               in flight, no archive file), finalize; lookup, ranged parallel download read
               by the checked extraction as it arrives (no archive file), merge.
   - official: `@actions/cache` 6.x (tests/node) `saveCache([".buildkit-cache"])` from the
               workspace holding the root, then `restoreCache` into an empty workspace: what
               actions/cache runs (tar --posix | zstdmt, Azure SDK upload; one GET, tar -x).
   Both run as child processes with the runner's variables, as a job runs them, so interpreter
   start-up is on both sides. Restored blobs are checked byte-identical (sha256 of every blob
   against its name, and the set of blobs) outside the timed part.
4. Reports medians of the rounds per phase, and the ratio ours/official (target for
   save+restore: <= 0.7).

A report, not a test: times are never asserted. It fails only if a step fails or a restored
root is incomplete. Between timed steps it calls sync(), so one step's writeback does not slow
the next; the page cache is not dropped (other work shares this machine).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.common import (
    MIB,
    median,
    random_file,
    require_tool,
    settle_disk,
    tag_manifest,
    tool_version,
)
from cache_action.storage.digests import Digest
from cache_action.storage.index import descriptor
from cache_action.storage.root import Storage
from tests.azurite import Azurite, ensure_azurite, install_lock, npm_install, tools_cache
from tests.gha_emulator import DEFAULT_BRANCH, READ, WRITE, CacheEmulator, make_token

REPO_ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = REPO_ROOT / "tests" / "node"
NODE_SCRIPT = "cache-interop.mjs"
LABEL = ".buildkit-cache"
REPOSITORY = "bench/app"
SCOPE = "bench"
# Layer shares of the total, largest first (eight layers, as a typical application image).
LAYER_WEIGHTS = (32, 20, 14, 10, 8, 6, 6, 4)
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
CONFIG = "application/vnd.oci.image.config.v1+json"
STEP_TIMEOUT_SECONDS = 900
RATIO_TARGET = 0.7
OURS, OFFICIAL = "ours", "official"


# --- the root -----------------------------------------------------------------------------------


def build_root(root: Path, total_mib: int) -> int:
    """Write the root through the storage API; returns the bytes of its blobs."""
    storage = Storage.open(root)
    weight = sum(LAYER_WEIGHTS)
    sizes = [max(1, round(total_mib * w / weight)) * MIB for w in LAYER_WEIGHTS]
    layers = []
    for index, size in enumerate(sizes):
        temp = root / f".layer-{index}.tmp"
        digest = Digest.parse(f"sha256:{random_file(temp, size)}")
        storage.blobs.commit(REPOSITORY, digest, temp)
        layers.append(descriptor(LAYER, digest, size))
    total = sum(sizes)
    for tag, chosen in (("latest", layers), ("base", layers[: len(layers) // 2])):
        config = json.dumps(
            {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}, "tag": tag}
        ).encode()
        total += tag_manifest(storage, REPOSITORY, tag, (CONFIG, config), chosen)
    return total


def blob_files(root: Path) -> dict[str, Path]:
    """digest → file, for the pool (every blob of the root is there once)."""
    pool = root / "blobs" / "sha256"
    return {f"sha256:{p.name}": p for p in pool.iterdir() if not p.name.startswith(".")}


def verify_restored(restored: Path, source: Path) -> None:
    """Every blob of the source, byte for byte (hashed), and the same tags."""
    want, have = blob_files(source), blob_files(restored)
    if set(have) != set(want):
        raise RuntimeError(f"{restored}: blobs differ from the source root")
    for digest, path in have.items():
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            while block := f.read(4 * MIB):
                hasher.update(block)
        if f"sha256:{hasher.hexdigest()}" != digest:
            raise RuntimeError(f"{path} does not hash to its name")
        repo_copy = restored / REPOSITORY / "blobs" / "sha256" / digest.removeprefix("sha256:")
        if not repo_copy.is_file():
            raise RuntimeError(f"{REPOSITORY} lacks {digest} after the restore")
    index = REPOSITORY + "/index.json"
    if json.loads((restored / index).read_bytes()) != json.loads((source / index).read_bytes()):
        raise RuntimeError(f"{restored / index} differs from the source")


# --- the official client ------------------------------------------------------------------------


def official_client() -> Path:
    """The directory holding @actions/cache (installed from tests/node, cached like the tests
    cache it) and the driver script."""
    manifest = (NODE_DIR / "package.json").read_bytes() + (
        NODE_DIR / "package-lock.json"
    ).read_bytes()
    directory = tools_cache() / f"actions-cache-{hashlib.sha256(manifest).hexdigest()[:12]}"
    with install_lock(directory):
        if not (directory / "node_modules" / "@actions" / "cache").exists():
            for name in ("package.json", "package-lock.json"):
                shutil.copy(NODE_DIR / name, directory / name)
            npm_install(directory)
    shutil.copy(NODE_DIR / NODE_SCRIPT, directory / NODE_SCRIPT)
    return directory


# --- one timed step -----------------------------------------------------------------------------


def _base_env(emulator: CacheEmulator, token: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ACTIONS_", "GITHUB_", "RUNNER_")) and k != "CI"
    }
    env.update(
        {
            "ACTIONS_RESULTS_URL": emulator.url,
            "ACTIONS_RUNTIME_TOKEN": token,
            "GITHUB_SERVER_URL": "https://github.com",
            "GITHUB_REF": DEFAULT_BRANCH,
        }
    )
    return env


def _timed(command: list[str], env: dict[str, str], cwd: Path, what: str) -> tuple[float, str]:
    """Run one step; returns (seconds, stdout). Fails on a non-zero exit."""
    settle_disk()
    started = time.perf_counter()
    result = subprocess.run(
        command, env=env, cwd=cwd, capture_output=True, text=True, timeout=STEP_TIMEOUT_SECONDS
    )
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        output = result.stdout + result.stderr
        raise RuntimeError(f"{what} exited {result.returncode}:\n{output[-4000:]}")
    return elapsed, result.stdout


@dataclass
class Run:
    round: int
    client: str
    position: int  # 1 = went first in its round
    save_s: float
    restore_s: float
    archive_bytes: int

    @property
    def total_s(self) -> float:
        return self.save_s + self.restore_s


def run_ours(
    emulator: CacheEmulator, root: Path, restored: Path, token: str, round_number: int
) -> tuple[float, float]:
    env = _base_env(emulator, token)
    env["GITHUB_RUN_ID"] = str(1000 + round_number)
    env["PYTHONPATH"] = str(REPO_ROOT)
    (root / ".cache-action" / "restored.json").unlink(missing_ok=True)  # never "unchanged"
    common = ["--store", "gha", "--scope", SCOPE, "--ref", DEFAULT_BRANCH]
    cli = [sys.executable, "-m", "cache_action"]
    save_s, output = _timed([*cli, "save", "--root", str(root), *common], env, root.parent, "save")
    if json.loads(output)["saved"] is not True:
        raise RuntimeError(f"our save did not save:\n{output}")
    restore_s, output = _timed(
        [*cli, "restore", "--root", str(restored), *common], env, restored.parent, "restore"
    )
    if json.loads(output)["hit"] != "exact":
        raise RuntimeError(f"our restore missed:\n{output}")
    return save_s, restore_s


def run_official(
    emulator: CacheEmulator,
    client: Path,
    workspace: Path,
    restored_workspace: Path,
    token: str,
    round_number: int,
) -> tuple[float, float]:
    node = require_tool("node")
    key = f"bench-official-{round_number}"
    result_file = restored_workspace.parent / f"official-{round_number}.json"
    script = str(client / NODE_SCRIPT)
    paths = json.dumps([LABEL])
    temp = Path(tempfile.mkdtemp(prefix="runner-temp-", dir=workspace.parent))
    try:
        env = _base_env(emulator, token)
        env.update({"ACTIONS_CACHE_SERVICE_V2": "1", "RUNNER_TEMP": str(temp)})
        env["GITHUB_WORKSPACE"] = str(workspace)
        save_s, output = _timed(
            [node, script, "save", str(result_file), key, paths], env, workspace, "official save"
        )
        if json.loads(result_file.read_text())["cacheId"] <= 0:
            raise RuntimeError(f"the official client did not save:\n{output}")
        env["GITHUB_WORKSPACE"] = str(restored_workspace)
        restore_s, output = _timed(
            [node, script, "restore", str(result_file), key, paths, "[]"],
            env,
            restored_workspace,
            "official restore",
        )
        if json.loads(result_file.read_text())["matchedKey"] != key:
            raise RuntimeError(f"the official client missed:\n{output}")
    finally:
        shutil.rmtree(temp, ignore_errors=True)
    return save_s, restore_s


# --- the rounds ---------------------------------------------------------------------------------


def one_round(
    main_js: Path,
    work: Path,
    workspace: Path,
    client: Path,
    token: str,
    round_number: int,
    name: str,
    position: int,
) -> Run:
    root = workspace / LABEL
    target = work / f"restore-{name}-{round_number}"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    azurite = Azurite(main_js, work / f"azurite-{name}-{round_number}").start()
    emulator = CacheEmulator(azurite, work / "emulator").start()
    try:
        if name == OURS:
            restored = target / LABEL
            save_s, restore_s = run_ours(emulator, root, restored, token, round_number)
        else:
            save_s, restore_s = run_official(
                emulator, client, workspace, target, token, round_number
            )
            restored = target / LABEL
        (entry,) = emulator.finalized()
        archive_bytes = entry.size or 0
    finally:
        emulator.stop()
        azurite.stop()
    verify_restored(restored, root)
    shutil.rmtree(target, ignore_errors=True)
    return Run(round_number, name, position, save_s, restore_s, archive_bytes)


def summarize(runs: list[Run], name: str) -> dict[str, float]:
    mine = [run for run in runs if run.client == name]
    return {
        "save_s": median([r.save_s for r in mine]),
        "restore_s": median([r.restore_s for r in mine]),
        "total_s": median([r.total_s for r in mine]),
        "archive_mib": median([r.archive_bytes / MIB for r in mine]),
    }


def report(runs: list[Run], size: int, versions: dict[str, str]) -> dict[str, Any]:
    ours, official = summarize(runs, OURS), summarize(runs, OFFICIAL)
    ratios = {phase: ours[phase] / official[phase] for phase in ("save_s", "restore_s", "total_s")}
    mib = size / MIB
    print()
    print(f"root: {mib:.0f} MiB of blobs ({len(LAYER_WEIGHTS)} random layers, 2 tags)")
    for tool, version in versions.items():
        print(f"{tool}: {version}")
    print()
    print(f"{'round':>5} {'client':<9} {'pos':>3} {'save s':>8} {'restore s':>10} {'total s':>8}")
    for run in runs:
        print(
            f"{run.round:>5} {run.client:<9} {run.position:>3} {run.save_s:>8.2f} "
            f"{run.restore_s:>10.2f} {run.total_s:>8.2f}"
        )
    print()
    print(f"medians of {len(runs) // 2} rounds")
    print(f"{'phase':<14} {'ours s':>8} {'official s':>11} {'ours/official':>14}")
    for phase, label in (("save_s", "save"), ("restore_s", "restore"), ("total_s", "save+restore")):
        print(f"{label:<14} {ours[phase]:>8.2f} {official[phase]:>11.2f} {ratios[phase]:>14.2f}")
    print(
        f"{'MiB/s':<14} {2 * mib / ours['total_s']:>8.0f} {2 * mib / official['total_s']:>11.0f}"
        "   (root bytes moved both ways / save+restore time)"
    )
    print(f"archive MiB    {ours['archive_mib']:>8.1f} {official['archive_mib']:>11.1f}")
    verdict = "met" if ratios["total_s"] <= RATIO_TARGET else "NOT met"
    print(f"\ntarget save+restore ours/official <= {RATIO_TARGET}: {verdict}")
    return {
        "size_bytes": size,
        "runs": [asdict(run) for run in runs],
        "ours": ours,
        "official": official,
        "ratios": ratios,
        "target": RATIO_TARGET,
        "target_met": ratios["total_s"] <= RATIO_TARGET,
        "versions": versions,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gha_cache", description=__doc__)
    parser.add_argument("--size-mb", type=int, default=1024, help="root size in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--workdir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)
    for tool in ("node", "npm", "zstd", "tar"):
        require_tool(tool)

    work = Path(tempfile.mkdtemp(prefix="bench-gha-", dir=args.workdir))
    try:
        print("installing Azurite and @actions/cache (once) ...", flush=True)
        main_js = ensure_azurite(tools_cache())
        client = official_client()
        workspace = work / "workspace"
        print(f"building a {args.size_mb} MiB root ...", flush=True)
        size = build_root(workspace / LABEL, args.size_mb)
        token = make_token([(DEFAULT_BRANCH, READ | WRITE)])
        runs: list[Run] = []
        for round_number in range(1, args.rounds + 1):
            order = [OURS, OFFICIAL] if round_number % 2 else [OFFICIAL, OURS]
            for position, name in enumerate(order, 1):
                run = one_round(
                    main_js, work, workspace, client, token, round_number, name, position
                )
                print(
                    f"round {round_number} {name:<8} save {run.save_s:6.2f} s  "
                    f"restore {run.restore_s:6.2f} s",
                    flush=True,
                )
                runs.append(run)
        versions = {
            "node": tool_version("node", "--version"),
            "zstd": tool_version("zstd", "--version"),
            "tar": tool_version("tar", "--version"),
            "@actions/cache": _package_version(client, "@actions/cache"),
            "python": sys.version.split()[0],
        }
        document = report(runs, size, versions)
        if args.json:
            args.json.write_text(json.dumps(document, indent=1))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def _package_version(directory: Path, package: str) -> str:
    try:
        manifest = directory / "node_modules" / package / "package.json"
        return str(json.loads(manifest.read_text())["version"])
    except (OSError, ValueError, KeyError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
