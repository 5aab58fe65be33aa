"""Dashboard statistics and the change feed, on every Store adapter (the backends and builders of
tests/test_store_contract.py, so a backend added there is checked here too)."""

from __future__ import annotations

import pytest
from test_store_contract import BACKENDS, NOW, delivery, submit

from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import Change, DeliveryUpdate, Event, Latency

D = DeliveryState
HOUR = 3600.0
# An hour boundary, so that "which hour bucket" is unambiguous in the tests below.
T0 = (NOW // HOUR) * HOUR


async def move(store, applied, source, target, at: float, index: int = 0):
    """A transition as the core records it: the event names its message and delivery."""
    delivery_id = applied.delivery_ids[index]
    return await store.apply(
        Change(
            delivery_updates=[DeliveryUpdate(delivery_id, source, {"state": target})],
            events=[
                Event(
                    at,
                    "peer",
                    "moved",
                    message_id=applied.message_id,
                    delivery_id=delivery_id,
                    from_state=source,
                    to_state=target,
                )
            ],
        )
    )


@pytest.fixture(params=list(BACKENDS))
async def store(request, tmp_path):
    s = BACKENDS[request.param](tmp_path).new()
    await s.open()
    yield s
    await s.close()


async def test_volume_per_hour_and_type_counts_the_window_only(store):
    await submit(store, "a", at=T0 + 10, msg_type="LOG_INNLAGT")
    await submit(store, "b", at=T0 + 20, msg_type="LOG_INNLAGT")
    await submit(store, "c", at=T0 + 30, msg_type="APPREC")
    await submit(store, "d", at=T0 + HOUR + 5, msg_type="LOG_INNLAGT")
    await submit(store, "before", at=T0 - 1, msg_type="LOG_INNLAGT")
    await submit(store, "at-until", at=T0 + 2 * HOUR, msg_type="LOG_INNLAGT")

    stats = await store.traffic_stats(T0, T0 + 2 * HOUR)

    assert stats.since == T0 and stats.until == T0 + 2 * HOUR
    assert stats.hourly == [
        (T0, "APPREC", 1),
        (T0, "LOG_INNLAGT", 2),
        (T0 + HOUR, "LOG_INNLAGT", 1),
    ]


async def test_partners_count_sent_refused_deliveries_and_failures(store):
    ok = await submit(store, "ok", delivery(2002), delivery(3003, role="COP"), at=T0 + 1, sender=1001)
    dead = await submit(store, "dead", delivery(2002), at=T0 + 2, sender=1001)
    missing = await submit(store, "missing", delivery(2002), at=T0 + 3, sender=4004)
    await submit(store, "refused", at=T0 + 4, sender=4004, state=MessageState.REJECTED)
    await move(store, ok, D.QUEUED, D.DELIVERED, at=T0 + 5)
    await move(store, ok, D.DELIVERED, D.APP_OK, at=T0 + 6)
    await move(store, dead, D.QUEUED, D.DEAD, at=T0 + 7)
    await move(store, missing, D.QUEUED, D.DELIVERED, at=T0 + 8)
    await move(store, missing, D.DELIVERED, D.APPREC_MISSING, at=T0 + 9)
    await submit(store, "outside", delivery(2002, state=D.DEAD), at=T0 + 2 * HOUR, sender=1001)

    partners = (await store.traffic_stats(T0, T0 + HOUR)).partners

    assert set(partners) == {1001, 2002, 3003, 4004}
    p = partners[1001]
    assert (p.sent, p.refused, p.deliveries, p.failed, p.apprec_missing) == (2, 0, 0, 0, 0)
    p = partners[4004]
    # A refused message has no deliveries; the submit helper's default one is there for the others.
    assert (p.sent, p.refused) == (2, 1)
    p = partners[2002]
    assert (p.sent, p.deliveries, p.failed, p.apprec_missing) == (0, 4, 1, 1)
    p = partners[3003]
    assert (p.deliveries, p.failed, p.apprec_missing) == (1, 0, 0)


async def test_latency_percentiles_from_delivered_and_apprec_transitions(store):
    # Ten messages delivered 1..10 s after arrival; the first five answered by AppRec after 100 s.
    for n in range(1, 11):
        applied = await submit(store, f"m{n}", at=T0 + n)
        await move(store, applied, D.QUEUED, D.DELIVERED, at=T0 + n + n)
        if n <= 5:
            await move(store, applied, D.DELIVERED, D.APP_OK, at=T0 + n + 100)
    rejected = await submit(store, "rej", at=T0 + 20)
    await move(store, rejected, D.QUEUED, D.DELIVERED, at=T0 + 21)
    await move(store, rejected, D.DELIVERED, D.APP_REJECTED, at=T0 + 320)

    latency = (await store.traffic_stats(T0, T0 + HOUR)).latency

    transport = latency["transport"]
    assert transport.count == 11
    assert (transport.p50, transport.p90, transport.max) == (5.0, 9.0, 10.0)
    apprec = latency["apprec"]
    assert apprec.count == 6
    assert (apprec.p50, apprec.max) == (100.0, 300.0)


async def test_an_empty_window_has_zero_stats(store):
    await submit(store, "later", at=T0 + 5 * HOUR)
    stats = await store.traffic_stats(T0, T0 + HOUR)
    assert stats.hourly == [] and stats.partners == {}
    assert stats.latency["transport"] == Latency() and stats.latency["apprec"] == Latency()


async def test_events_since_follows_every_write_in_order(store):
    assert await store.last_event_id() == 0
    assert await store.events_since(0) == []
    first = await submit(store, "m1")
    start = await store.last_event_id()
    assert start > 0
    await move(store, first, D.QUEUED, D.DELIVERED, at=NOW + 1)
    claimed_msg = await submit(store, "m2", delivery(3003, transport="folder"))
    await store.claim("folder", NOW + 2, 10, "me", 60)  # the store writes this event itself
    await store.apply(
        Change(events=[Event(NOW + 3, "operator", "marked handled", message_id=first.message_id)])
    )

    feed = await store.events_since(start)

    assert [e.id for e in feed] == sorted(e.id for e in feed) and feed[0].id > start
    assert [e.kind for e in feed] == [
        "moved",
        "stored",
        "routed to a receiver",
        "attempt",
        "marked handled",
    ]
    assert feed[0].message_id == first.message_id and feed[0].to_state == "delivered"
    assert feed[3].message_id == claimed_msg.message_id and feed[3].to_state == "sending"
    assert await store.last_event_id() == feed[-1].id
    assert [e.id for e in await store.events_since(start, limit=2)] == [feed[0].id, feed[1].id]
    assert await store.events_since(feed[-1].id) == []


def test_latency_percentiles_are_nearest_rank():
    assert Latency.of([]) == Latency()
    got = Latency.of([float(v) for v in range(100, 0, -1)])
    assert (got.count, got.p50, got.p90, got.p99, got.max) == (100, 50.0, 90.0, 99.0, 100.0)
    assert Latency.of([7.0]) == Latency(1, 7.0, 7.0, 7.0, 7.0)
