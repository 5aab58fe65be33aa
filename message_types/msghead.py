"""MsgHead 1.2 (Hodemelding): read the envelope facts, and build a MsgHead around a payload."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

from lxml import etree

from message_types.codes import MESSAGE_FUNCTION, ORGANISATION_ID_TYPES, PERSON_ID_TYPES
from message_types.kinds import MSGHEAD_NS, DocumentKind, kind_of
from message_types.model import (
    Address,
    ConversationRef,
    CopyReceiver,
    Document,
    Ident,
    LevelKind,
    Message,
    PartyLevel,
    Patient,
)

NS = MSGHEAD_NS
_P = "{" + NS + "}"
MIG_VERSION = "v1.2 2006-05-24"


def _text(element: etree._Element | None, tag: str) -> str | None:
    if element is None:
        return None
    # findtext runs in C; this reader is on the hot path of every message.
    value = element.findtext(_P + tag)
    return value.strip() if value else None


def _attr(element: etree._Element | None, tag: str, attr: str = "V") -> str | None:
    if element is None:
        return None
    child = element.find(_P + tag)
    return None if child is None else child.get(attr)


_ID, _TYPE_ID, _IDENT = _P + "Id", _P + "TypeId", _P + "Ident"


def _idents(element: etree._Element) -> tuple[Ident, ...]:
    out = []
    for ident in element.iterfind(_IDENT):
        type_id = ident.find(_TYPE_ID)
        out.append(
            Ident(
                (ident.findtext(_ID) or "").strip(), (type_id.get("V") if type_id is not None else "") or ""
            )
        )
    return tuple(out)


def _person_name(element: etree._Element) -> str:
    parts = (_text(element, "GivenName"), _text(element, "MiddleName"), _text(element, "FamilyName"))
    return " ".join(p for p in parts if p)


def read_address(org: etree._Element | None) -> Address:
    """Organisation chain with the HER-id at every level (service-based addressing, HIS 1153)."""
    levels: list[PartyLevel] = []
    node = org
    depth = 0
    while node is not None:
        kind = LevelKind.ORGANISATION if depth == 0 else LevelKind.SERVICE
        levels.append(PartyLevel(_text(node, "OrganisationName") or "", kind, _idents(node)))
        hcp = node.find(_P + "HealthcareProfessional")
        if hcp is not None:
            levels.append(PartyLevel(_person_name(hcp), LevelKind.PERSON, _idents(hcp)))
        node = node.find(_P + "Organisation")
        depth += 1
    return Address(tuple(levels))


def _read_other_receiver(element: etree._Element) -> CopyReceiver:
    role = _attr(element, "RoleReceiver") or ""
    org = element.find(_P + "Organisation")
    if org is not None:
        return CopyReceiver(role, read_address(org))
    for tag in ("HealthcareProfessional", "Person", "Patient"):
        person = element.find(_P + tag)
        if person is not None:
            return CopyReceiver(
                role, Address((PartyLevel(_person_name(person), LevelKind.PERSON, _idents(person)),))
            )
    return CopyReceiver(role, Address(()))


def read_patient(element: etree._Element | None) -> Patient | None:
    if element is None:
        return None
    return Patient(
        family_name=_text(element, "FamilyName"),
        middle_name=_text(element, "MiddleName"),
        given_name=_text(element, "GivenName"),
        date_of_birth=_text(element, "DateOfBirth"),
        sex=_attr(element, "Sex"),
        idents=_idents(element),
    )


def _read_document(element: etree._Element) -> Document:
    ref = element.find(_P + "RefDoc")
    content_ns = content_root = None
    if ref is not None:
        content = ref.find(_P + "Content")
        if content is not None:
            first = next((c for c in content if isinstance(c.tag, str)), None)
            if first is not None:
                qname = etree.QName(first)
                content_ns, content_root = qname.namespace, qname.localname
    return Document(
        connection=_attr(element, "DocumentConnection"),
        msg_type=_attr(ref, "MsgType") or "",
        mime_type=_text(ref, "MimeType"),
        description=_text(ref, "Description"),
        content_namespace=content_ns,
        content_root=content_root,
        file_reference=_text(ref, "FileReference"),
    )


def content_element(root: etree._Element) -> etree._Element | None:
    """The business document inside the first main Document's RefDoc/Content."""
    for doc in root.iterfind(_P + "Document"):
        if _attr(doc, "DocumentConnection") == "V":
            continue
        content = doc.find(f"{_P}RefDoc/{_P}Content")
        if content is not None:
            return next((c for c in content if isinstance(c.tag, str)), None)
    return None


