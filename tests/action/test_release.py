"""The release: scripts/pin_action_image.py on action.yml, and .github/workflows/release.yml —
its triggers, permissions and steps as parsed YAML, and its shell steps that need no Docker or
GitHub (version, guard, image name, release commit, tags) run against a local git origin."""

from __future__ import annotations

import ast
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from scripts import pin_action_image
from tests.components import require_tool
from tests.runner import parse_commands, parse_file_command, yaml

ROOT = Path(__file__).resolve().parents[2]
ACTION_YML = ROOT / "action.yml"
SCRIPT = ROOT / "scripts" / "pin_action_image.py"
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"

IMAGE = "ghcr.io/owner/cache-action"
DIGEST = "sha256:" + "0123456789abcdef" * 4
OTHER_DIGEST = "sha256:" + "fedcba9876543210" * 4
PINNED = f"docker://{IMAGE}@{DIGEST}"


def load(path: Path) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def pin(path: Path, *args: str) -> int:
    return pin_action_image.main(["--action-file", str(path), *args])


@pytest.fixture
def action_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "action.yml"
    shutil.copyfile(ACTION_YML, copy)
    return copy


# --- the branch ------------------------------------------------------------------------------


def test_action_yml_on_the_branch_builds_from_the_dockerfile() -> None:
    """Only release commits pin an image: main (and every branch) builds the Dockerfile, so
    `uses: ./` and development runs test the code they contain."""
    assert load(ACTION_YML)["runs"]["image"] == "Dockerfile"


# --- pin_action_image.py ---------------------------------------------------------------------


