"""`python -m cache_action restore|save` as a job runs it: a child process, settings from flags
and the S3_* / AWS_REGION environment, JSON on stdout, warnings and errors on stderr.

Every output of every run in this module is checked for secret values.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cli import Run, run_cache_action
from tests.components import require_tool
from tests.roots import (
    BuiltImage,
    add_image,
    add_layer,
    blob_digests,
    copy_root,
    corrupt_blob_files,
    push_into_root,
    tags,
    tree,
)
from tests.seaweed import S3Server

REPO_ROOT = Path(__file__).resolve().parents[2]
APP = "cache/app"
BAD_SECRET = "wrong-secret-7f3a9c1e5b"  # a deliberately wrong test value
OUTPUTS: list[str] = []  # every stdout/stderr of this module's runs
SECRETS: set[str] = {BAD_SECRET}


def clean_env(tmp_path: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """The machine's environment minus any AWS/S3 setting or config, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_")) and k != "CI"}
    env.update(
        {
            "HOME": str(tmp_path),
            "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONPATH": str(REPO_ROOT),
        }
    )
    env.update(extra)
    return env


def cli(tmp_path: Path, *args: str, env: Mapping[str, str] | None = None) -> Run:
    run = run_cache_action(clean_env(tmp_path, env or {}), *args, cwd=tmp_path)
    OUTPUTS.extend([run.stdout, run.stderr])
    return run


def restore(tmp_path: Path, store: str, root: Path, *args: str, env: Any = None) -> Run:
    return cli(tmp_path, "restore", "--root", str(root), "--store", store, *args, env=env)


def save(tmp_path: Path, store: str, root: Path, *args: str, env: Any = None) -> Run:
    return cli(tmp_path, "save", "--root", str(root), "--store", store, *args, env=env)


@pytest.fixture(autouse=True, scope="module")
def _no_secret_in_any_output() -> Iterator[None]:
    yield
    assert OUTPUTS, "no CLI run was recorded"
    for output in OUTPUTS:
        for secret in SECRETS:
            assert secret not in output


@pytest.fixture(autouse=True)
def _no_traceback(request: pytest.FixtureRequest) -> Iterator[None]:
    start = len(OUTPUTS)
    yield
    for output in OUTPUTS[start:]:
        assert "Traceback" not in output, output


@dataclass
class Target:
    kind: str
    url: str
    env: dict[str, str]


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return Target("local", f"local://{tmp_path / 'store'}", {})
    s3: S3Server = request.getfixturevalue("seaweed")
    SECRETS.update({s3.secret_key, s3.readonly_secret_key})
    return Target("s3", s3.url(s3.new_prefix("cli")), s3.env())


@dataclass(frozen=True)
class Roots:
    one: Path  # cache/app:v1
    two: Path  # cache/app:v2 (another scope's build)
    v1: BuiltImage
    v2: BuiltImage


@pytest.fixture(scope="module")
def roots(tmp_path_factory: pytest.TempPathFactory) -> Roots:
    skopeo = require_tool("skopeo")
    base = tmp_path_factory.mktemp("cli-roots")
    layouts = base / "layouts"
    shared = add_layer(layouts, 120_000, "shared")
    v1 = add_image(layouts, [shared, add_layer(layouts, 80_000, "one")], "v1")
    v2 = add_image(layouts, [shared, add_layer(layouts, 90_000, "two")], "v2")
    one, two = base / "one", base / "two"
    push_into_root(one, base / "push-one", skopeo, [(v1, APP)])
    push_into_root(two, base / "push-two", skopeo, [(v2, APP)])
    return Roots(one, two, v1, v2)


def dead_endpoint() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- the happy paths --------------------------------------------------------------------------


def test_save_then_restore_round_trips_a_root(target: Target, roots: Roots, tmp_path: Path) -> None:
    root = copy_root(roots.one, tmp_path / "job")
    saved = save(tmp_path, target.url, root, "--scope", "app", "--ref", "main", env=target.env)
    assert saved.code == 0, saved.stderr
    assert "warning" not in saved.stderr
    document = saved.json
    assert document["saved"] is True
    assert document["blobs_uploaded"] == len(blob_digests(root / "blobs"))
    assert "/app/refs%2Fheads%2Fmain/" in document["key"]

    restored_root = tmp_path / "restored"
    restored = restore(
        tmp_path,
        target.url,
        restored_root,
        "--scope",
        "app",
        "--ref",
        "refs/heads/main",
        env=target.env,
    )
    assert restored.code == 0, restored.stderr
    assert restored.json["hit"] == "exact"
    assert [e["key"] for e in restored.json["restored"]] == [document["key"]]
    assert restored.json["tags_dropped"] == []
    assert tree(restored_root) == tree(root)


def test_second_save_without_change_is_skipped(
    target: Target, roots: Roots, tmp_path: Path
) -> None:
    root = copy_root(roots.one, tmp_path / "job")
    args = ("--scope", "app", "--ref", "main")
    assert save(tmp_path, target.url, root, *args, env=target.env).json["saved"] is True
    again = save(tmp_path, target.url, root, *args, env=target.env)
    assert again.code == 0
    assert again.json["saved"] is False
    assert again.json["skipped_reason"]
    assert again.json["blobs_uploaded"] == 0


