"""Hostile input through the EDI 2.0 API, on a real municipal gateway (mutual TLS, SQLite): the
client is Asker kommune's EPJ (bound to HER-id 9201000), posting to POST /Messages.

Every hostile document goes in as a well-formed request; then come broken requests (bad base64,
wrong types and content types, bodies over 35 MB, deep JSON), missing or wrong credentials and
headers, spoofed senders and duplicates. Refused documents are answered 400 with errorCode 1000
and the AppRec codes first in each validationErrors line, and reach the client's unread list as
an AppRec when their envelope is readable; the rest are 400/401/403/413 as docs/api.md says.
Nothing is stored twice, no fødselsnummer reaches the log, and the gateway keeps serving.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from api_helpers import ASKER_CAST, GP, headers, post_body
from conftest import SAMPLES
from hostile_cases import document_cases
from hostile_net import codes_of, passwd_copies, patient_data_leaks, rows_by_msg_id, start_net

from gateway.demo.systems import Cast, recast
from gateway.registry import load_default_registry
from message_types.read import read_message
from message_types.xmlparse import parse_xml

ASKER, ASKER_NURSING, GP_OFFICE = 9201000, 9201001, 9310100
TEMPLATE = (SAMPLES / "valid/dialog/01-dialog-foresporsel.xml").read_bytes()
REGISTRY = load_default_registry()
MB = 1024 * 1024


def fresh(cast: dict | None = None) -> bytes:
    return recast(TEMPLATE, REGISTRY, Cast(cast or ASKER_CAST), {})[0]


def msg_id(data: bytes) -> str:
    return read_message(parse_xml(data)).msg_id


@dataclass
class ApiCase:
    name: str
    category: str
    status: int
    json: object = None  # the request body as JSON ...
    raw: bytes | None = None  # ... or as bytes
    content_type: str = "application/json"
    headers: Callable[[str], dict] = lambda token: headers(token)
    words: str = ""  # in the error text or a validationErrors line
    codes: frozenset[str] | None = None  # the AppRec codes validationErrors must name
    apprec: bool = False  # the refusal reaches the client's unread list as an AppRec
    document: bytes | None = None
    sends: int = 1
    token: str = "asker"  # asker, gp, or a literal token

    @property
    def msg_id(self) -> str | None:
        try:
            return msg_id(self.document) if self.document else None
        except Exception:
            return None


def _document(case) -> ApiCase:
    if not case.data:
        # Base64 of nothing is the empty string: the request itself lacks its document.
        return ApiCase(f"doc-{case.name}", case.category, 400, json=post_body(b""), words="BusinessDocument")
    return ApiCase(
        f"doc-{case.name}",
        case.category,
        400,
        json=post_body(case.data),
        codes=case.codes,
        apprec=case.addressable,
        document=case.data,
    )


def _with(**changes) -> dict:
    body = post_body(fresh())
    body.update(changes)
    return {k: v for k, v in body.items() if v is not ...}


def _cases() -> list[ApiCase]:
    cases = [_document(c) for c in document_cases(fresh)]
    request = [
        ApiCase(
            "b64-not-the-alphabet", "base64", 400, _with(businessDocument="!!!ikke base64!!!"), words="base64"
        ),
        ApiCase("b64-wrong-padding", "base64", 400, _with(businessDocument="PE1zZ0hlYWQ"), words="base64"),
        ApiCase(
            "b64-url-safe-alphabet",
            "base64",
            400,
            _with(businessDocument=base64.urlsafe_b64encode(b"\xfb\xff" * 30).decode()),
            words="base64",
        ),
        ApiCase(
            "b64-truncated",
            "base64",
            400,
            _with(businessDocument=base64.b64encode(fresh()).decode()[:-3]),
            words="base64",
        ),
        ApiCase("b64-with-nul", "base64", 400, _with(businessDocument="PE1z\u0000ZwoK"), words="base64"),
        ApiCase("b64-non-ascii", "base64", 400, _with(businessDocument="PE1zZ2æøå"), words="base64"),
        ApiCase("b64-only-padding", "base64", 400, _with(businessDocument="===="), words="base64"),
        ApiCase("b64-empty-string", "base64", 400, _with(businessDocument=""), words="BusinessDocument"),
        ApiCase("document-missing", "request", 400, _with(businessDocument=...), words="BusinessDocument"),
        ApiCase("document-null", "request", 400, _with(businessDocument=None), words="BusinessDocument"),
        ApiCase("document-a-number", "request", 400, _with(businessDocument=1e308), words="BusinessDocument"),
        ApiCase(
            "document-a-list", "request", 400, _with(businessDocument=["PE1z"]), words="BusinessDocument"
        ),
        ApiCase(
            "document-an-object",
            "request",
            400,
            _with(businessDocument={"$ref": "#"}),
            words="BusinessDocument",
        ),
        ApiCase(
            "content-type-pdf", "request", 400, _with(contentType="application/pdf"), words="ContentType"
        ),
        ApiCase("content-type-missing", "request", 400, _with(contentType=...), words="ContentType"),
        ApiCase(
            "transfer-encoding-quoted-printable",
            "request",
            400,
            _with(contentTransferEncoding="quoted-printable"),
            words="base64",
        ),
        ApiCase("subset-not-a-list", "request", 400, _with(receiverHerIdsSubset="9310101"), words="Subset"),
        ApiCase("subset-beyond-int32", "request", 400, _with(receiverHerIdsSubset=[2**40]), words="Subset"),
        ApiCase(
            "subset-not-a-receiver", "request", 400, _with(receiverHerIdsSubset=[9203001]), words="Subset"
        ),
        ApiCase(
            "ebxml-overrides-a-string", "request", 400, _with(ebXmlOverrides="x"), words="EbXmlOverrides"
        ),
        ApiCase("body-a-json-array", "request", 400, [post_body(fresh())], words="JSON object"),
        ApiCase("body-a-json-string", "request", 400, "PE1zZ0hlYWQ+", words="JSON object"),
        ApiCase("body-not-json", "request", 400, raw=b"<MsgHead/>", words="not valid JSON"),
        ApiCase("body-invalid-utf8", "request", 400, raw=b'{"businessDocument": "\xff\xfe"}', words="JSON"),
        ApiCase("body-nested-100k-deep", "request", 400, raw=b"[" * 100_000 + b"]" * 100_000, words="nested"),
        ApiCase("body-empty", "request", 400, raw=b"", words="body"),
        ApiCase(
            "http-content-type-text",
            "request",
            400,
            raw=json.dumps(post_body(fresh())).encode(),
            content_type="text/plain",
            words="JSON",
        ),
        ApiCase(
            "http-content-type-xml",
            "request",
            400,
            raw=fresh(),
            content_type="application/xml",
            words="JSON",
        ),
        ApiCase(
            "body-over-35-mb",
            "size",
            413,
            raw=b'{"businessDocument": "' + b"A" * (36 * MB) + b'"}',
            words="larger",
        ),
        ApiCase("body-over-35-mb-chunked", "size", 413, raw=b"chunked", words="larger"),
        # --- credentials and headers -------------------------------------------------------------
        ApiCase(
            "no-authorization", "auth", 401, _with(), headers=lambda t: headers(None), words="Unauthorized"
        ),
        ApiCase("unknown-token", "auth", 401, _with(), token="not-a-token-anyone-has", words="Unauthorized"),
        ApiCase(
            "empty-bearer",
            "auth",
            401,
            _with(),
            headers=lambda t: {**headers(None), "Authorization": "Bearer "},
            words="Unauthorized",
        ),
        ApiCase(
            "basic-auth",
            "auth",
            401,
            _with(),
            headers=lambda t: {**headers(None), "Authorization": "Basic YXNrZXI6cGFzc29yZA=="},
            words="Unauthorized",
        ),
        ApiCase(
            "token-of-8-kb",
            "auth",
            401,
            _with(),
            headers=lambda t: {**headers(None), "Authorization": "Bearer " + "A" * 8000},
            words="Unauthorized",
        ),
        ApiCase(
            "api-version-missing",
            "headers",
            400,
            _with(),
            headers=lambda t: {k: v for k, v in headers(t).items() if k != "api-version"},
            words="api-version",
        ),
        ApiCase(
            "api-version-1",
            "headers",
            400,
            _with(),
            headers=lambda t: {**headers(t), "api-version": "1"},
            words="api-version",
        ),
        ApiCase(
            "source-system-missing",
            "headers",
            400,
            _with(),
            headers=lambda t: {k: v for k, v in headers(t).items() if k != "nhn-source-system"},
            words="nhn-source-system",
        ),
    ]
    # --- spoofed senders: the token is not bound to the MsgHead sender ----------------------------
    drammen = fresh({**ASKER_CAST, "sykepleie": 9203001})
    gp_doc = fresh({**ASKER_CAST, "sykepleie": GP, "gp": ASKER_NURSING})
    unknown = fresh()
    for her in ("9201000", "9201001"):
        unknown = unknown.replace(f"<Id>{her}</Id>".encode(), b"<Id>9999998</Id>")
    mine = fresh()
    spoofs = [
        ApiCase(
            "spoof-sender-of-another-municipality",
            "spoof",
            403,
            post_body(drammen),
            words="9203001",
            document=drammen,
        ),
        ApiCase(
            "spoof-sender-another-client-is-bound-to",
            "spoof",
            403,
            post_body(gp_doc),
            words=str(GP),
            document=gp_doc,
        ),
        ApiCase(
            "spoof-sender-not-in-registry",
            "spoof",
            403,
            post_body(unknown),
            words="9999998",
            document=unknown,
        ),
        ApiCase(
            "spoof-token-of-another-client",
            "spoof",
            403,
            post_body(mine),
            token="gp",
            words="9201001",
            document=mine,
        ),
    ]
    # --- duplicates -----------------------------------------------------------------------------------
    same, changed, refused = fresh(), fresh(), fresh().replace(b"<MsgId>", b"<MsgId>dup-", 1)
    changed_again = changed.replace(b"Skogliveien 23", b"Skogliveien 25", 1)
    assert changed_again != changed
    duplicates = [
        ApiCase("duplicate-3-times", "duplicate", 201, post_body(same), document=same, sends=3),
        ApiCase("duplicate-msgid-other-content", "duplicate", 201, post_body(changed), document=changed),
        ApiCase(
            "duplicate-msgid-other-content-2",
            "duplicate",
            201,
            post_body(changed_again),
            document=changed_again,
        ),
        ApiCase(
            "duplicate-refused-twice",
            "duplicate",
            400,
            post_body(refused),
            codes=frozenset({"E10"}),
            apprec=True,
            document=refused,
            sends=2,
        ),
    ]
    cases += request + spoofs + duplicates
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    return cases


CASES = _cases()
CONCURRENT = 5


@dataclass
class Answer:
    status: int
    body: object
    text: str = ""


@dataclass
class Run:
    net: object
    answers: dict[str, list[Answer]]
    apprecs: dict[str, list[tuple[str, list[str]]]]
    rows: dict[str, list[dict]]
    concurrent: bytes
    concurrent_answers: list[Answer]
    after: list[Answer] = field(default_factory=list)


async def _request(session, url, ctx, case: ApiCase, token: str) -> Answer:
    hdrs = dict(case.headers(token))
    if case.raw == b"chunked":

        async def chunks():
            yield b'{"businessDocument": "'
            for _ in range(36):
                yield b"A" * MB
            yield b'"}'

        data = chunks()
    elif case.raw is not None:
        data = case.raw
    else:
        data = json.dumps(case.json).encode()
    hdrs["Content-Type"] = case.content_type
    try:
        async with session.post(url, data=data, headers=hdrs, ssl=ctx) as resp:
            raw = await resp.read()
    except (aiohttp.ClientError, ConnectionError) as exc:
        # The server answered before reading the whole body and closed; the answer is what counts.
        return Answer(0, None, f"{type(exc).__name__}: {exc}")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    return Answer(resp.status, body, raw[:2000].decode("utf-8", "replace"))


async def _apprecs(session, base, ctx, token) -> dict[str, list[tuple[str, list[str]]]]:
    """Every AppRec in the unread list of Asker's nursing service, by the MsgId it answers."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    hdrs = headers(token)
    params = [("ReceiverHerIds", str(ASKER_NURSING)), ("MessagesToFetch", "100"), ("IncludeMetadata", "true")]
    async with session.get(base + "/Messages", params=params, headers=hdrs, ssl=ctx) as resp:
        assert resp.status == 200, await resp.text()
        items = await resp.json()
    for item in items:
        if not item["isAppRec"]:
            continue
        async with session.get(
            base + f"/Messages/{item['id']}/business-document", headers=hdrs, ssl=ctx
        ) as resp:
            doc = await resp.json()
        info = read_message(parse_xml(base64.b64decode(doc["businessDocument"]))).apprec
        found.setdefault(info.original_msg_id, []).append((str(info.status), [e.code for e in info.errors]))
    return found


