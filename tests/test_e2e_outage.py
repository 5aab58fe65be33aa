"""Peer down for a while: messages wait with backoff, the circuit opens, and everything is
delivered after the peer returns, in order per receiver and conversation (FIFO configured)."""

from __future__ import annotations

import pytest
from conftest import SAMPLES
from e2e import DRAMMEN_CAST, Net, wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, MUNICIPALITY = 9100000, 9203000
# The hospital's part of the PLO stay: one conversation, two receivers (sykepleie, saksbehandler).
STORY = ["01-", "03-", "04-", "05-", "07-", "08-"]


@pytest.fixture
def fifo_net(tmp_path, demo_pki):
    network = Net(tmp_path / "net", demo_pki, delivery={"fifo": "true"})
    yield network
    network.stop_all()


def _template(stem: str) -> bytes:
    return next((SAMPLES / "valid" / "plo").glob(f"{stem}*.xml")).read_bytes()


def test_outage_backoff_circuit_and_ordered_delivery_after_return(fifo_net):
    net = fifo_net
    net.start("hospital")  # the municipal gateway is down
    ids: dict[str, str] = {}
    sent = []
    for round_ in range(2):  # the story twice: two conversations
        ids = {}
        for i, stem in enumerate(STORY):
            data, org = net.recast(_template(stem), DRAMMEN_CAST, ids)
            assert org == HOSPITAL
            message = read_message(parse_xml(data))
            sent.append(
                (
                    message.msg_id,
                    message.receiver.her_id,
                    message.conversation.conversation if message.conversation else message.msg_id,
                )
            )
            net.system(HOSPITAL).send(data, f"{round_}-{i:02}-{stem}.xml")

    def waiting():
        rows = net.log("hospital")
        states = [d["state"] for r in rows for d in r["deliveries"]]
        opened = any(e["kind"] == "circuit opened" for r in rows for e in r["events"])
        retried = any(d["attempts"] >= 2 for r in rows for d in r["deliveries"])
        return len(rows) == len(sent) and "retry-wait" in states and opened and retried and rows

    rows = wait_for(waiting, timeout=60, interval=0.5, what="retries with backoff and an open circuit")
    assert all(r["status"] in ("queued", "retry-wait", "sending") for r in rows), [r["status"] for r in rows]
    reasons = [e["reason"] for r in rows for e in r["events"] if e["kind"] == "transient failure"]
    assert reasons and all("next in" in reason for reason in reasons)

    net.start("municipal")  # the peer returns
    arrived = wait_for(
        lambda: (
            (files := list(net.folder(MUNICIPALITY, "in").glob("*.xml")))
            and len(files) == len(sent)
            and files
        ),
        timeout=90,
        what="every message at the municipality",
    )
    arrival = {read_message(parse_xml(p.read_bytes())).msg_id: p.stat().st_mtime_ns for p in arrived}
    # Within each receiver and conversation, the local system got them in the order they were sent.
    for receiver in {r for _, r, _ in sent}:
        for conversation in {c for _, _, c in sent}:
            order = [m for m, r, c in sent if r == receiver and c == conversation]
            assert sorted(order, key=arrival.__getitem__) == order, (receiver, conversation)
    municipal = net.system(MUNICIPALITY)
    municipal.poll_once()
    wait_for(
        lambda: all(r["status"] == "app-ok" for r in net.log("hospital") if r["msg_id"] in arrival),
        timeout=60,
        what="app-ok for all",
    )
    closed = [e for r in net.log("hospital") for e in r["events"] if e["kind"] == "circuit closed"]
    assert closed, "the circuit closed again once the peer answered"
