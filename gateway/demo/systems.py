"""Simulated local systems for the demo: hospital EPJ, municipal care systems and GP systems.

Most talk to their gateway only through their folders, as a real system on a file interface
would: they write `name.xml.tmp` then rename it to `name.xml` in `out/`, and read what the
gateway puts in `in/`. A few use the EDI 2.0 API instead (`ApiSystem`), as an EPJ integrated with
Norsk helsenett's Meldingstjener would. Every business message they receive is answered with an
AppRec, as an EPJ does after import. The traffic player replays the PLO patient stay and the GP dialogue from
`sample_messages/` with fresh ids, between parties chosen at random in the demo network.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import logging
import os
import random
import ssl
import tomllib
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from lxml import etree

import sample_messages
from gateway.registry import Category, Registry
from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus
from message_types.kinds import MSGHEAD_NS
from message_types.model import Address, Ident, LevelKind, PartyLevel
from message_types.msghead import write_address
from message_types.problems import InvalidMessage
from message_types.read import read_message
from message_types.xmlparse import parse_xml

log = logging.getLogger("komut.demo")
_MH = "{" + MSGHEAD_NS + "}"

# The parties the sample messages use, by role (docs/demo-network.md).
TEMPLATE_ROLES = {
    9100000: "trust",
    9100200: "site",
    9100201: "somatikk",
    9203000: "municipality",
    9203001: "sykepleie",
    9203002: "lege",
    9203003: "saksbehandler",
    9320100: "gp_office",
    9320101: "gp",
}


def write_file(folder: Path, name: str, data: bytes) -> Path:
    """Write-then-rename, so that the gateway never picks up half a file."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    final = folder / name
    os.replace(tmp, final)
    return final


def address_of(registry: Registry, her_id: int) -> Address:
    """Service-based address from the registry: level 1 first, the addressed party last."""
    levels = []
    for party in reversed(registry.lineage(her_id)):
        kind = (
            LevelKind.PERSON
            if str(party.kind) == "person"
            else LevelKind.SERVICE
            if levels
            else LevelKind.ORGANISATION
        )
        levels.append(PartyLevel(party.name, kind, (Ident(str(party.her_id), "HER"),)))
    return Address(tuple(levels))


@dataclass
class Cast:
    """Who plays which role in one patient story."""

    roles: dict[str, int]


def pick_cast(registry: Registry, rng: random.Random) -> Cast:
    sites = [p for p in registry.by_category(Category.HOSPITAL)]
    site = rng.choice(sites)
    somatikk = next(c for c in registry.children(site.her_id) if "Somatikk" in c.name)
    municipality = rng.choice(registry.by_category(Category.MUNICIPALITY))
    services = {c.name.split(",")[0].lower(): c.her_id for c in registry.children(municipality.her_id)}

    def service(word: str) -> int:
        return next(h for name, h in services.items() if word in name)

    office = rng.choice(registry.by_category(Category.GP_OFFICE))
    gp = rng.choice(registry.children(office.her_id))
    return Cast(
        {
            "trust": registry.level1(site.her_id).her_id,
            "site": site.her_id,
            "somatikk": somatikk.her_id,
            "municipality": municipality.her_id,
            "sykepleie": service("sykepleie"),
            "lege": service("lege"),
            "saksbehandler": service("saksbehandler"),
            "gp_office": office.her_id,
            "gp": gp.her_id,
        }
    )


def story_templates() -> list[dict]:
    """The valid MsgHead samples in story order (PLO stay, then dialogues), from the manifest."""
    folder = Path(sample_messages.DIR)
    manifest = tomllib.loads((folder / "manifest.toml").read_text(encoding="utf-8"))["message"]
    out = []
    for entry in manifest:
        if entry["expect"] != "valid" or entry.get("type") == "APPREC":
            continue
        path = folder / entry["file"]
        root = parse_xml(path.read_bytes()).getroot()
        if etree.QName(root).namespace != MSGHEAD_NS:
            continue
        out.append({"file": entry["file"], "bytes": path.read_bytes()})
    return out


