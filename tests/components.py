"""Real components for the tests: the gates that require them, and our registry as a child
process. Tests that need a real component (skopeo, dockerd, ...) skip when it is missing on a
developer machine but FAIL under CI=true: CI must prove them, never silently skip them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

IN_CI = os.environ.get("CI", "").lower() == "true"


def require(condition: bool, what: str) -> None:
    """Skip locally, fail in CI, when a real component the test needs is missing."""
    if condition:
        return
    if IN_CI:
        pytest.fail(f"{what} is required under CI=true (.ci/run installs and starts it)")
    pytest.skip(f"{what} is not available")


def require_tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"the {name} binary")
    assert path is not None
    return path


@dataclass
class RegistryProcess:
    """`python -m cache_action serve` as a child process, as users and the action run it."""

    root: Path
    ready_file: Path
    log_file: Path
    listen: str = "127.0.0.1:0"
    options: tuple[str, ...] = ()  # more `serve` flags: --htpasswd, --tls-cert, ...
    process: subprocess.Popen[bytes] | None = None
    address: str = ""
    url: str = ""

    def start(self, timeout: float = 20.0) -> RegistryProcess:
        self.ready_file.unlink(missing_ok=True)
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it until it exits
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cache_action",
                "serve",
                "--root",
                str(self.root),
                "--listen",
                self.listen,
                "--ready-file",
                str(self.ready_file),
                *self.options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"registry exited early:\n{self.log_file.read_text()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"registry not ready:\n{self.log_file.read_text()}")
            time.sleep(0.02)
        ready = json.loads(self.ready_file.read_text())
        self.address, self.url = ready["address"], ready["url"]
        return self

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, as the action's post stage does; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self.process.wait(10)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")
