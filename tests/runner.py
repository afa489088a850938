"""Run a stage of this Docker container action exactly as the GitHub Actions runner does.

Reference: /work/shared/reference/github-runtime-and-cache-protocol.md, section A (A2-A8), and
`actions/runner` `ContainerActionHandler.cs` / `DockerCommandManager.cs`:

- `runs.image: Dockerfile`: the image is built with `docker build -t <tag> -f <abs Dockerfile>
  <dir of Dockerfile>` (the runner passes no build args; these tests add `--build-arg
  BASE_IMAGE=` because no registry is reachable, see test-infrastructure.md), once per test
  session; `runs.image: docker://REF`: the runner builds nothing, it runs `docker pull REF` in
  "Set up job" (once per job) and every stage runs REF;
- each stage is `docker run --name <sanitized image>_<hex6> --label <hex6> --workdir
  /github/workspace --rm -e NAME ... -e GITHUB_ACTIONS=true -e CI=true --entrypoint <runs.entrypoint
  | runs.post-entrypoint> [--network github_network_<id>] -v docker.sock -v RUNNER_TEMP
  -v _github_home -v _github_workflow -v _runner_file_commands -v workspace <image>`;
  environment variables go by NAME only, their values in the docker CLI's own environment;
- every value is path-translated (host → /github/...) as `ContainerInfo.TranslateToContainerPath`;
- `INPUT_<NAME>` (hyphens kept, upper-cased) for every input, action.yml defaults filled in;
- GITHUB_OUTPUT / GITHUB_STATE / GITHUB_STEP_SUMMARY are fresh files per step under
  `<RUNNER_TEMP>/_runner_file_commands`, parsed after the container exits with the runner's
  `NAME=VALUE` / `NAME<<DELIMITER` rules; saved state comes back as `STATE_<name>` in post;
- stdout workflow commands (`::warning ...::`, `::error ...::`, `::add-mask::`) are parsed.

Every test run is its own runner: INSTANCE_LABEL (the runner's DockerInstanceLabel, put on each
action container as `--label <hex6>`) is derived from a per-run id, and the action copies its
container's labels to the sibling containers it starts, so a run finds its own containers by
that label and never mistakes another run's (on the same Docker daemon) for a leftover.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# PyYAML has no type stubs in the test extra: typed as Any on purpose.
yaml: Any = importlib.import_module("yaml")

REPO_ROOT = Path(__file__).resolve().parent.parent
ACTION_YML = REPO_ROOT / "action.yml"
DOCKER_SOCKET = "/var/run/docker.sock"

TEST_BASE_IMAGE = os.environ.get("CACHE_ACTION_TEST_BASE_IMAGE", "cache-action-test-base:bookworm")
# Several checkouts may test on one Docker daemon at once: each can build its own tag.
ACTION_IMAGE_TAG = os.environ.get("CACHE_ACTION_TEST_IMAGE_TAG", "cache-action-e2e:test")
CACHE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cache-action-tests"
ROOTFS_TARBALL = CACHE_DIR / "rootfs-bookworm-minbase-python3.tar"
DEBIAN_MIRROR = os.environ.get("CACHE_ACTION_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# This test run's id (one per process unless given), and the runner's DockerInstanceLabel made
# from it as the runner makes its own: the first 6 hex of sha256(<its .runner file>).
TEST_RUN_ID = os.environ.get("CACHE_ACTION_TEST_RUN_ID") or uuid.uuid4().hex
_RUNNER_FILE = f"cache-action-tests/{TEST_RUN_ID}/.runner".encode()
INSTANCE_LABEL = hashlib.sha256(_RUNNER_FILE).hexdigest()[:6]

# NameValidation.Sanitize: the container's display name keeps only these characters.
_NAME_SANITIZE = re.compile(r"[^A-Za-z0-9_.-]")


def docker(*args: str, check: bool = True, timeout: float = 600, **kwargs: Any) -> str:
    result = subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"docker {' '.join(args)} failed ({result.returncode}):\n{result.stderr}"
        )
    return str(result.stdout)


def image_exists(reference: str) -> bool:
    return (
        subprocess.run(
            ["docker", "image", "inspect", reference], capture_output=True, timeout=60
        ).returncode
        == 0
    )


# --- images ---------------------------------------------------------------------------------


def ensure_test_base_image(name: str = TEST_BASE_IMAGE) -> str:
    """The stand-in for python:3.x-slim (test-infrastructure.md): imported from a debootstrap
    rootfs. The rootfs tarball is cached under ~/.cache/cache-action-tests so debootstrap runs
    once per machine; the import is repeated only when the image is missing."""
    if image_exists(name):
        return name
    if not ROOTFS_TARBALL.is_file():
        _debootstrap_tarball(ROOTFS_TARBALL)
    with ROOTFS_TARBALL.open("rb") as tarball:
        subprocess.run(
            [
                "docker",
                "import",
                "--change",
                "ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt",
                "-",
                name,
            ],
            stdin=tarball,
            check=True,
            capture_output=True,
            timeout=600,
        )
    return name


def _debootstrap_tarball(target: Path) -> None:
    debootstrap = shutil.which("debootstrap") or "/usr/sbin/debootstrap"
    if not Path(debootstrap).exists():
        raise RuntimeError("debootstrap is missing (scripts/install-test-deps installs it)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix="rootfs-") as work:
        rootfs = Path(work) / "rootfs"
        subprocess.run(
            [
                debootstrap,
                "--variant=minbase",
                "--include=python3,python3-venv,python3-pip,ca-certificates",
                "bookworm",
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            check=True,
            capture_output=True,
            timeout=1800,
        )
        # Trust this machine's CA bundle (pip through a TLS-inspecting proxy), allow pip
        # outside a venv as python:*-slim does, and provide `python`.
        if HOST_CA_BUNDLE.is_file():
            shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
        for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
            marker.unlink()
        python = rootfs / "usr/bin/python"
        python.unlink(missing_ok=True)
        python.symlink_to("python3")
        partial = target.with_suffix(".partial")
        with tarfile.open(partial, "w") as archive:
            archive.add(rootfs, arcname=".")
        partial.rename(target)


@dataclass(frozen=True)
class ActionImage:
    tag: str
    id: str
    size: int  # bytes, as `docker image inspect` reports
    base_size: int
    build_seconds: float
    # The last image of each earlier build stage: the legacy builder keeps them (untagged, no
    # child of the final image) as its cache. Whoever builds with --no-cache removes them.
    stage_images: tuple[str, ...] = ()

    @property
    def own_size(self) -> int:
        """What the Dockerfile adds to its base image."""
        return self.size - self.base_size


def build_action_image(
    base_image: str, tag: str = ACTION_IMAGE_TAG, *, no_cache: bool = False
) -> ActionImage:
    """`docker build -t TAG -f <abs Dockerfile> <dir of Dockerfile>` from the workspace, as
    `ActionManager.BuildActionContainerAsync`, plus the base image argument (and `--no-cache`:
    a runner whose daemon has never built it)."""
    previous = _image_id(tag)
    started = time.monotonic()
    dockerfile = REPO_ROOT / "Dockerfile"
    result = subprocess.run(
        [
            "docker",
            "build",
            *(["--no-cache"] if no_cache else []),
            "--build-arg",
            f"BASE_IMAGE={base_image}",
            "-t",
            tag,
            "-f",
            str(dockerfile),
            str(dockerfile.parent),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker build failed:\n{result.stdout[-4000:]}\n{result.stderr}")
    seconds = time.monotonic() - started
    image_id = _image_id(tag)
    assert image_id is not None
    if previous and previous != image_id:
        # Our own previous build of this tag, now dangling: do not pile them up.
        subprocess.run(["docker", "image", "rm", previous], capture_output=True, timeout=120)
    stages = _stage_images(result.stdout)
    if not no_cache:
        _remove_superseded_stages(tag, stages)
    return ActionImage(tag, image_id, _image_size(tag), _image_size(base_image), seconds, stages)


def _remove_superseded_stages(tag: str, stages: tuple[str, ...]) -> None:
    """The build stages of this tag's previous build, when this build made new ones: they are
    nothing's parent any more (`docker image rm` refuses an image that is still a parent)."""
    record = CACHE_DIR / "stage-images" / f"{_NAME_SANITIZE.sub('_', tag)}.json"
    try:
        previous = json.loads(record.read_text())
    except (OSError, ValueError):
        previous = []
    for image in previous:
        if isinstance(image, str) and image not in stages:
            subprocess.run(["docker", "image", "rm", image], capture_output=True, timeout=120)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(list(stages)))


