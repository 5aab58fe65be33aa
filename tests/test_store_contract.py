"""One suite for every Store adapter: what the core may rely on, whichever store it runs on.

Add a backend to BACKENDS (e.g. "postgres") and the whole suite runs against it. Backends that
write to disk also run the durability tests (reopen, SIGKILL); those that group commits run the
group-commit test.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
import zlib
from pathlib import Path

import pytest

from adapters.store_memory import MemoryStore
from adapters.store_sqlite import MIGRATIONS, SqliteStore
from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import (
    Change,
    Conflict,
    DeliveryRecord,
    DeliveryUpdate,
    Direction,
    Event,
    MessageRecord,
    Query,
)

REPO = Path(__file__).resolve().parent.parent
NOW = 1_800_000_000.0
D = DeliveryState


class MemoryBackend:
    durable = False
    groups_commits = False

    def __init__(self, tmp_path: Path):
        self._store = MemoryStore()

    def new(self):
        # "Reopening" a memory store is the same instance: nothing outlives it.
        return self._store


class SqliteBackend:
    durable = True
    groups_commits = True

    def __init__(self, tmp_path: Path):
        self.path = tmp_path / "komut.db"

    def new(self):
        return SqliteStore(self.path)

    def child_store(self) -> tuple[str, str]:
        """How a separate process opens this same store: an import line and an expression."""
        return "from adapters.store_sqlite import SqliteStore", f"SqliteStore({str(self.path)!r})"


class PostgresBackend:
    """A fresh database on the session's throwaway PostgreSQL (tests/servers.py) per test."""

    durable = True
    groups_commits = False  # PostgreSQL groups WAL flushes itself; the adapter has nothing to count

    def __init__(self, tmp_path: Path):
        import servers

        self.dsn = servers.postgres().new_database()

    def new(self):
        from adapters.store_postgres import PostgresStore

        return PostgresStore(self.dsn)

    def child_store(self) -> tuple[str, str]:
        return "from adapters.store_postgres import PostgresStore", f"PostgresStore({self.dsn!r})"


BACKENDS = {"memory": MemoryBackend, "sqlite": SqliteBackend, "postgres": PostgresBackend}


@pytest.fixture(params=list(BACKENDS))
def backend(request, tmp_path):
    return BACKENDS[request.param](tmp_path)


@pytest.fixture
async def store(backend):
    s = backend.new()
    await s.open()
    yield s
    await s.close()


# Durability and group commit only mean something for stores that have them: those tests run on
# exactly those backends instead of skipping on the others.
@pytest.fixture(params=[name for name, b in BACKENDS.items() if b.durable])
def durable_backend(request, tmp_path):
    return BACKENDS[request.param](tmp_path)


@pytest.fixture(params=[name for name, b in BACKENDS.items() if b.groups_commits])
def grouping_backend(request, tmp_path):
    return BACKENDS[request.param](tmp_path)


# --- builders ------------------------------------------------------------------------------------


def message(
    key: str,
    *,
    at: float = NOW,
    msg_id: str | None = None,
    msg_type: str = "DIALOG_HELSEFAGLIG",
    sender: int | None = 1001,
    receiver: int | None = 2002,
    state: MessageState = MessageState.ACCEPTED,
    direction: Direction = Direction.OUTBOUND,
    payload: bytes | None = b"<Dialogmelding>hei</Dialogmelding>",
    names: tuple[str, str] = ("Bakkevik legekontor", "Ørnes sykehjem"),
    conversation: str | None = None,
) -> MessageRecord:
    return MessageRecord(
        direction=direction,
        state=state,
        dedupe_key=f"{sender}:{key}",
        received_at=at,
        source="api:test",
        msg_id=msg_id or key,
        msg_type=msg_type,
        sender_her=sender,
        receiver_her=receiver,
        conversation=conversation or msg_id or key,
        size=len(payload or b""),
        payload=payload,
        summary={"sender_name": names[0], "receiver_name": names[1], "type_text": "Helsefaglig dialog"},
        problems=[],
    )


def delivery(
    receiver: int = 2002,
    *,
    transport: str = "https",
    state: DeliveryState = D.QUEUED,
    fifo_key: str | None = None,
    expires_at: float = NOW + 86400,
    next_attempt_at: float | None = None,
    expects_apprec: bool = True,
    apprec_due_at: float | None = None,
    role: str = "PRIM",
) -> DeliveryRecord:
    return DeliveryRecord(
        message_id=None,
        receiver_her=receiver,
        role=role,
        transport=transport,
        endpoint=f"https://peer.example/{receiver}",
        state=state,
        expires_at=expires_at,
        expects_apprec=expects_apprec,
        next_attempt_at=next_attempt_at,
        apprec_due_at=apprec_due_at,
        fifo_key=fifo_key,
    )


def intake(record: MessageRecord, deliveries: list[DeliveryRecord] = (), at: float | None = None) -> Change:
    at = record.received_at if at is None else at
    events = [Event(at, "gateway", "stored", to_state=MessageState.RECEIVED, reason=f"from {record.source}")]
    events += [
        Event(at, "gateway", "routed to a receiver", to_state=d.state, new_delivery_index=i)
        for i, d in enumerate(deliveries)
    ]
    return Change(new_message=record, new_deliveries=list(deliveries), events=events)


async def submit(store, key: str, *deliveries: DeliveryRecord, **kw):
    if not deliveries:
        deliveries = (delivery(),)
    return await store.apply(intake(message(key, **kw), list(deliveries)))


async def move(store, delivery_id: int, source, target, at: float = NOW, **fields):
    return await store.apply(
        Change(
            delivery_updates=[DeliveryUpdate(delivery_id, source, {"state": target, **fields})],
            events=[Event(at, "peer", "moved", delivery_id=delivery_id, from_state=source, to_state=target)],
        )
    )


