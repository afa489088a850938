"""Talking to the runner: outputs, state, masks, log groups, annotations, the job summary.

actions-toolkit handles the file commands (heredoc delimiters, as @actions/core) and masks;
annotations are written here because it emits empty properties (`title=,file=`), and there is no
summary helper and no `set_failed` that lets the stage finish its cleanup.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Mapping

from actions_toolkit import core


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def annotate(level: str, message: str, title: str | None = None) -> None:
    """`::warning title=...::message`, with only the properties that have a value."""
    properties = f" title={_escape_property(title)}" if title else ""
    sys.stdout.write(f"::{level}{properties}::{_escape_data(message)}\n")
    sys.stdout.flush()


def warning(message: str, title: str | None = None) -> None:
    annotate("warning", message, title)


def error(message: str, title: str | None = None) -> None:
    annotate("error", message, title)


def notice(message: str, title: str | None = None) -> None:
    annotate("notice", message, title)


def info(message: str) -> None:
    sys.stdout.write(message + "\n")
    sys.stdout.flush()


def mask(secret: str) -> None:
    if secret:
        core.set_secret(secret)


@contextlib.contextmanager
def group(title: str) -> Iterator[None]:
    core.start_group(title)
    sys.stdout.flush()
    try:
        yield
    finally:
        core.end_group()
        sys.stdout.flush()


def set_outputs(outputs: Mapping[str, str]) -> None:
    for name, value in outputs.items():
        core.set_output(name, value)


def save_state(values: Mapping[str, str]) -> None:
    for name, value in values.items():
        core.save_state(name, value)


def append_summary(markdown: str) -> None:
    """Add to the job summary; silently nothing outside a runner."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as summary:
        summary.write(markdown.rstrip("\n") + "\n")