async def _send_all(net) -> tuple[dict[str, list[Answer]], bytes, list[Answer], dict]:
    base = net.info["gateways"]["municipal"]["url"]
    entry = net.info["systems"][str(ASKER)]
    ctx = ssl.create_default_context(cafile=str(net.directory / "pki" / "ca.pem"))
    ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
    tokens = {"asker": net.info["tokens"][str(ASKER)], "gp": net.info["tokens"][str(GP_OFFICE)]}
    wanted = [c.msg_id for c in CASES if c.apprec]
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        answers = {}
        for case in CASES:
            token = tokens.get(case.token, case.token)
            answers[case.name] = [
                await _request(session, base + "/Messages", ctx, case, token) for _ in range(case.sends)
            ]
        concurrent = fresh()
        once = ApiCase("concurrent", "duplicate", 201, post_body(concurrent))
        together = await asyncio.gather(
            *(_request(session, base + "/Messages", ctx, once, tokens["asker"]) for _ in range(CONCURRENT))
        )
        apprecs: dict = {}
        for _ in range(60):
            apprecs = await _apprecs(session, base, ctx, tokens["asker"])
            if all(m in apprecs for m in wanted):
                break
            await asyncio.sleep(0.5)
    return answers, concurrent, list(together), apprecs


@pytest.fixture(scope="module")
def run(tmp_path_factory, demo_pki):
    # A generous rate: this suite is about what the API answers, not about its rate limit.
    net = start_net(tmp_path_factory.mktemp("hostile-api") / "net", demo_pki, "municipal", api_rate=10_000)
    try:
        answers, concurrent, together, apprecs = asyncio.run(_send_all(net))
        yield Run(net, answers, apprecs, rows_by_msg_id(net.log("municipal")), concurrent, together)
    finally:
        net.stop_all()


