"""The embedded default network follows docs/demo-network.md exactly."""

from __future__ import annotations

import argparse
import io
import json
import re
from pathlib import Path

import pytest
from stdnum.no import orgnr

from gateway.commands import registry as registry_command
from gateway.registry import (
    Category,
    PartyKind,
    Transport,
    default_certificate_holders,
    load_default_registry,
)

REPO = Path(__file__).resolve().parent.parent

MUNICIPALITIES = [
    "Asker", "Bærum", "Drammen", "Gol", "Flesberg", "Flå", "Hemsedal", "Hol", "Hole", "Hurum",
    "Jevnaker", "Kongsberg", "Krødsherad", "Lier", "Modum", "Nedre Eiker", "Nes", "Nore og Uvdal",
    "Ringerike", "Rollag", "Røyken", "Sande", "Sigdal", "Svelvik", "Øvre Eiker", "Ål",
]  # fmt: skip
AREAS = {
    1: ("Asker og Bærum", {"Asker", "Bærum"}),
    2: ("Drammen", {"Drammen", "Lier", "Nedre Eiker", "Svelvik", "Sande", "Røyken", "Hurum"}),
    3: ("Kongsberg", {"Kongsberg", "Flesberg", "Rollag", "Nore og Uvdal", "Øvre Eiker"}),
    4: ("Ringerike", {"Ringerike", "Hole", "Jevnaker", "Modum", "Krødsherad", "Sigdal"}),
    5: ("Hallingdal", {"Flå", "Nes", "Gol", "Hemsedal", "Ål", "Hol"}),
}
SITES = [
    "Bærum sykehus",
    "Drammen sykehus",
    "Kongsberg sykehus",
    "Ringerike sykehus",
    "Hallingdal sjukestugu",
]
MUNICIPAL_SERVICES = [
    "Sykepleietjeneste, pleie og omsorg",
    "Legetjeneste, pleie og omsorg",
    "Saksbehandler, pleie, omsorg, rehab",
]


@pytest.fixture(scope="module")
def reg():
    return load_default_registry()


def test_hospital_trust_and_sites(reg):
    trust = reg.get(9100000)
    assert (trust.name, trust.kind, trust.parent, trust.category) == (
        "Vestre Viken HF",
        PartyKind.ORGANISATION,
        None,
        Category.HOSPITAL_TRUST,
    )
    assert [p.name for p in reg.children(9100000)] == SITES
    for s, site in enumerate(SITES, start=1):
        her = 9100000 + s * 100
        assert reg.get(her).name == site
        assert reg.area_of(her).number == s  # each site serves the area with its number
        services = reg.children(her)
        assert [(p.her_id, p.name, p.kind) for p in services] == [
            (her + 1, "Somatikk plo meldingsmottak", PartyKind.SERVICE),
            (her + 2, "Psykiatri plo meldingsmottak", PartyKind.SERVICE),
        ]


def test_municipalities_services_and_areas(reg):
    municipalities = reg.by_category(Category.MUNICIPALITY)
    assert [p.name for p in municipalities] == [f"{m} kommune" for m in MUNICIPALITIES]
    for mm, name in enumerate(MUNICIPALITIES, start=1):
        her = 9200000 + mm * 1000
        party = reg.get(her)
        assert party.name == f"{name} kommune" and party.parent is None
        assert [(p.her_id, p.name, p.kind) for p in reg.children(her)] == [
            (her + i, service, PartyKind.SERVICE) for i, service in enumerate(MUNICIPAL_SERVICES, start=1)
        ]
        area = reg.area_of(her)
        assert name in AREAS[area.number][1]
        assert area.name == AREAS[area.number][0]
        for service in reg.children(her):
            assert reg.area_of(service.her_id) == area
            assert reg.municipality_of(service.her_id) == party


def test_gp_offices_in_every_area(reg):
    offices = reg.by_category(Category.GP_OFFICE)
    for a in AREAS:
        in_area = [o for o in offices if reg.area_of(o.her_id).number == a]
        assert len(in_area) >= 2, f"area {a}"
        for office in in_area:
            # 93A0B00: A is the area the office's municipality belongs to.
            assert re.fullmatch(rf"93{a}0[1-9]00", str(office.her_id))
            assert reg.municipality_of(office.her_id).category is Category.MUNICIPALITY
            gps = reg.children(office.her_id)
            assert 2 <= len(gps) <= 3
            assert [g.her_id for g in gps] == [office.her_id + i for i in range(1, len(gps) + 1)]
            assert all(g.kind is PartyKind.PERSON for g in gps)


