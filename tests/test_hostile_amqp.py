"""Hostile input through the AMQP entry point, on a real municipal gateway and a throwaway
RabbitMQ: this test plays a peer gateway that publishes into Drammen kommune's `9203000_async`
queue, with the routing facts in the message headers (fromHerId, toHerId) as Helsenorge's do.

The cases are the peer cases of the HTTPS suite (tests/hostile_cms.py) without the HTTP-only ones,
plus AMQP's own: no headers, headers of the wrong type. What a peer sees differs from HTTPS: an
accepted message is acknowledged; a refused one is dead-lettered into `9203000_dlq` and reported
in the sender's `_error` queue with Helsenorge's errorCondition. The hospital gateway is not
running, so its queues hold what the municipal gateway answered it (AppRecs, error reports) for
this test to read.

Queue counts come from the queues themselves (a passive declare answers with the ready count the
queue's leader has now) and from the channels (messages a consumer holds unacknowledged), never
from `rabbitmqctl list_queues ... messages`: for quorum queues that is a metric each queue
refreshes on its tick (every 5 s), so right after the test drained a queue it may still show
what was in it before.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from dataclasses import dataclass

import pytest
from cluster import use_amqp
from e2e import wait_for
from hostile_cms import (
    DRAMMEN,
    HEADERS,
    HOSPITAL,
    KONGSBERG,
    Keys,
    PeerCase,
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

from gateway.protection import (
    CertificateChecker,
    ProtectionError,
    StaticCrlSource,
    load_certificate,
    load_crls,
    unprotect,
)
from message_types.read import read_message
from message_types.xmlparse import parse_xml

pytest_plugins = ("servers",)
aio_pika = pytest.importorskip("aio_pika", reason="pip install aio-pika")
from adapters.amqp import AmqpTransport  # noqa: E402

ASYNC, DLQ = f"{DRAMMEN}_async", f"{DRAMMEN}_dlq"
HOSPITAL_ASYNC, HOSPITAL_ERROR = f"{HOSPITAL}_async", f"{HOSPITAL}_error"
QUIET = 2.0  # once everything expected has arrived, the queues must stay unchanged this long
PATIENCE = 180.0  # then the tests judge what did arrive


def _amqp_cases() -> list[PeerCase]:
    cases = [c for c in peer_cases() if c.category != "http"]
    for case in cases:
        if case.name == "cms-empty-body":
            case.detail = "empty body"

    def sealed(data: bytes):
        return lambda k: k.to_drammen(data)

    cases += [
        PeerCase(
            "amqp-no-headers", "amqp", sealed(fresh()), 403, "transport:invalid-certificate", headers={}
        ),
        PeerCase(
            "amqp-from-her-a-list",
            "amqp",
            sealed(fresh()),
            403,
            "transport:invalid-certificate",
            headers={**HEADERS, "X-Komut-From-Her": [9100201, 9100201]},
        ),
        PeerCase(
            "amqp-from-her-with-control-characters",
            "amqp",
            sealed(fresh()),
            403,
            "transport:invalid-certificate",
            headers={**HEADERS, "X-Komut-From-Her": "\x009100201\x7f"},
        ),
        PeerCase(
            "amqp-from-her-a-table",
            "amqp",
            sealed(fresh()),
            403,
            "transport:invalid-certificate",
            headers={**HEADERS, "X-Komut-From-Her": {"her": 9100201}},
        ),
    ]
    return cases


CASES = _amqp_cases()


def _reported_to_hospital(case: PeerCase) -> bool:
    """A refusal the hospital (or one of its services) sent: its error reports go to the
    hospital's `_error` queue."""
    return case.status != 200 and str(case.headers.get("X-Komut-From-Her", "")) in ("9100000", "9100201")


EXPECTED_REPORTS = {case.name: case.sends for case in CASES if _reported_to_hospital(case)}


@dataclass
class Run:
    net: object
    reports: dict[str, list[dict]]  # message_id -> error reports in the hospital's _error queue
    dead: collections.Counter  # message_id -> times in Drammen's _dlq
    apprecs: dict[str, list[tuple[str, list[str]]]]  # original MsgId -> AppRecs to the hospital
    local_apprecs: dict[str, list[tuple[str, list[str]]]]  # ... and to Kongsberg's folder
    rows: dict[str, list[dict]]
    left: dict[str, int]  # queue -> ready messages, after the test read what it reads
    in_hand: int  # messages the municipal gateway held unacknowledged then
    url: str


