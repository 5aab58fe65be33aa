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
from message_types.xmlparse import split_tag

NS = MSGHEAD_NS
_P = "{" + NS + "}"
MIG_VERSION = "v1.2 2006-05-24"


def _text(element: etree._Element | None, tag: str) -> str | None:
    if element is None:
        return None
    value = element.findtext(_P + tag)
    return value.strip() if value else None


def _attr(element: etree._Element | None, tag: str, attr: str = "V") -> str | None:
    if element is None:
        return None
    child = element.find(_P + tag)
    return None if child is None else child.get(attr)


# The reader below visits each element once, iterating children directly: lxml's find() goes
# through a Python ElementPath implementation, which made reading cost more than validating.
(
    _MSGINFO,
    _DOCUMENT,
    _TYPE,
    _MIG,
    _GENDATE,
    _MSGID,
    _CONVREF,
    _PARENT,
    _CONVERSATION,
    _SENDER,
    _RECEIVER,
    _OTHER,
    _PATIENT,
    _ORG,
    _ORGNAME,
    _IDENT,
    _ID,
    _TYPEID,
    _HCP,
    _ROLE,
    _PERSON,
    _FAMILY,
    _MIDDLE,
    _GIVEN,
    _BIRTH,
    _SEX,
    _CONNECTION,
    _REFDOC,
    _MSGTYPE,
    _MIME,
    _DESCRIPTION,
    _CONTENT,
    _FILEREF,
) = (
    _P + t
    for t in [
        "MsgInfo",
        "Document",
        "Type",
        "MIGversion",
        "GenDate",
        "MsgId",
        "ConversationRef",
        "RefToParent",
        "RefToConversation",
        "Sender",
        "Receiver",
        "OtherReceiver",
        "Patient",
        "Organisation",
        "OrganisationName",
        "Ident",
        "Id",
        "TypeId",
        "HealthcareProfessional",
        "RoleReceiver",
        "Person",
        "FamilyName",
        "MiddleName",
        "GivenName",
        "DateOfBirth",
        "Sex",
        "DocumentConnection",
        "RefDoc",
        "MsgType",
        "MimeType",
        "Description",
        "Content",
        "FileReference",
    ]
)


def _first(element: etree._Element, tag: str) -> etree._Element | None:
    # A loop over the few children costs about half of iterchildren(tag), which builds a tag matcher.
    for child in element:
        if child.tag == tag:
            return child
    return None


def _strip(text: str | None) -> str | None:
    return text.strip() if text else None


def _ident(element: etree._Element) -> Ident:
    value, type_ = "", ""
    for child in element:
        tag = child.tag
        if tag == _ID:
            value = (child.text or "").strip()
        elif tag == _TYPEID:
            type_ = child.get("V") or ""
    return Ident(value, type_)


def _person(element: etree._Element) -> tuple[dict, tuple[Ident, ...]]:
    fields: dict = {}
    idents = []
    for child in element:
        tag = child.tag
        if tag == _IDENT:
            idents.append(_ident(child))
        elif tag == _FAMILY:
            fields["family_name"] = _strip(child.text)
        elif tag == _GIVEN:
            fields["given_name"] = _strip(child.text)
        elif tag == _MIDDLE:
            fields["middle_name"] = _strip(child.text)
        elif tag == _BIRTH:
            fields["date_of_birth"] = _strip(child.text)
        elif tag == _SEX:
            fields["sex"] = child.get("V")
    return fields, tuple(idents)


def _person_level(element: etree._Element) -> PartyLevel:
    fields, idents = _person(element)
    parts = (fields.get("given_name"), fields.get("middle_name"), fields.get("family_name"))
    return PartyLevel(" ".join(p for p in parts if p), LevelKind.PERSON, idents)


def read_address(org: etree._Element | None) -> Address:
    """Organisation chain with the HER-id at every level (service-based addressing, HIS 1153)."""
    levels: list[PartyLevel] = []
    node = org
    while node is not None:
        name, idents, nested, person = "", [], None, None
        for child in node:
            tag = child.tag
            if tag == _IDENT:
                idents.append(_ident(child))
            elif tag == _ORGNAME:
                name = (child.text or "").strip()
            elif tag == _ORG:
                nested = child
            elif tag == _HCP:
                person = child
        kind = LevelKind.ORGANISATION if not levels else LevelKind.SERVICE
        levels.append(PartyLevel(name, kind, tuple(idents)))
        if person is not None:
            levels.append(_person_level(person))
        node = nested
    return Address(tuple(levels))


