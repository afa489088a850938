"""Command line: `python -m cache_action serve|gc|prune|stats|restore|save|health ...`."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cache_action import __version__
from cache_action.errors import CacheActionError, InputError
from cache_action.registry import READY_FILE
from cache_action.runner import RunnerContext
from cache_action.scopes import EntryName, normalize_ref, validate_token
from cache_action.storage.access import read_stats
from cache_action.storage.gc import collect_garbage
from cache_action.storage.inventory import take_inventory
from cache_action.storage.layout import usable_root
from cache_action.storage.prune import PrunePolicy, Verify, prune
from cache_action.storage.root import Storage
from cache_action.stores.base import RestoreResult, SaveResult, StoreError
from cache_action.stores.factory import open_store, write_source_file
from cache_action.stores.spec import S3Options, parse_store
from cache_action.units import parse_duration, parse_size

ROOT_HELP = "the registry's directory (a cache root), created if missing"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cache_action", description=__doc__)
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(commands)

    gc_cmd = commands.add_parser("gc", help="delete what no tag reaches")
    gc_cmd.add_argument(
        "--root", type=Path, required=True, metavar="DIR", help=ROOT_HELP.split(",")[0]
    )
    gc_cmd.add_argument("--dry-run", action="store_true", help="report only, delete nothing")

    prune_cmd = commands.add_parser("prune", help="integrity, TTL, size budget, then gc")
    prune_cmd.add_argument(
        "--root", type=Path, required=True, metavar="DIR", help=ROOT_HELP.split(",")[0]
    )
    prune_cmd.add_argument(
        "--ttl",
        default="",
        metavar="DURATION",
        help="drop tags unused for this long, e.g. 7d (default: no TTL)",
    )
    prune_cmd.add_argument(
        "--max-size",
        default="",
        metavar="SIZE",
        help="size budget, e.g. 2GB or 500MiB (default: no budget)",
    )
    prune_cmd.add_argument(
        "--keep",
        metavar="N",
        help="at most N most recently used tags per repository (default: no limit)",
    )
    prune_cmd.add_argument(
        "--verify",
        choices=[v.value for v in Verify],
        default="size",
        help="size: drop tags whose blobs are missing or short; full: also re-hash every "
        "blob (default %(default)s)",
    )
    prune_cmd.add_argument("--dry-run", action="store_true", help="report only, change nothing")
    prune_cmd.add_argument("--json", action="store_true", help="print the report as JSON")

    health_cmd = commands.add_parser("health", help="exit 0 when the registry answers /v2/")
    health_cmd.add_argument(
        "--ready-file",
        type=Path,
        default=READY_FILE,
        help="the ready file serve wrote (default %(default)s)",
    )

    stats_cmd = commands.add_parser("stats", help="what the root holds and the last run's counters")
    stats_cmd.add_argument(
        "--root", type=Path, required=True, metavar="DIR", help=ROOT_HELP.split(",")[0]
    )

    for verb, text in (("restore", "restore entries into a root"), ("save", "save a root")):
        cmd = commands.add_parser(verb, help=text)
        cmd.add_argument("--root", type=Path, required=True, metavar="DIR", help=ROOT_HELP)
        cmd.add_argument("--store", required=True, help="local:///PATH, s3://BUCKET/PREFIX or gha")
        cmd.add_argument(
            "--namespace", default="buildkit", help="groups scopes (default %(default)s)"
        )
        cmd.add_argument("--ref", required=True, help="the git ref (main or refs/heads/main)")
        cmd.add_argument(
            "--strict", action="store_true", help="exit 2 when the store fails (default: warn)"
        )
        if verb == "restore":
            cmd.add_argument(
                "--scope", action="append", required=True, help="a scope; repeat to merge several"
            )
            cmd.add_argument(
                "--lazy-source",
                type=Path,
                metavar="FILE",
                help="restore only indexes, manifests and configs, and write FILE (mode 0600: "
                "it holds the store's credentials) for `serve --lazy-source FILE`, which fetches "
                "each other blob on its first use (default: restore everything now)",
            )
            cmd.add_argument(
                "--fallback-ref", action="append", default=[], help="tried in order after --ref"
            )
        else:
            cmd.add_argument("--scope", required=True, help="the scope to save")
            cmd.add_argument(
                "--force",
                action="store_true",
                help="save even when nothing changed since the restore (default: skip)",
            )
    return parser


def _serve_parser(commands: Any) -> None:
    """Defaults are None so that, without --root, the flags given override the service's
    variables; the help says what applies when neither is set."""
    serve_cmd = commands.add_parser(
        "serve",
        help="run the OCI registry over a cache root; without --root, run the standalone "
        "service configured by environment variables (BUILDKIT_CACHE_REPO, ...)",
    )
    serve_cmd.add_argument(
        "--root", type=Path, metavar="DIR", help=f"{ROOT_HELP} (default: the service, CACHE_ROOT)"
    )
    serve_cmd.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="HOST:PORT to listen on (default 127.0.0.1:5000; port 0 picks a free one); beyond "
        "loopback it needs --htpasswd or --insecure-no-auth",
    )
    serve_cmd.add_argument(
        "--htpasswd",
        metavar="FILE",
        help="read-write users: a bcrypt htpasswd file (htpasswd -nB USER)",
    )
    serve_cmd.add_argument(
        "--htpasswd-read-only", metavar="FILE", help="read-only users (pull only), the same format"
    )
    serve_cmd.add_argument(
        "--token-lifetime",
        metavar="DURATION",
        help="how long the bearer tokens of /token last (default 5m)",
    )
    serve_cmd.add_argument(
        "--tls-cert", metavar="PEM", help="serve HTTPS: the PEM certificate chain"
    )
    serve_cmd.add_argument("--tls-key", metavar="PEM", help="the PEM private key of --tls-cert")
    serve_cmd.add_argument(
        "--insecure-no-auth",
        action="store_true",
        default=None,
        help="serve anyone who can connect to a non-loopback --listen, without credentials",
    )
    serve_cmd.add_argument(
        "--ready-file",
        metavar="FILE",
        help="a JSON file (address, url) written once it listens, removed at exit (default: "
        f"none; the service in its image: {READY_FILE})",
    )
    serve_cmd.add_argument(
        "--log-requests", action="store_true", default=None, help="log every request"
    )
    serve_cmd.add_argument(
        "--lazy-source",
        metavar="FILE",
        help="after a lazy restore: where to fetch the blobs it left in the store (the file "
        "`restore --lazy-source` wrote; read once, then deleted)",
    )


def _transfer(args: argparse.Namespace) -> int:
    """restore/save: store failures warn and leave a cold cache unless --strict; bad
    settings, the root's included, are usage errors."""
    namespace = validate_token("--namespace", args.namespace)
    ref = normalize_ref("--ref", args.ref)
    spec = parse_store("--store", args.store, S3Options.from_env(os.environ))
    runner = RunnerContext.from_env(os.environ)
    store = open_store(spec, runner)
    storage = Storage.open(usable_root("--root", args.root).root)
    try:
        if args.command == "restore":
            scopes = [validate_token("--scope", s) for s in args.scope]
            refs = [ref, *(normalize_ref("--fallback-ref", r) for r in args.fallback_ref)]
            chains = [[EntryName(namespace, s, r) for r in dict.fromkeys(refs)] for s in scopes]
            lazy = args.lazy_source is not None
            result: RestoreResult | SaveResult = store.restore(storage, chains, lazy=lazy)
            if lazy:
                write_source_file(args.lazy_source, spec, runner)
        else:
            name = EntryName(namespace, validate_token("--scope", args.scope), ref)
            result = store.save(storage, name, force=args.force)
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
    if args.command == "serve":
        return _serve(args)
    storage = Storage.open(usable_root("--root", args.root, create=False).root)
    if args.command == "gc":
        report = collect_garbage(storage, dry_run=args.dry_run)
        print(json.dumps(report.to_json(), indent=1))
        return 0
    if args.command == "prune":
        return _prune(args, storage)
    document = {"root": str(storage.layout.root), **take_inventory(storage).to_json()}
    document["last_run"] = read_stats(storage.layout)
    print(json.dumps(document, indent=1))
    return 0


