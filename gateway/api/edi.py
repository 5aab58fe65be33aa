"""The Meldingstjener (EDI 2.0) REST API, version 2, on the gateway's own aiohttp app.

Every operation of msh-api-v2.json: send (POST /Messages), the unread list (GET /Messages), one
message, its business document, its status per receiver, its AppRecs, sending an AppRec from
JSON, and marking a message read. Each request: bearer token (401), rate limit per client (429),
the `api-version` and `nhn-source-system` headers (400), then the operation. A message the client
may not see is answered exactly like one that does not exist (404), so ids reveal nothing.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import math
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from gateway.api.auth import Authenticator, AuthError, Principal
from gateway.api.ids import MessageIds, is_uuid, load_or_create_key
from gateway.api.mailbox import ApiTransport, Mailbox
from gateway.api.mapping import (
    ERROR_VALIDATION,
    INT32_MAX,
    RequestInvalid,
    apprec_json,
    error_body,
    message_json,
    parse_list_query,
    parse_post_apprec,
    parse_post_message,
    problem_lines,
    status_json,
)
from gateway.api.ratelimit import RateLimiter
from gateway.api.settings import ApiSettings, parse_api_settings
from gateway.store import DeliveryRecord, MessageRecord, StoreUnavailable
from gateway.validation import ValidationResult
from message_types.apprec import build_apprec
from message_types.model import Message
from message_types.problems import InvalidMessage
from message_types.read import read_message
from message_types.xmlparse import parse_xml

log = logging.getLogger("komut.api")

API_VERSIONS = {"2", "2.0"}
MAX_SOURCE_SYSTEM = 200
INLINE_PARSE_BYTES = 256 * 1024  # larger documents are parsed off the event loop
_PRINTABLE = re.compile(r"[^\x20-\x7e\u00a0-\u024f]")
APP_KEY = web.AppKey("komut.api", object)


class Forbidden(Exception):
    def __init__(self, her_ids):
        super().__init__(", ".join(str(h) for h in her_ids))


class NotFound(Exception):
    """No such message for this client: unknown, or neither from nor to its HER-ids (both 404)."""


class TooLarge(Exception):
    """A request body over the size limit (413)."""


@dataclass
class Call:
    """One authenticated request."""

    request: web.Request
    principal: Principal
    request_id: str
    source_system: str


@dataclass
class Visible:
    """A message as one client may see it: as its sender, as a receiver, or both."""

    record: MessageRecord
    deliveries: list[DeliveryRecord]
    as_sender: bool
    mine: list[DeliveryRecord]  # deliveries to HER-ids the client is bound to

    @property
    def shown(self) -> list[DeliveryRecord]:
        # The sender sees every receiver; a receiver sees only its own deliveries.
        return self.deliveries if self.as_sender else self.mine


def _clean(value: str, limit: int) -> str:
    return _PRINTABLE.sub("?", value).strip()[:limit]


def _json(body, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda o: json.dumps(o, ensure_ascii=False)
    )


def _error(
    status: int, request_id: str, error: str, *, code: int = 0, validation=None, headers=None
) -> web.Response:
    return _json(error_body(request_id, error, code=code, validation_errors=validation), status, headers)


class EdiApi:
    def __init__(self, gateway, settings: ApiSettings):
        self.gateway = gateway
        self.settings = settings
        self.store = gateway.store
        self.pipeline = gateway.pipeline
        self.auth = Authenticator(settings)
        self.limiter = RateLimiter()
        self.ids = MessageIds(load_or_create_key(settings.id_key_file))
        self.mailbox = Mailbox(
            gateway.store, window=settings.mailbox_days * 86400.0, refresh=settings.mailbox_refresh
        )
        self.transport = ApiTransport(self.mailbox)

    # --- plumbing ------------------------------------------------------------------------------

    def registry(self):
        return self.gateway.registry_holder.current

    def add_routes(self, app: web.Application) -> None:
        r = app.router
        r.add_post("/Messages", self._endpoint(self.post_message))
        r.add_get("/Messages", self._endpoint(self.get_messages))
        r.add_get("/Messages/{id}", self._endpoint(self.get_message))
        r.add_get("/Messages/{id}/business-document", self._endpoint(self.get_business_document))
        r.add_get("/Messages/{id}/status", self._endpoint(self.get_status))
        r.add_get("/Messages/{id}/apprec", self._endpoint(self.get_apprec))
        r.add_post("/Messages/{id}/apprec/{herId}", self._endpoint(self.post_apprec))
        r.add_put("/Messages/{id}/read/{herId}", self._endpoint(self.put_read))

    def _endpoint(self, handler: Callable[[Call], Awaitable[web.Response]]):
        @functools.wraps(handler)
        async def wrapped(request: web.Request) -> web.Response:
            rid = str(uuid.uuid4())
            try:
                principal = await self.auth.authenticate(request.headers.get("Authorization"))
            except AuthError as exc:
                if exc.status == 401:
                    headers = {"WWW-Authenticate": exc.www_authenticate()}
                    return _error(401, rid, f"Unauthorized: {exc.description}", headers=headers)
                return _error(exc.status, rid, exc.description, headers={"Retry-After": "30"})
            wait = self.limiter.take(principal.rate_key, principal.rate, principal.burst)
            if wait > 0:
                return _error(
                    429,
                    rid,
                    f"Too many requests: at most {principal.rate:g} per second for this client",
                    headers={"Retry-After": str(max(1, math.ceil(wait)))},
                )
            problems = []
            version = request.headers.get("api-version")
            if version is None or not version.strip():
                problems.append("The api-version header is required (2).")
            elif version.strip() not in API_VERSIONS:
                problems.append(
                    f"api-version {_clean(version, 20)!r} is not supported; this API is version 2."
                )
            source = _clean(request.headers.get("nhn-source-system", ""), MAX_SOURCE_SYSTEM)
            if not source:
                problems.append(
                    "The nhn-source-system header is required (name and version of the client system)."
                )
            if problems:
                return _error(
                    400, rid, "Model validation error occurred", code=ERROR_VALIDATION, validation=problems
                )
            call = Call(request, principal, rid, source)
            try:
                return await handler(call)
            except RequestInvalid as exc:
                return _error(
                    400,
                    rid,
                    "Model validation error occurred",
                    code=ERROR_VALIDATION,
                    validation=exc.problems,
                )
            except Forbidden as exc:
                return _error(403, rid, f"Not authorized for HerId(s): {exc}")
            except NotFound as exc:
                return _error(404, rid, str(exc) or "Message not found")
            except TooLarge:
                limit = self.settings.max_request_bytes // (1024 * 1024)
                return _error(413, rid, f"The request is larger than {limit} MB")
            except StoreUnavailable as exc:
                # Nothing was stored: the client must send it again, and may, unchanged.
                log.error("API request %s %s: %s (request id %s)", request.method, request.path, exc, rid)
                return _error(
                    503,
                    rid,
                    "The gateway cannot store messages right now; send the request again later",
                    headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
                )
            except Exception:
                log.exception("API request %s %s failed (request id %s)", request.method, request.path, rid)
                return _error(500, rid, "An unknown error occurred")

        return wrapped

    async def _json_body(self, call: Call):
        request, limit = call.request, self.settings.max_request_bytes
        media = request.content_type.lower()
        if not request.body_exists:
            raise RequestInvalid(["A non-empty request body is required."])
        if not (media in ("application/json", "text/json") or media.endswith("+json")):
            # 415 would be the textbook answer; the spec lists 400 for a request it cannot take.
            raise RequestInvalid(
                [f"The request body must be JSON (Content-Type application/json), not {media[:60]!r}."]
            )
        if request.content_length is not None and request.content_length > limit:
            raise TooLarge()
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(256 * 1024):
            size += len(chunk)
            if size > limit:
                raise TooLarge()
            chunks.append(chunk)
        try:
            return json.loads(b"".join(chunks))
        except (ValueError, UnicodeDecodeError):
            raise RequestInvalid(["The request body is not valid JSON."]) from None
        except RecursionError:  # json nests by recursion: "[[[[..." a few thousand deep is enough
            raise RequestInvalid(["The request body is nested too deeply to be a request."]) from None

    @staticmethod
    def _path_her(call: Call, name: str = "herId") -> int:
        raw = call.request.match_info[name]
        if not re.fullmatch(r"\d{1,10}", raw) or not 1 <= int(raw) <= INT32_MAX:
            raise RequestInvalid(
                [f"The value {raw[:30]!r} is not valid for {name} (a HER-id, 1 to {INT32_MAX})."]
            )
        return int(raw)

    async def _visible(self, call: Call, *, with_payload: bool = False) -> Visible:
        raw = call.request.match_info["id"]
        if not is_uuid(raw):
            raise RequestInvalid([f"The value {raw[:60]!r} is not valid for id (a GUID)."])
        store_id = self.ids.from_uuid(raw)
        record = (
            None if store_id is None else await self.store.get_message(store_id, with_payload=with_payload)
        )
        if record is None:
            raise NotFound()
        registry = self.registry()
        principal = call.principal
        deliveries = await self.store.deliveries(record.id)
        mine = [d for d in deliveries if principal.may_act_for(d.receiver_her, registry)]
        as_sender = principal.may_act_for(record.sender_her, registry)
        if not as_sender and not mine:
            raise NotFound()
        return Visible(record, deliveries, as_sender, mine)

    def _forbid_unbound(self, principal: Principal, her_ids) -> None:
        registry = self.registry()
        denied = [h for h in her_ids if not principal.may_act_for(h, registry)]
        if denied:
            raise Forbidden(denied)

    @staticmethod
    async def _read_facts(data: bytes) -> Message | None:
        """Who a stored document says it is from (None if unreadable)."""

        def read() -> Message | None:
            try:
                return read_message(parse_xml(data))
            except (InvalidMessage, ValueError):
                return None

        return read() if len(data) <= INLINE_PARSE_BYTES else await asyncio.to_thread(read)

    async def _validate(self, data: bytes) -> tuple[Message | None, ValidationResult]:
        """The pipeline's validation of a document to send, done here once so that the sender can
        be checked first, and who the document says it is from (None if unreadable). A refused
        document's facts are read as far as they go, as `_read_facts` reads them."""
        result = await self.pipeline.validate(data)
        facts = result.message
        if facts is None and result.tree is not None:
            try:
                facts = read_message(result.tree)
            except (InvalidMessage, ValueError):
                facts = None
        return facts, result

    def _created(self, store_id: int) -> web.Response:
        message_uuid = self.ids.to_uuid(store_id)
        return _json(message_uuid, 201, {"Location": f"/Messages/{message_uuid}"})

    @staticmethod
    def _refused(call: Call, result) -> web.Response:
        lines = problem_lines(result.problems) or [result.detail or "the business document was refused"]
        return _error(
            400, call.request_id, "The business document was refused", code=ERROR_VALIDATION, validation=lines
        )

    # --- operations ----------------------------------------------------------------------------

    async def post_message(self, call: Call) -> web.Response:
        post = parse_post_message(await self._json_body(call))
        registry = self.registry()
        principal = call.principal
        facts, validated = await self._validate(post.document)
        sender = facts.sender.her_id if facts is not None else None
        if sender is not None:
            root = principal.root_for(sender, registry)
            if root is None:
                raise Forbidden([sender])
        elif principal.her_ids:
            # Unreadable, or no sender HER-id: the pipeline refuses it. Naming one of the client's
            # own parties keeps its sender check armed in case it can read more than we did.
            root = min(principal.her_ids)
        else:
            raise Forbidden(["(none bound to this client)"])
        if post.receivers_subset is not None and facts is not None:
            self._check_subset(post.receivers_subset, facts)
        result = await self.pipeline.from_local(
            post.document, source=f"api:{principal.name}", sender_her=root, validated=validated
        )
        if not result.accepted or result.message_id is None:
            return self._refused(call, result)
        return self._created(result.message_id)

    @staticmethod
    def _check_subset(subset: tuple[int, ...], facts: Message) -> None:
        receivers = {facts.receiver.her_id} | {c.address.her_id for c in facts.copies if c.is_copy}
        receivers.discard(None)
        problems = [
            f"HER-id {h} in ReceiverHerIdsSubset is not a receiver of the business document."
            for h in subset
            if h not in receivers
        ]
        left_out = sorted(receivers - set(subset))
        if left_out:
            problems.append(
                "komut delivers a business document to every receiver it names; ReceiverHerIdsSubset leaves out "
                + ", ".join(str(h) for h in left_out)
                + " (send it without the subset, or with all receivers)."
            )
        if problems:
            raise RequestInvalid(problems)

    async def get_messages(self, call: Call) -> web.Response:
        query: dict[str, list[str]] = {}
        for key, value in call.request.query.items():
            query.setdefault(key.lower(), []).append(value)
        q = parse_list_query(query)
        self._forbid_unbound(call.principal, q.receivers)
        entries = await self.mailbox.unread(
            q.receivers,
            sender=q.sender,
            business_document_id=q.business_document_id,
            limit=q.limit,
            descending=q.descending,
        )
        return _json(
            [
                message_json(self.ids.to_uuid(e.message.id), e.message, e.receiver_her, q.include_metadata)
                for e in entries
            ]
        )

    async def get_message(self, call: Call) -> web.Response:
        v = await self._visible(call)
        receiver = v.mine[0].receiver_her if v.mine else v.record.receiver_her
        return _json(message_json(self.ids.to_uuid(v.record.id), v.record, receiver))

    async def get_business_document(self, call: Call) -> web.Response:
        v = await self._visible(call, with_payload=True)
        if v.record.payload is None:
            raise NotFound("The business document is no longer kept (payload retention)")
        return _json(
            {
                "businessDocument": base64.b64encode(v.record.payload).decode("ascii"),
                "contentType": "application/xml",
                "contentTransferEncoding": "base64",
            }
        )

    async def get_status(self, call: Call) -> web.Response:
        v = await self._visible(call)
        return _json(status_json(v.shown, v.record if v.as_sender else None))

    async def get_apprec(self, call: Call) -> web.Response:
        v = await self._visible(call)
        events = await self.store.events(v.record.id) if any(d.apprec_status for d in v.shown) else []
        out = []
        for d in v.shown:
            errors = None
            for event in events:
                details = event.details or {}
                if (
                    event.delivery_id == d.id
                    and details.get("apprec_msg_id") == d.apprec_msg_id
                    and "errors" in details
                ):
                    errors = details["errors"]  # the latest one wins: events come in order
            out.append(apprec_json(d, errors))
        return _json(out)

    async def post_apprec(self, call: Call) -> web.Response:
        her = self._path_her(call)
        raw_id = call.request.match_info["id"]
        if not is_uuid(raw_id):
            raise RequestInvalid([f"The value {raw_id[:60]!r} is not valid for id (a GUID)."])
        post = parse_post_apprec(await self._json_body(call))
        self._forbid_unbound(call.principal, [her])
        v = await self._visible(call, with_payload=True)
        targets = [d for d in v.mine if d.receiver_her == her]
        if not targets:
            raise NotFound()
        if v.record.payload is None:
            raise NotFound("The business document is no longer kept (payload retention)")
        original = await self._read_facts(v.record.payload)
        if original is None:
            raise NotFound()
        # A retried POST (the client lost our answer) gets the AppRec it already sent.
        previous = targets[0]
        if previous.apprec_status == post.status.value and previous.apprec_msg_id:
            for record in await self.store.find_by_msg_id(previous.apprec_msg_id):
                if record.msg_type == "APPREC" and record.sender_her == her:
                    return self._created(record.id)
        role, sender = "PRIM", None
        if original.receiver.her_id != her:
            copy = next((c for c in original.copies if c.address.her_id == her), None)
            if copy is not None:
                role, sender = "COP", copy.address
        name, _, version = call.source_system.partition(",")
        data = build_apprec(
            original,
            post.status,
            post.errors,
            # The version the original's sender accepts, as for the AppRecs komut sends itself.
            version=self.pipeline._apprec_version(self.registry(), original.sender.her_id),
            sender_role=role,
            sender=sender,
            software=(name.strip()[:100] or "komut API client", version.strip()[:50] or "-"),
        )
        root = call.principal.root_for(her, self.registry())
        result = await self.pipeline.from_local(data, source=f"api:{call.principal.name}", sender_her=root)
        if not result.accepted or result.message_id is None:
            return self._refused(call, result)
        return self._created(result.message_id)

    async def put_read(self, call: Call) -> web.Response:
        her = self._path_her(call)
        raw_id = call.request.match_info["id"]
        if not is_uuid(raw_id):
            raise RequestInvalid([f"The value {raw_id[:60]!r} is not valid for id (a GUID)."])
        self._forbid_unbound(call.principal, [her])
        v = await self._visible(call)
        targets = [d for d in v.mine if d.receiver_her == her]
        if not targets:
            raise NotFound()
        for delivery in targets:
            await self.mailbox.mark_read(v.record.id, delivery, call.principal.name)
        return web.Response(status=204)


def setup(app: web.Application, gateway) -> None:
    """Mount the API on the gateway's app and register the "api" transport (see gateway.web)."""
    settings = parse_api_settings(gateway.config)
    api = EdiApi(gateway, settings)
    gateway.transports[api.transport.name] = api.transport
    api.add_routes(app)
    app[APP_KEY] = api
    api_systems = [s.name for s in gateway.config.local_systems if s.transport == "api"]
    if api_systems and not settings.clients and settings.jwt is None:
        log.warning(
            "local systems %s are connected by API, but [api] configures no clients or JWT issuer: "
            "nobody can fetch their messages",
            ", ".join(api_systems),
        )
