"""The action layer without Docker: inputs → store spec and scope plan → what each stage decides
(restore, outputs, save policies, summaries). The stages run in this process with the runner's
file commands; the registry cannot start here (no action container), which is itself one of
the decisions: a warning and empty outputs, or a failure in strict mode."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cache_action.action import stages
from cache_action.action.inputs import Inputs, SavePolicy
from cache_action.errors import InputError
from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.stores.spec import GhaSpec, LocalSpec, S3Spec
from tests.components import RegistryProcess
from tests.prune_helpers import Pusher, layer
from tests.runner import parse_commands, parse_file_command

NS = "octo-org.octo-repo"
MAIN = "refs/heads/main"


@pytest.fixture
def job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A job's environment: runner variables, fresh file-command files, no inputs yet."""
    commands = tmp_path / "_runner_file_commands"
    commands.mkdir()
    env = {
        "GITHUB_REPOSITORY": "octo-org/octo-repo",
        "GITHUB_REF": MAIN,
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_WORKFLOW_REF": "octo-org/octo-repo/.github/workflows/ci.yml@refs/heads/main",
        "GITHUB_JOB": "build",
        "GITHUB_RUN_ID": "41",
        "RUNNER_TEMP": str(tmp_path / "_temp"),
    }
    for name in ("GITHUB_OUTPUT", "GITHUB_STATE", "GITHUB_STEP_SUMMARY"):
        path = commands / name.lower()
        path.write_text("")
        env[name] = str(path)
        monkeypatch.setenv(name, str(path))  # actions-toolkit reads os.environ
    yield env


def stage_inputs(**values: str) -> dict[str, str]:
    return {f"INPUT_{name.upper().replace('_', '-')}": value for name, value in values.items()}


def run_stage(
    stage: Any, env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, list[Any], dict[str, str]]:
    code = stage(env)
    annotations, _, _ = parse_commands(capsys.readouterr().out)
    outputs = parse_file_command(Path(env["GITHUB_OUTPUT"]).read_text())
    return code, annotations, outputs


def carry_state(env: dict[str, str]) -> dict[str, str]:
    """The runner hands main's saved state to post as STATE_* variables."""
    state = parse_file_command(Path(env["GITHUB_STATE"]).read_text())
    return {**env, **{f"STATE_{name}": value for name, value in state.items()}}


# --- inputs -----------------------------------------------------------------------------------


def test_inputs_parse_into_a_store_spec_and_typed_settings() -> None:
    inputs = Inputs.from_env(
        {
            **stage_inputs(store="s3://bucket/ci/cache", s3_region="eu-west-1"),
            **stage_inputs(scope="app", ttl="36h", max_size="500MiB", save="always"),
            "GITHUB_REPOSITORY": "octo-org/octo-repo",
        }
    )
    assert inputs.store == S3Spec("bucket", "ci/cache/", region="eu-west-1")
    assert (inputs.scope, inputs.namespace) == ("app", NS)
    assert (inputs.ttl_seconds, inputs.max_size_bytes) == (36 * 3600, 500 * 1024**2)
    assert inputs.save is SavePolicy.ALWAYS
    assert Inputs.from_env(stage_inputs(store="gha", github_token="t")).store == GhaSpec("t")
    assert Inputs.from_env(stage_inputs(store="local:///srv/c")).store == LocalSpec(Path("/srv/c"))


def test_the_action_ignores_the_service_s3_variables() -> None:
    """S3_* configure the standalone service and the CLI; in a job they must not redirect the
    action's writes. Only its inputs (and boto3's own AWS chain) count."""
    inputs = Inputs.from_env(
        {
            **stage_inputs(store="s3://bucket"),
            "S3_ENDPOINT": "http://attacker.example:9000",
            "S3_ACCESS_KEY": "k",
            "S3_SECRET_KEY": "s",
        }
    )
    assert inputs.store == S3Spec("bucket")


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("store", "ftp://x", "local:///ABSOLUTE/PATH, s3://BUCKET[/PREFIX] or gha"),
        ("store", "local://relative", "an absolute path: local:///ABSOLUTE/PATH"),
        ("store", "s3://", "s3://BUCKET[/PREFIX]"),
        ("s3-endpoint", "minio:9000", "an http:// or https:// URL, or empty for AWS"),
        ("port", "0", "a TCP port number from 1 to 65535"),
        ("mode", "all", "min or max"),
        ("save", "sometimes", "auto or always or never"),
        ("ttl", "a week", "a number with a unit s, m, h, d or w"),
        ("strict", "yes", "true or false"),
    ],
)
def test_a_bad_input_names_itself_its_value_and_what_is_accepted(
    name: str, value: str, accepted: str
) -> None:
    with pytest.raises(InputError) as error:
        Inputs.from_env({f"INPUT_{name.upper()}": value})
    assert error.value.name == name
    assert str(error.value).startswith(f"{name}: {value!r} is not valid; expected {accepted}")


# --- main -------------------------------------------------------------------------------------


