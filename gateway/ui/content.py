"""What an operator sees of a message's content: a readable rendering of MsgHead, AppRec and the
business document, and the raw XML, both with patient identifiers masked unless unmasked.

Masking works on a copy of the parsed tree, before anything is rendered, so the readable view, the
raw XML and every text derived from them go through the same rules:
- national identity numbers: the Id of every Ident whose TypeId is a person id type (FNR, DNR,
  HNR, ...), and any free-standing 11-digit number anywhere (a fødselsnummer, D-nummer or
  H-nummer, also when its checksum is wrong: those are the ones refused with E31);
- the patient and relatives blocks (MsgHead Patient, PLO Pasient/ParorendeForesatt/...): names,
  birth date, address and phone numbers;
- the names found there, wherever else they occur in the text (free text mentioning "Ingrid").
Health professionals' names and HPR numbers are not patient data and stay. Free text is shown
otherwise as written: masking removes identifiers, not clinical content.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from lxml import etree

from gateway.ui.texts import apprec_status_text, error_entry, type_text
from message_types.kinds import Family
from message_types.model import Address, Message
from message_types.msghead import content_element
from message_types.problems import InvalidMessage
from message_types.read import read_message
from message_types.xmlparse import parse_xml

MASK = "•••"
# Person id types of kodeverk 8116 that identify a patient; HPR and HER identify professionals.
NATIONAL_ID_TYPES = frozenset({"FNR", "DNR", "HNR", "DUF", "FHN", "SEF", "DKF", "SSN", "PNR", "UID", "XXX"})
PERSON_BLOCKS = frozenset(
    {"Patient", "Pasient", "ParorendeForesatt", "Referanseperson", "Parorende", "PasientInfo", "Pasientinfo"}
)
_ELEVEN_DIGITS = re.compile(r"(?<!\d)\d{11}(?!\d)")
SEX = {"0": "Ikke kjent", "1": "Mann", "2": "Kvinne", "9": "Ikke spesifisert"}  # kodeverk 3101
MAX_TEXT = 4000  # longer text nodes (attachments in base64) are cut in the views
MAX_NODES = 4000
MAX_RAW = 2_000_000


def mask_id(value: str) -> str:
    digits = value.strip()
    return "•" * max(len(digits) - 2, 3) + digits[-2:] if len(digits) > 4 else MASK


def mask_text(text: str | None, names: frozenset[str] = frozenset()) -> str:
    """Free text with national id numbers (and the given names) masked."""
    if not text:
        return text or ""
    out = _ELEVEN_DIGITS.sub(lambda m: mask_id(m.group(0)), text)
    if names:
        out = _names_pattern(names).sub(MASK, out)
    return out


def _names_pattern(names: frozenset[str]) -> re.Pattern:
    words = sorted(names, key=len, reverse=True)
    return re.compile(r"(?<!\w)(" + "|".join(re.escape(w) for w in words) + r")(?!\w)", re.IGNORECASE)


def _local(tag) -> str:
    return etree.QName(tag).localname if isinstance(tag, str) else ""


def _in_block(element: etree._Element) -> bool:
    return (
        any(_local(a.tag) in PERSON_BLOCKS for a in element.iterancestors())
        or _local(element.tag) in PERSON_BLOCKS
    )


def person_names(root: etree._Element) -> frozenset[str]:
    """The names written in the patient and relatives blocks (each word of two letters or more)."""
    names = set()
    for el in root.iter():
        if not isinstance(el.tag, str) or _local(el.tag) not in (
            "FamilyName",
            "GivenName",
            "MiddleName",
            "Navn",
        ):
            continue
        if el.text and _in_block(el):
            names.update(w for w in re.split(r"[\s,]+", el.text.strip()) if len(w) >= 2)
    return frozenset(names)


def mask_tree(root: etree._Element) -> etree._Element:
    """A masked copy of the tree (see the module docstring for the rules)."""
    root = copy.deepcopy(root)
    names = person_names(root)
    pattern = _names_pattern(names) if names else None
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue
        local = _local(el.tag)
        if local == "Ident":
            type_el = next((c for c in el if _local(c.tag) == "TypeId"), None)
            id_el = next((c for c in el if _local(c.tag) == "Id"), None)
            national = type_el is not None and (type_el.get("V") or "").upper() in NATIONAL_ID_TYPES
            if id_el is not None and id_el.text and (national or _in_block(el)):
                id_el.text = mask_id(id_el.text)
        if _in_block(el):
            if local == "TeleAddress" and el.get("V"):
                el.set("V", MASK)
            if el.text and el.text.strip() and len(el) == 0 and local not in ("TypeId", "Id"):
                el.text = MASK
        if el.text:
            el.text = _mask_free(el.text, pattern)
        if el.tail:
            el.tail = _mask_free(el.tail, pattern)
        for attr, value in el.attrib.items():
            if _ELEVEN_DIGITS.search(value):
                el.set(attr, _ELEVEN_DIGITS.sub(lambda m: mask_id(m.group(0)), value))
    return root


def _mask_free(text: str, pattern: re.Pattern | None) -> str:
    out = _ELEVEN_DIGITS.sub(lambda m: mask_id(m.group(0)), text)
    return pattern.sub(MASK, out) if pattern is not None else out


# --- the readable view ------------------------------------------------------------------------------


@dataclass
class Node:
    label: str
    value: str = ""
    children: list[Node] = field(default_factory=list)

    @property
    def masked(self) -> bool:
        return "•" in self.value


@dataclass
class Readable:
    title: str = ""
    header: list[tuple[str, str]] = field(default_factory=list)
    parties: list[tuple[str, list[str]]] = field(default_factory=list)  # (role, levels outermost first)
    patient: list[tuple[str, str]] = field(default_factory=list)
    conversation: tuple[str, str] | None = None  # (parent, conversation)
    documents: list[str] = field(default_factory=list)
    apprec: dict | None = None  # status, status_text, original, errors
    content: Node | None = None
    error: str = ""
    truncated: bool = False


def _humanize(name: str) -> str:
    spaced = re.sub(r"(?<=[a-zæøå0-9])(?=[A-ZÆØÅ])|(?<=[A-ZÆØÅ])(?=[A-ZÆØÅ][a-zæøå])", " ", name)
    return spaced[:1].upper() + spaced[1:].lower()


def _address_lines(address: Address) -> list[str]:
    out = []
    for level in address.levels:
        her = level.her_id
        out.append(f"{level.name} (HER {her})" if her else level.name)
    return out


def _node(el: etree._Element, budget: list[int]) -> Node | None:
    if budget[0] <= 0:
        return None
    budget[0] -= 1
    label = _humanize(_local(el.tag))
    value = ""
    dn, v = el.get("DN"), el.get("V")
    if dn:
        value = f"{dn} ({v})" if v else dn
    elif v:
        value = v
    text = (el.text or "").strip()
    if text:
        if len(text) > MAX_TEXT:
            value = f"[{len(text):,} characters, e.g. an attachment in base64, not shown]"
        else:
            value = f"{value} {text}".strip() if value else text
    children = []
    for child in el:
        if not isinstance(child.tag, str):
            continue
        node = _node(child, budget)
        if node is None:
            break
        children.append(node)
    return Node(label, value, children)


def readable(tree_root: etree._Element, message: Message | None) -> Readable:
    out = Readable()
    if message is None:
        out.error = "not a message komut can read"
        return out
    out.title = message.kind.title
    msg_type = message.msg_type
    out.header = [
        ("Message type", f"{type_text(msg_type) or message.msg_type_text} ({msg_type})" if msg_type else "-"),
        ("MsgId", message.msg_id or "-"),
        ("Generated", message.gen_date or "-"),
    ]
    if message.mig_version:
        out.header.append(("MIG version", message.mig_version))
    out.parties.append(("Sender", _address_lines(message.sender)))
    out.parties.append(("Receiver", _address_lines(message.receiver)))
    for copy_receiver in message.copies:
        out.parties.append((f"Copy ({copy_receiver.role})", _address_lines(copy_receiver.address)))
    p = message.patient
    if p is not None:
        name = " ".join(x for x in (p.given_name, p.middle_name, p.family_name) if x)
        out.patient.append(("Name", name or "-"))
        for ident in p.idents:
            out.patient.append((ident.type or "Id", ident.id))
        if p.date_of_birth:
            out.patient.append(("Born", p.date_of_birth))
        if p.sex:
            out.patient.append(("Sex", f"{SEX.get(p.sex, p.sex)} ({p.sex})"))
    if message.conversation is not None:
        out.conversation = (message.conversation.parent, message.conversation.conversation)
    for doc in message.documents:
        what = "attachment" if doc.is_attachment else "main document"
        detail = ", ".join(x for x in (doc.mime_type, doc.description, doc.content_root) if x)
        out.documents.append(f"{what}: {detail or doc.msg_type}")
    if message.kind.family == Family.APPREC and message.apprec is not None:
        info = message.apprec
        status = str(getattr(info.status, "value", info.status))
        out.apprec = {
            "status": status,
            "status_text": apprec_status_text(status),
            "original_msg_id": info.original_msg_id,
            "original_type": info.original_msg_type,
            "errors": [error_entry(e.code, e.detail, e.text) for e in info.errors],
        }
        out.content = None
        return out
    body = content_element(tree_root) if message.kind.family == Family.MSGHEAD else tree_root
    if body is not None:
        budget = [MAX_NODES]
        out.content = _node(body, budget)
        out.truncated = budget[0] <= 0
    return out


@dataclass
class View:
    """A message's content prepared for one viewer: masked or not."""

    readable: Readable
    raw: str
    masked: bool
    names: frozenset[str] = frozenset()


def render(payload: bytes | None, *, masked: bool) -> View:
    if payload is None:
        return View(
            Readable(error="the payload is no longer kept (retention) or was never readable"), "", masked
        )
    try:
        tree = parse_xml(payload)
    except InvalidMessage as exc:
        text = payload[:MAX_RAW].decode("utf-8", "replace")
        reason = "; ".join(p.message for p in exc.problems)
        return View(
            Readable(error=f"not readable XML: {reason}"), mask_text(text) if masked else text, masked
        )
    root = tree.getroot()
    names = person_names(root)
    shown = mask_tree(root) if masked else root
    try:
        message = read_message(shown)
    except InvalidMessage:
        message = None
    view = readable(shown, message)
    raw_root = copy.deepcopy(shown)
    for el in raw_root.iter():
        if isinstance(el.tag, str) and el.text and len(el.text) > MAX_TEXT:
            el.text = el.text[:200] + f"… [{len(el.text) - 200:,} more characters not shown]"
    etree.indent(raw_root, space="  ")
    raw = etree.tostring(raw_root, encoding="unicode")
    if len(raw) > MAX_RAW:
        raw = raw[:MAX_RAW] + "\n… [cut]"
    return View(view, raw, masked, names)
