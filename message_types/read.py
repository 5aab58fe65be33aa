"""Recognise a parsed document and read the gateway's facts from it."""

from __future__ import annotations

from lxml import etree

from message_types.apprec import read_apprec
from message_types.codes import ErrorCode
from message_types.kinds import DocumentKind, Family, kind_of
from message_types.model import Address, Message
from message_types.msghead import read_msghead
from message_types.problems import InvalidMessage, Problem

# Old standalone documents carry a one-letter Message/Type mapped to a 8279 code (HISD 1209 §3.1).
_LEGACY_TYPES = {"E": "EPIKRISE", "H": "HENVISNING", "R": "REQ_LAB", "S": "SVAR_LAB"}


def unsupported(namespace: str | None, root: str) -> InvalidMessage:
    where = f"namespace {namespace!r}" if namespace else "no namespace"
    return InvalidMessage(
        [
            Problem(
                ErrorCode.T10,
                f"unknown document: root element <{root}> in {where} is not a message format komut knows",
                line=1,
                path=f"/{root}",
            )
        ]
    )


def read_message(tree: etree._ElementTree | etree._Element, kind: DocumentKind | None = None) -> Message:
    """The message's facts. `kind` is for a caller that has already recognised the root (the validator)."""
    root = tree.getroot() if isinstance(tree, etree._ElementTree) else tree
    if kind is None:
        qname = etree.QName(root)
        kind = kind_of(qname.namespace)
        if kind is None or kind.root != qname.localname:
            raise unsupported(qname.namespace, qname.localname)
    if kind.family == Family.MSGHEAD:
        return read_msghead(root, kind)
    if kind.family == Family.APPREC:
        return read_apprec(root, kind)
    if kind.standalone:
        return _read_standalone(root, kind)
    raise unsupported(qname.namespace, qname.localname)


def _read_standalone(root: etree._Element, kind) -> Message:
    ns = "{" + kind.namespace + "}"
    type_el = root.find(ns + "Type")
    raw_type = type_el.get("V", "") if type_el is not None else ""
    msg_id = root.findtext(ns + "MsgId") or ""
    gen_date = root.findtext(ns + "GenDate") or ""
    return Message(
        kind=kind,
        msg_id=msg_id.strip(),
        msg_type=_LEGACY_TYPES.get(raw_type, raw_type),
        gen_date=gen_date.strip(),
        sender=Address(()),
        receiver=Address(()),
    )
