"""Deterministic mutants of valid sample messages, for schema-agreement tests.

``mutants(tree, rng, per_part)`` takes a valid document (a MsgHead with its payloads, or a bare
AppRec) and returns distinct mutated copies, up to ``per_part`` for each part of the document.
Each mutant changes one thing:

* ``drop``       remove an element
* ``duplicate``  repeat an element right after itself
* ``move``       swap an element with a sibling, move it among its siblings, or move it under
                 another element of the same document part
* ``wrong-type`` break a value: letters in a date, number or boolean, bad base64, a bad OID, a
                 value outside an enumeration or fixed value, text in an element-only or empty
                 element, a child element in a text-only element, a removed or unknown
                 attribute, xsi:nil, or an xsi:type naming some other (existing) type
* ``unknown``    insert an element the schemas do not declare (in the parent's namespace or in a
                 made-up one)

A document is split into *parts*: the MsgHead envelope, and each payload under
``RefDoc/Content`` (the payload root and everything below it). Every mutant is applied inside one
part, so envelopes and payloads both get their share. It is labelled with that part's namespace
and with the namespace of the element it changed (a po: element inside a Pasientlogistikk
payload: part Pasientlogistikk, element poKomponent). Whether a mutant is still valid does not
matter: the test only asks whether two schema sets give the same verdict.
"""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from lxml import etree

MH = "http://www.kith.no/xmlstds/msghead/2006-05-24"
CONTENT = f"{{{MH}}}Content"
UNKNOWN_NS = "urn:komut:test:not-a-real-namespace"
XSI = "http://www.w3.org/2001/XMLSchema-instance"

# xsi:type values to try. Each names a type that both schema sets define; whether the instance
# may use it depends on the declared type (and on named types being kept under the same names).
XSI_TYPE_PREFIXES = {
    "xs": "http://www.w3.org/2001/XMLSchema",
    "kith": "http://www.kith.no/xmlstds",
    "fk1": "http://www.kith.no/xmlstds/felleskomponent1",
    "mh": MH,
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
XSI_TYPES = [
    "xs:string",
    "xs:anyType",
    "xs:date",
    "xs:base64Binary",
    "kith:CS",
    "kith:CV",
    "kith:TS",
    "kith:ST",
    "fk1:Person",
    "fk1:Ident",
    "mh:Ident",
    "ds:CryptoBinary",
]

DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?$")
GYEAR = re.compile(r"^\d{4}$")
INTEGER = re.compile(r"^[+-]?\d+$")
DECIMAL = re.compile(r"^[+-]?(\d+\.\d*|\.\d+)$")
DOUBLE = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)[eE][+-]?\d+$")
BOOLEAN = {"true", "false", "1", "0"}
OID = re.compile(r"^(\d+\.?)*\d+$")
BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]{16,}$")


@dataclass(frozen=True)
class Mutant:
    kind: str  # drop, duplicate, move, wrong-type, unknown
    part: str  # namespace of the document part the mutation landed in
    element_ns: str  # namespace of the element mutated (the parent, for insertions)
    where: str  # readable path of the element mutated (or its parent, for insertions)
    detail: str  # what was done
    xml: bytes  # the mutated document

    def describe(self) -> str:
        return f"{self.kind} at {self.where}: {self.detail}"


def _label(el: etree._Element) -> str:
    q = etree.QName(el)
    parent = el.getparent()
    if parent is None:
        return q.localname
    same = [s for s in parent if s.tag == el.tag]
    return f"{q.localname}[{same.index(el) + 1}]" if len(same) > 1 else q.localname


def path_of(el: etree._Element) -> str:
    """A short readable path such as /MsgHead/Document[2]/RefDoc/Content/Dialogmelding."""
    parts = []
    node = el
    while node is not None:
        parts.append(_label(node))
        node = node.getparent()
    return "/" + "/".join(reversed(parts))


def _elements(node: etree._Element) -> list[etree._Element]:
    return [c for c in node if isinstance(c.tag, str)]


def split_parts(root: etree._Element) -> list[tuple[str, etree._Element, list[etree._Element]]]:
    """The parts of a document: (namespace, part root, elements in the part).

    The envelope part holds every element not inside a payload; each payload part holds a payload
    root under RefDoc/Content and its descendants.
    """
    payload_roots = [c for content in root.iter(CONTENT) for c in _elements(content)]
    inside = set()
    parts = []
    for proot in payload_roots:
        members = [e for e in proot.iter() if isinstance(e.tag, str)]
        inside.update(members)
        parts.append((etree.QName(proot).namespace or "", proot, members))
    outer = [e for e in root.iter() if isinstance(e.tag, str) and e not in inside]
    return [(etree.QName(root).namespace or "", root, outer), *parts]


