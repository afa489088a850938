"""Fixtures for the Actions cache tests: Azurite (session) and the cache emulator (per test).
Test modules load them with `pytest_plugins = ["tests.gha_fixtures"]`; the helpers they use
(trees, clients) live in tests/gha_emulator.py.

Node, npm and Azurite are real components: missing, they skip locally and fail under CI=true.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import Azurite, ensure_azurite, tools_cache
from tests.conftest import require, require_tool
from tests.gha_emulator import CacheEmulator


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
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
    workdir = tmp_path / "emulator"
    workdir.mkdir()
    server = CacheEmulator(azurite, workdir).start()
    yield server
    server.stop()
