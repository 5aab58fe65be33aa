"""Helpers for the EDI 2.0 API tests: an in-process gateway on 127.0.0.1 (plain HTTP, in-memory
or SQLite store), API clients, sample documents, and a JWKS server with signing keys."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from pathlib import Path

import aiohttp
import jwt
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.config import parse_config
from gateway.demo.systems import Cast, recast
from gateway.registry import load_default_registry

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_messages"

ASKER, ASKER_NURSING, ASKER_DOCTOR = 9201000, 9201001, 9201002
GP_OFFICE, GP = 9310100, 9310101
DRAMMEN, DRAMMEN_NURSING = 9203000, 9203001

# Asker's home nursing writes to a GP at Holmenskogen legesenter (both on the municipal gateway).
ASKER_CAST = {
    "trust": 9100000,
    "site": 9100200,
    "somatikk": 9100201,
    "municipality": ASKER,
    "sykepleie": ASKER_NURSING,
    "lege": ASKER_DOCTOR,
    "saksbehandler": 9201003,
    "gp_office": GP_OFFICE,
    "gp": GP,
}
DRAMMEN_CAST = {**ASKER_CAST, "municipality": DRAMMEN, "sykepleie": DRAMMEN_NURSING, "lege": 9203002}

TOKENS = {
    "asker": "asker-static-token-0123456789",
    "gp": "gp-static-token-0123456789",
    "drammen": "drammen-token-42",
}
ISSUER = "https://helseid.test.example"
AUDIENCE = "komut-api"
HER_CLAIM = "komut/her_ids"


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def document(
    template: str = "dialog/01-dialog-foresporsel.xml", cast: dict | None = None
) -> tuple[bytes, str]:
    """A fresh copy of a sample (new MsgId) between the cast's parties; returns (bytes, MsgId)."""
    data, _ = recast(
        (SAMPLES / "valid" / template).read_bytes(), load_default_registry(), Cast(cast or ASKER_CAST), {}
    )
    from message_types.read import read_message
    from message_types.xmlparse import parse_xml

    return data, read_message(parse_xml(data)).msg_id


def post_body(data: bytes) -> dict:
    return {
        "businessDocument": base64.b64encode(data).decode(),
        "contentType": "application/xml",
        "contentTransferEncoding": "base64",
    }


def gateway_config(tmp_path: Path, *, api: dict | None = None, store: str = "memory", **gateway):
    """The municipal gateway with Asker and the Holmenskogen GP office on the API, Drammen on a folder."""
    clients = [
        {"name": "asker", "token_sha256": digest(TOKENS["asker"]), "her_ids": [ASKER], "rate": 1000},
        {"name": "gp", "token_sha256": digest(TOKENS["gp"]), "her_ids": [GP_OFFICE], "rate": 1000},
        {"name": "drammen", "token_sha256": digest(TOKENS["drammen"]), "her_ids": [DRAMMEN], "rate": 1000},
    ]
    data = {
        "gateway": {
            "name": "municipal",
            "listen": "127.0.0.1:0",
            "state_dir": "state",
            "serves": [ASKER, GP_OFFICE, DRAMMEN],
            **gateway,
        },
        "store": {"kind": store, "path": "komut.db"},
        "delivery": {"poll_interval": "50ms"},
        "local_systems": [
            {"name": "Asker EPJ", "her_ids": [ASKER], "transport": "api"},
            {"name": "Holmenskogen journalsystem", "her_ids": [GP_OFFICE], "transport": "api"},
            {"name": "Drammen PLO", "her_ids": [DRAMMEN], "folder": "systems/drammen"},
        ],
        "api": {"clients": clients, **(api or {})},
    }
    return parse_config(data, tmp_path)


@contextlib.asynccontextmanager
async def running_gateway(config, store=None):
    """A started gateway (service.Gateway) and its base URL; stopped on exit."""
    from adapters.store_memory import MemoryStore
    from gateway.service import Gateway

    if store is None and config.store_kind == "memory":
        store = MemoryStore()
    gateway = Gateway(config, store=store)
    await gateway.start()
    try:
        yield gateway, f"http://127.0.0.1:{gateway.runner.addresses[0][1]}"
    finally:
        await gateway.stop()


def headers(token: str | None, **extra) -> dict:
    out = {"api-version": "2", "nhn-source-system": "komut tests, 1"}
    if token is not None:
        out["Authorization"] = f"Bearer {token}"
    out.update(extra)
    return out


class Client:
    """An API client bound to one token."""

    def __init__(self, session: aiohttp.ClientSession, base: str, token: str | None, ssl=None):
        self.session, self.base, self.token, self.ssl = session, base, token, ssl

    async def call(self, method: str, path: str, *, json=None, params=None, headers_=None):
        async with self.session.request(
            method,
            self.base + path,
            json=json,
            params=params,
            headers=headers_ if headers_ is not None else headers(self.token),
            ssl=self.ssl,
        ) as resp:
            body = await resp.read()
            parsed = None
            if body and resp.content_type == "application/json":
                import json as _json

                parsed = _json.loads(body)
            return resp.status, parsed, resp.headers

    async def post_message(self, data: bytes):
        return await self.call("POST", "/Messages", json=post_body(data))

    async def unread(self, *her_ids: int, metadata: bool = True):
        params = [("ReceiverHerIds", str(h)) for h in her_ids] + [("IncludeMetadata", str(metadata).lower())]
        return await self.call("GET", "/Messages", params=params)


async def poll(predicate, timeout: float = 30.0, what: str = "condition"):
    """Await `predicate()` (async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.05)


# --- JWT ---------------------------------------------------------------------------------------------


class Issuer:
    """An OAuth2 issuer for tests: RSA and EC signing keys, a JWKS, and tokens."""

    def __init__(self):
        self.keys = {"rsa-1": rsa.generate_private_key(public_exponent=65537, key_size=2048)}
        self.ec_key = ec.generate_private_key(ec.SECP256R1())

    def jwk(self, kid: str) -> dict:
        key = self.keys[kid]
        if isinstance(key, ec.EllipticCurvePrivateKey):
            out = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        else:
            out = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        return {**out, "kid": kid, "use": "sig"}

    def jwks(self) -> dict:
        return {"keys": [self.jwk(kid) for kid in self.keys]}

    def token(self, *, kid: str = "rsa-1", key=None, alg: str | None = None, **claims) -> str:
        now = int(time.time())
        body = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + 300,
            "client_id": "epj-client",
            HER_CLAIM: [GP_OFFICE],
        }
        body.update(claims)
        body = {k: v for k, v in body.items() if v is not None}
        signing = key if key is not None else self.keys[kid]
        if alg is None:
            alg = "ES256" if isinstance(signing, ec.EllipticCurvePrivateKey) else "RS256"
        return jwt.encode(body, signing, algorithm=alg, headers={"kid": kid})


@contextlib.asynccontextmanager
async def jwks_server(issuer: Issuer):
    """Serves issuer.jwks() at http://127.0.0.1:<port>/jwks; counts the fetches."""
    fetches = []

    async def handler(request):
        fetches.append(time.monotonic())
        return web.json_response(issuer.jwks())

    app = web.Application()
    app.router.add_get("/jwks", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/jwks", fetches
    finally:
        await runner.cleanup()