def test_restore_merges_scopes_and_falls_back_to_other_refs(
    target: Target, roots: Roots, tmp_path: Path
) -> None:
    one = copy_root(roots.one, tmp_path / "one")
    two = copy_root(roots.two, tmp_path / "two")
    first = save(tmp_path, target.url, one, "--scope", "amd64", "--ref", "main", env=target.env)
    second = save(tmp_path, target.url, two, "--scope", "arm64", "--ref", "dev", env=target.env)
    assert first.code == second.code == 0

    merged = tmp_path / "merged"
    run = restore(
        tmp_path,
        target.url,
        merged,
        "--scope",
        "amd64",
        "--scope",
        "arm64",
        "--ref",
        "refs/pull/5/merge",
        "--fallback-ref",
        "dev",
        "--fallback-ref",
        "main",
        env=target.env,
    )
    assert run.code == 0, run.stderr
    assert run.json["hit"] == "partial"
    assert sorted(e["key"] for e in run.json["restored"]) == sorted(
        [first.json["key"], second.json["key"]]
    )
    assert tags(merged, APP) == {"v1": roots.v1.manifest_digest, "v2": roots.v2.manifest_digest}
    assert corrupt_blob_files(merged) == []


def test_restore_with_nothing_saved_is_a_cold_cache(target: Target, tmp_path: Path) -> None:
    run = restore(
        tmp_path, target.url, tmp_path / "r", "--scope", "app", "--ref", "main", env=target.env
    )
    assert run.code == 0, run.stderr
    assert run.json["hit"] == "none"
    assert run.json["restored"] == []