# --- apply ---------------------------------------------------------------------------------------


async def test_apply_inserts_message_deliveries_and_events_bound_to_them(store):
    record = message("m1", payload=b"\x00\xffnot text\n" * 3)
    record.problems = [{"code": "X99", "text": "a problem", "nested": {"list": [1, 2]}}]
    change = intake(record, [delivery(2002), delivery(3003, role="COP")])
    applied = await store.apply(change)

    assert applied.created
    assert applied.message_id is not None and len(applied.delivery_ids) == 2
    assert len(set(applied.delivery_ids)) == 2

    got = await store.get_message(applied.message_id)
    assert got.id == applied.message_id
    assert got.dedupe_key == "1001:m1" and got.msg_id == "m1" and got.direction == Direction.OUTBOUND
    assert got.state == MessageState.ACCEPTED and got.sender_her == 1001 and got.receiver_her == 2002
    assert got.summary == record.summary and got.problems == record.problems
    assert got.payload is None  # only when asked for
    assert (await store.get_message(applied.message_id, with_payload=True)).payload == record.payload

    deliveries = await store.deliveries(applied.message_id)
    assert [d.id for d in deliveries] == applied.delivery_ids
    assert [d.receiver_her for d in deliveries] == [2002, 3003]
    assert all(d.message_id == applied.message_id and d.state == D.QUEUED for d in deliveries)
    assert deliveries[1].role == "COP" and deliveries[0].expects_apprec is True
    assert deliveries[0].updated_at == NOW  # the change's time, not the store's clock

    events = await store.events(applied.message_id)
    assert [e.kind for e in events] == ["stored", "routed to a receiver", "routed to a receiver"]
    assert all(e.message_id == applied.message_id for e in events)
    assert [e.delivery_id for e in events] == [None, *applied.delivery_ids]
    assert events[0].to_state == "received" and events[0].reason == "from api:test"
    assert events[0].id < events[1].id < events[2].id


async def test_records_are_copies(store):
    record = message("m1")
    applied = await store.apply(intake(record, [delivery()]))
    record.summary["sender_name"] = "changed by the caller afterwards"
    got = await store.get_message(applied.message_id)
    got.summary["receiver_name"] = "changed by a reader"
    again = await store.get_message(applied.message_id)
    assert again.summary["sender_name"] == "Bakkevik legekontor"
    assert again.summary["receiver_name"] == "Ørnes sykehjem"


async def test_message_without_payload_and_empty_payload(store):
    a = await submit(store, "none", payload=None)
    b = await submit(store, "empty", payload=b"")
    assert (await store.get_message(a.message_id, with_payload=True)).payload is None
    assert (await store.get_message(b.message_id, with_payload=True)).payload == b""


async def test_large_payload_round_trip(store):
    payload = os.urandom(300_000) + b"<xml/>" * 50_000
    applied = await submit(store, "big", payload=payload)
    assert (await store.get_message(applied.message_id, with_payload=True)).payload == payload
    (claimed,) = await store.claim("https", NOW, 1, "n", 30)
    assert claimed.message.payload == payload


async def test_dedupe_returns_the_original_and_writes_nothing(store):
    first = await submit(store, "m1", delivery(2002), delivery(3003))
    other = await submit(store, "m2")
    events_before = await store.events(first.message_id)
    other_events_before = await store.events(other.message_id)

    again = intake(message("m1", payload=b"another body"), [delivery(4004)])
    # An event about another message rides along: it must not be written either.
    again.events.append(Event(NOW + 5, "gateway", "AppRec sent", message_id=other.message_id))
    applied = await store.apply(again)

    assert not applied.created
    assert applied.message_id == first.message_id
    assert applied.delivery_ids == first.delivery_ids
    assert await store.events(first.message_id) == events_before
    assert await store.events(other.message_id) == other_events_before
    assert len(await store.deliveries(first.message_id)) == 2
    assert (await store.get_message(first.message_id, with_payload=True)).payload != b"another body"
    assert len(await store.search(Query())) == 2


async def test_find_message_and_find_by_msg_id(store):
    out = await submit(store, "m1", direction=Direction.OUTBOUND)
    back = await store.apply(
        intake(message("m1", sender=5005, direction=Direction.INBOUND), [delivery(1001, transport="folder")])
    )
    assert (await store.find_message("1001:m1")).id == out.message_id
    assert await store.find_message("nope") is None
    assert [m.id for m in await store.find_by_msg_id("m1")] == [out.message_id, back.message_id]
    assert [m.id for m in await store.find_by_msg_id("m1", Direction.INBOUND)] == [back.message_id]
    assert await store.find_by_msg_id("m1", Direction.OUTBOUND) == [await store.get_message(out.message_id)]
    assert await store.find_by_msg_id("unknown") == []
    assert await store.get_message(999_999) is None


async def test_conflict_fails_the_whole_change_and_writes_nothing(store):
    base = await submit(store, "m1", delivery(2002), delivery(3003))
    d1, d2 = base.delivery_ids
    events_before = await store.events(base.message_id)

    # A new message, a good update, then one whose expected state is stale.
    change = intake(message("m2"), [delivery()])
    change.delivery_updates = [
        DeliveryUpdate(d1, D.QUEUED, {"state": D.SENDING, "attempts": 7}),
        DeliveryUpdate(d2, D.SENDING, {"state": D.DELIVERED}),
    ]
    change.events.append(Event(NOW, "worker", "x", message_id=base.message_id, delivery_id=d1))
    with pytest.raises(Conflict):
        await store.apply(change)

    assert await store.find_message("1001:m2") is None
    assert [(d.state, d.attempts) for d in await store.deliveries(base.message_id)] == [
        (D.QUEUED, 0),
        (D.QUEUED, 0),
    ]
    assert await store.events(base.message_id) == events_before
    assert [m.id for m in await store.search(Query())] == [base.message_id]
    # The store is still usable afterwards and the same change without the stale part goes in.
    change.delivery_updates = change.delivery_updates[:1]
    assert (await store.apply(change)).created
    assert (await store.deliveries(base.message_id))[0].attempts == 7


