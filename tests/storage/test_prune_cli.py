"""`python -m cache_action prune`: settings and their errors, the --json and text reports, exit
codes, the last run's protection (stats.json), and refusing a root a server holds."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cache_action.units import DURATION_FORMS, SIZE_FORMS
from tests.components import RegistryProcess
from tests.prune_helpers import (
    Pushed,
    Pusher,
    access_tags,
    blob_path,
    closures,
    disk_bytes,
    index_tags,
    layer,
    run_cli,
    set_tag_times,
    snapshot,
)

DAY = 86_400.0
USAGE = "usage: python -m cache_action"


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with two tags, for tests that must leave it untouched."""
    work = tmp_path_factory.mktemp("shared")
    server = RegistryProcess(work / "root", work / "ready.json", work / "registry.log").start()
    push = Pusher(server.url)
    push.cache("cache", "a", [layer(10_000, "a")])
    push.cache("cache", "b", [layer(10_001, "b")])
    push.close()
    assert server.stop() == 0
    set_tag_times(work / "root", {"cache:a": time.time() - 30 * DAY})
    return work / "root"


def built(registry: RegistryProcess, ages: dict[str, float]) -> tuple[Path, Pushed]:
    """Push one BuildKit cache per tag (`cache:<tag>` → age in seconds), stop, set the ages."""
    push = Pusher(registry.url)
    for i, label in enumerate(ages):
        push.cache("cache", label.split(":")[1], [layer(20_000 + 100 * i, label)])
    push.close()
    assert registry.stop() == 0
    now = time.time()
    set_tag_times(registry.root, {label: now - age for label, age in ages.items()})
    return registry.root, push.pushed


