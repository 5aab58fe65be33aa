"""The router over the embedded demo network: service-level routing, local vs peer, copy
receivers, capability refusals (T10) and unknown or unreachable receivers (E21)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from gateway.config import parse_config
from gateway.registry import Cipher, load_default_registry, parse_registry
from gateway.routing import PEER_TRANSPORTS, LocalEndpoint, Router, build_router, local_endpoints
from message_types.codes import ErrorCode
from message_types.kinds import DIALOG_10_NS, DIALOG_11_NS
from message_types.model import Address, CopyReceiver, Ident, LevelKind, PartyLevel
from message_types.msghead import build_msghead
from message_types.read import read_message

HOSPITAL_URL = "https://127.0.0.1:8080/peer/v1/messages"
MUNICIPAL_URL = "https://127.0.0.1:8081/peer/v1/messages"
URLS = {"hospital": HOSPITAL_URL, "municipal": MUNICIPAL_URL}

PLO = "http://www.kith.no/xmlstds/po/"
PAYLOADS = {
    # The router needs only the business document's namespace (its version); no full content.
    "LOG_INNLAGT": (f"{PLO}Pasientlogistikk/2012-04-01", "Pasientlogistikk"),
    "INNLEGGELSESRAPPORT": (f"{PLO}Innleggelsesrapport/2012-04-01", "Innleggelsesrapport"),
    "HELSEOPPLYSNINGER_LEGE": (f"{PLO}HelseopplysningerTilLege/2012-04-01", "Konsultasjon"),
}

HOSPITAL_SERVICE = 9100201  # Drammen sykehus, Somatikk plo meldingsmottak
NURSING = 9203001  # Drammen kommune, Sykepleietjeneste, pleie og omsorg
CASE_OFFICERS = 9203003
GP = 9320101  # Ola Fjellheim at Bragernes legesenter (9320100)


@pytest.fixture(scope="module")
def registry():
    return load_default_registry()


def address(registry, her: int) -> Address:
    """The address chain a sender writes for `her`: its organisation down to the party itself."""
    levels = []
    for party in reversed(registry.lineage(her)):
        kind = LevelKind.ORGANISATION if not levels else LevelKind(str(party.kind))
        levels.append(PartyLevel(party.name, kind, (Ident(str(party.her_id), "HER"),)))
    return Address(tuple(levels))


def message(registry, msg_type, to, *, sender=HOSPITAL_SERVICE, copies=(), payload=None, raw_to=None):
    if payload is None:
        ns, root = PAYLOADS.get(msg_type, (DIALOG_11_NS, "Dialogmelding"))
        payload = etree.Element(f"{{{ns}}}{root}")
    data = build_msghead(
        msg_type=msg_type,
        sender=address(registry, sender),
        receiver=raw_to or address(registry, to),
        payload=payload,
        copies=[CopyReceiver(role, address(registry, her)) for role, her in copies],
    )
    return read_message(etree.fromstring(data))


def demo_router(registry, gateway: str, **kwargs) -> Router:
    local = {
        p.her_id: LocalEndpoint(f"{p.name} system", "folder", f"systems/{p.her_id}/in")
        for p in registry
        if p.parent is None and p.endpoint and p.endpoint.gateway == gateway
    }
    options = {"gateway_urls": URLS, "local_systems": local} | kwargs
    return Router(registry, gateway_name=gateway, **options)


# --- service-level routing ---------------------------------------------------------------------------


def test_service_routes_through_its_municipality(registry):
    decision = demo_router(registry, "hospital").route(message(registry, "LOG_INNLAGT", NURSING))
    assert decision.ok, decision.explain()
    [route] = decision.routes
    assert (route.receiver_her, route.role, route.transport, route.endpoint, route.local, route.gateway) == (
        NURSING,
        "PRIM",
        "https",
        MUNICIPAL_URL,
        False,
        "municipal",
    )
    assert any("Drammen kommune (9203000)" in why for why in route.why)
    assert route.protection is not None
    assert (route.protection.name, route.protection.send_cipher) == ("standard", Cipher.AES256)


def test_hospital_service_routes_through_the_trust(registry):
    decision = demo_router(registry, "municipal").route(
        message(registry, "INNLEGGELSESRAPPORT", HOSPITAL_SERVICE, sender=NURSING)
    )
    assert decision.ok, decision.explain()
    [route] = decision.routes
    assert (route.receiver_her, route.endpoint, route.gateway, route.local) == (
        HOSPITAL_SERVICE,
        HOSPITAL_URL,
        "hospital",
        False,
    )
    assert any("Vestre Viken HF (9100000)" in why for why in route.why)


def test_person_routes_through_the_gp_office(registry):
    msg = message(registry, "HELSEOPPLYSNINGER_LEGE", GP, sender=9203002)
    local = demo_router(registry, "municipal").route(msg)
    assert local.ok, local.explain()
    [route] = local.routes
    assert (route.receiver_her, route.transport, route.endpoint, route.local) == (
        GP,
        "folder",
        "systems/9320100/in",
        True,
    )
    # No CMS between a gateway and its own local systems, so no policy applies.
    assert route.protection is None
    peer = demo_router(registry, "hospital").route(msg)
    [route] = peer.routes
    assert (route.endpoint, route.local, route.gateway) == (MUNICIPAL_URL, False, "municipal")
    assert any("Bragernes legesenter (9320100)" in why for why in route.why)


def test_policy_is_the_receivers_own(registry):
    # Geilo legekontor has the "tolerant" policy; its GPs inherit it.
    gp = registry.children(9350200)[0].her_id
    decision = demo_router(registry, "hospital").route(message(registry, "HELSEOPPLYSNINGER_LEGE", gp))
    [route] = decision.routes
    assert route.protection.name == "tolerant"
    assert Cipher.DES3 in route.protection.accept_ciphers
    assert any("policy 'tolerant'" in why for why in route.why)


def test_fifo_receivers(registry):
    msg = message(registry, "LOG_INNLAGT", NURSING)
    assert not demo_router(registry, "hospital").route(msg).routes[0].fifo
    assert demo_router(registry, "hospital", fifo_receivers=frozenset({NURSING})).route(msg).routes[0].fifo
    assert demo_router(registry, "hospital", fifo_all=True).route(msg).routes[0].fifo


def test_registry_address_endpoint_and_every_registry_transport_is_protected():
    registry = parse_registry(
        """
        [protection.p]
        send_cipher = "aes128"
        accept_ciphers = ["aes128"]
        [profiles.plo]
        LOG_INNLAGT = ["1.6"]
        [[party]]
        her_id = 100
        name = "Utenfor kommune"
        kind = "organisation"
        org_no = "191000005"
        endpoint = { transport = "amqp", address = "amqp://broker.example/queue-100" }
        protection = "p"
        accepts = ["plo"]
        certificates = { dir = "parties/100" }
        """
    )
    to = Address((PartyLevel("Utenfor kommune", LevelKind.ORGANISATION, (Ident("100", "HER"),)),))
    msg = message(load_default_registry(), "LOG_INNLAGT", None, raw_to=to)
    decision = Router(registry, gateway_name="hospital", gateway_urls=URLS, local_systems={}).route(msg)
    assert decision.ok, decision.explain()
    [route] = decision.routes
    assert (route.transport, route.endpoint, route.local, route.gateway) == (
        "amqp",
        "amqp://broker.example/queue-100",
        False,
        None,
    )
    assert route.protection.send_cipher == Cipher.AES128
    # The dispatcher signs and encrypts exactly the transports in PEER_TRANSPORTS: every transport
    # the registry can name leads to another organisation, local ones must stay out.
    assert {"https", "amqp", "smtp", "file"} <= PEER_TRANSPORTS
    assert not PEER_TRANSPORTS & {"folder", "api"}


# --- copy receivers ----------------------------------------------------------------------------------


def test_copy_receivers_fan_out(registry):
    msg = message(registry, "HELSEOPPLYSNINGER_LEGE", GP, copies=[("COP", 9330101)])
    assert [c.role for c in msg.copies] == ["COP"]
    decision = demo_router(registry, "hospital").route(msg)
    assert decision.ok, decision.explain()
    assert [(r.receiver_her, r.role, r.endpoint) for r in decision.routes] == [
        (GP, "PRIM", MUNICIPAL_URL),
        (9330101, "COP", MUNICIPAL_URL),
    ]
    local = demo_router(registry, "municipal").route(msg)
    assert [(r.role, r.endpoint) for r in local.routes] == [
        ("PRIM", "systems/9320100/in"),
        ("COP", "systems/9330100/in"),
    ]


def test_copy_to_the_primary_receiver_is_delivered_once(registry):
    msg = message(
        registry, "LOG_INNLAGT", NURSING, copies=[("COP", NURSING), ("COP", 9203002), ("COP", 9203002)]
    )
    decision = demo_router(registry, "hospital").route(msg)
    assert decision.ok, decision.explain()
    assert [(r.receiver_her, r.role) for r in decision.routes] == [(NURSING, "PRIM"), (9203002, "COP")]
    assert sum("delivered once" in note for note in decision.notes) == 2


def test_other_receiver_roles_are_not_copies(registry):
    msg = message(registry, "LOG_INNLAGT", NURSING, copies=[("FR", 9203002)])
    decision = demo_router(registry, "hospital").route(msg)
    assert [r.receiver_her for r in decision.routes] == [NURSING]
    assert any("role FR" in note for note in decision.notes)


def test_a_refused_copy_receiver_refuses_the_message(registry):
    # The hospital's meldingsmottak does not take LOG_INNLAGT; the sender must hear of it.
    msg = message(registry, "LOG_INNLAGT", NURSING, copies=[("COP", HOSPITAL_SERVICE)])
    decision = demo_router(registry, "hospital").route(msg)
    assert not decision.ok
    assert [p.code for p in decision.problems] == [ErrorCode.T10]
    assert "Drammen sykehus, Somatikk plo meldingsmottak (HER-id 9100201)" in decision.problems[0].message
    assert [r.receiver_her for r in decision.routes] == [NURSING]


def test_inbound_routes_only_the_receivers_served_here(registry):
    # A GP sends to the hospital with a copy to the municipality's nursing service: the municipal
    # gateway delivers the copy itself and sends the original to the hospital, which must not
    # refuse the message for naming a receiver it does not serve.
    msg = message(registry, "DIALOG_NOTAT", HOSPITAL_SERVICE, sender=GP, copies=[("COP", NURSING)])
    at_hospital = demo_router(registry, "hospital").route(msg, inbound=True)
    assert at_hospital.ok, at_hospital.explain()
    assert [(r.receiver_her, r.role, r.local) for r in at_hospital.routes] == [
        (HOSPITAL_SERVICE, "PRIM", True)
    ]
    assert any(str(NURSING) in note and "not served by this gateway" in note for note in at_hospital.notes)
    at_municipal = demo_router(registry, "municipal").route(msg, inbound=True)
    assert [(r.receiver_her, r.role, r.local) for r in at_municipal.routes] == [(NURSING, "COP", True)]
    # Outbound, the sending gateway routes both.
    assert len(demo_router(registry, "municipal").route(msg).routes) == 2


def test_inbound_for_nobody_here_is_refused(registry):
    msg = message(registry, "LOG_INNLAGT", NURSING)
    decision = demo_router(registry, "hospital").route(msg, inbound=True)
    assert decision.routes == []
    assert [p.code for p in decision.problems] == [ErrorCode.E21]
    assert "hospital" in decision.problems[0].message


# --- refusals ----------------------------------------------------------------------------------------


def test_type_the_receiver_does_not_accept_is_t10(registry):
    decision = demo_router(registry, "municipal").route(message(registry, "INNLEGGELSESRAPPORT", GP))
    assert decision.routes == []
    [problem] = decision.problems
    assert problem.code == ErrorCode.T10
    assert "Bragernes legesenter, Ola Fjellheim (HER-id 9320101)" in problem.message
    assert "does not accept INNLEGGELSESRAPPORT version 1.6" in problem.message
    assert "HELSEOPPLYSNINGER_LEGE 1.6" in problem.message  # what it does accept


def test_version_the_receiver_does_not_accept_is_t10(registry):
    old = etree.Element(f"{{{DIALOG_10_NS}}}Dialogmelding")
    decision = demo_router(registry, "municipal").route(
        message(registry, "DIALOG_HELSEFAGLIG", HOSPITAL_SERVICE, sender=NURSING, payload=old)
    )
    [problem] = decision.problems
    assert problem.code == ErrorCode.T10
    assert "DIALOG_HELSEFAGLIG version 1.0" in problem.message
    assert "version(s) 1.1" in problem.message
    new = message(registry, "DIALOG_HELSEFAGLIG", HOSPITAL_SERVICE, sender=NURSING)
    assert demo_router(registry, "municipal").route(new).ok


def test_unknown_content_version_is_t10(registry):
    unknown = etree.Element("{urn:example:not-a-standard}Brev")
    decision = demo_router(registry, "hospital").route(
        message(registry, "LOG_INNLAGT", NURSING, payload=unknown)
    )
    assert [p.code for p in decision.problems] == [ErrorCode.T10]


def test_unknown_receiver_is_e21(registry):
    to = Address((PartyLevel("Ukjent kommune", LevelKind.ORGANISATION, (Ident("9299000", "HER"),)),))
    decision = demo_router(registry, "hospital").route(message(registry, "LOG_INNLAGT", None, raw_to=to))
    assert decision.routes == []
    [problem] = decision.problems
    assert problem.code == ErrorCode.E21
    assert "9299000" in problem.message and "not in the address registry" in problem.message


def test_receiver_without_her_id_is_e21(registry):
    to = Address((PartyLevel("Drammen kommune", LevelKind.ORGANISATION, (Ident("192030005", "ENH"),)),))
    decision = demo_router(registry, "hospital").route(message(registry, "LOG_INNLAGT", None, raw_to=to))
    assert [p.code for p in decision.problems] == [ErrorCode.E21]
    assert "no HER-id" in decision.problems[0].message


def test_address_chain_that_does_not_hang_together_is_e21(registry):
    # Organisation Drammen kommune, but the hospital's service below it.
    municipality, _ = address(registry, NURSING).levels
    service = address(registry, HOSPITAL_SERVICE).levels[-1]
    to = Address((municipality, service))
    decision = demo_router(registry, "municipal").route(
        message(registry, "INNLEGGELSESRAPPORT", None, sender=NURSING, raw_to=to)
    )
    assert decision.routes == []
    assert [p.code for p in decision.problems] == [ErrorCode.E21]
    assert "9203000" in decision.problems[0].message


def test_our_party_without_local_system_is_e21(registry):
    router = Router(registry, gateway_name="municipal", gateway_urls=URLS, local_systems={})
    decision = router.route(message(registry, "LOG_INNLAGT", NURSING))
    [problem] = decision.problems
    assert problem.code == ErrorCode.E21
    assert "no local system" in problem.message


def test_gateway_without_url_is_e21(registry):
    router = demo_router(registry, "hospital", gateway_urls={"hospital": HOSPITAL_URL})
    decision = router.route(message(registry, "LOG_INNLAGT", NURSING))
    [problem] = decision.problems
    assert problem.code == ErrorCode.E21
    assert "'municipal'" in problem.message and "no address" in problem.message


def test_explain_names_routes_notes_and_refusals(registry):
    msg = message(registry, "LOG_INNLAGT", NURSING, copies=[("COP", NURSING), ("COP", GP)])
    lines = demo_router(registry, "hospital").route(msg).explain()
    assert lines[0] == f"PRIM {NURSING} -> https {MUNICIPAL_URL} (peer gateway municipal)"
    assert any(line.startswith("NOTE copy receiver 9203001") for line in lines)
    assert any(line.startswith("REFUSED T10 Meldingsformatet er ikke støttet: ") for line in lines)


# --- from a configuration ----------------------------------------------------------------------------


def test_build_router_from_config(registry, tmp_path):
    config = parse_config(
        {
            "gateway": {"name": "municipal", "serves": [9203000, 9320100, 9330100]},
            "gateways": URLS,
            "delivery": {"fifo": False, "receivers": {str(NURSING): {"fifo": True}}},
            "local_systems": [
                {"name": "Drammen PLO", "her_ids": [9203000], "folder": "systems/drammen"},
                {"name": "GP hosting", "her_ids": [9320100, 9330100], "folder": "systems/gps"},
                {"name": "via API", "her_ids": [9201000], "transport": "api"},
            ],
        },
        tmp_path,
    )
    endpoints = local_endpoints(config)
    assert endpoints == {
        9203000: LocalEndpoint("Drammen PLO", "folder", str(tmp_path / "systems/drammen/in")),
        9320100: LocalEndpoint("GP hosting", "folder", str(tmp_path / "systems/gps/9320100/in")),
        9330100: LocalEndpoint("GP hosting", "folder", str(tmp_path / "systems/gps/9330100/in")),
        9201000: LocalEndpoint("via API", "api", "9201000"),
    }
    router = build_router(config, registry, endpoints)
    decision = router.route(message(registry, "DIALOG_NOTAT", NURSING, copies=[("COP", 9330101)]))
    assert decision.ok, decision.explain()
    assert [(r.receiver_her, r.endpoint, r.fifo) for r in decision.routes] == [
        (NURSING, str(Path(tmp_path / "systems/drammen/in")), True),
        (9330101, str(tmp_path / "systems/gps/9330100/in"), False),
    ]
    hospital = router.route(message(registry, "INNLEGGELSESRAPPORT", HOSPITAL_SERVICE, sender=NURSING))
    assert hospital.routes[0].endpoint == HOSPITAL_URL
