"""The HTML pages under /ui/. Everything works with plain links and forms; ui.js only adds live
updates. Each handler checks the role it needs through `page()`; changes also need the CSRF token."""

from __future__ import annotations

import logging
from importlib import resources
from urllib.parse import urlencode

from aiohttp import web

from gateway.lifecycle import DeliveryState, MessageState
from gateway.registry import Registry
from gateway.ui import dashboard, data
from gateway.ui.actions import ActionError
from gateway.ui.app import UI_KEY, OperatorUi
from gateway.ui.auth import LoginError, Principal, guarded, with_headers
from gateway.ui.model import parse_filters, party_choices
from gateway.ui.operators import AuditQuery, Role, User, UserExists
from gateway.ui.passwords import WeakPassword, hash_password
from gateway.ui.texts import STATE_HELP
from message_types.codes import MESSAGE_FUNCTION

log = logging.getLogger("komut.ui.views")

STATIC = {"ui.css": "text/css", "ui.js": "text/javascript", "favicon.svg": "image/svg+xml"}
REDACT = ("token", "password", "secret", "passphrase")
MIN_REASON = 3


def ui_of(request: web.Request) -> OperatorUi:
    return request.app[UI_KEY]


async def denied(request: web.Request, who: Principal | None, status: int) -> web.StreamResponse:
    ui = ui_of(request)
    if status == 401:
        target = request.path_qs if request.method == "GET" else "/ui/log"
        raise web.HTTPSeeOther("/ui/login?" + urlencode({"next": target}))
    if status == 419:
        return ui.render(
            "error.html",
            request,
            who,
            status=403,
            title="Form expired",
            message="This form is no longer valid (its security token did not match). Go back, reload the page and try again.",
        )
    return ui.render(
        "error.html",
        request,
        who,
        status=403,
        title="Not allowed",
        message=f"Your role ({who.role if who else '-'}) may not do this. Ask an administrator if you need it.",
    )


def page(role: Role = Role.VIEWER):
    return guarded(lambda r: ui_of(r).auth, role, api=False, on_denied=denied)


