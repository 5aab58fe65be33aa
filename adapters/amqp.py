"""Gateway to gateway over AMQP 0-9-1 (RabbitMQ), with queues per HER-id in the style of Norsk
helsenett's service bus and Helsenorge.Messaging (standards.md §7.6).

Queues. Each organisation (level-1 HER-id) has a queue set on the broker, declared by the gateway
that serves it when it connects:

    <herid>_async   messages to the organisation (and to its services and persons)
    <herid>_error   error reports about messages the organisation sent
    <herid>_dlq     dead letters: messages refused for good, or that failed too many times

`_async` and `_error` are quorum queues (replicated and fsynced by the broker, delivery counted)
whose poison messages go to `_dlq` after `max_redeliveries` deliveries or at once when refused.
There is no `_sync` queue: komut has no synchronous request/response.

Sending: the protected (CMS) message, the same bytes as over HTTPS, is published persistent and
mandatory to the receiver's `_async` queue through the default exchange, with publisher
confirms. DELIVERED means the broker confirmed it, i.e. it is durable there; that is the
transport receipt, as in Helsenorge.Messaging. No confirm, a broker that is away, or a queue that
does not exist (yet) are TRANSIENT and retried by the dispatcher. Application headers carry only
routing facts, as Helsenorge's do: fromHerId, toHerId, applicationTimeStamp, the message function
(also in the `type` property) and the MsgId (the `message_id` property).

Receiving: the `_async` queues of the HER-ids this gateway serves are consumed; each message goes
to `Inbound.from_peer` and is acknowledged only after the pipeline has answered that it stored
it durably (or already had it). A peer receipt that refuses it (cannot decrypt, spoofing) sends an
error report to the sender's `_error` queue and dead-letters the message: reported first, so no
refusal goes unreported, and reported again if the message comes back because the connection was
lost (or the gateway stopped) before it was dead-lettered; error reports are at least once.
While the store is unavailable a message is held, unacknowledged, and tried again in place: a
database outage does not count towards dead-lettering. A message the gateway cannot take now for
another reason (revocation status unknown, a bug) goes back to the queue after a growing pause;
after `max_redeliveries` deliveries the broker dead-letters it.

Error reports arriving on our own `_error` queues are recorded on the delivery they are about
(it becomes DEAD with the receiver's reason) when a store is given.

The connection is supervised by one task: when the broker goes away everything is torn down and
rebuilt after a backoff (exponential with jitter, 0.5 s to 10 s); sends meanwhile are TRANSIENT.

Endpoint (the route's address for an `amqp` receiver): empty, `amqp` or `amqp:` means the
receiver organisation's queue set (`<level-1 HER-id>_async`); `amqp:<queue>` or `<queue>` names a
queue, in which `{her}` stands for that HER-id.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import re
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, DeliveryError, PublishError
from yarl import URL

from gateway.lifecycle import Actor, DeliveryState, check_delivery
from gateway.store import Change, Conflict, DeliveryUpdate, Direction, Event, Store, StoreUnavailable
from gateway.transport import Inbound, Outcome, Outgoing, PeerReceipt, SendResult

log = logging.getLogger("komut.transport.amqp")

ASYNC, ERROR, DLQ = "_async", "_error", "_dlq"
MAX_HEADER = 200
MAX_DESCRIPTION = 1000
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
_QUEUE_NAME = re.compile(r"^[A-Za-z0-9_.:{}-]{1,200}$")
# Helsenorge's error conditions; a receipt's detail starts with one when the pipeline knows it.
_CONDITION = re.compile(r"^((?:transport|abuse):[a-z-]+)(?::\s*(.*))?$", re.S)


def _clean(value: object, limit: int = MAX_HEADER) -> str:
    return _UNPRINTABLE.sub("?", str(value)).strip()[:limit]


def _her(value: object) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if number > 0 else None


def error_condition(receipt: PeerReceipt) -> tuple[str, str]:
    """Helsenorge's errorCondition and errorDescription for a refusing peer receipt."""
    match = _CONDITION.match(receipt.detail or "")
    if match:
        return match.group(1), (match.group(2) or "").strip()
    if receipt.status == 403:
        return "transport:invalid-certificate", receipt.detail
    if receipt.status in (400, 415, 422):
        return "transport:not-well-formed-xml", receipt.detail
    return "transport:internal-error", receipt.detail


