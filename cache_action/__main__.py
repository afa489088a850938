"""Command line: `python -m cache_action serve|gc|prune|stats|restore|save|health ...`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cache_action import __version__
from cache_action.errors import CacheActionError, InputError
from cache_action.registry import READY_FILE
from cache_action.scopes import EntryName, normalize_ref, validate_token
from cache_action.storage.access import read_stats
from cache_action.storage.gc import collect_garbage
from cache_action.storage.inventory import take_inventory
from cache_action.storage.layout import Layout
from cache_action.storage.lock import root_lock
from cache_action.storage.prune import PrunePolicy, Verify, prune
from cache_action.stores.base import RestoreResult, SaveResult, StoreError
from cache_action.stores.factory import open_store
from cache_action.units import parse_duration, parse_size


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cache_action", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser(
        "serve",
        help="run the OCI registry over a cache root; without --root, run the standalone "
        "service configured by environment variables (BUILDKIT_CACHE_REPO, ...)",
    )
    serve_cmd.add_argument("--root", type=Path, help="the cache directory")
    serve_cmd.add_argument("--listen", default="127.0.0.1:5000", help="HOST:PORT (loopback)")
    serve_cmd.add_argument(
        "--allow-remote", action="store_true", help="allow a non-loopback --listen address"
    )
    serve_cmd.add_argument("--ready-file", type=Path, help="written once the registry listens")
    serve_cmd.add_argument("--log-requests", action="store_true", help="log every request")

    gc_cmd = commands.add_parser("gc", help="delete blobs no tag reaches")
    gc_cmd.add_argument("--root", type=Path, required=True)
    gc_cmd.add_argument("--dry-run", action="store_true", help="report only, delete nothing")

    prune_cmd = commands.add_parser("prune", help="TTL, size budget and integrity, then gc")
    prune_cmd.add_argument("--root", type=Path, required=True)
    prune_cmd.add_argument("--ttl", default="", help="drop tags unused for this long (e.g. 7d)")
    prune_cmd.add_argument("--max-size", default="", help="size budget (e.g. 2GB, 500MiB)")
    prune_cmd.add_argument("--keep", help="at most N most recently used tags per repository")
    prune_cmd.add_argument("--verify", choices=[v.value for v in Verify], default="size")
    prune_cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    prune_cmd.add_argument("--json", action="store_true", help="print the report as JSON")

    health_cmd = commands.add_parser("health", help="exit 0 when the registry answers /v2/")
    health_cmd.add_argument("--ready-file", type=Path, default=READY_FILE)

    stats_cmd = commands.add_parser("stats", help="what the root holds and the last run's counters")
    stats_cmd.add_argument("--root", type=Path, required=True)

    for verb, text in (("restore", "restore entries into a root"), ("save", "save a root")):
        cmd = commands.add_parser(verb, help=text)
        cmd.add_argument("--root", type=Path, required=True)
        cmd.add_argument("--store", required=True, help="local:///PATH, s3://BUCKET/PREFIX or gha")
        cmd.add_argument("--namespace", default="buildkit", help="groups scopes (default buildkit)")
        cmd.add_argument("--ref", required=True, help="the git ref (main or refs/heads/main)")
        cmd.add_argument("--strict", action="store_true", help="fail instead of warning")
        if verb == "restore":
            cmd.add_argument("--scope", action="append", required=True, help="repeat to merge")
            cmd.add_argument("--fallback-ref", action="append", default=[], help="tried in order")
        else:
            cmd.add_argument("--scope", required=True)
    return parser


def _transfer(args: argparse.Namespace) -> int:
    """restore/save: store failures warn and leave a cold cache unless --strict."""
    namespace = validate_token("--namespace", args.namespace)
    ref = normalize_ref("--ref", args.ref)
    store = open_store(args.store, os.environ, "--store")
    layout = Layout(args.root)
    try:
        if args.command == "restore":
            scopes = [validate_token("--scope", s) for s in args.scope]
            refs = [ref, *(normalize_ref("--fallback-ref", r) for r in args.fallback_ref)]
            chains = [[EntryName(namespace, s, r) for r in dict.fromkeys(refs)] for s in scopes]
            with root_lock(layout, "restore"):
                result: RestoreResult | SaveResult = store.restore(layout, chains)
        else:
            name = EntryName(namespace, validate_token("--scope", args.scope), ref)
            with root_lock(layout, "save"):
                result = store.save(layout, name)
    except (StoreError, OSError) as error:
        if args.strict:
            raise CacheActionError(
                f"{args.command} from {store.description} failed: {error}"
            ) from None
        print(f"warning: {args.command} failed, continuing without cache: {error}", file=sys.stderr)
        return 0
    print(json.dumps(result.to_json(), indent=1))
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command in ("restore", "save"):
        return _transfer(args)
    if args.command == "health":
        return health(args.ready_file)
    if args.command == "serve":  # aiohttp is imported only here: other commands start faster
        import asyncio

        from cache_action.registry.server import ServeConfig, parse_listen, serve
        from cache_action.service import run_service

        if args.root is None:
            return run_service(os.environ)
        host, port = parse_listen(args.listen, args.allow_remote)
        config = ServeConfig(args.root, host, port, args.ready_file, args.log_requests)
        asyncio.run(serve(config))
        return 0
    layout = Layout(args.root)
    if not layout.root.is_dir():
        raise CacheActionError(f"--root: {args.root} is not a directory")
    if args.command == "gc":
        with root_lock(layout, "gc"):
            report = collect_garbage(layout, dry_run=args.dry_run)
        print(json.dumps(report.to_json(), indent=1))
        return 0
    if args.command == "prune":
        return _prune(args, layout)
    document = {"root": str(layout.root), **take_inventory(layout).to_json()}
    document["last_run"] = read_stats(layout)
    print(json.dumps(document, indent=1))
    return 0


def _prune(args: argparse.Namespace, layout: Layout) -> int:
    keep = None
    if args.keep is not None:
        if not args.keep.strip().isascii() or not args.keep.strip().isdigit():
            raise InputError("--keep", args.keep, "a whole number of tags, 0 or more")
        keep = int(args.keep)
    started_at = (read_stats(layout) or {}).get("started_at")
    if not isinstance(started_at, int | float) or isinstance(started_at, bool):
        started_at = None  # no (or an unreadable) last run: nothing is protected
    policy = PrunePolicy(
        ttl_seconds=parse_duration("--ttl", args.ttl),
        max_size_bytes=parse_size("--max-size", args.max_size),
        keep=keep,
        verify=Verify(args.verify),
        protect_since=started_at,  # what the last run (the build just served) used stays
        dry_run=args.dry_run,
    )
    with root_lock(layout, "prune"):
        report = prune(layout, policy)
    if args.json:
        print(json.dumps(report.to_json(), indent=1))
        return 0
    verb = "would remove" if report.dry_run else "removed"
    for item in report.tags_removed:
        print(f"{verb} {item['tag']} ({item['reason']})")
    print(
        f"{verb} {report.blobs_removed} blobs, {report.bytes_freed} bytes: "
        f"{report.bytes_before} → {report.bytes_after} bytes"
    )
    return 0


def health(ready_file: Path) -> int:
    """For HEALTHCHECK: the ready file names the address; /v2/ must answer 200."""
    import urllib.request  # here only: 20 ms (http.client, email) every other command skips

    try:
        address = json.loads(ready_file.read_text())["address"]
        with urllib.request.urlopen(f"http://{address}/v2/", timeout=4) as response:
            return 0 if response.status == 200 else 1
    except (OSError, ValueError, KeyError):
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("azure").setLevel(logging.WARNING)  # its INFO is every request's headers
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except CacheActionError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