def test_restore_reports_tags_dropped_for_a_corrupt_blob(
    target: Target, roots: Roots, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    root = copy_root(roots.two, tmp_path / "job")
    assert (
        save(tmp_path, target.url, root, "--scope", "app", "--ref", "main", env=target.env).code
        == 0
    )
    algorithm, hex_digest = roots.v2.layers[1].digest.split(":")
    if target.kind == "s3":
        s3: S3Server = request.getfixturevalue("seaweed")
        prefix = target.url.split("/", 3)[3]
        s3.client().put_object(
            Bucket=s3.bucket, Key=f"{prefix}/blobs/{algorithm}/{hex_digest}", Body=b"garbage"
        )
    else:
        (tmp_path / "store" / "blobs" / algorithm / hex_digest).write_bytes(b"garbage")
    restored_root = tmp_path / "restored"
    run = restore(
        tmp_path, target.url, restored_root, "--scope", "app", "--ref", "main", env=target.env
    )
    assert run.code == 0, run.stderr
    assert run.json["tags_dropped"] == [f"{APP}:v2"]
    assert hex_digest in run.stderr  # the warning names the blob
    assert tags(restored_root, APP) == {}
    assert corrupt_blob_files(restored_root) == []


# --- store failures: a warning and a cold cache, or exit 2 with --strict ----------------------


def test_dead_s3_endpoint_warns_and_exits_0_unless_strict(roots: Roots, tmp_path: Path) -> None:
    secret = "dead-endpoint-secret-4b1d"
    SECRETS.add(secret)
    env = {
        "S3_ENDPOINT": dead_endpoint(),
        "S3_ACCESS_KEY": "AKDEAD",
        "S3_SECRET_KEY": secret,
        "AWS_REGION": "eu-west-1",
    }
    lenient_root = copy_root(roots.one, tmp_path / "job")
    strict_root = copy_root(roots.one, tmp_path / "job-strict")
    before = tree(lenient_root)
    cold, cold_strict = tmp_path / "cold", tmp_path / "cold-strict"
    url = "s3://cache/ci"
    common = ("--scope", "app", "--ref", "main")
    calls = {  # separate roots: the root lock would refuse a second run on the same one
        "restore": lambda: restore(tmp_path, url, cold, *common, env=env),
        "save": lambda: save(tmp_path, url, lenient_root, *common, env=env),
        "restore-strict": lambda: restore(tmp_path, url, cold_strict, *common, "--strict", env=env),
        "save-strict": lambda: save(tmp_path, url, strict_root, *common, "--strict", env=env),
    }
    with ThreadPoolExecutor(len(calls)) as pool:  # each waits out the client's retries
        futures = {name: pool.submit(call) for name, call in calls.items()}
        runs = {name: future.result() for name, future in futures.items()}

    for verb in ("restore", "save"):
        lenient, strict = runs[verb], runs[f"{verb}-strict"]
        assert lenient.code == 0, lenient.stderr
        assert lenient.stdout == ""
        assert f"warning: {verb} failed, continuing without cache" in lenient.stderr
        assert "Could not connect to the endpoint URL" in lenient.stderr
        assert strict.code == 2, strict.stderr
        assert f"error: {verb} from s3://cache/ci/ failed:" in strict.stderr
        assert "Could not connect" in strict.stderr
    for directory in (cold, cold_strict):
        assert blob_digests(directory) == set()
        assert tags(directory, APP) == {}
    assert tree(lenient_root) == tree(strict_root) == before


def test_wrong_s3_credentials_warn_and_never_show_the_secret(
    seaweed: S3Server, roots: Roots, tmp_path: Path
) -> None:
    env = {**seaweed.env(), "S3_SECRET_KEY": BAD_SECRET}
    url = seaweed.url(seaweed.new_prefix("badauth"))
    root = copy_root(roots.one, tmp_path / "job")
    for verb, call in (("restore", restore), ("save", save)):
        directory = tmp_path / "cold" if verb == "restore" else root
        lenient = call(tmp_path, url, directory, "--scope", "app", "--ref", "main", env=env)
        assert lenient.code == 0
        assert f"warning: {verb} failed" in lenient.stderr
        assert "SignatureDoesNotMatch" in lenient.stderr
        strict = call(
            tmp_path, url, directory, "--scope", "app", "--ref", "main", "--strict", env=env
        )
        assert strict.code == 2
        assert "SignatureDoesNotMatch" in strict.stderr
        for output in (lenient.stdout, lenient.stderr, strict.stdout, strict.stderr):
            assert BAD_SECRET not in output
    assert seaweed.keys(url.split("/", 3)[3]) == {}


def test_read_only_s3_credentials_save_warns_and_publishes_nothing(
    seaweed: S3Server, roots: Roots, tmp_path: Path
) -> None:
    SECRETS.update({seaweed.secret_key, seaweed.readonly_secret_key})
    prefix = seaweed.new_prefix("readonly")
    url = seaweed.url(prefix)
    root = copy_root(roots.one, tmp_path / "job")
    readonly = seaweed.env(readonly=True)
    lenient = save(tmp_path, url, root, "--scope", "app", "--ref", "main", env=readonly)
    assert lenient.code == 0, lenient.stderr
    assert "warning: save failed" in lenient.stderr
    assert "AccessDenied" in lenient.stderr or "Access Denied" in lenient.stderr
    strict = save(tmp_path, url, root, "--scope", "app", "--ref", "main", "--strict", env=readonly)
    assert strict.code == 2
    assert "error: save from" in strict.stderr
    assert seaweed.keys(f"{prefix}/entries/") == {}

    writer = save(tmp_path, url, root, "--scope", "app", "--ref", "main", env=seaweed.env())
    assert writer.json["saved"] is True
    cold = tmp_path / "reader"
    reader = restore(tmp_path, url, cold, "--scope", "app", "--ref", "main", env=readonly)
    assert reader.code == 0
    assert reader.json["hit"] == "exact"


# --- input validation: exit 2, the message names the setting and the value -------------------


@pytest.mark.parametrize(
    ("args", "setting", "value"),
    [
        (("--ref", "main branch"), "--ref", "main branch"),
        (("--ref", "main", "--scope", "a/b"), "--scope", "a/b"),
        (("--ref", "main", "--namespace", "-x"), "--namespace", "-x"),
        (("--ref", "main", "--fallback-ref", "a,b"), "--fallback-ref", "a,b"),
        (("--ref", "main", "--store", "ftp://host/x"), "--store", "ftp://host/x"),
        (("--ref", "main", "--store", "local://relative/dir"), "--store", "local://relative/dir"),
        (("--ref", "main", "--store", "s3://"), "--store", "s3://"),
    ],
)
def test_bad_settings_exit_2_naming_setting_and_value(
    tmp_path: Path, args: tuple[str, ...], setting: str, value: str
) -> None:
    flags = dict(zip(args[::2], args[1::2], strict=True))
    flags.setdefault("--store", f"local://{tmp_path / 'store'}")
    flags.setdefault("--scope", "app")
    command = ["restore", "--root", str(tmp_path / "root")]
    for flag, flag_value in flags.items():
        command.append(f"{flag}={flag_value}")
    run = cli(tmp_path, *command)
    assert run.code == 2
    assert f"error: {setting}: {value!r} is not valid" in run.stderr
    assert not (tmp_path / "store").exists()


def test_malformed_s3_endpoint_exits_2_naming_the_variable(tmp_path: Path) -> None:
    env = {"S3_ENDPOINT": "localhost:9000", "S3_ACCESS_KEY": "a", "S3_SECRET_KEY": BAD_SECRET}
    run = restore(
        tmp_path, "s3://bucket/p", tmp_path / "r", "--scope", "app", "--ref", "main", env=env
    )
    assert run.code == 2
    assert "error: S3_ENDPOINT: 'localhost:9000' is not valid" in run.stderr


def test_missing_required_flag_is_a_usage_error(tmp_path: Path) -> None:
    run = cli(tmp_path, "save", "--root", str(tmp_path), "--store", "local:///x", "--ref", "m")
    assert run.code == 2
    assert "--scope" in run.stderr
    run = cli(
        tmp_path,
        "save",
        "--root",
        str(tmp_path),
        "--store",
        "local:///x",
        "--ref",
        "m",
        "--scope",
        "a",
        "--fallback-ref",
        "main",
    )
    assert run.code == 2  # save writes one entry: fallbacks are for restore
    assert "unrecognized arguments: --fallback-ref main" in run.stderr