def _read_other_receiver(element: etree._Element) -> CopyReceiver:
    role, address = "", Address(())
    for child in element:
        tag = child.tag
        if tag == _ROLE:
            role = child.get("V") or ""
        elif tag == _ORG:
            address = read_address(child)
        elif isinstance(tag, str) and tag.endswith(("HealthcareProfessional", "Person", "Patient")):
            # Person is of a felleskomponent1 type, so its children may be in another namespace.
            name = " ".join(
                (c.text or "").strip()
                for c in child
                if isinstance(c.tag, str) and c.tag.endswith("Name") and c.text
            )
            address = Address((PartyLevel(name, LevelKind.PERSON, _idents_any(child)),))
    return CopyReceiver(role, address)


def _idents_any(element: etree._Element) -> tuple[Ident, ...]:
    out = []
    for child in element:
        if isinstance(child.tag, str) and child.tag.endswith("}Ident"):
            value = (
                next((c.text for c in child if isinstance(c.tag, str) and c.tag.endswith("}Id")), "") or ""
            )
            type_ = next(
                (c.get("V") for c in child if isinstance(c.tag, str) and c.tag.endswith("}TypeId")), ""
            )
            out.append(Ident(value.strip(), type_ or ""))
    return tuple(out)


def read_patient(element: etree._Element | None) -> Patient | None:
    if element is None:
        return None
    fields, idents = _person(element)
    return Patient(idents=idents, **fields)


def _read_document(element: etree._Element) -> Document:
    connection = msg_type = mime = description = file_ref = content_ns = content_root = None
    for child in element:
        tag = child.tag
        if tag == _CONNECTION:
            connection = child.get("V")
        elif tag == _REFDOC:
            for ref in child:
                rtag = ref.tag
                if rtag == _MSGTYPE:
                    msg_type = ref.get("V")
                elif rtag == _CONTENT:
                    for first in ref:
                        if isinstance(first.tag, str):
                            content_ns, content_root = split_tag(first.tag)
                            break
                elif rtag == _MIME:
                    mime = _strip(ref.text)
                elif rtag == _DESCRIPTION:
                    description = _strip(ref.text)
                elif rtag == _FILEREF:
                    file_ref = _strip(ref.text)
    return Document(connection, msg_type or "", mime, description, content_ns, content_root, file_ref)


def content_element(root: etree._Element) -> etree._Element | None:
    """The business document inside the first main Document's RefDoc/Content."""
    for doc in root.iterchildren(_DOCUMENT):
        connection = next(doc.iterchildren(_CONNECTION), None)
        if connection is not None and connection.get("V") == "V":
            continue
        for ref in doc.iterchildren(_REFDOC):
            for content in ref.iterchildren(_CONTENT):
                return next((c for c in content if isinstance(c.tag, str)), None)
    return None


def read_msghead(root: etree._Element, kind: DocumentKind) -> Message:
    msg_type = type_text = gen_date = msg_id = mig = None
    sender = receiver = patient = conversation = None
    copies, documents = [], []
    for part in root:
        ptag = part.tag
        if ptag == _DOCUMENT:
            documents.append(_read_document(part))
        elif ptag != _MSGINFO:
            continue
        for child in part:
            tag = child.tag
            if tag == _TYPE:
                msg_type, type_text = child.get("V") or "", child.get("DN")
            elif tag == _MSGID:
                msg_id = child.text
            elif tag == _GENDATE:
                gen_date = child.text
            elif tag == _MIG:
                mig = child.text
            elif tag == _SENDER:
                sender = read_address(_first(child, _ORG))
            elif tag == _RECEIVER:
                receiver = read_address(_first(child, _ORG))
            elif tag == _OTHER:
                copies.append(_read_other_receiver(child))
            elif tag == _PATIENT:
                patient = read_patient(child)
            elif tag == _CONVREF:
                parent, conv = _first(child, _PARENT), _first(child, _CONVERSATION)
                conversation = ConversationRef(
                    _strip(parent.text if parent is not None else None) or "",
                    _strip(conv.text if conv is not None else None) or "",
                )
    documents = tuple(documents)
    main = next((d for d in documents if not d.is_attachment), None)
    msg_type = msg_type or ""
    return Message(
        kind=kind,
        msg_id=_strip(msg_id) or "",
        msg_type=msg_type,
        msg_type_text=type_text or MESSAGE_FUNCTION.text(msg_type),
        gen_date=_strip(gen_date) or "",
        mig_version=_strip(mig),
        sender=sender or Address(()),
        receiver=receiver or Address(()),
        copies=tuple(copies),
        patient=patient,
        conversation=conversation,
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
