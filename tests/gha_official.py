"""The official Actions cache client, `@actions/cache` (what actions/cache runs), driven by
tests/node/cache-interop.mjs: installed from npm once per machine (node, npm and zstd are real
components: missing, the tests skip locally and fail under CI=true)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.azurite import install_lock, npm_install, tools_cache
from tests.components import require, require_tool
from tests.gha_emulator import CacheEmulator, feature_token

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = "cache-interop.mjs"
PATHS = [".buildkit-cache"]
UPLOADS = ".buildkit-cache/.cache-action/uploads"


@dataclass
class OfficialClient:
    node: str
    directory: Path  # node_modules and the script, installed from tests/node

    def run(
        self,
        emulator: CacheEmulator,
        workspace: Path,
        runner_temp: Path,
        *arguments: str,
        token: str | None = None,
    ) -> dict[str, Any]:
        result = runner_temp / "result.json"
        result.unlink(missing_ok=True)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "ACTIONS_RESULTS_URL": emulator.url,
            "ACTIONS_RUNTIME_TOKEN": token or feature_token(),
            "ACTIONS_CACHE_SERVICE_V2": "1",
            "GITHUB_WORKSPACE": str(workspace),
            "RUNNER_TEMP": str(runner_temp),
            "RUNNER_DEBUG": "1",
        }
        completed = subprocess.run(
            [self.node, str(self.directory / SCRIPT), arguments[0], str(result), *arguments[1:]],
            cwd=workspace,  # @actions/glob resolves the path patterns from the cwd
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        output = completed.stdout + completed.stderr
        assert completed.returncode == 0, output
        assert result.exists(), output
        value: dict[str, Any] = json.loads(result.read_text())
        value["log"] = output
        return value


def install_official_client() -> OfficialClient:
    """@actions/cache (and its script) from npm, once per machine; a real component."""
    node = require_tool("node")
    require_tool("npm")
    require_tool("zstd")  # without it @actions/cache falls back to gzip (another version)
    manifest = (NODE_DIR / "package.json").read_bytes() + (
        NODE_DIR / "package-lock.json"
    ).read_bytes()
    directory = tools_cache() / f"actions-cache-{hashlib.sha256(manifest).hexdigest()[:12]}"
    try:
        with install_lock(directory):
            if not (directory / "node_modules" / "@actions" / "cache").exists():
                for name in ("package.json", "package-lock.json"):
                    shutil.copy(NODE_DIR / name, directory / name)
                npm_install(directory)
    except (RuntimeError, OSError, subprocess.SubprocessError) as error:
        require(False, f"@actions/cache from npm ({error})")
    shutil.copy(NODE_DIR / SCRIPT, directory / SCRIPT)  # ESM resolves from the script's dir
    return OfficialClient(node, directory)
