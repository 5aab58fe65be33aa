"""The store interface the core owns, and the records it keeps.

Adapters implement `Store` (SQLite embedded by default, PostgreSQL when scaled out, an in-memory
one for tests). The core builds a `Change` (records to insert, states to move, events to append)
and the store applies it atomically and durably; that is all the core asks of durability, which
lets a store group many changes into one commit (one fsync for many messages).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.lifecycle import DeliveryState, MessageState


class Direction(enum.StrEnum):
    OUTBOUND = "outbound"  # from one of our local systems, to be sent to a peer
    INBOUND = "inbound"  # from a peer gateway, to be delivered to one of our local systems


@dataclass
class MessageRecord:
    direction: Direction
    state: MessageState
    dedupe_key: str  # "<sender HER-id>:<MsgId>", or "sha256:<hex>" when no MsgId could be read
    received_at: float  # epoch seconds
    source: str  # where it came from: "folder:<HER-id>", "https:<peer>", "api:<client>"
    msg_id: str = ""
    msg_type: str = ""
    sender_her: int | None = None
    receiver_her: int | None = None
    conversation: str | None = None  # ConversationRef/RefToConversation, else the MsgId
    refers_to: str | None = None  # for an AppRec: the MsgId it answers
    size: int = 0
    payload: bytes | None = None  # the plain business document; stores compress it
    # Facts for display and search without patient data (names of parties, type text, ...).
    summary: dict = field(default_factory=dict)
    problems: list[dict] = field(default_factory=list)
    id: int | None = None


@dataclass
class DeliveryRecord:
    message_id: int | None  # None while the message is inserted in the same Change
    receiver_her: int
    role: str  # 8112: PRIM or COP
    transport: str  # "https", "folder", "api", "amqp"
    endpoint: str  # the transport's address for the receiver (URL, folder, queue)
    state: DeliveryState
    expires_at: float  # time to live
    expects_apprec: bool = True
    attempts: int = 0
    next_attempt_at: float | None = None
    apprec_due_at: float | None = None
    apprec_status: str | None = None  # 8258 code of the AppRec that answered it
    apprec_msg_id: str | None = None
    fifo_key: str | None = None  # set when the receiver wants FIFO per conversation
    last_error: str | None = None
    lease_owner: str | None = None
    lease_until: float | None = None
    updated_at: float = 0.0
    id: int | None = None


@dataclass
class Event:
    at: float
    actor: str
    kind: str  # the transition's trigger, or another happening ("duplicate received", "resent", ...)
    message_id: int | None = None  # None while the message is inserted in the same Change
    delivery_id: int | None = None
    from_state: str | None = None
    to_state: str | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)
    # Inside one Change, which new delivery (index into Change.new_deliveries) this event is about.
    new_delivery_index: int | None = None
    id: int | None = None


@dataclass
class DeliveryUpdate:
    delivery_id: int
    expect_state: DeliveryState | None  # optimistic check: the update applies only from this state
    fields: dict  # columns of DeliveryRecord to set, e.g. {"state": ..., "next_attempt_at": ...}


@dataclass
class Change:
    """One atomic unit of work. Events refer to the new message/deliveries by position."""

    new_message: MessageRecord | None = None
    new_deliveries: list[DeliveryRecord] = field(default_factory=list)
    message_id: int | None = None  # an existing message to update
    message_fields: dict = field(default_factory=dict)
    delivery_updates: list[DeliveryUpdate] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass
class Applied:
    message_id: int | None
    delivery_ids: list[int]
    # False when new_message's dedupe_key existed: nothing was written, message_id is the original's.
    created: bool = True


class Conflict(Exception):
    """A DeliveryUpdate's expect_state did not match: someone else moved the delivery first."""


class StoreUnavailable(Exception):
    """The store cannot take or give data now (disk full, locked by another process, I/O error,
    database unreachable); nothing of the failed call was stored. Front doors answer "try again
    later" (HTTP 503 with Retry-After) and acknowledge nothing."""

    def __init__(self, reason: str, retry_after: float = 5.0):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


@dataclass
class Query:
    """Delivery-log search. All filters are optional and combined with AND."""

    text: str | None = None  # MsgId, HER-id or party name
    her_id: int | None = None  # sender or receiver
    sender_her: int | None = None
    receiver_her: int | None = None
    msg_type: str | None = None
    state: str | None = None  # a message state or a delivery state
    conversation: str | None = None
    msg_id: str | None = None
    direction: Direction | None = None
    since: float | None = None
    until: float | None = None
    before_id: int | None = None  # keyset pagination: newest first, ids below this
    limit: int = 100


@dataclass
class PartnerStats:
    """One party's traffic in a time window, for the dashboard and the partner page."""

    her_id: int
    sent: int = 0  # messages with this party as sender
    refused: int = 0  # of those, refused by this gateway (message state rejected)
    deliveries: int = 0  # deliveries to this party
    failed: int = 0  # of those, now dead, expired, app-rejected or app-partial
    apprec_missing: int = 0  # of those, now apprec-missing