async def test_a_failing_change_does_not_poison_others_committed_with_it(store):
    base = await submit(store, "m0")
    (d1,) = base.delivery_ids

    async def good(i):
        return await submit(store, f"good{i}")

    async def bad():
        await store.apply(Change(delivery_updates=[DeliveryUpdate(d1, D.DELIVERED, {"state": D.DEAD})]))

    async def broken():
        # A bug in the caller (an event about a delivery the change does not have) fails alone too.
        change = intake(message("broken"), [delivery()])
        change.events.append(Event(NOW, "gateway", "x", new_delivery_index=5))
        await store.apply(change)

    results = await asyncio.gather(
        *(good(i) for i in range(30)),
        bad(),
        *(good(i) for i in range(30, 45)),
        broken(),
        *(good(i) for i in range(45, 60)),
        return_exceptions=True,
    )
    assert isinstance(results[30], Conflict)
    assert isinstance(results[46], IndexError)
    assert all(r.created for i, r in enumerate(results) if i not in (30, 46))
    assert len(await store.search(Query(limit=1000))) == 61
    assert await store.find_message("1001:broken") is None


async def test_update_existing_message_and_deliveries(store):
    base = await submit(store, "m1")
    (d1,) = base.delivery_ids
    await store.apply(
        Change(
            message_id=base.message_id,
            message_fields={
                "state": MessageState.REJECTED,
                "problems": [{"code": "E21"}],
                "summary": {"sender_name": "Nytt navn"},
            },
            delivery_updates=[
                DeliveryUpdate(
                    d1, D.QUEUED, {"state": D.RETRY_WAIT, "next_attempt_at": NOW + 60, "last_error": "503"}
                )
            ],
            events=[Event(NOW + 30, "worker", "transient failure", delivery_id=d1)],
        )
    )
    got = await store.get_message(base.message_id)
    assert got.state == MessageState.REJECTED and got.problems == [{"code": "E21"}]
    (d,) = await store.deliveries(base.message_id)
    assert (d.state, d.next_attempt_at, d.last_error, d.updated_at) == (
        D.RETRY_WAIT,
        NOW + 60,
        "503",
        NOW + 30,
    )
    events = await store.events(base.message_id)
    # An event without message_id belongs to the change's message.
    assert events[-1].kind == "transient failure" and events[-1].message_id == base.message_id
    assert [m.id for m in await store.search(Query(text="nytt navn"))] == [base.message_id]
    assert await store.search(Query(text="Bakkevik")) == []

    # Without expect_state the update applies whatever the state.
    await store.apply(Change(delivery_updates=[DeliveryUpdate(d1, None, {"state": D.CANCELLED})]))
    assert (await store.deliveries(base.message_id))[0].state == D.CANCELLED


async def test_a_change_may_add_deliveries_and_events_to_an_existing_message(store):
    base = await submit(store, "m1")
    applied = await store.apply(
        Change(
            message_id=base.message_id,
            new_deliveries=[delivery(7007)],
            events=[Event(NOW, "operator", "copy added", new_delivery_index=0)],
        )
    )
    assert applied.message_id == base.message_id and len(applied.delivery_ids) == 1
    deliveries = await store.deliveries(base.message_id)
    assert [d.receiver_her for d in deliveries] == [2002, 7007]
    assert (await store.events(base.message_id))[-1].delivery_id == applied.delivery_ids[0]


async def test_has_event_asks_for_one_kind_of_event_of_a_message_or_one_delivery(store):
    first = await store.apply(intake(message("m1"), [delivery(2002), delivery(3003, role="COP")]))
    other = await submit(store, "m2")
    one, two = first.delivery_ids
    assert not await store.has_event(first.message_id, "read")
    await store.apply(
        Change(events=[Event(NOW, "peer", "read", message_id=first.message_id, delivery_id=two)])
    )

    assert await store.has_event(first.message_id, "read")
    assert await store.has_event(first.message_id, "read", two)
    assert not await store.has_event(first.message_id, "read", one)  # the other delivery's
    assert not await store.has_event(other.message_id, "read")  # another message's
    assert await store.has_event(first.message_id, "stored")  # an event of the message itself
    assert not await store.has_event(first.message_id, "stored", one)
    assert not await store.has_event(10**9, "read")  # no such message


async def test_payload_can_be_replaced_or_dropped_by_message_fields(store):
    base = await submit(store, "m1")
    await store.apply(Change(message_id=base.message_id, message_fields={"payload": b"<new/>"}))
    assert (await store.get_message(base.message_id, with_payload=True)).payload == b"<new/>"
    await store.apply(Change(message_id=base.message_id, message_fields={"payload": None}))
    assert (await store.get_message(base.message_id, with_payload=True)).payload is None


async def test_bad_changes_are_refused(store):
    base = await submit(store, "m1")
    with pytest.raises(ValueError):
        await store.apply(Change(message_id=base.message_id, message_fields={"no_such_column": 1}))
    with pytest.raises(ValueError):
        await store.apply(
            Change(delivery_updates=[DeliveryUpdate(base.delivery_ids[0], None, {"bogus; --": 1})])
        )
    with pytest.raises(LookupError):
        await store.apply(Change(delivery_updates=[DeliveryUpdate(999_999, D.QUEUED, {"state": D.SENDING})]))
    with pytest.raises(LookupError):
        await store.apply(Change(message_id=999_999, message_fields={"state": MessageState.REJECTED}))
    assert [e.kind for e in await store.events(base.message_id)] == ["stored", "routed to a receiver"]


