"""Helpers for the reliability suite: real gateways (tests/e2e.Net) that can be started under a
wrapper (faketime), local systems on both front doors (folders and the EDI 2.0 API) that answer
with AppRecs and count what they receive, and checks on the delivery logs."""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import os
import re
import sqlite3
import ssl
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from api_helpers import ASKER, ASKER_CAST, Client, post_body
from conftest import SAMPLES
from e2e import DRAMMEN_CAST, REPO, Net

from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus
from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, MUNICIPALITY = 9100000, 9203000  # Vestre Viken's EPJ and Drammen: folder systems
HALLINGDAL, HALLINGDAL_SOMATIKK = 9100500, 9100501  # on the hospital gateway's API
ASKER_API = ASKER  # on the municipal gateway's API
API_CAST = {**ASKER_CAST, "site": HALLINGDAL, "somatikk": HALLINGDAL_SOMATIKK}
TO_MUNICIPALITY = "plo/01-log-innlagt.xml"
TO_HOSPITAL = "plo/02-innleggelsesrapport.xml"
ORIGINAL_ID = re.compile(rb"OriginalMsgId>.*?<(?:\w+:)?Id>([^<]+)<", re.DOTALL)


@dataclass(frozen=True)
class Flow:
    """One direction of traffic: who sends (a folder or an API system), to whom, which template."""

    name: str
    sender: int
    receiver: int
    gateway: str  # the sender's gateway
    peer: str  # the receiver's gateway
    template: str
    cast: dict
    api: bool


FLOWS = (
    Flow(
        "folder hospital->municipal",
        HOSPITAL,
        MUNICIPALITY,
        "hospital",
        "municipal",
        TO_MUNICIPALITY,
        DRAMMEN_CAST,
        False,
    ),
    Flow(
        "folder municipal->hospital",
        MUNICIPALITY,
        HOSPITAL,
        "municipal",
        "hospital",
        TO_HOSPITAL,
        DRAMMEN_CAST,
        False,
    ),
    Flow(
        "api hospital->municipal",
        HALLINGDAL,
        ASKER_API,
        "hospital",
        "municipal",
        TO_MUNICIPALITY,
        API_CAST,
        True,
    ),
    Flow(
        "api municipal->hospital", ASKER_API, HALLINGDAL, "municipal", "hospital", TO_HOSPITAL, API_CAST, True
    ),
)


class RelNet(Net):
    """tests/e2e.Net, and a gateway may be started under a command prefix (e.g. faketime)."""

    def __init__(self, directory: Path, pki_source: Path, *, api_rate: float = 500.0, **kwargs):
        super().__init__(directory, pki_source, api_rate=api_rate, **kwargs)
        self.prefix: dict[str, list[str]] = {}
        self.env: dict[str, dict[str, str]] = {}

    def start(self, name: str, wait: bool = True) -> None:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        command = [sys.executable, "-m", "gateway.cli", "serve", "--config", self.config(name)]
        self.procs[name] = subprocess.Popen(
            [*self.prefix.get(name, []), *command, "--log-level", "WARNING"],
            stdout=log,
            stderr=log,
            cwd=REPO,
            env={**os.environ, **self.env.get(name, {})},
        )
        if wait:
            self.wait_healthy(name)

    def state_dir(self, name: str) -> Path:
        return self.directory / "state" / name

    def api(self, session: aiohttp.ClientSession, her_id: int) -> Client:
        entry = self.info["systems"][str(her_id)]
        ctx = ssl.create_default_context(cafile=str(self.directory / "pki" / "ca.pem"))
        ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
        return Client(session, entry["url"], self.info["tokens"][str(her_id)], ssl=ctx)

    def document(self, flow: Flow) -> tuple[bytes, str]:
        data, _ = self.recast((SAMPLES / "valid" / flow.template).read_bytes(), flow.cast)
        return data, read_message(parse_xml(data)).msg_id

    def rows(self, name: str) -> dict[str, list[dict]]:
        """The gateway's delivery log by MsgId."""
        out: dict[str, list[dict]] = collections.defaultdict(list)
        for row in self.log(name):
            out[row["msg_id"]].append(row)
        return out


@dataclass
class Received:
    """What one local system got, by MsgId: business messages (as files, or under API ids) and
    AppRecs (by the MsgId they answer)."""

    files: collections.Counter = field(default_factory=collections.Counter)
    api_ids: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    apprecs: dict[str, set[str]] = field(default_factory=lambda: collections.defaultdict(set))
    read_confirmed: set[str] = field(default_factory=set)  # API ids the gateway answered 204 for
    listed_after_read: list[str] = field(default_factory=list)

    def times(self, msg_id: str) -> int:
        return self.files[msg_id] + len(self.api_ids.get(msg_id, ()))

    def apprec_times(self, msg_id: str) -> int:
        return len(self.apprecs.get(msg_id, ()))


