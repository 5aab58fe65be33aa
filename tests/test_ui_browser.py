"""The operator UI in a real browser (Debian's Chromium, headless, driven by Playwright) against two
real gateways: log in, filter the log, read why a message was refused, unmask a fødselsnummer and
find the audit entry, resend a dead message and watch it reach app-ok live, and a viewer refused
the resend. Screenshots of every page go to test-artifacts/ui/."""

from __future__ import annotations

import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import REPO, SAMPLES
from e2e import DRAMMEN_CAST, Net, wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is missing: apt-get install chromium", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is missing: pip install playwright"
)
expect = sync_api.expect

ARTIFACTS = REPO / "test-artifacts" / "ui"
HOSPITAL, MUNICIPALITY = 9100000, 9203000
OPERATOR = ("olga", "operatorpassword-1")
FNR = "14034148288"  # the patient of sample_messages/valid/plo/01-log-innlagt.xml
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 60_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def use_ui_port(config: str, port: int) -> None:
    """The demo puts the UI on the gateway's port + 10; a test takes a port it knows is free."""
    path = Path(config)
    head, marker, ui = path.read_text().partition("\n[ui]\n")
    assert marker, "the demo configuration has no [ui] section"
    ui = re.sub(r'(?m)^listen = ".*"$', f'listen = "127.0.0.1:{port}"', ui, count=1)
    path.write_text(head + marker + ui)


class RefusingPeer:
    """Stands in for the municipal gateway and refuses every message with HTTP 400: what makes a
    delivery dead (a permanent failure)."""

    def __init__(self, port: int, cert: Path, key: Path):
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps(
                    {"accepted": False, "detail": "receiving system under maintenance"}
                ).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(str(cert), str(key))
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def entry_status(net: Net, msg_id: str) -> str | None:
    entry = net.entry("hospital", msg_id)
    return entry["status"] if entry else None


