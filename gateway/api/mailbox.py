"""Local delivery through the API: the "api" transport and the unread messages per HER-id.

A message for an API-connected system is durable in the store before it is ever handed to a
transport, so "delivering" it means making it fetchable: `ApiTransport.send` puts it in the
receiver's mailbox and answers DELIVERED. It stays unread until the system marks it read
(PUT /Messages/{id}/read/{herId}), which is recorded as a "read" event on the delivery; the event
is the durable truth, the mailbox only an index of it.

The index is built per HER-id the first time a client asks for that HER-id (from the store:
the HER-id's messages of the last `window` seconds, their deliveries and events), then kept up
to date by `send` and `mark_read`. After a restart it is rebuilt the same way, so nothing read
shows up again and nothing unread is lost within the window. When several nodes share one store,
another node may hand over or mark read what this node's index does not know of; with `refresh`
set, an index older than that is rebuilt from the store before it is answered from.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cached_property

from gateway.api.mapping import gen_datetime
from gateway.lifecycle import Actor, DeliveryState
from gateway.store import Change, DeliveryRecord, Event, MessageRecord, Query, Store
from gateway.transport import Inbound, Outcome, Outgoing, SendResult

log = logging.getLogger("komut.api.mailbox")

TRANSPORT = "api"
READ = "read"  # the event kind; its time is when the local system read the message
PAGE = 500
# Deliveries the transport has been given (SENDING: the hand-over may be under way, and the message
# is durable anyway) or has handed over: everything from DELIVERED on, AppRec or not.
LISTED = frozenset(
    {
        DeliveryState.SENDING,
        DeliveryState.DELIVERED,
        DeliveryState.APP_OK,
        DeliveryState.APP_REJECTED,
        DeliveryState.APP_PARTIAL,
        DeliveryState.APPREC_MISSING,
    }
)


@dataclass(frozen=True)
class Entry:
    message: MessageRecord  # without payload
    delivery_id: int
    receiver_her: int

    @cached_property  # every GET /Messages sorts all unread entries of the HER-ids it asks for
    def sort_key(self) -> tuple[float, int]:
        gen = gen_datetime(self.message.summary.get("gen_date"))
        return (gen.timestamp() if gen is not None else self.message.received_at, self.delivery_id)


class Mailbox:
    def __init__(
        self, store: Store, *, window: float, refresh: float = 0.0, clock: Callable[[], float] = time.time
    ):
        self.store = store
        self.window = window
        self.refresh = refresh  # 0: the index is only ever built once per HER-id
        self.clock = clock
        self._unread: dict[int, dict[int, Entry]] = {}
        self._loaded: dict[int, float] = {}  # HER-id -> when its index was built
        self._locks: dict[int, asyncio.Lock] = {}
        self._delivery_locks: weakref.WeakValueDictionary[int, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, her: int) -> asyncio.Lock:
        return self._locks.setdefault(her, asyncio.Lock())

    def _delivery_lock(self, delivery_id: int) -> asyncio.Lock:
        lock = self._delivery_locks.get(delivery_id)
        if lock is None:
            lock = self._delivery_locks[delivery_id] = asyncio.Lock()
        return lock

    @staticmethod
    def _was_read(events: Iterable[Event], delivery_id: int) -> bool:
        return any(e.kind == READ and e.delivery_id == delivery_id for e in events)

    def _fresh(self, her: int) -> bool:
        built = self._loaded.get(her)
        return built is not None and (not self.refresh or self.clock() - built < self.refresh)

    async def _load(self, her: int) -> None:
        if self._fresh(her):
            return
        async with self._lock(her):
            if self._fresh(her):
                return
            started = self.clock()
            # Under the lock nothing is added or marked read meanwhile, and what `deliver` added
            # before is in the store as SENDING or later, so the scan alone is the whole truth.
            self._unread[her] = {entry.delivery_id: entry for entry in await self._scan(her)}
            self._loaded[her] = started

    async def _scan(self, her: int) -> list[Entry]:
        since = self.clock() - self.window
        before = None
        out = []
        while True:
            page = await self.store.search(Query(her_id=her, since=since, before_id=before, limit=PAGE))
            for message in page:
                mine = [
                    d
                    for d in await self.store.deliveries(message.id)
                    if d.transport == TRANSPORT and d.receiver_her == her and d.state in LISTED
                ]
                if not mine:
                    continue
                events = await self.store.events(message.id)
                out += [Entry(message, d.id, her) for d in mine if not self._was_read(events, d.id)]
            if len(page) < PAGE:
                return out
            before = min(m.id for m in page)

    async def unread(
        self,
        receivers: Iterable[int],
        *,
        sender: int | None = None,
        business_document_id: str | None = None,
        limit: int = 10,
        descending: bool = False,
    ) -> list[Entry]:
        """Unread messages for these HER-ids, ordered by GenDate (then arrival)."""
        entries: list[Entry] = []
        for her in receivers:
            await self._load(her)
            entries += self._unread.get(her, {}).values()
        if sender is not None:
            entries = [e for e in entries if e.message.sender_her == sender]
        if business_document_id is not None:
            entries = [e for e in entries if e.message.msg_id == business_document_id]
        entries.sort(key=lambda e: e.sort_key, reverse=descending)
        return entries[:limit]

    async def deliver(
        self, message: MessageRecord, delivery_id: int, receiver_her: int, *, new: bool = False
    ) -> None:
        """`new`: the delivery was stored just now, so nobody can have read it yet."""
        async with self._lock(receiver_her):
            # A delivery resent after a crash (its first hand-over was not recorded) may have been
            # read meanwhile: it must not come back as unread.
            if not new and await self.store.has_event(message.id, READ, delivery_id):
                return
            message.payload = None
            self._unread.setdefault(receiver_her, {})[delivery_id] = Entry(message, delivery_id, receiver_her)

    async def mark_read(self, message_id: int, delivery: DeliveryRecord, who: str) -> bool:
        """Record that `delivery` was read; False if it already was (then nothing is written)."""
        her = delivery.receiver_her
        # Only requests for the same delivery wait for one another. The write waits for a commit
        # (an fsync); under the HER-id's lock, every read of a busy receiver waited for the one
        # before it, and the deliveries to it behind them.
        async with self._delivery_lock(delivery.id):
            already = await self.store.has_event(message_id, READ, delivery.id)
            if not already:
                await self.store.apply(
                    Change(
                        events=[
                            Event(
                                self.clock(),
                                Actor.PEER,
                                READ,
                                message_id=message_id,
                                delivery_id=delivery.id,
                                reason=f"read by API client {who} for HER-id {her}",
                            )
                        ]
                    )
                )
            # Once the read event is stored: a rebuild of the index (under the HER-id's lock) either
            # sees the event or is followed by this.
            async with self._lock(her):
                self._unread.get(her, {}).pop(delivery.id, None)
        return not already


class ApiTransport:
    """The "api" transport: hands a message to the receiver's mailbox; it is fetched from there.

    Handing over is making the message fetchable, and a stored message is: the pipeline stores its
    deliveries to this transport as delivered in the transaction that stores the message
    (`delivers_on_commit`) and calls `committed` once that is done, which puts the message in the
    mailbox index. `send` is for deliveries that still go through the dispatcher (FIFO receivers,
    resends, deliveries queued before a restart).
    """

    delivers_on_commit = True

    def __init__(self, mailbox: Mailbox, name: str = TRANSPORT):
        self.name = name
        self.mailbox = mailbox

    @staticmethod
    def commit_detail(receiver_her: int) -> str:
        return f"in the API mailbox of HER-id {receiver_her}"

    async def committed(self, message: MessageRecord, delivery_id: int, receiver_her: int) -> None:
        await self.mailbox.deliver(message, delivery_id, receiver_her, new=True)

    async def start(self, inbound: Inbound) -> None:
        return None  # API clients come in through the web routes, not through a transport

    async def stop(self) -> None:
        return None

    async def send(self, item: Outgoing) -> SendResult:
        store = self.mailbox.store
        for message in await store.find_by_msg_id(item.msg_id):
            if any(d.id == item.delivery_id for d in await store.deliveries(message.id)):
                await self.mailbox.deliver(message, item.delivery_id, item.receiver_her)
                return SendResult(Outcome.DELIVERED, self.commit_detail(item.receiver_her))
        log.error("delivery %s (MsgId %s) not found in the store", item.delivery_id, item.msg_id)
        return SendResult(Outcome.TRANSIENT, "the message of this delivery was not found in the store")