@dataclass
class Latency:
    count: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, values: Sequence[float]) -> Latency:
        """Nearest-rank percentiles: every store computes them the same way from the same values."""
        if not values:
            return cls()
        ordered = sorted(values)
        n = len(ordered)

        def rank(p: float) -> float:
            return ordered[min(n - 1, max(0, math.ceil(p * n) - 1))]

        return cls(n, rank(0.50), rank(0.90), rank(0.99), ordered[-1])


# Delivery states that count as a failure towards the receiver in PartnerStats.
FAILED_STATES = (
    DeliveryState.DEAD,
    DeliveryState.EXPIRED,
    DeliveryState.APP_REJECTED,
    DeliveryState.APP_PARTIAL,
)
# Transitions whose time, less the message's received_at, is a latency: to the transport receipt
# ("transport") and to the AppRec ("apprec").
LATENCY_STATES = {
    DeliveryState.DELIVERED: "transport",
    DeliveryState.APP_OK: "apprec",
    DeliveryState.APP_PARTIAL: "apprec",
    DeliveryState.APP_REJECTED: "apprec",
}


@dataclass
class TrafficStats:
    """Aggregates over the messages received in [since, until)."""

    since: float
    until: float
    hourly: list[tuple[float, str, int]] = field(default_factory=list)  # (hour start, msg_type, messages)
    partners: dict[int, PartnerStats] = field(default_factory=dict)
    # "transport" and "apprec": seconds from received_at to each delivered / AppRec transition.
    latency: dict[str, Latency] = field(default_factory=dict)


@dataclass
class Claimed:
    delivery: DeliveryRecord
    message: MessageRecord  # with payload


class Store(Protocol):
    """What the core asks of a store.

    A store several gateway nodes share (PostgreSQL) also has `shared = True` (other nodes hold
    live leases in it: only expired ones may be released) and `async listen(callback)` (call
    `callback` when another node has queued work). The composition root looks for both with
    getattr; stores used by one node need neither.
    """

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def apply(self, change: Change) -> Applied:
        """Apply atomically and durably; return only once it is on disk. Raises Conflict."""

    async def claim(
        self,
        transport: str,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        exclude_receivers: Sequence[int] = (),
    ) -> list[Claimed]:
        """Move due deliveries (queued, or retry-wait with next_attempt_at <= now) to sending with a lease.

        Oldest first. A delivery with a fifo_key is due only when no older delivery with the same
        receiver_her and fifo_key is still queued, sending or retry-wait. Each claimed delivery
        gets an event. Deliveries to `exclude_receivers` (open circuits) are skipped.
        """

    async def release_expired_leases(self, now: float, *, expired_by: float | None = None) -> int:
        """Put sending deliveries whose lease ran out by ``expired_by`` (default: ``now``) back to
        queued (resumed after restart); ``now`` is when that happens, for the events and rows."""

    async def get_message(self, message_id: int, with_payload: bool = False) -> MessageRecord | None: ...

    async def find_message(self, dedupe_key: str) -> MessageRecord | None: ...

    async def find_by_msg_id(
        self, msg_id: str, direction: Direction | None = None
    ) -> list[MessageRecord]: ...

    async def deliveries(self, message_id: int) -> list[DeliveryRecord]: ...

    async def events(self, message_id: int) -> list[Event]: ...

    async def has_event(self, message_id: int, kind: str, delivery_id: int | None = None) -> bool:
        """Whether the message (and that delivery, if given) has an event of this kind: one indexed
        lookup where `events` decodes every event of the message (asked on every read receipt)."""
        ...

    async def search(self, query: Query) -> list[MessageRecord]: ...

    async def due(
        self, now: float, states: Sequence[DeliveryState], field_name: str, limit: int
    ) -> list[DeliveryRecord]:
        """Deliveries in `states` whose `field_name` (expires_at or apprec_due_at) is <= now."""

    async def purge_payloads(self, older_than: float, max_total_bytes: int | None) -> int:
        """Drop payloads: those received before `older_than`, then the oldest (final ones first)
        until what is kept fits under max_total_bytes. Metadata and events stay. Returns count."""

    async def counts(self) -> dict[str, int]:
        """Deliveries per state, for dashboards and metrics."""

    async def traffic_stats(self, since: float, until: float) -> TrafficStats:
        """Volume per hour and type, per-partner refusals and failures, and latency percentiles of
        the messages received in [since, until) (tests/test_store_stats.py pins the semantics)."""

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        """Events with an id above `after_id`, oldest first: the change feed for live views."""

    async def last_event_id(self) -> int:
        """The newest event's id, 0 when there is none: where a live view starts following."""
