"""`komut conformance`: every message through the whole pipeline in a sandbox, against its manifest."""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE_ERROR = 2


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "conformance",
        help="run messages through validate, route, protect, unprotect and AppRec in a sandbox; exit 1 on any mismatch",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders searched for *.xml")
    p.add_argument("--schema-dir", action="append", default=[], metavar="DIR")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument(
        "--pki-dir", metavar="DIR", help="where the sandbox PKI is kept (default: the user's cache)"
    )
    p.set_defaults(func=cmd_conformance)


def cmd_conformance(args) -> int:
    from gateway.conformance import Sandbox, files_of, load_manifests

    try:
        files = files_of(args.paths)
    except FileNotFoundError as exc:
        print(f"komut conformance: no such file or folder: {exc}", file=sys.stderr)
        return USAGE_ERROR
    try:
        sandbox = Sandbox(tuple(args.schema_dir), Path(args.pki_dir) if args.pki_dir else None)
    except FileNotFoundError as exc:
        print(f"komut conformance: {exc}", file=sys.stderr)
        return USAGE_ERROR
    expected = load_manifests([Path(p) for p in args.paths])
    rows = [sandbox.run(path, expected.get(path.resolve())) for path in files]
    if args.json:
        for row in rows:
            print(json.dumps(row.to_dict(), ensure_ascii=False))
    else:
        _table(rows)
    failed = [r for r in rows if r.mismatch]
    print(
        f"{len(rows) - len(failed)} passed, {len(failed)} failed",
        file=sys.stderr if args.json else sys.stdout,
    )
    return 1 if failed else 0


def _table(rows) -> None:
    headers = ("file", "type", "expected", "actual", "AppRec it would send", "")
    cells = [
        (
            Path(r.path).name,
            r.type or "-",
            r.expected or "-",
            r.actual,
            r.apprec,
            "MISMATCH: " + r.mismatch if r.mismatch else "ok",
        )
        for r in rows
    ]
    widths = [min(48, max(len(h), *(len(c[i]) for c in cells))) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    for c in cells:
        print("  ".join(v[:w].ljust(w) for v, w in zip(c, widths, strict=True)))