@pytest.fixture(scope="module")
def scene(tmp_path_factory, demo_pki):
    """Two gateways with three stories in the hospital's log: a PLO message answered app-ok, one
    refused with E31, and one dead because the municipal side refused it with HTTP 400."""
    net = Net(tmp_path_factory.mktemp("ui") / "net", demo_pki)
    try:
        ui_port = free_port()
        use_ui_port(net.config("hospital"), ui_port)
        use_ui_port(net.config("municipal"), free_port())
        base = f"https://127.0.0.1:{ui_port}"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "user",
                "add",
                OPERATOR[0],
                "--role",
                "operator",
                "--password",
                OPERATOR[1],
                "--config",
                net.config("hospital"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        net.start("hospital")
        net.start("municipal")
        municipal = net.system(MUNICIPALITY)
        plo = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()

        ok, _ = net.recast(plo, DRAMMEN_CAST)
        ok_id = read_message(parse_xml(ok)).msg_id
        net.system(HOSPITAL).send(ok, "ok.xml")

        def answered() -> bool:
            municipal.poll_once()
            return entry_status(net, ok_id) == "app-ok"

        wait_for(answered, timeout=60, interval=0.3, what="the first message to reach app-ok")

        bad, _ = net.recast((SAMPLES / "invalid/e31-fnr-bad-checksum.xml").read_bytes(), DRAMMEN_CAST)
        bad_id = read_message(parse_xml(bad)).msg_id
        net.system(HOSPITAL).send(bad, "bad.xml")
        wait_for(lambda: entry_status(net, bad_id) == "rejected", what="the refusal")

        net.stop("municipal")
        port = int(net.info["gateways"]["municipal"]["url"].rsplit(":", 1)[1])
        tls = net.directory / "tls"
        refusing = RefusingPeer(port, tls / "municipal.pem", tls / "municipal.key")
        try:
            dead, _ = net.recast(plo, DRAMMEN_CAST)
            dead_id = read_message(parse_xml(dead)).msg_id
            net.system(HOSPITAL).send(dead, "dead.xml")
            wait_for(lambda: entry_status(net, dead_id) == "dead", what="the delivery to go dead")
        finally:
            refusing.stop()
        net.start("municipal")
        users = net.info["ui"]["users"]
        ids = {
            k: net.entry("hospital", v)["id"] for k, v in (("ok", ok_id), ("bad", bad_id), ("dead", dead_id))
        }
        yield {"net": net, "base": base, "users": users, "ids": ids, "dead_msg_id": dead_id}
    finally:
        net.stop_all()


@pytest.fixture(scope="module")
def browser():
    if ARTIFACTS.exists():
        shutil.rmtree(ARTIFACTS)
    ARTIFACTS.mkdir(parents=True)
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


def new_page(browser, base: str):
    # The demo CA is not in Chromium's trust store; the gateway's certificate is checked elsewhere.
    context = browser.new_context(
        ignore_https_errors=True, base_url=base, viewport={"width": 1366, "height": 768}
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    watch(page)
    return page


def watch(page) -> None:
    """Collect script errors and Content-Security-Policy violations; `shot` checks there are none."""
    page.komut_errors = []
    page.on("pageerror", lambda exc: page.komut_errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            page.komut_errors.append(msg.text)
            if msg.type == "error" and "Content Security Policy" in msg.text
            else None
        ),
    )


def login(page, user: str, password: str) -> None:
    page.goto("/ui/log")
    expect(page).to_have_url(re.compile(r"/ui/login\?next="))
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("button[type=submit]")
    expect(page).to_have_url(re.compile(r"/ui/log$"))


def shot(page, name: str) -> None:
    assert not getattr(page, "komut_errors", []), page.komut_errors
    page.evaluate("window.scrollTo(0, 0)")  # a full-page shot keeps the sticky header where it was
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_log_in_and_filter_the_log(scene, browser):
    page = new_page(browser, scene["base"])
    page.goto("/ui/login")
    shot(page, "01-login")
    page.fill("input[name=username]", OPERATOR[0])
    page.fill("input[name=password]", "not the password")
    page.click("button[type=submit]")
    expect(page.locator("p.error")).to_contain_text("Wrong user name or password")
    login(page, *OPERATOR)
    rows = page.locator("table#log tbody tr")
    # The three stories, the AppRec that answered the first, and the one this gateway sent for the refusal.
    assert rows.count() >= 3
    for story in ("ok", "bad", "dead"):
        expect(page.locator(f'table#log tbody tr[data-id="{scene["ids"][story]}"]')).to_have_count(1)
    shot(page, "02-log")

    page.select_option("select[name=status]", "rejected")
    page.click(".filters button[type=submit]")
    expect(page).to_have_url(re.compile(r"status=rejected"))
    expect(rows).to_have_count(1)
    expect(rows.first.locator(".st")).to_have_text("rejected")
    expect(rows.first).to_have_attribute("data-id", str(scene["ids"]["bad"]))

    page.goto("/ui/log")
    page.fill("input[name=receiver]", "Sykepleietjeneste")
    page.select_option("select[name=status]", "dead")
    page.click(".filters button[type=submit]")
    expect(rows).to_have_count(1)
    expect(rows.first).to_have_attribute("data-id", str(scene["ids"]["dead"]))
    shot(page, "03-log-filtered")


def test_a_refused_message_says_why_in_norwegian(scene, browser):
    page = new_page(browser, scene["base"])
    login(page, *OPERATOR)
    page.goto("/ui/log?status=rejected")
    page.locator("table#log tbody tr td.type a").first.click()
    expect(page).to_have_url(re.compile(rf"/ui/messages/{scene['ids']['bad']}"))
    refusal = page.locator("#refusal")
    expect(refusal.locator("td.code")).to_have_text("E31")
    expect(refusal).to_contain_text("Pasientens fødselsnummer er feil")
    expect(refusal).to_contain_text("kontrollsiffer")
    shot(page, "04-message-refused")


def test_unmask_a_fodselsnummer_and_find_the_audit_entry(scene, browser):
    page = new_page(browser, scene["base"])
    login(page, *OPERATOR)
    message_id = scene["ids"]["ok"]
    page.goto(f"/ui/messages/{message_id}")
    patient = page.locator("dl.patient")
    expect(patient.locator('[data-patient="FNR"]')).to_have_text("•••••••••88")
    assert FNR not in page.content()
    shot(page, "05-message-masked")

    reason = "the municipality phoned about this patient's admission"
    page.fill("form.unmask input[name=reason]", reason)
    page.click("form.unmask button[type=submit]")
    expect(patient.locator('[data-patient="FNR"]')).to_have_text(FNR)
    expect(page.locator("#content .maskinfo")).to_contain_text("unmasked for you")
    shot(page, "06-message-unmasked")

    page.goto("/ui/audit?action=unmask")
    entry = page.locator("table.audit tbody tr.a-unmask").first
    expect(entry).to_contain_text(OPERATOR[0])
    expect(entry).to_contain_text(reason)
    expect(entry.locator("td").nth(3)).to_have_text(str(message_id))
    shot(page, "07-audit")


def test_a_viewer_is_refused_the_resend(scene, browser):
    page = new_page(browser, scene["base"])
    viewer = scene["users"]["viewer"]
    login(page, "viewer", viewer["password"])
    dead = scene["ids"]["dead"]
    page.goto(f"/ui/messages/{dead}")
    expect(page.locator("#deliveries")).to_contain_text("need the operator role")
    assert page.locator("form[action$='/resend']").count() == 0
    # The server refuses it too, with a valid session and CSRF token: hiding a button is not security.
    csrf = page.locator("meta[name=csrf-token]").get_attribute("content")
    delivery = page.locator("tr[data-delivery-id]").first.get_attribute("data-delivery-id")
    response = page.request.post(
        f"/ui/messages/{dead}/deliveries/{delivery}/resend",
        form={"_csrf": csrf, "reason": "let me"},
        max_redirects=0,
    )
    assert response.status == 403
    api = page.request.post(
        f"/api/v1/messages/{dead}/deliveries/{delivery}/resend",
        data={"reason": "let me"},
        headers={"X-CSRF-Token": csrf},
    )
    assert api.status == 403 and "viewer" in api.json()["error"]
    page.reload()
    expect(page.locator("tr[data-delivery-id] [data-status]").first).to_have_text("dead")
    shot(page, "08-viewer-message")


def test_resend_a_dead_message_and_watch_it_reach_app_ok_live(scene, browser):
    net, dead = scene["net"], scene["ids"]["dead"]
    log_page = new_page(browser, scene["base"])
    login(log_page, *OPERATOR)
    log_row = log_page.locator(f'table#log tbody tr[data-id="{dead}"]')
    expect(log_row.locator("td.status .st")).to_have_text("dead")
    expect(log_page.locator("#live:not(.off)")).to_be_visible()

    page = log_page.context.new_page()
    watch(page)
    page.goto(f"/ui/messages/{dead}")
    state = page.locator("tr[data-delivery-id] [data-status]").first
    expect(state).to_have_text("dead")
    page.fill("form[action$='/resend'] input[name=reason]", "the municipality's gateway is back")
    page.click("form[action$='/resend'] button[type=submit]")
    expect(page.locator("p.notice")).to_contain_text("queued again")
    expect(page.locator("#live:not(.off)")).to_be_visible()
    page.evaluate("window.__notReloaded = true")
    log_page.evaluate("window.__notReloaded = true")

    municipal = net.system(MUNICIPALITY)
    stop = threading.Event()

    def answer():  # the municipal care system answers what arrives with an AppRec
        while not stop.is_set():
            municipal.poll_once()
            stop.wait(0.3)

    answering = threading.Thread(target=answer, daemon=True)
    answering.start()
    try:
        expect(state).to_have_text("app-ok", timeout=TIMEOUT_MS)
        expect(log_row.locator("td.status .st")).to_have_text("app-ok", timeout=TIMEOUT_MS)
    finally:
        stop.set()
        answering.join(5)
    assert page.evaluate("window.__notReloaded") is True, "the page was reloaded, not updated live"
    assert log_page.evaluate("window.__notReloaded") is True
    timeline = page.locator("table.timeline")
    expect(timeline).to_contain_text("resend")
    expect(timeline).to_contain_text("AppRec OK")
    expect(timeline).to_contain_text(OPERATOR[0])
    shot(page, "09-message-resent-app-ok")
    shot(log_page, "10-log-live")
    assert net.entry("hospital", scene["dead_msg_id"])["status"] == "app-ok"

    page.goto("/ui/audit?action=resend")
    expect(page.locator("table.audit tbody tr.a-resend").first).to_contain_text(str(dead))


def test_screenshots_of_the_other_pages(scene, browser):
    page = new_page(browser, scene["base"])
    login(page, "admin", scene["users"]["admin"]["password"])
    ok = scene["ids"]["ok"]
    page.goto(f"/ui/messages/{ok}")
    conversation = page.locator("dl.facts a[href^='/ui/conversation']").first
    conversation.click()
    expect(page.locator("ol.conversation > li")).not_to_have_count(0)
    shot(page, "11-conversation")
    page.goto("/ui/dashboard")
    expect(page.locator("svg.chart").first).to_be_visible()
    expect(page.locator("section.tiles")).to_contain_text("app-ok")
    shot(page, "12-dashboard")
    page.goto("/ui/partners")
    expect(page.locator("table.partners")).to_contain_text("Drammen kommune")
    shot(page, "13-partners")
    page.goto(f"/ui/partners/{MUNICIPALITY}")
    expect(page.locator("table.certs")).to_contain_text("enc")
    shot(page, "14-partner")
    page.goto("/ui/admin/users")
    expect(page.locator("table.users")).to_contain_text(OPERATOR[0])
    shot(page, "15-users")
    page.goto("/ui/admin/config")
    expect(page.locator("pre")).to_contain_text("(hidden)")  # the API clients' token digests
    shot(page, "16-config")
