"""The store in plain Python dicts, for fast tests of the core.

Same semantics as the SQLite store (tests/test_store_contract.py runs both through the same
suite): records are copied in and out, JSON fields go through a JSON round trip so that what the
core puts there must be storable, payloads are kept zlib-compressed so the size cap counts the
same bytes. Nothing survives the process; close() and open() keep the data of this instance.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import json
import time
import zlib
from collections.abc import Sequence
from typing import Any

from gateway.lifecycle import (
    CLAIMABLE_STATES,
    FINAL_DELIVERY_STATES,
    FINAL_MESSAGE_STATES,
    DeliveryState,
    MessageState,
    check_delivery,
)
from gateway.store import (
    FAILED_STATES,
    LATENCY_STATES,
    Applied,
    Change,
    Claimed,
    Conflict,
    DeliveryRecord,
    Direction,
    Event,
    Latency,
    MessageRecord,
    PartnerStats,
    Query,
    TrafficStats,
)

COMPRESS_LEVEL = 1  # the SQLite store's default, so both count the same stored bytes
MAX_LIMIT = 1000
ACTIVE_STATES = frozenset({DeliveryState.QUEUED, DeliveryState.SENDING, DeliveryState.RETRY_WAIT})
MESSAGE_FIELDS = frozenset(f.name for f in dataclasses.fields(MessageRecord)) - {"id"}
DELIVERY_FIELDS = frozenset(f.name for f in dataclasses.fields(DeliveryRecord)) - {"id", "message_id"}
TIME_FIELDS = frozenset({"expires_at", "apprec_due_at", "next_attempt_at", "lease_until", "updated_at"})


def _roundtrip(value: Any) -> Any:
    return json.loads(json.dumps(value, ensure_ascii=False, default=str))


def _str(value):
    return None if value is None else str(value)


@dataclasses.dataclass
class _Payload:
    received_at: float
    blob: bytes


class MemoryStore:
    def __init__(self) -> None:
        self.commits = 0  # one per applied change: nothing to group without a disk
        self._messages: dict[int, MessageRecord] = {}
        self._payloads: dict[int, _Payload] = {}
        self._by_key: dict[str, int] = {}
        self._deliveries: dict[int, DeliveryRecord] = {}
        self._deliveries_of: dict[int, list[int]] = {}
        self._events: dict[int | None, list[Event]] = {}
        self._event_log: list[Event] = []  # every event in id order: the change feed
        self._next = {"message": 1, "delivery": 1, "event": 1}
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    def _check_open(self) -> None:
        if not self._open:
            raise RuntimeError("store is not open")

    def _id(self, kind: str) -> int:
        value = self._next[kind]
        self._next[kind] = value + 1
        return value

    # --- copies in and out ---------------------------------------------------------------------

    def _message_out(self, record: MessageRecord, with_payload: bool = False) -> MessageRecord:
        out = dataclasses.replace(
            record,
            summary=copy.deepcopy(record.summary),
            problems=copy.deepcopy(record.problems),
            payload=None,
        )
        if with_payload and record.id in self._payloads:
            out.payload = zlib.decompress(self._payloads[record.id].blob)
        return out

    @staticmethod
    def _delivery_out(record: DeliveryRecord) -> DeliveryRecord:
        return dataclasses.replace(record)

    @staticmethod
    def _event_out(event: Event) -> Event:
        return dataclasses.replace(event, details=copy.deepcopy(event.details))

    # --- apply ---------------------------------------------------------------------------------

    async def apply(self, change: Change) -> Applied:
        self._check_open()
        # Everything that can fail is checked before anything is touched: all or nothing.
        m = change.new_message
        if m is not None and m.dedupe_key in self._by_key:
            existing = self._by_key[m.dedupe_key]
            return Applied(existing, list(self._deliveries_of.get(existing, [])), created=False)
        for key in change.message_fields:
            if key not in MESSAGE_FIELDS:
                raise ValueError(f"unknown message field {key!r}")
        if change.message_fields:
            if change.message_id is None:
                raise ValueError("message_fields without message_id")
            if change.message_id not in self._messages:
                raise LookupError(f"no message {change.message_id}")
        states: dict[int, str] = {}  # as the updates before this one in the change leave them
        for update in change.delivery_updates:
            for key in update.fields:
                if key not in DELIVERY_FIELDS:
                    raise ValueError(f"unknown delivery field {key!r}")
            current = self._deliveries.get(update.delivery_id)
            if current is None:
                raise LookupError(f"no delivery {update.delivery_id}")
            state = states.get(update.delivery_id, current.state)
            if update.expect_state is not None and state != update.expect_state:
                raise Conflict(f"delivery {update.delivery_id} is no longer {update.expect_state}")
            states[update.delivery_id] = update.fields.get("state", state)
        has_message = m is not None or change.message_id is not None
        for d in change.new_deliveries:
            if d.message_id is None and not has_message:
                raise ValueError("a new delivery needs a message: new_message, message_id or its own")
        for e in change.events:
            if e.new_delivery_index is not None and e.delivery_id is None:
                change.new_deliveries[e.new_delivery_index]  # IndexError before anything is written
        summary = _roundtrip(m.summary) if m is not None else None
        problems = _roundtrip(m.problems) if m is not None else None
        fields = {
            k: _roundtrip(v) if k in ("summary", "problems") else v for k, v in change.message_fields.items()
        }
        events = [(e, _roundtrip(e.details or {})) for e in change.events]

        # The store has no clock of its own; the change's latest event says when it happened.
        now = max((e.at for e in change.events), default=None)
        if now is None:
            now = time.time()
        new_id = None
        if m is not None:
            new_id = self._id("message")
            record = dataclasses.replace(m, id=new_id, payload=None, summary=summary, problems=problems)
            record.direction = Direction(record.direction)
            record.state = MessageState(record.state)
            self._messages[new_id] = record
            self._by_key[m.dedupe_key] = new_id
            if m.payload is not None:
                self._payloads[new_id] = _Payload(m.received_at, zlib.compress(m.payload, COMPRESS_LEVEL))
        message_id = new_id if new_id is not None else change.message_id

        if fields:
            record = self._messages[change.message_id]
            for key, value in fields.items():
                if key == "payload":
                    if value is None:
                        self._payloads.pop(record.id, None)
                    else:
                        self._payloads[record.id] = _Payload(
                            record.received_at, zlib.compress(value, COMPRESS_LEVEL)
                        )
                    continue
                if key == "dedupe_key":
                    self._by_key.pop(record.dedupe_key, None)
                    self._by_key[value] = record.id
                setattr(record, key, value)
            record.direction = Direction(record.direction)
            record.state = MessageState(record.state)

        delivery_ids = []
        for d in change.new_deliveries:
            delivery_id = self._id("delivery")
            owner = d.message_id if d.message_id is not None else message_id
            record = dataclasses.replace(
                d,
                id=delivery_id,
                message_id=owner,
                state=DeliveryState(d.state),
                updated_at=d.updated_at or now,
            )
            self._deliveries[delivery_id] = record
            self._deliveries_of.setdefault(owner, []).append(delivery_id)
            delivery_ids.append(delivery_id)

        for update in change.delivery_updates:
            record = self._deliveries[update.delivery_id]
            for key, value in update.fields.items():
                setattr(record, key, value)
            if "updated_at" not in update.fields:
                record.updated_at = now
            record.state = DeliveryState(record.state)
            record.expects_apprec = bool(record.expects_apprec)

        for e, details in events:
            delivery_id = e.delivery_id
            if delivery_id is None and e.new_delivery_index is not None:
                delivery_id = delivery_ids[e.new_delivery_index]
            self._add_event(
                Event(
                    at=e.at,
                    actor=str(e.actor),
                    kind=str(e.kind),
                    message_id=e.message_id if e.message_id is not None else message_id,
                    delivery_id=delivery_id,
                    from_state=_str(e.from_state),
                    to_state=_str(e.to_state),
                    reason=e.reason or "",
                    details=details,
                )
            )
        self.commits += 1
        return Applied(message_id, delivery_ids, created=True)

    def _add_event(self, event: Event) -> None:
        event.id = self._id("event")
        self._events.setdefault(event.message_id, []).append(event)
        self._event_log.append(event)

    # --- claim and leases ----------------------------------------------------------------------

    def _fifo_blocked(self, d: DeliveryRecord) -> bool:
        if d.fifo_key is None:
            return False
        return any(
            o.id < d.id
            and o.fifo_key == d.fifo_key
            and o.receiver_her == d.receiver_her
            and o.state in ACTIVE_STATES
            for o in self._deliveries.values()
        )

    async def claim(
        self,
        transport: str,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        exclude_receivers: Sequence[int] = (),
    ) -> list[Claimed]:
        self._check_open()
        excluded = frozenset(exclude_receivers)
        picked: list[DeliveryRecord] = []
        for delivery_id in sorted(self._deliveries):
            if len(picked) >= limit:
                break
            d = self._deliveries[delivery_id]
            if d.transport != transport or d.state not in CLAIMABLE_STATES:
                continue
            if d.state == DeliveryState.RETRY_WAIT and (d.next_attempt_at is None or d.next_attempt_at > now):
                continue
            if d.receiver_her in excluded or self._fifo_blocked(d):
                continue
            picked.append(d)
        attempt = check_delivery(DeliveryState.QUEUED, DeliveryState.SENDING)
        out = []
        for d in picked:
            from_state = d.state
            d.state = DeliveryState.SENDING
            d.lease_owner = owner
            d.lease_until = now + lease_seconds
            d.updated_at = now
            self._add_event(
                Event(
                    at=now,
                    actor=str(attempt.actor),
                    kind=attempt.trigger,
                    message_id=d.message_id,
                    delivery_id=d.id,
                    from_state=str(from_state),
                    to_state=str(DeliveryState.SENDING),
                    reason=f"attempt {d.attempts + 1}",
                    details={"owner": owner},
                )
            )
            message = self._message_out(self._messages[d.message_id], with_payload=True)
            out.append(Claimed(self._delivery_out(d), message))
        if picked:
            self.commits += 1
        return out

    async def release_expired_leases(self, now: float, *, expired_by: float | None = None) -> int:
        self._check_open()
        limit = now if expired_by is None else expired_by
        resumed = check_delivery(DeliveryState.SENDING, DeliveryState.QUEUED)
        count = 0
        for delivery_id in sorted(self._deliveries):
            d = self._deliveries[delivery_id]
            if d.state != DeliveryState.SENDING or (d.lease_until is not None and d.lease_until > limit):
                continue
            owner = d.lease_owner
            d.state = DeliveryState.QUEUED
            d.lease_owner = d.lease_until = None
            d.updated_at = now
            self._add_event(
                Event(
                    at=now,
                    actor=str(resumed.actor),
                    kind=resumed.trigger,
                    message_id=d.message_id,
                    delivery_id=d.id,
                    from_state=str(DeliveryState.SENDING),
                    to_state=str(DeliveryState.QUEUED),
                    reason=f"lease of {owner} ran out",
                )
            )
            count += 1
        return count

    # --- reads ---------------------------------------------------------------------------------

    async def get_message(self, message_id: int, with_payload: bool = False) -> MessageRecord | None:
        self._check_open()
        record = self._messages.get(message_id)
        return None if record is None else self._message_out(record, with_payload)

    async def find_message(self, dedupe_key: str) -> MessageRecord | None:
        self._check_open()
        message_id = self._by_key.get(dedupe_key)
        return None if message_id is None else self._message_out(self._messages[message_id])

    async def find_by_msg_id(self, msg_id: str, direction: Direction | None = None) -> list[MessageRecord]:
        self._check_open()
        return [
            self._message_out(m)
            for _, m in sorted(self._messages.items())
            if m.msg_id == msg_id and (direction is None or m.direction == direction)
        ]

    async def deliveries(self, message_id: int) -> list[DeliveryRecord]:
        self._check_open()
        return [self._delivery_out(self._deliveries[i]) for i in self._deliveries_of.get(message_id, [])]

    async def events(self, message_id: int) -> list[Event]:
        self._check_open()
        return [self._event_out(e) for e in self._events.get(message_id, [])]

    async def has_event(self, message_id: int, kind: str, delivery_id: int | None = None) -> bool:
        self._check_open()
        return any(
            e.kind == kind and (delivery_id is None or e.delivery_id == delivery_id)
            for e in self._events.get(message_id, [])
        )

    async def due(
        self, now: float, states: Sequence[DeliveryState], field_name: str, limit: int
    ) -> list[DeliveryRecord]:
        self._check_open()
        if field_name not in TIME_FIELDS:
            raise ValueError(f"due() cannot look at {field_name!r}")
        wanted = {str(s) for s in states}
        hits = [
            d
            for d in self._deliveries.values()
            if str(d.state) in wanted and getattr(d, field_name) is not None and getattr(d, field_name) <= now
        ]
        hits.sort(key=lambda d: (getattr(d, field_name), d.id))
        return [self._delivery_out(d) for d in hits[: max(limit, 0)]]

    async def counts(self) -> dict[str, int]:
        self._check_open()
        out = {str(state): 0 for state in DeliveryState}
        for d in self._deliveries.values():
            out[str(d.state)] += 1
        return out

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        self._check_open()
        start = bisect.bisect_right(self._event_log, after_id, key=lambda e: e.id)
        return [self._event_out(e) for e in self._event_log[start : start + max(limit, 0)]]

    async def last_event_id(self) -> int:
        self._check_open()
        return self._event_log[-1].id if self._event_log else 0

    # --- statistics ----------------------------------------------------------------------------

    async def traffic_stats(self, since: float, until: float) -> TrafficStats:
        self._check_open()
        hourly: dict[tuple[float, str], int] = {}
        partners: dict[int, PartnerStats] = {}
        latencies: dict[str, list[float]] = {kind: [] for kind in set(LATENCY_STATES.values())}
        failed = {str(s) for s in FAILED_STATES}
        for m in self._messages.values():
            if not since <= m.received_at < until:
                continue
            hour = float(int(m.received_at // 3600) * 3600)
            hourly[(hour, m.msg_type)] = hourly.get((hour, m.msg_type), 0) + 1
            if m.sender_her is not None:
                p = partners.setdefault(m.sender_her, PartnerStats(m.sender_her))
                p.sent += 1
                p.refused += m.state == MessageState.REJECTED
            for i in self._deliveries_of.get(m.id, []):
                d = self._deliveries[i]
                p = partners.setdefault(d.receiver_her, PartnerStats(d.receiver_her))
                p.deliveries += 1
                p.failed += str(d.state) in failed
                p.apprec_missing += d.state == DeliveryState.APPREC_MISSING
            for e in self._events.get(m.id, []):
                kind = LATENCY_STATES.get(e.to_state) if e.to_state else None
                if kind is not None:
                    latencies[kind].append(e.at - m.received_at)
        return TrafficStats(
            since=since,
            until=until,
            hourly=sorted((hour, t, n) for (hour, t), n in hourly.items()),
            partners=partners,
            latency={kind: Latency.of(values) for kind, values in latencies.items()},
        )

    # --- search --------------------------------------------------------------------------------

    def _her_matches(self, m: MessageRecord, her: int) -> bool:
        if her in (m.sender_her, m.receiver_her):
            return True
        return any(self._deliveries[i].receiver_her == her for i in self._deliveries_of.get(m.id, []))

    def _text_matches(self, m: MessageRecord, text: str) -> bool:
        if m.msg_id == text:
            return True
        if text.isascii() and text.isdigit() and len(text) <= 18 and self._her_matches(m, int(text)):
            return True
        folded = text.casefold()
        for key in ("sender_name", "receiver_name"):
            name = m.summary.get(key)
            if isinstance(name, str) and name and folded in name.casefold():
                return True
        return False

    def _matches(self, m: MessageRecord, q: Query) -> bool:
        if q.before_id is not None and m.id >= q.before_id:
            return False
        for attr in ("sender_her", "receiver_her", "msg_type", "conversation", "msg_id", "direction"):
            wanted = getattr(q, attr)
            if wanted is not None and getattr(m, attr) != wanted:
                return False
        if q.since is not None and m.received_at < q.since:
            return False
        if q.until is not None and m.received_at >= q.until:
            return False
        if q.state is not None:
            if q.state in MessageState._value2member_map_:
                if m.state != q.state:
                    return False
            elif not any(self._deliveries[i].state == q.state for i in self._deliveries_of.get(m.id, [])):
                return False
        if q.her_id is not None and not self._her_matches(m, q.her_id):
            return False
        text = (q.text or "").strip()
        return not text or self._text_matches(m, text)

    async def search(self, query: Query) -> list[MessageRecord]:
        self._check_open()
        limit = max(1, min(int(query.limit), MAX_LIMIT))
        out = []
        for message_id in sorted(self._messages, reverse=True):
            m = self._messages[message_id]
            if self._matches(m, query):
                out.append(self._message_out(m))
                if len(out) >= limit:
                    break
        return out

    # --- retention -----------------------------------------------------------------------------

    def _final(self, message_id: int) -> bool:
        if self._messages[message_id].state in FINAL_MESSAGE_STATES:
            return True
        for i in self._deliveries_of.get(message_id, []):
            d = self._deliveries[i]
            done = d.state in FINAL_DELIVERY_STATES or (
                d.state == DeliveryState.DELIVERED and not d.expects_apprec
            )
            if not done:
                return False
        return True

    async def purge_payloads(self, older_than: float, max_total_bytes: int | None) -> int:
        self._check_open()
        old = [i for i, p in self._payloads.items() if p.received_at < older_than]
        for i in old:
            del self._payloads[i]
        purged = len(old)
        if max_total_bytes is None:
            return purged
        excess = sum(len(p.blob) for p in self._payloads.values()) - max_total_bytes
        if excess <= 0:
            return purged
        order = sorted(self._payloads, key=lambda i: (not self._final(i), self._payloads[i].received_at, i))
        for i in order:
            excess -= len(self._payloads.pop(i).blob)
            purged += 1
            if excess <= 0:
                break
        return purged
