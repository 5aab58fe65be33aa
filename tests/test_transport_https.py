"""The gateway-to-gateway HTTPS transport against real aiohttp servers on 127.0.0.1 with a throwaway CA."""

from __future__ import annotations

import asyncio
import datetime as dt
import email.utils
import ipaddress
import json
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from adapters.https_peer import (
    HttpsPeerTransport,
    client_ssl_context,
    peer_routes,
    retry_after_seconds,
    server_ssl_context,
)
from gateway.transport import Outcome, Outgoing, PeerReceipt, SubmitResult

PATH = "/peer/v1/messages"
CMS = "application/pkcs7-mime; smime-type=signed-and-enveloped-data"
# Stands in for a CMS payload; the patient facts must never show up in any header.
BODY = b"0\x82CMS<Patient><Fnr>12057900499</Fnr><Navn>Kari Nordmann</Navn></Patient>" * 20


# --- a throwaway PKI --------------------------------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path
    rogue_server_cert: Path
    rogue_server_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(ca_key, ca_cert, cn: str, *, server: bool):
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False
        )
    return key, builder.sign(ca_key, hashes.SHA256())


def _write(folder: Path, stem: str, key, cert) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    folder = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _ca("komut test CA")
    rogue_key, rogue_cert = _ca("someone else's CA")
    ca, _ = _write(folder, "ca", None, ca_cert)
    rogue_ca, _ = _write(folder, "rogue-ca", None, rogue_cert)
    server = _write(folder, "server", *_leaf(ca_key, ca_cert, "municipal-gw", server=True))
    client = _write(folder, "client", *_leaf(ca_key, ca_cert, "hospital-gw", server=False))
    rogue_client = _write(folder, "rogue-client", *_leaf(rogue_key, rogue_cert, "impostor-gw", server=False))
    rogue_server = _write(folder, "rogue-server", *_leaf(rogue_key, rogue_cert, "fake-gw", server=True))
    return Pki(ca, *server, *client, rogue_ca, *rogue_client, *rogue_server)


# --- the fake pipeline and servers ----------------------------------------------------------------


class FakeInbound:
    def __init__(self, receipt: PeerReceipt | None = None, error: Exception | None = None):
        self.receipt = receipt or PeerReceipt(True, 200, "stored", message_ref="17")
        self.error = error
        self.calls: list[tuple[bytes, dict, str]] = []

    async def from_peer(self, body: bytes, routing: dict, source: str) -> PeerReceipt:
        self.calls.append((body, routing, source))
        if self.error is not None:
            raise self.error
        return self.receipt

    async def from_local(self, data: bytes, source: str, sender_her: int | None = None) -> SubmitResult:
        raise AssertionError("the HTTPS endpoint must not use the local front door")


class Server:
    def __init__(self, app: web.Application, ssl_context: ssl.SSLContext | None):
        self.app, self.ssl_context = app, ssl_context
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def __aenter__(self) -> Server:
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=self.ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def url(self, path: str = PATH) -> str:
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://127.0.0.1:{self.port}{path}"


def peer_app(inbound, **kwargs) -> web.Application:
    app = web.Application()
    peer_routes(app, inbound, **kwargs)
    return app


def canned_app(status: int, body: bytes = b"", headers: dict | None = None, content_type: str = "text/plain"):
    """A peer that answers the same thing whatever it gets, and remembers the request headers."""
    seen: list[dict] = []

    async def handler(request: web.Request) -> web.Response:
        await request.read()
        seen.append(dict(request.headers))
        return web.Response(status=status, body=body, headers=headers or {}, content_type=content_type)

    app = web.Application()
    app.router.add_post(PATH, handler)
    return app, seen


async def post_raw(url: str, data, headers: dict) -> tuple[int, dict, str]:
    """A bare client, for what our own transport would never send."""
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as resp:
        return resp.status, dict(resp.headers), await resp.text()


def item(endpoint: str, body: bytes = BODY, **kw) -> Outgoing:
    fields = dict(
        delivery_id=7,
        endpoint=endpoint,
        body=body,
        content_type=CMS,
        sender_her=8094866,
        receiver_her=8143060,
        msg_type="DIALOG_NOTAT",
        msg_id="4a4f0a5e-5f7e-4a43-9b0c-3d8c5f0e2b61",
    )
    fields.update(kw)
    return Outgoing(**fields)


