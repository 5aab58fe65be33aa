"""PostgreSQL store specifics: what several nodes on one database rely on beyond the store contract
(tests/test_store_contract.py runs the contract itself against PostgreSQL too)."""

from __future__ import annotations

import asyncio
import collections

import pytest
from test_store_contract import NOW, delivery, intake, message, move, submit

from gateway.lifecycle import DeliveryState as D
from gateway.store import Change, DeliveryUpdate, Event, Query, StoreUnavailable

pytest_plugins = ("servers",)

asyncpg = pytest.importorskip("asyncpg", reason="pip install asyncpg")
from adapters.store_postgres import MIGRATIONS, PostgresStore  # noqa: E402


@pytest.fixture
def dsn(postgres_server):
    return postgres_server.new_database()


@pytest.fixture
async def nodes(dsn):
    """Two stores on one database, as two gateway nodes have them."""
    a, b = PostgresStore(dsn, notify_delay=0.0), PostgresStore(dsn, notify_delay=0.0)
    # Both migrate at the same moment: the advisory lock makes them take turns.
    await asyncio.gather(a.open(), b.open())
    yield a, b
    await asyncio.gather(a.close(), b.close())


async def test_nodes_starting_together_migrate_once(nodes, dsn):
    conn = await asyncpg.connect(dsn)
    try:
        versions = [r[0] for r in await conn.fetch("SELECT version FROM komut_migrations ORDER BY version")]
    finally:
        await conn.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_refuses_a_newer_schema(dsn):
    store = PostgresStore(dsn)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO komut_migrations (version) VALUES ($1)", len(MIGRATIONS) + 1)
    finally:
        await conn.close()
    with pytest.raises(RuntimeError, match="schema version"):
        await PostgresStore(dsn).open()


async def test_concurrent_claims_from_two_nodes_never_take_the_same_delivery(nodes):
    a, b = nodes
    total = 300
    for first in range(0, total, 50):
        await asyncio.gather(*(submit(a, f"m{i}") for i in range(first, first + 50)))

    claimed: collections.Counter = collections.Counter()

    async def worker(store, owner):
        while True:
            got = await store.claim("https", NOW, 7, owner, 30)
            if not got:
                return
            claimed.update(c.delivery.id for c in got)
            for c in got:
                assert c.delivery.lease_owner == owner
                await move(store, c.delivery.id, D.SENDING, D.DELIVERED)

    await asyncio.gather(
        *(worker(store, f"{name}-{i}") for store, name in ((a, "a"), (b, "b")) for i in range(4))
    )
    assert len(claimed) == total
    assert max(claimed.values()) == 1
    counts = await b.counts()
    assert counts["delivered"] == total and counts["queued"] == counts["sending"] == 0


async def test_fifo_holds_across_nodes(nodes):
    a, b = nodes
    ids = [(await submit(a, f"m{i}", delivery(2002, fifo_key="k"))).delivery_ids[0] for i in range(6)]
    order = []
    for i in range(6):
        store, other = (a, b) if i % 2 == 0 else (b, a)
        (c,) = await store.claim("https", NOW, 10, "x", 30)
        # While one node holds the conversation's head, the other finds nothing of it.
        assert await other.claim("https", NOW, 10, "y", 30) == []
        order.append(c.delivery.id)
        await move(store, c.delivery.id, D.SENDING, D.APP_OK)
    assert order == ids


async def test_only_expired_leases_are_taken_over(nodes):
    a, b = nodes
    await submit(a, "m1")
    await submit(a, "m2")
    (short,) = await a.claim("https", NOW, 1, "node-a:1", 10)
    (long,) = await b.claim("https", NOW, 1, "node-b:2", 60)
    # Node b's timer: a's lease ran out, b's own has not.
    assert await b.release_expired_leases(NOW + 11) == 1
    (d,) = await a.deliveries(short.delivery.message_id)
    assert d.state == D.QUEUED and d.lease_owner is None
    (kept,) = await a.deliveries(long.delivery.message_id)
    assert kept.state == D.SENDING and kept.lease_owner == "node-b:2"
    (again,) = await b.claim("https", NOW + 11, 5, "node-b:2", 60)
    assert again.delivery.id == short.delivery.id
    events = await a.events(short.delivery.message_id)
    assert [e.kind for e in events][-2:] == ["resumed after restart", "attempt"]
    assert "node-a:1" in events[-2].reason


async def test_a_node_that_lost_its_lease_cannot_overwrite_the_new_owner(nodes):
    a, b = nodes
    await submit(a, "m1")
    (first,) = await a.claim("https", NOW, 1, "node-a", 10)
    await b.release_expired_leases(NOW + 10)
    (second,) = await b.claim("https", NOW + 10, 1, "node-b", 10)
    await move(b, second.delivery.id, D.SENDING, D.DELIVERED)
    # Node a comes back from a long pause with its old result: the state moved on, so it conflicts.
    from gateway.store import Conflict

    with pytest.raises(Conflict):
        await move(a, first.delivery.id, D.SENDING, D.RETRY_WAIT)