# --- claim ---------------------------------------------------------------------------------------


async def test_claim_oldest_first_with_lease_event_and_payload(store):
    ids = [(await submit(store, f"m{i}", payload=f"<body{i}/>".encode())).delivery_ids[0] for i in range(3)]
    claimed = await store.claim("https", NOW + 1, 2, "node-a", 30)
    assert [c.delivery.id for c in claimed] == ids[:2]
    for c in claimed:
        assert c.delivery.state == D.SENDING
        assert (c.delivery.lease_owner, c.delivery.lease_until) == ("node-a", NOW + 31)
        assert c.message.id == c.delivery.message_id
        assert c.message.payload == f"<body{ids.index(c.delivery.id)}/>".encode()
        attempt = (await store.events(c.message.id))[-1]
        assert (attempt.kind, attempt.actor, attempt.from_state, attempt.to_state) == (
            "attempt",
            "worker",
            "queued",
            "sending",
        )
        assert attempt.delivery_id == c.delivery.id and attempt.at == NOW + 1
    assert [c.delivery.id for c in await store.claim("https", NOW + 1, 10, "node-a", 30)] == ids[2:]
    assert await store.claim("https", NOW + 1, 10, "node-a", 30) == []
    assert (await store.counts())["sending"] == 3


async def test_claim_filters_transport_and_excluded_receivers(store):
    a = await submit(store, "m1", delivery(2002, transport="folder"))
    b = await submit(store, "m2", delivery(3003))
    c = await submit(store, "m3", delivery(4004))
    claimed = await store.claim("https", NOW, 10, "n", 30, exclude_receivers=[3003])
    assert [x.delivery.id for x in claimed] == c.delivery_ids
    assert [x.delivery.id for x in await store.claim("https", NOW, 10, "n", 30)] == b.delivery_ids
    assert [x.delivery.id for x in await store.claim("folder", NOW, 10, "n", 30)] == a.delivery_ids
    assert await store.claim("https", NOW, 0, "n", 30) == []


async def test_one_message_to_several_receivers_is_claimed_per_delivery(store):
    applied = await submit(store, "m1", delivery(2002), delivery(3003, role="COP"))
    claimed = await store.claim("https", NOW, 10, "n", 30)
    assert [c.delivery.id for c in claimed] == applied.delivery_ids
    assert all(c.message.payload == b"<Dialogmelding>hei</Dialogmelding>" for c in claimed)


async def test_retry_wait_is_not_due_before_next_attempt_at(store):
    applied = await submit(store, "m1", delivery(state=D.RETRY_WAIT, next_attempt_at=NOW + 60))
    assert await store.claim("https", NOW + 59.9, 10, "n", 30) == []
    (c,) = await store.claim("https", NOW + 60, 10, "n", 30)
    assert c.delivery.id == applied.delivery_ids[0]
    assert (await store.events(applied.message_id))[-1].from_state == "retry-wait"
    # Other states are never claimed.
    await submit(store, "m2", delivery(state=D.DELIVERED))
    await submit(store, "m3", delivery(state=D.DEAD))
    assert await store.claim("https", NOW + 999, 10, "n", 30) == []


async def test_fifo_per_receiver_and_key(store):
    first = (await submit(store, "m1", delivery(2002, fifo_key="conv-A"))).delivery_ids[0]
    second = (await submit(store, "m2", delivery(2002, fifo_key="conv-A"))).delivery_ids[0]
    other_key = (await submit(store, "m3", delivery(2002, fifo_key="conv-B"))).delivery_ids[0]
    other_receiver = (await submit(store, "m4", delivery(3003, fifo_key="conv-A"))).delivery_ids[0]
    no_fifo = (await submit(store, "m5", delivery(2002))).delivery_ids[0]

    claimed = [c.delivery.id for c in await store.claim("https", NOW, 10, "n", 30)]
    assert claimed == [first, other_key, other_receiver, no_fifo]
    # While the first is sending, the second waits.
    assert await store.claim("https", NOW, 10, "n", 30) == []
    # A retry-wait that is not due yet still holds the line.
    await move(store, first, D.SENDING, D.RETRY_WAIT, next_attempt_at=NOW + 100)
    assert await store.claim("https", NOW + 1, 10, "n", 30) == []
    (again,) = await store.claim("https", NOW + 100, 10, "n", 30)
    assert again.delivery.id == first
    await move(store, first, D.SENDING, D.DELIVERED)
    assert [c.delivery.id for c in await store.claim("https", NOW + 100, 10, "n", 30)] == [second]


async def test_fifo_holds_back_later_ones_even_across_claim_batches(store):
    ids = [(await submit(store, f"m{i}", delivery(2002, fifo_key="k"))).delivery_ids[0] for i in range(4)]
    order = []
    for _ in range(4):
        (c,) = await store.claim("https", NOW, 10, "n", 30)
        order.append(c.delivery.id)
        await move(store, c.delivery.id, D.SENDING, D.DEAD)
    assert order == ids


async def test_release_expired_leases(store):
    applied = await submit(store, "m1")
    (c,) = await store.claim("https", NOW, 1, "node-a", 30)
    assert await store.release_expired_leases(NOW + 29) == 0
    assert await store.release_expired_leases(NOW + 30) == 1
    (d,) = await store.deliveries(applied.message_id)
    assert (d.state, d.lease_owner, d.lease_until, d.updated_at) == (D.QUEUED, None, None, NOW + 30)
    last = (await store.events(applied.message_id))[-1]
    assert (last.kind, last.actor, last.from_state, last.to_state) == (
        "resumed after restart",
        "gateway",
        "sending",
        "queued",
    )
    assert "node-a" in last.reason
    assert await store.release_expired_leases(NOW + 1000) == 0
    (again,) = await store.claim("https", NOW + 31, 1, "node-b", 30)
    assert again.delivery.id == c.delivery.id and again.delivery.lease_owner == "node-b"