@dataclass(frozen=True)
class ErrorReport:
    """An error report from a receiver about a message we sent (Helsenorge's error-queue message)."""

    original_msg_id: str
    reporter_her: int | None  # the receiver that reports it (its fromHerId)
    condition: str
    description: str
    received_at: str = ""


async def record_error_report(
    store: Store,
    transport: str,
    report: ErrorReport,
    owner: Callable[[int], int],
    now: float | None = None,
) -> int:
    """Record a receiver's error report on the deliveries it is about; returns how many matched.

    A delivery that is DELIVERED (the broker had it) becomes DEAD with the receiver's reason; in
    any other state the report is kept as an event, so a late report never undoes an AppRec.
    """
    now = time.time() if now is None else now
    reason = f"{report.condition}: {report.description}".strip(": ")[:MAX_DESCRIPTION]
    details = {"error_condition": report.condition, "receiver_timestamp": report.received_at}
    reporter = owner(report.reporter_her) if report.reporter_her is not None else None
    matched = 0
    for message in await store.find_by_msg_id(report.original_msg_id, Direction.OUTBOUND):
        for delivery in await store.deliveries(message.id):
            if delivery.transport != transport:
                continue
            if reporter is not None and owner(delivery.receiver_her) != reporter:
                continue
            matched += 1
            note = Event(
                now,
                Actor.PEER,
                "error reported by the receiver",
                message.id,
                delivery.id,
                reason=reason,
                details=details,
            )
            if delivery.state != DeliveryState.DELIVERED:
                await store.apply(Change(events=[note]))
                continue
            transition = check_delivery(DeliveryState.DELIVERED, DeliveryState.DEAD)
            change = Change(
                delivery_updates=[
                    DeliveryUpdate(
                        delivery.id,
                        DeliveryState.DELIVERED,
                        {"state": DeliveryState.DEAD, "last_error": reason},
                    )
                ],
                events=[
                    Event(
                        now,
                        transition.actor,
                        transition.trigger,
                        message.id,
                        delivery.id,
                        from_state=DeliveryState.DELIVERED,
                        to_state=DeliveryState.DEAD,
                        reason=reason,
                        details=details,
                    )
                ],
            )
            try:
                await store.apply(change)
            except Conflict:
                await store.apply(Change(events=[note]))  # it moved meanwhile, e.g. an AppRec came
    return matched


