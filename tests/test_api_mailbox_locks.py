"""Marking API messages read: the read events of one receiver's messages are written side by side
(each waits for a commit, and a busy receiver reads many at once), while requests for the same
delivery still write one read event and a read message never comes back as unread."""

from __future__ import annotations

import asyncio

from adapters.store_memory import MemoryStore
from gateway.api.mailbox import READ, TRANSPORT, Mailbox
from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import Change, DeliveryRecord, Direction, Event, MessageRecord

RECEIVER = 9310101


class HeldCommits(MemoryStore):
    """Changes with a read event wait for `release` before they are stored."""

    def __init__(self):
        super().__init__()
        self.release = asyncio.Event()
        self.waiting = 0

    async def apply(self, change: Change):
        if any(e.kind == READ for e in change.events):
            self.waiting += 1
            await self.release.wait()
        return await super().apply(change)


async def _delivered(store: MemoryStore, n: int) -> list[tuple[MessageRecord, DeliveryRecord]]:
    out = []
    for i in range(n):
        record = MessageRecord(
            direction=Direction.INBOUND,
            state=MessageState.ACCEPTED,
            dedupe_key=f"1:m{i}",
            received_at=1000.0 + i,
            source="https:peer",
            msg_id=f"m{i}",
            receiver_her=RECEIVER,
        )
        delivery = DeliveryRecord(None, RECEIVER, "PRIM", TRANSPORT, "", DeliveryState.DELIVERED, 9e9)
        applied = await store.apply(
            Change(
                new_message=record,
                new_deliveries=[delivery],
                events=[Event(1000.0, "gateway", "routed", new_delivery_index=0)],
            )
        )
        [stored] = await store.deliveries(applied.message_id)
        out.append((await store.get_message(applied.message_id), stored))
    return out


async def test_reads_of_one_receiver_do_not_wait_for_each_others_commit():
    store = HeldCommits()
    await store.open()
    mailbox = Mailbox(store, window=1e12, clock=lambda: 2000.0)
    messages = await _delivered(store, 3)
    for message, delivery in messages:
        await mailbox.deliver(message, delivery.id, RECEIVER)
    assert len(await mailbox.unread([RECEIVER])) == 3

    reads = [
        asyncio.create_task(mailbox.mark_read(message.id, delivery, "epj")) for message, delivery in messages
    ]
    again = asyncio.create_task(mailbox.mark_read(messages[0][0].id, messages[0][1], "epj"))
    for _ in range(50):
        await asyncio.sleep(0)
    assert store.waiting == 3, "each message's read event is on its way to the store at the same time"
    store.release.set()
    assert await asyncio.gather(*reads) == [True, True, True]
    assert await again is False, "the same delivery marked twice at once: one read event"
    assert await mailbox.unread([RECEIVER]) == []
    for message, _ in messages:
        assert [e.kind for e in await store.events(message.id)].count(READ) == 1

    # The transport hands the first one over again (as after a crash): it stays read.
    await mailbox.deliver(messages[0][0], messages[0][1].id, RECEIVER)
    assert await mailbox.unread([RECEIVER]) == []
