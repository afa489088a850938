"""What a user who gets something wrong sees: one line naming the setting, the value and what to
do, and exit 2; never a traceback. Permission cases run the CLI as `nobody`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from cache_action.__main__ import _parser
from tests.cli import Run, run_cache_action
from tests.components import require

ROOT_COMMANDS = {
    "serve": ["serve", "--listen", "127.0.0.1:0"],
    "gc": ["gc"],
    "prune": ["prune"],
    "stats": ["stats"],
    "save": ["save", "--ref", "main", "--scope", "app"],
    "restore": ["restore", "--ref", "main", "--scope", "app"],
}


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Run:
    return run_cache_action({**os.environ, **(env or {})}, *args, cwd=tmp_path, timeout=60)


def one_error_line(result: Run) -> str:
    assert result.code == 2, (result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def with_root(command: str, root: Path, store: Path) -> list[str]:
    arguments = list(ROOT_COMMANDS[command])
    arguments[1:1] = ["--root", str(root)]
    if command in ("save", "restore"):
        arguments += ["--store", f"local://{store}"]
    return arguments


# --- the root ---------------------------------------------------------------------------------


@pytest.mark.parametrize("command", sorted(ROOT_COMMANDS))
def test_a_root_that_is_a_file_is_a_usage_error(tmp_path: Path, command: str) -> None:
    root = tmp_path / "root"
    root.write_text("not a directory")
    result = run(tmp_path, *with_root(command, root, tmp_path / "store"))
    assert one_error_line(result) == (
        f"error: --root: '{root}' is not valid; expected a directory, not a file"
    )
    assert root.read_text() == "not a directory"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command", ["gc", "prune", "stats"])
def test_a_missing_root_is_a_usage_error_where_it_is_read(tmp_path: Path, command: str) -> None:
    root = tmp_path / "missing"
    result = run(tmp_path, *with_root(command, root, tmp_path / "store"))
    assert one_error_line(result) == (
        f"error: --root: '{root}' is not valid; expected an existing directory"
    )
    assert not root.exists()


# --- as another user --------------------------------------------------------------------------


def as_nobody(tmp_path: Path, *args: str) -> Run:
    """The CLI as uid/gid 65534 with no groups. It keeps CAP_DAC_READ_SEARCH only, so it can
    read this interpreter and checkout wherever they are (/root, say), but writes exactly as
    `nobody` may."""
    require(os.geteuid() == 0, "root (to run the CLI as another user)")
    setpriv = shutil.which("setpriv")
    require(setpriv is not None, "setpriv (util-linux)")
    assert setpriv is not None
    command = [
        setpriv,
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=+dac_read_search",
        "--ambient-caps=+dac_read_search",
        sys.executable,
        "-m",
        "cache_action",
        *args,
    ]
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    environment["HOME"] = "/nonexistent"
    process = subprocess.run(
        command, env=environment, cwd="/", capture_output=True, text=True, timeout=60
    )
    return Run(process.returncode, process.stdout, process.stderr)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory owned by root that nobody may enter and list, but not write. Not under
    pytest's own temporary directory: that one is 0700, and access(2) ignores capabilities."""
    directory = Path(tempfile.mkdtemp(prefix="cache-action-shared-"))
    directory.chmod(0o755)
    try:
        yield directory
    finally:
        shutil.rmtree(directory)


@pytest.mark.parametrize("command", ["serve", "gc", "prune", "save", "restore"])
def test_a_root_this_user_may_not_write_is_a_usage_error(
    tmp_path: Path, shared_dir: Path, command: str
) -> None:
    root = shared_dir / "root"
    (root / ".cache-action").mkdir(parents=True)
    store = shared_dir / "store"
    store.mkdir()
    result = as_nobody(tmp_path, *with_root(command, root, store))
    assert one_error_line(result) == (
        f"error: --root: '{root}' is not valid; expected a directory this user may write ({root})"
    )
    assert sorted(p.name for p in root.iterdir()) == [".cache-action"]


def test_a_root_this_user_may_not_create_is_a_usage_error(tmp_path: Path, shared_dir: Path) -> None:
    root = shared_dir / "new-root"
    result = as_nobody(tmp_path, *with_root("serve", root, shared_dir / "store"))
    assert one_error_line(result) == (
        f"error: --root: '{root}' is not valid; expected a directory this user may create "
        "(Permission denied)"
    )
    assert not root.exists()


def test_the_same_commands_work_for_that_user_on_a_root_it_owns(
    tmp_path: Path, shared_dir: Path
) -> None:
    """The control: the failures above are about permissions, not about running as nobody."""
    root = shared_dir / "mine"
    root.mkdir()
    os.chown(root, 65534, 65534)
    result = as_nobody(tmp_path, "gc", "--root", str(root))
    assert result.code == 0, result.stderr
    assert json.loads(result.stdout)["blobs_deleted"] == 0


# --- listening --------------------------------------------------------------------------------


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_a_port_in_use_is_named(tmp_path: Path, busy_port: int) -> None:
    root = tmp_path / "root"
    result = run(tmp_path, "serve", "--root", str(root), "--listen", f"127.0.0.1:{busy_port}")
    assert one_error_line(result) == (
        f"error: --listen: 127.0.0.1:{busy_port} is in use: stop what listens there, or choose "
        "another port (0: any)"
    )
    assert not root.exists()