# --- settings ---


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl", "7days"], f"error: --ttl: '7days' is not valid; expected {DURATION_FORMS}"),
        (["--ttl=-1d"], f"error: --ttl: '-1d' is not valid; expected {DURATION_FORMS}"),
        (["--ttl", "1h30m"], f"error: --ttl: '1h30m' is not valid; expected {DURATION_FORMS}"),
        (["--max-size", "lots"], f"error: --max-size: 'lots' is not valid; expected {SIZE_FORMS}"),
        (["--max-size=-5MB"], f"error: --max-size: '-5MB' is not valid; expected {SIZE_FORMS}"),
        (["--max-size", "2PB"], f"error: --max-size: '2PB' is not valid; expected {SIZE_FORMS}"),
        (
            ["--max-size", "0.5B"],
            f"error: --max-size: '0.5B' is not valid; expected {SIZE_FORMS}; at least 1 byte",
        ),
        (
            ["--keep", "-1"],
            "error: --keep: '-1' is not valid; expected a whole number of tags, 0 or more",
        ),
        (
            ["--keep", "x"],
            "error: --keep: 'x' is not valid; expected a whole number of tags, 0 or more",
        ),
        (
            ["--keep", "1.5"],
            "error: --keep: '1.5' is not valid; expected a whole number of tags, 0 or more",
        ),
    ],
)
def test_invalid_settings_fail_naming_the_setting_and_the_accepted_forms(
    shared_root: Path, args: list[str], message: str
) -> None:
    before = snapshot(shared_root)
    result = run_cli("prune", "--root", str(shared_root), *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == message
    assert snapshot(shared_root) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--verify", "bogus"],
            "argument --verify: invalid choice: 'bogus' (choose from 'size', 'full')",
        ),
        (["--ttl"], "argument --ttl: expected one argument"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_malformed_command_lines_fail_with_usage(
    shared_root: Path, args: list[str], message: str
) -> None:
    before = snapshot(shared_root)
    result = run_cli("prune", "--root", str(shared_root), *args)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith(USAGE)
    assert result.stderr.strip().endswith(message)
    assert snapshot(shared_root) == before


def test_root_is_required_and_must_be_a_directory(tmp_path: Path) -> None:
    result = run_cli("prune", "--ttl", "7d")
    assert result.returncode == 2
    assert result.stderr.strip().endswith("the following arguments are required: --root")
    missing = tmp_path / "nope"
    result = run_cli("prune", "--root", str(missing))
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.strip() == (
        f"error: --root: '{missing}' is not valid; expected an existing directory"
    )
    assert not missing.exists()


# --- reports ---


def test_json_report(registry: RegistryProcess) -> None:
    root, pushed = built(registry, {"cache:old": 10 * DAY, "cache:mid": 2 * DAY, "cache:new": 60})
    budget = pushed.bytes_of("cache:new") + 500
    before = disk_bytes(root)
    result = run_cli(
        "prune", "--root", str(root), "--ttl", "7d", "--max-size", str(budget), "--json"
    )
    assert (result.returncode, result.stderr) == (0, "")
    assert json.loads(result.stdout) == {
        "dry_run": False,
        "bytes_before": before,
        "bytes_after": pushed.bytes_of("cache:new"),
        "tags_removed": [
            {"tag": "cache:mid", "reason": "budget"},
            {"tag": "cache:old", "reason": "ttl"},
        ],
        "blobs_removed": 6,
        "bytes_freed": before - pushed.bytes_of("cache:new"),
    }
    assert closures(root) == {"cache:new": set(pushed.closures["cache:new"])}
    assert disk_bytes(root) == pushed.bytes_of("cache:new")
    assert set(access_tags(root)) == {"cache:new"}


def test_text_report_and_dry_run(registry: RegistryProcess) -> None:
    root, pushed = built(registry, {"cache:old": 10 * DAY, "cache:new": 60})
    before_bytes = disk_bytes(root)
    freed = before_bytes - pushed.bytes_of("cache:new")
    expected_tail = f"3 blobs, {freed} bytes: {before_bytes} → {pushed.bytes_of('cache:new')} bytes"

    before = snapshot(root)
    dry = run_cli("prune", "--root", str(root), "--ttl", "7d", "--dry-run")
    assert (dry.returncode, dry.stderr) == (0, "")
    assert dry.stdout.splitlines() == [
        "would remove cache:old (ttl)",
        f"would remove {expected_tail}",
    ]
    assert snapshot(root) == before

    dry_json = run_cli("prune", "--root", str(root), "--ttl", "7d", "--dry-run", "--json")
    assert json.loads(dry_json.stdout)["dry_run"] is True
    assert snapshot(root) == before

    real = run_cli("prune", "--root", str(root), "--ttl", "7d")
    assert (real.returncode, real.stderr) == (0, "")
    assert real.stdout.splitlines() == ["removed cache:old (ttl)", f"removed {expected_tail}"]
    assert set(index_tags(root)) == {"cache:new"}

    # Nothing left to do: still success.
    again = run_cli("prune", "--root", str(root), "--ttl", "7d")
    assert again.returncode == 0
    assert again.stdout.splitlines()[-1].startswith("removed 0 blobs, 0 bytes")


def test_verify_full_from_the_command_line(registry: RegistryProcess) -> None:
    root, pushed = built(registry, {"cache:a": 60, "cache:b": 60})
    layer_a = next(d for d, data in pushed.closures["cache:a"].items() if len(data) == 20_000)
    path = blob_path(root, "cache", layer_a)
    data = bytearray(path.read_bytes())
    data[0] ^= 1
    path.write_bytes(bytes(data))

    default = run_cli("prune", "--root", str(root), "--json")
    assert json.loads(default.stdout)["tags_removed"] == []
    full = run_cli("prune", "--root", str(root), "--verify", "full", "--json")
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["tags_removed"] == [{"tag": "cache:a", "reason": "broken"}]
    assert closures(root) == {"cache:b": set(pushed.closures["cache:b"])}


# --- the last run's protection ---


def test_tags_the_last_run_used_are_protected(registry: RegistryProcess) -> None:
    """protect_since is the start of the last serve (stats.json): what that build read or wrote
    stays, even when the budget cannot be met."""
    root, pushed = built(registry, {"cache:a": 3 * DAY, "cache:b": 2 * DAY, "cache:c": DAY})
    registry.start()
    push = Pusher(registry.url, pushed)
    assert push.client.resolve("cache", "b").status == 200  # imported by the last build
    push.cache("cache", "d", [layer(20_500, "d")])  # exported by it
    push.close()
    assert registry.stop() == 0

    result = run_cli("prune", "--root", str(root), "--max-size", "1B", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["tags_removed"] == [
        {"tag": "cache:a", "reason": "budget"},
        {"tag": "cache:c", "reason": "budget"},
    ]
    assert report["bytes_after"] == pushed.bytes_of("cache:b", "cache:d") > 1
    assert closures(root) == {
        label: set(pushed.closures[label]) for label in ("cache:b", "cache:d")
    }


def test_an_unreadable_last_run_protects_nothing(registry: RegistryProcess) -> None:
    root, _ = built(registry, {"cache:a": 60})
    (root / ".cache-action" / "stats.json").write_text('{"started_at": "yesterday"}')
    result = run_cli("prune", "--root", str(root), "--max-size", "1B", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tags_removed"] == [{"tag": "cache:a", "reason": "budget"}]


# --- one writer per root ---


def test_prune_refuses_while_a_server_holds_the_root(registry: RegistryProcess) -> None:
    push = Pusher(registry.url)
    push.cache("cache", "a", [layer(10_000, "a")])
    push.close()
    assert registry.process is not None
    pid = registry.process.pid
    time.sleep(0.1)
    before = snapshot(registry.root)
    for extra in ([], ["--dry-run"], ["--json", "--max-size", "1B"]):
        result = run_cli("prune", "--root", str(registry.root), *extra)
        assert (result.returncode, result.stdout) == (2, "")
        assert result.stderr.strip() == (
            f"error: {registry.root} is in use by serve (pid {pid}); stop it before running prune"
        )
    assert snapshot(registry.root) == before
    assert push.client.resolve("cache", "a").status == 200  # the server is unaffected

    assert registry.stop() == 0
    result = run_cli("prune", "--root", str(registry.root), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["tags_removed"] == []
