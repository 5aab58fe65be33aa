"""Validation throughput against bare lxml, measured in the same run.

For a ~20 KB PLO message and a ~4 KB Dialogmelding from sample_messages/, it measures komut's
full validation (hardened parse, recognition, XSD, reading the model, business rules) and bare
lxml (parse + validate with the same compiled schema), alternating rounds so that both see the
same machine state, and prints validations per second and the ratio.

    python bench/validate.py [--seconds 2] [--rounds 5] [--json]
    python bench/validate.py --instructions     # needs valgrind (apt install valgrind)

Wall-clock rates on a shared VM move by 10-30% between runs. `--instructions` counts the machine
instructions per validation and the instruction-cache and data-cache misses with valgrind's
cachegrind, which is deterministic: it shows how much more work komut does than bare lxml, and how
much of the wall-clock gap comes from the caches rather than from the instruction count.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gateway.schemas import load_schema_set  # noqa: E402
from gateway.validation import Validator  # noqa: E402

SAMPLES = REPO / "sample_messages"


def pick(family_dir: str, target: int) -> Path:
    manifest = tomllib.loads((SAMPLES / "manifest.toml").read_text(encoding="utf-8"))["message"]
    files = [
        SAMPLES / m["file"] for m in manifest if m["expect"] == "valid" and m["file"].startswith(family_dir)
    ]
    return min(files, key=lambda p: abs(p.stat().st_size - target))


def rate(fn, data: bytes, seconds: float) -> float:
    count = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while True:
        for _ in range(50):
            fn(data)
        count += 50
        now = time.perf_counter()
        if now >= deadline:
            return count / (now - started)


def contenders() -> tuple:
    schemas = load_schema_set()
    validator = Validator(schemas)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    schema = schemas.schema

    def bare(data: bytes) -> bool:
        return schema.validate(etree.fromstring(data, parser))

    def ours(data: bytes) -> bool:
        return validator.validate(data).valid

    return ours, bare


def messages() -> list[tuple[str, Path]]:
    return [("PLO ~20 KB", pick("valid/plo", 20_000)), ("Dialogmelding ~4 KB", pick("valid/dialog", 4_000))]


_CACHEGRIND = {
    "instructions": r"I\s+refs:\s+([\d,]+)",
    "i1_misses": r"I1\s+misses:\s+([\d,]+)",
    "d1_misses": r"D1\s+misses:\s+([\d,]+)",
    "ll_misses": r"LL misses:\s+([\d,]+)",
}


def _cachegrind(which: str, path: Path, count: int) -> dict[str, int]:
    run = subprocess.run(
        ["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--cachegrind-out-file=/dev/null"]
        + [sys.executable, __file__, "--loop", which, str(path), str(count)],
        capture_output=True,
        text=True,
        check=True,
    )
    return {k: int(re.search(p, run.stderr).group(1).replace(",", "")) for k, p in _CACHEGRIND.items()}


def instructions(args) -> int:
    """Per validation: the difference of two runs (start-up and warm-up cancel out)."""
    if shutil.which("valgrind") is None:
        print("--instructions needs valgrind: apt-get install valgrind", file=sys.stderr)
        return 2
    small, large = 200, 200 + args.count
    results = []
    for label, path in messages():
        row = {"message": label, "file": str(path.relative_to(REPO)), "bytes": path.stat().st_size}
        for which in ("ours", "bare"):
            a, b = _cachegrind(which, path, small), _cachegrind(which, path, large)
            row[which] = {k: round((b[k] - a[k]) / args.count) for k in a}
        row["instruction_ratio"] = round(row["bare"]["instructions"] / row["ours"]["instructions"], 3)
        results.append(row)
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"{'message':<22}{'':>6}{'instructions':>14}{'I1 misses':>11}{'D1 misses':>11}{'LL misses':>11}")
    for r in results:
        for which in ("ours", "bare"):
            c = r[which]
            print(
                f"{r['message'] if which == 'ours' else '':<22}{which:>6}{c['instructions']:>14,}"
                f"{c['i1_misses']:>11,}{c['d1_misses']:>11,}{c['ll_misses']:>11,}"
            )
        print(f"{'':<22}{'ratio':>6}{r['instruction_ratio']:>14.1%}  (bare lxml instructions / komut's)")
    print("(per validation, valgrind cachegrind's simulated caches; deterministic, unlike the wall clock)")
    return 0


def loop(which: str, path: str, count: int) -> int:
    ours, bare = contenders()
    fn = ours if which == "ours" else bare
    data = Path(path).read_bytes()
    for _ in range(200):
        fn(data)
    for _ in range(count):
        fn(data)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    ap.add_argument(
        "--instructions", action="store_true", help="count instructions and cache misses (valgrind)"
    )
    ap.add_argument("--count", type=int, default=1000, help="validations counted with --instructions")
    ap.add_argument("--loop", nargs=3, metavar=("WHICH", "FILE", "N"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loop:
        return loop(args.loop[0], args.loop[1], int(args.loop[2]))
    if args.instructions:
        return instructions(args)

    ours, bare = contenders()
    results = []
    for label, path in messages():
        data = path.read_bytes()
        assert ours(data) and bare(data), f"{path} must be valid for the benchmark"
        komut_rates, lxml_rates = [], []
        for _ in range(args.rounds):
            lxml_rates.append(rate(bare, data, args.seconds))
            komut_rates.append(rate(ours, data, args.seconds))
        k, b = statistics.median(komut_rates), statistics.median(lxml_rates)
        results.append(
            {
                "message": label,
                "file": str(path.relative_to(REPO)),
                "bytes": len(data),
                "komut_per_s": round(k),
                "bare_lxml_per_s": round(b),
                "ratio": round(k / b, 3),
            }
        )
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'message':<22}{'bytes':>8}{'komut/s':>10}{'bare lxml/s':>13}{'ratio':>8}")
        for r in results:
            print(
                f"{r['message']:<22}{r['bytes']:>8}{r['komut_per_s']:>10}{r['bare_lxml_per_s']:>13}"
                f"{r['ratio']:>8.1%}"
            )
        print(
            "(medians of alternating rounds, one core; ratio = komut full validation / bare lxml parse+validate)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
