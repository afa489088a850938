"""Talking to the runner: outputs, state, masks, log groups, annotations, the job summary.

actions-toolkit handles the file commands (heredoc delimiters, as @actions/core) and masks;
annotations are written here because it emits empty properties (`title=,file=`), and there is no
summary helper and no `set_failed` that lets the stage finish its cleanup.
"""

from __future__ import annotations

import contextlib
import logging
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
    sys.stdout.write("".join(_inert(line) + "\n" for line in message.splitlines() or [""]))
    sys.stdout.flush()


def _inert(line: str) -> str:
    """A log line the runner will not take for a workflow command (`::name::`), whatever a
    cache key or a server's message put in it."""
    return line.replace("::", ": :", 1) if line.lstrip().startswith("::") else line


class JobLogHandler(logging.Handler):
    """The package's log records as job-log lines, inside whatever group is open: INFO as
    they are, warnings and errors prefixed, DEBUG only when the run has debug logging on.
    Annotations are for what the user should act on; the stages write those themselves."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format string must not break the stage
            self.handleError(record)
            return
        prefix = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        lines = [_inert(prefix + line) for line in text.splitlines() or [""]]
        if record.levelno < logging.INFO:
            lines = [f"::debug::{_escape_data(line)}" for line in lines]
        sys.stdout.write("".join(line + "\n" for line in lines))
        sys.stdout.flush()


def configure_logging(env: Mapping[str, str]) -> None:
    """Called once by each stage: the stores' `log.info` lines reach the job log."""
    level = logging.DEBUG if env.get("RUNNER_DEBUG") == "1" else logging.INFO
    root = logging.getLogger()
    root.handlers = [JobLogHandler()]
    root.setLevel(level)
    for noisy in ("azure", "botocore", "boto3", "urllib3", "s3transfer", "docker"):
        logging.getLogger(noisy).setLevel(logging.WARNING)  # their INFO is every request


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
