"""Validation throughput against bare lxml, measured in the same run.

For a ~20 KB PLO message and a ~4 KB Dialogmelding from sample_messages/, it measures komut's
full validation (hardened parse, recognition, XSD, reading the model, business rules) and bare
lxml (parse + validate with the same compiled schema), alternating rounds so that both see the
same machine state, and prints validations per second and the ratio.

    python bench/validate.py [--seconds 2] [--rounds 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    schemas = load_schema_set()
    validator = Validator(schemas)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    schema = schemas.schema

    def bare(data: bytes) -> bool:
        return schema.validate(etree.fromstring(data, parser))

    def ours(data: bytes) -> bool:
        return validator.validate(data).valid

    results = []
    for label, path in (
        ("PLO ~20 KB", pick("valid/plo", 20_000)),
        ("Dialogmelding ~4 KB", pick("valid/dialog", 4_000)),
    ):
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