def test_main_restores_then_warns_and_empties_the_outputs_when_no_registry_can_start(
    job: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**job, **stage_inputs(store=f"local://{tmp_path / 'store'}", scope="app", port="5123")}
    code, annotations, outputs = run_stage(stages.main, env, capsys)
    assert code == 0
    assert [a.level for a in annotations] == ["warning"]
    assert annotations[0].message.startswith("The cache registry did not start")
    assert outputs["cache-hit"] == "none"
    assert outputs["cache-from"] == outputs["cache-to"] == outputs["registry"] == ""
    root = tmp_path / "_temp" / "cache-action-5123" / "root"
    assert root.is_dir()

    strict = {**env, "INPUT_STRICT": "true"}
    Path(env["GITHUB_OUTPUT"]).write_text("")
    code, annotations, _ = run_stage(stages.main, strict, capsys)
    assert code == 1
    assert [(a.level, a.title) for a in annotations] == [("error", "BuildKit cache (strict)")]


def test_main_with_a_bad_input_fails_with_one_annotation_and_post_does_nothing(
    job: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    env = {**job, **stage_inputs(store="nowhere")}
    code, annotations, _ = run_stage(stages.main, env, capsys)
    assert code == 1
    assert [(a.level, a.title) for a in annotations] == [("error", "Invalid input 'store'")]
    code, annotations, _ = run_stage(stages.post, carry_state(env), capsys)
    assert (code, annotations) == (0, [])


# --- post: what gets saved ----------------------------------------------------------------------


def main_then_post(
    job: dict[str, str], store: Path, capsys: pytest.CaptureFixture[str], **more: str
) -> tuple[int, list[Any], str]:
    env = {**job, **stage_inputs(store=f"local://{store}", scope="app", port="5124", **more)}
    run_stage(stages.main, env, capsys)
    root = Path(json.loads(carry_state(env)["STATE_cache_action"])["root"])
    if not list(root.glob("cache/index.json")):  # the build exports its cache (first job only)
        export_cache(root, store.parent / "build")
    code, annotations, _ = run_stage(stages.post, carry_state(env), capsys)
    summary = Path(env["GITHUB_STEP_SUMMARY"]).read_text()
    Path(env["GITHUB_STEP_SUMMARY"]).write_text("")
    return code, annotations, summary


def export_cache(root: Path, work: Path) -> None:
    """What BuildKit's `cache-to` leaves: a cache export under the scope's tag."""
    work.mkdir(parents=True, exist_ok=True)
    server = RegistryProcess(root, work / "ready.json", work / "registry.log").start()
    try:
        pusher = Pusher(server.url)
        pusher.cache("cache", "app", [layer(4000, "a"), layer(2000, "b")])
        pusher.close()
    finally:
        assert server.stop() == 0, server.log()


def entries(store: Path) -> list[Path]:
    return sorted((store / "entries").rglob("*.json")) if (store / "entries").is_dir() else []


@pytest.mark.parametrize(
    ("inputs", "reason"),
    [
        ({"save": "never"}, "save: never"),
        ({"read_only": "true"}, "read-only was requested"),
    ],
)
def test_post_saves_nothing_when_told_not_to(
    job: dict[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    inputs: dict[str, str],
    reason: str,
) -> None:
    code, annotations, summary = main_then_post(job, tmp_path / "store", capsys, **inputs)
    assert code == 0
    assert [a for a in annotations if a.level == "error"] == []
    assert f"| Saved | nothing: {reason} |" in summary
    assert entries(tmp_path / "store") == []


def test_post_saves_once_then_skips_until_always_forces_it(
    job: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    code, _, summary = main_then_post(job, store, capsys)
    assert code == 0 and "| Saved | `entries/" in summary
    assert len(entries(store)) == 1
    # The next job restores that entry and changes nothing: auto skips, always saves anyway.
    _, _, summary = main_then_post(job, store, capsys)
    assert "| Saved | nothing: nothing changed since the restore |" in summary
    _, _, summary = main_then_post(job, store, capsys, save="always")
    assert "| Saved | `entries/" in summary
    assert len(entries(store)) == 2


def test_a_pull_request_target_job_saves_only_to_its_pull_request_ref(
    job: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7}, "repository": {}}))
    fork_job = {**job, "GITHUB_EVENT_NAME": "pull_request_target", "GITHUB_EVENT_PATH": str(event)}
    store = tmp_path / "store"
    code, _, _ = main_then_post(fork_job, store, capsys)
    assert code == 0
    saved = [p.relative_to(store / "entries").parts[:3] for p in entries(store)]
    assert saved == [(NS, "app", "refs%2Fpull%2F7%2Fmerge")]


def test_a_store_failure_at_save_warns_unless_strict(
    job: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocked = tmp_path / "store"
    blocked.write_text("a file where the store directory should be")
    code, annotations, _ = main_then_post(job, blocked, capsys)
    assert code == 0
    assert any(a.message.startswith("Saving the cache failed") for a in annotations)
    code, annotations, _ = main_then_post(job, blocked, capsys, strict="true")
    assert code == 1
    assert any(a.level == "error" for a in annotations)


def test_the_summary_reports_the_restore_prune_and_save(
    job: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "store"
    main_then_post(job, store, capsys)
    _, _, summary = main_then_post(job, store, capsys)
    rows = dict(
        line.strip("|").split("|", 1)
        for line in summary.splitlines()
        if line.startswith("| ") and line.count("|") == 3
    )
    rows = {k.strip(): v.strip() for k, v in rows.items()}
    assert rows["Store"] == f"local://{store}"
    assert rows["Restored"].startswith("**exact** from `entries/")
    assert rows["Pruned"].startswith("0 blobs")
    assert "Seconds" in rows
    storage = Storage.open(tmp_path / "_temp" / "cache-action-5124" / "root")
    assert EntryName(NS, "app", MAIN).prefix in storage.layout.restored_path.read_text()