def test_parties_the_sample_messages_use(reg):
    # The table at the end of docs/demo-network.md, verbatim.
    table = (
        (REPO / "docs" / "demo-network.md").read_text("utf-8").split("## Parties the sample messages use")[1]
    )
    rows = dict(re.findall(r"^\| (\d{7}) \| (.+?) \|$", table, re.M))
    assert len(rows) == 9
    assert rows["9100000"] == reg.display_name(9100000)
    for her in ("9100200", "9100201", "9203000", "9203001", "9203002", "9203003"):
        assert rows[her] == reg.display_name(int(her))
    assert rows["9320100"].startswith(reg.get(9320100).name + " (GP office, Drammen area)")
    assert reg.area_of(9320100).name == "Drammen"
    assert rows["9320101"] == f"Fastlege {reg.get(9320101).name} at {reg.get(9320100).name}"


def test_organisation_numbers_are_fictional_and_valid(reg):
    numbers = [p.org_no for p in reg if p.org_no]
    assert len(numbers) == len(set(numbers))
    for number in numbers:
        assert orgnr.is_valid(number)
        # Real organisation numbers start with 8 or 9; ours never do.
        assert number[0] in "12"


def test_default_certificate_holders(reg):
    holders = default_certificate_holders()
    assert len(holders) == 1 + 26 + len(reg.by_category(Category.GP_OFFICE))
    assert [h[0] for h in holders] == [p.her_id for p in reg if p.parent is None]
    for her_id, name, org_no in holders:
        assert reg.get(her_id).name == name and reg.org_no(her_id) == org_no
        assert reg.certificate_holder(her_id).her_id == her_id
    # Services and persons use their level-1 ancestor's certificates.
    assert reg.certificate_holder(9100201).her_id == 9100000
    assert reg.certificate_holder(9320101).her_id == 9320100
    assert reg.certificates(9203003).enc.path == Path("parties/9203000/enc.pem")


def test_endpoints_two_gateways(reg):
    for party in reg:
        endpoint = reg.endpoint(party.her_id)
        assert endpoint is not None and endpoint.transport is Transport.HTTPS
        expected = "hospital" if reg.level1(party.her_id).her_id == 9100000 else "municipal"
        assert endpoint.gateway == expected, party


def test_accepted_messages_follow_the_plo_flows(reg):
    hospital, municipal, gp = 9100201, 9203001, 9320101
    assert reg.accepts(hospital, "INNLEGGELSESRAPPORT", "1.6")
    assert reg.accepts(hospital, "DIALOG_FORESPORSEL", "1.1")
    assert reg.accepts(hospital, "APPREC", "1.0")
    assert not reg.accepts(hospital, "LOG_INNLAGT")
    for msg_type in ("LOG_INNLAGT", "HELSEOPPL_SOKNAD", "LOG_UTSKRIVNINGSKLAR", "UTSKRIVNINGSRAPPORT"):
        assert reg.accepts(municipal, msg_type, "1.6")
    assert reg.accepts(municipal, "MEDISINSKE_OPPLYSNINGER", "1.6")
    assert not reg.accepts(municipal, "INNLEGGELSESRAPPORT")
    assert not reg.accepts(municipal, "LOG_INNLAGT", "1.5")
    for msg_type in ("HELSEOPPLYSNINGER_LEGE", "ORIENTERING_TJENESTETILBUD", "LOG_DOD"):
        assert reg.accepts(gp, msg_type, "1.6")
    assert reg.accepts(gp, "EPIKRISE", "1.2")
    assert reg.accepts(gp, "DIALOG_HELSEFAGLIG", "1.1") and not reg.accepts(gp, "DIALOG_HELSEFAGLIG", "1.0")
    assert not reg.accepts(gp, "LOG_INNLAGT")


def test_message_types_are_kodeverk_8279_codes(reg):
    codes = pytest.importorskip("message_types.codes")
    for party in reg:
        for msg_type, _ in party.accepts.pairs if party.accepts else ():
            assert msg_type in codes.MESSAGE_FUNCTION, msg_type


def test_list_json_shows_the_whole_network():
    parser = argparse.ArgumentParser()
    registry_command.register(parser.add_subparsers())
    args = parser.parse_args(["registry", "list", "--json"])
    out = io.StringIO()
    assert args.func(args, out=out) == 0
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    by_id = {r["her_id"]: r for r in rows}
    for row in rows:
        assert {"her_id", "name", "kind", "parent"} <= set(row)
    assert by_id[9100000]["name"] == "Vestre Viken HF"
    assert [r["name"] for r in rows if r["parent"] == 9100000] == SITES
    municipalities = [r for r in rows if r["category"] == "municipality"]
    assert len(municipalities) == 26
    for m in municipalities:
        assert len([r for r in rows if r["parent"] == m["her_id"] and r["kind"] == "service"]) == 3
    areas = {r["area"] for r in rows if r["category"] == "gp-office"}
    assert areas == {"asker-baerum", "drammen", "kongsberg", "ringerike", "hallingdal"}
    assert by_id[9320101]["municipality"] == "Drammen kommune"
    assert by_id[9203001]["endpoint"] == {"transport": "https", "gateway": "municipal"}
