"""Things that happen because time passes: expiry, the missing-AppRec alarm, lease release,
payload retention. Each moves deliveries only through the lifecycle table."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.config import Config
from gateway.lifecycle import Actor, DeliveryState, check_delivery
from gateway.store import Change, Conflict, DeliveryUpdate, Event, Store

log = logging.getLogger("komut.timers")
BATCH = 500


class Timers:
    def __init__(
        self, *, config: Config, store: Store, clock: Callable[[], float] = time.time, interval: float = 1.0
    ):
        self.config = config
        self.store = store
        self.clock = clock
        self.interval = interval
        self._task: asyncio.Task | None = None
        self._last_retention = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="timers")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer tick failed")
            await asyncio.sleep(self.interval)

    async def tick(self) -> dict[str, int]:
        now = self.clock()
        counts = {
            "expired": await self._move(
                now, (DeliveryState.QUEUED, DeliveryState.RETRY_WAIT), "expires_at", DeliveryState.EXPIRED
            ),
            "apprec_missing": await self._move(
                now, (DeliveryState.DELIVERED,), "apprec_due_at", DeliveryState.APPREC_MISSING
            ),
            "leases_released": await self.store.release_expired_leases(now),
        }
        r = self.config.retention
        if now - self._last_retention >= r.interval:
            self._last_retention = now
            counts["payloads_purged"] = await self.store.purge_payloads(
                now - r.payload_days * 86400, r.payload_max_bytes
            )
        return counts

    async def _move(self, now: float, states, field_name: str, target: DeliveryState) -> int:
        moved = 0
        for delivery in await self.store.due(now, states, field_name, BATCH):
            if target == DeliveryState.APPREC_MISSING and not delivery.expects_apprec:
                continue
            transition = check_delivery(delivery.state, target)
            reason = transition.trigger
            if target == DeliveryState.APPREC_MISSING:
                hours = self.config.delivery.apprec_timeout / 3600
                reason = f"ALARM: no AppRec from receiver {delivery.receiver_her} within {hours:g} h; handle manually"
            try:
                await self.store.apply(
                    Change(
                        delivery_updates=[DeliveryUpdate(delivery.id, delivery.state, {"state": target})],
                        events=[
                            Event(
                                now,
                                Actor.TIMER,
                                transition.trigger,
                                delivery.message_id,
                                delivery.id,
                                from_state=delivery.state,
                                to_state=target,
                                reason=reason,
                            )
                        ],
                    )
                )
                moved += 1
            except Conflict:
                continue  # it moved meanwhile (sent, answered); nothing to do
        return moved
