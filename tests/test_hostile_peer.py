"""Hostile input through the peer endpoint, on real gateways: this test plays a peer gateway with
the hospital gateway's TLS certificate and POSTs to the municipal gateway's /peer/v1/messages.

Each hostile document travels properly signed (by Vestre Viken HF) and encrypted (for Drammen
kommune); then come broken CMS, wrong recipients, tampered signatures, bad and revoked signer
certificates, spoofed senders, unknown receivers, duplicates and HTTP- and TLS-level abuse. The
answer is the one a peer can act on: a transport error (4xx) when the content cannot be read, a
receipt and an AppRec when it can (the AppRec reaches the sending EPJ through the hospital
gateway), 403 abuse:spoofing-attack for a sender that is not who signed. Nothing is stored twice,
no fødselsnummer reaches a log, and the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from e2e import wait_for
from hostile_cms import (
    CMS,
    DRAMMEN,
    HEADERS,
    HOSPITAL,
    KONGSBERG,
    Keys,
    fresh,
    msg_id,
    peer_cases,
    revoke_kongsberg,
)
from hostile_net import (
    apprecs_in,
    codes_of,
    passwd_copies,
    patient_data_leaks,
    rows_by_msg_id,
    settle,
    start_net,
)

CASES = peer_cases()
CONCURRENT = 5


@dataclass
class Answer:
    status: int
    body: dict


@dataclass
class Run:
    net: object
    answers: dict[str, list[Answer]]
    apprecs: dict[int, dict]
    rows: dict[str, list[dict]]
    all_rows: list[dict]
    concurrent: bytes
    concurrent_answers: list[Answer]
    tls_refusals: dict[str, str]


def _ssl(net, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(net.directory / "pki" / "ca.pem"))
    if cert is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


async def _post(session, url, ctx, body: bytes, headers: dict, content_type: str) -> Answer:
    async with session.post(
        url, data=body, headers={"Content-Type": content_type, **headers}, ssl=ctx
    ) as resp:
        raw = await resp.read()
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = {"raw": raw.decode("utf-8", "replace")}
        return Answer(resp.status, parsed)


async def _send_all(net, keys: Keys) -> tuple[dict[str, list[Answer]], bytes, list[Answer], dict[str, str]]:
    url = net.info["gateways"]["municipal"]["url"] + "/peer/v1/messages"
    tls = net.directory / "tls"
    ctx = _ssl(net, tls / "hospital.pem", tls / "hospital.key")
    answers: dict[str, list[Answer]] = {}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for case in CASES:
            body = case.build(keys)
            answers[case.name] = [
                await _post(session, url, ctx, body, case.headers, case.content_type)
                for _ in range(case.sends)
            ]
        concurrent = fresh()
        body = keys.to_drammen(concurrent)
        together = await asyncio.gather(
            *(_post(session, url, ctx, body, HEADERS, CMS) for _ in range(CONCURRENT))
        )
        refusals = {}
        pki = net.directory / "pki" / "test"
        for name, client in {
            "no-client-certificate": _ssl(net),
            "client-certificate-from-another-ca": _ssl(net, pki / "untrusted.pem", pki / "untrusted.key"),
            "expired-client-certificate": _ssl(net, pki / "expired.pem", pki / "expired.key"),
        }.items():
            try:
                answer = await _post(session, url, client, keys.to_drammen(fresh()), HEADERS, CMS)
                refusals[name] = f"HTTP {answer.status}"
            except (aiohttp.ClientError, ssl.SSLError, ConnectionError) as exc:
                refusals[name] = f"refused: {type(exc).__name__}"
    return answers, concurrent, list(together), refusals


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pki):
    net = start_net(
        tmp_path_factory.mktemp("hostile-peer") / "net",
        demo_pki,
        "hospital",
        "municipal",
        prepare=lambda net: revoke_kongsberg(net.directory / "pki"),
    )
    try:
        yield _run(net)
    finally:
        net.stop_all()


def _run(net) -> Run:
    keys = Keys(net.directory / "pki")
    answers, concurrent, together, refusals = asyncio.run(_send_all(net, keys))
    wanted = [c for c in CASES if c.apprec]

    def found():
        return {her: apprecs_in(net.folder(her, "in")) for her in (HOSPITAL, KONGSBERG)}

    settle(lambda: all(c.msg_id in found()[c.apprec_at] for c in wanted), timeout=60)
    settle(
        lambda: any(
            msg_id(concurrent).encode() in p.read_bytes() for p in net.folder(DRAMMEN, "in").glob("*.xml")
        ),
        timeout=30,
    )
    apprecs = found()
    rows = net.log("municipal")
    return Run(
        net=net,
        answers=answers,
        apprecs=apprecs,
        rows=rows_by_msg_id(rows, "inbound"),
        all_rows=rows,
        concurrent=concurrent,
        concurrent_answers=together,
        tls_refusals=refusals,
    )


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_peer_gets_the_right_answer(run, case):
    answers = run.answers[case.name]
    for answer in answers:
        assert answer.status == case.status, answer.body
        assert case.detail in str(answer.body.get("detail", answer.body)), answer.body
        assert answer.body.get("accepted") is (case.status == 200), answer.body
    if case.sends > 1 and case.status == 200:
        assert [a.body["duplicate"] for a in answers] == [False] + [True] * (case.sends - 1)
    mid = case.msg_id
    if case.apprec is not None:
        assert run.apprecs[case.apprec_at][mid] == [("2", sorted(case.apprec))], (
            "one AppRec Avvist, at the sender"
        )
    elif mid is not None:
        everywhere = {m for found in run.apprecs.values() for m in found}
        assert mid not in everywhere, "no AppRec for it"
    if mid is not None and case.status in (200, 403):
        rows = run.rows.get(mid, [])
        assert len(rows) == 1, f"stored {len(rows)} times"
        if case.apprec is not None:
            assert rows[0]["state"] == "rejected" and codes_of(rows[0]) == set(case.apprec)
        elif case.status == 403:
            assert rows[0]["state"] == "rejected" and codes_of(rows[0]) == {"X99"}


def test_readable_messages_are_delivered_once(run):
    delivered = [p.read_bytes() for p in run.net.folder(DRAMMEN, "in").glob("*.xml")]
    for case in CASES:
        if case.category == "duplicate" and case.status == 200 and not case.apprec:
            assert sum(case.msg_id.encode() in d for d in delivered) == 1, case.name
    assert sum(msg_id(run.concurrent).encode() in d for d in delivered) == 1


def test_the_same_message_at_once_is_stored_once(run):
    assert [a.status for a in run.concurrent_answers] == [200] * CONCURRENT
    assert sum(not a.body["duplicate"] for a in run.concurrent_answers) == 1, run.concurrent_answers
    assert len(run.rows[msg_id(run.concurrent)]) == 1


def test_unreadable_bodies_are_kept_once_each(run):
    # Refused before decryption: kept without payload so that operators see the attempt, once per body.
    unreadable = [r for r in run.all_rows if not r["msg_id"] and r["direction"] == "inbound"]
    refused = [c for c in CASES if c.status in (400, 403) and c.document is None and c.category != "http"]
    refused = [c for c in refused if c.name != "cms-empty-body"]  # refused by the HTTP layer
    assert len(unreadable) == len(refused) + sum(c.status == 400 and c.document is not None for c in CASES)


def test_clients_without_a_trusted_certificate_are_refused_during_the_handshake(run):
    assert len(run.tls_refusals) == 3
    for name, outcome in run.tls_refusals.items():
        assert outcome.startswith("refused"), (name, outcome)


def test_no_patient_data_in_logs_and_no_file_read(run):
    assert not patient_data_leaks(run.net)
    assert not passwd_copies(run.net)
    for name in ("hospital", "municipal"):
        log = (run.net.directory / f"{name}.log").read_text(errors="replace")
        assert "Traceback" not in log, f"the {name} gateway logged a crash"


def test_the_gateways_keep_serving(run):
    net = run.net
    for name in ("hospital", "municipal"):
        assert net.procs[name].poll() is None and net.healthy(name), name
    data = fresh()
    net.system(HOSPITAL).send(data, "after-the-storm.xml")
    mid = msg_id(data).encode()
    wait_for(
        lambda: any(mid in p.read_bytes() for p in net.folder(DRAMMEN, "in").glob("*.xml")),
        timeout=60,
        what="a normal message from the hospital delivered after the hostile batch",
    )
