"""Application receipt (AppRec 1.0 and 1.1): read one, and build one answering a message.

AppRec is its own root document, never wrapped in MsgHead. Its sender is the original
message's receiver and its receiver the original sender, with all address levels mirrored
(HITS 1168 §6.1): organisation in HCP/Inst, a service in Inst/Dept, a person in Inst/HCPerson.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from lxml import etree

from message_types.codes import (
    APPREC_ERRORS,
    APPREC_STATUS_LIST,
    MESSAGE_FUNCTION,
    ORGANISATION_ID_TYPES,
    AppRecStatus,
    ErrorCode,
)
from message_types.kinds import APPREC_10_NS, APPREC_11_NS, DocumentKind
from message_types.model import (
    Address,
    AppRecError,
    AppRecInfo,
    Ident,
    LevelKind,
    Message,
    PartyLevel,
)

MIG_VERSIONS = {APPREC_10_NS: "1.0 2004-11-21", APPREC_11_NS: "v1.1 2012-02-15"}
NAMESPACES = {"1.0": APPREC_10_NS, "1.1": APPREC_11_NS}


def _q(ns: str, tag: str) -> str:
    return "{" + ns + "}" + tag


def _text(element: etree._Element | None, ns: str, tag: str) -> str | None:
    if element is None:
        return None
    child = element.find(_q(ns, tag))
    return None if child is None or child.text is None else child.text.strip()


def _v(element: etree._Element | None, ns: str, tag: str, attr: str = "V") -> str | None:
    if element is None:
        return None
    child = element.find(_q(ns, tag))
    return None if child is None else child.get(attr)


def _level(element: etree._Element, ns: str, kind: LevelKind) -> PartyLevel:
    ident = _text(element, ns, "Id")
    type_ = _v(element, ns, "TypeId") or ""
    idents = (Ident(ident, type_),) if ident else ()
    return PartyLevel(_text(element, ns, "Name") or "", kind, idents)


def _read_hcp(party: etree._Element | None, ns: str) -> tuple[Address, str | None]:
    if party is None:
        return Address(()), None
    role = _v(party, ns, "Role")
    hcp = party.find(_q(ns, "HCP"))
    if hcp is None:
        return Address(()), role
    inst = hcp.find(_q(ns, "Inst"))
    if inst is not None:
        levels = [_level(inst, ns, LevelKind.ORGANISATION)]
        levels += [_level(d, ns, LevelKind.SERVICE) for d in inst.iterfind(_q(ns, "Dept"))]
        levels += [_level(p, ns, LevelKind.PERSON) for p in inst.iterfind(_q(ns, "HCPerson"))]
        return Address(tuple(levels)), role
    prof = hcp.find(_q(ns, "HCProf"))
    if prof is not None:
        return Address((_level(prof, ns, LevelKind.PERSON),)), role
    return Address(()), role


def read_apprec(root: etree._Element, kind: DocumentKind) -> Message:
    ns = kind.namespace
    sender, sender_role = _read_hcp(root.find(_q(ns, "Sender")), ns)
    receiver, _ = _read_hcp(root.find(_q(ns, "Receiver")), ns)
    status_value = _v(root, ns, "Status") or ""
    try:
        status: AppRecStatus | str = AppRecStatus(status_value)
    except ValueError:
        status = status_value
    errors = tuple(
        AppRecError(
            e.get("V") or "",
            e.get("DN") or APPREC_ERRORS.text(e.get("V") or ""),
            e.get("OT") or "",
            e.get("S") or "",
        )
        for e in root.iterfind(_q(ns, "Error"))
    )
    original = root.find(_q(ns, "OriginalMsgId"))
    return Message(
        kind=kind,
        msg_id=_text(root, ns, "Id") or "",
        msg_type=_v(root, ns, "MsgType") or "",
        msg_type_text=MESSAGE_FUNCTION.text("APPREC"),
        gen_date=_text(root, ns, "GenDate") or "",
        mig_version=_text(root, ns, "MIGversion"),
        sender=sender,
        receiver=receiver,
        apprec=AppRecInfo(
            status=status,
            errors=errors,
            original_msg_id=_text(original, ns, "Id") or "",
            original_msg_type=_v(original, ns, "MsgType") or "",
            original_issue_date=_text(original, ns, "IssueDate") or "",
            sender_role=sender_role,
        ),
    )


def _sub(
    parent: etree._Element, ns: str, tag: str, text: str | None = None, **attrs: str | None
) -> etree._Element:
    element = etree.SubElement(parent, _q(ns, tag), {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = text
    return element


def _write_party(parent: etree._Element, ns: str, address: Address, role: str | None, role_text: str) -> None:
    if role:
        _sub(parent, ns, "Role", V=role, DN=role_text)
    hcp = _sub(parent, ns, "HCP")
    levels = list(address.levels)
    if not levels:
        raise ValueError("an AppRec party needs at least the organisation level")
    inst = _sub(hcp, ns, "Inst")

    def ids(element: etree._Element, level: PartyLevel) -> None:
        _sub(element, ns, "Name", level.name)
        her = level.her_id
        if her:
            _sub(element, ns, "Id", her)
            _sub(element, ns, "TypeId", V="HER", DN=ORGANISATION_ID_TYPES.text("HER"))

    ids(inst, levels[0])
    # Inst's sequence is Dept*, AdditionalId*, HCPerson*: services first, persons last.
    for level in levels[1:]:
        if level.kind != LevelKind.PERSON:
            ids(_sub(inst, ns, "Dept"), level)
    for level in levels[1:]:
        if level.kind == LevelKind.PERSON:
            ids(_sub(inst, ns, "HCPerson"), level)


def build_apprec(
    original: Message,
    status: AppRecStatus,
    errors: Iterable[tuple[ErrorCode | str, str]] = (),
    *,
    version: str = "1.0",
    sender_role: str | None = None,
    msg_id: str | None = None,
    gen_date: datetime | None = None,
    sender: Address | None = None,
    software: tuple[str, str] | None = ("komut", "0.1"),
) -> bytes:
    """An AppRec answering `original`; errors are (8221 code, detail shown to the sender)."""
    errors = list(errors)
    if status == AppRecStatus.OK and errors:
        raise ValueError("status 1 (OK) allows no errors")
    if status != AppRecStatus.OK and not errors:
        raise ValueError(f"status {status.value} ({status.text}) needs at least one error")
    ns = NAMESPACES[version]
    root = etree.Element(_q(ns, "AppRec"), nsmap={None: ns})
    _sub(root, ns, "MsgType", V="APPREC", DN=MESSAGE_FUNCTION.text("APPREC"))
    _sub(root, ns, "MIGversion", MIG_VERSIONS[ns])
    if software:
        _sub(root, ns, "SoftwareName", software[0])
        _sub(root, ns, "SoftwareVersion", software[1])
    _sub(root, ns, "GenDate", (gen_date or datetime.now().astimezone()).replace(microsecond=0).isoformat())
    _sub(root, ns, "Id", msg_id or str(uuid.uuid4()))
    role_text = {"PRIM": "Primærmottaker", "COP": "Kopimottaker"}.get(sender_role or "", "")
    _write_party(_sub(root, ns, "Sender"), ns, sender or original.receiver, sender_role, role_text)
    _write_party(_sub(root, ns, "Receiver"), ns, original.sender, "AVS", "Avsender")
    _sub(root, ns, "Status", V=status.value, DN=APPREC_STATUS_LIST.text(status.value))
    for code, detail in errors:
        code = str(code)
        _sub(root, ns, "Error", V=code, S=APPREC_ERRORS.oid, DN=APPREC_ERRORS.text(code), OT=detail or None)
    orig = _sub(root, ns, "OriginalMsgId")
    _sub(orig, ns, "MsgType", V=original.msg_type, DN=MESSAGE_FUNCTION.text(original.msg_type) or None)
    _sub(orig, ns, "IssueDate", original.gen_date)
    _sub(orig, ns, "Id", original.msg_id)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
