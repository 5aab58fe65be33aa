"""Two real gateways on 127.0.0.1: a PLO message from the hospital EPJ's out folder to the
municipality's in folder and the AppRec back, a refusal by AppRec, and an unknown receiver."""

from __future__ import annotations

from conftest import SAMPLES
from e2e import DRAMMEN_CAST, wait_for

from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus
from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, MUNICIPALITY = 9100000, 9203000


def _send_log_innlagt(net, cast=DRAMMEN_CAST):
    template = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
    data, sender_org = net.recast(template, cast)
    assert sender_org == HOSPITAL
    net.system(HOSPITAL).send(data, "log-innlagt.xml")
    return data, read_message(parse_xml(data))


def _arrived(net, her_id: int, msg_id: str):
    for path in net.folder(her_id, "in").glob("*.xml"):
        data = path.read_bytes()
        if msg_id.encode() in data:
            return path, data
    return None


def _kinds(entry: dict) -> list[str]:
    return [e["kind"] for e in entry["events"]]


def test_plo_message_reaches_the_municipality_and_the_apprec_comes_back(net):
    net.start("hospital")
    net.start("municipal")
    data, message = _send_log_innlagt(net)
    path, delivered = wait_for(
        lambda: _arrived(net, MUNICIPALITY, message.msg_id),
        what="LOG_INNLAGT in the municipality's in folder",
    )
    # Decrypted and verified on the way: the local system gets exactly the XML the EPJ wrote.
    assert delivered == data
    assert not list(net.folder(HOSPITAL, "out").glob("*.xml")), "the picked-up file left the out folder"
    municipal = net.system(MUNICIPALITY)
    assert municipal.poll_once() == 1 and municipal.answered == 1

    entry = wait_for(
        lambda: (e := net.entry("hospital", message.msg_id)) and e["status"] == "app-ok" and e,
        what="app-ok in the hospital's log",
    )
    kinds = _kinds(entry)
    for step in (
        "stored",
        "validated and routed",
        "routed to a receiver",
        "attempt",
        "transport receipt",
        "AppRec OK",
    ):
        assert step in kinds, (step, kinds)
    assert kinds.index("transport receipt") < kinds.index("AppRec OK")
    delivery = entry["deliveries"][0]
    assert (
        delivery["receiver"] == 9203001 and delivery["state"] == "app-ok" and delivery["apprec_status"] == "1"
    )
    # The municipal side logged it too, as delivered to its local system and answered.
    inbound = wait_for(
        lambda: (e := net.entry("municipal", message.msg_id)) and e["status"] == "app-ok" and e
    )
    assert inbound["direction"] == "inbound"
    # The AppRec reached the hospital EPJ's in folder.
    wait_for(
        lambda: any(b"APPREC" in p.read_bytes() for p in net.folder(HOSPITAL, "in").glob("*.xml")),
        what="AppRec at the EPJ",
    )


def test_a_refusal_by_the_municipality_comes_back_as_apprec_avvist(net):
    net.start("hospital")
    net.start("municipal")
    _, message = _send_log_innlagt(net)
    path, data = wait_for(lambda: _arrived(net, MUNICIPALITY, message.msg_id))
    received = read_message(parse_xml(data))
    apprec = build_apprec(received, AppRecStatus.REJECTED, [("E35", "Pasienten finnes ikke i fagsystemet")])
    net.system(MUNICIPALITY).send(apprec, "apprec-avvist.xml")
    entry = wait_for(
        lambda: (e := net.entry("hospital", message.msg_id)) and e["status"] == "app-rejected" and e
    )
    delivery = entry["deliveries"][0]
    assert delivery["apprec_status"] == "2"
    rejected = [e for e in entry["events"] if e["kind"] == "AppRec rejected"]
    assert rejected and "E35" in rejected[0]["reason"]


def test_unknown_receiver_is_refused_with_e21_and_an_apprec(net):
    net.start("hospital")
    net.start("municipal")
    template = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
    data, _ = net.recast(template, DRAMMEN_CAST)
    data = data.replace(b"<Id>9203001</Id>", b"<Id>9999999</Id>")
    message = read_message(parse_xml(data))
    assert message.receiver.her_id == 9999999
    net.system(HOSPITAL).send(data, "to-nobody.xml")
    err = wait_for(lambda: list(net.folder(HOSPITAL, "out").parent.glob("error/*.err")), what="the .err file")
    assert "E21" in err[0].read_text()
    entry = net.entry("hospital", message.msg_id)
    assert entry["status"] == "rejected" and entry["problems"][0]["code"] == "E21"
    apprec = wait_for(
        lambda: next(
            (
                p
                for p in net.folder(HOSPITAL, "in").glob("*.xml")
                if message.msg_id.encode() in p.read_bytes()
            ),
            None,
        ),
        what="the AppRec Avvist in the EPJ's in folder",
    )
    answer = read_message(parse_xml(apprec.read_bytes()))
    assert answer.apprec.status == AppRecStatus.REJECTED
    assert [e.code for e in answer.apprec.errors] == ["E21"]
