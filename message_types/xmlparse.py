"""Hardened XML parsing: no DTD, no entities, no network, bounded size and depth.

Every refusal is a `Problem` with code T01 so callers never see a raw parser exception.
"""

from __future__ import annotations

import re
import threading

from lxml import etree

from message_types.codes import ErrorCode
from message_types.problems import InvalidMessage, Problem

# Norsk helsenett's Meldingstjener API accepts business documents up to 35 MB.
DEFAULT_MAX_BYTES = 35 * 1024 * 1024
# libxml2 refuses documents nested deeper than 256 levels unless XML_PARSE_HUGE is set, which we
# never set; real messages are well under 40 levels deep.
MAX_DEPTH = 256

_local = threading.local()


def _parser() -> etree.XMLParser:
    # lxml parsers are not thread-safe; validation may run in worker threads, so one per thread.
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            dtd_validation=False,
            huge_tree=False,
            collect_ids=False,
            # Indentation between elements is not content; dropping it makes validation and our
            # reading cheaper. Whitespace inside text stays, and the bytes forwarded are the original.
            remove_blank_text=True,
        )
        _local.parser = parser
    return parser


def _refuse(message: str, line: int | None = None) -> InvalidMessage:
    return InvalidMessage([Problem(ErrorCode.T01, message, line=line)])


def parse_xml(data: bytes, max_bytes: int = DEFAULT_MAX_BYTES) -> etree._ElementTree:
    """Parse untrusted bytes into a tree, or raise InvalidMessage with a T01 problem."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError("parse_xml takes bytes")
    size = len(data)
    if size == 0:
        raise _refuse("the document is empty")
    if size > max_bytes:
        raise _refuse(f"the document is {size:,} bytes; the limit is {max_bytes:,} bytes")
    try:
        root = etree.fromstring(bytes(data), _parser())
    except etree.XMLSyntaxError as exc:
        # Only a failed parse is looked at again: a whitespace-only body is "empty", not "malformed".
        if not bytes(data[:4096]).strip() and not bytes(data).strip():
            raise _refuse("the document is empty") from None
        raise _refuse(_syntax_message(exc, data), exc.lineno) from None
    except ValueError as exc:  # e.g. lxml refusing a str with an encoding declaration
        raise _refuse(f"not readable as XML: {exc}") from None
    tree = root.getroottree()
    # Entities stay unexpanded with resolve_entities=False, but a DTD is never legitimate in
    # these standards and is the vehicle of XXE and entity-expansion attacks: refuse it outright.
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise _refuse("a DOCTYPE/DTD is not allowed in e-health messages (XXE and entity expansion risk)", 1)
    return tree


_DECLARED_ENCODING = re.compile(rb"^\s*<\?xml[^>]*encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def _syntax_message(exc: etree.XMLSyntaxError, data: bytes) -> str:
    text = str(exc.msg or exc).strip()
    head = bytes(data[:1024])
    if not head.lstrip().startswith((b"<", b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
        return "not XML: the content does not start with '<' (binary data or another format?)"
    declared = _DECLARED_ENCODING.match(head)
    if declared:
        encoding = declared.group(1).decode("ascii")
        try:
            # Bytes that decode but do not read back as '<?xml' are in another encoding.
            readable = bytes(data).decode(encoding).lstrip("\ufeff").startswith("<")
        except (LookupError, UnicodeDecodeError):
            readable = False
        if not readable:
            return f"the XML declaration says encoding {encoding!r}, but the bytes are not {encoding}: {text}"
    if "Excessive depth" in text or "depth" in text.lower() and "exceed" in text.lower():
        return f"the document is nested deeper than {MAX_DEPTH} levels"
    if (
        "Detected an entity reference loop" in text
        or "entity" in text.lower()
        and "amplification" in text.lower()
    ):
        return "entity expansion is not allowed"
    return f"not well-formed XML: {text}"


def split_tag(tag: str) -> tuple[str | None, str]:
    """'{ns}local' -> (ns, local); cheaper than etree.QName on the hot path."""
    if tag[:1] == "{":
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


def local_name(element: etree._Element) -> str:
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


def readable_path(element: etree._Element) -> str:
    """/MsgHead/MsgInfo/Receiver/Organisation[2]: local names, index only where siblings repeat."""
    parts = []
    node = element
    while node is not None:
        name = local_name(node)
        parent = node.getparent()
        if parent is not None:
            same = [c for c in parent if c.tag == node.tag]
            if len(same) > 1:
                name += f"[{same.index(node) + 1}]"
        parts.append(name)
        node = parent
    return "/" + "/".join(reversed(parts))
