"""`c3d weights list|get|verify`: the registry of public C3D weight files and the local cache."""

from __future__ import annotations

import argparse
import json

HELP = "pretrained weights by name: list the registry, download into the cache, verify files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = sub.add_parser("list", help="the registry: names, reported accuracy, cache state")
    listing.add_argument("--json", action="store_true", help="print the entries as JSON")
    get = sub.add_parser("get", help="download NAME into the cache (verified) and print its path")
    get.add_argument("name", metavar="NAME")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    check = sub.add_parser("verify", help="check NAME, PATH, or every cached file against its recorded SHA-256")
    check.add_argument("target", metavar="NAME|PATH", nargs="?")
    check.add_argument("--json", action="store_true", help="print one JSON object per file")


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "get": _get, "verify": _verify}[args.action](args)


def _list(args: argparse.Namespace) -> int:
    from c3dnet.weights.download import cache_dir
    from c3dnet.weights.registry import entries

    rows = []
    for entry in entries():
        path = cache_dir() / entry.file_name
        rows.append({**entry.to_dict(), "cached": str(path) if path.is_file() else None})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    for row in rows:
        where = row["cached"] or ("not cached" if row["url"] else "manual download")
        print(f"{row['name']:<26} {row['accuracy'] or '-'}")
        print(f"{'':<26} {row['architecture']}; {row['format']}; sha256 {row['sha256_prefix'] or 'not published'}; "
              f"{where}")
    print(f"cache: {cache_dir()}")
    return 0


def _get(args: argparse.Namespace) -> int:
    from c3dnet.weights.download import fetch

    print(fetch(args.name, progress=not args.no_progress))
    return 0


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from c3dnet.errors import WeightsError
    from c3dnet.weights.download import cache_dir, cached_files, check_digest, recorded_digest, sha256_of
    from c3dnet.weights.registry import by_file_name, find

    if args.target is None:
        paths = cached_files()
        if not paths:
            print(f"no weight files in {cache_dir()}")
            return 0
    elif Path(args.target).exists():
        paths = [Path(args.target)]
    else:
        paths = [cache_dir() / find(args.target).file_name]  # an unknown name raises, naming the close ones
        if not paths[0].is_file():
            raise WeightsError(f"{args.target}: not in the cache ({paths[0]}); `c3d weights get {args.target}` "
                               f"downloads it")
    failed = 0
    for path in paths:
        entry = by_file_name(path.name)
        digest = sha256_of(path)
        # A file outside the cache is compared with the cache's record of the same file, else the published prefix.
        record_of = cache_dir() / path.name
        expected = recorded_digest(record_of) or (entry.sha256_prefix if entry else None)
        try:
            check_digest(entry, record_of, digest)
            status = "ok" if expected else "unverified (no published or recorded digest)"
        except WeightsError as e:
            status, failed = f"MISMATCH: {e}", failed + 1
        row = {"path": str(path), "name": entry.name if entry else None, "sha256": digest, "expected": expected,
               "status": status}
        if args.json:
            print(json.dumps(row))
        else:
            print(f"{path}: {status} (sha256 {digest}{', ' + entry.name if entry else ', no registry entry'})")
    return 1 if failed else 0