def _codes(answer: Answer) -> set[str]:
    lines = (answer.body or {}).get("validationErrors") or []
    return {m.group(1) for line in lines if (m := re.match(r"([A-Z]\d\d) ", line))}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_api_gives_the_right_answer(run, case):
    answers = run.answers[case.name]
    for answer in answers:
        assert answer.status == case.status, (answer.status, answer.text)
        if case.status == 201:
            continue
        body = answer.body
        assert isinstance(body, dict) and body["stackTrace"] is None and body["requestId"], answer.text
        text = body["error"] + " " + " ".join(body.get("validationErrors") or [])
        assert case.words in text, text
        if case.status == 400:
            assert body["errorCode"] == 1000, body
        if case.codes is not None:
            assert _codes(answer) == set(case.codes), body["validationErrors"]
    if case.status == 201:
        assert len({a.body for a in answers}) == 1, "the same message keeps its id"
    mid = case.msg_id
    if case.apprec:
        assert run.apprecs.get(mid) == [("2", sorted(case.codes))], "one AppRec Avvist in the unread list"
    elif mid is not None:
        assert mid not in run.apprecs
    if (mid is not None and case.category in ("duplicate", "spoof")) or case.apprec:
        rows = run.rows.get(mid, [])
        expected = 0 if case.category == "spoof" else 1
        assert len(rows) == expected, f"stored {len(rows)} times"
        if case.apprec:
            assert codes_of(rows[0]) == set(case.codes)