async def test_release_at_restart_takes_live_leases_but_stamps_the_present(store):
    # A single node starting up takes back all of its leases, live ones too; the events and rows
    # must say when that happened, not the future moment used as the threshold.
    applied = await submit(store, "m1")
    await store.claim("https", NOW, 1, "node-a", 30)
    assert await store.release_expired_leases(NOW + 5, expired_by=NOW + 31) == 1
    (d,) = await store.deliveries(applied.message_id)
    assert (d.state, d.updated_at) == (D.QUEUED, NOW + 5)
    assert (await store.events(applied.message_id))[-1].at == NOW + 5


# --- timers' queries -----------------------------------------------------------------------------


async def test_due_by_expiry_and_apprec_deadline(store):
    a = (await submit(store, "a", delivery(expires_at=NOW + 10))).delivery_ids[0]
    b = (
        await submit(store, "b", delivery(state=D.RETRY_WAIT, expires_at=NOW + 5, next_attempt_at=NOW))
    ).delivery_ids[0]
    c = (await submit(store, "c", delivery(expires_at=NOW + 20))).delivery_ids[0]
    await submit(store, "d", delivery(state=D.DELIVERED, expires_at=NOW + 1))  # not in the asked states
    e = (await submit(store, "e", delivery(state=D.DELIVERED, apprec_due_at=NOW + 7))).delivery_ids[0]
    await submit(store, "f", delivery(state=D.DELIVERED, apprec_due_at=None, expects_apprec=False))

    waiting = (D.QUEUED, D.RETRY_WAIT)
    assert [d.id for d in await store.due(NOW + 10, waiting, "expires_at", 100)] == [b, a]
    assert [d.id for d in await store.due(NOW + 100, waiting, "expires_at", 2)] == [b, a]
    assert [d.id for d in await store.due(NOW + 100, waiting, "expires_at", 100)] == [b, a, c]
    assert await store.due(NOW + 4, waiting, "expires_at", 100) == []
    assert [d.id for d in await store.due(NOW + 7, (D.DELIVERED,), "apprec_due_at", 100)] == [e]
    assert await store.due(NOW + 6.9, (D.DELIVERED,), "apprec_due_at", 100) == []
    with pytest.raises(ValueError):
        await store.due(NOW, waiting, "state; DROP TABLE deliveries", 10)


async def test_counts(store):
    a = await submit(store, "a", delivery(), delivery(3003))
    b = await submit(store, "b", delivery(state=D.DEAD))
    counts = await store.counts()
    assert counts["queued"] == 2 and counts["dead"] == 1 and counts["app-ok"] == 0
    assert set(counts) == {str(s) for s in DeliveryState}

    # They stay exact through claims, releases, updates, a failed change and a duplicate.
    await store.claim("https", NOW, 1, "n", 30)
    await store.release_expired_leases(NOW + 31)
    await store.claim("https", NOW + 40, 5, "n", 30)
    await move(store, a.delivery_ids[0], D.SENDING, D.DELIVERED)
    await move(store, b.delivery_ids[0], D.DEAD, D.QUEUED)
    await store.apply(Change(delivery_updates=[DeliveryUpdate(a.delivery_ids[1], None, {"attempts": 3})]))
    with pytest.raises(Conflict):
        await store.apply(
            Change(
                delivery_updates=[
                    DeliveryUpdate(a.delivery_ids[1], D.SENDING, {"state": D.RETRY_WAIT}),
                    DeliveryUpdate(b.delivery_ids[0], D.DEAD, {"state": D.CANCELLED}),
                ]
            )
        )
    await submit(store, "a", delivery(), delivery(), delivery())
    recount = {str(s): 0 for s in DeliveryState}
    for m in await store.search(Query()):
        for d in await store.deliveries(m.id):
            recount[str(d.state)] += 1
    assert await store.counts() == recount
    assert recount["delivered"] == 1 and recount["sending"] == 1 and recount["queued"] == 1


# --- search --------------------------------------------------------------------------------------


async def fill_log(store) -> None:
    """A small varied log: three parties, three types, copies, assorted states, one a minute."""
    parties = [(1001, "Bakkevik legekontor"), (2002, "Ørnes sykehjem"), (3003, "Åsgård hjemmetjeneste")]
    types = ["DIALOG_HELSEFAGLIG", "PLO_INNLEGGELSESRAPPORT", "APPREC"]
    rng = random.Random(7)
    for i in range(60):
        (s, sname), (r, rname) = rng.sample(parties, 2)
        copy = rng.choice([None, None, 4004])
        deliveries = [delivery(r, state=rng.choice([D.QUEUED, D.DELIVERED, D.APP_OK, D.DEAD]))]
        if copy:
            deliveries.append(delivery(copy, role="COP", state=D.QUEUED))
        await store.apply(
            intake(
                message(
                    f"msg-{i:03d}",
                    at=NOW + i * 60,
                    msg_type=types[i % 3],
                    sender=s,
                    receiver=r,
                    names=(sname, rname),
                    state=MessageState.REJECTED if i % 11 == 0 else MessageState.ACCEPTED,
                    direction=Direction.INBOUND if i % 2 else Direction.OUTBOUND,
                    conversation=f"conv-{i % 7}",
                ),
                deliveries,
            )
        )


def newest_first(records, predicate, limit=100):
    return [m.id for m in sorted(records, key=lambda m: -m.id) if predicate(m)][:limit]


