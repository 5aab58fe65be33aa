"""The pipeline: every front door (local systems, peer gateways) ends here.

From a local system: validate, route, store durably with one delivery per receiver, and only
then answer. From a peer: decrypt and verify, validate, check that the signer is the sender,
store, and only then give the transport receipt. A refused message is stored too (nothing is
lost) and answered with an AppRec where the standard says so, sent through the same machinery.
Arriving AppRecs are matched to the message and receiver they answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives import hashes
from lxml import etree

from gateway.config import Config
from gateway.dispatcher import apprec_due_at
from gateway.lifecycle import (
    APPREC_TARGET,
    Actor,
    DeliveryState,
    IllegalTransition,
    MessageState,
    check_delivery,
)
from gateway.protection.errors import FailureKind, ProtectionError
from gateway.registry import Registry
from gateway.routing import Decision, LocalEndpoint, Route, Router, build_router
from gateway.security import Security
from gateway.store import (
    Applied,
    Change,
    Conflict,
    DeliveryRecord,
    DeliveryUpdate,
    Direction,
    Event,
    MessageRecord,
    Store,
)
from gateway.transport import PeerReceipt, SubmitResult, Transport
from gateway.validation import ValidationResult, Validator
from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus, ErrorCode
from message_types.kinds import Family
from message_types.model import Address, Ident, LevelKind, Message, PartyLevel
from message_types.problems import Problem

log = logging.getLogger("komut.pipeline")

# The AppRec's OT attribute is shown to a person at the sender; keep it readable.
MAX_DETAIL = 500
# How often an arriving AppRec looks again at the deliveries it answers when they moved meanwhile.
CORRELATION_TRIES = 5


@dataclass(frozen=True)
class Outcome:
    """What happened to one arriving message, before it is turned into a front door's answer."""

    message_id: int | None
    accepted: bool
    duplicate: bool = False
    problems: tuple[Problem, ...] = ()
    detail: str = ""


def _problem_dicts(problems) -> list[dict]:
    return [p.to_dict() for p in problems]


def _first_reason(problems) -> str:
    return "; ".join(f"{p.code} {p.message}" for p in problems[:3])


