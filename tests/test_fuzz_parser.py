"""Fuzzing the two readers of untrusted bytes with hypothesis: the hardened XML parser with the
validator behind it, and the CMS reader (unprotect and the DER reader under it).

The property is the same for both: whatever comes in, the answer is the documented refusal (a
ValidationResult with problems, a ProtectionError), never another exception. Inputs are arbitrary
bytes, XML-ish documents built from parts, and mutations of valid samples and of valid CMS
messages. A generous per-example deadline guards against hangs; it does not measure speed.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
from pathlib import Path

import pytest
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from lxml import etree

from gateway.protection import (
    CertificateChecker,
    Cipher,
    ProtectionError,
    StaticCrlSource,
    der,
    envelope,
    load_certificate,
    load_crls,
    protect,
    read_cms,
    signed,
    to_pem,
    unprotect,
)
from gateway.protection.certs import record_of
from gateway.protection.pki import load_party
from gateway.validation import ValidationResult
from message_types.codes import ErrorCode
from message_types.kinds import MSGHEAD_NS
from message_types.problems import InvalidMessage
from message_types.xmlparse import parse_xml

SAMPLES = Path(__file__).resolve().parent.parent / "sample_messages"
VALID = [p.read_bytes() for p in sorted((SAMPLES / "valid").rglob("*.xml"))]
INVALID = [p.read_bytes() for p in sorted((SAMPLES / "invalid").rglob("*.xml"))]
HOSPITAL, MUNICIPALITY = 9100000, 9203000

FUZZ = settings(
    max_examples=300,
    deadline=dt.timedelta(seconds=10),  # a hang guard: examples take milliseconds
    database=None,  # no .hypothesis folder in the checkout
    print_blob=True,  # a failure prints how to replay it with @reproduce_failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# Pieces that steer a mutation toward the parser's and validator's edge cases.
TOKENS = [
    b"<",
    b">",
    b"</",
    b"/>",
    b"&",
    b"&amp;",
    b"&lol;",
    b"&#0;",
    b"&#x110000;",
    b"<!DOCTYPE r [<!ENTITY lol 'lol'>]>",
    b'<!ENTITY x SYSTEM "file:///etc/passwd">',
    b"<![CDATA[",
    b"]]>",
    b"<!--",
    b"-->",
    b"<?xml version='1.0' encoding='UTF-16'?>",
    b"<?pi x?>",
    b'xmlns=""',
    b'xmlns:a="urn:x"',
    b"<a:b>",
    b' V=""',
    b"\x00",
    b"\xff\xfe",
    b"\xef\xbb\xbf",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\r\n",
    b"14034148288",
    b"2099-01-01T00:00:00",
    b"9999999",
]


def _check_result(result: ValidationResult) -> None:
    assert isinstance(result, ValidationResult)
    if not result.valid:
        assert result.errors, "an invalid document names at least one error"
    for problem in result.problems:
        assert isinstance(problem.code, ErrorCode) and problem.message


def _mutations(data: bytes, ops: list[tuple[int, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for kind, position, length, piece in ops:
        at = position % (len(out) + 1)
        if kind == 0 and at < len(out):
            out[at] ^= 1 << (length % 8)
        elif kind == 1:
            out[at:at] = piece
        elif kind == 2:
            del out[at : at + length]
        elif kind == 3:
            del out[at:]
        else:
            source = (position * 7919) % (len(out) + 1)
            out[at:at] = out[source : source + length]
    return bytes(out)


mutation_ops = st.lists(
    st.tuples(
        st.integers(0, 4),
        st.integers(0, 1 << 20),
        st.integers(1, 200),
        st.one_of(st.sampled_from(TOKENS), st.binary(max_size=16)),
    ),
    min_size=1,
    max_size=6,
)


# --- the XML parser and the validator ---------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=4096))
def test_parse_xml_refuses_arbitrary_bytes_with_t01_only(data):
    try:
        tree = parse_xml(data)
    except InvalidMessage as exc:
        assert [p.code for p in exc.problems] == [ErrorCode.T01]
        return
    assert tree.getroot() is not None
    assert tree.docinfo.doctype == "", "a document with a DOCTYPE is never returned"


@FUZZ
@given(data=st.binary(max_size=4096))
def test_validator_answers_arbitrary_bytes(validator, data):
    _check_result(validator.validate(data))


@FUZZ
@given(template=st.sampled_from(VALID + INVALID), ops=mutation_ops)
def test_validator_answers_mutated_samples(validator, template, ops):
    _check_result(validator.validate(_mutations(template, ops)))


XML_TEXT = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=40)


@FUZZ
@given(
    template=st.sampled_from(VALID),
    picks=st.lists(st.tuples(st.integers(0, 10_000), XML_TEXT, st.booleans()), min_size=1, max_size=5),
)
def test_validator_answers_well_formed_messages_with_odd_values(validator, template, picks):
    """Still well-formed, so the schema and the business rules see it: texts and code values
    replaced by anything a broken EPJ could write (dates, ids, names, fødselsnummer)."""
    root = etree.fromstring(template)
    elements = [e for e in root.iter() if isinstance(e.tag, str)]
    for index, text, attribute in picks:
        element = elements[index % len(elements)]
        if attribute and element.attrib:
            element.set(sorted(element.attrib)[index % len(element.attrib)], text)
        elif len(element) == 0:
            element.text = text
    _check_result(validator.validate(etree.tostring(root, xml_declaration=True, encoding="UTF-8")))


NAMES = st.one_of(
    st.sampled_from(["MsgHead", "MsgInfo", "Patient", "Ident", "Id", "AppRec", "a", "x:y", "Ø", "_", "-"]),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,12}", fullmatch=True),
)
NAMESPACES = st.sampled_from(
    [None, MSGHEAD_NS, "http://www.kith.no/xmlstds/apprec/2004-11-21", "urn:ukjent", "", "x y"]
)
RAW_TEXT = st.one_of(XML_TEXT, st.sampled_from([t.decode("latin-1") for t in TOKENS]))


def _element(name: str, namespace: str | None, attributes: dict, children: list[str]) -> str:
    attrs = "".join(f' {k}="{v}"' for k, v in attributes.items())
    xmlns = f' xmlns="{namespace}"' if namespace is not None else ""
    return f"<{name}{xmlns}{attrs}>{''.join(children)}</{name}>"


xmlish = st.recursive(
    RAW_TEXT,
    lambda children: st.builds(
        _element,
        NAMES,
        NAMESPACES,
        st.dictionaries(NAMES, RAW_TEXT, max_size=3),
        st.lists(children, max_size=5),
    ),
    max_leaves=20,
)


@settings(FUZZ, max_examples=150)  # building the trees is the slow part
@given(
    declaration=st.sampled_from(
        ["", '<?xml version="1.0"?>', '<?xml version="1.0" encoding="UTF-8"?>', '<?xml version="1.1"?>']
    ),
    body=xmlish,
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
)
def test_validator_answers_xmlish_documents(validator, declaration, body, encoding):
    data = (declaration + body).encode(
        encoding, errors="surrogatepass" if encoding != "latin-1" else "replace"
    )
    _check_result(validator.validate(data))


# --- the CMS reader ------------------------------------------------------------------------------------


class Receiver:
    def __init__(self, pki: Path):
        self.hospital_sign, _ = load_party(pki, HOSPITAL)
        _, self.enc = load_party(pki, MUNICIPALITY)
        crl = load_crls((pki / "crl.pem").read_bytes())
        self.checker = CertificateChecker([load_certificate(pki / "ca.pem")], crl_source=StaticCrlSource(crl))
        self.content = VALID[0]
        self.inner = signed.sign(self.content, self.hospital_sign)
        self.message = protect(self.content, signer=self.hospital_sign, recipient=self.enc.cert)

    def read(self, data: bytes):
        """unprotect as the gateway calls it: a refusal is a ProtectionError and nothing else."""
        try:
            result = unprotect(
                data, credentials=[self.enc], checker=self.checker, expected_signers=[self.hospital_sign.cert]
            )
        except ProtectionError as exc:
            assert exc.kind.check and exc.reason
            return None
        return result


@pytest.fixture(scope="module")
def receiver(demo_pki) -> Receiver:
    return Receiver(demo_pki / "pki")


CMS_FUZZ = settings(FUZZ, max_examples=200)


@CMS_FUZZ
@given(data=st.binary(max_size=4096))
def test_unprotect_refuses_arbitrary_bytes(receiver, data):
    assert receiver.read(data) is None


@CMS_FUZZ
@given(
    wrapper=st.sampled_from(["der", "pem", "mime"]),
    data=st.one_of(st.binary(max_size=2048), st.text(max_size=200).map(lambda t: t.encode())),
)
def test_unprotect_refuses_arbitrary_wrapped_bytes(receiver, wrapper, data):
    if wrapper == "der":
        body = b"\x30" + data
    elif wrapper == "pem":
        body = b"-----BEGIN PKCS7-----\n" + data + b"\n-----END PKCS7-----\n"
    else:
        body = b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data
    assert receiver.read(body) is None


@CMS_FUZZ
@given(ops=mutation_ops, as_pem=st.booleans())
def test_unprotect_refuses_mutated_messages(receiver, ops, as_pem):
    data = _mutations(receiver.message, ops)
    assume(data != receiver.message)
    result = receiver.read(to_pem(data) if as_pem else data)
    # A change in a field nothing depends on may go unnoticed; the content can never be altered.
    assert result is None or result.content == receiver.content


@CMS_FUZZ
@given(ops=mutation_ops)
def test_unprotect_refuses_mutated_signed_data(receiver, ops):
    """Damage inside the encryption (what only a sender with our certificate can do): the
    SignedData, its certificates, attributes and signature."""
    inner = _mutations(receiver.inner, ops)
    assume(inner != receiver.inner)
    result = receiver.read(envelope.encrypt(inner, record_of(receiver.enc.cert), Cipher.AES256))
    assert result is None or result.content == receiver.content


def _in_region(data: bytes, region: bytes, ops) -> bytes:
    """`data` with only the bytes of `region` (found in it) mutated: aimed damage finds in a few
    hundred examples what blind damage needs many thousands for."""
    at = data.index(region)
    return data[:at] + _mutations(region, ops) + data[at + len(region) :]


def _certificate_regions(cert) -> dict[str, bytes]:
    whole = cert.public_bytes(serialization.Encoding.DER)
    tbs = asn1_x509.Certificate.load(whole)["tbs_certificate"]
    return {
        "whole": whole,
        "version": b"\xa0\x03\x02\x01\x02",  # [0] EXPLICIT INTEGER 2 (v3), first in the TBSCertificate
        "subject": tbs["subject"].dump(),
        "issuer": tbs["issuer"].dump(),
        "public-key": tbs["subject_public_key_info"].dump(),
        "extensions": tbs["extensions"].dump(),
    }


@CMS_FUZZ
@given(
    region=st.sampled_from(["whole", "version", "subject", "issuer", "public-key", "extensions"]),
    ops=mutation_ops,
)
def test_unprotect_refuses_a_damaged_signer_certificate(receiver, region, ops):
    """The signer's certificate travels in the SignedData and is parsed lazily: damage in any of
    its fields must still end as a ProtectionError."""
    cert = receiver.hospital_sign.cert.public_bytes(serialization.Encoding.DER)
    regions = _certificate_regions(receiver.hospital_sign.cert)
    damaged = _in_region(cert, regions[region], ops)
    assume(damaged != cert)
    inner = receiver.inner.replace(cert, damaged, 1)
    result = receiver.read(envelope.encrypt(inner, record_of(receiver.enc.cert), Cipher.AES256))
    assert result is None or result.content == receiver.content


@CMS_FUZZ
@given(ops=mutation_ops)
def test_unprotect_refuses_a_damaged_recipient_name(receiver, ops):
    """The recipient's issuer name is only parsed to say whom a message was for, after no key
    matched: a damaged one must be reported, not crash the reader."""
    issuer = record_of(receiver.enc.cert).issuer_der
    data = _in_region(receiver.message, issuer, ops)
    assume(data != receiver.message)
    result = receiver.read(data)
    assert result is None or result.content == receiver.content


@FUZZ
@given(data=st.binary(max_size=2048))
def test_der_reader_raises_only_value_error(data):
    try:
        element = der.read(data)
    except ValueError:
        return
    assert element.encoded == data


@FUZZ
@given(data=st.one_of(st.binary(max_size=1024), st.binary(max_size=1024).map(base64.b64encode)))
def test_read_cms_raises_only_value_error(data):
    for wrapped in (
        data,
        b"-----BEGIN CMS-----\n" + data + b"\n-----END CMS-----",
        b"MIME-Version: 1.0\n\n" + data,
    ):
        with contextlib.suppress(ValueError):
            assert isinstance(read_cms(wrapped), bytes)
