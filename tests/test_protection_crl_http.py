"""adapters.crl_http: CRLs from an http distribution point (a tiny server on 127.0.0.1), fetched in
the background, cached until nextUpdate, and "unknown, retry later" until they arrive."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from protection_helpers import MESSAGE

from adapters.crl_http import CrlFetchError, HttpCrlSource
from gateway.protection import (
    CertificateChecker,
    Credential,
    FailureKind,
    ProtectionError,
    crl_urls,
    protect,
    unprotect,
)
from gateway.protection.pki import ENCRYPTION_USAGE, SIGNING_USAGE, DemoCa, party_name


class CrlServer:
    def __init__(self) -> None:
        self.body = b""
        self.status = 200
        self.hits = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(body=self.body, status=self.status, content_type="application/pkix-crl")


@pytest.fixture
async def server():
    crl_server = CrlServer()
    app = web.Application()
    app.router.add_get("/ca.crl", crl_server.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    crl_server.url = f"http://127.0.0.1:{port}/ca.crl"
    yield crl_server
    await runner.cleanup()


class World:
    """A CA whose certificates point at the test server, a sender, a revoked sender, a receiver."""

    def __init__(self, url: str) -> None:
        now = dt.datetime.now(dt.UTC)
        span = {"not_before": now - dt.timedelta(hours=1), "not_after": now + dt.timedelta(days=30)}
        self.ca = DemoCa.create("komut http CRL test CA - NOT FOR PRODUCTION", crl_url=url)
        sender = self.ca.issue(party_name("Sender", "999999991"), SIGNING_USAGE, **span)
        revoked = self.ca.issue(party_name("Revoked sender", "999999992"), SIGNING_USAGE, **span)
        receiver = self.ca.issue(party_name("Receiver", "999999993"), ENCRYPTION_USAGE, **span)
        self.sender, self.revoked = Credential(sender.key, sender.cert), Credential(revoked.key, revoked.cert)
        self.receiver = Credential(receiver.key, receiver.cert)
        self.crl = self.ca.crl([revoked.cert], next_update=now + dt.timedelta(hours=2))

    def receive(self, data: bytes, source: HttpCrlSource, signer: Credential):
        checker = CertificateChecker([self.ca.cert], crl_source=source)
        return unprotect(data, credentials=[self.receiver], checker=checker, expected_signers=[signer.cert])


@pytest.fixture(scope="module")
def world_factory():
    cache: dict[str, World] = {}

    def make(url: str) -> World:
        if url not in cache:
            cache[url] = World(url)
        return cache[url]

    return make


async def test_unknown_until_fetched_then_cached_until_next_update(server, world_factory):
    world = world_factory(server.url)
    server.body = world.crl.public_bytes(serialization.Encoding.DER)
    assert crl_urls(world.sender.cert) == (server.url,)
    now = [dt.datetime.now(dt.UTC)]
    source = HttpCrlSource(clock=lambda: now[0])
    data = protect(MESSAGE, signer=world.sender, recipient=world.receiver.cert)

    with pytest.raises(ProtectionError) as caught:
        world.receive(data, source, world.sender)  # nothing cached: unknown, fetch starts
    assert caught.value.kind is FailureKind.REVOCATION_UNKNOWN and caught.value.retryable
    assert server.url in caught.value.reason
    await source.wait_fetches()
    assert server.hits == 1

    assert world.receive(data, source, world.sender).content == MESSAGE  # the retry succeeds
    revoked = protect(MESSAGE, signer=world.revoked, recipient=world.receiver.cert)
    with pytest.raises(ProtectionError) as caught:
        world.receive(revoked, source, world.revoked)
    assert caught.value.kind is FailureKind.REVOKED
    await source.wait_fetches()
    assert server.hits == 1  # served from the cache

    now[0] += dt.timedelta(hours=3)  # past nextUpdate: fetched again
    with pytest.raises(ProtectionError) as caught:
        world.receive(
            data,
            source,
            world.sender,
        )
    assert caught.value.kind is FailureKind.REVOCATION_UNKNOWN
    await source.wait_fetches()
    assert server.hits == 2


async def test_prefetch_from_certificates_and_pem(server, world_factory):
    world = world_factory(server.url)
    server.body = world.crl.public_bytes(serialization.Encoding.PEM)
    source = HttpCrlSource()
    assert await source.prefetch([world.sender.cert, world.revoked.cert]) == {server.url: None}
    assert server.hits == 1
    data = protect(MESSAGE, signer=world.sender, recipient=world.receiver.cert)
    assert world.receive(data, source, world.sender).content == MESSAGE


async def test_failures_are_unknown_and_backed_off(server, world_factory):
    world = world_factory(server.url)
    server.status, server.body = 404, b"gone"
    source = HttpCrlSource(retry_after=3600)
    with pytest.raises(CrlFetchError, match="HTTP 404"):
        await source.fetch(server.url)
    data = protect(MESSAGE, signer=world.sender, recipient=world.receiver.cert)
    for _ in range(3):
        with pytest.raises(ProtectionError) as caught:
            world.receive(data, source, world.sender)
        assert caught.value.kind is FailureKind.REVOCATION_UNKNOWN
    await source.wait_fetches()
    assert server.hits == 1  # backed off, no hammering

    server.status, server.body = 200, b"not a CRL"
    with pytest.raises(CrlFetchError, match="not a CRL"):
        await source.fetch(server.url)


async def test_crls_called_from_a_worker_thread(server, world_factory):
    """The pipeline may run unprotect in a thread pool: fetches still run on the event loop."""
    world = world_factory(server.url)
    server.status, server.body = 200, world.crl.public_bytes(serialization.Encoding.DER)
    source = HttpCrlSource()
    source.start()
    data = protect(MESSAGE, signer=world.sender, recipient=world.receiver.cert)

    def attempt():
        try:
            return world.receive(data, source, world.sender).content
        except ProtectionError as exc:
            return exc.kind

    assert await asyncio.to_thread(attempt) is FailureKind.REVOCATION_UNKNOWN
    for _ in range(100):
        if server.hits and not source._inflight:
            break
        await asyncio.sleep(0.02)
    assert await asyncio.to_thread(attempt) == MESSAGE
