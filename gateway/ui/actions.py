"""What an operator may do to a message: resend or cancel a delivery, mark a message handled.

Every action goes through the lifecycle table (`check_delivery`), is applied with the state the
operator saw as the expected state (two operators, or an operator and a worker, cannot both move
the same delivery), becomes an event in the message's timeline carrying the operator's name, and
an entry in the audit log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from gateway.lifecycle import Actor, DeliveryState, IllegalTransition, check_delivery
from gateway.store import Change, Conflict, DeliveryRecord, DeliveryUpdate, Event
from gateway.ui.auth import Auth, Principal

log = logging.getLogger("komut.ui.actions")

MAX_REASON = 500


class ActionError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Done:
    message_id: int
    delivery_id: int | None
    event: str
    detail: str


def _reason(text: str | None, required: bool) -> str:
    text = " ".join((text or "").split())[:MAX_REASON]
    if required and len(text) < 3:
        raise ActionError(400, "a reason is required (a few words saying why)")
    return text


async def _delivery(store, message_id: int, delivery_id: int) -> DeliveryRecord:
    for d in await store.deliveries(message_id):
        if d.id == delivery_id:
            return d
    raise ActionError(404, f"message {message_id} has no delivery {delivery_id}")


def allowed(state: DeliveryState, target: DeliveryState) -> bool:
    try:
        check_delivery(state, target)
    except IllegalTransition:
        return False
    return True


class Actions:
    def __init__(self, gateway, auth: Auth, clock):
        self.gateway = gateway
        self.auth = auth
        self.clock = clock

    @property
    def store(self):
        return self.gateway.store

    def _ttl(self, receiver: int) -> float:
        d = self.gateway.config.delivery
        return float(d.overrides.get(receiver, {}).get("ttl", d.ttl))

    async def resend(
        self, who: Principal, message_id: int, delivery_id: int, reason: str | None, request=None
    ) -> Done:
        d = await _delivery(self.store, message_id, delivery_id)
        target = DeliveryState.QUEUED
        if not allowed(d.state, target):
            raise ActionError(409, f"a delivery that is {d.state} cannot be resent")
        why = _reason(reason, required=False) or "resent by an operator"
        now = self.clock()
        transition = check_delivery(d.state, target)
        fields = {
            "state": target,
            "next_attempt_at": now,
            "attempts": 0,
            # A fresh time to live: the old one may be what ran out (expired), and the timer would
            # otherwise expire the resent delivery again at once.
            "expires_at": now + self._ttl(d.receiver_her),
            "apprec_due_at": None,
            "apprec_status": None,
            "apprec_msg_id": None,
            "last_error": None,
        }
        event = Event(
            now,
            Actor.OPERATOR,
            transition.trigger,
            message_id,
            delivery_id,
            from_state=d.state,
            to_state=target,
            reason=why,
            details={"user": who.name},
        )
        await self._apply(Change(delivery_updates=[DeliveryUpdate(d.id, d.state, fields)], events=[event]), d)
        if self.gateway.dispatcher is not None:
            self.gateway.dispatcher.wake()
        await self.auth.audit(
            who.name,
            "resend",
            request,
            message_id=message_id,
            delivery_id=delivery_id,
            reason=why,
            details={"from": str(d.state), "receiver": d.receiver_her},
        )
        return Done(message_id, delivery_id, "resend", f"delivery to {d.receiver_her} queued again")

    async def cancel(
        self, who: Principal, message_id: int, delivery_id: int, reason: str | None, request=None
    ) -> Done:
        d = await _delivery(self.store, message_id, delivery_id)
        target = DeliveryState.CANCELLED
        if not allowed(d.state, target):
            raise ActionError(409, f"a delivery that is {d.state} cannot be cancelled")
        why = _reason(reason, required=True)
        now = self.clock()
        transition = check_delivery(d.state, target)
        event = Event(
            now,
            Actor.OPERATOR,
            transition.trigger,
            message_id,
            delivery_id,
            from_state=d.state,
            to_state=target,
            reason=why,
            details={"user": who.name},
        )
        fields = {"state": target, "next_attempt_at": None}
        await self._apply(Change(delivery_updates=[DeliveryUpdate(d.id, d.state, fields)], events=[event]), d)
        await self.auth.audit(
            who.name,
            "cancel",
            request,
            message_id=message_id,
            delivery_id=delivery_id,
            reason=why,
            details={"from": str(d.state), "receiver": d.receiver_her},
        )
        return Done(message_id, delivery_id, "cancel", f"delivery to {d.receiver_her} cancelled")

    async def handled(self, who: Principal, message_id: int, reason: str | None, request=None) -> Done:
        message = await self.store.get_message(message_id)
        if message is None:
            raise ActionError(404, f"no message {message_id}")
        why = _reason(reason, required=True)
        now = self.clock()
        summary = dict(message.summary or {})
        # Kept on the message so that attention lists can leave it out until something new happens.
        summary["handled"] = {"by": who.name, "at": now, "reason": why}
        change = Change(
            message_id=message_id,
            message_fields={"summary": summary},
            events=[
                Event(
                    now, Actor.OPERATOR, "marked handled", message_id, reason=why, details={"user": who.name}
                )
            ],
        )
        await self.store.apply(change)
        await self.auth.audit(who.name, "handled", request, message_id=message_id, reason=why)
        return Done(message_id, None, "handled", "marked handled")

    async def _apply(self, change: Change, d: DeliveryRecord) -> None:
        try:
            await self.store.apply(change)
        except Conflict:
            raise ActionError(
                409, f"the delivery to {d.receiver_her} changed meanwhile (it was {d.state}); look again"
            ) from None