@pytest.fixture
async def transport_factory():
    made: list[HttpsPeerTransport] = []

    async def make(ssl_context=None, **kw) -> HttpsPeerTransport:
        t = HttpsPeerTransport("https", ssl_context=ssl_context, **kw)
        await t.start(FakeInbound())
        made.append(t)
        return t

    yield make
    for t in made:
        await t.stop()


def server_tls(pki: Pki, **kw) -> ssl.SSLContext:
    return server_ssl_context(pki.server_cert, pki.server_key, **kw)


# --- delivery and receipt -------------------------------------------------------------------------


async def test_delivered_with_receipt_over_tls(pki, transport_factory):
    inbound = FakeInbound(PeerReceipt(True, 200, "stored", message_ref="42"))
    async with Server(peer_app(inbound), server_tls(pki)) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.DELIVERED, result.detail
    assert result.receipt == {
        "accepted": True,
        "duplicate": False,
        "reference": "42",
        "detail": "stored",
        "http_status": 200,
    }
    assert "42" in result.detail
    [(body, routing, source)] = inbound.calls
    assert body == BODY
    assert source == "https:127.0.0.1"  # no client certificate: the address names the peer


async def test_duplicate_receipt_is_delivered_and_says_so(pki, transport_factory):
    inbound = FakeInbound(
        PeerReceipt(True, 200, "duplicate: already received", duplicate=True, message_ref="9")
    )
    async with Server(peer_app(inbound), server_tls(pki)) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.DELIVERED
    assert result.receipt["duplicate"] is True
    assert "already had it" in result.detail


async def test_routing_headers_arrive_and_carry_no_body_data(pki, transport_factory):
    inbound = FakeInbound()
    async with Server(peer_app(inbound), server_tls(pki)) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        await transport.send(item(server.url()))
    [(_, routing, _)] = inbound.calls
    assert routing == {
        "from_her": "8094866",
        "to_her": "8143060",
        "msg_type": "DIALOG_NOTAT",
        "msg_id": "4a4f0a5e-5f7e-4a43-9b0c-3d8c5f0e2b61",
        "delivery": "7",
    }

    app, seen = canned_app(200, json.dumps({"accepted": True}).encode(), content_type="application/json")
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.DELIVERED
    [headers] = seen
    assert headers["Content-Type"] == CMS
    komut = {k for k in headers if k.lower().startswith("x-komut-")}
    assert komut == {
        "X-Komut-From-Her",
        "X-Komut-To-Her",
        "X-Komut-Msg-Type",
        "X-Komut-Msg-Id",
        "X-Komut-Delivery",
    }
    everything = " ".join(f"{k}: {v}" for k, v in headers.items())
    for secret in ("12057900499", "Kari", "Nordmann", "Patient"):
        assert secret not in everything


async def test_header_values_are_made_header_safe(transport_factory):
    app, seen = canned_app(200, json.dumps({"accepted": True}).encode(), content_type="application/json")
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url(), msg_type="DIALOG\r\nX-Evil: 1", sender_her=None))
    assert result.outcome == Outcome.DELIVERED
    [headers] = seen
    assert "X-Evil" not in headers
    assert "X-Komut-From-Her" not in headers  # unknown sender: the header is left out, not sent empty
    assert "\n" not in headers["X-Komut-Msg-Type"]


# --- the outcome mapping --------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 403, 404, 409, 413, 415, 422])
async def test_refusals_are_permanent_with_the_peers_reason(pki, transport_factory, status):
    inbound = FakeInbound(PeerReceipt(False, status, "T02 schema says no"))
    async with Server(peer_app(inbound), server_tls(pki)) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.PERMANENT
    assert f"HTTP {status}" in result.detail
    assert "T02 schema says no" in result.detail


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_busy_or_broken_peers_are_transient(transport_factory, status):
    app, _ = canned_app(status, b"<html><body><h1>Bad Gateway</h1></body></html>", content_type="text/html")
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert f"HTTP {status}" in result.detail
    assert "Bad Gateway" in result.detail and "<h1>" not in result.detail


async def test_retry_after_from_the_receipt_is_honoured(pki, transport_factory):
    inbound = FakeInbound(PeerReceipt(False, 503, "store busy", retry_after=120))
    async with Server(peer_app(inbound), server_tls(pki)) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert result.retry_after == 120
    assert "store busy" in result.detail