def recast(template: bytes, registry: Registry, cast: Cast, ids: dict[str, str]) -> tuple[bytes, int]:
    """A template with fresh MsgId/GenDate/ConversationRef and the cast's parties; returns
    (document, sender's level-1 HER-id)."""
    root = etree.fromstring(template)
    info = root.find(_MH + "MsgInfo")
    old_id = info.findtext(_MH + "MsgId")
    new_id = ids.setdefault(old_id, str(uuid.uuid4()))
    info.find(_MH + "MsgId").text = new_id
    info.find(_MH + "GenDate").text = datetime.now().astimezone().replace(microsecond=0).isoformat()
    conv = info.find(_MH + "ConversationRef")
    if conv is not None:
        for tag in ("RefToParent", "RefToConversation"):
            el = conv.find(_MH + tag)
            el.text = ids.setdefault(el.text, str(uuid.uuid4()))
    sender_her = None
    for tag in ("Sender", "Receiver"):
        block = info.find(_MH + tag)
        old = read_message(root).sender if tag == "Sender" else read_message(root).receiver
        role = TEMPLATE_ROLES.get(old.her_id or 0)
        if role is None:
            raise ValueError(f"template party {old.her_id} has no role")
        her = cast.roles[role]
        for child in list(block):
            if child.tag == _MH + "Organisation":
                block.remove(child)
        write_address(block, address_of(registry, her))
        if tag == "Sender":
            sender_her = registry.level1(her).her_id
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8"), sender_her


class SimulatedSystem:
    """A local system on a folder interface that answers every business message with an AppRec."""

    def __init__(
        self, her_id: int, name: str, out_dir: Path, in_dir: Path, *, reject_rate: float = 0.0, seed: int = 0
    ):
        self.her_id = her_id
        self.name = name
        self.out_dir = Path(out_dir)
        self.in_dir = Path(in_dir)
        self.read_dir = self.in_dir.parent / "read"
        self.reject_rate = reject_rate
        self.rng = random.Random(seed or her_id)
        self.received = 0
        self.answered = 0

    def send(self, data: bytes, name: str | None = None) -> Path:
        return write_file(self.out_dir, name or f"{uuid.uuid4()}.xml", data)

    def poll_once(self) -> int:
        handled = 0
        self.read_dir.mkdir(parents=True, exist_ok=True)
        for path in sorted(self.in_dir.glob("*.xml")):
            if path.name.startswith("."):
                continue
            data = path.read_bytes()
            os.replace(path, self.read_dir / path.name)
            handled += 1
            self.received += 1
            try:
                message = read_message(parse_xml(data))
            except InvalidMessage:
                continue
            if message.msg_type == "APPREC":
                continue
            if self.rng.random() < self.reject_rate:
                status, errors = (
                    AppRecStatus.REJECTED,
                    [("E35", "Pasienten finnes ikke i mottakersystemet (demo)")],
                )
            else:
                status, errors = AppRecStatus.OK, []
            role = next((c.role for c in message.copies if c.address.her_id in self._mine(message)), "PRIM")
            apprec = build_apprec(message, status, errors, sender_role=role, software=(self.name, "demo"))
            self.send(apprec, f"apprec-{message.msg_id}.xml")
            self.answered += 1
        return handled

    def _mine(self, message) -> set:
        return {self.her_id}

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(self.poll_once)
            except Exception:
                log.exception("%s failed to read its in folder", self.name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=interval)


class ApiError(Exception):
    """The gateway's API answered a simulated system with an error status."""