class AmqpTransport:
    """Sends to receivers' `_async` queues and consumes our own queue sets. See the module docstring."""

    def __init__(
        self,
        name: str = "amqp",
        *,
        url: str,
        her_ids: Sequence[int] = (),
        queue_owner: Callable[[int], int] | None = None,
        store: Store | None = None,
        prefetch: int = 32,
        publish_timeout: float = 15.0,
        connect_timeout: float = 10.0,
        heartbeat: int = 15,
        max_redeliveries: int = 10,
        requeue_delay: float = 1.0,
        requeue_max: float = 30.0,
        reconnect_min: float = 0.5,
        reconnect_max: float = 10.0,
        declare: bool = True,
        consume: bool = True,
        stop_grace: float = 5.0,
    ):
        self.name = name
        self.url = url
        self.her_ids = tuple(dict.fromkeys(int(h) for h in her_ids))
        self.queue_owner = queue_owner or (lambda her: her)
        self.store = store
        self.prefetch = prefetch
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout
        self.heartbeat = heartbeat
        self.max_redeliveries = max_redeliveries
        self.requeue_delay = requeue_delay
        self.requeue_max = requeue_max
        self.reconnect_min = reconnect_min
        self.reconnect_max = reconnect_max
        self.declare = declare
        self.consume = consume
        self.stop_grace = stop_grace
        parsed = URL(url)
        self._where = f"{parsed.host or '?'}:{parsed.port or 5672}{parsed.path if parsed.path != '/' else ''}"
        # RabbitMQ checks a message's user_id against the connection's user: receivers can trust it.
        self._user = parsed.user or "guest"
        self._inbound: Inbound | None = None
        self._task: asyncio.Task | None = None
        self._stopping = asyncio.Event()
        self._connected = asyncio.Event()
        self._publisher: AbstractChannel | None = None
        self._handlers: set[asyncio.Task] = set()
        self._rng = random.Random()
        self.connects = 0  # how many times a connection was (re)established

    # --- life cycle --------------------------------------------------------------------------------

    async def start(self, inbound: Inbound) -> None:
        if self._task is not None and not self._task.done():
            raise RuntimeError(f"the {self.name} transport is already started")
        self._inbound = inbound
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name=f"{self.name}-connection")

    async def stop(self) -> None:
        self._stopping.set()
        # Messages in hand get a moment to be stored and acknowledged; what is cut short stays
        # unacknowledged and the broker delivers it again.
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=self.stop_grace)
        for handler in list(self._handlers):
            handler.cancel()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def wait_connected(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._connected.is_set()

    async def _run(self) -> None:
        delay = self.reconnect_min
        while not self._stopping.is_set():
            connection = None
            lost = asyncio.Event()
            try:
                connection = await aio_pika.connect(
                    self.url,
                    timeout=self.connect_timeout,
                    heartbeat=self.heartbeat,
                    client_properties={"connection_name": f"komut {self.name}"},
                )
                connection.close_callbacks.add(lambda *_, lost=lost: lost.set())
                await self._setup(connection, lost)
                self.connects += 1
                self._connected.set()
                log.info("%s: connected to %s", self.name, self._where)
                delay = self.reconnect_min
                await lost.wait()
                log.warning("%s: connection to %s lost; reconnecting", self.name, self._where)
            except asyncio.CancelledError:
                raise
            except (*CONNECTION_EXCEPTIONS, TimeoutError) as exc:
                # Also a refused queue declaration (PRECONDITION_FAILED: the queue exists with
                # other arguments) lands here; its text says so.
                log.warning(
                    "%s: broker %s unreachable or refusing (%s); next try in %.1f s",
                    self.name,
                    self._where,
                    _clean(exc, 300) or type(exc).__name__,
                    delay,
                )
            except Exception:
                log.exception(
                    "%s: setting up the connection to %s failed; next try in %.1f s",
                    self.name,
                    self._where,
                    delay,
                )
            finally:
                self._connected.clear()
                self._publisher = None
                if connection is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(connection.close(), 5)
            if self._stopping.is_set():
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay * self._rng.uniform(0.8, 1.2))
            delay = min(delay * 2, self.reconnect_max)

    async def _setup(self, connection: AbstractConnection, lost: asyncio.Event) -> None:
        publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
        publisher.close_callbacks.add(lambda *_: lost.set())
        consumer = await connection.channel(publisher_confirms=False)
        consumer.close_callbacks.add(lambda *_: lost.set())
        await consumer.set_qos(prefetch_count=self.prefetch)
        queues = {}
        for her in self.her_ids:
            for kind in (DLQ, ASYNC, ERROR):
                queues[her, kind] = await self._queue(consumer, her, kind)
        self._publisher = publisher
        if not self.consume:
            return
        for her in self.her_ids:
            await queues[her, ASYNC].consume(self._handler(self._on_message, her))
            await queues[her, ERROR].consume(self._handler(self._on_error_report, her))

    async def _queue(self, channel: AbstractChannel, her: int, kind: str):
        name = f"{her}{kind}"
        if not self.declare:
            return await channel.declare_queue(name, passive=True)
        arguments: dict = {"x-queue-type": "quorum"}
        if kind != DLQ:
            arguments |= {
                "x-delivery-limit": self.max_redeliveries,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": f"{her}{DLQ}",
            }
        return await channel.declare_queue(name, durable=True, arguments=arguments)

    def _handler(self, fn, her: int):
        # One task per message, so that up to `prefetch` messages are in the pipeline at once.
        async def on_message(message: AbstractIncomingMessage) -> None:
            task = asyncio.create_task(self._guard(fn, her, message), name=f"{self.name}-{her}")
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

        return on_message

    async def _guard(self, fn, her: int, message: AbstractIncomingMessage) -> None:
        try:
            await fn(her, message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Settling failed with the connection; the broker will deliver the message again.
            log.info("%s: could not settle a message from queue set %s: %s", self.name, her, exc)

    # --- sending -----------------------------------------------------------------------------------

    def queue_for(self, item: Outgoing) -> str:
        """The queue a delivery goes to; ValueError when the endpoint cannot name one."""
        endpoint = (item.endpoint or "").strip()
        if endpoint.lower() in ("", "amqp", "amqp:"):
            template = "{her}" + ASYNC
        elif endpoint.lower().startswith("amqp:") and "://" not in endpoint:
            template = endpoint[len("amqp:") :]
        elif "://" not in endpoint:
            template = endpoint
        else:
            raise ValueError(f"not an AMQP queue: {_clean(endpoint, 300)!r} (use amqp: or amqp:<queue>)")
        if not _QUEUE_NAME.match(template) or template.startswith("amq."):
            raise ValueError(f"not a usable queue name: {_clean(template, 300)!r}")
        return template.replace("{her}", str(self.queue_owner(item.receiver_her)))

    def _headers(self, item: Outgoing) -> dict:
        headers: dict = {
            "fromHerId": item.sender_her,
            "toHerId": item.receiver_her,
            "applicationTimeStamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "messageFunction": _clean(item.msg_type),
            "komutDelivery": item.delivery_id,
        }
        return {k: v for k, v in headers.items() if v not in (None, "")}

    async def send(self, item: Outgoing) -> SendResult:
        try:
            queue = self.queue_for(item)
        except ValueError as exc:
            return SendResult(Outcome.PERMANENT, str(exc))
        publisher = self._publisher
        if publisher is None or publisher.is_closed:
            return SendResult(Outcome.TRANSIENT, f"the broker {self._where} is not connected (reconnecting)")
        message = aio_pika.Message(
            item.body,
            content_type=item.content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=_clean(item.msg_id) or None,
            type=_clean(item.msg_type) or None,
            timestamp=dt.datetime.now(dt.UTC),
            user_id=self._user,
            app_id="komut",
            headers=self._headers(item),
        )
        try:
            await publisher.default_exchange.publish(
                message, routing_key=queue, mandatory=True, timeout=self.publish_timeout
            )
        except PublishError:
            return SendResult(
                Outcome.TRANSIENT,
                f"no queue {queue} at {self._where}: the receiver's gateway has not declared it (yet)",
            )
        except DeliveryError as exc:
            return SendResult(Outcome.TRANSIENT, f"the broker {self._where} refused it: {_clean(exc, 300)}")
        except TimeoutError:
            return SendResult(
                Outcome.TRANSIENT, f"no confirm from {self._where} within {self.publish_timeout:g} s"
            )
        except CONNECTION_EXCEPTIONS as exc:
            return SendResult(
                Outcome.TRANSIENT,
                f"lost the broker {self._where} while sending: {_clean(exc, 300) or type(exc).__name__}",
            )
        return SendResult(
            Outcome.DELIVERED,
            f"queued in {queue} at {self._where} (the broker confirmed it)",
            receipt={"queue": queue, "broker": self._where},
        )

    # --- receiving ---------------------------------------------------------------------------------

    def _routing(self, message: AbstractIncomingMessage) -> dict:
        headers = message.headers or {}
        routing = {
            "from_her": headers.get("fromHerId"),
            "to_her": headers.get("toHerId"),
            "msg_type": message.type or headers.get("messageFunction"),
            "msg_id": message.message_id,
            "delivery": headers.get("komutDelivery"),
        }
        return {k: _clean(v) for k, v in routing.items() if v is not None and _clean(v)}

    async def _on_message(self, her: int, message: AbstractIncomingMessage) -> None:
        routing = self._routing(message)
        source = f"amqp:{_clean(message.user_id or '?', 100)}"
        if not message.body:
            await self._refuse(
                her, message, routing, PeerReceipt(False, 400, "transport:not-well-formed-xml: empty body")
            )
            return
        try:
            receipt = await self._from_peer(message, routing, source)
        except Exception:
            log.exception(
                "%s: receiving msg %s from %s failed; it goes back to %s%s",
                self.name,
                routing.get("msg_id", "?"),
                routing.get("from_her", "?"),
                her,
                ASYNC,
            )
            await self._later(message)
            return
        if receipt.accepted:
            await message.ack()
        elif receipt.status >= 500:
            log.warning(
                "%s: msg %s from %s not taken now (%s); it goes back to %s%s",
                self.name,
                routing.get("msg_id", "?"),
                routing.get("from_her", "?"),
                receipt.detail,
                her,
                ASYNC,
            )
            await self._later(message, receipt.retry_after)
        else:
            await self._refuse(her, message, routing, receipt)

    async def _from_peer(self, message: AbstractIncomingMessage, routing: dict, source: str) -> PeerReceipt:
        """The pipeline's answer. While the store is unavailable the message is held (unacknowledged)
        and tried again here: returned to the queue, each try would count towards dead-lettering,
        and a database outage must not send good messages to the DLQ."""
        pause = self.requeue_delay
        while True:
            try:
                return await self._inbound.from_peer(message.body, routing, source=source)
            except StoreUnavailable as exc:
                if self._stopping.is_set():
                    raise
                log.warning(
                    "%s: the store is unavailable (%s); holding msg %s",
                    self.name,
                    exc,
                    routing.get("msg_id", "?"),
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), min(pause, exc.retry_after or pause))
                pause = min(pause * 2, self.requeue_max)

    async def _later(self, message: AbstractIncomingMessage, hint: float | None = None) -> None:
        """Back to the queue after a pause that grows with each delivery (the broker counts them)."""
        count = (message.headers or {}).get("x-delivery-count") or 0
        try:
            count = int(count)
        except (TypeError, ValueError):
            count = 0
        pause = min(self.requeue_max, self.requeue_delay * 2**count, hint if hint else self.requeue_max)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), pause)
        await message.nack(requeue=True)

    async def _refuse(self, her: int, message: AbstractIncomingMessage, routing: dict, receipt) -> None:
        condition, description = error_condition(receipt)
        log.warning(
            "%s: msg %s from %s refused (%s: %s); reported to the sender, kept in %s%s",
            self.name,
            routing.get("msg_id", "?"),
            routing.get("from_her", "?"),
            condition,
            description,
            her,
            DLQ,
        )
        sender = _her(routing.get("from_her"))
        if sender is not None:
            await self._report(her, sender, message, condition, description, receipt.status)
        await message.reject(requeue=False)

    async def _report(self, her: int, sender: int, message, condition: str, description: str, status: int):
        publisher = self._publisher
        queue = f"{self.queue_owner(sender)}{ERROR}"
        report = aio_pika.Message(
            b"",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=str(uuid.uuid4()),
            correlation_id=message.message_id,
            timestamp=dt.datetime.now(dt.UTC),
            user_id=self._user,
            app_id="komut",
            headers={
                "originalMessageId": message.message_id or "",
                "receiverTimeStamp": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
                "errorCondition": condition,
                "errorDescription": _clean(description, MAX_DESCRIPTION),
                "errorConditionData": str(status),
                "fromHerId": (message.headers or {}).get("toHerId") or her,
                "toHerId": sender,
            },
        )
        try:
            if publisher is None:
                raise ConnectionError("not connected")
            await publisher.default_exchange.publish(
                report, routing_key=queue, mandatory=True, timeout=self.publish_timeout
            )
        except (PublishError, DeliveryError, TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
            log.warning(
                "%s: could not report to %s: %s", self.name, queue, _clean(exc, 300) or type(exc).__name__
            )

    async def _on_error_report(self, her: int, message: AbstractIncomingMessage) -> None:
        headers = message.headers or {}
        report = ErrorReport(
            original_msg_id=_clean(headers.get("originalMessageId") or message.correlation_id or ""),
            reporter_her=_her(headers.get("fromHerId")),
            condition=_clean(headers.get("errorCondition") or "transport:internal-error"),
            description=_clean(headers.get("errorDescription") or "", MAX_DESCRIPTION),
            received_at=_clean(headers.get("receiverTimeStamp") or ""),
        )
        log.warning(
            "%s: receiver %s reports an error about msg %s: %s %s",
            self.name,
            report.reporter_her,
            report.original_msg_id,
            report.condition,
            report.description,
        )
        if self.store is not None and report.original_msg_id:
            try:
                matched = await record_error_report(self.store, self.name, report, self.queue_owner)
            except Exception as exc:
                log.warning(
                    "%s: could not record the error report (%s); it goes back to the queue", self.name, exc
                )
                await self._later(message)
                return
            if not matched:
                log.warning("%s: the error report is about no message we sent over %s", self.name, self.name)
        await message.ack()
