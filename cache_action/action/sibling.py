"""The registry as a sibling container, started through the runner's Docker socket.

The action container is on the bridge network and is removed when the stage ends, so the
registry runs in its own container from the action's own image: on the host network (BuildKit
reaches 127.0.0.1:<port>), or, in jobs with `container:`/`services:`, on the job's network
under an alias with the port published on the host's 127.0.0.1. Bind mounts need host paths,
read from the action container's own mounts. Readiness is a file the registry writes: the
action container cannot connect to the host's loopback.

Siblings carry the labels the action container was started with (the runner puts its instance
label, `--label <hex6>`, on every container it starts), so whatever cleans up after a runner's
jobs by that label finds them too.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import docker
from docker.errors import DockerException, NotFound

from cache_action.errors import RegistryStartError, StoreError

LABEL = "io.github.cache-action.registry"
ALIAS_PREFIX = "buildkit-cache"
ROOT_IN_REGISTRY = "/cache"
RUN_DIR_IN_REGISTRY = "/run/cache-action"
READY_FILE = "ready.json"
LAZY_SOURCE_FILE = "lazy-source.json"  # in the run directory: stores/factory.write_source_file
STOP_TIMEOUT_SECONDS = 45
STORE_HELPER_TIMEOUT_SECONDS = 3 * 3600


@dataclass(frozen=True)
class ActionContainer:
    """The container this stage runs in, as the Docker daemon sees it."""

    id: str
    image_id: str
    mounts: tuple[tuple[str, str], ...]  # (host source, container destination)
    job_network: str | None
    labels: tuple[tuple[str, str], ...] = ()  # its own `--label`s, not its image's

    def sees(self, path: str) -> bool:
        """Whether `path` is on one of this container's bind mounts (the runner host's files
        it can really read and write, as opposed to its own throwaway filesystem)."""
        target = PurePosixPath(path)
        return any(
            target == PurePosixPath(destination) or PurePosixPath(destination) in target.parents
            for _, destination in self.mounts
        )

    def host_path(self, path: Path) -> str:
        """Translate a path inside this container to the host path behind its bind mount."""
        target = PurePosixPath(path)
        covering = [
            (source, destination)
            for source, destination in self.mounts
            if target == PurePosixPath(destination) or PurePosixPath(destination) in target.parents
        ]
        best = max(covering, key=lambda mount: len(mount[1]), default=None)
        if best is None:
            raise RegistryStartError(
                f"{path} is not on a bind mount of the action container, so a sibling "
                "container cannot see it (is RUNNER_TEMP mounted at /github/runner_temp?)"
            )
        relative = target.relative_to(best[1])
        return str(PurePosixPath(best[0]) / relative)


@dataclass(frozen=True)
class RegistryContainer:
    id: str
    address: str  # what BuildKit uses: 127.0.0.1:<port>
    network_address: str | None  # alias:port on the job network, for steps in a job container


def docker_client() -> Any:
    try:
        return docker.from_env(timeout=60)
    except DockerException as error:
        raise RegistryStartError(f"cannot reach the Docker daemon: {error}") from None


def inspect_self(client: Any) -> ActionContainer:
    """Find our own container by hostname (the runner sets none, so it is the short id)."""
    try:
        me = client.containers.get(socket.gethostname())
    except (NotFound, DockerException) as error:
        raise RegistryStartError(f"cannot find the action's own container: {error}") from None
    mounts = tuple(
        (m["Source"], m["Destination"]) for m in me.attrs.get("Mounts", []) if m.get("Source")
    )
    networks = me.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
    job_network = next((n for n in networks if n not in ("bridge", "host", "none")), None)
    image = me.image
    from_image = image.labels or {}
    labels = tuple(
        sorted(
            (key, value)
            for key, value in (me.attrs.get("Config", {}).get("Labels") or {}).items()
            if from_image.get(key) != value
        )
    )
    return ActionContainer(me.id, image.id, mounts, job_network, labels)


def start_registry(
    client: Any,
    me: ActionContainer,
    root: Path,
    run_dir: Path,
    port: int,
    lazy_source: str | None = None,
    timeout: float = 60,
) -> RegistryContainer:
    """`lazy_source`: a file in `run_dir` naming where to fetch what a lazy restore left in
    the store; the registry reads it once and deletes it."""
    name = f"{ALIAS_PREFIX}-{port}"
    _remove_stale(client, name)
    run_dir.mkdir(parents=True, exist_ok=True)
    ready = run_dir / READY_FILE
    ready.unlink(missing_ok=True)
    volumes = {
        me.host_path(root): {"bind": ROOT_IN_REGISTRY, "mode": "rw"},
        me.host_path(run_dir): {"bind": RUN_DIR_IN_REGISTRY, "mode": "rw"},
    }
    command = [
        "serve",
        "--root",
        ROOT_IN_REGISTRY,
        "--ready-file",
        f"{RUN_DIR_IN_REGISTRY}/{READY_FILE}",
    ]
    if lazy_source is not None:
        command += ["--lazy-source", f"{RUN_DIR_IN_REGISTRY}/{lazy_source}"]
    options: dict[str, Any] = {}
    if me.job_network:
        # Its own network namespace: it listens on all of it and, having no credentials, serves
        # only the job's network (the job's containers, the host through the port published
        # on its 127.0.0.1); see registry/auth.py.
        command += ["--listen", f"0.0.0.0:{port}"]
        options["network"] = me.job_network
        options["networking_config"] = {
            me.job_network: client.api.create_endpoint_config(aliases=[name])
        }
        options["ports"] = {f"{port}/tcp": ("127.0.0.1", port)}
    else:
        command += ["--listen", f"127.0.0.1:{port}"]
        options["network_mode"] = "host"
    try:
        container = _run_sibling(
            client,
            me,
            command,
            volumes,
            name=name,
            labels={LABEL: "true", f"{LABEL}.port": str(port)},
            **options,
        )
    except DockerException as error:
        raise RegistryStartError(f"cannot start the registry container: {error}") from None
    _wait_ready(container, ready, timeout)
    network_address = f"{name}:{port}" if me.job_network else None
    return RegistryContainer(container.id, f"127.0.0.1:{port}", network_address)


def _run_sibling(
    client: Any,
    me: ActionContainer,
    arguments: list[str],
    volumes: dict[str, Any],
    labels: dict[str, str],
    **options: Any,
) -> Any:
    """`python -m cache_action ARGUMENTS`, detached, from the action's own image, with the
    action container's labels and `labels`."""
    return client.containers.run(
        me.image_id,
        arguments,
        entrypoint=["python3", "-m", "cache_action"],
        detach=True,
        volumes=volumes,
        labels={**dict(me.labels), **labels},
        **options,
    )


