"""The operator UI and API without a browser: logins and sessions, roles, CSRF, masking and audited
unmasking, actions through the lifecycle table, live events, metrics, the OpenAPI document, the
operator stores, and `komut user`. Runs the UI on a memory store with aiohttp's test client."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from conftest import SAMPLES
from test_store_contract import delivery, intake, message

from adapters.operator_memory import MemoryOperatorStore
from adapters.operator_sqlite import SqliteOperatorStore
from adapters.store_memory import MemoryStore
from gateway.config import parse_config
from gateway.lifecycle import DeliveryState, MessageState
from gateway.registry import load_default_registry
from gateway.store import Change, DeliveryUpdate, Event, Query
from gateway.ui.api import OPENAPI
from gateway.ui.app import OperatorUi
from gateway.ui.content import mask_text, render
from gateway.ui.model import matches, parse_filters
from gateway.ui.operators import AuditEntry, AuditQuery, Role, Session, User, UserExists
from gateway.ui.passwords import hash_password
from gateway.ui.settings import parse_ui_settings

D = DeliveryState
PASSWORD = "correct horse battery staple"
FNR = "14034148288"
PLO = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
SENDER, RECEIVER = 9100201, 9203001


class Clock:
    def __init__(self):
        self.now = time.time()

    def __call__(self):
        return self.now


class Woken:
    def __init__(self):
        self.count = 0

    def wake(self):
        self.count += 1


async def _seed(store) -> dict[str, int]:
    now = time.time()
    ids = {}
    for key, state in (("ok", D.APP_OK), ("dead", D.DEAD), ("queued", D.QUEUED)):
        record = message(
            key,
            at=now - 60,
            payload=PLO,
            sender=SENDER,
            receiver=RECEIVER,
            names=("Drammen sykehus", "Drammen kommune"),
        )
        applied = await store.apply(intake(record, [delivery(RECEIVER, state=state)]))
        ids[key] = applied.message_id
        ids[f"{key}_delivery"] = applied.delivery_ids[0]
    refused = message(
        "refused",
        at=now - 30,
        payload=b"<not xml",
        sender=SENDER,
        receiver=RECEIVER,
        state=MessageState.REJECTED,
    )
    refused.problems = [
        {"code": "E31", "code_text": "", "message": f"fødselsnummer {FNR[:-1]}9 is not valid"}
    ]
    ids["refused"] = (await store.apply(intake(refused, []))).message_id
    return ids


@pytest.fixture
async def env(tmp_path):
    config = parse_config({"gateway": {"name": "hospital"}, "ui": {"live_poll": "20ms"}}, tmp_path)
    store = MemoryStore()
    await store.open()
    ids = await _seed(store)
    dispatcher = SimpleNamespace(wake=Woken().wake, breakers=SimpleNamespace(state=lambda: {}), in_flight={})
    gateway = SimpleNamespace(
        config=config,
        store=store,
        registry_holder=SimpleNamespace(current=load_default_registry()),
        dispatcher=dispatcher,
        pipeline=SimpleNamespace(local_systems={}),
    )
    operators = MemoryOperatorStore()
    clock = Clock()
    ui = OperatorUi(gateway, parse_ui_settings(config), operators, clock=clock)
    for name, role in (("vera", Role.VIEWER), ("olga", Role.OPERATOR), ("adam", Role.ADMIN)):
        await operators.add_user(User(name, role, hash_password(PASSWORD), clock.now))
    app = web.Application()
    ui.mount(app)

    async def start(_):
        await ui.start()

    async def stop(_):
        await ui.shutdown()

    app.on_startup.append(start)
    app.on_shutdown.append(stop)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield SimpleNamespace(
        client=client, ui=ui, store=store, operators=operators, ids=ids, clock=clock, gateway=gateway
    )
    await client.close()


async def session(env, name: str) -> tuple[TestClient, str]:
    """A client of its own (cookie jar) logged in as `name`, and its CSRF token."""
    client = TestClient(env.client.server)
    resp = await client.post(
        "/ui/login", data={"username": name, "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    me = await (await client.get("/api/v1/me")).json()
    return client, me["csrf"]


# --- login, sessions, CSRF -----------------------------------------------------------------------


async def test_login_sets_a_strict_httponly_cookie_and_keeps_only_its_hash(env):
    client = env.client
    resp = await client.post(
        "/ui/login", data={"username": "olga", "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/ui/log"
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    token = re.search(r"komut-hospital=([^;]+)", cookie).group(1)
    assert await env.operators.get_session(token) is None, "the raw token must not be the key"
    assert any(e.action == "login" for e in await env.operators.audit_entries(AuditQuery(user="olga")))
    page = await client.get("/ui/log")
    assert page.status == 200
    assert page.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert page.headers["Cache-Control"] == "no-store"


async def test_wrong_passwords_are_audited_and_throttled(env):
    client = env.client
    for _ in range(env.ui.settings.login_failures):
        resp = await client.post("/ui/login", data={"username": "olga", "password": "wrong password!"})
        assert resp.status == 401
    # Even the right password waits out the window now.
    resp = await client.post(
        "/ui/login", data={"username": "olga", "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 401 and "Too many" in await resp.text()
    failed = await env.operators.audit_entries(AuditQuery(action="login-failed"))
    assert len(failed) == env.ui.settings.login_failures
    env.clock.now += env.ui.settings.login_window + 1
    resp = await client.post(
        "/ui/login", data={"username": "olga", "password": PASSWORD}, allow_redirects=False
    )
    assert resp.status == 303


async def test_without_a_session_pages_redirect_and_the_api_answers_401(env):
    resp = await env.client.get("/ui/messages/1", allow_redirects=False)
    location = urlsplit(resp.headers["Location"])
    assert resp.status == 303 and location.path == "/ui/login"
    assert parse_qs(location.query)["next"] == ["/ui/messages/1"]
    resp = await env.client.get("/api/v1/messages")
    assert resp.status == 401 and "error" in await resp.json()
    resp = await env.client.get("/ui/login?next=//evil.example/x")
    assert 'value="/ui/log"' in await resp.text(), "an open redirect through next="


async def test_sessions_end_when_idle_and_when_the_user_is_disabled(env):
    client, _ = await session(env, "olga")
    assert (await client.get("/api/v1/me")).status == 200
    env.clock.now += env.ui.settings.session_idle + 1
    assert (await client.get("/api/v1/me")).status == 401
    client, _ = await session(env, "olga")
    await env.operators.update_user("olga", {"disabled": True})
    assert (await client.get("/api/v1/me")).status == 401
    await client.close()


async def test_changes_need_the_sessions_csrf_token_and_a_same_origin(env):
    olga, csrf = await session(env, "olga")
    _, other_csrf = await session(env, "adam")
    url = f"/ui/messages/{env.ids['dead']}/deliveries/{env.ids['dead_delivery']}/resend"
    for data, headers in (
        ({}, {}),
        ({"_csrf": other_csrf}, {}),
        ({"_csrf": csrf}, {"Origin": "https://evil.example"}),
    ):
        resp = await olga.post(url, data=data, headers=headers, allow_redirects=False)
        assert resp.status == 403
    api = await olga.post(url.replace("/ui/", "/api/v1/"), json={"reason": "x"})
    assert api.status == 403 and "CSRF" in (await api.json())["error"]
    assert (await env.store.deliveries(env.ids["dead"]))[0].state == D.DEAD
    resp = await olga.post(url, data={"_csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    await olga.close()


# --- roles ---------------------------------------------------------------------------------------


async def test_what_each_role_may_do(env):
    vera, vera_csrf = await session(env, "vera")
    olga, olga_csrf = await session(env, "olga")
    adam, _ = await session(env, "adam")
    dead, did = env.ids["dead"], env.ids["dead_delivery"]
    resend = f"/api/v1/messages/{dead}/deliveries/{did}/resend"
    assert (await vera.post(resend, json={}, headers={"X-CSRF-Token": vera_csrf})).status == 403
    assert (
        await vera.post(f"/ui/messages/{dead}/unmask", data={"_csrf": vera_csrf, "reason": "curious"})
    ).status == 403
    assert (await vera.get(f"/api/v1/messages/{dead}/xml")).status == 403
    assert (await vera.get("/ui/audit")).status == 403
    assert (await vera.get("/ui/log")).status == 200
    assert "Raw XML" not in await (await vera.get(f"/ui/messages/{dead}")).text()
    assert (await olga.get("/ui/audit")).status == 200
    assert (await olga.get("/ui/admin/users")).status == 403
    assert (await olga.get("/api/v1/users")).status == 403
    assert (await adam.get("/ui/admin/users")).status == 200
    users = (await (await adam.get("/api/v1/users")).json())["items"]
    assert {u["name"] for u in users} == {"vera", "olga", "adam"} and all(
        "password_hash" not in u for u in users
    )
    resp = await olga.post(resend, json={"reason": "back up"}, headers={"X-CSRF-Token": olga_csrf})
    assert resp.status == 200
    for c in (vera, olga, adam):
        await c.close()


async def test_an_admin_manages_users_and_a_role_change_ends_sessions(env):
    adam, csrf = await session(env, "adam")
    vera, _ = await session(env, "vera")
    resp = await adam.post(
        "/ui/admin/users",
        data={"_csrf": csrf, "op": "add", "name": "nils", "role": "operator", "password": "short"},
        allow_redirects=False,
    )
    assert "error=" in resp.headers["Location"]
    resp = await adam.post(
        "/ui/admin/users",
        data={"_csrf": csrf, "op": "add", "name": "nils", "role": "operator", "password": PASSWORD},
        allow_redirects=False,
    )
    assert "done=" in resp.headers["Location"]
    assert (await env.operators.get_user("nils")).role == Role.OPERATOR
    await adam.post("/ui/admin/users", data={"_csrf": csrf, "op": "role", "name": "vera", "role": "operator"})
    assert (await vera.get("/api/v1/me")).status == 401, "a role change ends the user's sessions"
    actions = [e.action for e in await env.operators.audit_entries(AuditQuery(user="adam"))]
    assert "user-add" in actions and "user-change" in actions
    config = await (await adam.get("/ui/admin/config")).text()
    assert "Configuration" in config
    await adam.close()
    await vera.close()


# --- masking ---------------------------------------------------------------------------------------


def test_masking_national_ids_names_and_relatives():
    data = (SAMPLES / "valid/plo/07-utskrivningsrapport.xml").read_bytes()
    view = render(data, masked=True)
    for secret in (FNR, "Astrid", "Fjellstad", "Lerkeveien", "Kristin", "+4701234567"):
        assert secret not in view.raw, secret
    assert "•••••••••88" in view.raw
    assert "Moen" in view.raw and "9910201" in view.raw, "health professionals are not patient data"
    clear = render(data, masked=False)
    assert FNR in clear.raw and "Astrid" in clear.raw
    assert mask_text(f"E31 {FNR[:-1]}9 feil", frozenset({"Astrid"})) == "E31 •••••••••89 feil"
    assert mask_text("Astrid ringte", frozenset({"Astrid"})) == "••• ringte"
    assert mask_text("HER 9203001, org 993203009") == "HER 9203001, org 993203009"


async def test_patient_identifiers_are_masked_until_an_operator_unmasks_with_a_reason(env):
    olga, csrf = await session(env, "olga")
    ok = env.ids["ok"]
    page = await (await olga.get(f"/ui/messages/{ok}")).text()
    api = await (await olga.get(f"/api/v1/messages/{ok}")).text()
    xml = await (await olga.get(f"/api/v1/messages/{ok}/xml")).text()
    for text in (page, api, xml):
        assert FNR not in text and "Fjellstad" not in text
    assert "•••••••••88" in page
    refused = await (await olga.get(f"/ui/messages/{env.ids['refused']}")).text()
    assert FNR[:-1] + "9" not in refused and "Pasientens fødselsnummer er feil" in refused

    resp = await olga.post(
        f"/ui/messages/{ok}/unmask", data={"_csrf": csrf, "reason": ""}, allow_redirects=False
    )
    assert "error=" in resp.headers["Location"], "a reason is required"
    resp = await olga.post(
        f"/ui/messages/{ok}/unmask", data={"_csrf": csrf, "reason": "patient phoned"}, allow_redirects=False
    )
    assert resp.status == 303
    assert FNR in await (await olga.get(f"/ui/messages/{ok}")).text()
    assert FNR in await (await olga.get(f"/api/v1/messages/{ok}/xml")).text()
    [entry] = await env.operators.audit_entries(AuditQuery(action="unmask"))
    assert (entry.user, entry.message_id, entry.reason) == ("olga", ok, "patient phoned")
    # Only for that session, and only for a while.
    other, _ = await session(env, "olga")
    assert FNR not in await (await other.get(f"/ui/messages/{ok}")).text()
    env.clock.now += env.ui.settings.unmask_for + 1
    assert FNR not in await (await olga.get(f"/ui/messages/{ok}")).text()
    await olga.close()
    await other.close()


# --- actions -------------------------------------------------------------------------------------


async def test_resend_goes_through_the_lifecycle_and_is_audited(env):
    olga, csrf = await session(env, "olga")
    headers = {"X-CSRF-Token": csrf}
    dead, did = env.ids["dead"], env.ids["dead_delivery"]
    before = env.gateway.dispatcher.wake.__self__.count
    resp = await olga.post(
        f"/api/v1/messages/{dead}/deliveries/{did}/resend", json={"reason": "peer is back"}, headers=headers
    )
    assert resp.status == 200
    [d] = await env.store.deliveries(dead)
    assert d.state == D.QUEUED and d.attempts == 0 and d.expires_at > env.clock.now + 3600
    event = (await env.store.events(dead))[-1]
    assert (event.actor, event.kind, event.from_state, event.to_state) == (
        "operator",
        "resend",
        "dead",
        "queued",
    )
    assert event.details["user"] == "olga" and event.reason == "peer is back"
    assert env.gateway.dispatcher.wake.__self__.count == before + 1
    [entry] = await env.operators.audit_entries(AuditQuery(action="resend"))
    assert (entry.message_id, entry.delivery_id, entry.user) == (dead, did, "olga")

    ok, ok_did = env.ids["ok"], env.ids["ok_delivery"]
    resp = await olga.post(f"/api/v1/messages/{ok}/deliveries/{ok_did}/resend", json={}, headers=headers)
    assert resp.status == 409 and "app-ok" in (await resp.json())["error"]
    resp = await olga.post(f"/api/v1/messages/{ok}/deliveries/999/resend", json={}, headers=headers)
    assert resp.status == 404
    await olga.close()


async def test_cancel_needs_a_reason_and_a_cancellable_state(env):
    olga, csrf = await session(env, "olga")
    headers = {"X-CSRF-Token": csrf}
    queued, did = env.ids["queued"], env.ids["queued_delivery"]
    url = f"/api/v1/messages/{queued}/deliveries/{did}/cancel"
    assert (await olga.post(url, json={}, headers=headers)).status == 400
    assert (await olga.post(url, json={"reason": "sent to the wrong ward"}, headers=headers)).status == 200
    assert (await env.store.deliveries(queued))[0].state == D.CANCELLED
    assert (await olga.post(url, json={"reason": "again"}, headers=headers)).status == 409
    await olga.close()


async def test_an_action_on_a_delivery_that_moved_meanwhile_is_refused(env, monkeypatch):
    olga, csrf = await session(env, "olga")
    dead, did = env.ids["dead"], env.ids["dead_delivery"]
    real = env.store.deliveries

    async def stale(message_id):
        # What the operator saw; a worker moves it before the action is applied.
        out = await real(message_id)
        await env.store.apply(Change(delivery_updates=[DeliveryUpdate(did, D.DEAD, {"state": D.CANCELLED})]))
        monkeypatch.setattr(env.store, "deliveries", real)
        return out

    monkeypatch.setattr(env.store, "deliveries", stale)
    resp = await olga.post(
        f"/api/v1/messages/{dead}/deliveries/{did}/resend", json={}, headers={"X-CSRF-Token": csrf}
    )
    assert resp.status == 409 and "changed meanwhile" in (await resp.json())["error"]
    assert (await real(dead))[0].state == D.CANCELLED
    await olga.close()


async def test_mark_handled_is_an_event_and_an_audit_entry_and_lasts_until_the_next_change(env):
    olga, csrf = await session(env, "olga")
    dead, did = env.ids["dead"], env.ids["dead_delivery"]
    resp = await olga.post(
        f"/ui/messages/{dead}/handled",
        data={"_csrf": csrf, "reason": "phoned them; they resend"},
        allow_redirects=False,
    )
    assert resp.status == 303 and "done=" in resp.headers["Location"]
    event = (await env.store.events(dead))[-1]
    assert (event.kind, event.to_state, event.details["user"]) == ("marked handled", None, "olga")
    assert (await env.store.deliveries(dead))[0].state == D.DEAD, "no state change"
    [entry] = await env.operators.audit_entries(AuditQuery(action="handled"))
    assert entry.message_id == dead and entry.reason == "phoned them; they resend"
    row = next(
        r for r in (await (await olga.get("/api/v1/messages?status=dead")).json())["items"] if r["id"] == dead
    )
    assert row["handled"]["by"] == "olga"
    env.clock.now += 5
    await env.store.apply(
        Change(
            delivery_updates=[DeliveryUpdate(did, D.DEAD, {"state": D.QUEUED, "updated_at": env.clock.now})]
        )
    )
    row = (await (await olga.get(f"/api/v1/messages/{dead}")).json())["message"]
    assert row["handled"] is None
    await olga.close()


# --- the log's filters and live updates -------------------------------------------------------------


async def test_the_live_filter_agrees_with_the_store_search(env):
    ui = env.ui
    registry = ui.registry
    store = env.store
    now = env.clock.now
    queries = [
        {"status": "dead"},
        {"status": "rejected"},
        {"sender": str(SENDER)},
        {"receiver": "Sykepleietjeneste, pleie og omsorg (9203001)"},
        {"q": "Drammen"},
        {"q": "refused"},
        {"range": "1h"},
        {"direction": "inbound"},
        {"type": "DIALOG_HELSEFAGLIG", "status": "app-ok"},
    ]
    everything = await store.search(Query(limit=1000))
    for params in queries:
        q = parse_filters(params, registry, ui.tz, now, 1000).query
        found = {m.id for m in await store.search(q)}
        mine = {m.id for m in everything if matches(q, m, await store.deliveries(m.id))}
        assert found == mine, params


async def test_a_name_that_fits_several_parties_offers_choices(env):
    f = parse_filters({"sender": "Drammen"}, env.ui.registry, env.ui.tz, env.clock.now, 50)
    assert f.query.sender_her is None and f.query.text == "Drammen"
    assert len(f.choices["sender"]) > 1 and f.notes
    f = parse_filters({"sender": "Drammen kommune"}, env.ui.registry, env.ui.tz, env.clock.now, 50)
    assert f.query.sender_her == 9203000


async def test_the_log_pages_by_key_without_javascript(env):
    for n in range(7):
        await env.store.apply(
            intake(message(f"extra{n}", at=env.clock.now - 10 + n, sender=SENDER), [delivery()])
        )
    olga, _ = await session(env, "olga")
    env.ui.settings = type(env.ui.settings)(**{**env.ui.settings.__dict__, "page_size": 5})
    first = await (await olga.get("/ui/log")).text()
    ids = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', first)]
    assert len(ids) == 5 and ids == sorted(ids, reverse=True)
    older = (
        re.search(r'href="/ui/log\?([^"]*before=\d+[^"]*)" rel="next"', first).group(1).replace("&amp;", "&")
    )
    second = await (await olga.get(f"/ui/log?{older}")).text()
    more = [int(i) for i in re.findall(r'<tr data-id="(\d+)"', second)]
    assert more and max(more) < min(ids)
    await olga.close()


async def _events(resp, wanted: int, timeout: float = 10) -> list[dict]:
    out, buffer = [], ""
    async with asyncio.timeout(timeout):
        while len(out) < wanted:
            buffer += (await resp.content.readany()).decode()
            while "\n\n" in buffer:
                frame, buffer = buffer.split("\n\n", 1)
                kind = re.search(r"^event: (\w+)", frame, re.M)
                data = re.search(r"^data: (.*)$", frame, re.M)
                if kind and data:
                    out.append({"event": kind.group(1), **json.loads(data.group(1))})
    return out


async def test_live_events_bring_new_and_changed_rows(env):
    olga, _ = await session(env, "olga")
    position = await env.store.last_event_id()
    resp = await olga.get(f"/api/v1/stream?status=dead&after={position}")
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    [ready] = await _events(resp, 1)
    assert ready["event"] == "ready"
    dead, did = env.ids["dead"], env.ids["dead_delivery"]
    await env.store.apply(
        Change(
            delivery_updates=[DeliveryUpdate(did, D.DEAD, {"state": D.QUEUED})],
            events=[Event(time.time(), "operator", "resend", dead, did, "dead", "queued")],
        )
    )
    fresh = await env.store.apply(
        intake(message("new-dead", sender=SENDER, at=time.time()), [delivery(state=D.DEAD)])
    )
    got = await _events(resp, 2)
    by_id = {g["row"]["id"]: g for g in got}
    # The row that left the filter still comes, marked, so a page showing it can update it.
    assert by_id[dead]["matches"] is False and by_id[dead]["row"]["status"] == "queued"
    assert by_id[dead]["events"][0]["kind"] == "resend"
    assert by_id[fresh.message_id]["matches"] is True and by_id[fresh.message_id]["row"]["status"] == "dead"
    resp.close()
    await olga.close()


async def test_a_page_catches_up_on_what_happened_after_it_was_rendered(env):
    olga, _ = await session(env, "olga")
    ok = env.ids["ok"]
    position = await env.store.last_event_id()
    await env.store.apply(Change(events=[Event(time.time(), "peer", "duplicate received", ok)]))
    resp = await olga.get(f"/api/v1/stream?message_id={ok}&after={position}")
    first = (await _events(resp, 1))[0]
    assert first["event"] == "message" and first["events"][0]["kind"] == "duplicate received"
    resp.close()
    await olga.close()


# --- operations ------------------------------------------------------------------------------------


async def test_metrics_and_the_openapi_document(env):
    text = await (await env.client.get("/metrics")).text()
    assert 'komut_deliveries{state="dead"} 1.0' in text
    assert "komut_certificate_expiry_timestamp_seconds" in text
    assert "komut_events_total" in text
    documented = set(OPENAPI["paths"])
    served = set()
    for route in env.client.app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter", "")
        if not path.startswith("/api/v1/"):
            continue
        if "{action}" in path:
            actions = re.search(r"\(\?P<action>([^)]*)\)", info["pattern"].pattern).group(1).split("|")
            served |= {path.replace("{action}", a) for a in actions}
        else:
            served.add(path)
    assert len(served) > 10 and served - {"/api/v1/openapi.json"} == documented
    assert (await env.client.get("/api/v1/openapi.json")).status == 200


async def test_the_operators_listener_serves_the_ui_and_health(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = parse_config(
        {"gateway": {"name": "g"}, "ui": {"listen": f"127.0.0.1:{port}", "tls": False}}, tmp_path
    )
    store = MemoryStore()
    await store.open()
    gateway = SimpleNamespace(
        config=config,
        store=store,
        registry_holder=SimpleNamespace(current=load_default_registry()),
        dispatcher=None,
    )
    ui = OperatorUi(gateway, parse_ui_settings(config), MemoryOperatorStore())
    await ui.start()
    try:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/ui/log", allow_redirects=False) as resp:
                assert resp.status == 303
        assert ui.listener_url == f"http://127.0.0.1:{port}/ui/"
    finally:
        await ui.shutdown()
        await ui.cleanup()


# --- operator stores and the CLI -------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
async def operators(request, tmp_path):
    store = MemoryOperatorStore() if request.param == "memory" else SqliteOperatorStore(tmp_path / "ops.db")
    await store.open()
    yield store
    await store.close()


async def test_operator_store_users_sessions_and_audit(operators):
    await operators.add_user(User("ada", Role.ADMIN, "h", 1.0))
    with pytest.raises(UserExists):
        await operators.add_user(User("ada", Role.VIEWER, "h", 1.0))
    await operators.update_user("ada", {"role": Role.OPERATOR, "disabled": True})
    ada = await operators.get_user("ada")
    assert ada.role == Role.OPERATOR and ada.disabled is True
    with pytest.raises(LookupError):
        await operators.update_user("nobody", {"disabled": True})
    with pytest.raises(ValueError):
        await operators.update_user("ada", {"name": "x"})
    await operators.add_session(Session("t1", "ada", "c", 0.0, 100.0, 1000.0))
    await operators.add_session(Session("t2", "ada", "c", 0.0, 10.0, 1000.0))
    await operators.touch_session("t1", 150.0)
    assert (await operators.get_session("t1")).last_seen_at == 150.0
    assert await operators.purge_sessions(now=120.0, idle=60.0) == 1
    assert await operators.get_session("t2") is None
    assert await operators.delete_sessions("ada") == 1
    for n in range(5):
        await operators.add_audit(
            AuditEntry(at=n, user="ada" if n % 2 else "bob", action="resend", message_id=n, details={"n": n})
        )
    newest = await operators.audit_entries(AuditQuery(limit=2))
    assert [e.message_id for e in newest] == [4, 3] and newest[0].details == {"n": 4}
    older = await operators.audit_entries(AuditQuery(before_id=newest[-1].id))
    assert [e.message_id for e in older] == [2, 1, 0]
    assert [e.message_id for e in await operators.audit_entries(AuditQuery(user="ada"))] == [3, 1]
    assert [e.message_id for e in await operators.audit_entries(AuditQuery(message_id=2))] == [2]


def test_komut_user_add_then_login_works(tmp_path):
    from gateway.cli import main
    from gateway.ui.passwords import verify_password

    config = tmp_path / "g.toml"
    config.write_text('[gateway]\nname = "g"\nstate_dir = "state"\n')
    assert (
        main(["user", "add", "kari", "--role", "operator", "--password", PASSWORD, "--config", str(config)])
        == 0
    )
    assert (
        main(["user", "add", "kari", "--role", "viewer", "--password", PASSWORD, "--config", str(config)])
        == 1
    )
    assert (
        main(["user", "add", "per", "--role", "viewer", "--password", "too short", "--config", str(config)])
        == 2
    )
    assert main(["user", "role", "kari", "admin", "--config", str(config)]) == 0

    async def check():
        store = SqliteOperatorStore(Path(tmp_path / "state" / "operators.db"))
        await store.open()
        try:
            kari = await store.get_user("kari")
            audit = await store.audit_entries(AuditQuery())
        finally:
            await store.close()
        return kari, audit

    kari, audit = asyncio.run(check())
    assert kari.role == Role.ADMIN and verify_password(kari.password_hash, PASSWORD)
    assert (tmp_path / "state" / "operators.db").stat().st_mode & 0o077 == 0, "readable by its owner only"
    assert [e.action for e in audit] == ["user-change", "user-add"] and audit[0].user.startswith("cli:")


async def test_the_live_feed_sees_an_event_that_commits_after_a_later_one():
    """With several writers an event id can become visible after a higher one was read (PostgreSQL
    sequences); the feed looks behind its position so such an event still reaches the viewers."""
    from gateway.ui.live import LiveFeed

    store = MemoryStore()
    await store.open()
    hidden: set[int] = set()
    real = store.events_since

    async def events_since(after_id, limit=1000):
        return [e for e in await real(after_id, limit) if e.id not in hidden]

    store.events_since = events_since
    feed = LiveFeed(
        lambda: store, 0.01, lambda m, ds, evs: {"id": m.id, "kinds": [e.kind for e in evs]}, matches
    )
    sub = await feed.subscribe(None, None)
    early = await store.apply(intake(message("early", sender=SENDER), [delivery()]))
    hidden.update(e.id for e in await store.events(early.message_id))
    late = await store.apply(intake(message("late", sender=SENDER), [delivery()]))

    async def next_id():
        kind, (_, payload) = await asyncio.wait_for(sub.queue.get(), 5)
        return payload["id"]

    assert await next_id() == late.message_id
    hidden.clear()  # the earlier transaction commits now
    assert await next_id() == early.message_id
    await feed.close()


async def test_dashboard_statistics_are_shared_and_refreshed_behind_the_page(env):
    from gateway.ui.app import STATS_TTL

    calls = []
    real = env.store.traffic_stats

    async def counting(since, until):
        calls.append((since, until))
        return await real(since, until)

    env.store.traffic_stats = counting
    first = await env.ui.traffic_stats(24)
    assert await env.ui.traffic_stats(24) is first and len(calls) == 1
    env.clock.now += STATS_TTL + 1
    assert await env.ui.traffic_stats(24) is first, "stale, served at once"
    await asyncio.sleep(0.05)  # the refresh runs behind it
    assert len(calls) == 2 and await env.ui.traffic_stats(24) is not first
