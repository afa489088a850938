"""Run `python -m cache_action` as a job or a user would, and read what it printed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def json(self) -> dict[str, Any]:
        document: dict[str, Any] = json.loads(self.stdout)
        return document


def run_cache_action(env: Mapping[str, str], *args: str, cwd: Path, timeout: float = 300) -> Run:
    process = subprocess.run(
        [sys.executable, "-m", "cache_action", *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
    )
    return Run(process.returncode, process.stdout, process.stderr)
