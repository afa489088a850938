"""Pieces shared by benchmarks: registry child processes, peak-RSS sampling, skopeo, medians.

Benchmarks report; they never assert on times. On a 2-core machine only ratios against a
reference measured in the same run mean anything.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cache_action.storage.digests import Digest
from cache_action.storage.index import descriptor
from cache_action.storage.root import Storage

MIB = 1024 * 1024
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
POLL_SECONDS = 0.02
START_TIMEOUT_SECONDS = 30.0
STOP_TIMEOUT_SECONDS = 60.0


def free_port() -> int:
    """A loopback port free right now (for servers that cannot report the one they bound)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"error: {name} is not on PATH")
    return path


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _status_kib(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Selected `kB` fields of /proc/<pid>/status; empty once the process is gone."""
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                key, _, rest = line.partition(":")
                if key in keys:
                    found[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return {}
    return found


class RssSampler:
    """Polls VmRSS every 20 ms in a thread; `stop()` also reads VmHWM (the kernel's exact peak).

    Call `stop()` while the process is still alive, or VmHWM is lost and only the polled peak
    remains.
    """

    def __init__(self, pid: int, interval: float = POLL_SECONDS) -> None:
        self.pid = pid
        self.interval = interval
        self.polled_peak_kib = 0
        self.hwm_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            fields = _status_kib(self.pid, ("VmRSS",))
            if not fields:
                return
            self.polled_peak_kib = max(self.polled_peak_kib, fields["VmRSS"])
            self.samples += 1
            self._stop.wait(self.interval)

    def stop(self) -> None:
        fields = _status_kib(self.pid, ("VmRSS", "VmHWM"))
        self.hwm_kib = max(self.hwm_kib, fields.get("VmHWM", 0))
        self.polled_peak_kib = max(self.polled_peak_kib, fields.get("VmRSS", 0))
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return max(self.hwm_kib, self.polled_peak_kib) / 1024


@dataclass
class ServerProcess:
    """A registry running as a child process, watched by an RssSampler from start to stop."""

    label: str
    process: subprocess.Popen[bytes]
    address: str
    log_path: Path
    sampler: RssSampler = field(init=False)

    def __post_init__(self) -> None:
        self.sampler = RssSampler(self.process.pid)

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> int:
        """SIGTERM (after a last VmHWM read) and wait; kills on timeout. Returns the exit code."""
        self.sampler.stop()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            raise RuntimeError(f"{self.label} ignored SIGTERM for {timeout:.0f} s") from None

    def kill(self) -> None:
        """Last resort in `finally`: only this child, by its own handle."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""


def _wait_for(
    process: subprocess.Popen[bytes], log_path: Path, ready: Callable[[], bool], what: str
) -> None:
    """Poll `ready()` until true; fail early if the child dies or the timeout passes."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready():
        if process.poll() is not None:
            log = log_path.read_text(errors="replace")
            raise RuntimeError(f"{what} exited early ({process.returncode}):\n{log}")
        if time.monotonic() > deadline:
            process.kill()
            process.wait(10)
            raise RuntimeError(f"{what} not ready after {START_TIMEOUT_SECONDS:.0f} s")
        time.sleep(POLL_SECONDS)


def start_ours(
    root: Path, workdir: Path, label: str = "ours", options: Sequence[str] = ()
) -> ServerProcess:
    """`python -m cache_action serve` on a free loopback port; ready when it writes the file.
    `options`: more `serve` flags."""
    ready_file = workdir / f"{label}.ready.json"
    log_path = workdir / f"{label}.log"
    ready_file.unlink(missing_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cache_action",
                "serve",
                "--root",
                str(root),
                "--listen",
                "127.0.0.1:0",
                "--ready-file",
                str(ready_file),
                *options,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    _wait_for(process, log_path, ready_file.exists, "our registry")
    address = str(json.loads(ready_file.read_text())["address"])
    return ServerProcess(label, process, address, log_path)


REFERENCE_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
{auth}http:
  addr: {address}
  draintimeout: 10s
{tls}"""


def _answers_v2(address: str) -> bool:
    try:
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_reference(
    root: Path,
    workdir: Path,
    label: str = "reference",
    *,
    auth: str = "",
    tls: str = "",
    answers: Callable[[str], bool] | None = None,
) -> ServerProcess:
    """`docker-registry serve CONFIG.yml` (CNCF distribution) on a free loopback port.

    The access log is off, as it is by default in ours, so neither pays for request logging;
    `draintimeout` makes it finish requests and exit 0 on SIGTERM (without it, SIGTERM kills it).
    `auth` and `tls` are YAML sections (`tls` indented under `http`); `answers(address)` says
    it is up (default: plain-HTTP `/v2/` answers 200).
    """
    binary = require_tool("docker-registry")
    address = f"127.0.0.1:{free_port()}"
    config = workdir / f"{label}.yml"
    config.write_text(REFERENCE_CONFIG.format(root=root, address=address, auth=auth, tls=tls))
    log_path = workdir / f"{label}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [binary, "serve", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    ready = answers or _answers_v2
    _wait_for(process, log_path, lambda: ready(address), "docker-registry")
    return ServerProcess(label, process, address, log_path)


def tool_version(*command: str) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except OSError:
        return "unknown"
    lines = (result.stdout or result.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def settle_disk() -> None:
    """Flush dirty pages left by the previous step so its writeback does not slow the next."""
    os.sync()


def random_file(path: Path, size: int) -> str:
    """`size` random bytes into `path`; returns the sha256 hex."""
    hasher = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(16 * MIB, remaining))
            hasher.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
        out.flush()
        os.fsync(out.fileno())
    return hasher.hexdigest()


def put_small(storage: Storage, repository: str, data: bytes) -> Digest:
    """A manifest or config into a root, through the storage API."""
    digest = Digest.parse(f"sha256:{hashlib.sha256(data).hexdigest()}")
    storage.blobs.put_bytes(repository, digest, data)
    return digest


def tag_manifest(
    storage: Storage,
    repository: str,
    tag: str,
    config: tuple[str, bytes],
    layers: list[dict[str, Any]],
) -> int:
    """An OCI image manifest of `config` (media type, bytes) and `layers` (descriptors of
    blobs already in the root), tagged `tag`; returns the bytes it added."""
    media_type, data = config
    config_digest = put_small(storage, repository, data)
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor(media_type, config_digest, len(data)),
            "layers": layers,
        }
    ).encode()
    manifest_digest = put_small(storage, repository, manifest)
    storage.indexes.set_tag(
        repository, tag, descriptor(OCI_MANIFEST, manifest_digest, len(manifest), tag)
    )
    return len(data) + len(manifest)


@contextlib.contextmanager
def scratch_dir(parent: Path | None, prefix: str) -> Iterator[Path]:
    """One run's temporary directory, under `--workdir` when given; removed afterwards."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_report(path: Path | None, document: Any) -> None:
    """`--json FILE`: the run's document, when asked for."""
    if path is not None:
        path.write_text(json.dumps(document, indent=1) + "\n")
        print(f"wrote {path}")
