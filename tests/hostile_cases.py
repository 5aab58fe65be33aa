"""The hostile documents, as data: every entry point (folder, peer HTTPS, API) sends each of them
and checks its own kind of refusal.

`document_cases(fresh)` mutates fresh valid messages (`fresh()` returns one with a new MsgId, from
the entry point's own template and parties, so that no two cases share a MsgId) and adds the
classic XML attacks. Each case says which AppRec error codes (kodeverk 8221) the refusal must name
and whether its envelope stays readable, in which case the sender gets an AppRec.
"""

from __future__ import annotations

import base64
import gzip
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lxml import etree

from message_types.kinds import MSGHEAD_NS
from message_types.read import read_message
from message_types.xmlparse import parse_xml

SAMPLES = Path(__file__).resolve().parent.parent / "sample_messages"
_MH = "{" + MSGHEAD_NS + "}"

# The fictional fødselsnummer and D-nummer values of the samples: none may reach a plain-text log.
PATIENT_IDS = sorted(
    {
        m.decode()
        for path in (SAMPLES / "valid").rglob("*.xml")
        for m in re.findall(rb"(?<![0-9])[0-9]{11}(?![0-9])", path.read_bytes())
    }
)
# What /etc/passwd starts with: an XXE that worked would carry it somewhere.
PASSWD_MARKER = b"root:x:0:0"


@dataclass(frozen=True)
class Case:
    name: str
    category: str
    data: bytes
    codes: frozenset[str]  # the AppRec error codes the refusal names
    addressable: bool  # the envelope can be read, so the sender gets an AppRec

    @property
    def msg_id(self) -> str | None:
        if not self.addressable:
            return None
        return read_message(parse_xml(self.data)).msg_id


def _case(name: str, category: str, data: bytes, *codes: str, addressable: bool = False) -> Case:
    return Case(name, category, data, frozenset(codes), addressable)


def _root(doc: bytes) -> etree._Element:
    return etree.fromstring(doc)


def _dump(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _edit(doc: bytes, change: Callable[[etree._Element], None]) -> bytes:
    root = _root(doc)
    change(root)
    return _dump(root)


def _info(root: etree._Element) -> etree._Element:
    return root.find(_MH + "MsgInfo")


def _patient(root: etree._Element) -> etree._Element:
    return _info(root).find(_MH + "Patient")


def _set_msg_id(value: str) -> Callable[[etree._Element], None]:
    def change(root):
        _info(root).find(_MH + "MsgId").text = value

    return change


def _receiver_her_ids(root: etree._Element) -> list[etree._Element]:
    receiver = _info(root).find(_MH + "Receiver")
    return [
        ident.find(_MH + "Id")
        for ident in receiver.iter(_MH + "Ident")
        if ident.find(_MH + "TypeId").get("V") == "HER"
    ]


def _unknown_receiver(root):
    # The deepest HER-id is the one routing goes by; give the whole chain HER-ids nobody has.
    for n, element in enumerate(_receiver_her_ids(root)):
        element.text = str(9999990 + n)


def _receiver_without_her_id(root):
    # Identified by organisation number only: nothing to route by.
    for element in _receiver_her_ids(root):
        element.getparent().find(_MH + "TypeId").set("V", "ENH")


def _fnr_in_date_of_birth(root):
    # A fødselsnummer typed into the date field: lxml's schema error quotes the value.
    patient = _patient(root)
    fnr = patient.find(f"{_MH}Ident/{_MH}Id").text
    given = patient.find(_MH + "GivenName")
    dob = etree.Element(_MH + "DateOfBirth")
    dob.text = fnr
    given.addnext(dob)


def _bad_fnr_checksum(root):
    ident = _patient(root).find(f"{_MH}Ident/{_MH}Id")
    ident.text = ident.text[:-1] + str((int(ident.text[-1]) + 1) % 10)


def _drop_patient(root):
    _info(root).remove(_patient(root))


def _drop_patient_names(root):
    patient = _patient(root)
    for tag in ("FamilyName", "MiddleName", "GivenName"):
        for element in patient.findall(_MH + tag):
            patient.remove(element)


def _unknown_element(root):
    etree.SubElement(_info(root), _MH + "Ekstrafelt").text = "ukjent"


def _swap_gendate_and_msgid(root):
    info = _info(root)
    gen, msg = info.find(_MH + "GenDate"), info.find(_MH + "MsgId")
    msg.addnext(gen)


def _bad_gendate(root):
    _info(root).find(_MH + "GenDate").text = "i går ved lunsjtider"


def _future_gendate(root):
    _info(root).find(_MH + "GenDate").text = "2099-01-01T12:00:00+01:00"


def _unknown_type(root):
    _info(root).find(_MH + "Type").set("V", "HEMMELIG_TYPE")


def _xinclude(root):
    # XInclude is never processed; an unknown element in the MsgHead is a schema error.
    include = etree.SubElement(_patient(root), "{http://www.w3.org/2001/XInclude}include")
    include.set("href", "file:///etc/passwd")
    include.set("parse", "text")


def _nested_in_content(depth: int) -> Callable[[etree._Element], None]:
    def change(root):
        parent = _info(root)
        for _ in range(depth):
            parent = etree.SubElement(parent, _MH + "Lag")

    return change


def _many_unknown_siblings(root):
    patient = _patient(root)
    for _ in range(5000):
        etree.SubElement(patient, _MH + "Ukjent")


def _with_doctype(doc: bytes, subset: str, entity_in_name: bool) -> bytes:
    body = doc.split(b"?>", 1)[1]
    if entity_in_name:
        body = re.sub(rb"<GivenName>[^<]*</GivenName>", b"<GivenName>&x;</GivenName>", body, count=1)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n<!DOCTYPE MsgHead [' + subset.encode() + b"]>" + body


def _billion_laughs() -> bytes:
    entities = ['<!ENTITY lol "lol">']
    for i in range(1, 10):
        previous = f"lol{i - 1}" if i > 1 else "lol"
        entities.append(f'<!ENTITY lol{i} "{("&" + previous + ";") * 10}">')
    return f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(entities)}]><lolz>&lol9;</lolz>'.encode()