async def test_retry_after_as_http_date(transport_factory):
    when = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(hours=1), usegmt=True)
    app, _ = canned_app(429, b"slow down", headers={"Retry-After": when})
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert 3000 < result.retry_after <= 3600


def test_retry_after_parsing():
    assert retry_after_seconds("30") == 30
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds("999999999") == 24 * 3600  # capped
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: now


async def test_2xx_without_a_receipt_is_not_delivered(transport_factory):
    app, _ = canned_app(200, b"<html>Welcome to nginx</html>", content_type="text/html")
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert "no transport receipt" in result.detail


async def test_redirects_are_not_followed(transport_factory):
    app, seen = canned_app(307, b"", headers={"Location": "https://elsewhere.example/in"})
    async with Server(app, None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert "elsewhere.example" in result.detail
    assert len(seen) == 1


async def test_timeout_is_transient(transport_factory):
    release = asyncio.Event()

    async def stall(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"accepted": True})

    app = web.Application()
    app.router.add_post(PATH, stall)
    async with Server(app, None) as server:
        transport = await transport_factory(total_timeout=0.3)
        try:
            result = await transport.send(item(server.url()))
        finally:
            release.set()
    assert result.outcome == Outcome.TRANSIENT
    assert "timeout" in result.detail


async def test_connection_refused_is_transient(transport_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    transport = await transport_factory()
    result = await transport.send(item(f"http://127.0.0.1:{port}{PATH}"))
    assert result.outcome == Outcome.TRANSIENT
    assert "cannot connect" in result.detail and str(port) in result.detail


async def test_untrusted_server_certificate_is_transient(pki, transport_factory):
    inbound = FakeInbound()
    tls = server_ssl_context(pki.rogue_server_cert, pki.rogue_server_key)
    async with Server(peer_app(inbound), tls) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert "TLS" in result.detail and "certificate" in result.detail
    assert inbound.calls == []


async def test_tls_to_a_plain_http_server_is_transient(transport_factory, pki):
    app, seen = canned_app(200, b"{}")
    async with Server(app, None) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url().replace("http://", "https://")))
    assert result.outcome == Outcome.TRANSIENT
    assert "TLS" in result.detail
    assert seen == []


async def test_not_an_http_url_is_permanent(transport_factory):
    transport = await transport_factory()
    result = await transport.send(item("/var/komut/in"))
    assert result.outcome == Outcome.PERMANENT


async def test_send_before_start_and_after_stop(pki):
    transport = HttpsPeerTransport(ssl_context=client_ssl_context(pki.ca))
    assert (await transport.send(item("https://127.0.0.1:1/x"))).outcome == Outcome.TRANSIENT
    await transport.start(FakeInbound())
    session = transport._session
    await transport.stop()
    assert session.closed
    assert (await transport.send(item("https://127.0.0.1:1/x"))).outcome == Outcome.TRANSIENT


# --- mutual TLS -----------------------------------------------------------------------------------


async def test_mutual_tls_names_the_peer_by_its_certificate(pki, transport_factory):
    inbound = FakeInbound()
    tls = server_tls(pki, client_ca=pki.ca, require_client_cert=True)
    async with Server(peer_app(inbound), tls) as server:
        transport = await transport_factory(
            client_ssl_context(pki.ca, cert=pki.client_cert, key=pki.client_key)
        )
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.DELIVERED, result.detail
    [(_, _, source)] = inbound.calls
    assert source == "https:hospital-gw"


async def test_mutual_tls_required_refuses_a_client_without_certificate(pki, transport_factory):
    inbound = FakeInbound()
    tls = server_tls(pki, client_ca=pki.ca, require_client_cert=True)
    async with Server(peer_app(inbound), tls) as server:
        transport = await transport_factory(client_ssl_context(pki.ca))
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert "client certificate" in result.detail or "TLS" in result.detail
    assert inbound.calls == []


async def test_mutual_tls_refuses_a_certificate_from_another_ca(pki, transport_factory):
    inbound = FakeInbound()
    tls = server_tls(pki, client_ca=pki.ca, require_client_cert=True)
    async with Server(peer_app(inbound), tls) as server:
        ctx = client_ssl_context(pki.ca, cert=pki.rogue_client_cert, key=pki.rogue_client_key)
        transport = await transport_factory(ctx)
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert inbound.calls == []