def test_the_service_names_its_variable_for_a_port_in_use(tmp_path: Path, busy_port: int) -> None:
    env = {
        "CACHE_ROOT": str(tmp_path / "root"),
        "BUILDKIT_CACHE_REPO": f"local://{tmp_path / 'store'}",
        "CACHE_LISTEN": f"127.0.0.1:{busy_port}",
    }
    assert one_error_line(run(tmp_path, "serve", env=env)).startswith(
        f"error: CACHE_LISTEN: 127.0.0.1:{busy_port} is in use"
    )


def test_an_address_of_no_interface_cannot_be_bound(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        *("serve", "--root", str(tmp_path / "root")),
        *("--listen", "192.0.2.77:5000", "--insecure-no-auth"),
    )
    assert one_error_line(result) == (
        "error: --listen: 192.0.2.77:5000 cannot be bound: no interface of this machine has "
        "that address"
    )


# --- serve without --root: the standalone service ---------------------------------------------


def test_the_service_will_not_default_to_the_hosts_own_cache_directory(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CACHE_", "BUILDKIT_"))}
    result = run_cache_action(env, "serve", cwd=tmp_path, timeout=60)
    assert one_error_line(result) == (
        "error: serve: CACHE_ROOT and BUILDKIT_CACHE_REPO not set, and /cache is not a volume "
        "of a container: give --root DIR to serve a directory, or set CACHE_ROOT and "
        "BUILDKIT_CACHE_REPO to run the standalone service here"
    )
    env["CACHE_ROOT"] = str(tmp_path / "root")
    assert "BUILDKIT_CACHE_REPO not set" in one_error_line(
        run_cache_action(env, "serve", cwd=tmp_path, timeout=60)
    )
    assert not (tmp_path / "root").exists()


def test_the_service_honours_the_flags_it_is_given(tmp_path: Path) -> None:
    """`serve --listen ... --ready-file ...` without --root: the flags win over the variables."""
    ready = tmp_path / "ready.json"
    env = {
        **os.environ,
        "CACHE_ROOT": str(tmp_path / "root"),
        "BUILDKIT_CACHE_REPO": f"local://{tmp_path / 'store'}",
        "CACHE_LISTEN": "127.0.0.1:1",  # would fail: the flag must win
        "CACHE_SAVE_INTERVAL": "0",
    }
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - the child owns it
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cache_action",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ready-file",
            str(ready),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        for _ in range(300):
            if ready.exists() or process.poll() is not None:
                break
            threading.Event().wait(0.05)
        assert ready.exists(), (tmp_path / "service.log").read_text()
        address = json.loads(ready.read_text())["address"]
        assert address.startswith("127.0.0.1:") and address != "127.0.0.1:1"
    finally:
        process.terminate()
        assert process.wait(60) == 0, (tmp_path / "service.log").read_text()


# --- help -------------------------------------------------------------------------------------


def subcommands() -> dict[str, object]:
    actions = [a for a in _parser()._actions if a.dest == "command"]
    choices = actions[0].choices
    assert isinstance(choices, dict)
    return dict(choices)


@pytest.mark.parametrize("command", sorted(subcommands()))
def test_every_option_has_help_and_says_its_default(command: str) -> None:
    parser = subcommands()[command]
    for action in parser._actions:  # type: ignore[attr-defined]
        if action.dest == "help":
            continue
        assert action.help, f"{command} {action.option_strings} has no help"
        has_default = action.default not in (None, False, [], "") or action.dest in (
            "listen",
            "token_lifetime",
            "ready_file",
            "ttl",
            "max_size",
            "keep",
        )
        if has_default:
            text = action.help % {"default": action.default}
            assert "default" in text, f"{command} {action.option_strings}: {text}"


def test_help_prints_the_real_defaults() -> None:
    wide = {**os.environ, "COLUMNS": "400"}  # argparse wraps at the terminal's width
    result = subprocess.run(
        [sys.executable, "-m", "cache_action", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=wide,
    )
    text = " ".join(result.stdout.split())
    assert "(default 127.0.0.1:5000;" in text
    assert "(default 5m)" in text
    health = subprocess.run(
        [sys.executable, "-m", "cache_action", "health", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        env=wide,
    )
    assert "(default /run/cache-action/ready.json)" in " ".join(health.stdout.split())


# --- health -----------------------------------------------------------------------------------


class _NotARegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


def test_health_says_why_it_fails(tmp_path: Path) -> None:
    ready = tmp_path / "ready.json"
    result = run(tmp_path, "health", "--ready-file", str(ready))
    assert (result.code, result.stdout.strip()) == (
        1,
        f"unhealthy: no ready file at {ready}: the registry is not listening (yet)",
    )
    ready.write_text("{not json")
    assert run(tmp_path, "health", "--ready-file", str(ready)).stdout.startswith(
        f"unhealthy: the ready file {ready} is unreadable:"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    ready.write_text(json.dumps({"address": f"127.0.0.1:{closed}"}))
    assert run(tmp_path, "health", "--ready-file", str(ready)).stdout.startswith(
        f"unhealthy: http://127.0.0.1:{closed}/v2/ does not answer:"
    )
    server = HTTPServer(("127.0.0.1", 0), _NotARegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        ready.write_text(json.dumps({"address": f"127.0.0.1:{port}"}))
        result = run(tmp_path, "health", "--ready-file", str(ready))
        assert (result.code, result.stdout.strip()) == (
            1,
            f"unhealthy: http://127.0.0.1:{port}/v2/ answered 404, not as a registry",
        )
    finally:
        server.shutdown()
