"""A shared, authenticated TLS cache service under load: ours against CNCF distribution.

    python -m bench.service_load [--clients 32] [--seconds 60] [--rounds 1]
                                 [--max-iterations 100000] [--layer-kib 64-512]
                                 [--json out.json] [--workdir DIR]

Each registry runs as a child process over HTTPS (a CA and certificate made for the run) with
htpasswd users (bcrypt at `htpasswd -B`'s default cost, 5): ours is `python -m cache_action
serve --htpasswd --tls-cert --tls-key`, the reference is Debian's `docker-registry`
(distribution 2.8.2) with `auth: htpasswd` and `http.tls`. The order alternates per round.

`--clients` concurrent clients (asyncio tasks of one aiohttp process, one connection pool each)
authenticate as registry clients do: a request, the 401 challenge, then a bearer token from the
realm (ours) or Basic credentials on every request (distribution's htpasswd), renewed on a
401. Each then loops, until `--seconds` pass or `--max-iterations` are done:

1. push a layer of its own (HEAD → 404, POST, PUT with the digest), `--layer-kib` random bytes;
2. push one of 8 layers every client shares (HEAD first: pushed once, then found);
3. push a config and a manifest naming the three, under one of its 4 tags (moving it, as a
   builder re-exporting its scopes does);
4. pull a random earlier tag (its own or another client's): GET the manifest and every blob,
   and check each blob against its digest.

Reported per registry: requests/s, bytes/s, latency p50/p99 of all requests and per kind,
errors (any unexpected status or exception; target 0), blobs pulled and digest mismatches
(target 0), the server's peak RSS; and the ratios ours/reference. The load generator shares the
2 cores with the server, so absolute rates are the machine's, not the server's alone; the ratio
compares like with like. Nothing is asserted on times.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import random
import re
import shutil
import ssl
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.common import (
    OCI_MANIFEST,
    ServerProcess,
    median,
    tool_version,
)
from bench.common import start_ours as common_start_ours
from bench.common import start_reference as common_start_reference
from tests.credentials import Pki, make_pki, write_htpasswd

USER = "load"
PASSWORD = "load-" + os.urandom(8).hex()
HTPASSWD_DEFAULT_COST = 5
SHARED_LAYERS = 8
TAGS_PER_CLIENT = 4  # a builder re-exports its few scopes; tags move, they do not pile up
REPOSITORY = "cache"
REQUEST_TIMEOUT_SECONDS = 60
_CHALLENGE = re.compile(r'(\w+)="([^"]*)"')


# --- the servers ------------------------------------------------------------------------------


def start_ours(workdir: Path, pki: Pki, htpasswd: Path) -> ServerProcess:
    options = ("--htpasswd", str(htpasswd), "--tls-cert", str(pki.cert), "--tls-key", str(pki.key))
    return common_start_ours(workdir / "ours-root", workdir, "ours", options)


def start_reference(workdir: Path, pki: Pki, htpasswd: Path) -> ServerProcess:
    """distribution with the same users and certificate."""
    context = ssl.create_default_context(cafile=str(pki.ca_cert))

    def answers(address: str) -> bool:
        try:
            urllib.request.urlopen(f"https://{address}/v2/", timeout=2, context=context)
        except urllib.error.HTTPError as error:
            return error.code == 401
        except OSError:
            return False
        return True

    return common_start_reference(
        workdir / "reference-root",
        workdir,
        auth=f"auth:\n  htpasswd:\n    realm: load\n    path: {htpasswd}\n",
        tls=f"  tls:\n    certificate: {pki.cert}\n    key: {pki.key}\n",
        answers=answers,
    )


# --- a client ---------------------------------------------------------------------------------


@dataclass
class Tally:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    bytes_sent: int = 0
    bytes_received: int = 0
    blobs_verified: int = 0
    digest_mismatches: int = 0
    iterations: int = 0
    tokens: int = 0

    @property
    def requests(self) -> int:
        return sum(len(values) for values in self.latencies.values())


class Client:
    """One registry client: its own connection pool and credentials, as `docker` would be."""

    def __init__(self, base: str, context: ssl.SSLContext, tally: Tally) -> None:
        self.base = base
        self.tally = tally
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=4),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )
        self.authorization = ""

    async def close(self) -> None:
        await self.session.close()

    async def request(
        self, kind: str, method: str, path: str, expect: tuple[int, ...], **options: Any
    ) -> tuple[int, bytes, dict[str, str]]:
        """One timed request; a 401 is answered (token or Basic) and the request repeated."""
        for attempt in range(2):
            headers = dict(options.pop("headers", {}))
            if self.authorization:
                headers["Authorization"] = self.authorization
            started = time.perf_counter()
            async with self.session.request(
                method, self.base + path, headers=headers, **options
            ) as response:
                body = await response.read()
                status, response_headers = response.status, dict(response.headers)
            self.tally.latencies[kind].append(time.perf_counter() - started)
            self.tally.bytes_received += len(body)
            if status == 401 and attempt == 0:
                await self._authenticate(response_headers.get("WWW-Authenticate", ""))
                options["headers"] = headers
                continue
            if status not in expect:
                raise RuntimeError(f"{method} {path}: {status} {body[:200]!r}")
            return status, body, response_headers
        raise RuntimeError(f"{method} {path}: still 401 after authenticating")

    async def _authenticate(self, challenge: str) -> None:
        scheme, _, rest = challenge.partition(" ")
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        if scheme.lower() == "basic":
            self.authorization = basic
            return
        params = dict(_CHALLENGE.findall(rest))
        query = {"service": params.get("service", "")}
        if "scope" in params:
            query["scope"] = params["scope"]
        started = time.perf_counter()
        async with self.session.get(
            params["realm"], params=query, headers={"Authorization": basic}
        ) as response:
            document = await response.json()
            if response.status != 200:
                raise RuntimeError(f"token: {response.status} {document}")
        self.tally.latencies["token"].append(time.perf_counter() - started)
        self.tally.tokens += 1
        self.authorization = f"Bearer {document['token']}"

    async def push_blob(self, data: bytes) -> dict[str, Any]:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        path = f"/v2/{REPOSITORY}/blobs/{digest}"
        status, _, _ = await self.request("blob-head", "HEAD", path, (200, 404))
        if status == 404:
            _, _, headers = await self.request(
                "upload-start", "POST", f"/v2/{REPOSITORY}/blobs/uploads/", (202,)
            )
            location = headers["Location"]
            separator = "&" if "?" in location else "?"
            location = location if location.startswith("http") else self.base + location
            target = location.removeprefix(self.base) + f"{separator}digest={digest}"
            await self.request(
                "upload-put",
                "PUT",
                target,
                (201,),
                data=data,
                headers={"Content-Type": "application/octet-stream"},
            )
            self.tally.bytes_sent += len(data)
        return {
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": digest,
            "size": len(data),
        }

    async def push_manifest(self, tag: str, blobs: list[dict[str, Any]]) -> None:
        config = json.dumps({"tag": tag}).encode()
        config_descriptor = await self.push_blob(config)
        config_descriptor["mediaType"] = "application/vnd.oci.image.config.v1+json"
        body = json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": OCI_MANIFEST,
                "config": config_descriptor,
                "layers": blobs,
            }
        ).encode()
        await self.request(
            "manifest-put",
            "PUT",
            f"/v2/{REPOSITORY}/manifests/{tag}",
            (201,),
            data=body,
            headers={"Content-Type": OCI_MANIFEST},
        )
        self.tally.bytes_sent += len(body)

    async def pull(self, tag: str) -> None:
        _, body, _ = await self.request(
            "manifest-get",
            "GET",
            f"/v2/{REPOSITORY}/manifests/{tag}",
            (200,),
            headers={"Accept": OCI_MANIFEST},
        )
        manifest = json.loads(body)
        for descriptor in [manifest["config"], *manifest["layers"]]:
            _, blob, _ = await self.request(
                "blob-get", "GET", f"/v2/{REPOSITORY}/blobs/{descriptor['digest']}", (200,)
            )
            self.tally.blobs_verified += 1
            if "sha256:" + hashlib.sha256(blob).hexdigest() != descriptor["digest"]:
                self.tally.digest_mismatches += 1


# --- the load ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    clients: int
    seconds: float
    max_iterations: int
    layer_bytes: tuple[int, int]


async def _client_loop(
    number: int,
    base: str,
    context: ssl.SSLContext,
    workload: Workload,
    shared: list[bytes],
    tags: list[str],
    tally: Tally,
    deadline: float,
) -> None:
    client = Client(base, context, tally)
    rng = random.Random(number)
    pool = os.urandom(workload.layer_bytes[1])
    try:
        for iteration in range(workload.max_iterations):
            if time.monotonic() >= deadline:
                break
            try:
                size = rng.randint(*workload.layer_bytes)
                own = f"{number}-{iteration}-{os.urandom(8).hex()}".encode() + pool[:size]
                layers = [await client.push_blob(own)]
                layers.append(await client.push_blob(rng.choice(shared)))
                tag = f"c{number}-{iteration % TAGS_PER_CLIENT}"
                await client.push_manifest(tag, layers)
                if tag not in tags:
                    tags.append(tag)
                await client.pull(rng.choice(tags))
                tally.iterations += 1
            except (RuntimeError, aiohttp.ClientError, TimeoutError) as error:
                tally.errors.append(f"client {number}: {error}")
    finally:
        await client.close()


async def _load(base: str, context: ssl.SSLContext, workload: Workload) -> tuple[Tally, float]:
    tally = Tally()
    shared = [os.urandom(workload.layer_bytes[1]) for _ in range(SHARED_LAYERS)]
    tags: list[str] = []
    started = time.monotonic()
    deadline = started + workload.seconds
    await asyncio.gather(
        *(
            _client_loop(n, base, context, workload, shared, tags, tally, deadline)
            for n in range(workload.clients)
        )
    )
    return tally, time.monotonic() - started


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Result:
    label: str
    round: int
    seconds: float
    requests: int
    requests_per_second: float
    megabytes_per_second: float
    p50_ms: float
    p99_ms: float
    per_kind_p50_p99_ms: dict[str, tuple[float, float]]
    errors: int
    first_errors: list[str]
    iterations: int
    tokens: int
    blobs_verified: int
    digest_mismatches: int
    peak_rss_mib: float


def run_one(
    label: str, workdir: Path, pki: Pki, htpasswd: Path, workload: Workload, number: int
) -> Result:
    start = start_ours if label == "ours" else start_reference
    server = start(workdir, pki, htpasswd)
    context = ssl.create_default_context(cafile=str(pki.ca_cert))
    try:
        tally, seconds = asyncio.run(_load(f"https://{server.address}", context, workload))
    finally:
        code = server.stop()
    if code != 0:
        raise RuntimeError(f"{label} exited {code}:\n{server.log()[-2000:]}")
    everything = [value for values in tally.latencies.values() for value in values]
    return Result(
        label=label,
        round=number,
        seconds=seconds,
        requests=tally.requests,
        requests_per_second=tally.requests / seconds,
        megabytes_per_second=(tally.bytes_sent + tally.bytes_received) / seconds / 1e6,
        p50_ms=_percentile(everything, 0.50) * 1000,
        p99_ms=_percentile(everything, 0.99) * 1000,
        per_kind_p50_p99_ms={
            kind: (_percentile(values, 0.5) * 1000, _percentile(values, 0.99) * 1000)
            for kind, values in sorted(tally.latencies.items())
        },
        errors=len(tally.errors),
        first_errors=tally.errors[:5],
        iterations=tally.iterations,
        tokens=tally.tokens,
        blobs_verified=tally.blobs_verified,
        digest_mismatches=tally.digest_mismatches,
        peak_rss_mib=server.sampler.peak_mib,
    )


def _layer_range(text: str) -> tuple[int, int]:
    low, _, high = text.partition("-")
    return int(low) * 1024, int(high or low) * 1024


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.service_load", description=__doc__)
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-iterations", type=int, default=100_000, help="per client")
    parser.add_argument("--layer-kib", default="64-512", help="own layer size range, KiB")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args(argv)
    workload = Workload(
        args.clients, args.seconds, args.max_iterations, _layer_range(args.layer_kib)
    )
    top = Path(tempfile.mkdtemp(prefix="service-load-", dir=args.workdir))
    results: list[Result] = []
    try:
        pki = make_pki(top / "pki", ["127.0.0.1"])
        htpasswd = write_htpasswd(top / "htpasswd", {USER: PASSWORD}, HTPASSWD_DEFAULT_COST)
        for number in range(1, args.rounds + 1):
            order = ["ours", "reference"] if number % 2 else ["reference", "ours"]
            for label in order:
                workdir = top / f"{label}-{number}"
                workdir.mkdir()
                results.append(run_one(label, workdir, pki, htpasswd, workload, number))
                shutil.rmtree(workdir)
                print(_row(results[-1]), flush=True)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    _report(results, workload)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    failed = any(r.errors or r.digest_mismatches for r in results if r.label == "ours")
    return 1 if failed else 0


def _row(r: Result) -> str:
    return (
        f"{r.round:>5} {r.label:<9} {r.seconds:6.1f} {r.requests:>8} {r.requests_per_second:8.1f}"
        f" {r.megabytes_per_second:7.1f} {r.p50_ms:7.1f} {r.p99_ms:8.1f} {r.errors:>6}"
        f" {r.blobs_verified:>8} {r.digest_mismatches:>5} {r.peak_rss_mib:7.1f}"
    )


def _report(results: list[Result], workload: Workload) -> None:
    print(
        f"{workload.clients} clients, {workload.seconds:.0f} s, own layers "
        f"{workload.layer_bytes[0] // 1024}-{workload.layer_bytes[1] // 1024} KiB; "
        f"reference: {tool_version('docker-registry', '--version')}"
    )
    print(
        "round client      s     reqs    req/s    MB/s  p50 ms   p99 ms errors "
        "verified  bad  RSS MiB"
    )
    for result in results:
        print(_row(result))
    medians: dict[str, dict[str, float]] = {}
    for label in ("ours", "reference"):
        mine = [r for r in results if r.label == label]
        medians[label] = {
            key: median([float(getattr(r, key)) for r in mine])
            for key in (
                "requests_per_second",
                "megabytes_per_second",
                "p50_ms",
                "p99_ms",
                "peak_rss_mib",
            )
        }
    print("medians           ours  reference  ours/reference")
    for key, values in zip(
        medians["ours"], zip(*(m.values() for m in medians.values()), strict=True), strict=True
    ):
        ours, reference = values
        print(f"{key:<20} {ours:8.1f} {reference:9.1f} {ours / reference:10.2f}")
    for result in results:
        if result.label == "ours":
            print(
                f"ours round {result.round}: per kind p50/p99 ms "
                + ", ".join(
                    f"{k} {a:.1f}/{b:.1f}" for k, (a, b) in result.per_kind_p50_p99_ms.items()
                )
            )
        if result.first_errors:
            print(f"{result.label} round {result.round} errors: {result.first_errors}")


if __name__ == "__main__":
    sys.exit(main())