def read_folder(net: Net, her_id: int, received: Received) -> int:
    """The folder system takes what is in its in/ (into read/, under a unique name so that nothing
    is overwritten and every delivery counts) and answers business messages with an AppRec."""
    system = net.system(her_id)
    system.read_dir.mkdir(parents=True, exist_ok=True)
    handled = 0
    for path in sorted(system.in_dir.glob("*.xml")):
        data = path.read_bytes()
        taken = f"{uuid.uuid4().hex[:12]}-{path.name}"
        os.replace(path, system.read_dir / taken)
        handled += 1
        message = read_message(parse_xml(data))
        if message.msg_type == "APPREC":
            # Every file counts, like business messages: the same AppRec handed over twice under the
            # same name is two hand-overs (keyed by its name alone, the second copy went unseen).
            received.apprecs[message.apprec.original_msg_id].add(f"{taken}:{message.msg_id}")
            continue
        received.files[message.msg_id] += 1
        apprec = build_apprec(message, AppRecStatus.OK, [], software=(system.name, "tests"))
        system.send(apprec, f"apprec-{message.msg_id}.xml")
    return handled


async def read_api(client: Client, receivers: list[int], received: Received, answer: bool = True) -> int:
    """One round of an API system: list unread, fetch each, answer business messages with an AppRec,
    mark read. Raises on connection errors (the gateway may be down); every step is safe to repeat."""
    params = [("ReceiverHerIds", str(h)) for h in receivers]
    params += [("IncludeMetadata", "true"), ("MessagesToFetch", "100")]
    status, items, _ = await client.call("GET", "/Messages", params=params)
    if status != 200:
        raise ConnectionError(f"GET /Messages: {status} {items}")
    for item in items:
        message_id, her = item["id"], item["receiverHerId"]
        if message_id in received.read_confirmed:
            received.listed_after_read.append(message_id)
        status, doc, _ = await client.call("GET", f"/Messages/{message_id}/business-document")
        if status != 200:
            raise ConnectionError(f"GET business-document: {status} {doc}")
        data = base64.b64decode(doc["businessDocument"])
        if item["isAppRec"]:
            match = ORIGINAL_ID.search(data)
            assert match, "an AppRec without OriginalMsgId/Id"
            received.apprecs[match.group(1).decode()].add(message_id)
        else:
            received.api_ids[item["businessDocumentId"]].add(message_id)
            if answer:
                status, body, _ = await client.call(
                    "POST", f"/Messages/{message_id}/apprec/{her}", json={"appRecStatus": "Ok"}
                )
                if status != 201:
                    raise ConnectionError(f"POST apprec: {status} {body}")
        status, body, _ = await client.call("PUT", f"/Messages/{message_id}/read/{her}")
        if status != 204:
            raise ConnectionError(f"PUT read: {status} {body}")
        received.read_confirmed.add(message_id)
    return len(items)


async def post_until_accepted(client: Client, data: bytes, stop_after: float = 120.0) -> tuple[str, int]:
    """POST /Messages, again and again while the gateway is down or answers 503; the same document
    every time (the gateway recognises it by sender and MsgId). Returns (API id, attempts)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + stop_after
    attempts = 0
    while True:
        attempts += 1
        try:
            status, body, headers = await client.call("POST", "/Messages", json=post_body(data))
        except (aiohttp.ClientError, OSError):
            status, body, headers = 0, None, {}
        if status == 201:
            return body, attempts
        if status == 503:
            assert str(headers.get("Retry-After", "")).isdigit(), f"503 without Retry-After: {body}"
        if status not in (0, 503):
            raise AssertionError(f"POST /Messages answered {status}: {body}")
        if loop.time() > deadline:
            raise AssertionError(f"POST /Messages not accepted within {stop_after:.0f} s")
        await asyncio.sleep(0.2)


def receivers_of(net: Net, her_id: int) -> list[int]:
    return list(net.info["systems"][str(her_id)]["receiver_her_ids"])


async def answer_until(net, done, clients: dict, received: dict, timeout: float, what: str) -> None:
    """Run the receiving local systems until `done()` (a blocking check) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for her, got in received.items():
            if her in clients:
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    await read_api(clients[her], receivers_of(net, her), got)
            else:
                await asyncio.to_thread(read_folder, net, her, got)
        if await asyncio.to_thread(done):
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.5)


def delivery_states(net: RelNet, name: str) -> dict[str, list[str]]:
    """MsgId -> its deliveries' states, read straight from the gateway's SQLite file (read-only):
    polled often, where starting `komut log` each time would cost a second or more."""
    path = net.state_dir(name) / "komut.db"
    out: dict[str, list[str]] = collections.defaultdict(list)
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as conn:
        for msg_id, state in conn.execute(
            "SELECT m.msg_id, d.state FROM messages m JOIN deliveries d ON d.message_id = m.id"
        ):
            out[msg_id].append(state)
    return out


def app_ok(net: RelNet, name: str, msg_ids) -> bool:
    """Every one of these messages has exactly one delivery, and it is app-ok."""
    states = delivery_states(net, name)
    return all(states.get(m) == ["app-ok"] for m in msg_ids)