async def test_optional_client_certificate(pki, transport_factory):
    inbound = FakeInbound()
    tls = server_tls(pki, client_ca=pki.ca)
    async with Server(peer_app(inbound), tls) as server:
        plain = await transport_factory(client_ssl_context(pki.ca))
        mutual = await transport_factory(client_ssl_context(pki.ca, cert=pki.client_cert, key=pki.client_key))
        assert (await plain.send(item(server.url()))).outcome == Outcome.DELIVERED
        assert (await mutual.send(item(server.url()))).outcome == Outcome.DELIVERED
    assert [source for _, _, source in inbound.calls] == ["https:127.0.0.1", "https:hospital-gw"]


def test_require_client_cert_needs_a_ca(pki):
    with pytest.raises(ValueError):
        server_ssl_context(pki.server_cert, pki.server_key, require_client_cert=True)


def test_contexts_refuse_old_tls(pki):
    assert server_tls(pki).minimum_version >= ssl.TLSVersion.TLSv1_2
    ctx = client_ssl_context(pki.ca)
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname


# --- the receiving endpoint -----------------------------------------------------------------------


async def test_body_over_the_limit_is_413_and_never_reaches_the_pipeline(transport_factory):
    inbound = FakeInbound()
    async with Server(peer_app(inbound, max_bytes=1024), None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url(), body=b"x" * 4096))
        small = await transport.send(item(server.url(), body=b"x" * 1024))
    assert result.outcome == Outcome.PERMANENT
    assert "HTTP 413" in result.detail
    assert small.outcome == Outcome.DELIVERED
    assert [len(body) for body, _, _ in inbound.calls] == [1024]


async def test_chunked_body_over_the_limit_is_413():
    inbound = FakeInbound()

    async def chunks():
        for _ in range(8):
            yield b"y" * 512

    async with Server(peer_app(inbound, max_bytes=1024), None) as server:
        status, _, text = await post_raw(server.url(), chunks(), {"Content-Type": CMS})
    assert status == 413
    assert json.loads(text)["accepted"] is False
    assert inbound.calls == []


async def test_wrong_content_type_and_empty_body_are_refused():
    inbound = FakeInbound()
    async with Server(peer_app(inbound), None) as server:
        wrong_type, _, _ = await post_raw(server.url(), b"<xml/>", {"Content-Type": "application/xml"})
        empty, _, _ = await post_raw(server.url(), b"", {"Content-Type": CMS})
    assert (wrong_type, empty) == (415, 400)
    assert inbound.calls == []


async def test_receipt_json_shape_and_retry_after_header():
    inbound = FakeInbound(PeerReceipt(False, 503, "cannot decrypt now", retry_after=299.2))
    async with Server(peer_app(inbound), None) as server:
        status, headers, text = await post_raw(server.url(), b"cms", {"Content-Type": CMS})
    assert status == 503
    assert headers.get("Retry-After") == "300"
    assert json.loads(text) == {
        "accepted": False,
        "duplicate": False,
        "reference": "",
        "detail": "cannot decrypt now",
    }


async def test_pipeline_failure_is_503_without_details(caplog):
    secret = "Kari Nordmann 12057900499"
    inbound = FakeInbound(error=RuntimeError(f"store exploded while handling {secret}"))
    caplog.set_level(logging.ERROR, logger="komut.transport.https")
    async with Server(peer_app(inbound), None) as server:
        status, _, text = await post_raw(server.url(), b"cms", {"Content-Type": CMS, "X-Komut-Msg-Id": "m-1"})
    assert status == 503
    answer = json.loads(text)
    assert answer["accepted"] is False
    for leak in ("Kari", "12057900499", "Traceback", "RuntimeError", "exploded"):
        assert leak not in text
    assert any(r.exc_info and "m-1" in r.getMessage() for r in caplog.records)


async def test_pipeline_failure_is_transient_for_the_sender(transport_factory):
    inbound = FakeInbound(error=RuntimeError("boom"))
    async with Server(peer_app(inbound), None) as server:
        transport = await transport_factory()
        result = await transport.send(item(server.url()))
    assert result.outcome == Outcome.TRANSIENT
    assert result.retry_after == 60
    assert "boom" not in result.detail


async def test_the_endpoint_lives_on_the_given_app_at_the_given_path():
    app = web.Application()
    peer_routes(app, FakeInbound(), path="/elsewhere")
    assert [r.resource.canonical for r in app.router.routes() if r.method == "POST"] == ["/elsewhere"]
