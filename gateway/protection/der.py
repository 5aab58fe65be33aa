"""Reading the few fixed CMS fields on the hot path with asn1crypto's tokenizer; writing the
EnvelopedData that python-cryptography's builder cannot (3DES, AES-192).

asn1crypto's typed classes cost 10-20 us per field touched; a message needs ~40 fields, which was
most of unprotect's time (see docs/security.md). Reading: asn1crypto's ``parser.parse`` does the
BER/DER decoding (tags, lengths, indefinite lengths); this module only says which element is which,
strictly, by tag. Writing: definite-length DER, tag and length only. Anything rarer (names for messages, OAEP/PSS parameters) goes
through asn1crypto's typed classes, loaded from the bytes of one element.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import core, parser

UNIVERSAL, CONTEXT = 0, 2
INTEGER, OCTET_STRING, NULL, OID, SEQUENCE, SET = 2, 4, 5, 6, 16, 17


@dataclass(frozen=True, slots=True)
class Element:
    cls: int
    constructed: bool
    tag: int
    header: bytes
    contents: bytes
    trailer: bytes

    @property
    def encoded(self) -> bytes:
        """The element exactly as received (what signatures and certificate lookups need)."""
        return self.header + self.contents + self.trailer

    def is_(self, cls: int, tag: int) -> bool:
        return self.cls == cls and self.tag == tag

    def children(self) -> list[Element]:
        if not self.constructed:
            raise ValueError(f"expected a constructed element, got primitive tag {self.tag}")
        return elements(self.contents)


def read(data: bytes) -> Element:
    """Exactly one element; trailing bytes are an error."""
    cls, method, tag, header, contents, trailer = parser.parse(data, strict=True)
    return Element(cls, method == 1, tag, header, contents, trailer)


def elements(data: bytes) -> list[Element]:
    out = []
    pointer, end = 0, len(data)
    while pointer < end:
        cls, method, tag, header, contents, trailer = parser.parse(data[pointer:] if pointer else data)
        out.append(Element(cls, method == 1, tag, header, contents, trailer))
        pointer += len(header) + len(contents) + len(trailer)
    return out


def expect(element: Element, cls: int, tag: int, what: str) -> Element:
    if element.cls != cls or element.tag != tag:
        raise ValueError(f"{what}: unexpected element (class {element.cls}, tag {element.tag})")
    return element


def sequence(element: Element, what: str) -> list[Element]:
    return expect(element, UNIVERSAL, SEQUENCE, what).children()


def octets(element: Element) -> bytes:
    """OCTET STRING contents, including BER's constructed form (a sequence of chunks)."""
    if not element.constructed:
        return element.contents
    return b"".join(octets(chunk) for chunk in element.children())


def integer(element: Element) -> int:
    expect(element, UNIVERSAL, INTEGER, "INTEGER")
    return int.from_bytes(element.contents, "big", signed=True)


def oid_contents(dotted: str) -> bytes:
    """The encoded contents of an OID, for comparing against received bytes without decoding."""
    return core.ObjectIdentifier(dotted).contents


def oid_text(element: Element) -> str:
    try:
        return core.ObjectIdentifier.load(element.encoded).dotted
    except ValueError:
        return element.contents.hex()


@dataclass(frozen=True, slots=True)
class Algorithm:
    """An AlgorithmIdentifier: OID contents and the parameters element (None when absent)."""

    oid: bytes
    oid_element: Element
    parameters: Element | None
    encoded: bytes


def algorithm(element: Element, what: str) -> Algorithm:
    parts = sequence(element, what)
    if not parts or len(parts) > 2:
        raise ValueError(f"{what}: malformed AlgorithmIdentifier")
    oid = expect(parts[0], UNIVERSAL, OID, what)
    return Algorithm(oid.contents, oid, parts[1] if len(parts) == 2 else None, element.encoded)


# -- writing ------------------------------------------------------------------------------------


def header(cls: int, constructed: bool, tag: int, length: int) -> bytes:
    """Identifier and definite length. Low tag numbers only, which is all CMS needs."""
    if tag > 30:
        raise ValueError("high tag numbers are not needed for CMS")
    identifier = (cls << 6) | (0x20 if constructed else 0) | tag
    if length < 0x80:
        return bytes((identifier, length))
    size = (length.bit_length() + 7) // 8
    return bytes((identifier, 0x80 | size)) + length.to_bytes(size, "big")


def emit(cls: int, constructed: bool, tag: int, contents: bytes) -> bytes:
    return header(cls, constructed, tag, len(contents)) + contents


@dataclass(frozen=True, slots=True)
class Nested:
    """An encoding kept as a list of pieces, so a large content is copied once, at ``encode``,
    instead of once per enclosing layer."""

    parts: tuple[bytes, ...]
    length: int

    def encode(self) -> bytes:
        return b"".join(self.parts)


def nest(cls: int, constructed: bool, tag: int, *items: bytes | Nested) -> Nested:
    parts: list[bytes] = []
    length = 0
    for item in items:
        if isinstance(item, Nested):
            parts.extend(item.parts)
            length += item.length
        else:
            parts.append(item)
            length += len(item)
    head = header(cls, constructed, tag, length)
    return Nested((head, *parts), len(head) + length)


def seq(*parts: bytes) -> bytes:
    return emit(UNIVERSAL, True, SEQUENCE, b"".join(parts))


def set_of(*parts: bytes) -> bytes:
    # DER orders the members of a SET OF by their encodings.
    return emit(UNIVERSAL, True, SET, b"".join(sorted(parts)))


def octet_string(value: bytes) -> bytes:
    return emit(UNIVERSAL, False, OCTET_STRING, value)


def small_int(value: int) -> bytes:
    return emit(UNIVERSAL, False, INTEGER, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()