class ApiSystem:
    """A local system on the EDI 2.0 (Meldingstjener v2) API of its gateway.

    It polls GET /Messages for its HER-ids, reads each business document, marks it read and
    answers business messages with an AppRec through POST /Messages/{id}/apprec/{herId}; what it
    is given to send (`send`) it POSTs to /Messages on its next round.
    """

    def __init__(
        self,
        her_id: int,
        name: str,
        base_url: str,
        token: str,
        receiver_her_ids: list[int],
        *,
        ssl_context: ssl.SSLContext | None = None,
        reject_rate: float = 0.0,
        seed: int = 0,
    ):
        self.her_id = her_id
        self.name = name
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.receiver_her_ids = list(receiver_her_ids)
        self.ssl_context = ssl_context
        self.reject_rate = reject_rate
        self.rng = random.Random(seed or her_id)
        self.outbox: collections.deque[bytes] = collections.deque()
        self.received = 0
        self.answered = 0
        self.sent = 0

    @property
    def headers(self) -> dict[str, str]:
        return {
            "Authorization": f"Bearer {self.token}",
            "api-version": "2",
            "nhn-source-system": f"{self.name}, komut demo",
        }

    def send(self, data: bytes, name: str | None = None) -> None:
        """Queue a business document; `run` POSTs it (the traffic player is not async per system)."""
        self.outbox.append(data)

    async def _call(self, session, method: str, path: str, expect: int, **kwargs):
        async with session.request(
            method, self.base_url + path, headers=self.headers, ssl=self.ssl_context, **kwargs
        ) as resp:
            if resp.status != expect:
                raise ApiError(f"{method} {path}: HTTP {resp.status} {(await resp.text())[:300]}")
            return await resp.json() if resp.status != 204 else None

    async def post_message(self, session, data: bytes) -> str:
        body = {
            "businessDocument": base64.b64encode(data).decode("ascii"),
            "contentType": "application/xml",
            "contentTransferEncoding": "base64",
        }
        message_id = await self._call(session, "POST", "/Messages", 201, json=body)
        self.sent += 1
        return message_id

    async def flush(self, session) -> int:
        posted = 0
        while self.outbox:
            await self.post_message(session, self.outbox[0])
            self.outbox.popleft()  # only once it is in: a failed POST is tried again next round
            posted += 1
        return posted

    async def poll_once(self, session) -> int:
        params = [("ReceiverHerIds", str(h)) for h in self.receiver_her_ids]
        params += [("IncludeMetadata", "true"), ("MessagesToFetch", "100")]
        listed = await self._call(session, "GET", "/Messages", 200, params=params)
        for item in listed:
            message_id, receiver = item["id"], item["receiverHerId"]
            doc = await self._call(session, "GET", f"/Messages/{message_id}/business-document", 200)
            data = base64.b64decode(doc["businessDocument"])
            await self._call(session, "PUT", f"/Messages/{message_id}/read/{receiver}", 204)
            self.received += 1
            if item.get("isAppRec"):
                continue
            try:
                read_message(parse_xml(data))
            except InvalidMessage:
                continue
            if self.rng.random() < self.reject_rate:
                answer = {
                    "appRecStatus": "Rejected",
                    "appRecErrorList": [
                        {
                            "errorCode": "E35",
                            "details": None,
                            "description": "Pasienten finnes ikke i mottakersystemet (demo)",
                        }
                    ],
                }
            else:
                answer = {"appRecStatus": "Ok"}
            await self._call(session, "POST", f"/Messages/{message_id}/apprec/{receiver}", 201, json=answer)
            self.answered += 1
        return len(listed)

    async def run(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                try:
                    await self.flush(session)
                    await self.poll_once(session)
                except (ApiError, aiohttp.ClientError, OSError) as exc:
                    log.warning("%s: %s", self.name, exc)
                except Exception:
                    log.exception("%s failed to talk to its gateway's API", self.name)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=interval)


def api_system(her_id: int, entry: dict, token: str, ca: Path, **kwargs) -> ApiSystem:
    """An ApiSystem from its demo.json `systems` entry and token."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
    return ApiSystem(
        her_id, entry["name"], entry["url"], token, entry["receiver_her_ids"], ssl_context=ctx, **kwargs
    )


class TrafficPlayer:
    """Replays the sample stories between randomly chosen parties, one message every `pace` s."""

    def __init__(
        self,
        registry: Registry,
        systems: dict[int, SimulatedSystem | ApiSystem],
        *,
        pace: float = 2.0,
        seed: int = 1,
    ):
        self.registry = registry
        self.systems = systems
        self.pace = pace
        self.rng = random.Random(seed)
        self.templates = story_templates()
        self.sent = 0

    def system_for(self, data: bytes, sender_org: int) -> SimulatedSystem | ApiSystem | None:
        """The sender's local system: the nearest one up its lineage (a site on the API rather than
        the trust's EPJ), as the gateway's router would pick it."""
        try:
            her = read_message(parse_xml(data)).sender.her_id
        except InvalidMessage:
            her = None
        if her is not None and her in self.registry:
            for party in self.registry.lineage(her):
                if party.her_id in self.systems:
                    return self.systems[party.her_id]
        return self.systems.get(sender_org)

    def play_story(self) -> list[Path]:
        cast = pick_cast(self.registry, self.rng)
        ids: dict[str, str] = {}
        written = []
        for template in self.templates:
            data, sender_org = recast(template["bytes"], self.registry, cast, ids)
            system = self.system_for(data, sender_org)
            if system is not None:
                written.append(system.send(data))
                self.sent += 1
        return written

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            cast = pick_cast(self.registry, self.rng)
            ids: dict[str, str] = {}
            for template in self.templates:
                if stop.is_set():
                    return
                data, sender_org = recast(template["bytes"], self.registry, cast, ids)
                system = self.system_for(data, sender_org)
                if system is not None:
                    system.send(data)
                    self.sent += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.pace)