async def test_queued_work_wakes_the_other_node(nodes):
    a, b = nodes
    woken = asyncio.Event()
    await b.listen(woken.set)
    await asyncio.sleep(0.3)  # the listener connects
    woken.clear()
    await submit(a, "m1")
    await asyncio.wait_for(woken.wait(), 10)
    # Its own notifications do not wake a node (its pipeline already did).
    own = asyncio.Event()
    await a.listen(own.set)
    await asyncio.sleep(0.3)
    own.clear()
    woken.clear()
    await submit(a, "m2")
    await asyncio.wait_for(woken.wait(), 10)
    await asyncio.sleep(0.3)
    assert not own.is_set()


async def test_listener_reconnects_after_its_connection_is_killed(nodes, dsn):
    a, b = nodes
    woken = asyncio.Event()
    await b.listen(woken.set)
    await asyncio.sleep(0.3)
    conn = await asyncpg.connect(dsn)
    try:
        killed = await conn.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'komut-listen'"
        )
    finally:
        await conn.close()
    assert killed >= 1
    woken.clear()
    # After reconnecting it wakes once by itself (work may have been queued meanwhile) and again
    # for new work.
    await asyncio.wait_for(woken.wait(), 15)
    woken.clear()
    await submit(a, "m1")
    await asyncio.wait_for(woken.wait(), 10)


async def test_counts_stay_exact_across_nodes_and_compaction(nodes):
    a, b = nodes
    applied = await asyncio.gather(
        *(submit(a if i % 2 else b, f"m{i}", delivery(), delivery(3003)) for i in range(40))
    )
    await a.compact_counts()
    claimed = await b.claim("https", NOW, 30, "b", 30)
    compacting = asyncio.gather(a.compact_counts(), b.compact_counts())
    for c in claimed[:10]:
        await move(a, c.delivery.id, D.SENDING, D.DEAD)
    await compacting
    waiting = max(i for r in applied for i in r.delivery_ids if i not in {c.delivery.id for c in claimed})
    await b.apply(
        Change(
            delivery_updates=[DeliveryUpdate(waiting, None, {"state": D.CANCELLED})],
            events=[Event(NOW, "operator", "cancelled")],
        )
    )

    async def recount():
        out = collections.Counter()
        for r in applied:
            out.update(str(d.state) for d in await a.deliveries(r.message_id))
        return out

    expected = await recount()
    assert expected["dead"] == 10 and expected["cancelled"] == 1 and expected["sending"] == 20
    for _ in range(2):
        for store in (a, b):
            counts = await store.counts()
            assert {k: v for k, v in counts.items() if v} == dict(expected)
        await b.compact_counts()


async def test_the_same_message_from_two_nodes_at_once_is_stored_once(nodes):
    a, b = nodes
    results = await asyncio.gather(
        *(store.apply(intake(message("same"), [delivery()])) for store in (a, b, a, b))
    )
    assert sum(r.created for r in results) == 1
    assert len({r.message_id for r in results}) == 1
    assert len({tuple(r.delivery_ids) for r in results}) == 1
    assert len(await a.events(results[0].message_id)) == 2


async def test_a_database_outage_is_store_unavailable_and_the_store_recovers(dsn, postgres_server):
    store, other = PostgresStore(dsn, notify_delay=0.0), PostgresStore(dsn, notify_delay=0.0)
    await store.open()
    await other.open()
    try:
        woken = asyncio.Event()
        await store.listen(woken.set)
        await submit(store, "before")
        await asyncio.to_thread(postgres_server.stop, False)
        try:
            # While the database is down: "try again later", nothing half-written.
            with pytest.raises(StoreUnavailable):
                await submit(store, "while down")
            with pytest.raises(StoreUnavailable):
                await store.claim("https", NOW, 10, "n", 30)
        finally:
            await asyncio.to_thread(postgres_server.start)
        # The pool notices its connections are gone on their next use (the caller is told the
        # store is unavailable); a retry gets fresh ones.
        failures = 0
        for _ in range(100):
            try:
                await submit(store, "after")
                break
            except StoreUnavailable:  # what front doors turn into "try again later"
                failures += 1
                await asyncio.sleep(0.1)
        else:
            raise AssertionError("the store did not recover after the restart")
        assert failures <= store.pool_size
        assert {m.msg_id for m in await other.search(Query())} == {"before", "after"}  # not "while down"
        # The LISTEN connection came back by itself too.
        for i in range(100):
            woken.clear()
            await submit(other, f"wake-{i}")
            try:
                await asyncio.wait_for(woken.wait(), 0.5)
                break
            except TimeoutError:
                continue
        else:
            raise AssertionError("the listener did not reconnect")
    finally:
        await store.close()
        await other.close()
