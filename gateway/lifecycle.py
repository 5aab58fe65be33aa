"""The message lifecycle as one table: every state and every allowed transition.

The code (`check`), the docs (`komut lifecycle --mermaid` renders docs/lifecycle.md) and the UI
all read this table. A message has a state of its own (was it taken in?) and each of its
receivers has a delivery state (where is it now?). Late transitions the standards allow are rows
here, not special cases: a negative AppRec after "delivered", a late positive one after the
96-hour alarm (HITS 1168: the old rule forbidding import after 96 h was removed).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class MessageState(enum.StrEnum):
    RECEIVED = "received"  # durable, not yet checked
    ACCEPTED = "accepted"  # valid and routed: one delivery per receiver
    REJECTED = (
        "rejected"  # refused (format, signature, routing); an AppRec goes back where the standard says so
    )
    DUPLICATE = "duplicate"  # the same sender sent this MsgId before; the original stands


class DeliveryState(enum.StrEnum):
    QUEUED = "queued"  # waiting for a worker
    SENDING = "sending"  # a worker holds it
    RETRY_WAIT = "retry-wait"  # a transient failure; next attempt is scheduled
    DELIVERED = "delivered"  # transport receipt: the receiving side has it durably
    APP_OK = "app-ok"  # AppRec status 1
    APP_REJECTED = "app-rejected"  # AppRec status 2
    APP_PARTIAL = "app-partial"  # AppRec status 3, OK with errors in a part
    APPREC_MISSING = "apprec-missing"  # no AppRec within the configured time (96 h by default)
    EXPIRED = "expired"  # its time to live ran out before delivery
    DEAD = "dead"  # a permanent failure: the receiver refused it or it cannot be sent
    CANCELLED = "cancelled"  # an operator stopped it


class Actor(enum.StrEnum):
    GATEWAY = "gateway"
    WORKER = "worker"
    PEER = "peer"  # the other gateway or local system, e.g. by a transport receipt or AppRec
    TIMER = "timer"
    OPERATOR = "operator"


@dataclass(frozen=True)
class Transition:
    source: DeliveryState | MessageState | None  # None: the record is created
    target: DeliveryState | MessageState
    trigger: str
    actor: Actor


D, M = DeliveryState, MessageState
_ALL_WAITING = (D.QUEUED, D.RETRY_WAIT)

MESSAGE_TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, M.RECEIVED, "stored", Actor.GATEWAY),
    Transition(M.RECEIVED, M.ACCEPTED, "validated and routed", Actor.GATEWAY),
    Transition(M.RECEIVED, M.REJECTED, "refused", Actor.GATEWAY),
    Transition(M.RECEIVED, M.DUPLICATE, "MsgId already received from this sender", Actor.GATEWAY),
)

DELIVERY_TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, D.QUEUED, "routed to a receiver", Actor.GATEWAY),
    Transition(D.QUEUED, D.SENDING, "attempt", Actor.WORKER),
    Transition(D.RETRY_WAIT, D.SENDING, "attempt", Actor.WORKER),
    Transition(D.SENDING, D.DELIVERED, "transport receipt", Actor.PEER),
    Transition(D.SENDING, D.RETRY_WAIT, "transient failure", Actor.WORKER),
    Transition(D.SENDING, D.DEAD, "permanent failure", Actor.WORKER),
    # A worker that died mid-send leaves SENDING behind; the next start puts it back in the queue.
    Transition(D.SENDING, D.QUEUED, "resumed after restart", Actor.GATEWAY),
    *(Transition(s, D.EXPIRED, "time to live ran out", Actor.TIMER) for s in (*_ALL_WAITING, D.SENDING)),
    Transition(D.DELIVERED, D.APP_OK, "AppRec OK", Actor.PEER),
    Transition(D.DELIVERED, D.APP_REJECTED, "AppRec rejected", Actor.PEER),
    Transition(D.DELIVERED, D.APP_PARTIAL, "AppRec OK with errors", Actor.PEER),
    # The AppRec may overtake the transport receipt (e.g. the receipt was lost on a crash).
    Transition(D.SENDING, D.APP_OK, "AppRec OK before transport receipt", Actor.PEER),
    Transition(D.SENDING, D.APP_REJECTED, "AppRec rejected before transport receipt", Actor.PEER),
    Transition(D.SENDING, D.APP_PARTIAL, "AppRec OK with errors before transport receipt", Actor.PEER),
    Transition(D.RETRY_WAIT, D.APP_OK, "AppRec OK before transport receipt", Actor.PEER),
    Transition(D.RETRY_WAIT, D.APP_REJECTED, "AppRec rejected before transport receipt", Actor.PEER),
    Transition(D.RETRY_WAIT, D.APP_PARTIAL, "AppRec OK with errors before transport receipt", Actor.PEER),
    # Also back in the queue after a crash: the attempt cut short had reached the receiver.
    Transition(D.QUEUED, D.APP_OK, "AppRec OK before transport receipt", Actor.PEER),
    Transition(D.QUEUED, D.APP_REJECTED, "AppRec rejected before transport receipt", Actor.PEER),
    Transition(D.QUEUED, D.APP_PARTIAL, "AppRec OK with errors before transport receipt", Actor.PEER),
    Transition(D.DELIVERED, D.APPREC_MISSING, "no AppRec in time", Actor.TIMER),
    # A broker took it (the transport receipt), then the receiver reported it could not take it
    # (Helsenorge's error queue, e.g. it cannot decrypt): it will never arrive as it is.
    Transition(D.DELIVERED, D.DEAD, "error reported by the receiver", Actor.PEER),
    Transition(D.APPREC_MISSING, D.APP_OK, "late AppRec OK", Actor.PEER),
    Transition(D.APPREC_MISSING, D.APP_REJECTED, "late AppRec rejected", Actor.PEER),
    Transition(D.APPREC_MISSING, D.APP_PARTIAL, "late AppRec OK with errors", Actor.PEER),
    # A receiver may correct itself: a negative AppRec after a positive one (HITS 1168 allows it).
    Transition(D.APP_OK, D.APP_REJECTED, "AppRec rejected after OK", Actor.PEER),
    *(Transition(s, D.CANCELLED, "cancelled", Actor.OPERATOR) for s in (*_ALL_WAITING, D.APPREC_MISSING)),
    *(
        Transition(s, D.QUEUED, "resend", Actor.OPERATOR)
        for s in (D.DEAD, D.EXPIRED, D.CANCELLED, D.APP_REJECTED, D.APPREC_MISSING)
    ),
)

# States where nothing more happens by itself. DELIVERED is final for what expects no AppRec
# (an AppRec itself); otherwise it waits for one.
FINAL_DELIVERY_STATES = frozenset({D.APP_OK, D.APP_REJECTED, D.APP_PARTIAL, D.EXPIRED, D.DEAD, D.CANCELLED})
FINAL_MESSAGE_STATES = frozenset({M.REJECTED, M.DUPLICATE})
# States an operator should look at.
ATTENTION_STATES = frozenset({D.APP_REJECTED, D.APP_PARTIAL, D.APPREC_MISSING, D.EXPIRED, D.DEAD})
# A worker may pick these up.
CLAIMABLE_STATES = frozenset(_ALL_WAITING)

_DELIVERY_INDEX = {(t.source, t.target): t for t in DELIVERY_TRANSITIONS}
_MESSAGE_INDEX = {(t.source, t.target): t for t in MESSAGE_TRANSITIONS}

APPREC_TARGET = {"1": D.APP_OK, "2": D.APP_REJECTED, "3": D.APP_PARTIAL}


class IllegalTransition(Exception):
    pass


def check_delivery(source: DeliveryState | None, target: DeliveryState) -> Transition:
    try:
        return _DELIVERY_INDEX[(source, target)]
    except KeyError:
        raise IllegalTransition(f"delivery cannot go from {source} to {target}") from None


def check_message(source: MessageState | None, target: MessageState) -> Transition:
    try:
        return _MESSAGE_INDEX[(source, target)]
    except KeyError:
        raise IllegalTransition(f"message cannot go from {source} to {target}") from None


def is_final(state: DeliveryState, expects_apprec: bool = True) -> bool:
    return state in FINAL_DELIVERY_STATES or (state == D.DELIVERED and not expects_apprec)


def mermaid() -> str:
    """The delivery state diagram, generated from the table (docs/lifecycle.md is made from it)."""
    lines = ["stateDiagram-v2"]
    for t in DELIVERY_TRANSITIONS:
        source = "[*]" if t.source is None else t.source.value.replace("-", "_")
        lines.append(f"    {source} --> {t.target.value.replace('-', '_')}: {t.trigger} ({t.actor.value})")
    for state in sorted(FINAL_DELIVERY_STATES):
        lines.append(f"    {state.value.replace('-', '_')} --> [*]")
    return "\n".join(lines)