def read_msghead(root: etree._Element, kind: DocumentKind) -> Message:
    info = root.find(_P + "MsgInfo")
    msg_type = _attr(info, "Type") or ""
    conv = info.find(_P + "ConversationRef") if info is not None else None
    sender = info.find(f"{_P}Sender/{_P}Organisation") if info is not None else None
    receiver = info.find(f"{_P}Receiver/{_P}Organisation") if info is not None else None
    documents = tuple(_read_document(d) for d in root.iterfind(_P + "Document"))
    main = next((d for d in documents if not d.is_attachment), None)
    return Message(
        kind=kind,
        msg_id=_text(info, "MsgId") or "",
        msg_type=msg_type,
        msg_type_text=_attr(info, "Type", "DN") or MESSAGE_FUNCTION.text(msg_type),
        gen_date=_text(info, "GenDate") or "",
        mig_version=_text(info, "MIGversion"),
        sender=read_address(sender),
        receiver=read_address(receiver),
        copies=tuple(_read_other_receiver(o) for o in info.iterfind(_P + "OtherReceiver"))
        if info is not None
        else (),
        patient=read_patient(info.find(_P + "Patient") if info is not None else None),
        conversation=(
            ConversationRef(_text(conv, "RefToParent") or "", _text(conv, "RefToConversation") or "")
            if conv is not None
            else None
        ),
        documents=documents,
        content_kind=kind_of(main.content_namespace) if main else None,
    )


# --- building -------------------------------------------------------------------------------


def _sub(parent: etree._Element, tag: str, text: str | None = None, **attrs: str) -> etree._Element:
    element = etree.SubElement(parent, _P + tag, {k: v for k, v in attrs.items() if v is not None})
    if text is not None:
        element.text = text
    return element


def _write_ident(parent: etree._Element, ident: Ident, person: bool) -> None:
    el = _sub(parent, "Ident")
    _sub(el, "Id", ident.id)
    codes = PERSON_ID_TYPES if person or ident.type in ("FNR", "DNR", "HPR") else ORGANISATION_ID_TYPES
    _sub(el, "TypeId", V=ident.type, DN=codes.text(ident.type) or ident.type, S=codes.oid)


def _write_person_name(parent: etree._Element, name: str) -> None:
    given, _, family = name.rpartition(" ")
    _sub(parent, "FamilyName", family or name)
    if given:
        _sub(parent, "GivenName", given)


def write_address(parent: etree._Element, address: Address) -> None:
    """Write an organisation chain as nested Organisation elements (a person goes last)."""
    node = parent
    for level in address.levels:
        if level.kind == LevelKind.PERSON:
            hcp = _sub(node, "HealthcareProfessional")
            _write_person_name(hcp, level.name)
            for ident in level.idents:
                _write_ident(hcp, ident, person=True)
            break
        node = _sub(node, "Organisation")
        _sub(node, "OrganisationName", level.name)
        for ident in level.idents:
            _write_ident(node, ident, person=False)


def _write_patient(parent: etree._Element, patient: Patient) -> None:
    el = _sub(parent, "Patient")
    if patient.family_name:
        _sub(el, "FamilyName", patient.family_name)
    if patient.middle_name:
        _sub(el, "MiddleName", patient.middle_name)
    if patient.given_name:
        _sub(el, "GivenName", patient.given_name)
    if patient.date_of_birth:
        _sub(el, "DateOfBirth", patient.date_of_birth)
    if patient.sex:
        _sub(el, "Sex", V=patient.sex)
    for ident in patient.idents:
        _write_ident(el, ident, person=True)


def format_datetime(moment: datetime) -> str:
    return moment.replace(microsecond=0).isoformat()


def new_msg_id() -> str:
    return str(uuid.uuid4())


def build_msghead(
    *,
    msg_type: str,
    sender: Address,
    receiver: Address,
    payload: etree._Element | bytes,
    patient: Patient | None = None,
    conversation: ConversationRef | None = None,
    copies: Iterable[CopyReceiver] = (),
    msg_id: str | None = None,
    gen_date: datetime | None = None,
    attachments: Iterable[tuple[str, str, etree._Element]] = (),
) -> bytes:
    """A MsgHead 1.2 around `payload`; attachments are (mime type, description, content element)."""
    root = etree.Element(_P + "MsgHead", nsmap={None: NS})
    info = _sub(root, "MsgInfo")
    _sub(info, "Type", V=msg_type, DN=MESSAGE_FUNCTION.text(msg_type) or msg_type)
    _sub(info, "MIGversion", MIG_VERSION)
    _sub(info, "GenDate", format_datetime(gen_date or datetime.now().astimezone()))
    _sub(info, "MsgId", msg_id or new_msg_id())
    if conversation is not None:
        ref = _sub(info, "ConversationRef")
        _sub(ref, "RefToParent", conversation.parent)
        _sub(ref, "RefToConversation", conversation.conversation)
    write_address(_sub(info, "Sender"), sender)
    write_address(_sub(info, "Receiver"), receiver)
    for copy in copies:
        other = _sub(info, "OtherReceiver")
        _sub(other, "RoleReceiver", V=copy.role)
        write_address(other, copy.address)
    if patient is not None:
        _write_patient(info, patient)
    content_root = etree.fromstring(payload) if isinstance(payload, bytes) else payload
    doc = _sub(root, "Document")
    ref = _sub(doc, "RefDoc")
    _sub(ref, "MsgType", V="XML", DN="XML-instans")
    _sub(ref, "Content").append(content_root)
    for mime, description, element in attachments:
        doc = _sub(root, "Document")
        _sub(doc, "DocumentConnection", V="V", DN="Vedlegg")
        ref = _sub(doc, "RefDoc")
        _sub(ref, "MsgType", V="A", DN="Vedlegg")
        _sub(ref, "MimeType", mime)
        _sub(ref, "Description", description)
        _sub(ref, "Content").append(element)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
