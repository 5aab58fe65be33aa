"""Authentication and authorisation of the EDI 2.0 API on a live (in-process) gateway.

401 without a token, with an unknown one, and with JWTs that are expired, for another audience or
issuer, wrongly signed, unsigned or sender-constrained; 403 for every attempt to send as or read
for a HER-id the client is not bound to; another party's message answers exactly like a missing one.
"""

from __future__ import annotations

import uuid

import aiohttp
import pytest
from api_helpers import (
    ASKER,
    ASKER_NURSING,
    AUDIENCE,
    DRAMMEN,
    DRAMMEN_CAST,
    GP,
    HER_CLAIM,
    ISSUER,
    TOKENS,
    Client,
    Issuer,
    digest,
    document,
    gateway_config,
    headers,
    jwks_server,
    poll,
    post_body,
    running_gateway,
)
from cryptography.hazmat.primitives.asymmetric import rsa


@pytest.fixture
async def issuer_url():
    issuer = Issuer()
    async with jwks_server(issuer) as (url, fetches):
        yield issuer, url, fetches


def jwt_settings(url: str, **extra) -> dict:
    return {
        "jwt": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_url": url,
            "her_id_claim": HER_CLAIM,
            "jwks_min_refresh": "0s",
            "rate": 1000,
            **extra,
        }
    }


@pytest.fixture
async def live(tmp_path, issuer_url):
    issuer, url, fetches = issuer_url
    async with (
        running_gateway(gateway_config(tmp_path, api=jwt_settings(url))) as (gateway, base),
        aiohttp.ClientSession() as session,
    ):
        yield {
            "gateway": gateway,
            "issuer": issuer,
            "fetches": fetches,
            "client": lambda token: Client(session, base, token),
        }


def _unbody(body: dict) -> dict:
    return {k: v for k, v in body.items() if k != "requestId"}


async def _delivered_to_gp(live) -> str:
    """Asker sends a Dialogmelding to the GP; returns the message id once the GP can list it."""
    asker, gp = live["client"](TOKENS["asker"]), live["client"](TOKENS["gp"])
    data, _ = document()
    status, message_id, _ = await asker.post_message(data)
    assert status == 201, message_id

    async def listed():
        _, items, _ = await gp.unread(GP)
        return any(i["id"] == message_id for i in items)

    await poll(listed, what="the Dialogmelding in the GP's mailbox")
    return message_id


# --- 401 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", "Bearer not-a-known-token", "Bearer a.b.c"],
)
async def test_requests_without_a_valid_token_are_401(live, authorization):
    client = live["client"](None)
    extra = {} if authorization is None else {"Authorization": authorization}
    status, body, hdrs = await client.call(
        "GET", "/Messages", params={"ReceiverHerIds": str(GP)}, headers_=headers(None, **extra)
    )
    assert status == 401
    assert hdrs["WWW-Authenticate"].startswith('Bearer realm="komut"')
    assert body["requestId"] and body["error"].startswith("Unauthorized")


@pytest.mark.parametrize(
    "claims, why",
    [
        ({"exp": 1_000_000}, "expired"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"exp": None}, "exp"),
        ({"cnf": {"jkt": "0ZcOCORZNYy-DWpqq30jZyJGHTN0d2HglBV3uiguA4I"}}, "sender-constrained"),
    ],
)
async def test_jwt_with_bad_claims_is_401(live, claims, why):
    token = live["issuer"].token(**claims)
    status, body, hdrs = await live["client"](token).unread(GP)
    assert status == 401, body
    assert why in hdrs["WWW-Authenticate"]


async def test_jwt_signed_by_another_key_is_401(live):
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    # Same key id as the issuer's real key: only the signature check can tell.
    token = live["issuer"].token(key=stranger)
    status, _, hdrs = await live["client"](token).unread(GP)
    assert status == 401
    assert "signature" in hdrs["WWW-Authenticate"]


async def test_jwt_with_unknown_key_id_is_401_after_one_refetch(live):
    assert (await live["client"](live["issuer"].token()).unread(GP))[0] == 200  # the JWKS is cached now
    before = len(live["fetches"])
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    status, _, hdrs = await live["client"](live["issuer"].token(key=stranger, kid="rsa-unknown")).unread(GP)
    assert status == 401 and "not signed by a key of the configured issuer" in hdrs["WWW-Authenticate"]
    assert len(live["fetches"]) == before + 1, "an unknown key id makes komut look for rotated keys once"