class Pipeline:
    def __init__(
        self,
        *,
        config: Config,
        store: Store,
        validator: Validator,
        registry: Callable[[], Registry],
        security: Security | None,
        local_systems: dict[int, LocalEndpoint],
        clock: Callable[[], float] = time.time,
        wake: Callable[..., None] = lambda *transports: None,
        transports: Mapping[str, Transport] | None = None,
    ):
        """`wake(*names)`: deliveries of these transports were queued (none named: of any).
        `transports`: the gateway's transports by name (looked up when a message is routed), for
        those that deliver by the message being stored (`delivers_on_commit`, see `_on_commit`)."""
        self.config = config
        self.store = store
        self.validator = validator
        self._registry = registry
        self.security = security
        self.local_systems = local_systems
        self.clock = clock
        self.wake = wake
        self.transports = transports if transports is not None else {}
        self._router: tuple[Registry, Router] | None = None

    # --- shared ----------------------------------------------------------------------------------

    def registry(self) -> Registry:
        return self._registry()

    def router(self) -> Router:
        registry = self.registry()
        if self._router is None or self._router[0] is not registry:
            self._router = (registry, build_router(self.config, registry, self.local_systems))
        return self._router[1]

    async def validate(self, data: bytes, parsed: etree._ElementTree | None = None) -> ValidationResult:
        """Validate as `from_local` and `from_peer` do. A front door that needs the message's facts
        before it hands the message on (the API checks its sender) validates first and passes the
        result to `from_local`, so that nothing is parsed or read twice."""
        # A front door that has already parsed `data` (hardened, parse_xml) passes the tree: parsing
        # twice is a noticeable share of a message's CPU time.
        if parsed is not None and len(data) <= self.validator.max_bytes:
            validate, arg = self.validator.validate_tree, parsed
        else:
            validate, arg = self.validator.validate, data
        # Large documents would hold the event loop for long; small ones are cheaper inline.
        if len(data) > 256 * 1024:
            return await asyncio.to_thread(validate, arg)
        return validate(arg)

    def _summary(self, message: Message | None) -> dict:
        """Facts for display and search, without patient data."""
        if message is None:
            return {}
        registry = self.registry()

        def name(address) -> str:
            her = address.her_id
            if her is not None and her in registry:
                return registry.display_name(her)
            return address.describe()

        return {
            "type_text": message.msg_type_text,
            "format": message.kind.title,
            "content": message.content_kind.title if message.content_kind else None,
            "sender_name": name(message.sender),
            "receiver_name": name(message.receiver),
            "sender_chain": [h for h in message.sender.her_ids if h],
            "receiver_chain": [h for h in message.receiver.her_ids if h],
            "copies": [c.address.her_id for c in message.copies],
            "gen_date": message.gen_date,
        }

    @staticmethod
    def dedupe_key(message: Message | None, data: bytes) -> str:
        if message is not None and message.msg_id and message.sender.her_id is not None:
            return f"{message.sender.her_id}:{message.msg_id}"
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def _record(
        self,
        direction: Direction,
        state: MessageState,
        data: bytes,
        message: Message | None,
        source: str,
        problems=(),
        now: float = 0.0,
        dedupe_key: str | None = None,
    ) -> MessageRecord:
        apprec = message.apprec if message else None
        return MessageRecord(
            direction=direction,
            state=state,
            dedupe_key=dedupe_key or self.dedupe_key(message, data),
            received_at=now,
            source=source,
            msg_id=message.msg_id if message else "",
            msg_type=message.msg_type if message else "",
            sender_her=message.sender.her_id if message else None,
            receiver_her=message.receiver.her_id if message else None,
            conversation=(
                (message.conversation.conversation if message.conversation else message.msg_id)
                if message
                else None
            ),
            refers_to=apprec.original_msg_id if apprec else None,
            size=len(data),
            payload=data,
            summary=self._summary(message),
            problems=_problem_dicts(problems),
        )

    def _on_commit(self, route: Route) -> Transport | None:
        """The route's transport if it delivers by the message being stored, else None.

        Such a transport (the API's mailbox) hands a message over by making it fetchable from the
        store, so the transaction that stores the message records its delivery too (queued, the
        attempt, the receipt: the same rows and events a worker would write in two more
        transactions) and the transport is told once it is committed. Not for FIFO receivers: their
        order is the dispatcher's to keep."""
        transport = self.transports.get(route.transport)
        if route.fifo or not getattr(transport, "delivers_on_commit", False):
            return None
        return transport

    def _deliveries(self, routes: list[Route], message: Message, now: float) -> list[DeliveryRecord]:
        d = self.config.delivery
        expects = message.kind.family != Family.APPREC
        out = []
        for route in routes:
            delivery = DeliveryRecord(
                message_id=None,
                receiver_her=route.receiver_her,
                role=route.role,
                transport=route.transport,
                endpoint=route.endpoint,
                state=DeliveryState.QUEUED,
                expires_at=now + float(d.overrides.get(route.receiver_her, {}).get("ttl", d.ttl)),
                expects_apprec=expects,
                next_attempt_at=now,
                fifo_key=(message.conversation.conversation if message.conversation else message.msg_id)
                if route.fifo
                else None,
                updated_at=now,
            )
            if self._on_commit(route) is not None:
                delivery.state = DeliveryState.DELIVERED
                delivery.attempts = 1
                if expects:
                    delivery.apprec_due_at = apprec_due_at(self.config, message.msg_type, now)
            out.append(delivery)
        return out

    def _accept_change(
        self, record: MessageRecord, message: Message, decision: Decision, now: float, actor: Actor
    ) -> Change:
        deliveries = self._deliveries(decision.routes, message, now)
        events = [
            Event(now, actor, "stored", to_state=MessageState.RECEIVED, reason=f"from {record.source}"),
            Event(
                now,
                Actor.GATEWAY,
                "validated and routed",
                from_state=MessageState.RECEIVED,
                to_state=MessageState.ACCEPTED,
                reason=f"{len(deliveries)} receiver(s)",
            ),
        ]
        for index, route in enumerate(decision.routes):
            events.append(
                Event(
                    now,
                    Actor.GATEWAY,
                    "routed to a receiver",
                    to_state=DeliveryState.QUEUED,
                    reason=f"{route.role} {route.receiver_her} via {route.transport}",
                    details={"why": list(route.why), "endpoint": route.endpoint},
                    new_delivery_index=index,
                )
            )
            transport = self._on_commit(route)
            if transport is not None:
                for source, target, reason in (
                    (DeliveryState.QUEUED, DeliveryState.SENDING, "attempt 1, as the message is stored"),
                    (
                        DeliveryState.SENDING,
                        DeliveryState.DELIVERED,
                        transport.commit_detail(route.receiver_her),
                    ),
                ):
                    transition = check_delivery(source, target)
                    events.append(
                        Event(
                            now,
                            transition.actor,
                            transition.trigger,
                            from_state=source,
                            to_state=target,
                            reason=reason,
                            new_delivery_index=index,
                        )
                    )
        return Change(new_message=record, new_deliveries=deliveries, events=events)

    async def _apply_accepted(self, change: Change) -> Applied:
        """Apply an accepting change; then wake the dispatcher for what it queued and tell the
        transports that deliver on commit."""
        applied = await self.store.apply(change)
        if not applied.created:
            return applied
        if change.delivery_updates:
            self.wake()  # an AppRec settled deliveries: FIFO successors may be due on any transport
        else:
            queued = {d.transport for d in change.new_deliveries if d.state == DeliveryState.QUEUED}
            if queued:
                self.wake(*queued)
        stored = None
        for delivery, delivery_id in zip(change.new_deliveries, applied.delivery_ids, strict=True):
            if delivery.state != DeliveryState.DELIVERED:
                continue
            transport = self.transports[delivery.transport]
            if stored is None:
                stored = dataclasses.replace(change.new_message, id=applied.message_id, payload=None)
            try:
                await transport.committed(stored, delivery_id, delivery.receiver_her)
            except Exception:
                # Stored as delivered: the transport finds it in the store when it next looks.
                log.exception(
                    "transport %s: delivery %s was stored but not handed over",
                    delivery.transport,
                    delivery_id,
                )
        return applied

    def _reject_change(
        self, record: MessageRecord, problems, now: float, actor: Actor, target=MessageState.REJECTED
    ):
        return Change(
            new_message=record,
            events=[
                Event(now, actor, "stored", to_state=MessageState.RECEIVED, reason=f"from {record.source}"),
                Event(
                    now,
                    Actor.GATEWAY,
                    "refused",
                    from_state=MessageState.RECEIVED,
                    to_state=target,
                    reason=_first_reason(problems)[:MAX_DETAIL],
                    details={"problems": _problem_dicts(problems)},
                ),
            ],
        )

    # --- AppRec generation and correlation ---------------------------------------------------------

    def _apprec_version(self, registry: Registry, receiver_her: int | None) -> str:
        wanted = self.config.apprec_version
        if receiver_her is not None and receiver_her in registry:
            for version in (wanted, "1.1", "1.0"):
                if registry.accepts(receiver_her, "APPREC", version):
                    return version
        return wanted

    async def send_apprec(
        self,
        original: Message,
        status: AppRecStatus,
        problems,
        *,
        answering_id: int | None,
        role: str = "PRIM",
        sender: Address | None = None,
    ) -> int | None:
        """Queue an AppRec answering `original` on behalf of its receiver (or `sender`); idempotent
        per original."""
        registry = self.registry()
        errors = [(p.code, f"{p.message}"[:MAX_DETAIL]) for p in problems]
        if original.gen_datetime is None:
            # OriginalMsgId/IssueDate repeats the original's GenDate and must be a date; a refusal of
            # a broken GenDate (T02) still gets its AppRec, dated when the gateway read it.
            original = dataclasses.replace(
                original,
                gen_date=datetime.fromtimestamp(self.clock()).astimezone().isoformat(timespec="seconds"),
            )
        try:
            data = build_apprec(
                original,
                status,
                errors,
                version=self._apprec_version(registry, original.sender.her_id),
                sender_role=role,
                sender=sender,
            )
        except ValueError as exc:
            # An address too broken to answer: say so in the log rather than fail the front door.
            await self._apprec_not_built(answering_id, str(exc))
            return None
        result = self.validator.validate(data)
        now = self.clock()
        if result.message is None or not result.valid:
            log.error("generated AppRec does not validate: %s", result.problems)
            await self._apprec_not_built(answering_id, _first_reason(result.problems))
            return None
        apprec = result.message
        # One AppRec per receiver and original: a retried original must not produce a second one.
        key = f"apprec:{original.receiver.her_id}:{original.sender.her_id}:{original.msg_id}"
        record = self._record(
            Direction.OUTBOUND, MessageState.ACCEPTED, data, apprec, "gateway", now=now, dedupe_key=key
        )
        decision = self.router().route(apprec)
        if not decision.ok:
            record.state = MessageState.REJECTED
            change = self._reject_change(record, decision.problems, now, Actor.GATEWAY)
        else:
            change = self._accept_change(record, apprec, decision, now, Actor.GATEWAY)
        if answering_id is not None:
            change.events.append(
                Event(
                    now,
                    Actor.GATEWAY,
                    "AppRec sent" if decision.ok else "AppRec could not be routed",
                    message_id=answering_id,
                    reason=f"status {status.value} {status.text}"
                    + (f": {_first_reason(problems)}" if problems else "")
                    + ("" if decision.ok else f" ({_first_reason(decision.problems)})"),
                    details={"apprec_msg_id": apprec.msg_id},
                )
            )
        applied = await (self._apply_accepted(change) if decision.ok else self.store.apply(change))
        return applied.message_id

    async def _apprec_not_built(self, answering_id: int | None, reason: str) -> None:
        if answering_id is None:
            return
        event = Event(
            self.clock(), Actor.GATEWAY, "AppRec could not be built", message_id=answering_id, reason=reason
        )
        await self.store.apply(Change(events=[event]))

    async def _correlate_apprec(
        self, apprec: Message, direction_of_original: Direction | None, now: float
    ) -> tuple[list[DeliveryUpdate], list[Event]]:
        """Delivery updates and events that record an arriving AppRec on what it answers."""
        info = apprec.apprec
        target = APPREC_TARGET.get(str(getattr(info.status, "value", info.status)))
        if target is None:
            return [], []
        originals = await self.store.find_by_msg_id(info.original_msg_id, direction_of_original)
        answering_her = apprec.sender.her_id
        updates, events = [], []
        for original in originals:
            for delivery in await self.store.deliveries(original.id):
                if delivery.receiver_her != answering_her:
                    continue
                try:
                    check_delivery(delivery.state, target)
                except IllegalTransition:
                    events.append(
                        Event(
                            now,
                            Actor.PEER,
                            "AppRec received",
                            message_id=original.id,
                            delivery_id=delivery.id,
                            reason=f"status {info.status} while {delivery.state}; state kept",
                            details={"apprec_msg_id": apprec.msg_id},
                        )
                    )
                    continue
                updates.append(
                    DeliveryUpdate(
                        delivery.id,
                        delivery.state,
                        {"state": target, "apprec_status": str(info.status), "apprec_msg_id": apprec.msg_id},
                    )
                )
                events.append(
                    Event(
                        now,
                        Actor.PEER,
                        check_delivery(delivery.state, target).trigger,
                        message_id=original.id,
                        delivery_id=delivery.id,
                        from_state=delivery.state,
                        to_state=target,
                        reason="; ".join(f"{e.code} {e.text} {e.detail}".strip() for e in info.errors)[
                            :MAX_DETAIL
                        ],
                        details={"apprec_msg_id": apprec.msg_id, "errors": [e.__dict__ for e in info.errors]},
                    )
                )
        if not updates and not events:
            log.warning("AppRec %s answers unknown message %s", apprec.msg_id, info.original_msg_id)
        return updates, events

    async def _store_accepted(
        self, record: MessageRecord, message: Message, decision: Decision, now: float, actor: Actor
    ):
        """One transaction: the message, its deliveries, its events, and for an AppRec the state of
        the delivery it answers."""
        change = self._accept_change(record, message, decision, now, actor)
        if message.kind.family != Family.APPREC:
            return await self._apply_accepted(change)
        own_events = list(change.events)
        for _ in range(CORRELATION_TRIES):
            updates, events = await self._correlate_apprec(message, None, now)
            change.delivery_updates, change.events = updates, own_events + events
            try:
                return await self._apply_accepted(change)
            except Conflict:
                # The answered delivery moved meanwhile: its transport receipt was being recorded
                # (the AppRec overtook it, likely when another node sent it) or a timer moved it.
                # Look at it again; dropping the update would leave it waiting for an AppRec it has.
                continue
        change.delivery_updates = []  # still moving: keep the AppRec and the events that explain it
        return await self._apply_accepted(change)

    # --- from our local systems ---------------------------------------------------------------------

    async def from_local(
        self,
        data: bytes,
        source: str,
        sender_her: int | None = None,
        *,
        parsed: etree._ElementTree | None = None,
        validated: ValidationResult | None = None,
    ) -> SubmitResult:
        """`parsed`: the front door's own parse_xml(data), if it made one; `validated`: its own
        `validate(data)`, if it made one (then `parsed` is not looked at)."""
        now = self.clock()
        result = validated if validated is not None else await self.validate(data, parsed)
        message = result.message
        key = self.dedupe_key(message, data)
        existing = await self.store.find_message(key)
        if existing is not None:
            return SubmitResult(
                accepted=existing.state == MessageState.ACCEPTED,
                message_id=existing.id,
                duplicate=True,
                detail=f"already received as message {existing.id} ({existing.state})",
                problems=existing.problems,
            )
        problems = list(result.errors)
        registry = self.registry()
        foreign_sender = False
        if message is not None and sender_her is not None and not problems:
            her = message.sender.her_id
            lineage = {p.her_id for p in registry.lineage(her)} if her in registry else set()
            if sender_her not in lineage:
                foreign_sender = True
                problems.append(
                    Problem(
                        ErrorCode.X99,
                        f"the MsgHead sender (HER-id {her}) is not the party this system may send for ({sender_her})",
                    )
                )
        decision = None
        if message is not None and not problems:
            decision = self.router().route(message)
            problems += decision.problems
        if problems:
            record = self._record(
                Direction.OUTBOUND, MessageState.REJECTED, data, message, source, problems, now
            )
            applied = await self.store.apply(self._reject_change(record, problems, now, Actor.GATEWAY))
            # The local system gets the standard answer too, so its EPJ can show the refusal; but not
            # when the MsgHead names another party as sender: that party sent nothing.
            if message is not None and message.kind.family != Family.APPREC and not foreign_sender:
                await self.send_apprec(
                    message, AppRecStatus.REJECTED, problems, answering_id=applied.message_id
                )
            return SubmitResult(
                accepted=False,
                message_id=applied.message_id,
                detail=_first_reason(problems),
                problems=_problem_dicts(problems),
                status=400,
            )
        record = self._record(Direction.OUTBOUND, MessageState.ACCEPTED, data, message, source, now=now)
        applied = await self._store_accepted(record, message, decision, now, Actor.GATEWAY)
        if not applied.created:
            return SubmitResult(accepted=True, message_id=applied.message_id, duplicate=True)
        return SubmitResult(
            accepted=True, message_id=applied.message_id, detail=f"{len(decision.routes)} receiver(s)"
        )

    # --- from peer gateways ------------------------------------------------------------------------

    async def from_peer(self, body: bytes, routing: dict, source: str) -> PeerReceipt:
        now = self.clock()
        registry = self.registry()
        try:
            from_her = int(routing.get("from_her") or 0) or None
        except ValueError:
            from_her = None
        if self.security is None:
            return PeerReceipt(False, 503, "this gateway cannot decrypt (no keys configured)")
        crypto_problems: list[Problem] = []
        crypto_failure: ProtectionError | None = None
        spoof: Problem | None = None
        algorithms = ""
        to_her = None
        try:
            try:
                to_her = int(routing.get("to_her") or 0) or None
            except ValueError:
                to_her = None
            unprotected = await asyncio.to_thread(self.security.unprotect, registry, body, from_her, to_her)
            content = unprotected.content
            algorithms = str(unprotected.algorithms)
        except ProtectionError as exc:
            if exc.retryable:
                return PeerReceipt(False, 503, f"{exc.transport_error}: {exc.reason}", retry_after=300)
            if exc.content is None or exc.apprec is None:
                # Unreadable: no AppRec is possible. Keep a record so operators see the attempt.
                await self._store_unreadable(body, source, from_her, exc, now)
                return PeerReceipt(
                    False,
                    403 if "certificate" in exc.transport_error else 400,
                    f"{exc.transport_error}: {exc.reason}",
                )
            content = exc.content
            crypto_failure = exc
            crypto_problems.append(Problem(ErrorCode(exc.apprec.value), f"{exc.kind.check}: {exc.reason}"))
            spoof = self._foreign_signer(registry, exc, from_her)
        result = await self.validate(content)
        message = result.message
        problems = crypto_problems + list(result.errors)
        if spoof is None and message is not None and not problems:
            spoof = self._spoofing(registry, message, from_her)
        key = self.dedupe_key(message, content)
        existing = await self.store.find_message(key)
        # Spoofs and unreadable content get the same answer every time they come, so both are
        # decided before the duplicate check (which would otherwise acknowledge a repeated one).
        if spoof is not None:
            if existing is None:
                record = self._record(
                    Direction.INBOUND, MessageState.REJECTED, content, message, source, [spoof], now
                )
                await self.store.apply(self._reject_change(record, [spoof], now, Actor.PEER))
            return PeerReceipt(False, 403, f"abuse:spoofing-attack: {spoof.message}")
        if message is None:
            # Without a readable MsgHead no AppRec can reach the sender: only the transport can say it.
            if existing is None:
                record = self._record(
                    Direction.INBOUND, MessageState.REJECTED, content, None, source, problems, now
                )
                await self.store.apply(self._reject_change(record, problems, now, Actor.PEER))
            error = crypto_failure.transport_error if crypto_failure else "transport:unsupported-message"
            return PeerReceipt(
                False, 400, f"{error}: the content is not a readable message: {_first_reason(problems)}"
            )
        if existing is not None:
            await self.store.apply(
                Change(
                    events=[
                        Event(
                            now,
                            Actor.PEER,
                            "duplicate received",
                            message_id=existing.id,
                            reason=f"from {source}; acknowledged again, not delivered again",
                        )
                    ]
                )
            )
            return PeerReceipt(
                True, 200, "duplicate: already received", duplicate=True, message_ref=str(existing.id)
            )
        decision = None
        if not problems:
            decision = self.router().route(message, inbound=True)
            problems += decision.problems
            for route in decision.routes:
                if not route.local:
                    problems.append(
                        Problem(ErrorCode.E21, f"HER-id {route.receiver_her} is not served by this gateway")
                    )
            if problems:
                decision = None
        if problems:
            record = self._record(
                Direction.INBOUND, MessageState.REJECTED, content, message, source, problems, now
            )
            applied = await self.store.apply(self._reject_change(record, problems, now, Actor.PEER))
            if message.kind.family != Family.APPREC:
                await self.send_apprec(
                    message,
                    AppRecStatus.REJECTED,
                    problems,
                    answering_id=applied.message_id,
                    sender=self._answering_address(registry, message, to_her),
                )
            # The transport worked: the sender learns of the refusal by AppRec, not by a transport error.
            return PeerReceipt(True, 200, "received; refused by AppRec", message_ref=str(applied.message_id))
        record = self._record(Direction.INBOUND, MessageState.ACCEPTED, content, message, source, now=now)
        record.summary["algorithms"] = algorithms
        applied = await self._store_accepted(record, message, decision, now, Actor.PEER)
        return PeerReceipt(
            True, 200, "stored", duplicate=not applied.created, message_ref=str(applied.message_id)
        )

    def _foreign_signer(
        self, registry: Registry, exc: ProtectionError, from_her: int | None
    ) -> Problem | None:
        """A signer the registry holds for another organisation than the claimed sender's is not a
        broken certificate (S02) but someone sending in another's name: no AppRec to the victim."""
        if exc.kind is not FailureKind.NOT_REGISTERED or exc.certificate is None or from_her is None:
            return None
        fingerprint = exc.certificate.sha256.lower()
        claimed = registry.certificate_holder(from_her) if from_her in registry else None
        for holder in registry.certificate_holders():
            certs = holder.certificates
            if holder == claimed or certs is None:
                continue
            if any(c.fingerprint(hashes.SHA256()).hex() == fingerprint for c in certs.signing_certificates()):
                return Problem(
                    ErrorCode.X99,
                    f"signed by the certificate of {holder.name} (HER-id {holder.her_id}), "
                    f"not by the sending organisation (HER-id {from_her})",
                )
        return None

    def _answering_address(self, registry: Registry, message: Message, to_her: int | None) -> Address | None:
        """Who answers a message whose receiver this gateway holds no keys for (unknown, or served
        elsewhere): the party the peer addressed it to. An AppRec in the receiver's name would be
        signed with a key that is not the receiver's, and the sender's gateway would refuse it."""
        security = self.security
        if security is None or to_her is None or security.org_for(registry, to_her) is None:
            return None
        receiver = message.receiver.her_id
        if receiver is not None and security.org_for(registry, receiver) is not None:
            return None
        levels = []
        for party in reversed(registry.lineage(to_her)):
            kind = LevelKind.PERSON if str(party.kind) == "person" else LevelKind.SERVICE
            levels.append(
                PartyLevel(
                    party.name, kind if levels else LevelKind.ORGANISATION, (Ident(str(party.her_id), "HER"),)
                )
            )
        return Address(tuple(levels))

    def _spoofing(self, registry: Registry, message: Message, from_her: int | None) -> Problem | None:
        """The MsgHead sender must belong to the organisation whose certificate signed it."""
        her = message.sender.her_id
        if her is None or her not in registry or from_her is None:
            return Problem(ErrorCode.X99, f"the MsgHead sender HER-id {her} is not in the address registry")
        if registry.certificate_holder(her) != registry.certificate_holder(from_her):
            return Problem(
                ErrorCode.X99,
                f"the MsgHead sender (HER-id {her}) does not belong to the signing organisation (HER-id {from_her})",
            )
        return None

    async def _store_unreadable(
        self, body: bytes, source: str, from_her, exc: ProtectionError, now: float
    ) -> None:
        problem = Problem(
            ErrorCode.S99 if exc.apprec is None else ErrorCode(exc.apprec.value), str(exc)[:MAX_DETAIL]
        )
        record = MessageRecord(
            direction=Direction.INBOUND,
            state=MessageState.REJECTED,
            dedupe_key="sha256:" + hashlib.sha256(body).hexdigest(),
            received_at=now,
            source=source,
            sender_her=from_her,
            size=len(body),
            payload=None,  # undecryptable bytes are of no use to anyone reading the log
            summary={"transport_error": exc.transport_error},
            problems=[problem.to_dict()],
        )
        existing = await self.store.find_message(record.dedupe_key)
        if existing is None:
            await self.store.apply(self._reject_change(record, [problem], now, Actor.PEER))