async def test_search_filters(store):
    await fill_log(store)
    everything = await store.search(Query(limit=1000))
    assert len(everything) == 60
    assert [m.id for m in everything] == sorted((m.id for m in everything), reverse=True)
    assert all(m.payload is None for m in everything)
    deliveries = {m.id: await store.deliveries(m.id) for m in everything}

    async def check(query: Query, predicate):
        got = [m.id for m in await store.search(query)]
        assert got == newest_first(everything, predicate, query.limit), query

    await check(Query(), lambda m: True)
    await check(Query(limit=7), lambda m: True)
    await check(Query(sender_her=1001), lambda m: m.sender_her == 1001)
    await check(Query(receiver_her=2002), lambda m: m.receiver_her == 2002)
    await check(Query(msg_type="APPREC"), lambda m: m.msg_type == "APPREC")
    await check(Query(conversation="conv-3"), lambda m: m.conversation == "conv-3")
    await check(Query(msg_id="msg-017"), lambda m: m.msg_id == "msg-017")
    await check(Query(direction=Direction.INBOUND), lambda m: m.direction == Direction.INBOUND)
    await check(Query(state="rejected"), lambda m: m.state == MessageState.REJECTED)
    await check(Query(state="dead"), lambda m: any(d.state == D.DEAD for d in deliveries[m.id]))
    await check(Query(state="queued", limit=5), lambda m: any(d.state == D.QUEUED for d in deliveries[m.id]))
    assert await store.search(Query(state="no-such-state")) == []
    # since inclusive, until exclusive
    await check(Query(since=NOW + 600, until=NOW + 1200), lambda m: NOW + 600 <= m.received_at < NOW + 1200)
    await check(Query(since=NOW + 3000), lambda m: m.received_at >= NOW + 3000)
    await check(Query(until=NOW + 300), lambda m: m.received_at < NOW + 300)
    await check(
        Query(msg_type="DIALOG_HELSEFAGLIG", since=NOW + 600, until=NOW + 2400),
        lambda m: m.msg_type == "DIALOG_HELSEFAGLIG" and NOW + 600 <= m.received_at < NOW + 2400,
    )

    def involves(her):
        return lambda m: (
            her in (m.sender_her, m.receiver_her) or any(d.receiver_her == her for d in deliveries[m.id])
        )

    await check(Query(her_id=3003), involves(3003))
    await check(Query(her_id=4004), involves(4004))  # only ever a copy receiver
    await check(Query(text="4004"), involves(4004))
    await check(Query(text=" msg-042 "), lambda m: m.msg_id == "msg-042")
    await check(Query(text="ørnes"), lambda m: "Ørnes sykehjem" in m.summary.values())
    await check(Query(text="ÅSGÅRD HJEMME"), lambda m: "Åsgård hjemmetjeneste" in m.summary.values())
    await check(Query(text="legekontor", limit=4), lambda m: "Bakkevik legekontor" in m.summary.values())
    assert await store.search(Query(text="nobody by that name")) == []
    assert await store.search(Query(text="%")) == []
    # Filters combine with AND.
    await check(
        Query(text="ørnes", msg_type="APPREC", direction=Direction.OUTBOUND),
        lambda m: (
            "Ørnes sykehjem" in m.summary.values() and m.msg_type == "APPREC" and m.direction == "outbound"
        ),
    )
    await check(
        Query(her_id=1001, state="app-ok", receiver_her=2002),
        lambda m: (
            m.receiver_her == 2002
            and involves(1001)(m)
            and any(d.state == D.APP_OK for d in deliveries[m.id])
        ),
    )
    await check(
        Query(text="Bakkevik", her_id=3003),
        lambda m: "Bakkevik legekontor" in m.summary.values() and involves(3003)(m),
    )
    await check(
        Query(state="queued", msg_type="APPREC", since=NOW + 120),
        lambda m: (
            m.msg_type == "APPREC"
            and m.received_at >= NOW + 120
            and any(d.state == D.QUEUED for d in deliveries[m.id])
        ),
    )


@pytest.mark.parametrize(
    "query",
    [
        Query(limit=7),
        Query(her_id=2002, limit=4),
        Query(text="sykehjem", limit=5),
        Query(state="queued", limit=3),
        Query(msg_type="APPREC", since=NOW + 300, limit=4),
        Query(receiver_her=3003, direction=Direction.OUTBOUND, limit=2),
    ],
    ids=["all", "her", "text", "delivery-state", "type-time", "receiver"],
)
async def test_keyset_pagination(store, query):
    await fill_log(store)
    everything = [m.id for m in await store.search(Query(**{**query.__dict__, "limit": 1000}))]
    assert everything, "the filter should match something"
    pages, before = [], None
    while True:
        page = await store.search(Query(**{**query.__dict__, "before_id": before}))
        assert len(page) <= query.limit
        if not page:
            break
        pages.append([m.id for m in page])
        before = page[-1].id
    assert [i for page in pages for i in page] == everything
    assert all(len(p) == query.limit for p in pages[:-1])


