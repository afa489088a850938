"""A job's `services:` containers, started and stopped as the GitHub runner does.

From `actions/runner` (ContainerOperationProvider.cs, DockerCommandManager.DockerCreate):
- "Initialize containers": `docker network create --label <instance> github_network_<guid>`;
  for each service `docker create --name <display> --label <instance> --network <network>
  --network-alias <service name> -p <port>... <options> -e NAME=VALUE... -e GITHUB_ACTIONS=true
  -e CI=true -v <volume>... <image>` (no entrypoint, no arguments: the image's CMD runs), then
  `docker start`; then, for a container with a HEALTHCHECK, `docker inspect` its health while it
  is `starting` (backoff from 2 s, doubling up to 32 s) and fail the job unless it is `healthy`;
- "Stop containers" (after every post step): `docker rm --force` each, then `docker network rm`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from tests.runner import INSTANCE_LABEL, docker

HEALTH_FORMAT = "{{if .Config.Healthcheck}}{{print .State.Health.Status}}{{end}}"


@dataclass
class JobServices:
    network: str = field(default_factory=lambda: f"github_network_{uuid.uuid4().hex}")
    ids: dict[str, str] = field(default_factory=dict)  # service name -> container id
    waited: dict[str, float] = field(default_factory=dict)  # seconds until healthy

    def start(self, services: dict[str, dict[str, Any]], timeout: float = 180) -> None:
        docker("network", "create", "--label", INSTANCE_LABEL, self.network)
        for name, spec in services.items():
            self.ids[name] = self._create(name, spec)
            docker("start", self.ids[name])
        for name, container in self.ids.items():
            self.waited[name] = _wait_healthy(name, container, timeout)

    def _create(self, name: str, spec: dict[str, Any]) -> str:
        image = str(spec["image"])
        display = (
            f"{uuid.uuid4().hex}_{image.replace('/', '').replace(':', '')}_{uuid.uuid4().hex[:6]}"
        )
        argv = ["create", "--name", display, "--label", INSTANCE_LABEL]
        argv += ["--network", self.network, "--network-alias", name]
        for port in spec.get("ports") or []:
            argv += ["-p", str(port)]
        for key, value in (spec.get("env") or {}).items():
            argv += ["-e", f"{key}={value}"]
        argv += ["-e", "GITHUB_ACTIONS=true", "-e", "CI=true"]
        for volume in spec.get("volumes") or []:
            argv += ["-v", str(volume)]
        argv.append(image)
        return docker(*argv).strip()

    def stop(self) -> None:
        """What the runner's "Stop containers" step does: no graceful stop."""
        for container in self.ids.values():
            docker("rm", "--force", container, check=False)
        docker("network", "rm", self.network, check=False)


def _wait_healthy(name: str, container: str, timeout: float) -> float:
    started = time.monotonic()
    status = docker("inspect", f"--format={HEALTH_FORMAT}", container).strip()
    attempt = 0
    while status == "starting":
        assert time.monotonic() - started < timeout, f"{name} still starting"
        time.sleep(min(2 * 2**attempt, 32))
        status = docker("inspect", f"--format={HEALTH_FORMAT}", container).strip()
        attempt += 1
    assert status in ("healthy", ""), f"Failed to initialize, {name} service is {status}"
    return time.monotonic() - started