# ---------------------------------------------------------------- the five mutation kinds
#
# Each operator gets (rng, part root, elements of the part) in a fresh copy of the document and
# either changes it and returns (where, namespace of the element it changed, detail), or returns
# None when it found nothing to do. For insertions the element changed is the new child's parent.

Op = Callable[[random.Random, etree._Element, list[etree._Element]], "tuple[str, str, str] | None"]


def _ns(el: etree._Element) -> str:
    return etree.QName(el).namespace or ""


def op_drop(rng, proot, members):
    candidates = [e for e in members if e.getparent() is not None]
    if not candidates:
        return None
    el = rng.choice(candidates)
    where = path_of(el)
    el.getparent().remove(el)
    return where, _ns(el), "element removed"


def op_duplicate(rng, proot, members):
    candidates = [e for e in members if e.getparent() is not None]
    if not candidates:
        return None
    el = rng.choice(candidates)
    el.addnext(copy.deepcopy(el))
    return path_of(el), _ns(el), "element repeated right after itself"


def op_move(rng, proot, members):
    candidates = [e for e in members if e is not proot and e.getparent() is not None]
    if not candidates:
        return None
    el = rng.choice(candidates)
    parent = el.getparent()
    where = path_of(el)
    siblings = [s for s in _elements(parent) if s is not el]
    style = rng.choice(["swap", "reposition", "reparent"])
    if style == "swap" and any(s.tag != el.tag for s in siblings):
        other = rng.choice([s for s in siblings if s.tag != el.tag])
        a, b = parent.index(el), parent.index(other)
        first, second = (el, other) if a < b else (other, el)
        marker = etree.Comment("x")
        second.addprevious(marker)
        first.addprevious(second)
        marker.addprevious(first)
        parent.remove(marker)
        return where, _ns(el), f"swapped with sibling {etree.QName(other).localname}"
    if style in ("swap", "reposition") and siblings:
        parent.remove(el)
        pos = rng.randrange(len(_elements(parent)) + 1)
        kids = _elements(parent)
        if pos == len(kids):
            kids[-1].addnext(el)
        else:
            kids[pos].addprevious(el)
        return where, _ns(el), f"moved to child position {pos + 1} of its parent"
    # Re-parent: under any element of the same part that is not the element or inside it.
    banned = set(el.iter())
    targets = [t for t in members if t not in banned and t is not parent]
    if not targets:
        return None
    target = rng.choice(targets)
    parent.remove(el)
    kids = _elements(target)
    pos = rng.randrange(len(kids) + 1)
    if pos == len(kids):
        target.append(el)
    else:
        kids[pos].addprevious(el)
    return where, _ns(el), f"moved under {path_of(target)} at position {pos + 1}"


def _value_breakers(el: etree._Element) -> list[tuple[str, Callable[[], None]]]:
    """Ways to give this element (or its attributes) a value of the wrong type."""
    out: list[tuple[str, Callable[[], None]]] = []
    kids = _elements(el)
    text = (el.text or "").strip()

    def set_text(value):
        def apply():
            el.text = value

        return apply

    def set_attr(name, value):
        def apply():
            el.set(name, value)

        return apply

    def del_attr(name):
        def apply():
            del el.attrib[name]

        return apply

    if not kids and text:
        if DATE.match(text):
            out += [
                ("date 'not-a-date'", set_text("not-a-date")),
                ("date in Norwegian order", set_text("02.05.2024")),
            ]
        elif DATETIME.match(text):
            out += [
                ("dateTime with a space", set_text(text.replace("T", " "))),
                ("dateTime 'i morgen'", set_text("i morgen")),
            ]
        elif text.lower() in BOOLEAN:
            out += [("boolean 'ja'", set_text("ja")), ("boolean 'yes'", set_text("yes"))]
        elif GYEAR.match(text):
            out += [("year 'MMXX'", set_text("MMXX"))]
        elif INTEGER.match(text):
            out += [("number with letters", set_text(text + "abc")), ("number 'tre'", set_text("tre"))]
        elif DECIMAL.match(text) or DOUBLE.match(text):
            out += [("decimal comma", set_text(text.replace(".", ",") + ",5"))]
        elif BASE64.match(text):
            out += [
                ("base64 with illegal characters", set_text("*** not base64 ***")),
                ("base64 cut short", set_text(text[:-1])),
                ("base64 with padding in the middle", set_text("QQ==" + text)),
                ("base64 with non-ASCII letters", set_text(text + "æøå")),
                ("empty base64", set_text("")),
            ]
        if etree.QName(el).localname == "MIGversion":
            out += [("other MIGversion", set_text("v9.9 2099-01-01"))]
        # Structured content where only text belongs.
        out += [(f"child element inside text-only {etree.QName(el).localname}", lambda: _append_child(el))]
    if kids:
        out += [("text in element-only content", set_text("løs tekst"))]
    if not kids and not text:
        out += [("text in an empty element", set_text("tekst"))]
    for name, value in el.attrib.items():
        local = etree.QName(name).localname
        if local == "S" and OID.match(value):
            out += [
                ("OID with letters", set_attr(name, value + ".x")),
                ("OID as urn", set_attr(name, "urn:oid:" + value)),
            ]
        if local == "V" and (DATE.match(value) or DATETIME.match(value) or GYEAR.match(value)):
            out += [("time stamp 'snart'", set_attr(name, "snart"))]
        if local == "V" and value.startswith(("tel:", "mailto:", "http")):
            out += [("URL with spaces and brackets", set_attr(name, "tel: <ukjent> %zz"))]
        if local == "V" and (DECIMAL.match(value) or INTEGER.match(value) or DOUBLE.match(value)):
            out += [("numeric V with letters", set_attr(name, value + "x"))]
        if local in (
            "basiskomponenttype",
            "informasjonskategori",
            "komponenttype",
            "ICA",
            "MT",
            "COMPN",
            "NULL",
        ):
            out += [(f"{local} outside its enumeration / fixed value", set_attr(name, "Ukjent verdi"))]
        if local in ("Id",) and etree.QName(el).namespace == "http://www.w3.org/2000/09/xmldsig#":
            out += [("ID with a space", set_attr(name, "not an id"))]
        out += [(f"attribute {local} removed", del_attr(name))]
    out += [("unknown attribute", set_attr("ukjentAttributt", "1"))]
    out += [("xsi:nil on a non-nillable element", set_attr(f"{{{XSI}}}nil", "true"))]
    out += [(f"xsi:type={t}", set_attr(f"{{{XSI}}}type", t)) for t in XSI_TYPES]
    return out


