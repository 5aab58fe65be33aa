"""Our own schemas (xsd/) and the official published ones agree on every document we can throw
at them.

Seeds are the valid sample messages. From each seed, tests/mutants.py makes deterministic mutants
(element dropped, duplicated, moved, wrong type, unknown element), inside the MsgHead envelope and
inside the payloads. Every mutant is validated twice: by komut's schema set compiled from
xsd/catalog.toml (gateway.schemas), and by the official schemas via ../shared/reference/oracle.py.
The verdicts (accept / reject) must agree for 100% of the mutants.

Run with ``pytest -s tests/test_schema_agreement.py`` to see the agreement figure.
"""

from __future__ import annotations

import importlib
import random
import sys
import tomllib
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from lxml import etree
from mutants import Mutant, mutants

REPO = Path(__file__).resolve().parent.parent
SEED_DIR = REPO / "sample_messages" / "valid"
REFERENCE = REPO.parent / "shared" / "reference"
CATALOG = REPO / "xsd" / "catalog.toml"

MUTANTS_PER_PART = 30
MIN_TOTAL = 500
MIN_PER_NAMESPACE = 20

# Namespaces that only supply parts to the message schemas: no document or payload has its root
# element in one of them, so they get mutants only through the messages that use them.
COMPONENT_NAMESPACES = {
    "http://www.w3.org/2000/09/xmldsig#",
    "http://www.kith.no/xmlstds",
    "http://www.kith.no/xmlstds/felleskomponent1",
    "http://www.kith.no/xmlstds/epj/meta/2008-02-20",
    "http://www.kith.no/xmlstds/epj/epj1/2008-02-20",
    "http://www.kith.no/xmlstds/epj/epj2/2008-02-20",
    "http://www.kith.no/xmlstds/epj/epj3/2008-02-20",
    "http://www.kith.no/xmlstds/po/poKomponent/2012-04-01",
}

PARSER = etree.XMLParser(resolve_entities=False, no_network=True, remove_blank_text=False)


def _titles() -> dict[str, str]:
    entries = tomllib.loads(CATALOG.read_text(encoding="utf-8"))["schema"]
    return {e["namespace"]: e.get("title", e["namespace"]) for e in entries}


def _seeds() -> list[Path]:
    return sorted(SEED_DIR.rglob("*.xml"))


# ------------------------------------------------------------------ the two validators


class Ours:
    """komut's schema set, built the way the gateway builds it."""

    def __init__(self):
        from gateway.schemas import load_schema_set

        self.schema_set = load_schema_set()

    def errors(self, doc: etree._ElementTree) -> list[str]:
        return [str(e) for e in self.schema_set.xsd_errors(doc)]


class Official:
    def __init__(self):
        if not (REFERENCE / "oracle.py").is_file():
            pytest.skip(
                "official schemas not found: ../shared/reference "
                "(the shared reference data beside the checkout)"
            )
        sys.path.insert(0, str(REFERENCE))
        try:
            oracle = importlib.import_module("oracle")
        finally:
            sys.path.remove(str(REFERENCE))
        self.schema = oracle.build()

    def errors(self, doc: etree._ElementTree) -> list[str]:
        if self.schema.validate(doc):
            return []
        return [str(e) for e in self.schema.error_log]


@pytest.fixture(scope="module")
def official() -> Official:
    return Official()


@pytest.fixture(scope="module")
def ours() -> Ours:
    return Ours()


@pytest.fixture(scope="module")
def seeds() -> list[Path]:
    found = _seeds()
    if not found:
        pytest.fail(f"no seed messages: {SEED_DIR.relative_to(REPO)} has no *.xml files")
    return found


# ------------------------------------------------------------------ tests


def test_every_seed_is_accepted_by_both(seeds, ours, official):
    problems = []
    for path in seeds:
        doc = etree.parse(str(path), PARSER)
        for name, side in (("ours", ours), ("official", official)):
            errs = side.errors(doc)
            if errs:
                problems.append(f"{path.relative_to(REPO)} rejected by {name}: {errs[0]}")
    assert not problems, "\n".join(problems)


def _mutants_of(path: Path) -> list[Mutant]:
    # Seeded per file, so adding a sample does not change the mutants of the others.
    rng = random.Random(zlib.crc32(path.relative_to(SEED_DIR).as_posix().encode()))
    return mutants(etree.parse(str(path), PARSER), rng, MUTANTS_PER_PART)


def test_mutants_get_the_same_verdict(seeds, ours, official):
    titles = _titles()
    total = agreed = rejected = 0
    by_part: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # namespace -> [agreed, total]
    by_element: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    kinds: Counter[str] = Counter()
    disagreements = []

    for path in seeds:
        for m in _mutants_of(path):
            doc = etree.fromstring(m.xml, PARSER).getroottree()
            our_errors = ours.errors(doc)
            official_errors = official.errors(doc)
            same = bool(our_errors) == bool(official_errors)
            total += 1
            agreed += same
            rejected += bool(official_errors)
            for table, ns in ((by_part, m.part), (by_element, m.element_ns)):
                table[ns][0] += same
                table[ns][1] += 1
            kinds[m.kind] += 1
            if not same:
                disagreements.append(
                    f"{path.relative_to(REPO)}: {m.describe()}\n"
                    f"    ours:     {'REJECT ' + our_errors[0] if our_errors else 'accept'}\n"
                    f"    official: {'REJECT ' + official_errors[0] if official_errors else 'accept'}"
                )

    def name(ns: str) -> str:
        return titles.get(ns, ns or "(no namespace)")

    def breakdown(table: dict[str, list[int]]) -> str:
        rows = sorted(table.items(), key=lambda item: name(item[0]))
        return "".join(f"\n    {name(ns)}: {a}/{t}" for ns, (a, t) in rows)

    pct = 100.0 * agreed / total if total else 0.0
    print(
        f"\nschema agreement: {agreed}/{total} mutants ({pct:.2f}%), per namespace:{breakdown(by_part)}"
        f"\n  by namespace of the mutated element:{breakdown(by_element)}"
        f"\n  mutants by kind: {dict(sorted(kinds.items()))}"
        f"\n  verdicts: {rejected} rejected and {total - rejected} accepted by the official schemas;"
        f" {len(seeds)} seeds"
    )
    unseeded = sorted(name(ns) for ns in titles if ns not in by_part and ns not in COMPONENT_NAMESPACES)
    if unseeded:
        print("  no seed has a document in: " + ", ".join(unseeded))
    for d in disagreements:
        print("DISAGREEMENT " + d)

    assert total >= MIN_TOTAL, f"only {total} mutants; need at least {MIN_TOTAL}"
    thin = {name(ns): t for ns, (_, t) in by_part.items() if t < MIN_PER_NAMESPACE}
    assert not thin, f"namespaces with fewer than {MIN_PER_NAMESPACE} mutants: {thin}"
    assert 0 < rejected < total, "mutants should include both valid and invalid documents"
    assert not disagreements, f"{len(disagreements)} of {total} mutants get different verdicts"