async def test_unsigned_and_symmetric_jwts_are_401(live):
    import base64
    import json

    def b64(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    good = live["issuer"].token()
    payload = good.split(".")[1]
    none_token = f"{b64({'alg': 'none', 'kid': 'rsa-1'})}.{payload}."
    jwk = live["issuer"].jwk("rsa-1")
    # HS256 keyed with the public modulus: the classic algorithm-confusion attack.
    import jwt as pyjwt

    hs_token = pyjwt.encode(
        json.loads(base64.urlsafe_b64decode(payload + "==")),
        jwk["n"].encode(),
        algorithm="HS256",
        headers={"kid": "rsa-1"},
    )
    for token in (none_token, hs_token):
        status, _, hdrs = await live["client"](token).unread(GP)
        assert status == 401, token
        assert "algorithm" in hdrs["WWW-Authenticate"]


async def test_valid_jwt_is_accepted_and_bound_to_its_her_id_claim(live):
    client = live["client"](live["issuer"].token())
    status, items, _ = await client.unread(GP)
    assert status == 200 and items == []
    status, body, _ = await client.unread(ASKER)
    assert status == 403 and body["error"] == f"Not authorized for HerId(s): {ASKER}"


async def test_rotated_issuer_key_is_fetched(live):
    issuer = live["issuer"]
    client = live["client"](issuer.token())
    assert (await client.unread(GP))[0] == 200
    issuer.keys["rsa-2"] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert (await live["client"](issuer.token(kid="rsa-2")).unread(GP))[0] == 200


async def test_ec_signed_jwt_is_accepted(live):
    issuer = live["issuer"]
    issuer.keys["ec-1"] = issuer.ec_key
    status, _, _ = await live["client"](issuer.token(kid="ec-1")).unread(GP)
    assert status == 200


async def test_required_scope(tmp_path, issuer_url):
    issuer, url, _ = issuer_url
    config = gateway_config(tmp_path, api=jwt_settings(url, required_scope="nhn:msh/api"))
    async with running_gateway(config) as (_, base), aiohttp.ClientSession() as session:
        without = await Client(session, base, issuer.token()).unread(GP)
        with_scope = await Client(session, base, issuer.token(scope="openid nhn:msh/api")).unread(GP)
    assert without[0] == 401 and "insufficient_scope" in without[2]["WWW-Authenticate"]
    assert with_scope[0] == 200


async def test_jwks_from_a_file(tmp_path):
    import json

    issuer = Issuer()
    (tmp_path / "jwks.json").write_text(json.dumps(issuer.jwks()))
    api = {
        "jwt": {
            "issuer": ISSUER,
            "audience": AUDIENCE,
            "jwks_file": "jwks.json",
            "her_id_claim": HER_CLAIM,
        }
    }
    async with (
        running_gateway(gateway_config(tmp_path, api=api)) as (_, base),
        aiohttp.ClientSession() as session,
    ):
        assert (await Client(session, base, issuer.token()).unread(GP))[0] == 200
        assert (await Client(session, base, issuer.token(aud="x")).unread(GP))[0] == 401


# --- 403: sending as and reading for HER-ids the client is not bound to -------------------------------


async def test_sending_as_another_party_is_403_and_nothing_is_stored(live):
    gp = live["client"](TOKENS["gp"])
    data, msg_id = document()  # sent by Asker's home nursing
    status, body, _ = await gp.post_message(data)
    assert status == 403
    assert body["error"] == f"Not authorized for HerId(s): {ASKER_NURSING}"
    assert await live["gateway"].store.find_by_msg_id(msg_id) == []


async def test_reading_for_another_party_is_403(live):
    asker = live["client"](TOKENS["asker"])
    status, body, _ = await asker.unread(ASKER_NURSING, GP)
    assert status == 403
    # Only the HER-id it is not bound to is named.
    assert body["error"] == f"Not authorized for HerId(s): {GP}"


async def test_marking_read_and_answering_for_another_party_are_403(live):
    message_id = await _delivered_to_gp(live)
    drammen = live["client"](TOKENS["drammen"])
    status, body, _ = await drammen.call("PUT", f"/Messages/{message_id}/read/{GP}")
    assert status == 403 and body["error"] == f"Not authorized for HerId(s): {GP}"
    status, body, _ = await drammen.call(
        "POST", f"/Messages/{message_id}/apprec/{GP}", json={"appRecStatus": "Ok"}
    )
    assert status == 403 and body["error"] == f"Not authorized for HerId(s): {GP}"
    # The sender is bound to Asker, not to the GP: it cannot answer its own message for the GP.
    asker = live["client"](TOKENS["asker"])
    status, _, _ = await asker.call(
        "POST", f"/Messages/{message_id}/apprec/{GP}", json={"appRecStatus": "Ok"}
    )
    assert status == 403
    gp = live["client"](TOKENS["gp"])
    _, items, _ = await gp.unread(GP)
    assert [i["id"] for i in items] == [message_id], "the refused attempts changed nothing"


async def test_another_partys_message_answers_like_a_missing_one(live):
    message_id = await _delivered_to_gp(live)
    drammen = live["client"](TOKENS["drammen"])
    missing = str(uuid.uuid4())
    for suffix in ("", "/business-document", "/status", "/apprec"):
        theirs = await drammen.call("GET", f"/Messages/{message_id}{suffix}")
        nothing = await drammen.call("GET", f"/Messages/{missing}{suffix}")
        assert theirs[0] == nothing[0] == 404, suffix
        assert _unbody(theirs[1]) == _unbody(nothing[1])
    # Drammen's PUT for its own HER-id on someone else's message: 404 as well, not 403.
    theirs = await drammen.call("PUT", f"/Messages/{message_id}/read/{DRAMMEN}")
    nothing = await drammen.call("PUT", f"/Messages/{missing}/read/{DRAMMEN}")
    assert theirs[0] == nothing[0] == 404 and _unbody(theirs[1]) == _unbody(nothing[1])
    theirs = await drammen.call(
        "POST", f"/Messages/{message_id}/apprec/{DRAMMEN}", json={"appRecStatus": "Ok"}
    )
    assert theirs[0] == 404


async def test_both_ends_see_the_message_each_its_own_way(live):
    message_id = await _delivered_to_gp(live)
    asker, gp = live["client"](TOKENS["asker"]), live["client"](TOKENS["gp"])
    for client in (asker, gp):
        status, body, _ = await client.call("GET", f"/Messages/{message_id}")
        assert status == 200 and body["receiverHerId"] == GP and body["senderHerId"] == ASKER_NURSING


async def test_a_client_without_her_ids_may_do_nothing(live):
    token = live["issuer"].token(**{HER_CLAIM: None})
    client = live["client"](token)
    assert (await client.unread(GP))[0] == 403
    data, _ = document(cast=DRAMMEN_CAST)
    assert (await client.post_message(data))[0] == 403


# --- headers, rate and size limits -----------------------------------------------------------------


async def test_api_version_and_source_system_headers_are_required(live):
    client = live["client"](TOKENS["gp"])
    params = {"ReceiverHerIds": str(GP)}
    for bad in (
        {"api-version": "3"},
        {"nhn-source-system": ""},
    ):
        status, body, _ = await client.call(
            "GET", "/Messages", params=params, headers_=headers(TOKENS["gp"], **bad)
        )
        assert status == 400 and body["errorCode"] == 1000 and body["validationErrors"], bad
    no_version = headers(TOKENS["gp"])
    del no_version["api-version"]
    status, body, _ = await client.call("GET", "/Messages", params=params, headers_=no_version)
    assert status == 400 and "api-version" in body["validationErrors"][0]


async def test_rate_limit_per_client(tmp_path):
    config = gateway_config(tmp_path)
    config.sections["api"]["clients"][1].update(rate=0.01, burst=2)
    async with running_gateway(config) as (_, base), aiohttp.ClientSession() as session:
        gp, asker = Client(session, base, TOKENS["gp"]), Client(session, base, TOKENS["asker"])
        assert [(await gp.unread(GP))[0] for _ in range(2)] == [200, 200]
        status, body, hdrs = await gp.unread(GP)
        assert status == 429 and int(hdrs["Retry-After"]) >= 1 and body["requestId"]
        # Another client has its own bucket.
        assert (await asker.unread(ASKER_NURSING))[0] == 200


async def test_request_size_limit(tmp_path):
    config = gateway_config(tmp_path, api={"max_request_mb": 0.01})  # about 10 kB
    async with running_gateway(config) as (gateway, base), aiohttp.ClientSession() as session:
        data, msg_id = document()
        big = post_body(data + b"<!--" + b"x" * 20_000 + b"-->")
        async with session.post(base + "/Messages", json=big, headers=headers(TOKENS["asker"])) as resp:
            assert resp.status == 413
            assert (await resp.json())["error"].startswith("The request is larger than")

        async def chunks():
            import json

            yield json.dumps(big).encode()

        # Without a Content-Length the limit holds as well (chunked upload).
        async with session.post(
            base + "/Messages",
            data=chunks(),
            headers={**headers(TOKENS["asker"]), "Content-Type": "application/json"},
        ) as resp:
            assert resp.status == 413
        assert await gateway.store.find_by_msg_id(msg_id) == []
        assert (await Client(session, base, TOKENS["asker"]).post_message(data))[0] == 201


async def test_static_tokens_are_kept_only_as_digests(tmp_path):
    config = gateway_config(tmp_path)
    text = repr(config.sections["api"])
    assert TOKENS["asker"] not in text
    from gateway.api.settings import parse_api_settings

    settings = parse_api_settings(config)
    assert all(TOKENS["asker"].encode() not in c.token_sha256 for c in settings.clients)


def test_two_clients_with_one_token_are_refused(tmp_path):
    from gateway.api.settings import parse_api_settings
    from gateway.config import ConfigError

    twin = {"name": "twin", "token_sha256": digest(TOKENS["asker"]), "her_ids": [ASKER]}
    config = gateway_config(tmp_path)
    config.sections["api"]["clients"].append(twin)
    with pytest.raises(ConfigError, match="the same token as 'asker'"):
        parse_api_settings(config)
