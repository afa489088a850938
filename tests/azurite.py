"""Azurite (Microsoft's Azure Storage emulator, npm `azurite@3`) as a child process.

Installed once with npm into a cache directory shared by test runs
(`$CACHE_ACTION_TEST_CACHE` or `~/.cache/cache-action-tests`), started on a free loopback port
with in-memory storage. The well-known development account `devstoreaccount1` and its
published key sign the SAS URLs the cache emulator hands out.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ACCOUNT = "devstoreaccount1"
# Azurite's published development key (https://learn.microsoft.com/azure/storage/common/storage-use-azurite)
ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
AZURITE_SPEC = "azurite@3"


def tools_cache() -> Path:
    configured = os.environ.get("CACHE_ACTION_TEST_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "cache-action-tests"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def install_lock(directory: Path) -> Iterator[None]:
    """Serialize npm installs into one directory across concurrent test runs."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def npm_install(directory: Path, *packages: str, timeout: float = 600) -> None:
    """`npm install` into `directory` (its package.json when no packages are named)."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is not on PATH")
    command = [
        npm,
        "install",
        "--prefix",
        str(directory),
        "--no-audit",
        "--no-fund",
        "--loglevel=error",
    ]
    result = subprocess.run(
        [*command, *packages], capture_output=True, text=True, timeout=timeout, cwd=directory
    )
    if result.returncode != 0:
        raise RuntimeError(f"npm install {' '.join(packages)} failed:\n{result.stderr[-3000:]}")


def ensure_azurite(cache: Path | None = None) -> Path:
    """The azurite blob entry script, installed on first use."""
    directory = (cache or tools_cache()) / "azurite"
    main = directory / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
    with install_lock(directory):
        if not main.exists():
            npm_install(directory, AZURITE_SPEC)
    if not main.exists():
        raise RuntimeError(f"npm installed {AZURITE_SPEC} but {main} is missing")
    return main


@dataclass
class Azurite:
    main_js: Path
    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={ACCOUNT_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def start(self, timeout: float = 30.0) -> Azurite:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not on PATH")
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.workdir / "azurite.log", "ab")  # noqa: SIM115 - the child owns it
        help_text = subprocess.run(
            [node, str(self.main_js), "--help"], capture_output=True, text=True, timeout=60
        ).stdout
        extra = ["--disableTelemetry"] if "--disableTelemetry" in help_text else []
        for _ in range(3):  # a free port can be taken between choosing and binding it
            self.port = free_port()
            self.process = subprocess.Popen(
                [
                    node,
                    str(self.main_js),
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    str(self.port),
                    "--inMemoryPersistence",
                    "--skipApiVersionCheck",
                    "--silent",
                    *extra,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
            if self._wait_ready(timeout):
                return self
            self.stop()
        raise RuntimeError(f"azurite did not start:\n{self.log()}")

    def _wait_ready(self, timeout: float) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return True
            except OSError:
                time.sleep(0.1)
        return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)

    def log(self) -> str:
        path = self.workdir / "azurite.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""