async def test_time_ranges_are_exact_when_arrival_and_received_at_disagree(store):
    # Enough messages for several id blocks, with received_at shuffled against arrival order.
    rng = random.Random(3)
    offsets = list(range(2600))
    rng.shuffle(offsets)
    types = ["A", "B", "C", "D"]
    for first in range(0, len(offsets), 200):
        await asyncio.gather(
            *(
                store.apply(
                    intake(
                        message(f"t{i}", at=NOW + offsets[i], msg_type=types[i % 4], payload=None),
                        [delivery(state=D.DEAD if i % 9 == 0 else D.APP_OK)],
                    )
                )
                for i in range(first, min(first + 200, len(offsets)))
            )
        )
    everything = []
    before = None
    while page := await store.search(Query(limit=1000, before_id=before)):
        everything += page
        before = page[-1].id
    assert len(everything) == 2600

    async def check(query, predicate):
        expected = [m.id for m in everything if predicate(m)]
        got, before = [], None
        while page := await store.search(Query(**{**query.__dict__, "before_id": before})):
            got += [m.id for m in page]
            before = page[-1].id
        assert got == expected, query

    await check(
        Query(since=NOW + 100, until=NOW + 140, limit=7), lambda m: NOW + 100 <= m.received_at < NOW + 140
    )
    await check(Query(since=NOW + 2590, limit=3), lambda m: m.received_at >= NOW + 2590)
    await check(Query(until=NOW + 5, limit=2), lambda m: m.received_at < NOW + 5)
    await check(
        Query(msg_type="C", since=NOW + 1000, until=NOW + 1400, limit=25),
        lambda m: m.msg_type == "C" and NOW + 1000 <= m.received_at < NOW + 1400,
    )
    dead = {m.id for m in everything if int(m.msg_id[1:]) % 9 == 0}
    await check(
        Query(state="dead", since=NOW + 500, until=NOW + 2000, limit=30),
        lambda m: m.id in dead and NOW + 500 <= m.received_at < NOW + 2000,
    )
    assert await store.search(Query(since=NOW + 5000)) == []
    assert await store.search(Query(since=NOW + 10, until=NOW + 10)) == []

    # Moving a message in time moves it between ranges.
    moved = everything[-1]
    await store.apply(Change(message_id=moved.id, message_fields={"received_at": NOW + 9000}))
    assert [m.id for m in await store.search(Query(since=NOW + 8000))] == [moved.id]


async def test_search_combines_several_equalities(store):
    await fill_log(store)
    everything = await store.search(Query(limit=1000))
    deliveries = {m.id: await store.deliveries(m.id) for m in everything}
    combos = [
        Query(receiver_her=2002, msg_type="APPREC", state="queued"),
        Query(sender_her=1001, receiver_her=3003, state="accepted"),
        Query(state="dead", msg_type="DIALOG_HELSEFAGLIG", direction=Direction.INBOUND),
        Query(state="rejected", msg_type="PLO_INNLEGGELSESRAPPORT"),
        Query(conversation="conv-2", state="app-ok"),
        Query(msg_id="msg-010", receiver_her=9999),
    ]
    for q in combos:

        def predicate(m, q=q):
            if q.state in MessageState._value2member_map_:
                state_ok = m.state == q.state
            else:
                state_ok = q.state is None or any(d.state == q.state for d in deliveries[m.id])
            return state_ok and all(
                getattr(q, attr) is None or getattr(m, attr) == getattr(q, attr)
                for attr in ("sender_her", "receiver_her", "msg_type", "conversation", "msg_id", "direction")
            )

        assert [m.id for m in await store.search(q)] == newest_first(everything, predicate), q


# --- retention -----------------------------------------------------------------------------------


async def test_purge_by_age_keeps_metadata_and_events(store):
    old = await submit(store, "old", at=NOW - 10 * 86400)
    new = await submit(store, "new", at=NOW)
    assert await store.purge_payloads(NOW - 86400, None) == 1
    got = await store.get_message(old.message_id, with_payload=True)
    assert got.payload is None and got.msg_id == "old" and got.summary["sender_name"] == "Bakkevik legekontor"
    assert len(await store.events(old.message_id)) == 2
    assert len(await store.deliveries(old.message_id)) == 1
    assert (await store.get_message(new.message_id, with_payload=True)).payload is not None
    assert await store.purge_payloads(NOW - 86400, None) == 0  # nothing left to purge
    assert [m.id for m in await store.search(Query(text="old"))] == [old.message_id]


async def test_purge_under_a_size_cap_final_ones_first_then_oldest(store):
    def body():
        return os.urandom(10_000)  # incompressible: each takes about 10 kB at rest

    ids = {}
    # Oldest to newest: pending, final, pending, final(rejected message), delivered-without-AppRec.
    ids["pending-old"] = (await submit(store, "p1", at=NOW + 1, payload=body())).message_id
    ids["final-old"] = (
        await submit(store, "f1", delivery(state=D.APP_OK), at=NOW + 2, payload=body())
    ).message_id
    ids["pending-new"] = (
        await submit(store, "p2", delivery(state=D.DELIVERED), at=NOW + 3, payload=body())
    ).message_id
    ids["rejected"] = (
        await store.apply(intake(message("r1", at=NOW + 4, state=MessageState.REJECTED, payload=body())))
    ).message_id
    ids["no-apprec"] = (
        await submit(
            store, "n1", delivery(state=D.DELIVERED, expects_apprec=False), at=NOW + 5, payload=body()
        )
    ).message_id

    async def kept():
        return {
            name
            for name, i in ids.items()
            if (await store.get_message(i, with_payload=True)).payload is not None
        }

    assert await store.purge_payloads(NOW, 60_000) == 0
    assert await kept() == set(ids)
    # Room for three: the two oldest final ones go first.
    assert await store.purge_payloads(NOW, 35_000) == 2
    assert await kept() == {"pending-old", "pending-new", "no-apprec"}
    assert await store.purge_payloads(NOW, 25_000) == 1
    assert await kept() == {"pending-old", "pending-new"}
    # Then the oldest of the rest.
    assert await store.purge_payloads(NOW, 15_000) == 1
    assert await kept() == {"pending-new"}
    assert await store.purge_payloads(NOW, 0) == 1
    assert await kept() == set()
    for i in ids.values():
        assert len(await store.events(i)) >= 1