def _headers(case: PeerCase) -> dict:
    names = {"X-Komut-From-Her": "fromHerId", "X-Komut-To-Her": "toHerId"}
    return {names[k]: v for k, v in case.headers.items() if k in names}


async def _drain(channel, queue: str) -> list:
    declared = await channel.declare_queue(queue, passive=True)
    out = []
    while (message := await declared.get(no_ack=True, fail=False)) is not None:
        out.append(message)
    return out


async def _counts(channel, queues: list[str]) -> dict[str, int]:
    """Ready messages per queue, as the queue has them now (not rabbitmqctl's lagging metric)."""
    counts = {}
    for queue in queues:
        declared = await channel.declare_queue(queue, passive=True)
        counts[queue] = declared.declaration_result.message_count
    return counts


async def _ready(url: str, queues: list[str]) -> dict[str, int]:
    connection = await aio_pika.connect(url)
    try:
        return await _counts(await connection.channel(), queues)
    finally:
        await connection.close()


def _in_hand(server, vhost: str) -> int:
    """Messages delivered to the vhost's consumers and not yet settled (asked of the channels)."""
    out = server.ctl("list_channels", "vhost", "messages_unacknowledged", "--no-table-headers", "-q").stdout
    held = 0
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == vhost and parts[1].isdigit():
            held += int(parts[1])
    return held


def _left(server, vhost: str, url: str, patience: float = 60.0) -> tuple[dict[str, int], int]:
    """Every queue's ready messages and the messages in hand, once the gateway holds none (or
    after `patience`). In hand first: a message nacked back meanwhile shows as ready."""
    names = sorted(server.queue_counts(vhost))  # only the names: its counts lag for quorum queues
    deadline = time.monotonic() + patience
    while True:
        in_hand = _in_hand(server, vhost)
        ready = asyncio.run(_ready(url, names))
        if in_hand == 0 or time.monotonic() > deadline:
            return ready, in_hand
        time.sleep(0.5)