def _append_child(el: etree._Element) -> None:
    ns = etree.QName(el).namespace
    child = etree.SubElement(el, f"{{{ns}}}Del" if ns else "Del")
    child.text = el.text
    el.text = None


def op_wrong_type(rng, proot, members):
    el = rng.choice(members)
    breakers = _value_breakers(el)
    # Prefer a value-specific breaker over the generic ones when the element has one.
    specific = [b for b in breakers if not b[0].startswith(("unknown attribute", "attribute ", "xsi:"))]
    detail, apply = rng.choice(specific if specific and rng.random() < 0.8 else breakers)
    where = path_of(el)
    apply()
    return where, _ns(el), detail


def op_unknown(rng, proot, members):
    parent = rng.choice(members)
    ns = etree.QName(parent).namespace
    if rng.random() < 0.3 or not ns:
        tag, detail = f"{{{UNKNOWN_NS}}}Ukjent", "element from an unknown namespace inserted"
    else:
        tag, detail = f"{{{ns}}}UkjentElement", "undeclared element in the parent's namespace inserted"
    new = etree.Element(tag)
    new.text = "x"
    kids = _elements(parent)
    pos = rng.randrange(len(kids) + 1)
    if pos == len(kids):
        parent.append(new)
    else:
        kids[pos].addprevious(new)
    return path_of(parent), _ns(parent), f"{detail} at child position {pos + 1}"


OPERATORS: dict[str, Op] = {
    "drop": op_drop,
    "duplicate": op_duplicate,
    "move": op_move,
    "wrong-type": op_wrong_type,
    "unknown": op_unknown,
}


def mutants(tree: etree._ElementTree, rng: random.Random, per_part: int) -> list[Mutant]:
    """Up to ``per_part`` distinct mutants for each part of ``tree`` (which is left untouched).

    Within a part the five kinds take turns, so the envelope and every payload get all kinds.
    Mutants identical to the original or to an earlier mutant are skipped; a part with few
    elements (a lone Base64Container) may run out of distinct mutants before ``per_part``.
    """
    original = etree.tostring(tree, encoding="UTF-8")
    kinds = list(OPERATORS)
    seen = {original}
    out: list[Mutant] = []
    for part_index in range(len(split_parts(tree.getroot()))):
        made = attempts = 0
        while made < per_part and attempts < per_part * 40:
            kind = kinds[attempts % len(kinds)]
            attempts += 1
            doc = copy.deepcopy(tree)
            part_ns, proot, members = split_parts(doc.getroot())[part_index]
            result = OPERATORS[kind](rng, proot, members)
            if result is None:
                continue
            # Declare every prefix an xsi:type value may use, once, on the root.
            etree.cleanup_namespaces(doc, top_nsmap=XSI_TYPE_PREFIXES)
            xml = etree.tostring(doc, encoding="UTF-8")
            if xml in seen:
                continue
            seen.add(xml)
            made += 1
            where, element_ns, detail = result
            out.append(Mutant(kind, part_ns, element_ns, where, detail, xml))
    return out