# --- durability ----------------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(durable_backend):
    backend = durable_backend
    store = backend.new()
    await store.open()
    applied = await submit(store, "m1", delivery(2002), delivery(3003), payload=b"<persist/>")
    await store.claim("https", NOW, 1, "n", 30)
    await store.close()

    store = backend.new()
    await store.open()
    try:
        got = await store.get_message(applied.message_id, with_payload=True)
        assert got.payload == b"<persist/>" and got.summary["receiver_name"] == "Ørnes sykehjem"
        assert [d.state for d in await store.deliveries(applied.message_id)] == [D.SENDING, D.QUEUED]
        assert [e.kind for e in await store.events(applied.message_id)][-1] == "attempt"
        assert (await submit(store, "m1")).created is False
        assert (await submit(store, "m2")).message_id > applied.message_id
    finally:
        await store.close()


async def test_concurrent_applies_are_grouped_into_fewer_commits(grouping_backend):
    backend = grouping_backend
    store = backend.new()
    await store.open()
    try:
        before = store.commits
        results = await asyncio.gather(*(submit(store, f"m{i}") for i in range(300)))
        assert all(r.created for r in results)
        assert len({r.message_id for r in results}) == 300
        assert 0 < store.commits - before < 300
    finally:
        await store.close()


CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, {repo!r})
    {store_import}
    from gateway.lifecycle import DeliveryState, MessageState
    from gateway.store import Change, DeliveryRecord, Direction, Event, MessageRecord

    async def one(store, key):
        record = MessageRecord(
            direction=Direction.OUTBOUND, state=MessageState.ACCEPTED, dedupe_key=key, received_at=1.0,
            source="api:crash", msg_id=key, payload=b"<x>" + key.encode() * 200 + b"</x>",
        )
        deliveries = [DeliveryRecord(None, 2002, "PRIM", "https", "u", DeliveryState.QUEUED, 9e9)]
        events = [Event(1.0, "gateway", "stored"), Event(1.0, "gateway", "routed", new_delivery_index=0)]
        applied = await store.apply(Change(new_message=record, new_deliveries=deliveries, events=events))
        # Acknowledged: from here on the message must survive anything.
        sys.stdout.write(f"{{key}} {{applied.message_id}}\\n")
        sys.stdout.flush()

    async def main():
        store = {store_expr}
        await store.open()
        sys.stdout.write("ready\\n")
        sys.stdout.flush()
        n = 0
        while True:
            await asyncio.gather(*(one(store, f"{run}-{{n + i}}") for i in range(25)))
            n += 25

    asyncio.run(main())
    """
)


@pytest.mark.parametrize("run", range(4))
def test_every_acknowledged_message_survives_sigkill(durable_backend, run):
    backend = durable_backend
    store_import, store_expr = backend.child_store()
    code = CRASH_CHILD.format(repo=str(REPO), store_import=store_import, store_expr=store_expr, run=run)
    child = subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        # Kill at a random moment while it is busy acknowledging.
        wanted = random.Random().randint(50, 1500)
        acknowledged = []
        while len(acknowledged) < wanted:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged.append(line.split())
        time.sleep(random.random() * 0.05)
        child.send_signal(signal.SIGKILL)
        acknowledged += [line.split() for line in child.stdout.read().splitlines() if line.strip()]
    finally:
        child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= 50

    async def check():
        store = backend.new()
        await store.open()
        try:
            missing = []
            for key, message_id in acknowledged:
                got = await store.find_message(key)
                if got is None or got.id != int(message_id) or len(await store.events(got.id)) != 2:
                    missing.append(key)
            assert not missing, (
                f"{len(missing)} of {len(acknowledged)} acknowledged messages lost: {missing[:5]}"
            )
        finally:
            await store.close()

    asyncio.run(check())


# --- SQLite specifics ----------------------------------------------------------------------------


async def test_sqlite_payloads_are_compressed_at_rest(tmp_path):
    store = SqliteStore(tmp_path / "k.db")
    await store.open()
    marker = b"PATIENT-SECRET-Kari-Nordmann-12345678901"
    body = (
        b"<Dialogmelding>" + (b"<Notat>" + marker + b" har vondt i kneet</Notat>") * 40 + b"</Dialogmelding>"
    )
    applied = await submit(store, "m1", payload=body)
    await store.checkpoint()
    assert (await store.get_message(applied.message_id, with_payload=True)).payload == body
    await store.close()
    on_disk = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.is_file())
    assert marker not in on_disk
    assert zlib.compress(body, 1)[8:40] in on_disk  # it is there, just compressed


async def test_sqlite_purge_gives_space_back(tmp_path):
    path = tmp_path / "k.db"
    store = SqliteStore(path)
    await store.open()
    try:
        for i in range(40):
            await submit(store, f"m{i}", payload=os.urandom(50_000), at=NOW - 86400 * 30)
        await store.checkpoint()
        full = path.stat().st_size
        assert full > 40 * 50_000
        assert await store.purge_payloads(NOW, None) == 40
        await store.checkpoint()
        assert path.stat().st_size < full / 4
        assert len(await store.search(Query(limit=1000))) == 40
    finally:
        await store.close()


async def test_sqlite_schema_is_versioned(tmp_path):
    import sqlite3

    path = tmp_path / "k.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="schema version"):
        await SqliteStore(path).open()


async def test_sqlite_reads_on_the_writer_thread_work_too(tmp_path):
    store = SqliteStore(tmp_path / "k.db", read_threads=0)
    await store.open()
    try:
        applied = await submit(store, "m1")
        assert (await store.get_message(applied.message_id)).msg_id == "m1"
        assert [m.id for m in await store.search(Query(text="ørnes"))] == [applied.message_id]
    finally:
        await store.close()


async def test_sqlite_refuses_use_when_closed(tmp_path):
    store = SqliteStore(tmp_path / "k.db")
    with pytest.raises(RuntimeError):
        await submit(store, "m1")