def _safe_next(value: str | None) -> str:
    if value and value.startswith("/ui/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/ui/log"


def _int(value: str, what: str = "id") -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise web.HTTPNotFound(text=f"not a valid {what}") from None


# --- login --------------------------------------------------------------------------------------


async def login_page(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    who = await ui.auth.principal(request)
    if who is not None:
        raise web.HTTPSeeOther(_safe_next(request.query.get("next")))
    return with_headers(
        ui.render(
            "login.html", request, None, title="Log in", next=_safe_next(request.query.get("next")), error=""
        )
    )


async def login_submit(request: web.Request) -> web.StreamResponse:
    ui = ui_of(request)
    form = await request.post()
    origin = request.headers.get("Origin")
    next_url = _safe_next(str(form.get("next", "")))
    if origin and origin != "null" and origin.split("://", 1)[-1] != request.host:
        return with_headers(
            ui.render("login.html", request, None, status=403, next=next_url, error="Wrong origin.")
        )
    try:
        token, _ = await ui.auth.login(request, str(form.get("username", "")), str(form.get("password", "")))
    except LoginError as exc:
        ui.metrics.logins.labels("failed").inc()
        return with_headers(ui.render("login.html", request, None, status=401, next=next_url, error=str(exc)))
    ui.metrics.logins.labels("ok").inc()
    response = web.HTTPSeeOther(next_url)
    ui.auth.set_cookie(request, response, token)
    with_headers(response)
    raise response


@page()
async def logout(request: web.Request, who: Principal, form: dict) -> web.StreamResponse:
    ui = ui_of(request)
    await ui.auth.logout(request, who)
    response = web.HTTPSeeOther("/ui/login")
    ui.auth.clear_cookie(request, response)
    raise response


# --- the log ------------------------------------------------------------------------------------


def _statuses() -> list[tuple[str, list[tuple[str, str]]]]:
    return [
        ("Message", [(str(s), f"{s} — {STATE_HELP.get(s, '')}") for s in MessageState]),
        ("Delivery", [(str(s), f"{s} — {STATE_HELP.get(s, '')}") for s in DeliveryState]),
    ]


def _types() -> list[tuple[str, str]]:
    return sorted(MESSAGE_FUNCTION.codes.items(), key=lambda kv: kv[1].casefold())


@page()
async def log_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    registry: Registry = ui.registry
    filters = parse_filters(request.query, registry, ui.tz, ui.clock(), ui.settings.page_size)
    position = await ui.store.last_event_id()
    messages = await ui.store.search(filters.query)
    rows = await ui.rows(messages)
    older = filters.link(before=rows[-1]["id"]) if len(rows) >= filters.query.limit else None
    stream = "/api/v1/stream?" + filters.link(before=None)
    return ui.render(
        "log.html",
        request,
        who,
        title="Delivery log",
        filters=filters,
        rows=rows,
        older=older,
        newest=filters.link(before=None) if filters.query.before_id else None,
        first_page=filters.query.before_id is None,
        stream=stream,
        position=position,
        parties=party_choices(registry),
        types=_types(),
        statuses=_statuses(),
    )


# --- one message --------------------------------------------------------------------------------


@page()
async def message_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    detail = await data.message_detail(ui, who, message_id)
    if detail is None:
        return ui.render(
            "error.html", request, who, status=404, title="Not found", message=f"No message {message_id}."
        )
    notice = request.query.get("done", "")[:200]
    error = request.query.get("error", "")[:300]
    return ui.render(
        "message.html",
        request,
        who,
        title=f"Message {message_id}",
        d=detail,
        notice=notice,
        error=error,
        can_act=who.may(Role.OPERATOR),
        min_reason=MIN_REASON,
    )


def _back(message_id: int, **params) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(f"/ui/messages/{message_id}?{urlencode(params)}")


@page(Role.OPERATOR)
async def unmask(request: web.Request, who: Principal, form: dict) -> web.StreamResponse:
    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    reason = " ".join(str(form.get("reason", "")).split())[:500]
    if len(reason) < MIN_REASON:
        raise _back(
            message_id,
            error="Say why you need to see the patient's identity (it is written to the audit log).",
        )
    if await ui.store.get_message(message_id) is None:
        raise web.HTTPNotFound()
    await grant_unmask(ui, request, who, message_id, reason)
    raise web.HTTPSeeOther(f"/ui/messages/{message_id}?done=unmasked#content")


async def grant_unmask(
    ui: OperatorUi, request: web.Request, who: Principal, message_id: int, reason: str
) -> float:
    until = ui.clock() + ui.settings.unmask_for
    await ui.auth.audit(
        who.name, "unmask", request, message_id=message_id, reason=reason, details={"until": until}
    )
    ui.unmasked[(who.session.token_hash, message_id)] = (until, reason)
    ui.metrics.unmasks.inc()
    return until


@page(Role.OPERATOR)
async def mask(request: web.Request, who: Principal, form: dict) -> web.StreamResponse:
    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    ui.unmasked.pop((who.session.token_hash, message_id), None)
    raise _back(message_id, done="masked again")


@page(Role.OPERATOR)
async def act(request: web.Request, who: Principal, form: dict) -> web.StreamResponse:
    ui = ui_of(request)
    message_id = _int(request.match_info["id"], "message id")
    action = request.match_info["action"]
    reason = str(form.get("reason", ""))
    try:
        if action == "handled":
            done = await ui.actions.handled(who, message_id, reason, request)
        else:
            delivery_id = _int(request.match_info.get("did", ""), "delivery id")
            if action == "resend":
                done = await ui.actions.resend(who, message_id, delivery_id, reason, request)
            elif action == "cancel":
                done = await ui.actions.cancel(who, message_id, delivery_id, reason, request)
            else:
                raise web.HTTPNotFound()
    except ActionError as exc:
        raise _back(message_id, error=exc.message) from None
    ui.metrics.actions.labels(done.event).inc()
    raise _back(message_id, done=done.detail)


# --- conversation, dashboard, partners ----------------------------------------------------------


@page()
async def conversation_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    ref = request.query.get("ref", "").strip()[:200]
    rows = await data.conversation(ui, ref) if ref else []
    return ui.render("conversation.html", request, who, title="Conversation", ref=ref, rows=rows)


@page()
async def dashboard_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    board = await dashboard.build(ui, request.query.get("window", "24h"))
    return ui.render("dashboard.html", request, who, title="Dashboard", b=board)


@page()
async def partners_page(request: web.Request, who: Principal) -> web.StreamResponse:
    """Organisations with the traffic of their whole subtree (last 24 h), problems first; `all`
    lists every party of the registry in tree order, `q` narrows by name or HER-id."""
    ui = ui_of(request)
    registry = ui.registry
    show_all = request.query.get("show") == "all"
    text = request.query.get("q", "").strip()[:100]
    stats = (await ui.traffic_stats(24)).partners
    certs: dict[int, dashboard.CertificateRow] = {}
    for c in dashboard.certificates(registry, ui.gateway.config):
        certs.setdefault(c.her_id, c)
    totals: dict[int, dict[str, int]] = {}
    for her, st in stats.items():
        top = registry.level1(her).her_id if her in registry else her
        for key in (her, top) if show_all else (top,):
            t = totals.setdefault(
                key, {"sent": 0, "refused": 0, "deliveries": 0, "failed": 0, "apprec_missing": 0}
            )
            for field in t:
                t[field] += getattr(st, field)
    parties = []
    for party in registry:
        depth = len(registry.ancestors(party.her_id))
        if depth and not show_all:
            continue
        name = registry.display_name(party.her_id)
        if text and text.casefold() not in name.casefold() and text != str(party.her_id):
            continue
        holder = registry.certificate_holder(party.her_id)
        endpoint = registry.endpoint(party.her_id)
        t = totals.get(party.her_id)
        parties.append(
            {
                "her_id": party.her_id,
                "name": party.name if show_all else name,
                "depth": depth,
                "kind": str(party.kind),
                "category": str(party.category or ""),
                "endpoint": endpoint.describe() if endpoint else "",
                "cert": certs.get(holder.her_id) if holder else None,
                "stats": t,
                "trouble": (t["refused"] + t["failed"] + t["apprec_missing"]) if t else 0,
            }
        )
    if not show_all:
        parties.sort(key=lambda p: (-p["trouble"], -(p["stats"] or {}).get("deliveries", 0), p["name"]))
    return ui.render(
        "partners.html", request, who, title="Partners", parties=parties, show_all=show_all, q=text
    )


@page()
async def partner_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    her_id = _int(request.match_info["her"], "HER-id")
    info = await data.partner(ui, her_id)
    if info is None:
        return ui.render(
            "error.html", request, who, status=404, title="Not found", message=f"No party {her_id}."
        )
    return ui.render(
        "partner.html", request, who, title=info["name"], p=info, warn_days=ui.settings.expiry_warning_days
    )


# --- audit and administration ---------------------------------------------------------------------


@page(Role.OPERATOR)
async def audit_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    q = request.query
    message = q.get("message", "").strip()
    before = q.get("before", "").strip()
    query = AuditQuery(
        user=q.get("user", "").strip() or None,
        action=q.get("action", "").strip() or None,
        message_id=int(message) if message.isdigit() else None,
        before_id=int(before) if before.isdigit() else None,
        limit=100,
    )
    entries = await ui.operators.audit_entries(query)
    values = {"user": query.user or "", "action": query.action or "", "message": message}
    older = None
    if len(entries) >= query.limit:
        older = urlencode({**{k: v for k, v in values.items() if v}, "before": entries[-1].id})
    return ui.render(
        "audit.html",
        request,
        who,
        title="Audit log",
        entries=entries,
        values=values,
        older=older,
        actions=[
            "login",
            "login-failed",
            "login-refused",
            "logout",
            "resend",
            "cancel",
            "handled",
            "unmask",
            "user-add",
            "user-change",
            "password-reset",
            "config-view",
        ],
    )


@page(Role.ADMIN)
async def users_page(request: web.Request, who: Principal) -> web.StreamResponse:
    ui = ui_of(request)
    users = await ui.operators.users()
    return ui.render(
        "users.html",
        request,
        who,
        title="Users",
        users=users,
        roles=[str(r) for r in Role],
        notice=request.query.get("done", "")[:200],
        error=request.query.get("error", "")[:300],
    )


@page(Role.ADMIN)
async def users_submit(request: web.Request, who: Principal, form: dict) -> web.StreamResponse:
    ui = ui_of(request)
    name = str(form.get("name", "")).strip()
    op = str(form.get("op", "add"))
    store = ui.operators
    try:
        if op == "add":
            if (
                not name
                or len(name) > 64
                or not name.replace("-", "").replace(".", "").replace("_", "").isalnum()
            ):
                raise ValueError("a user name is 1-64 letters, digits, '.', '-' or '_'")
            role = Role(str(form.get("role", "viewer")))
            now = ui.clock()
            await store.add_user(
                User(name, role, hash_password(str(form.get("password", ""))), now, password_changed_at=now)
            )
            await ui.auth.audit(who.name, "user-add", request, details={"user": name, "role": str(role)})
            done = f"user {name} added as {role}"
        elif op == "role":
            role = Role(str(form.get("role", "")))
            await store.update_user(name, {"role": role})
            await store.delete_sessions(name)
            await ui.auth.audit(who.name, "user-change", request, details={"user": name, "role": str(role)})
            done = f"{name} is now {role}"
        elif op in ("disable", "enable"):
            if name == who.name:
                raise ValueError("you cannot disable yourself")
            await store.update_user(name, {"disabled": op == "disable"})
            await store.delete_sessions(name)
            await ui.auth.audit(
                who.name, "user-change", request, details={"user": name, "disabled": op == "disable"}
            )
            done = f"{name} {op}d"
        elif op == "password":
            now = ui.clock()
            await store.update_user(
                name,
                {"password_hash": hash_password(str(form.get("password", ""))), "password_changed_at": now},
            )
            await store.delete_sessions(name)
            await ui.auth.audit(who.name, "password-reset", request, details={"user": name})
            done = f"new password set for {name}"
        else:
            raise ValueError("unknown operation")
    except (UserExists, LookupError, ValueError, WeakPassword) as exc:
        message = f"user {name} exists already" if isinstance(exc, UserExists) else str(exc).strip("'\"")
        raise web.HTTPSeeOther("/ui/admin/users?" + urlencode({"error": message})) from None
    raise web.HTTPSeeOther("/ui/admin/users?" + urlencode({"done": done}))


def redacted(value, key: str = ""):
    if isinstance(value, dict):
        return {k: redacted(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, key) for v in value]
    if any(word in key.lower() for word in REDACT):
        return "(hidden)"
    return value


@page(Role.ADMIN)
async def config_page(request: web.Request, who: Principal) -> web.StreamResponse:
    import json

    ui = ui_of(request)
    config = ui.gateway.config
    await ui.auth.audit(who.name, "config-view", request)
    text = json.dumps(redacted(config.sections), indent=2, ensure_ascii=False, default=str)
    return ui.render(
        "config.html",
        request,
        who,
        title="Configuration",
        text=text,
        source=str(config.source or ""),
        settings=ui.settings,
        listener=ui.listener_url,
    )


# --- static files -------------------------------------------------------------------------------


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if name not in STATIC:
        raise web.HTTPNotFound()
    body = resources.files("gateway.ui").joinpath("static", name).read_bytes()
    response = web.Response(body=body, content_type=STATIC[name])
    with_headers(response)
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


async def root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPSeeOther("/ui/log")


def add_routes(app: web.Application, ui: OperatorUi) -> None:
    r = app.router
    r.add_get("/ui", root)
    r.add_get("/ui/", root)
    r.add_get("/ui/login", login_page)
    r.add_post("/ui/login", login_submit)
    r.add_post("/ui/logout", logout)
    r.add_get("/ui/log", log_page)
    r.add_get("/ui/messages/{id}", message_page)
    r.add_post("/ui/messages/{id}/unmask", unmask)
    r.add_post("/ui/messages/{id}/mask", mask)
    r.add_post("/ui/messages/{id}/{action:handled}", act)
    r.add_post("/ui/messages/{id}/deliveries/{did}/{action:resend|cancel}", act)
    r.add_get("/ui/conversation", conversation_page)
    r.add_get("/ui/dashboard", dashboard_page)
    r.add_get("/ui/partners", partners_page)
    r.add_get("/ui/partners/{her}", partner_page)
    r.add_get("/ui/audit", audit_page)
    r.add_get("/ui/admin/users", users_page)
    r.add_post("/ui/admin/users", users_submit)
    r.add_get("/ui/admin/config", config_page)
    r.add_get("/ui/static/{name}", static)
