"""The operator JSON API under /api/v1/, described by /api/v1/openapi.json.

The pages' script uses it (the live stream); scripts and other tools may too. It authenticates
with the same session cookie as the pages, and every change needs the session's CSRF token in
the X-CSRF-Token header (GET /api/v1/me returns it), so a page elsewhere cannot act for you.
Patient identifiers are masked exactly as on the pages.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from gateway.ui import dashboard, data, live
from gateway.ui.actions import ActionError
from gateway.ui.app import UI_KEY, OperatorUi
from gateway.ui.auth import Principal, guarded, with_headers
from gateway.ui.model import FILTER_KEYS, parse_filters
from gateway.ui.operators import AuditQuery, Role

MAX_LIMIT = 500


def ui_of(request: web.Request) -> OperatorUi:
    return request.app[UI_KEY]


def error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def denied(request: web.Request, who: Principal | None, status: int) -> web.StreamResponse:
    if status == 401:
        return error(401, "log in first (POST /ui/login); the API uses the session cookie")
    if status == 419:
        return error(403, "the X-CSRF-Token header is missing or wrong (GET /api/v1/me has it)")
    return error(403, f"your role ({who.role}) may not do this")


def api(role: Role = Role.VIEWER):
    return guarded(lambda r: ui_of(r).auth, role, api=True, on_denied=denied)


def _int(value, what: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise web.HTTPNotFound(text=f"not a valid {what}") from None


def _limit(request: web.Request, default: int) -> int:
    value = request.query.get("limit", "")
    return max(1, min(int(value), MAX_LIMIT)) if value.isdigit() else default


def _readable(readable) -> dict:
    out = dataclasses.asdict(readable)
    return out


@api()
async def me(request: web.Request, who: Principal) -> web.Response:
    return web.json_response(
        {
            "user": who.name,
            "role": str(who.role),
            "csrf": who.csrf,
            "may": {
                "act": who.may(Role.OPERATOR),
                "unmask": who.may(Role.OPERATOR),
                "raw_xml": who.may(Role.OPERATOR),
                "audit": who.may(Role.OPERATOR),
                "admin": who.may(Role.ADMIN),
            },
        }
    )


@api()
async def messages(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    filters = parse_filters(
        request.query, ui.registry, ui.tz, ui.clock(), _limit(request, ui.settings.page_size)
    )
    rows = await ui.rows(await ui.store.search(filters.query))
    more = len(rows) >= filters.query.limit
    return web.json_response(
        {
            "items": rows,
            "next_before": rows[-1]["id"] if more else None,
            "notes": filters.notes,
            "choices": {k: [{"her_id": h, "name": n} for h, n in v] for k, v in filters.choices.items()},
        }
    )


@api()
async def message(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    detail = await data.message_detail(ui, who, _int(request.match_info["id"], "message id"))
    if detail is None:
        return error(404, "no such message")
    detail["readable"] = _readable(detail["readable"])
    detail.pop("raw", None)
    return web.json_response(detail)


@api(Role.OPERATOR)
async def message_xml(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    detail = await data.message_detail(ui, who, _int(request.match_info["id"], "message id"))
    if detail is None:
        return error(404, "no such message")
    response = web.Response(text=detail["raw"] or "", content_type="application/xml", charset="utf-8")
    response.headers["X-Komut-Masked"] = "true" if detail["masked"] else "false"
    return response


@api(Role.OPERATOR)
async def unmask(request: web.Request, who: Principal, body: dict) -> web.Response:
    from gateway.ui.views import MIN_REASON, grant_unmask

    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    reason = " ".join(str(body.get("reason", "")).split())[:500]
    if len(reason) < MIN_REASON:
        return error(400, "a reason is required; it is written to the audit log")
    if await ui.store.get_message(message_id) is None:
        return error(404, "no such message")
    until = await grant_unmask(ui, request, who, message_id, reason)
    return web.json_response({"message_id": message_id, "unmasked_until": until})


@api(Role.OPERATOR)
async def act(request: web.Request, who: Principal, body: dict) -> web.Response:
    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    action = request.match_info["action"]
    reason = body.get("reason")
    try:
        if action == "handled":
            done = await ui.actions.handled(who, message_id, reason, request)
        else:
            delivery_id = _int(request.match_info["did"], "delivery id")
            method = ui.actions.resend if action == "resend" else ui.actions.cancel
            done = await method(who, message_id, delivery_id, reason, request)
    except ActionError as exc:
        return error(exc.status, exc.message)
    ui.metrics.actions.labels(done.event).inc()
    return web.json_response(dataclasses.asdict(done))


@api()
async def conversation(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    ref = request.query.get("ref", "").strip()[:200]
    if not ref:
        return error(400, "ref (the ConversationRef) is required")
    return web.json_response({"ref": ref, "messages": await data.conversation(ui, ref)})


@api()
async def stats(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    board = await dashboard.build(ui, request.query.get("window", "24h"))
    s = board["stats"]
    return web.json_response(
        {
            "window": board["window"],
            "since": s.since,
            "until": s.until,
            "hourly": [{"hour": h, "msg_type": t, "messages": n} for h, t, n in s.hourly],
            "partners": [dataclasses.asdict(p) for p in s.partners.values()],
            "latency": {k: dataclasses.asdict(v) for k, v in s.latency.items()},
            "deliveries": board["counts"],
            "attention": {x["state"]: [r["id"] for r in x["rows"]] for x in board["lists"]},
        }
    )


def _cert(c) -> dict:
    out = dataclasses.asdict(c)
    out["not_after"] = c.not_after.isoformat()
    return out


@api()
async def certificates(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    return web.json_response(
        {"certificates": [_cert(c) for c in dashboard.certificates(ui.registry, ui.gateway.config)]}
    )


@api()
async def partner(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    info = await data.partner(ui, _int(request.match_info["her"], "HER-id"))
    if info is None:
        return error(404, "no such party")
    info["certificates"] = [_cert(c) for c in info["certificates"]]
    info["stats"] = dataclasses.asdict(info["stats"]) if info["stats"] else None
    return web.json_response(info)


@api(Role.OPERATOR)
async def audit(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    q = request.query
    message = q.get("message", "")
    before = q.get("before", "")
    entries = await ui.operators.audit_entries(
        AuditQuery(
            user=q.get("user") or None,
            action=q.get("action") or None,
            message_id=int(message) if message.isdigit() else None,
            before_id=int(before) if before.isdigit() else None,
            limit=_limit(request, 100),
        )
    )
    return web.json_response({"items": [dataclasses.asdict(e) for e in entries]})


@api(Role.ADMIN)
async def users(request: web.Request, who: Principal) -> web.Response:
    ui = ui_of(request)
    out = [
        {k: v for k, v in dataclasses.asdict(u).items() if k != "password_hash"}
        for u in await ui.operators.users()
    ]
    return web.json_response({"items": out})


@api()
async def stream(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    q = request.query
    # On reconnecting, EventSource says how far it got; that beats the page's render position.
    after = request.headers.get("Last-Event-ID", "") or q.get("after", "")
    message_id = q.get("message_id", "")
    if message_id.isdigit():
        query, mid = None, int(message_id)
    else:
        query, mid = parse_filters(q, ui.registry, ui.tz, ui.clock(), ui.settings.page_size).query, None
        query.before_id = None  # live rows are new ones
    return await live.stream(request, ui.feed, query, mid, int(after) if after.isdigit() else None)


async def openapi(request: web.Request) -> web.Response:
    return with_headers(web.json_response(OPENAPI))


def add_routes(app: web.Application, ui: OperatorUi) -> None:
    r = app.router
    r.add_get("/api/v1/openapi.json", openapi)
    r.add_get("/api/v1/me", me)
    r.add_get("/api/v1/messages", messages)
    r.add_get("/api/v1/messages/{id}", message)
    r.add_get("/api/v1/messages/{id}/xml", message_xml)
    r.add_post("/api/v1/messages/{id}/unmask", unmask)
    r.add_post("/api/v1/messages/{id}/{action:handled}", act)
    r.add_post("/api/v1/messages/{id}/deliveries/{did}/{action:resend|cancel}", act)
    r.add_get("/api/v1/conversations", conversation)
    r.add_get("/api/v1/stats", stats)
    r.add_get("/api/v1/certificates", certificates)
    r.add_get("/api/v1/partners/{her}", partner)
    r.add_get("/api/v1/audit", audit)
    r.add_get("/api/v1/users", users)
    r.add_get("/api/v1/stream", stream)


# --- the OpenAPI document -------------------------------------------------------------------------


def _filters_parameters() -> list[dict]:
    docs = {
        "q": "MsgId, HER-id or part of a party name",
        "sender": "sender HER-id, 'Name (HER-id)' or a name matching one party",
        "receiver": "receiver HER-id, 'Name (HER-id)' or a name matching one party",
        "type": "message type (kodeverk 8279), e.g. LOG_INNLAGT",
        "status": "a message state (received, accepted, rejected, duplicate) or a delivery state",
        "conversation": "ConversationRef (RefToConversation)",
        "msgid": "MsgId",
        "direction": "inbound or outbound",
        "range": "1h, 24h, 7d or 30d back from now",
        "since": "local date and time, e.g. 2026-10-05T14:00 (inclusive)",
        "until": "local date and time (exclusive)",
    }
    params = [
        {"name": k, "in": "query", "schema": {"type": "string"}, "description": docs[k]} for k in FILTER_KEYS
    ]
    params.append(
        {
            "name": "before",
            "in": "query",
            "schema": {"type": "integer"},
            "description": "keyset page: ids below this",
        }
    )
    params.append({"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": MAX_LIMIT}})
    return params


def _op(
    summary: str,
    role: str,
    *,
    params=(),
    body: dict | None = None,
    response: str = "object",
    stream_: bool = False,
) -> dict:
    out: dict = {
        "summary": summary,
        "description": f"Role: {role} or higher.",
        "parameters": list(params),
        "responses": {
            "200": {
                "description": "OK",
                "content": {
                    "text/event-stream" if stream_ else "application/json": {"schema": {"type": response}}
                },
            },
            "401": {
                "description": "not logged in",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
            "403": {
                "description": "role too low, or CSRF token missing",
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            },
        },
    }
    if body is not None:
        out["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
        out["parameters"].append({"$ref": "#/components/parameters/Csrf"})
        out["responses"]["409"] = {"description": "the lifecycle does not allow it from the current state"}
    return out


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_DID = {"name": "did", "in": "path", "required": True, "schema": {"type": "integer"}}
_REASON = {"type": "object", "properties": {"reason": {"type": "string", "maxLength": 500}}}
_REASON_REQUIRED = {**_REASON, "required": ["reason"]}

OPENAPI = {
    "openapi": "3.1.0",
    "info": {
        "title": "komut operator API",
        "version": "1",
        "description": "The delivery log, actions and audit of one komut gateway. Authenticate with the "
        "session cookie from POST /ui/login (form fields username, password); send the session's CSRF "
        "token (GET /api/v1/me) as X-CSRF-Token with every POST.",
    },
    "servers": [{"url": "/"}],
    "components": {
        "schemas": {
            "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
        },
        "parameters": {
            "Csrf": {"name": "X-CSRF-Token", "in": "header", "required": True, "schema": {"type": "string"}}
        },
        "securitySchemes": {"session": {"type": "apiKey", "in": "cookie", "name": "__Host-komut-<gateway>"}},
    },
    "security": [{"session": []}],
    "paths": {
        "/api/v1/me": {"get": _op("Who you are, your role, and your CSRF token", "viewer")},
        "/api/v1/messages": {
            "get": _op(
                "Search the delivery log, newest first (keyset pages)", "viewer", params=_filters_parameters()
            )
        },
        "/api/v1/messages/{id}": {
            "get": _op(
                "One message: deliveries, timeline, refusal, readable content (masked)",
                "viewer",
                params=[_ID],
            )
        },
        "/api/v1/messages/{id}/xml": {
            "get": {
                **_op("The raw XML, masked unless unmasked for you", "operator", params=[_ID]),
                "responses": {
                    "200": {
                        "description": "XML",
                        "content": {"application/xml": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/api/v1/messages/{id}/unmask": {
            "post": _op(
                "Show this message's patient identifiers to you for a while; audited",
                "operator",
                params=[_ID],
                body=_REASON_REQUIRED,
            )
        },
        "/api/v1/messages/{id}/handled": {
            "post": _op(
                "Mark the message handled (timeline event and audit entry)",
                "operator",
                params=[_ID],
                body=_REASON_REQUIRED,
            )
        },
        "/api/v1/messages/{id}/deliveries/{did}/resend": {
            "post": _op(
                "Queue a delivery again (from dead, expired, cancelled, app-rejected, apprec-missing)",
                "operator",
                params=[_ID, _DID],
                body=_REASON,
            )
        },
        "/api/v1/messages/{id}/deliveries/{did}/cancel": {
            "post": _op("Cancel a waiting delivery", "operator", params=[_ID, _DID], body=_REASON_REQUIRED)
        },
        "/api/v1/conversations": {
            "get": _op(
                "Every message of a conversation, oldest first, with its AppRecs",
                "viewer",
                params=[{"name": "ref", "in": "query", "required": True, "schema": {"type": "string"}}],
            )
        },
        "/api/v1/stats": {
            "get": _op(
                "Volume per hour and type, partners, latency, delivery counts",
                "viewer",
                params=[
                    {"name": "window", "in": "query", "schema": {"type": "string", "enum": ["24h", "7d"]}}
                ],
            )
        },
        "/api/v1/certificates": {"get": _op("Every known certificate, soonest expiry first", "viewer")},
        "/api/v1/partners/{her}": {
            "get": _op(
                "A party: endpoint, certificates, recent traffic and errors",
                "viewer",
                params=[{"name": "her", "in": "path", "required": True, "schema": {"type": "integer"}}],
            )
        },
        "/api/v1/audit": {
            "get": _op(
                "The audit log, newest first",
                "operator",
                params=[
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in ("user", "action", "message", "before", "limit")
                ],
            )
        },
        "/api/v1/users": {"get": _op("Operator accounts (no password hashes)", "admin")},
        "/api/v1/stream": {
            "get": _op(
                "Server-sent events: a 'message' event with the fresh row and new events of every "
                "changed message that passes the filters (or message_id)",
                "viewer",
                params=[
                    *_filters_parameters(),
                    {"name": "message_id", "in": "query", "schema": {"type": "integer"}},
                    {
                        "name": "after",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "replay events after this id first (the page's render position)",
                    },
                ],
                stream_=True,
            )
        },
    },
}
