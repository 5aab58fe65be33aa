"""The AMQP transport against a real RabbitMQ (tests/servers.py): queues per HER-id, publisher
confirms, acknowledgement only after the pipeline took the message, dead letters, error reports to
the sender's error queue, outcomes when there is nowhere to send."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from adapters.store_memory import MemoryStore
from gateway.lifecycle import DeliveryState as D
from gateway.lifecycle import MessageState
from gateway.store import (
    Change,
    DeliveryRecord,
    DeliveryUpdate,
    Direction,
    Event,
    MessageRecord,
    StoreUnavailable,
)
from gateway.transport import Outcome, Outgoing, PeerReceipt

pytest_plugins = ("servers",)

aio_pika = pytest.importorskip("aio_pika", reason="pip install aio-pika")
from adapters.amqp import AmqpTransport, ErrorReport, error_condition, record_error_report  # noqa: E402

_hers = itertools.count(random.Random().randrange(10_000, 90_000) * 100)


def her() -> int:
    """A HER-id of its own per test, so its queues are its own."""
    return next(_hers)


@pytest.fixture(scope="module")
def broker(rabbitmq_server):
    url = rabbitmq_server.new_vhost("transport")
    return rabbitmq_server, url, url.rsplit("/", 1)[1]


class Inbound:
    """A pipeline stand-in: records what arrives and answers with `answer(body)`."""

    def __init__(self, answer=None):
        self.got: list[tuple[bytes, dict, str]] = []
        self.answer = answer or (lambda body: PeerReceipt(True, 200, "stored"))
        self.arrived = asyncio.Event()

    async def from_peer(self, body, routing, source):
        self.got.append((body, routing, source))
        self.arrived.set()
        result = self.answer(body)
        if asyncio.iscoroutine(result):
            result = await result
        return result

    async def from_local(self, data, source, sender_her=None):
        raise AssertionError("not used")


def outgoing(sender: int, receiver: int, msg_id: str, body: bytes = b"CMS", endpoint: str = "") -> Outgoing:
    return Outgoing(
        7, endpoint, body, "application/pkcs7-mime", sender, receiver, "DIALOG_HELSEFAGLIG", msg_id
    )


async def started(url: str, her_id: int, inbound: Inbound, **kw) -> AmqpTransport:
    transport = AmqpTransport(url=url, her_ids=[her_id], requeue_delay=0.05, **kw)
    await transport.start(inbound)
    assert await transport.wait_connected(20)
    return transport


async def ready_count(url: str, queue: str) -> int:
    """Messages ready in a queue (not those handed to a consumer), asked over AMQP: quicker than rabbitmqctl."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count
    finally:
        await connection.close()