def test_the_same_message_at_once_gets_one_id_and_is_stored_once(run):
    assert [a.status for a in run.concurrent_answers] == [201] * CONCURRENT, run.concurrent_answers
    assert len({a.body for a in run.concurrent_answers}) == 1
    assert len(run.rows[msg_id(run.concurrent)]) == 1


def test_no_patient_data_and_no_crash_in_the_log(run):
    assert not patient_data_leaks(run.net)
    assert not passwd_copies(run.net)
    log = (run.net.directory / "municipal.log").read_text(errors="replace")
    assert "Traceback" not in log, "the API logged a crash (an answer 500)"


async def _after(net) -> tuple[int, object, list]:
    base = net.info["gateways"]["municipal"]["url"]
    entry = net.info["systems"][str(ASKER)]
    ctx = ssl.create_default_context(cafile=str(net.directory / "pki" / "ca.pem"))
    ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
    data = fresh()
    async with aiohttp.ClientSession() as session:
        hdrs = headers(net.info["tokens"][str(ASKER)])
        async with session.post(base + "/Messages", json=post_body(data), headers=hdrs, ssl=ctx) as resp:
            status, message_id = resp.status, await resp.json()
        gp = headers(net.info["tokens"][str(GP_OFFICE)])
        params = [("ReceiverHerIds", str(GP)), ("MessagesToFetch", "100")]
        listed = []
        for _ in range(100):
            async with session.get(base + "/Messages", params=params, headers=gp, ssl=ctx) as resp:
                listed = [i["id"] for i in await resp.json()]
            if message_id in listed:
                break
            await asyncio.sleep(0.2)
    return status, message_id, listed


def test_the_gateway_keeps_serving(run):
    net = run.net
    assert net.procs["municipal"].poll() is None and net.healthy("municipal")
    status, message_id, listed = asyncio.run(_after(net))
    assert status == 201, message_id
    assert message_id in listed, "a normal message reaches the GP after the hostile batch"