async def _exercise(net, url: str) -> tuple[dict, collections.Counter, dict]:
    keys = Keys(net.directory / "pki")
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for case in CASES:
            body = case.build(keys)
            for _ in range(case.sends):
                message = aio_pika.Message(
                    body,
                    message_id=f"{case.name}",
                    headers=_headers(case),
                    delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    type="LOG_INNLAGT",
                )
                await channel.default_exchange.publish(message, routing_key=ASYNC, mandatory=True)
        refused = sum(c.sends for c in CASES if c.status != 200)
        wanted = [c.msg_id for c in CASES if c.apprec and c.apprec_at == HOSPITAL]

        # Read the error reports as they come, until every refusal is dead-lettered, every
        # expected report and AppRec is there, and nothing has changed for QUIET seconds: a late
        # or repeated report would still arrive in that time and fail its case.
        reports: dict[str, list[dict]] = collections.defaultdict(list)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PATIENCE
        seen, still_since = None, loop.time()
        while loop.time() < deadline:
            for message in await _drain(channel, HOSPITAL_ERROR):
                reports[message.correlation_id or ""].append(dict(message.headers or {}))
            counts = await _counts(channel, [ASYNC, DLQ, HOSPITAL_ASYNC])
            complete = (
                counts[ASYNC] == 0
                and counts[DLQ] >= refused
                and counts[HOSPITAL_ASYNC] >= len(wanted)
                and all(len(reports.get(name, ())) >= n for name, n in EXPECTED_REPORTS.items())
            )
            state = (counts, sum(len(r) for r in reports.values()))
            if state != seen:
                seen, still_since = state, loop.time()
            elif complete and loop.time() - still_since >= QUIET:
                break
            await asyncio.sleep(0.2)
        dead = collections.Counter(m.message_id for m in await _drain(channel, DLQ))
        checker = CertificateChecker(
            [load_certificate(net.directory / "pki" / "ca.pem")],
            crl_source=StaticCrlSource(load_crls((net.directory / "pki" / "crl.pem").read_bytes())),
        )
        apprecs: dict[str, list] = collections.defaultdict(list)
        for message in await _drain(channel, HOSPITAL_ASYNC):
            try:
                opened = unprotect(
                    message.body,
                    credentials=[keys.hospital_enc],
                    checker=checker,
                    expected_signers=[keys.drammen_sign.cert],
                    at=dt.datetime.now(dt.UTC),
                )
            except ProtectionError as exc:
                apprecs["unreadable AppRec"].append((str(exc), []))
                continue
            info = read_message(parse_xml(opened.content)).apprec
            apprecs[info.original_msg_id].append((str(info.status), [e.code for e in info.errors]))
        return reports, dead, apprecs
    finally:
        await connection.close()


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pki, rabbitmq_server):
    url = rabbitmq_server.new_vhost("hostile")
    vhost = url.rsplit("/", 1)[1]

    async def declare_hospital_queues():
        # What the hospital gateway would declare when it connects: it stays down, its queues fill.
        transport = AmqpTransport(url=url, her_ids=[HOSPITAL], consume=False)

        class Nobody:
            async def from_peer(self, *args, **kwargs):
                raise AssertionError("not consuming")

        await transport.start(Nobody())
        assert await transport.wait_connected(30)
        await transport.stop()

    def prepare(net):
        use_amqp(net, url)
        revoke_kongsberg(net.directory / "pki")

    asyncio.run(declare_hospital_queues())
    net = start_net(tmp_path_factory.mktemp("hostile-amqp") / "net", demo_pki, "municipal", prepare=prepare)
    try:
        reports, dead, apprecs = asyncio.run(_exercise(net, url))
        wanted = [c.msg_id for c in CASES if c.apprec_at == KONGSBERG and c.apprec]
        settle(lambda: all(m in apprecs_in(net.folder(KONGSBERG, "in")) for m in wanted), timeout=30)
        left, in_hand = _left(rabbitmq_server, vhost, url)
        yield Run(
            net=net,
            reports=reports,
            dead=dead,
            apprecs=apprecs,
            local_apprecs=apprecs_in(net.folder(KONGSBERG, "in")),
            rows=rows_by_msg_id(net.log("municipal"), "inbound"),
            left=left,
            in_hand=in_hand,
            url=url,
        )
    finally:
        net.stop_all()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_amqp_peer_gets_the_right_answer(run, case):
    refused = case.status != 200
    assert run.dead[case.name] == (case.sends if refused else 0), (
        "refused messages, and only they, are dead letters"
    )
    reports = run.reports.get(case.name, [])
    if _reported_to_hospital(case):
        assert len(reports) == case.sends, "one error report to the sender per refusal"
        for report in reports:
            text = f"{report['errorCondition']} {report['errorDescription']}"
            assert case.detail in text, report
            assert report["errorConditionData"] == str(case.status)
            assert str(report["toHerId"]) == case.headers["X-Komut-From-Her"]
    else:
        assert not reports, reports
    mid = case.msg_id
    found = run.local_apprecs if case.apprec_at == KONGSBERG else run.apprecs
    if case.apprec is not None:
        assert found.get(mid) == [("2", sorted(case.apprec))], "one AppRec Avvist, to the sender"
    elif mid is not None:
        assert mid not in run.apprecs and mid not in run.local_apprecs
    if mid is not None and case.status in (200, 403):
        rows = run.rows.get(mid, [])
        assert len(rows) == 1, f"stored {len(rows)} times"
        if case.apprec is not None:
            assert codes_of(rows[0]) == set(case.apprec)


def test_every_appRec_the_gateway_sent_could_be_opened(run):
    assert "unreadable AppRec" not in run.apprecs


def test_nothing_is_left_in_the_queues_but_what_the_test_read(run):
    assert run.left.get(ASYNC) == 0
    assert run.in_hand == 0, "the municipal gateway still holds messages it has not settled"
    hospital = {queue: count for queue, count in run.left.items() if queue.startswith(str(HOSPITAL))}
    assert set(hospital) == {HOSPITAL_ASYNC, HOSPITAL_ERROR, f"{HOSPITAL}_dlq"}, run.left
    assert not any(hospital.values()), hospital


def test_no_patient_data_in_logs_and_no_crash(run):
    assert not patient_data_leaks(run.net)
    assert not passwd_copies(run.net)
    log = (run.net.directory / "municipal.log").read_text(errors="replace")
    assert "Traceback" not in log


async def _publish(url: str, body: bytes) -> None:
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        message = aio_pika.Message(
            body, message_id="after-the-storm", headers=_headers(PeerCase("", "", None, 200)), delivery_mode=2
        )
        await channel.default_exchange.publish(message, routing_key=ASYNC, mandatory=True)
    finally:
        await connection.close()


def test_the_gateway_keeps_serving(run):
    net = run.net
    assert net.procs["municipal"].poll() is None and net.healthy("municipal")
    data = fresh()
    asyncio.run(_publish(run.url, Keys(net.directory / "pki").to_drammen(data)))
    mid = msg_id(data).encode()
    wait_for(
        lambda: any(mid in p.read_bytes() for p in net.folder(DRAMMEN, "in").glob("*.xml")),
        timeout=60,
        what="a normal message over AMQP delivered after the hostile batch",
    )