async def wait_for_count(url: str, queue: str, expected: int, timeout: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while (count := await ready_count(url, queue)) != expected:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{queue} has {count} messages, not {expected}")
        await asyncio.sleep(0.05)


async def wait_until(predicate, timeout: float = 20.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.05)


async def test_send_and_receive_with_routing_headers(broker):
    _, url, _ = broker
    a, b = her(), her()
    inbound_b = Inbound()
    ta, tb = await started(url, a, Inbound()), await started(url, b, inbound_b)
    try:
        result = await ta.send(outgoing(a, b, "msg-1", b"\x30\x82protected"))
        assert result.outcome == Outcome.DELIVERED, result
        assert result.receipt["queue"] == f"{b}_async"
        await asyncio.wait_for(inbound_b.arrived.wait(), 20)
        body, routing, source = inbound_b.got[0]
        assert body == b"\x30\x82protected"
        assert routing == {
            "from_her": str(a),
            "to_her": str(b),
            "msg_type": "DIALOG_HELSEFAGLIG",
            "msg_id": "msg-1",
            "delivery": "7",
        }
        assert source == "amqp:guest"  # the broker vouches for the publishing user
        # Acknowledged, not merely handed over: with the consumer gone nothing comes back.
        await tb.stop()
        assert await ready_count(url, f"{b}_async") == 0 and await ready_count(url, f"{b}_dlq") == 0
    finally:
        await ta.stop()
        await tb.stop()


async def test_a_message_is_acknowledged_only_after_the_pipeline_took_it(broker):
    _, url, _ = broker
    a, b = her(), her()
    hold = asyncio.Event()

    async def slow(body):
        await hold.wait()
        return PeerReceipt(True, 200, "stored")

    first = Inbound(slow)
    ta, tb = await started(url, a, Inbound()), await started(url, b, first, stop_grace=0.2)
    try:
        assert (await ta.send(outgoing(a, b, "msg-1"))).outcome == Outcome.DELIVERED
        await asyncio.wait_for(first.arrived.wait(), 20)
        # The receiving gateway goes away before its pipeline answered: the message is not lost.
        await tb.stop()
        assert not first.got[1:]
        again = Inbound()
        tb = await started(url, b, again)
        await asyncio.wait_for(again.arrived.wait(), 20)
        assert again.got[0][1]["msg_id"] == "msg-1"
    finally:
        hold.set()
        await ta.stop()
        await tb.stop()


async def test_refused_message_is_reported_to_the_sender_and_dead_lettered(broker):
    _, url, _ = broker
    a, b = her(), her()
    store = MemoryStore()
    await store.open()
    applied = await store.apply(
        Change(
            new_message=MessageRecord(
                Direction.OUTBOUND,
                MessageState.ACCEPTED,
                f"{a}:msg-9",
                1.0,
                "test",
                msg_id="msg-9",
                sender_her=a,
            ),
            new_deliveries=[
                DeliveryRecord(None, b, "PRIM", "amqp", "amqp:", D.SENDING, 9e9),
                DeliveryRecord(None, b + 1, "COP", "https", "https://x", D.SENDING, 9e9),
            ],
            events=[Event(1.0, "gateway", "stored")],
        )
    )
    await store.apply(
        Change(
            delivery_updates=[
                DeliveryUpdate(i, D.SENDING, {"state": D.DELIVERED}) for i in applied.delivery_ids
            ]
        )
    )
    refusing = Inbound(lambda body: PeerReceipt(False, 403, "transport:invalid-certificate: not for us"))
    ta = await started(url, a, Inbound(), store=store)
    tb = await started(url, b, refusing)
    try:
        assert (await ta.send(outgoing(a, b, "msg-9"))).outcome == Outcome.DELIVERED
        await asyncio.wait_for(refusing.arrived.wait(), 20)

        async def dead():
            return [d.state for d in await store.deliveries(applied.message_id)]

        for _ in range(200):
            if (await dead())[0] == D.DEAD:
                break
            await asyncio.sleep(0.05)
        amqp_delivery, https_delivery = await store.deliveries(applied.message_id)
        assert amqp_delivery.state == D.DEAD
        assert amqp_delivery.last_error == "transport:invalid-certificate: not for us"
        assert https_delivery.state == D.DELIVERED  # another transport's delivery is not touched
        event = (await store.events(applied.message_id))[-1]
        assert (event.kind, event.actor) == ("error reported by the receiver", "peer")
        await wait_for_count(url, f"{b}_dlq", 1)
        assert await ready_count(url, f"{b}_async") == 0
    finally:
        await ta.stop()
        await tb.stop()
        await store.close()


async def test_poison_message_is_dead_lettered_after_the_redelivery_limit(broker):
    _, url, _ = broker
    a, b = her(), her()

    def broken(body):
        raise RuntimeError("a bug in the pipeline")

    inbound = Inbound(broken)
    ta, tb = await started(url, a, Inbound()), await started(url, b, inbound, max_redeliveries=2)
    try:
        assert (await ta.send(outgoing(a, b, "poison"))).outcome == Outcome.DELIVERED
        await wait_for_count(url, f"{b}_dlq", 1, 40)
        assert len(inbound.got) == 3  # the first delivery and two redeliveries
        assert await ready_count(url, f"{b}_async") == 0
    finally:
        await ta.stop()
        await tb.stop()


async def test_not_taken_now_goes_back_to_the_queue_and_arrives_later(broker):
    _, url, _ = broker
    a, b = her(), her()
    answers = iter([PeerReceipt(False, 503, "store away", retry_after=0.1)] * 2)
    inbound = Inbound(lambda body: next(answers, PeerReceipt(True, 200, "stored")))
    ta, tb = await started(url, a, Inbound()), await started(url, b, inbound)
    try:
        assert (await ta.send(outgoing(a, b, "later"))).outcome == Outcome.DELIVERED
        await wait_until(lambda: len(inbound.got) == 3)
        # Acknowledged, not merely handed over: with the consumer gone nothing comes back.
        await tb.stop()
        assert await ready_count(url, f"{b}_async") == 0 and await ready_count(url, f"{b}_dlq") == 0
    finally:
        await ta.stop()
        await tb.stop()


async def test_outcomes_when_there_is_nowhere_to_send(broker):
    server, url, _ = broker
    a = her()
    ta = await started(url, a, Inbound())
    try:
        missing = await ta.send(outgoing(a, her(), "m1"))  # nobody declared that queue set
        assert missing.outcome == Outcome.TRANSIENT and "no queue" in missing.detail
        bad = await ta.send(outgoing(a, her(), "m2", endpoint="https://peer.example/peer/v1/messages"))
        assert bad.outcome == Outcome.PERMANENT
        named = await ta.send(outgoing(a, her(), "m3", endpoint=f"amqp:{a}_dlq"))
        assert named.outcome == Outcome.DELIVERED and named.receipt["queue"] == f"{a}_dlq"
    finally:
        await ta.stop()
    down = AmqpTransport(
        url=url.replace(str(server.port), str(_closed_port())), her_ids=[a], reconnect_min=0.05
    )
    await down.start(Inbound())
    try:
        result = await down.send(outgoing(a, her(), "m4"))
        assert result.outcome == Outcome.TRANSIENT and "not connected" in result.detail
    finally:
        await down.stop()


def _closed_port() -> int:
    from servers import free_port

    return free_port()


def test_queue_names_follow_the_receivers_organisation():
    transport = AmqpTransport(
        url="amqp://guest:guest@127.0.0.1/", queue_owner=lambda her_id: her_id // 100 * 100
    )
    assert transport.queue_for(outgoing(1, 9203001, "m")) == "9203000_async"
    assert transport.queue_for(outgoing(1, 9203001, "m", endpoint="amqp")) == "9203000_async"
    assert transport.queue_for(outgoing(1, 9203001, "m", endpoint="amqp:{her}_test")) == "9203000_test"
    assert transport.queue_for(outgoing(1, 9203001, "m", endpoint="hub_in")) == "hub_in"
    for bad in ("amqp://host/queue", "amq.direct", "queue with spaces", "x" * 300):
        with pytest.raises(ValueError):
            transport.queue_for(outgoing(1, 9203001, "m", endpoint=bad))


def test_error_conditions_follow_helsenorge():
    assert error_condition(PeerReceipt(False, 403, "transport:revoked-certificate: revoked 2026-01-01")) == (
        "transport:revoked-certificate",
        "revoked 2026-01-01",
    )
    assert error_condition(PeerReceipt(False, 403, "abuse:spoofing-attack: sender 1 is not 2"))[0] == (
        "abuse:spoofing-attack"
    )
    assert error_condition(PeerReceipt(False, 400, "unreadable")) == (
        "transport:not-well-formed-xml",
        "unreadable",
    )


async def test_a_late_error_report_does_not_undo_an_apprec():
    store = MemoryStore()
    await store.open()
    applied = await store.apply(
        Change(
            new_message=MessageRecord(Direction.OUTBOUND, MessageState.ACCEPTED, "k", 1.0, "t", msg_id="m1"),
            new_deliveries=[DeliveryRecord(None, 2002, "PRIM", "amqp", "", D.APP_OK, 9e9)],
        )
    )
    report = ErrorReport("m1", 2002, "transport:internal-error", "late")
    assert await record_error_report(store, "amqp", report, lambda h: h, now=5.0) == 1
    (d,) = await store.deliveries(applied.message_id)
    assert d.state == D.APP_OK
    assert (await store.events(applied.message_id))[-1].kind == "error reported by the receiver"
    assert await record_error_report(store, "amqp", ErrorReport("other", 2002, "x", "y"), lambda h: h) == 0


async def test_a_store_outage_holds_the_message_instead_of_dead_lettering_it(broker):
    _, url, _ = broker
    a, b = her(), her()
    outage = iter([StoreUnavailable("database restarting", retry_after=0.05)] * 3)

    def answer(body):
        failure = next(outage, None)
        if failure is not None:
            raise failure
        return PeerReceipt(True, 200, "stored")

    inbound = Inbound(answer)
    # One redelivery allowed: had each failure gone back to the queue, it would be a dead letter now.
    ta, tb = await started(url, a, Inbound()), await started(url, b, inbound, max_redeliveries=1)
    try:
        assert (await ta.send(outgoing(a, b, "held"))).outcome == Outcome.DELIVERED
        await wait_until(lambda: len(inbound.got) == 4)
        await tb.stop()
        assert await ready_count(url, f"{b}_async") == 0 and await ready_count(url, f"{b}_dlq") == 0
    finally:
        await ta.stop()
        await tb.stop()
