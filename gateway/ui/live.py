"""Live views: the store's event feed turned into server-sent events.

Every state change in komut writes an event (`Store.apply`, claims, lease releases), so following
`events_since` sees everything, also what another node of a scaled-out gateway did. One task per
gateway follows the feed while someone is watching; for each message an event touches it sends
the message's fresh row, with the new events, to the viewers whose filter the message passes.
A viewer that falls far behind is told to reload instead of holding memory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.store import Event, MessageRecord, Query, Store

log = logging.getLogger("komut.ui.live")

QUEUE = 500
BATCH = 1000
HEARTBEAT = 15.0
LOOKBACK = 200  # event ids re-read behind the position (see LiveFeed._run)
SEEN = 4 * (BATCH + LOOKBACK)
CATCH_UP_LIMIT = 5000  # events a reconnecting page may ask to replay before it is told to reload


@dataclass(eq=False)
class Subscriber:
    query: Query | None
    message_id: int | None
    start: int = 0  # the feed delivers events after this id to this subscriber
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE))
    overflowed: bool = False

    def wants(self, message: MessageRecord, deliveries, matches) -> bool | None:
        """True: it passes the filter. False: it does not, but a log page may show it from
        before the change and should see its new state. None: not for this subscriber."""
        if self.message_id is not None:
            return True if message.id == self.message_id else None
        return self.query is None or matches(self.query, message, deliveries)

    def put(self, item) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.queue.put_nowait(("reset", None))


class LiveFeed:
    def __init__(
        self,
        store: Callable[[], Store],
        poll: float,
        payload: Callable[[MessageRecord, list, list[Event]], dict],
        matches: Callable,
    ):
        self._store = store
        self.poll = poll
        self.payload = payload
        self.matches = matches
        self.subscribers: set[Subscriber] = set()
        self.position = 0
        self._seen: collections.OrderedDict[int, None] = collections.OrderedDict()
        self._task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    async def subscribe(self, query: Query | None, message_id: int | None) -> Subscriber:
        async with self._lock:
            if self._task is None or self._task.done():
                store = self._store()
                self.position = await store.last_event_id()
                # What happened before anyone watched is not news: only later commits are.
                behind = await store.events_since(max(0, self.position - LOOKBACK), LOOKBACK)
                self._seen = collections.OrderedDict((e.id, None) for e in behind)
                self._task = asyncio.create_task(self._run(), name="ui-live-feed")
            sub = Subscriber(query, message_id, start=self.position)
            self.subscribers.add(sub)
            return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    async def close(self) -> None:
        self._closed = True
        for sub in list(self.subscribers):
            sub.overflowed = True
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    sub.queue.get_nowait()
            sub.queue.put_nowait(("close", None))
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while self.subscribers and not self._closed:
            try:
                # With several writers (PostgreSQL), a lower id can become visible after a higher
                # one was read: look a little behind the position and skip what was seen.
                read = await self._store().events_since(max(0, self.position - LOOKBACK), BATCH + LOOKBACK)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live feed: reading events failed")
                await asyncio.sleep(max(self.poll, 1.0))
                continue
            events = [e for e in read if e.id not in self._seen]
            if not events:
                await asyncio.sleep(self.poll)
                continue
            try:
                await self._publish(events)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("live feed: publishing failed")
            for e in events:
                self._seen[e.id] = None
            while len(self._seen) > SEEN:
                self._seen.popitem(last=False)
            self.position = max(self.position, events[-1].id)

    async def changes(self, events: list[Event]) -> list[tuple[int, MessageRecord, list, list[Event]]]:
        """(last event id, message, deliveries, its events) per message the events touch."""
        store = self._store()
        by_message: dict[int, list[Event]] = {}
        for e in events:
            if e.message_id is not None:
                by_message.setdefault(e.message_id, []).append(e)
        out = []
        for message_id, evs in by_message.items():
            message = await store.get_message(message_id)
            if message is None:
                continue
            out.append((evs[-1].id, message, await store.deliveries(message_id), evs))
        return out

    async def _publish(self, events: list[Event]) -> None:
        subs = [s for s in self.subscribers if events[-1].id > s.start]
        if not subs:
            return
        for last_id, message, deliveries, evs in await self.changes(events):
            for sub in subs:
                wanted = sub.wants(message, deliveries, self.matches)
                if wanted is not None:
                    payload = self.payload(message, deliveries, [e for e in evs if e.id > sub.start])
                    sub.put(("message", (last_id, {**payload, "matches": wanted})))


def _frame(kind: str, data, event_id: int | None = None) -> bytes:
    lines = [f"event: {kind}"]
    if event_id is not None:
        lines.append(f"id: {event_id}")
    lines.append("data: " + json.dumps(data, ensure_ascii=False, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode("utf-8")


async def stream(
    request: web.Request, feed: LiveFeed, query: Query | None, message_id: int | None, after: int | None
):
    """Serve one EventSource: catch up from `after` (the event id the page was rendered at), then live."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the events back
        }
    )
    from gateway.ui.auth import with_headers

    with_headers(response)
    response.headers["Cache-Control"] = "no-store"
    await response.prepare(request)
    sub = await feed.subscribe(query, message_id)
    try:
        await response.write(b"retry: 3000\n\n")
        if after is not None and after < sub.start:
            if sub.start - after > CATCH_UP_LIMIT:
                await response.write(_frame("reset", {}))
                return response
            position = after
            while position < sub.start:
                events = [e for e in await feed._store().events_since(position, BATCH) if e.id <= sub.start]
                if not events:
                    break
                position = events[-1].id
                for last_id, message, deliveries, evs in await feed.changes(events):
                    wanted = sub.wants(message, deliveries, feed.matches)
                    if wanted is not None:
                        payload = {**feed.payload(message, deliveries, evs), "matches": wanted}
                        await response.write(_frame("message", payload, last_id))
        await response.write(_frame("ready", {"position": sub.start}))
        while True:
            try:
                kind, item = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
            except TimeoutError:
                await response.write(b": keepalive\n\n")
                continue
            if kind == "close":
                break
            if kind == "reset":
                await response.write(_frame("reset", {}))
                break
            last_id, payload = item
            await response.write(_frame("message", payload, last_id))
    except ConnectionResetError:
        pass  # the page went away
    finally:
        feed.unsubscribe(sub)
    return response
