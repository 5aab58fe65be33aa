"""The dispatcher: asyncio workers per transport that take due deliveries and send them.

Retries follow a schedule that is data (NAV-like by default: 5 min, 15 min, 1 h, then every
24 h) with jitter, capped by the message's time to live, with per-receiver overrides. A
per-receiver circuit breaker and concurrency limit keep a slow partner from being flooded:
its deliveries are simply not claimed while its circuit is open or its slots are full.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from gateway.config import Config
from gateway.lifecycle import Actor, DeliveryState, check_delivery
from gateway.protection.errors import ProtectionError
from gateway.registry import Registry
from gateway.routing import PEER_TRANSPORTS
from gateway.security import CMS_CONTENT_TYPE, Security
from gateway.store import Change, Claimed, Conflict, DeliveryUpdate, Event, Store
from gateway.transport import Outcome, Outgoing, SendResult, Transport

log = logging.getLogger("komut.dispatcher")


@dataclass
class Circuit:
    failures: int = 0
    open_until: float = 0.0
    half_open: bool = False


class Breakers:
    """Per-receiver circuit breakers: closed, open (no attempts), half-open (one trial attempt)."""

    def __init__(self, threshold: int, reset: float):
        self.threshold = threshold
        self.reset = reset
        self.circuits: dict[int, Circuit] = {}

    def blocked(self, receiver: int, now: float, in_flight: int) -> bool:
        circuit = self.circuits.get(receiver)
        if circuit is None or circuit.failures < self.threshold:
            return False
        if now < circuit.open_until:
            return True
        circuit.half_open = True
        return in_flight > 0  # half-open: one trial at a time

    def success(self, receiver: int) -> bool:
        """Returns True when this closes an open circuit."""
        circuit = self.circuits.pop(receiver, None)
        return circuit is not None and circuit.failures >= self.threshold

    def failure(self, receiver: int, now: float) -> bool:
        """Returns True when this failure opens the circuit."""
        circuit = self.circuits.setdefault(receiver, Circuit())
        circuit.failures += 1
        if circuit.failures >= self.threshold:
            opening = not circuit.half_open and circuit.failures == self.threshold
            circuit.open_until = now + self.reset
            circuit.half_open = False
            return opening
        return False

    def state(self) -> dict[int, str]:
        now = time.time()
        return {
            r: ("open" if now < c.open_until else "half-open")
            for r, c in self.circuits.items()
            if c.failures >= self.threshold
        }


def apprec_due_at(config: Config, msg_type: str, delivered_at: float) -> float:
    """When the AppRec for a message delivered at `delivered_at` is missed (per-type timeouts)."""
    d = config.delivery
    return delivered_at + d.apprec_timeout_by_type.get(msg_type, d.apprec_timeout)


def next_delay(schedule: tuple[float, ...], attempts: int, jitter: float, rng: random.Random) -> float:
    """Delay before attempt number `attempts + 1`; the last step of the schedule repeats."""
    base = schedule[min(attempts - 1, len(schedule) - 1)] if schedule else 60.0
    return base * (1 + rng.uniform(-jitter, jitter))


class Dispatcher:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        transports: dict[str, Transport],
        security: Security | None,
        registry: Callable[[], Registry],
        owner: str,
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        self.store = store
        self.transports = transports
        self.security = security
        self.registry = registry
        self.owner = owner
        self.clock = clock
        d = config.delivery
        self.breakers = Breakers(d.circuit_failures, d.circuit_reset)
        self.in_flight: dict[int, int] = {}  # attempts under way per receiver
        self._sending: dict[str, int] = {}  # attempts under way per transport
        self._attempts: set[int] = set()  # the deliveries of those attempts
        # One wake-up per transport: work queued for one must not make the others look for some.
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._rng = random.Random()
        self._running = False

    def _wakeup(self, name: str) -> asyncio.Event:
        event = self._wakeups.get(name)
        if event is None:
            event = self._wakeups[name] = asyncio.Event()
        return event

    def wake(self, *transports: str) -> None:
        """Look for due deliveries now: of these transports, or of all when none is named."""
        for name in transports or self.transports:
            self._wakeup(name).set()

    async def start(self) -> None:
        self._running = True
        for name in self.transports:
            self._loops.append(asyncio.create_task(self._loop(name), name=f"dispatch-{name}"))

    async def stop(self) -> None:
        self._running = False
        self.wake()
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        # In-flight sends finish or are abandoned; their leases bring them back after a restart.
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)

    def _excluded(self, now: float) -> list[int]:
        limit = self.config.delivery.concurrency_per_receiver
        out = []
        for receiver in set(self.in_flight) | set(self.breakers.circuits):
            busy = self.in_flight.get(receiver, 0)
            if busy >= self._limit(receiver, limit) or self.breakers.blocked(receiver, now, busy):
                out.append(receiver)
        return out

    def _limit(self, receiver: int, default: int) -> int:
        return int(self.config.delivery.overrides.get(receiver, {}).get("concurrency", default))

    async def _loop(self, name: str) -> None:
        d = self.config.delivery
        while self._running:
            try:
                capacity = d.workers_per_transport - self._sending.get(name, 0)
                claimed = []
                if capacity > 0:
                    now = self.clock()
                    claimed = await self.store.claim(
                        name,
                        now,
                        capacity,
                        self.owner,
                        d.lease_seconds,
                        exclude_receivers=self._excluded(now),
                    )
                for item in claimed:
                    receiver = item.delivery.receiver_her
                    self.in_flight[receiver] = self.in_flight.get(receiver, 0) + 1
                    self._sending[name] = self._sending.get(name, 0) + 1
                    self._attempts.add(item.delivery.id)
                    task = asyncio.create_task(self._deliver(name, item), name=f"{name}-{item.delivery.id}")
                    self._tasks.add(task)
                    task.add_done_callback(self._done(name, item))
                if claimed and len(claimed) == capacity:
                    continue
                wakeup = self._wakeup(name)
                wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeup.wait(), timeout=d.poll_interval)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher loop for %s failed; retrying", name)
                await asyncio.sleep(1)

    def _release(self, name: str, item: Claimed) -> None:
        """The attempt is over (its outcome may still be being stored): its worker and its slot
        for the receiver are free, so the next claim can share the outcome's commit."""
        if item.delivery.id not in self._attempts:
            return
        self._attempts.discard(item.delivery.id)
        self._sending[name] = self._sending.get(name, 1) - 1
        receiver = item.delivery.receiver_her
        left = self.in_flight.get(receiver, 1) - 1
        if left <= 0:
            self.in_flight.pop(receiver, None)
        else:
            self.in_flight[receiver] = left
        self.wake(name)

    def _done(self, name: str, item: Claimed):
        def callback(task: asyncio.Task) -> None:
            self._tasks.discard(task)
            self._release(name, item)  # if the task ended before its attempt did (cancelled)
            # A FIFO successor becomes due once the outcome is stored: look again.
            self.wake(name)

        return callback

    def _outgoing(self, name: str, item: Claimed) -> Outgoing:
        message, delivery = item.message, item.delivery
        payload = message.payload or b""
        if name in PEER_TRANSPORTS:
            body = self.security.protect(self.registry(), payload, message.sender_her, delivery.receiver_her)
            content_type = CMS_CONTENT_TYPE
        else:
            body, content_type = payload, "application/xml"
        return Outgoing(
            delivery_id=delivery.id,
            endpoint=delivery.endpoint,
            body=body,
            content_type=content_type,
            sender_her=message.sender_her,
            receiver_her=delivery.receiver_her,
            msg_type=message.msg_type,
            msg_id=message.msg_id,
            filename=f"{message.msg_type or 'message'}-{message.msg_id or message.id}.xml".lower(),
        )

    async def _deliver(self, name: str, item: Claimed) -> None:
        transport = self.transports[name]
        if name in PEER_TRANSPORTS and self.security is None:
            await self._record(
                name, item, SendResult(Outcome.PERMANENT, "this gateway has no keys to protect messages")
            )
            return
        try:
            # Signing and encrypting are CPU work; keep the event loop free for the other deliveries.
            if name in PEER_TRANSPORTS:
                outgoing = await asyncio.to_thread(self._outgoing, name, item)
            else:
                outgoing = self._outgoing(name, item)
        except ProtectionError as exc:
            await self._record(name, item, SendResult(Outcome.PERMANENT, f"cannot protect: {exc}"))
            return
        try:
            result = await transport.send(outgoing)
        except Exception as exc:  # a transport bug must not lose the delivery: retry it
            log.exception("transport %s failed on delivery %s", name, item.delivery.id)
            result = SendResult(Outcome.TRANSIENT, f"transport error: {type(exc).__name__}: {exc}")
        await self._record(name, item, result)

    async def _record(self, name: str, item: Claimed, result: SendResult) -> None:
        delivery, message = item.delivery, item.message
        now = self.clock()
        d = self.config.delivery
        attempts = delivery.attempts + 1
        fields: dict = {"attempts": attempts, "lease_owner": None, "lease_until": None}
        extra_events: list[Event] = []
        receiver = delivery.receiver_her
        if result.outcome == Outcome.DELIVERED:
            target = DeliveryState.DELIVERED
            fields["last_error"] = None
            if delivery.expects_apprec:
                fields["apprec_due_at"] = apprec_due_at(self.config, message.msg_type, now)
            if self.breakers.success(receiver):
                extra_events.append(
                    Event(
                        now,
                        Actor.WORKER,
                        "circuit closed",
                        message.id,
                        delivery.id,
                        reason=f"receiver {receiver} answers again",
                    )
                )
        elif result.outcome == Outcome.PERMANENT:
            target = DeliveryState.DEAD
            fields["last_error"] = result.detail
        else:
            schedule = tuple(d.overrides.get(receiver, {}).get("retry_schedule_seconds", d.retry_schedule))
            delay = next_delay(schedule, attempts, d.jitter, self._rng)
            if result.retry_after:
                delay = max(delay, result.retry_after)
            fields["last_error"] = result.detail
            if now + delay >= delivery.expires_at:
                target = DeliveryState.EXPIRED
            else:
                target = DeliveryState.RETRY_WAIT
                fields["next_attempt_at"] = now + delay
            if self.breakers.failure(receiver, now):
                extra_events.append(
                    Event(
                        now,
                        Actor.WORKER,
                        "circuit opened",
                        message.id,
                        delivery.id,
                        reason=f"{self.breakers.threshold} failures in a row to receiver {receiver}; "
                        f"pausing {d.circuit_reset:.0f} s",
                    )
                )
        transition = check_delivery(DeliveryState.SENDING, target)
        fields["state"] = target
        reason = result.detail or transition.trigger
        if target == DeliveryState.RETRY_WAIT:
            reason += f"; attempt {attempts}, next in {fields['next_attempt_at'] - now:.0f} s"
        event = Event(
            now,
            transition.actor,
            transition.trigger,
            message.id,
            delivery.id,
            from_state=DeliveryState.SENDING,
            to_state=target,
            reason=reason[:1000],
            details={"receipt": result.receipt} if result.receipt else {},
        )
        # The circuit breaker has counted this attempt: the slot may go to the next one now.
        self._release(name, item)
        try:
            await self.store.apply(
                Change(
                    delivery_updates=[DeliveryUpdate(delivery.id, DeliveryState.SENDING, fields)],
                    events=[event, *extra_events],
                )
            )
        except Conflict:
            # Someone moved it first, e.g. the AppRec overtook the transport receipt. Keep theirs.
            await self.store.apply(
                Change(
                    events=[
                        Event(
                            now,
                            Actor.WORKER,
                            "attempt result kept aside",
                            message.id,
                            delivery.id,
                            reason=f"{target}: {reason}"[:1000],
                        )
                    ]
                )
            )