def test_pinning_the_real_action_yml_changes_only_the_image_line(
    action_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = action_copy.read_bytes()
    assert pin(action_copy, IMAGE, DIGEST) == 0
    after = action_copy.read_bytes()
    assert PINNED in capsys.readouterr().out

    old_lines, new_lines = before.split(b"\n"), after.split(b"\n")
    assert len(old_lines) == len(new_lines)
    changed = [i for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b]
    assert len(changed) == 1, changed
    assert old_lines[changed[0]] == b"  image: Dockerfile"
    assert new_lines[changed[0]] == f"  image: {PINNED}".encode()

    old, new = load(ACTION_YML), load(action_copy)
    assert new["runs"]["image"] == PINNED
    new["runs"]["image"] = old["runs"]["image"]
    assert new == old


def test_pinning_is_idempotent(action_copy: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert pin(action_copy, IMAGE, DIGEST) == 0
    once = action_copy.read_bytes()
    capsys.readouterr()
    assert pin(action_copy, IMAGE, DIGEST) == 0
    assert action_copy.read_bytes() == once
    assert "already" in capsys.readouterr().out


def test_pinning_again_replaces_the_previous_digest(action_copy: Path) -> None:
    assert pin(action_copy, IMAGE, DIGEST) == 0
    assert pin(action_copy, IMAGE, OTHER_DIGEST) == 0
    expected = ACTION_YML.read_text().replace(
        "  image: Dockerfile\n", f"  image: docker://{IMAGE}@{OTHER_DIGEST}\n"
    )
    assert action_copy.read_text() == expected


def test_only_the_image_key_of_runs_changes_and_every_other_byte_stays(tmp_path: Path) -> None:
    """An `image` input, a commented-out image, a nested `image:` under runs.env, a quoted
    value with a trailing comment, CRLF line endings: only runs.image's value changes."""
    lines = [
        "name: x  # comment",
        "inputs:",
        "  image:",
        "    description: not this one",
        "    default: 'also: not this'",
        "runs:   # the runs mapping",
        "  using: docker",
        "# image: commented out at column 0",
        "  # image: commented out",
        "  env:",
        "    image: nested, not this",
        "",
        "  image: 'Dockerfile'   # built on every job",
        "  entrypoint: entrypoint.py",
        "outputs: {}",
        "",
    ]
    path = tmp_path / "action.yml"
    path.write_bytes("\r\n".join(lines).encode())
    assert pin(path, IMAGE, DIGEST) == 0
    lines[12] = f"  image: '{PINNED}'   # built on every job"
    assert path.read_bytes() == "\r\n".join(lines).encode()
    document = load(path)
    assert document["runs"]["image"] == PINNED
    assert document["runs"]["env"] == {"image": "nested, not this"}
    assert document["inputs"]["image"]["default"] == "also: not this"


def test_show_prints_the_current_image(
    action_copy: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pin(action_copy, "--show") == 0
    assert capsys.readouterr().out == "Dockerfile\n"
    assert pin(action_copy, IMAGE, DIGEST) == 0
    capsys.readouterr()
    assert pin(action_copy, "--show") == 0
    assert capsys.readouterr().out == PINNED + "\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([IMAGE, "sha256:" + "a" * 63], "not sha256: followed by 64", id="short"),
        pytest.param([IMAGE, "sha256:" + "a" * 65], "not sha256: followed by 64", id="long"),
        pytest.param([IMAGE, "sha256:" + "A" * 64], "lowercase hex", id="uppercase-hex"),
        pytest.param([IMAGE, "sha256:" + "g" * 64], "not sha256:", id="not-hex"),
        pytest.param([IMAGE, "sha512:" + "a" * 128], "not sha256:", id="sha512"),
        pytest.param([IMAGE, "a" * 64], "not sha256:", id="no-algorithm"),
        pytest.param([IMAGE, DIGEST + "\n"], "not sha256:", id="trailing-newline"),
        pytest.param([IMAGE, ""], "not sha256:", id="empty-digest"),
        pytest.param(["ghcr.io/Owner/cache-action", DIGEST], "uppercase", id="uppercase-owner"),
        pytest.param(["GHCR.IO/owner/repo", DIGEST], "uppercase", id="uppercase-registry"),
        pytest.param([IMAGE + ":v1.2.3", DIGEST], "has a tag", id="tag"),
        pytest.param(["localhost:5000/repo:latest", DIGEST], "has a tag", id="tag-with-port"),
        pytest.param([f"{IMAGE}@{DIGEST}", DIGEST], "has a digest", id="digest-in-image"),
        pytest.param([f"docker://{IMAGE}", DIGEST], "docker://", id="docker-scheme"),
        pytest.param(["owner/cache-action", DIGEST], "registry host", id="no-registry"),
        pytest.param(["ghcr.io", DIGEST], "not REGISTRY/OWNER/REPO", id="registry-only"),
        pytest.param(["ghcr.io/owner/my repo", DIGEST], "not REGISTRY/OWNER/REPO", id="space"),
        pytest.param(["", DIGEST], "empty", id="empty-image"),
        pytest.param([IMAGE], "both required", id="no-digest"),
        pytest.param([], "both required", id="no-arguments"),
        pytest.param(["--show", IMAGE], "--show takes no", id="show-with-image"),
        pytest.param([IMAGE, DIGEST, "extra"], "unrecognized arguments", id="extra-argument"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_leave_the_file(
    action_copy: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    before = action_copy.read_bytes()
    assert pin(action_copy, *args) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pin_action_image.py: ") and err.endswith("\n"), err
    assert err.count("\n") == 1, err
    assert message in err, err
    assert action_copy.read_bytes() == before


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("name: x\n", "no top-level runs:", id="no-runs"),
        pytest.param("runs: {using: docker, image: Dockerfile}\n", "block mapping", id="flow"),
        pytest.param("runs:\n  using: docker\n", "no image: key", id="no-image"),
        pytest.param(
            "runs:\n  image: a\n  image: b\n", "more than one image", id="duplicate-image"
        ),
        pytest.param(
            "runs:\n  image: a\nruns:\n  image: b\n", "more than one top-level runs", id="two-runs"
        ),
        pytest.param("runs:\n  image: >-\n    Dockerfile\n", "one-line scalar", id="block-scalar"),
        pytest.param("runs:\n  image:\n", "one-line scalar", id="empty-value"),
        pytest.param("runs:\n  image: a#b\n", "one-line scalar", id="hash-in-value"),
        pytest.param("runs:\n  image: a b\n", "one-line scalar", id="space-in-value"),
        pytest.param("runs:\n  image: &x a\n", "one-line scalar", id="anchor"),
        pytest.param('runs:\n  image: "a\\"b"\n', "one-line scalar", id="escaped-quote"),
        pytest.param("inputs:\n  image: x\nruns:\n  using: docker\n", "no image", id="elsewhere"),
    ],
)
def test_an_action_yml_it_cannot_pin_exactly_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    path = tmp_path / "action.yml"
    path.write_text(text)
    assert pin(path, IMAGE, DIGEST) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and str(path) in err, err
    assert path.read_text() == text


def test_a_missing_or_binary_action_yml_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pin(tmp_path / "missing.yml", IMAGE, DIGEST) == 2
    assert "cannot read" in capsys.readouterr().err
    binary = tmp_path / "action.yml"
    binary.write_bytes(b"runs:\n  image: \xff\n")
    assert pin(binary, IMAGE, DIGEST) == 2
    assert "not UTF-8" in capsys.readouterr().err


def test_the_script_runs_as_the_workflow_calls_it(tmp_path: Path) -> None:
    """`python3 scripts/pin_action_image.py IMAGE DIGEST` from the checkout: action.yml in the
    working directory by default, no project import, isolated mode."""
    shutil.copyfile(ACTION_YML, tmp_path / "action.yml")
    run = [sys.executable, "-I", str(SCRIPT)]
    done = subprocess.run([*run, IMAGE, DIGEST], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert load(tmp_path / "action.yml")["runs"]["image"] == PINNED
    shown = subprocess.run([*run, "--show"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.stdout == PINNED + "\n"
    bad = subprocess.run([*run, IMAGE, "sha256:x"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1, bad.stderr


def test_the_script_imports_only_the_standard_library() -> None:
    tree = ast.parse(SCRIPT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module
            imported.add(node.module.split(".")[0])
    assert imported, "no imports found"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


# --- release.yml as data ---------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    return load(WORKFLOW)


def jobs() -> dict[str, dict[str, Any]]:
    found = workflow()["jobs"]
    assert isinstance(found, dict)
    return found


def steps(job: str) -> list[dict[str, Any]]:
    found = jobs()[job]["steps"]
    assert isinstance(found, list)
    return found


def step(job: str, name: str) -> dict[str, Any]:
    matching = [s for s in steps(job) if s.get("name") == name]
    assert len(matching) == 1, f"{job} has {len(matching)} steps named {name!r}"
    return matching[0]


def uses(job: str, action: str) -> list[dict[str, Any]]:
    return [s for s in steps(job) if str(s.get("uses", "")).split("@")[0] == action]


def runs_of(job: str) -> list[str]:
    return [s["run"] for s in steps(job) if "run" in s]


def github_filter(pattern: str) -> re.Pattern[str]:
    """A GitHub Actions filter pattern as a regex: [..] classes, + and ? after an atom,
    * (no /), ** (anything); every other character literal; the whole ref name must match."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1])
            i = end + 1
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append({"*": "[^/]*", "+": "+", "?": "?"}.get(char, re.escape(char)))
        i += 1
    return re.compile("".join(out))


def test_it_runs_on_pushed_semver_tags_only() -> None:
    document: dict[Any, Any] = workflow()
    triggers = document.get("on", document.get(True))  # PyYAML reads a bare `on` as True
    assert isinstance(triggers, dict) and set(triggers) == {"push"}, triggers
    push = triggers["push"]
    assert set(push) == {"tags"}, "no branches, no paths: a tag push and nothing else"
    patterns = [github_filter(p) for p in push["tags"]]

    def triggers_on(tag: str) -> bool:
        return any(p.fullmatch(tag) for p in patterns)

    for tag in ("v0.1.0", "v1.2.3", "v10.20.30"):
        assert triggers_on(tag), tag
    for tag in ("v1", "v1.2", "v1.2.3-rc.1", "1.2.3", "v1.2.x", "release", "vX.Y.Z"):
        assert not triggers_on(tag), tag


def test_permissions_are_least_privilege() -> None:
    assert workflow()["permissions"] == {}, "the default token grants nothing"
    granted = {name: job.get("permissions") for name, job in jobs().items()}
    assert granted == {
        "prepare": {"contents": "read"},
        "check": {"contents": "read"},
        "image": {"contents": "read", "packages": "write"},
        "release": {"contents": "write"},
    }


def test_releases_do_not_run_concurrently_or_get_cancelled() -> None:
    concurrency = workflow()["concurrency"]
    assert isinstance(concurrency, dict) and concurrency["group"]
    assert "${{" not in concurrency["group"], "one group for every tag: they all move vX"
    assert concurrency["cancel-in-progress"] is False


def test_shell_steps_are_strict_and_take_no_inline_expressions() -> None:
    shell = workflow()["defaults"]["run"]["shell"]
    assert shlex.split(shell)[0] == "bash" and "-euo" in shell and "pipefail" in shell
    for name, job in jobs().items():
        for s in job["steps"]:
            assert "shell" not in s, f"{name}: a step overrides the strict shell"
            if "run" in s:
                # Values reach scripts through env:, never spliced into the script text.
                assert "${{" not in s["run"], f"{name}: {s.get('name', s['run'][:40])}"


def test_checks_run_on_the_tagged_commit_before_anything_is_published() -> None:
    all_jobs = jobs()
    assert all_jobs["check"]["needs"] == "prepare"
    assert all_jobs["check"]["if"] == "needs.prepare.outputs.pinned == 'false'"
    assert "check" in all_jobs["image"]["needs"]
    assert "image" in all_jobs["release"]["needs"]
    commands = [line.strip() for run in runs_of("check") for line in run.splitlines()]
    assert "ruff check ." in commands
    assert "ruff format --check ." in commands
    assert any(c.split("#")[0].split() == ["mypy"] for c in commands), commands
    pytest_runs = [shlex.split(c) for c in commands if "pytest" in c]
    assert len(pytest_runs) == 1
    assert {"tests/action/test_action_metadata.py", "tests/action/test_release.py"} <= set(
        pytest_runs[0]
    )


def test_the_image_is_built_for_both_platforms_and_pushed_to_ghcr() -> None:
    names = [str(s.get("uses", s.get("name"))).split("@")[0] for s in steps("image")]
    order = [
        "docker/setup-qemu-action",
        "docker/setup-buildx-action",
        "docker/login-action",
        "docker/build-push-action",
    ]
    assert [n for n in names if n in order] == order
    (login,) = uses("image", "docker/login-action")
    assert login["with"]["registry"] == "ghcr.io"
    assert login["with"]["password"] == "${{ secrets.GITHUB_TOKEN }}"
    (build,) = uses("image", "docker/build-push-action")
    options = build["with"]
    assert set(options["platforms"].split(",")) == {"linux/amd64", "linux/arm64"}
    assert options["push"] is True
    assert options["tags"] == "${{ steps.name.outputs.tags }}"
    labels = dict(line.split("=", 1) for line in options["labels"].splitlines())
    assert {
        "org.opencontainers.image.source",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.version",
    } <= set(labels)
    assert jobs()["image"]["outputs"]["digest"] == "${{ steps.build.outputs.digest }}"
    assert build["id"] == "build"


def test_the_pushed_index_is_verified_and_smoke_tested_by_digest() -> None:
    names = [s.get("name") or s.get("uses") for s in steps("image")]
    build = names.index("Build and push")
    verify = step(
        "image", "Both platforms are in the pushed index, and the version tag is that index"
    )
    smoke = step("image", "Smoke-test the pushed image by digest")
    assert build < names.index(verify["name"]) < names.index(smoke["name"])
    for checked in (verify, smoke):
        assert checked["env"]["DIGEST"] == "${{ steps.build.outputs.digest }}"
    assert "imagetools inspect --raw" in verify["run"]
    assert all(p in verify["run"] for p in ("linux/amd64", "linux/arm64"))
    run_line = next(line for line in smoke["run"].splitlines() if "docker run" in line)
    assert '"${IMAGE}@${DIGEST}" --version' in run_line


def test_the_release_job_pins_with_the_script_and_publishes_the_digest() -> None:
    commit = step("release", "Commit action.yml pinned to the image")
    assert commit["env"]["IMAGE"] == "${{ needs.image.outputs.image }}"
    assert commit["env"]["DIGEST"] == "${{ needs.image.outputs.digest }}"
    calls = [
        shlex.split(line)
        for line in commit["run"].splitlines()
        if "scripts/pin_action_image.py" in line
    ]
    assert calls == [["python3", "scripts/pin_action_image.py", "${IMAGE}", "${DIGEST}"]]
    publish = step("release", "Publish the release")
    assert publish["env"]["DIGEST"] == "${{ needs.image.outputs.digest }}"
    gh = next(line for line in publish["run"].splitlines() if "gh release create" in line)
    assert "--generate-notes" in gh and "--verify-tag" in gh
    names = [s.get("name") for s in steps("release")]
    assert names.index(commit["name"]) < names.index("Move the tags to the release commit")
    assert names.index("Move the tags to the release commit") < names.index(publish["name"])


# --- release.yml's shell steps, run -----------------------------------------------------------

_EXPRESSION = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")


@dataclass
class StepResult:
    returncode: int
    stdout: str
    outputs: dict[str, str]

    @property
    def errors(self) -> list[str]:
        return [a.message for a in parse_commands(self.stdout)[0] if a.level == "error"]


def run_step(
    job: str, name: str, cwd: Path, context: Mapping[str, str], env: Mapping[str, str]
) -> StepResult:
    """One `run:` step as the runner runs it: the workflow's default shell on a script file,
    the step's env: with its expressions taken from `context`, a fresh GITHUB_OUTPUT."""
    s = step(job, name)
    script = cwd.parent / f"step-{len(list(cwd.parent.glob('step-*.sh')))}.sh"
    script.write_text(s["run"])
    output = script.with_suffix(".output")
    output.write_text("")
    step_env = {
        key: _EXPRESSION.sub(lambda m: context[m.group(1)], str(value))
        for key, value in s.get("env", {}).items()
    }
    shell = workflow()["defaults"]["run"]["shell"]
    command = [str(script) if part == "{0}" else part for part in shlex.split(shell)]
    done = subprocess.run(
        command,
        cwd=cwd,
        env={**env, **step_env, "GITHUB_OUTPUT": str(output)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    return StepResult(
        done.returncode, done.stdout + done.stderr, parse_file_command(output.read_text())
    )


class Repo:
    """A bare `origin` with main and release tags, and `checkout`: a clone detached at the
    pushed tag, as actions/checkout leaves the workspace."""

    def __init__(self, tmp_path: Path, git: str) -> None:
        self.git_binary = git
        self.env = {
            "PATH": str(Path(sys.executable).parent) + ":/usr/local/bin:/usr/bin:/bin",
            "HOME": str(tmp_path / "home"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(tmp_path / "gitconfig"),
            "LANG": "C.UTF-8",
        }
        (tmp_path / "home").mkdir()
        (tmp_path / "gitconfig").write_text(
            "[user]\n\tname = Maintainer\n\temail = maintainer@example.com\n"
            "[init]\n\tdefaultBranch = main\n[advice]\n\tdetachedHead = false\n"
        )
        self.origin = tmp_path / "origin.git"
        self.source = tmp_path / "source"
        self.checkout = tmp_path / "work" / "checkout"
        self.git("init", "--quiet", "--bare", str(self.origin))
        self.git("init", "--quiet", str(self.source))
        (self.source / "scripts").mkdir()
        shutil.copyfile(ACTION_YML, self.source / "action.yml")
        shutil.copyfile(SCRIPT, self.source / "scripts" / "pin_action_image.py")
        self.git("add", ".", cwd=self.source)
        self.git("commit", "--quiet", "-m", "Some work", cwd=self.source)
        self.git("remote", "add", "origin", str(self.origin), cwd=self.source)
        self.git("push", "--quiet", "origin", "main", cwd=self.source)
        self.sha = self.rev("HEAD", self.source)

    def git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(
            [self.git_binary, *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
        return done.stdout.strip()

    def rev(self, ref: str, cwd: Path | None = None) -> str:
        return self.git("rev-parse", ref, cwd=cwd or self.origin)

    def tag(self, name: str, ref: str = "HEAD") -> None:
        self.git("tag", "--annotate", "-m", name, name, ref, cwd=self.source)
        self.git("push", "--quiet", "origin", f"refs/tags/{name}", cwd=self.source)

    def clone_at(self, ref: str, checkout: str = "checkout") -> None:
        self.checkout = self.checkout.with_name(checkout)
        self.git("clone", "--quiet", str(self.origin), str(self.checkout))
        self.git("checkout", "--quiet", "--detach", ref, cwd=self.checkout)

    def github(self, tag: str) -> dict[str, str]:
        return {
            **self.env,
            "GITHUB_REF_NAME": tag,
            "GITHUB_SHA": self.sha,
            "GITHUB_REPOSITORY": "Owner/Cache-Action",
        }


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path, require_tool("git"))


def prepare(repo: Repo, tag: str) -> StepResult:
    return run_step("prepare", "Version from the tag", repo.checkout, {}, repo.github(tag))


def test_prepare_reads_the_version_and_whether_it_is_the_newest_of_its_major(repo: Repo) -> None:
    repo.tag("v1.2.3")
    repo.tag("v1.2.10")
    repo.tag("v10.0.0")  # another major: v1.* must not match it
    repo.clone_at("refs/tags/v1.2.10")
    result = prepare(repo, "v1.2.10")
    assert result.returncode == 0, result.stdout
    assert result.outputs == {
        "version": "v1.2.10",
        "number": "1.2.10",
        "major": "v1",
        "newest-in-major": "true",  # 1.2.10 > 1.2.3: versions sort as versions
    }
    older = prepare(repo, "v1.2.3")
    assert older.returncode == 0 and older.outputs["newest-in-major"] == "false"


@pytest.mark.parametrize("tag", ["v1.02.3", "v1.2", "v1.2.3-rc.1"])
def test_prepare_refuses_a_tag_that_is_not_semver(repo: Repo, tag: str) -> None:
    repo.tag(tag)
    repo.clone_at(f"refs/tags/{tag}")
    result = prepare(repo, tag)
    assert result.returncode != 0
    assert result.errors == [f"tag {tag} is not vMAJOR.MINOR.PATCH"]


@pytest.mark.parametrize("checkout", ["refs/tags/v1.2.3", "HEAD"])
def test_the_guard_skips_a_tag_that_already_points_at_a_release_commit(
    repo: Repo, checkout: str
) -> None:
    """The guard reads action.yml at the tag as it is now, whatever commit is checked out."""
    guard = "Skip a tag that already points at a release commit"
    env = {**repo.github("v1.2.3"), "RUNNER_TEMP": str(repo.checkout.parent)}
    repo.tag("v1.2.3")
    repo.clone_at(checkout, checkout="first")
    result = run_step("prepare", guard, repo.checkout, {}, env)
    assert result.returncode == 0 and result.outputs == {"pinned": "false"}, result.stdout

    assert pin(repo.source / "action.yml", IMAGE, DIGEST) == 0
    repo.git("commit", "--quiet", "-am", "Release v1.2.3", cwd=repo.source)
    repo.git("tag", "--force", "v1.2.3", "HEAD", cwd=repo.source)
    repo.git("push", "--quiet", "--force", "origin", "refs/tags/v1.2.3", cwd=repo.source)
    repo.clone_at(checkout, checkout="again")
    result = run_step("prepare", guard, repo.checkout, {}, env)
    assert result.returncode == 0 and result.outputs == {"pinned": "true"}, result.stdout
    assert PINNED in result.stdout


def test_the_image_name_is_the_lowercased_repository(repo: Repo) -> None:
    name = "Image name and tags (GHCR needs the repository lowercased)"
    context = {
        "needs.prepare.outputs.version": "v1.2.3",
        "needs.prepare.outputs.major": "v1",
        "needs.prepare.outputs.newest-in-major": "true",
    }
    result = run_step("image", name, repo.source, context, repo.github("v1.2.3"))
    assert result.returncode == 0, result.stdout
    assert result.outputs == {
        "image": "ghcr.io/owner/cache-action",
        "tags": "ghcr.io/owner/cache-action:v1.2.3\nghcr.io/owner/cache-action:v1",
    }
    not_newest = {**context, "needs.prepare.outputs.newest-in-major": "false"}
    result = run_step("image", name, repo.source, not_newest, repo.github("v1.2.3"))
    assert result.outputs["tags"] == "ghcr.io/owner/cache-action:v1.2.3"


def release_context(newest: bool = True) -> dict[str, str]:
    return {
        "needs.image.outputs.image": IMAGE,
        "needs.image.outputs.digest": DIGEST,
        "needs.prepare.outputs.version": "v1.2.3",
        "needs.prepare.outputs.major": "v1",
        "needs.prepare.outputs.newest-in-major": "true" if newest else "false",
    }


def commit_and_move_tags(
    repo: Repo, newest: bool = True, digest: str = DIGEST
) -> tuple[StepResult, StepResult]:
    context = {**release_context(newest), "needs.image.outputs.digest": digest}
    env = {**repo.github("v1.2.3"), "RUNNER_TEMP": str(repo.checkout.parent)}
    commit = run_step(
        "release", "Commit action.yml pinned to the image", repo.checkout, context, env
    )
    assert commit.returncode == 0, commit.stdout
    tags = run_step("release", "Move the tags to the release commit", repo.checkout, context, env)
    return commit, tags


@pytest.mark.parametrize("major_exists", [False, True], ids=["first-v1", "v1-exists"])
def test_the_release_commit_pins_action_yml_and_the_tags_move_to_it(
    repo: Repo, major_exists: bool
) -> None:
    repo.tag("v1.2.3")
    if major_exists:  # v1 at the tagged commit, as a maintainer may have pushed it
        repo.git("tag", "v1", "HEAD", cwd=repo.source)
        repo.git("push", "--quiet", "origin", "refs/tags/v1", cwd=repo.source)
    repo.clone_at("refs/tags/v1.2.3")
    commit, tags = commit_and_move_tags(repo)
    assert tags.returncode == 0, tags.stdout
    release = commit.outputs["sha"]
    assert tags.outputs == {"sha": release}

    assert repo.rev("refs/tags/v1.2.3^{commit}") == release
    assert repo.git("cat-file", "-t", "refs/tags/v1.2.3", cwd=repo.origin) == "tag"
    assert DIGEST in repo.git("cat-file", "-p", "refs/tags/v1.2.3", cwd=repo.origin)
    assert repo.rev("refs/tags/v1^{commit}") == release
    assert repo.rev("refs/heads/main") == repo.sha, "main is never modified"
    assert repo.rev(f"{release}^") == repo.sha, "the release commit sits on the tagged commit"
    assert repo.git("log", "-1", "--format=%s", release, cwd=repo.origin) == (
        "Release v1.2.3: action.yml runs the image pinned by digest"
    )
    changed = repo.git("diff", "--numstat", repo.sha, release, cwd=repo.origin)
    assert changed == "1\t1\taction.yml"
    pinned = yaml.safe_load(repo.git("show", f"{release}:action.yml", cwd=repo.origin))
    assert pinned["runs"]["image"] == PINNED


def test_an_older_release_leaves_the_major_tag_alone(repo: Repo) -> None:
    repo.tag("v1.2.3")
    repo.tag("v1.3.0")
    repo.git("tag", "v1", "v1.3.0^{commit}", cwd=repo.source)
    repo.git("push", "--quiet", "origin", "refs/tags/v1", cwd=repo.source)
    v1 = repo.rev("refs/tags/v1")
    repo.clone_at("refs/tags/v1.2.3")
    commit, tags = commit_and_move_tags(repo, newest=False)
    assert tags.returncode == 0, tags.stdout
    assert repo.rev("refs/tags/v1.2.3^{commit}") == commit.outputs["sha"]
    assert repo.rev("refs/tags/v1") == v1


@pytest.mark.parametrize(
    "moved_to",
    [
        "a later commit",
        # Pins this very image, but does not sit on the tagged commit: not a re-run's doing.
        "a commit pinning the image elsewhere",
    ],
)
def test_a_tag_moved_since_the_run_started_is_not_overwritten(repo: Repo, moved_to: str) -> None:
    repo.tag("v1.2.3")
    repo.clone_at("refs/tags/v1.2.3")
    # Meanwhile the tag is pushed again at another commit.
    (repo.source / "NEWS").write_text("more\n")
    repo.git("add", "NEWS", cwd=repo.source)
    repo.git("commit", "--quiet", "-m", "More work", cwd=repo.source)
    if moved_to == "a commit pinning the image elsewhere":
        assert pin(repo.source / "action.yml", IMAGE, DIGEST) == 0
        repo.git("commit", "--quiet", "-am", "Pinned elsewhere", cwd=repo.source)
    repo.git("tag", "--force", "v1.2.3", "HEAD", cwd=repo.source)
    repo.git("push", "--quiet", "--force", "origin", "refs/tags/v1.2.3", cwd=repo.source)
    moved = repo.rev("refs/tags/v1.2.3")
    _, tags = commit_and_move_tags(repo)
    assert tags.returncode != 0
    assert tags.errors == [f"v1.2.3 now points at {moved}, not {repo.sha}: not moving it"]
    assert repo.rev("refs/tags/v1.2.3") == moved
    remote_tags = repo.git("ls-remote", "--tags", "--refs", str(repo.origin)).splitlines()
    assert [line.split("\t")[1] for line in remote_tags] == ["refs/tags/v1.2.3"]


def test_the_commit_step_refuses_a_checkout_that_is_not_the_tagged_commit(repo: Repo) -> None:
    repo.tag("v1.2.3")
    repo.clone_at("refs/tags/v1.2.3")
    env = {**repo.github("v1.2.3"), "GITHUB_SHA": "0" * 40}
    name = "Commit action.yml pinned to the image"
    result = run_step("release", name, repo.checkout, release_context(), env)
    assert result.returncode != 0
    assert result.errors == [f"checked out {repo.sha}, not the tagged {'0' * 40}"]


def test_the_push_leases_on_the_tag_it_checked(repo: Repo, tmp_path: Path) -> None:
    """The tag moving between the step's check and its push (a git on PATH that moves it just
    before pushing): the push is refused rather than overwriting the new tag."""
    repo.tag("v1.2.3")
    repo.clone_at("refs/tags/v1.2.3")
    (repo.source / "NEWS").write_text("more\n")
    repo.git("add", "NEWS", cwd=repo.source)
    repo.git("commit", "--quiet", "-m", "More work", cwd=repo.source)
    repo.git("push", "--quiet", "origin", "HEAD:refs/heads/other", cwd=repo.source)
    other = repo.rev("HEAD", repo.source)
    shims = tmp_path / "shims"
    shims.mkdir()
    (shims / "git").write_text(
        "#!/bin/sh\n"
        'if [ "$1" = push ]; then\n'
        f"  {shlex.quote(repo.git_binary)} -C {shlex.quote(str(repo.origin))}"
        f" tag --force v1.2.3 {other} >/dev/null\n"
        "fi\n"
        f'exec {shlex.quote(repo.git_binary)} "$@"\n'
    )
    (shims / "git").chmod(0o755)
    repo.env["PATH"] = f"{shims}:{repo.env['PATH']}"
    _, tags = commit_and_move_tags(repo)
    assert tags.returncode != 0
    assert "stale info" in tags.stdout, tags.stdout
    assert repo.rev("refs/tags/v1.2.3") == other


def test_a_rerun_after_the_tags_moved_finds_them_moved_and_changes_nothing(repo: Repo) -> None:
    """Re-running the release job (say the publish step failed): the checkout is the tagged
    commit again, the tags already point at a release commit pinning the same image."""
    repo.tag("v1.2.3")
    repo.clone_at("refs/tags/v1.2.3")
    commit, tags = commit_and_move_tags(repo)
    assert tags.returncode == 0, tags.stdout
    release = commit.outputs["sha"]
    remote = repo.git("ls-remote", "--tags", str(repo.origin))

    repo.clone_at(repo.sha, checkout="rerun")
    _, again = commit_and_move_tags(repo)
    assert again.returncode == 0, again.stdout
    assert again.outputs == {"sha": release}
    assert "already points at its release commit" in again.stdout
    assert repo.git("ls-remote", "--tags", str(repo.origin)) == remote

    # Another image (every job re-run, so a new build): that is not this release; refuse.
    repo.clone_at(repo.sha, checkout="rebuilt")
    _, rebuilt = commit_and_move_tags(repo, digest=OTHER_DIGEST)
    assert rebuilt.returncode != 0
    assert rebuilt.errors == [f"v1.2.3 now points at {release}, not {repo.sha}: not moving it"]
    assert repo.git("ls-remote", "--tags", str(repo.origin)) == remote


def test_the_publish_step_creates_the_release_once_with_the_digest(
    repo: Repo, tmp_path: Path
) -> None:
    """The publish step with a `gh` on PATH that records its calls (`release view` finds no
    release the first time, one the second)."""
    shims = tmp_path / "shims"
    shims.mkdir()
    calls = tmp_path / "gh-calls"
    (shims / "gh").write_text(
        "#!/usr/bin/env python3\n"
        "import json, sys\n"
        f"log = {str(calls)!r}\n"
        "with open(log, 'a') as f: f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "if sys.argv[1:3] == ['release', 'view']:\n"
        "    sys.exit(0 if sum(1 for _ in open(log)) > 2 else 1)\n"
    )
    (shims / "gh").chmod(0o755)
    repo.env["PATH"] = f"{shims}:{repo.env['PATH']}"
    release_sha = "1" * 40
    context = {
        **release_context(),
        "github.token": "not-a-token",
        "github.repository": "Owner/Cache-Action",
        "steps.tags.outputs.sha": release_sha,
    }
    env = repo.github("v1.2.3")
    first = run_step("release", "Publish the release", repo.source, context, env)
    assert first.returncode == 0, first.stdout
    second = run_step("release", "Publish the release", repo.source, context, env)
    assert second.returncode == 0, second.stdout
    assert "exists already" in second.stdout

    view, create, view_again = (json.loads(line) for line in calls.read_text().splitlines())
    assert view[:3] == view_again[:3] == ["release", "view", "v1.2.3"]
    assert create[:3] == ["release", "create", "v1.2.3"]
    assert {"--verify-tag", "--generate-notes"} <= set(create)
    notes = create[create.index("--notes") + 1]
    assert f"`{IMAGE}@{DIGEST}`" in notes
    assert "uses: Owner/Cache-Action@v1.2.3" in notes
    assert f"uses: Owner/Cache-Action@{release_sha}" in notes