def _remove_stale(client: Any, name: str) -> None:
    """A self-hosted runner may still have one from a cancelled job."""
    with contextlib.suppress(NotFound):
        client.containers.get(name).remove(force=True)


def _wait_ready(container: Any, ready: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready.is_file():
            with contextlib.suppress(ValueError):
                json.loads(ready.read_text())
                return
        container.reload()
        if container.status in ("exited", "dead"):
            logs = container.logs(tail=20).decode(errors="replace")
            container.remove(force=True)
            raise RegistryStartError(f"the registry container exited at start:\n{logs}")
        time.sleep(0.1)
    logs = container.logs(tail=20).decode(errors="replace")
    container.remove(force=True)
    raise RegistryStartError(f"the registry was not ready after {timeout:.0f} s:\n{logs}")


@dataclass(frozen=True)
class StopReport:
    exit_code: int | None  # None: it was already gone
    crashed: bool
    logs: str


def stop_registry(client: Any, container_id: str) -> StopReport:
    """SIGTERM (the registry finishes requests and flushes its record), wait, remove."""
    try:
        container = client.containers.get(container_id)
    except NotFound:
        return StopReport(None, True, "")
    try:
        was_running = container.status == "running"
        if was_running:
            container.stop(timeout=STOP_TIMEOUT_SECONDS)
        state = client.api.inspect_container(container_id)["State"]
        exit_code = int(state.get("ExitCode", -1))
        logs = container.logs(tail=50).decode(errors="replace")
        container.remove(force=True)
    except DockerException as error:
        return StopReport(None, True, str(error))
    return StopReport(exit_code, not was_running or exit_code != 0, logs)


def run_cache_command(
    client: Any, me: ActionContainer, arguments: list[str], root: Path, host_dirs: list[str]
) -> str:
    """`python -m cache_action ARGUMENTS` in a short-lived sibling from the action's own image,
    for runner-host directories the action container has no mount for (a `local://` store on an
    NFS mount or kept between jobs): each of `host_dirs` is mounted at the same path, the cache
    root at /cache. Returns its stdout; StoreError with the end of its log when it fails."""
    volumes = {me.host_path(root): {"bind": ROOT_IN_REGISTRY, "mode": "rw"}}
    volumes.update({d: {"bind": d, "mode": "rw"} for d in host_dirs})
    try:
        container = _run_sibling(
            client, me, arguments, volumes, network_mode="none", labels={LABEL: "store"}
        )
    except DockerException as error:
        raise StoreError(f"cannot start a container to reach the store: {error}") from None
    try:
        status = container.wait(timeout=STORE_HELPER_TIMEOUT_SECONDS)
        output = container.logs(stdout=True, stderr=False).decode(errors="replace")
        log = container.logs(stdout=False, stderr=True, tail=30).decode(errors="replace")
    except (DockerException, OSError) as error:  # requests' timeouts are OSErrors
        raise StoreError(f"the store container failed: {error}") from None
    finally:
        with contextlib.suppress(DockerException):
            container.remove(force=True)
    if int(status.get("StatusCode", -1)) != 0:
        raise StoreError(f"{arguments[0]} failed:\n{log.strip()}")
    return str(output)