def _quadratic_blowup() -> bytes:
    # No nesting, so no depth limit trips: one 50 KB entity referenced 2,000 times.
    return (
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "'
        + b"A" * 50_000
        + b'">]><r>'
        + b"&a;" * 2_000
        + b"</r>"
    )


def _declare(doc: bytes, encoding: str) -> bytes:
    head, sep, body = doc.partition(b"?>")
    assert sep and b"encoding=" in head
    return re.sub(rb"encoding=['\"][^'\"]*['\"]", f'encoding="{encoding}"'.encode(), head) + sep + body


def _replace_once(doc: bytes, old: bytes, new: bytes) -> bytes:
    assert old in doc, old
    return doc.replace(old, new, 1)


def document_cases(fresh: Callable[[], bytes]) -> list[Case]:
    """About 70 hostile documents; `fresh()` gives a new valid message each call."""
    rng = random.Random(9)  # fixed: a failure must be reproducible
    doc = fresh()  # for cases whose envelope does not survive: they share nothing with the others
    size = len(doc)
    cases = [
        # --- XML attacks ------------------------------------------------------------------------
        _case(
            "xxe-file-entity",
            "xml-attack",
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><r>&x;</r>',
            "T01",
        ),
        _case(
            "xxe-network-entity",
            "xml-attack",
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY x SYSTEM "http://127.0.0.1:9/x">]><r>&x;</r>',
            "T01",
        ),
        _case(
            "xxe-parameter-entity",
            "xml-attack",
            b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY % p SYSTEM "http://127.0.0.1:9/p.dtd"> %p;]><r/>',
            "T01",
        ),
        _case(
            "xxe-in-a-valid-message",
            "xml-attack",
            _with_doctype(fresh(), '<!ENTITY x SYSTEM "file:///etc/passwd">', entity_in_name=True),
            "T01",
        ),
        _case(
            "internal-entity-in-a-valid-message",
            "xml-attack",
            _with_doctype(fresh(), '<!ENTITY x "Kari">', entity_in_name=True),
            "T01",
        ),
        _case(
            "doctype-without-entities", "xml-attack", _with_doctype(fresh(), "", entity_in_name=False), "T01"
        ),
        _case("billion-laughs", "xml-attack", _billion_laughs(), "T01"),
        _case("quadratic-blowup", "xml-attack", _quadratic_blowup(), "T01"),
        _case(
            "external-dtd",
            "xml-attack",
            b'<?xml version="1.0"?><!DOCTYPE MsgHead SYSTEM "http://127.0.0.1:9/msghead.dtd"><MsgHead/>',
            "T01",
        ),
        # --- nesting ------------------------------------------------------------------------------
        _case("deep-nesting-100k", "nesting", b"<a>" * 100_000 + b"</a>" * 100_000, "T01"),
        _case("deep-nesting-300", "nesting", b"<a>" * 300 + b"</a>" * 300, "T01"),
        _case(
            "deep-nesting-in-msginfo",
            "nesting",
            _edit(fresh(), _nested_in_content(200)),
            "T02",
            addressable=True,
        ),
        _case(
            "5000-unknown-siblings",
            "nesting",
            _edit(fresh(), _many_unknown_siblings),
            "T02",
            addressable=True,
        ),
        # --- empty and odd bodies -----------------------------------------------------------------
        _case("empty", "empty", b"", "T01"),
        _case("whitespace-only", "empty", b" \r\n\t " * 100, "T01"),
        _case("bom-only", "empty", b"\xef\xbb\xbf", "T01"),
        _case("nul-bytes", "empty", b"\x00" * 4096, "T01"),
        _case("xml-declaration-only", "empty", b'<?xml version="1.0" encoding="UTF-8"?>\n', "T01"),
        _case("comment-only", "empty", b"<!-- ingen melding her -->", "T01"),
        # --- encodings ------------------------------------------------------------------------------
        _case(
            "declares-utf16-but-is-utf8",
            "encoding",
            _declare(fresh(), "UTF-16"),
            "T01",
        ),
        _case(
            "latin1-bytes-in-utf8",
            "encoding",
            _replace_once(fresh(), "Fødselsnummer".encode(), "Fødselsnummer".encode("latin-1")),
            "T01",
        ),
        _case(
            "unknown-encoding-declaration",
            "encoding",
            _declare(fresh(), "x-klingon"),
            "T01",
        ),
        _case(
            "utf8-bom-on-utf16-body", "encoding", b"\xef\xbb\xbf" + doc.decode().encode("utf-16-le"), "T01"
        ),
        _case(
            "overlong-utf8", "encoding", _replace_once(fresh(), b"<GivenName>", b"<GivenName>\xc0\xaf"), "T01"
        ),
        _case(
            "utf8-encoded-surrogate",
            "encoding",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName>\xed\xa0\x80"),
            "T01",
        ),
        _case("nul-in-text", "encoding", _replace_once(fresh(), b"<GivenName>", b"<GivenName>\x00"), "T01"),
        _case(
            "control-character", "encoding", _replace_once(fresh(), b"<GivenName>", b"<GivenName>\x1b"), "T01"
        ),
        _case(
            "char-reference-to-nul",
            "encoding",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName>&#0;"),
            "T01",
        ),
        _case(
            "char-reference-beyond-unicode",
            "encoding",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName>&#x110000;"),
            "T01",
        ),
        # --- not XML at all -----------------------------------------------------------------------
        _case("json", "not-xml", b'{"MsgHead": {"MsgInfo": {"Type": "LOG_INNLAGT"}}}', "T01"),
        _case(
            "pdf", "not-xml", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\n", "T01"
        ),
        _case("gzip-of-a-message", "not-xml", gzip.compress(doc, mtime=0), "T01"),
        _case("base64-of-a-message", "not-xml", base64.b64encode(doc), "T01"),
        _case("zip-header", "not-xml", b"PK\x03\x04" + bytes(rng.randrange(256) for _ in range(2000)), "T01"),
        _case("binary-garbage", "not-xml", bytes(rng.randrange(256) for _ in range(8192)), "T01"),
        _case("html-with-doctype", "not-xml", b"<!DOCTYPE html><html><body><p>Hei</p></body></html>", "T01"),
        # --- malformed XML -----------------------------------------------------------------------
        _case("truncated-to-1-byte", "malformed", doc[:1], "T01"),
        _case("truncated-at-10-percent", "malformed", doc[: size // 10], "T01"),
        _case("truncated-at-half", "malformed", doc[: size // 2], "T01"),
        _case("truncated-at-90-percent", "malformed", doc[: size * 9 // 10], "T01"),
        _case("last-byte-missing", "malformed", doc[:-1], "T01"),
        _case(
            "mismatched-tags",
            "malformed",
            _replace_once(fresh(), b"</GivenName>", b"</FamilyName>"),
            "T01",
        ),
        _case("two-root-elements", "malformed", fresh() + b"<MsgHead/>", "T01"),
        _case("text-after-root", "malformed", fresh() + b"trailing text", "T01"),
        _case("unclosed-attribute", "malformed", _replace_once(fresh(), b'V="FNR"', b'V="FNR'), "T01"),
        _case(
            "duplicate-attribute", "malformed", _replace_once(fresh(), b'V="FNR"', b'V="FNR" V="DNR"'), "T01"
        ),
        _case(
            "undeclared-prefix",
            "malformed",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName><x:y/>"),
            "T01",
        ),
        _case(
            "unterminated-cdata",
            "malformed",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName><![CDATA[never closed"),
            "T01",
        ),
        _case(
            "double-hyphen-in-comment",
            "malformed",
            _replace_once(fresh(), b"<GivenName>", b"<!-- a -- b --><GivenName>"),
            "T01",
        ),
        _case(
            "xml-declaration-in-the-middle",
            "malformed",
            _replace_once(fresh(), b"<GivenName>", b'<?xml version="1.0"?><GivenName>'),
            "T01",
        ),
        _case(
            "unescaped-ampersand",
            "malformed",
            _replace_once(fresh(), b"<GivenName>", b"<GivenName>A & B"),
            "T01",
        ),
        _case("lt-in-attribute", "malformed", _replace_once(fresh(), b'V="FNR"', b'V="<FNR"'), "T01"),
        # --- schema and format ----------------------------------------------------------------------
        _case("unknown-element", "schema", _edit(fresh(), _unknown_element), "T02", addressable=True),
        _case(
            "wrong-element-order", "schema", _edit(fresh(), _swap_gendate_and_msgid), "T02", addressable=True
        ),
        _case(
            "fnr-in-date-of-birth", "schema", _edit(fresh(), _fnr_in_date_of_birth), "T02", addressable=True
        ),
        _case("gendate-not-a-date", "schema", _edit(fresh(), _bad_gendate), "T02", addressable=True),
        _case("xinclude-of-etc-passwd", "schema", _edit(fresh(), _xinclude), "T02", addressable=True),
        _case(
            "msghead-namespace-typo",
            "format",
            fresh().replace(MSGHEAD_NS.encode(), MSGHEAD_NS.replace("msghead", "msgheed").encode()),
            "T10",
        ),
        _case(
            "msghead-without-namespace",
            "format",
            fresh().replace(b' xmlns="' + MSGHEAD_NS.encode() + b'"', b""),
            "T10",
        ),
        _case("unknown-message-type", "format", _edit(fresh(), _unknown_type), "T10", addressable=True),
        # --- business rules and routing -------------------------------------------------------------
        _case(
            "msgid-not-a-uuid", "rules", _edit(fresh(), _set_msg_id("melding-nr-42")), "E10", addressable=True
        ),
        _case(
            "msgid-path-traversal",
            "rules",
            _edit(fresh(), _set_msg_id("../../../../../../tmp/komut-hostile-traversal")),
            "E10",
            addressable=True,
        ),
        _case("fnr-bad-checksum", "rules", _edit(fresh(), _bad_fnr_checksum), "E31", addressable=True),
        _case("patient-missing", "rules", _edit(fresh(), _drop_patient), "E36", addressable=True),
        _case("patient-without-name", "rules", _edit(fresh(), _drop_patient_names), "E32", addressable=True),
        _case("gendate-in-the-future", "rules", _edit(fresh(), _future_gendate), "X99", addressable=True),
        _case("unknown-receiver", "routing", _edit(fresh(), _unknown_receiver), "E21", addressable=True),
        _case(
            "receiver-without-her-id",
            "routing",
            _edit(fresh(), _receiver_without_her_id),
            "E21",
            addressable=True,
        ),
    ]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases
