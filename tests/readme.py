"""The README's own commands and snippets, so tests run what users copy."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.runner import yaml

README = Path(__file__).resolve().parent.parent / "README.md"
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
PUBLISHED_IMAGE = "ghcr.io/OWNER/cache-action:v1"


def code_blocks(language: str) -> list[str]:
    return [body for lang, body in _FENCE.findall(README.read_text()) if lang == language]


def shell_command(prefix: str) -> str:
    """The one README shell line that starts with `prefix`."""
    found = [
        line.strip()
        for block in code_blocks("sh")
        for line in block.splitlines()
        if line.strip().startswith(prefix)
    ]
    assert len(found) == 1, f"README.md has {len(found)} sh lines starting {prefix!r}"
    return found[0]


def workflow_with(key: str) -> dict[str, Any]:
    """The one README yaml snippet whose job has `key` (e.g. services)."""
    found = []
    for block in code_blocks("yaml"):
        document = yaml.safe_load(block)
        if not isinstance(document, dict):
            continue
        for job in (document.get("jobs") or {}).values():
            if isinstance(job, dict) and key in job:
                found.append(job)
    assert len(found) == 1, f"README.md has {len(found)} yaml jobs with {key!r}"
    first: dict[str, Any] = found[0]
    return first