def _serve(args: argparse.Namespace) -> int:
    """aiohttp is imported only here: the other commands start faster."""
    import asyncio

    from cache_action.registry.server import serve
    from cache_action.registry.settings import FLAGS, parse_serve_settings
    from cache_action.service import run_service

    given = {key: _flag_text(getattr(args, key)) for key in FLAGS}
    if args.root is None:
        return run_service(os.environ, given)
    asyncio.run(serve(parse_serve_settings(given, FLAGS)))
    return 0


def _flag_text(value: object) -> str:
    """A flag's value as the settings parser takes it: '' for unset, 'true' for a switch."""
    if value is None or value is False:
        return ""
    return "true" if value is True else str(value)


def _prune(args: argparse.Namespace, storage: Storage) -> int:
    keep = None
    if args.keep is not None:
        if not args.keep.strip().isascii() or not args.keep.strip().isdigit():
            raise InputError("--keep", args.keep, "a whole number of tags, 0 or more")
        keep = int(args.keep)
    started_at = (read_stats(storage.layout) or {}).get("started_at")
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
    report = prune(storage, policy)
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
    """For HEALTHCHECK: the ready file names the registry; /v2/ must answer as a registry does
    (200, or 401 when it asks for credentials). Says why when it does not."""
    import ssl  # here only: every 5 s in the image, and the other commands never need them
    import urllib.error
    import urllib.request

    try:
        document = json.loads(ready_file.read_text())
        url = str(document.get("url") or f"http://{document['address']}")
    except FileNotFoundError:
        print(f"unhealthy: no ready file at {ready_file}: the registry is not listening (yet)")
        return 1
    except (OSError, ValueError, KeyError, AttributeError) as error:
        print(f"unhealthy: the ready file {ready_file} is unreadable: {error}")
        return 1
    if not url.startswith(("http://", "https://")):
        print(f"unhealthy: the ready file {ready_file} names {url!r}, not an http(s) URL")
        return 1
    # A probe of its own registry, whose certificate may name a public host, not the loopback
    # address probed here: verifying it would prove nothing and fail for no reason.
    context = ssl._create_unverified_context()  # noqa: S323
    try:
        probe = f"{url}/v2/"  # http(s), checked above
        with urllib.request.urlopen(probe, timeout=4, context=context) as response:  # noqa: S310
            status, headers = response.status, response.headers
    except urllib.error.HTTPError as error:
        status, headers = error.code, error.headers
    except OSError as error:
        print(f"unhealthy: {url}/v2/ does not answer: {error}")
        return 1
    if status in (200, 401) and headers.get("Docker-Distribution-API-Version"):
        return 0
    print(f"unhealthy: {url}/v2/ answered {status}, not as a registry")
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
    except OSError as error:  # a file the user's system refuses us, named by the OS
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