_BUILD_STEP = re.compile(r"^Step \d+/\d+ : (\w+)")
_BUILD_STEP_RESULT = re.compile(r"^ ---> ([0-9a-f]{12,64})$")


def _stage_images(output: str) -> tuple[str, ...]:
    """From the legacy builder's output: the image each step before a later FROM ended with."""
    found: list[str] = []
    last: str | None = None
    in_stage = False
    for line in output.splitlines():
        step = _BUILD_STEP.match(line)
        if step and step.group(1).upper() == "FROM":
            if in_stage and last is not None:
                found.append(last)
            in_stage, last = True, None
        elif in_stage and (result := _BUILD_STEP_RESULT.match(line)):
            last = result.group(1)
    return tuple(found)


def _image_id(reference: str) -> str | None:
    result = subprocess.run(
        ["docker", "image", "inspect", "-f", "{{.Id}}", reference],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout.strip() if result.returncode == 0 else None


def _image_size(reference: str) -> int:
    return int(docker("image", "inspect", "-f", "{{.Size}}", reference).strip())


# --- action.yml -------------------------------------------------------------------------------


def load_action(path: Path = ACTION_YML) -> dict[str, Any]:
    document = yaml.safe_load(path.read_text())
    assert isinstance(document, dict)
    return document


def action_with_image(reference: str, path: Path = ACTION_YML) -> dict[str, Any]:
    """action.yml as a release publishes it: `runs.image: docker://REFERENCE`, a prebuilt image
    the runner pulls instead of building the Dockerfile."""
    document = load_action(path)
    document["runs"]["image"] = f"docker://{reference}"
    return document


def image_to_run(action: Mapping[str, Any], built: str | None) -> str:
    """What every stage's `docker run` runs: REF for `runs.image: docker://REF`, else the tag
    the job's "Set up job" built from the Dockerfile (`built`)."""
    image = str(action["runs"]["image"])
    if image.startswith("docker://"):
        if built is not None:
            raise ValueError(f"runs.image is {image}: the runner builds nothing, pass None")
        return image.removeprefix("docker://")
    if built is None:
        raise ValueError(f"runs.image is {image}: build it first (build_action_image)")
    return built


@dataclass(frozen=True)
class Pull:
    reference: str
    seconds: float
    output: str


def pull_image(reference: str) -> Pull:
    """`docker pull REFERENCE`, as the runner's "Set up job" does for a `docker://` image."""
    started = time.monotonic()
    output = docker("pull", reference, timeout=1200)
    return Pull(reference, time.monotonic() - started, output)


_GITHUB_EXPRESSION = re.compile(r"\$\{\{\s*github\.([A-Za-z_]+)\s*\}\}")


def evaluate_default(value: Any, github: Mapping[str, str]) -> str:
    """action.yml defaults may use `${{ github.* }}` (e.g. github.token); nothing else here."""
    text = "" if value is None else str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    return _GITHUB_EXPRESSION.sub(lambda m: github.get(m.group(1), ""), text)


# --- workflow commands and file commands ------------------------------------------------------


@dataclass(frozen=True)
class Annotation:
    level: str  # error, warning, notice
    message: str
    properties: dict[str, str]

    @property
    def title(self) -> str:
        return self.properties.get("title", "")


_COMMAND = re.compile(r"^::([A-Za-z-]+)(?: ([^:]*))?::(.*)$")


def _unescape_data(text: str) -> str:
    return text.replace("%0D", "\r").replace("%0A", "\n").replace("%25", "%")


def _unescape_property(text: str) -> str:
    return (
        text.replace("%0D", "\r")
        .replace("%0A", "\n")
        .replace("%3A", ":")
        .replace("%2C", ",")
        .replace("%25", "%")
    )


def parse_commands(stdout: str) -> tuple[list[Annotation], list[str], list[tuple[str, str]]]:
    """(annotations, masks, other commands) from a stage's stdout, as ActionCommandManager."""
    annotations: list[Annotation] = []
    masks: list[str] = []
    others: list[tuple[str, str]] = []
    for line in stdout.splitlines():
        match = _COMMAND.match(line.rstrip("\r"))
        if not match:
            continue
        name, raw_properties, data = match.group(1), match.group(2) or "", match.group(3)
        properties: dict[str, str] = {}
        for item in raw_properties.split(","):
            if "=" in item:
                key, _, value = item.partition("=")
                properties[key.strip()] = _unescape_property(value)
        if name in ("error", "warning", "notice"):
            annotations.append(Annotation(name, _unescape_data(data), properties))
        elif name == "add-mask":
            masks.append(_unescape_data(data))
        else:
            others.append((name, _unescape_data(data)))
    return annotations, masks, others


class FileCommandError(ValueError):
    """The runner rejects the file (and fails the step)."""


def _read_line(text: str, index: int) -> tuple[str | None, str | None, int]:
    """(line, newline or None, next index), as the runner's ReadLine: None past the end."""
    if index >= len(text):
        return None, None, index
    position = text.find("\n", index)
    if position < 0:
        return text[index:], None, len(text)
    newline = "\n"
    end = position
    if end > index and text[end - 1] == "\r":
        newline, end = "\r\n", end - 1
    return text[index:end], newline, position + 1


def parse_file_command(text: str) -> dict[str, str]:
    """`NAME=VALUE` lines and `NAME<<DELIMITER` heredocs, as the runner's
    FileCommandManager.EnvFileKeyValuePairs: every value line must end with a newline before
    the delimiter; the value keeps the file's own newlines between its lines."""
    pairs: dict[str, str] = {}
    index = 0
    while True:
        line, _, index = _read_line(text, index)
        if line is None:
            break
        if line == "":
            continue
        equals, heredoc = line.find("="), line.find("<<")
        if equals >= 0 and (heredoc < 0 or equals < heredoc):
            key, value = line[:equals], line[equals + 1 :]
            if not key:
                raise FileCommandError(f"Invalid format '{line}'. Name must not be empty")
            pairs[key] = value
            continue
        if heredoc >= 0 and (equals < 0 or heredoc < equals):
            key, delimiter = line[:heredoc], line[heredoc + 2 :]
            if not key or not delimiter:
                raise FileCommandError(
                    f"Invalid format '{line}'. Name must not be empty and delimiter must not be "
                    "empty"
                )
            start = end = index
            while True:
                candidate, newline, index = _read_line(text, index)
                if candidate is None:
                    raise FileCommandError(
                        f"Invalid value. Matching delimiter not found '{delimiter}'"
                    )
                if candidate == delimiter:
                    break
                if newline is None:
                    raise FileCommandError("Invalid value. EOF marker missing new line.")
                end = index - len(newline)
            pairs[key] = text[start:end] if end > start else ""
            continue
        raise FileCommandError(f"Invalid format '{line}'")
    return pairs


# --- the job ---------------------------------------------------------------------------------


@dataclass
class StageResult:
    stage: str
    exit_code: int
    stdout: str
    stderr: str
    argv: list[str]
    env: dict[str, str]  # what the container received (names → values)
    outputs: dict[str, str]
    state: dict[str, str]  # saved by this stage
    summary: str
    annotations: list[Annotation]
    masks: list[str]
    seconds: float

    @property
    def errors(self) -> list[Annotation]:
        return [a for a in self.annotations if a.level == "error"]

    @property
    def warnings(self) -> list[Annotation]:
        return [a for a in self.annotations if a.level == "warning"]

    @property
    def log(self) -> str:
        """stdout as the job log shows it: masked values replaced by ***."""
        text = self.stdout
        for secret in sorted((m for m in self.masks if m), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def describe(self) -> str:
        return (
            f"{self.stage} exited {self.exit_code} in {self.seconds:.1f} s\n"
            f"--- stdout ---\n{self.stdout[-6000:]}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunnerJob:
    """One job on a self-hosted-like runner: `<work>/_temp` is RUNNER_TEMP (fresh per job),
    `<work>/<repo>/<repo>` the workspace. Stages of the action share the job's state.

    `image` is the tag build_action_image made when the action document says `runs.image:
    Dockerfile`, and None when it says `docker://REF`: then the job pulls REF at its start
    ("Set up job", `pull` records it) and runs REF."""

    image: str | None
    work: Path
    repository: str = "octo-org/octo-repo"
    ref: str = "refs/heads/main"
    event_name: str = "push"
    event: dict[str, Any] | None = None
    default_branch: str = "main"
    base_ref: str = ""
    head_ref: str = ""
    job: str = "build"
    workflow_file: str = "ci.yml"
    network: str | None = None
    env: dict[str, str] = field(default_factory=dict)  # workflow/job/step `env:`
    token: str = field(default_factory=lambda: "ghs_" + uuid.uuid4().hex + "TOKEN")
    run_id: str = field(default_factory=lambda: str(int(time.time() * 1000) % 10**10))
    action: dict[str, Any] = field(default_factory=load_action)
    intra_action_state: dict[str, str] = field(default_factory=dict)
    results: list[StageResult] = field(default_factory=list)

    def __post_init__(self) -> None:
        name = self.repository.split("/", 1)[-1]
        self.runner_temp = self.work / "_temp"
        self.workspace = self.work / name / name
        if self.runner_temp.exists():  # the runner empties its temp directory per job
            shutil.rmtree(self.runner_temp)
        for directory in (
            self.runner_temp / "_github_home",
            self.runner_temp / "_github_workflow",
            self.runner_temp / "_runner_file_commands",
            self.workspace,
        ):
            directory.mkdir(parents=True, exist_ok=True)
        event = self.event if self.event is not None else self._default_event()
        self.event_path = self.runner_temp / "_github_workflow" / "event.json"
        self.event_path.write_text(json.dumps(event))
        # "Set up job": a `docker://` image is pulled once, before any step.
        self.stage_image = image_to_run(self.action, self.image)
        self.pull: Pull | None = None if self.image is not None else pull_image(self.stage_image)

    def _default_event(self) -> dict[str, Any]:
        repository = {
            "full_name": self.repository,
            "name": self.repository.split("/", 1)[-1],
            "default_branch": self.default_branch,
        }
        return {"ref": self.ref, "repository": repository}

    # -- contexts --

    def github_context(self) -> dict[str, str]:
        owner = self.repository.split("/", 1)[0]
        ref_name = self.ref.split("/", 2)[-1] if self.ref.startswith("refs/") else self.ref
        return {
            "action": "cache",
            "action_path": str(self.work.parent / "_actions" / owner / "cache-action" / "v1"),
            "action_ref": "v1",
            "action_repository": f"{owner}/cache-action",
            "actor": "octocat",
            "actor_id": "1",
            "api_url": "https://api.github.com",
            "base_ref": self.base_ref,
            "event_name": self.event_name,
            "event_path": str(self.event_path),
            "graphql_url": "https://api.github.com/graphql",
            "head_ref": self.head_ref,
            "job": self.job,
            "ref": self.ref,
            "ref_name": ref_name,
            "ref_protected": "false",
            "ref_type": "tag" if self.ref.startswith("refs/tags/") else "branch",
            "repository": self.repository,
            "repository_id": "42",
            "repository_owner": owner,
            "repository_owner_id": "7",
            "retention_days": "90",
            "run_attempt": "1",
            "run_id": self.run_id,
            "run_number": "1",
            "server_url": "https://github.com",
            "sha": hashlib.sha1(self.ref.encode()).hexdigest(),
            "token": self.token,
            "triggering_actor": "octocat",
            "workflow": "ci",
            "workflow_ref": f"{self.repository}/.github/workflows/{self.workflow_file}@{self.ref}",
            "workflow_sha": hashlib.sha1(b"workflow").hexdigest(),
            "workspace": str(self.workspace),
        }

    def path_mappings(self) -> list[tuple[str, str]]:
        """Host → container, in the order TranslateToContainerPath tries them (the reverse of
        AddPathTranslateMapping's order: RUNNER_TEMP was added first, so it is tried last)."""
        temp = str(self.runner_temp)
        return [
            (str(self.workspace), "/github/workspace"),
            (f"{temp}/_runner_file_commands", "/github/file_commands"),
            (f"{temp}/_github_workflow", "/github/workflow"),
            (f"{temp}/_github_home", "/github/home"),
            (temp, "/github/runner_temp"),
        ]

    def translate(self, value: str) -> str:
        for host, container in self.path_mappings():
            if value == host:
                return container
            if value.startswith(host + "/"):
                return container + value[len(host) :]
        return value

    def inputs_env(self, inputs: Mapping[str, str]) -> dict[str, str]:
        declared = self.action.get("inputs") or {}
        lowered = {name.lower(): name for name in declared}
        unknown = [name for name in inputs if name.lower() not in lowered]
        if unknown:  # the runner only warns "Unexpected input(s)"; a test typo must not pass
            raise KeyError(f"inputs not in action.yml: {unknown}")
        given = {lowered[name.lower()]: value for name, value in inputs.items()}
        github = self.github_context()
        values: dict[str, str] = {}
        for name, spec in declared.items():
            spec = spec or {}
            value = given[name] if name in given else evaluate_default(spec.get("default"), github)
            values[f"INPUT_{name.replace(' ', '_').upper()}"] = value
        return values

    # -- running a stage --

    def run(
        self,
        stage: str,
        inputs: Mapping[str, str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> StageResult:
        """Run `main` or `post` (`pre` has no entry point here) and process its file commands."""
        runs = self.action["runs"]
        assert runs["using"] == "docker", runs
        entrypoint = {"main": runs.get("entrypoint"), "post": runs.get("post-entrypoint")}[stage]
        assert entrypoint, f"action.yml has no entry point for {stage}"
        suffix = str(uuid.uuid4())
        commands = self.runner_temp / "_runner_file_commands"
        files = {
            "GITHUB_OUTPUT": commands / f"set_output_{suffix}",
            "GITHUB_STATE": commands / f"save_state_{suffix}",
            "GITHUB_STEP_SUMMARY": commands / f"step_summary_{suffix}",
            "GITHUB_ENV": commands / f"set_env_{suffix}",
            "GITHUB_PATH": commands / f"add_path_{suffix}",
        }
        for path in files.values():
            path.write_text("")  # InitializeFiles: created empty before the step

        # ActionRunner/ContainerActionHandler order: env context, STATE_, INPUT_, runs.env,
        # HOME, github context, runner context, Actions runtime; later wins.
        variables: dict[str, str] = {}
        variables.update(self.env)
        variables.update(env or {})
        for name, value in self.intra_action_state.items():
            variables[f"STATE_{name}"] = value
        variables.update(self.inputs_env(inputs or {}))
        variables["HOME"] = str(self.runner_temp / "_github_home")
        github = self.github_context()
        # The allow-listed github-context keys (GitHubContext.cs); `token` is not among them.
        for key in (
            "action",
            "action_path",
            "action_ref",
            "action_repository",
            "actor",
            "actor_id",
            "api_url",
            "base_ref",
            "event_name",
            "event_path",
            "graphql_url",
            "head_ref",
            "job",
            "ref",
            "ref_name",
            "ref_protected",
            "ref_type",
            "repository",
            "repository_id",
            "repository_owner",
            "repository_owner_id",
            "retention_days",
            "run_attempt",
            "run_id",
            "run_number",
            "server_url",
            "sha",
            "triggering_actor",
            "workflow",
            "workflow_ref",
            "workflow_sha",
            "workspace",
        ):
            variables[f"GITHUB_{key.upper()}"] = github[key]
        variables.update({name: str(path) for name, path in files.items()})
        variables.update(
            {
                "RUNNER_OS": "Linux",
                "RUNNER_ARCH": "X64",
                "RUNNER_NAME": "cache-action-tests",
                "RUNNER_ENVIRONMENT": "self-hosted",
                "RUNNER_TOOL_CACHE": str(self.work.parent / "_tool"),
                "RUNNER_TEMP": str(self.runner_temp),
                "RUNNER_WORKSPACE": str(self.workspace.parent),
                # Runtime variables exist in every job; these point nowhere (no gha store here).
                "ACTIONS_RUNTIME_URL": "http://127.0.0.1:9/runtime/",
                "ACTIONS_RUNTIME_TOKEN": "runtime-" + self.token,
                "ACTIONS_RESULTS_URL": "http://127.0.0.1:9/",
            }
        )
        translated = {name: self.translate(value) for name, value in variables.items()}

        image_name = self.stage_image
        argv = [
            "docker",
            "run",
            "--name",
            f"{_NAME_SANITIZE.sub('', image_name)}_{uuid.uuid4().hex[:6]}",
            "--label",
            INSTANCE_LABEL,
            "--workdir",
            "/github/workspace",
            "--rm",
        ]
        for name in translated:
            argv += ["-e", name]
        argv += ["-e", "GITHUB_ACTIONS=true"]
        if "CI" not in translated:
            argv += ["-e", "CI=true"]
        argv += ["--entrypoint", entrypoint]
        if self.network:
            argv += ["--network", self.network]
        for host, container in (
            (DOCKER_SOCKET, DOCKER_SOCKET),
            (str(self.runner_temp), "/github/runner_temp"),
            (str(self.runner_temp / "_github_home"), "/github/home"),
            (str(self.runner_temp / "_github_workflow"), "/github/workflow"),
            (str(self.runner_temp / "_runner_file_commands"), "/github/file_commands"),
            (str(self.workspace), "/github/workspace"),
        ):
            argv += ["-v", f"{host}:{container}"]
        argv.append(image_name)

        # Values travel in the docker CLI's environment only (never on its command line).
        cli_env = {k: v for k, v in os.environ.items() if k in ("PATH", "DOCKER_HOST", "LANG")}
        cli_env.update(translated)
        started = time.monotonic()
        completed = subprocess.run(
            argv, env=cli_env, capture_output=True, text=True, timeout=timeout, cwd=self.workspace
        )
        seconds = time.monotonic() - started

        outputs = parse_file_command(files["GITHUB_OUTPUT"].read_text())
        state = parse_file_command(files["GITHUB_STATE"].read_text())
        summary = files["GITHUB_STEP_SUMMARY"].read_text()
        for path in files.values():
            path.unlink(missing_ok=True)
        self.intra_action_state.update(state)  # one dictionary for pre, main and post
        annotations, masks, _ = parse_commands(completed.stdout)
        result = StageResult(
            stage=stage,
            exit_code=completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            argv=argv,
            env=translated,
            outputs=outputs,
            state=state,
            summary=summary,
            annotations=annotations,
            masks=masks,
            seconds=seconds,
        )
        self.results.append(result)
        return result

    def main(self, inputs: Mapping[str, str] | None = None, **kwargs: Any) -> StageResult:
        return self.run("main", inputs, **kwargs)

    def post(self, inputs: Mapping[str, str] | None = None, **kwargs: Any) -> StageResult:
        """The post step (post-if defaults to always()): runs whatever main's result was."""
        return self.run("post", inputs, **kwargs)


def registry_container_name(port: int) -> str:
    """The sibling the action starts (cache_action.action.sibling): `buildkit-cache-<port>`."""
    return f"buildkit-cache-{port}"


def remove_container(name: str) -> None:
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=120)


def container_exists(name: str) -> bool:
    result = subprocess.run(
        ["docker", "container", "inspect", name], capture_output=True, timeout=60
    )
    return result.returncode == 0


def bridge_gateway() -> str:
    """The default bridge's gateway: the host address containers on `bridge` reach."""
    raw = docker("network", "inspect", "bridge", "-f", "{{json .IPAM.Config}}")
    for item in json.loads(raw) or []:
        gateway = item.get("Gateway")
        if gateway and ":" not in gateway:
            return str(gateway)
    return "172.17.0.1"
