"""CMS SignedData: written and verified here, with python-cryptography doing the hashing and RSA.

Signing used to go through python-cryptography's PKCS7SignatureBuilder; its output is what this
module now writes itself (same fields, same order, checked by openssl in the interop tests),
because the builder added ~110 us per message to the RSA operation and this adds ~30 us, on
protect's path (docs/security.md).

cryptography has no public API to verify a CMS signature. Verification here is the RFC 5652
section 5.4/5.6 procedure and nothing more: one signer, content embedded, message-digest attribute
compared with the content, signature checked over the DER of the signed attributes (or over the
content when there are none). Certificate checks are ``checks.py``'s job.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from gateway.protection import der
from gateway.protection.algorithms import (
    ATTR_CONTENT_TYPE,
    ATTR_MESSAGE_DIGEST,
    DIGESTS,
    DIGESTS_BY_OID,
    RSA_ENCRYPTION,
    RSA_WITH,
    RSASSA_PSS,
    SIGNED_DATA,
    DigestSpec,
)
from gateway.protection.certs import CertRecord, Credential, record_from_der, record_of
from gateway.protection.envelope import CANNOT_DECRYPT
from gateway.protection.errors import UNREADABLE, FailureKind, ProtectionError
from gateway.protection.policy import ProtectionPolicy

EMBEDDED = "the message's SignedData"
REGISTERED = "the address registry (expected signer certificates)"


_SHA256 = der.seq(der.oid(DIGESTS["sha256"].oid), b"\x05\x00")
_RSA_PKCS1 = der.seq(der.oid("1.2.840.113549.1.1.1"), b"\x05\x00")
_DATA_OID = der.oid("1.2.840.113549.1.7.1")
_SIGNED_DATA_OID = der.oid("1.2.840.113549.1.7.2")
_VERSION_1 = der.small_int(1)
_CONTENT_TYPE_ATTR = der.seq(der.oid("1.2.840.113549.1.9.3"), der.set_of(_DATA_OID))
_UTC_TIME = 23


def _attribute_prefix(oid: str, value_tag: int, value_length: int) -> bytes:
    """The encoding of a one-value attribute up to its value's contents (all lengths are fixed)."""
    value_header = der.header(der.UNIVERSAL, False, value_tag, value_length)
    values = der.header(der.UNIVERSAL, True, der.SET, len(value_header) + value_length)
    body = len(der.oid(oid)) + len(values) + len(value_header) + value_length
    return der.header(der.UNIVERSAL, True, der.SEQUENCE, body) + der.oid(oid) + values + value_header


# Signed attributes: content type, signing time (UTCTime, 13 characters: RFC 5652 section 11.3 for
# 1950-2049) and message digest (SHA-256, 32 bytes). Every length is fixed, so the SET's DER order
# is fixed too (by the attributes' lengths) and only the time and the digest change per message.
_SIGNING_TIME = _attribute_prefix("1.2.840.113549.1.9.5", _UTC_TIME, 13)
_MESSAGE_DIGEST = _attribute_prefix("1.2.840.113549.1.9.4", der.OCTET_STRING, 32)
_ATTRS_LENGTH = len(_CONTENT_TYPE_ATTR) + len(_SIGNING_TIME) + 13 + len(_MESSAGE_DIGEST) + 32
_ATTRS_SET = der.header(der.UNIVERSAL, True, der.SET, _ATTRS_LENGTH)
_ATTRS_IMPLICIT = der.header(der.CONTEXT, True, 0, _ATTRS_LENGTH)
assert sorted((_CONTENT_TYPE_ATTR, _SIGNING_TIME + b"0" * 13, _MESSAGE_DIGEST + b"0" * 32)) == [
    _CONTENT_TYPE_ATTR,
    _SIGNING_TIME + b"0" * 13,
    _MESSAGE_DIGEST + b"0" * 32,
]


def sign(content: bytes, signer: Credential, *, at: dt.datetime | None = None) -> bytes:
    """SignedData: content embedded, SHA-256, RSA PKCS#1 v1.5, signed attributes (content type,
    signing time, message digest), our certificate and its intermediates."""
    at = (at or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    if not 1950 <= at.year < 2050:
        raise ValueError("signing times outside 1950-2049 need GeneralizedTime, which peers do not expect")
    stamp = b"%02d%02d%02d%02d%02d%02dZ" % (at.year % 100, at.month, at.day, at.hour, at.minute, at.second)
    attrs = b"".join(
        (_CONTENT_TYPE_ATTR, _SIGNING_TIME, stamp, _MESSAGE_DIGEST, hashlib.sha256(content).digest())
    )
    # The signature covers the attributes as a SET (tag 0x31); they travel as [0] IMPLICIT.
    signature = signer.key.sign(_ATTRS_SET + attrs, padding.PKCS1v15(), hashes.SHA256())
    record = signer.record
    signer_info = der.seq(
        _VERSION_1,
        record.issuer_and_serial,
        _SHA256,
        _ATTRS_IMPLICIT + attrs,
        _RSA_PKCS1,
        der.octet_string(signature),
    )
    certificates = [record.der, *(record_of(c).der for c in signer.chain)]
    signed_data = der.nest(
        der.UNIVERSAL,
        True,
        der.SEQUENCE,
        _VERSION_1,
        der.set_of(_SHA256),
        der.nest(
            der.UNIVERSAL,
            True,
            der.SEQUENCE,
            _DATA_OID,
            der.nest(der.CONTEXT, True, 0, der.octet_string(content)),
        ),
        der.emit(der.CONTEXT, True, 0, b"".join(sorted(certificates))),  # [0] IMPLICIT SET OF (DER order)
        der.set_of(signer_info),
    )
    return der.nest(
        der.UNIVERSAL, True, der.SEQUENCE, _SIGNED_DATA_OID, der.nest(der.CONTEXT, True, 0, signed_data)
    ).encode()


@dataclass(frozen=True)
class Verified:
    content: bytes
    signer: CertRecord
    signer_source: str
    certificates: tuple[x509.Certificate, ...]  # everything embedded, for chain building
    digest: DigestSpec
    signature: str
    legacy: tuple[str, ...]


@dataclass(frozen=True)
class SignedParts:
    """The top level of a SignedData: enough to hand out the content before anything is verified."""

    content_type: der.Element
    content: bytes | None
    certificates: list[bytes]
    signer_infos: list[der.Element]


def parse_signed(plaintext: bytes) -> SignedParts:
    """The decrypted SignedData. Failing to parse it is reported exactly like a failed decryption:
    after a substituted random key this is where the failure shows, and it must look the same."""
    try:
        top = der.sequence(der.read(plaintext), "ContentInfo")
        if der.expect(top[0], der.UNIVERSAL, der.OID, "contentType").contents != SIGNED_DATA:
            raise ValueError("not signed-data")
        fields = der.sequence(der.expect(top[1], der.CONTEXT, 0, "content").children()[0], "SignedData")
        encap = der.sequence(fields[2], "EncapsulatedContentInfo")
        content_type = der.expect(encap[0], der.UNIVERSAL, der.OID, "eContentType")
        content = None
        if len(encap) > 1:
            wrapped = der.expect(encap[1], der.CONTEXT, 0, "eContent").children()[0]
            content = der.octets(der.expect(wrapped, der.UNIVERSAL, der.OCTET_STRING, "eContent"))
        certificates: list[bytes] = []
        for item in fields[3:-1]:
            if item.is_(der.CONTEXT, 0):
                # Other CertificateChoices (attribute certificates...) are tagged; skip them.
                certificates = [c.encoded for c in item.children() if c.is_(der.UNIVERSAL, der.SEQUENCE)]
        signer_infos = der.expect(fields[-1], der.UNIVERSAL, der.SET, "signerInfos").children()
        return SignedParts(content_type, content, certificates, signer_infos)
    except (ValueError, TypeError, IndexError):
        raise ProtectionError(FailureKind.CANNOT_DECRYPT, CANNOT_DECRYPT) from None


def verify(signed: SignedParts, policy: ProtectionPolicy, expected: Sequence[CertRecord]) -> Verified:
    try:
        return _verify(signed, policy, expected)
    except ProtectionError:
        raise
    except UNREADABLE as exc:
        raise ProtectionError(FailureKind.SIGNATURE, f"signed data is malformed: {exc}") from None


@dataclass(frozen=True)
class _SignerInfo:
    issuer_der: bytes | None
    serial: int | None
    ski: bytes | None
    digest: der.Algorithm
    signed_attrs: der.Element | None
    signature_algorithm: der.Algorithm
    signature: bytes


def _signer_info(element: der.Element) -> _SignerInfo:
    parts = der.sequence(element, "SignerInfo")
    sid = parts[1]
    issuer = serial = ski = None
    if sid.is_(der.UNIVERSAL, der.SEQUENCE):
        issuer_element, serial_element = sid.children()
        issuer, serial = issuer_element.encoded, der.integer(serial_element)
    else:
        ski = der.octets(der.expect(sid, der.CONTEXT, 0, "SignerIdentifier"))
    digest = der.algorithm(parts[2], "digestAlgorithm")
    index = 3
    attrs = None
    if parts[index].is_(der.CONTEXT, 0):
        attrs, index = parts[index], index + 1
    signature_algorithm = der.algorithm(parts[index], "signatureAlgorithm")
    signature = der.octets(der.expect(parts[index + 1], der.UNIVERSAL, der.OCTET_STRING, "signature"))
    return _SignerInfo(issuer, serial, ski, digest, attrs, signature_algorithm, signature)


def _verify(signed: SignedParts, policy: ProtectionPolicy, expected: Sequence[CertRecord]) -> Verified:
    content = signed.content
    if content is None:
        raise ProtectionError(
            FailureKind.MALFORMED, "signed data has no embedded content (detached signature)"
        )
    if len(signed.signer_infos) != 1:
        raise ProtectionError(
            FailureKind.SIGNATURE, f"expected exactly one signer, found {len(signed.signer_infos)}"
        )
    info = _signer_info(signed.signer_infos[0])
    embedded = [record_from_der(encoded) for encoded in signed.certificates]
    signer, source = _find_signer(info, embedded, expected)

    digest = DIGESTS_BY_OID.get(info.digest.oid)
    if digest is None:
        name = der.oid_text(info.digest.oid_element)
        raise ProtectionError(FailureKind.DIGEST_REFUSED, f"digest algorithm {name} is not supported")
    if digest.legacy and not policy.accept_sha1:
        raise ProtectionError(
            FailureKind.DIGEST_REFUSED,
            f"{digest.label} signatures are not accepted from this partner (policy)",
        )
    legacy = (digest.label,) if digest.legacy else ()
    pad, signature_label = _signature_padding(info.signature_algorithm, digest, policy)

    if info.signed_attrs is None:
        to_verify = content
    else:
        _check_attributes(info.signed_attrs, signed.content_type.contents, content, digest)
        # The signature covers the attributes DER-encoded as a SET, not with their [0] tag.
        to_verify = b"\x31" + info.signed_attrs.encoded[1:]
    public_key = signer.cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ProtectionError(
            FailureKind.SIGNATURE, "only RSA signatures are supported", signer.described(source)
        )
    try:
        public_key.verify(info.signature, to_verify, pad, digest.algorithm())
    except InvalidSignature:
        raise ProtectionError(
            FailureKind.SIGNATURE,
            "signature does not verify with the signer certificate's key (signature or signed data altered)",
            signer.described(source),
        ) from None
    others = tuple(r.cert for r in embedded if r is not signer)
    return Verified(content, signer, source, others, digest, signature_label, legacy)


def _find_signer(
    info: _SignerInfo, embedded: list[CertRecord], expected: Sequence[CertRecord]
) -> tuple[CertRecord, str]:
    for records, source in ((embedded, EMBEDDED), (expected, REGISTERED)):
        for record in records:
            if (info.serial == record.serial and info.issuer_der == record.issuer_der) or (
                info.ski is not None and info.ski == record.ski
            ):
                return record, source
    if info.issuer_der is not None:
        try:
            issuer = asn1_x509.Name.load(info.issuer_der).human_friendly
        except ValueError:  # parsed only here, lazily: a damaged name must not turn S02 into S01
            issuer = "unreadable name " + info.issuer_der[:64].hex().upper()
        described = f"issuer={issuer!r} serial={info.serial:X}"
    else:
        described = f"subjectKeyIdentifier={(info.ski or b'').hex().upper()}"
    raise ProtectionError(
        FailureKind.SIGNER_MISSING,
        f"the signer certificate ({described}) is neither in the message nor registered for the sender",
    )


def _signature_padding(
    algorithm: der.Algorithm, digest: DigestSpec, policy: ProtectionPolicy
) -> tuple[padding.AsymmetricPadding, str]:
    if algorithm.oid == RSA_ENCRYPTION or algorithm.oid in RSA_WITH:
        declared = RSA_WITH.get(algorithm.oid, digest.asn1_name)  # plain rsaEncryption: the digest decides
        if declared != digest.asn1_name:
            raise ProtectionError(
                FailureKind.SIGNATURE,
                f"signature algorithm hash {declared} differs from digest {digest.asn1_name}",
            )
        return padding.PKCS1v15(), f"RSA-PKCS1v1.5-{digest.label}"
    if algorithm.oid == RSASSA_PSS:
        if algorithm.parameters is None:
            raise ProtectionError(FailureKind.SIGNATURE, "RSASSA-PSS without parameters")
        params = algos.RSASSAPSSParams.load(algorithm.parameters.encoded)
        pss_hash = params["hash_algorithm"]["algorithm"].native
        mgf_hash = params["mask_gen_algorithm"]["parameters"]["algorithm"].native
        if pss_hash != digest.asn1_name or mgf_hash not in DIGESTS:
            raise ProtectionError(
                FailureKind.SIGNATURE, f"unsupported RSASSA-PSS parameters ({pss_hash}/{mgf_hash})"
            )
        if DIGESTS[mgf_hash].legacy and not policy.accept_sha1:
            raise ProtectionError(FailureKind.DIGEST_REFUSED, "SHA-1 in RSASSA-PSS is not accepted (policy)")
        mgf = padding.MGF1(DIGESTS[mgf_hash].algorithm())
        return padding.PSS(mgf=mgf, salt_length=params["salt_length"].native), f"RSASSA-PSS-{digest.label}"
    name = der.oid_text(algorithm.oid_element)
    raise ProtectionError(FailureKind.SIGNATURE, f"signature algorithm {name} is not supported")


def _check_attributes(attrs: der.Element, content_type: bytes, content: bytes, digest: DigestSpec) -> None:
    types: list[der.Element] = []
    digests: list[der.Element] = []
    for attr in attrs.children():
        attr_type, values = der.sequence(attr, "Attribute")
        if attr_type.contents == ATTR_CONTENT_TYPE:
            types += der.expect(values, der.UNIVERSAL, der.SET, "attrValues").children()
        elif attr_type.contents == ATTR_MESSAGE_DIGEST:
            digests += der.expect(values, der.UNIVERSAL, der.SET, "attrValues").children()
    if len(types) != 1 or len(digests) != 1:
        raise ProtectionError(
            FailureKind.SIGNATURE, "signed attributes need exactly one content-type and one message-digest"
        )
    if types[0].contents != content_type:
        raise ProtectionError(FailureKind.SIGNATURE, "signed content-type differs from the content's type")
    signed_digest = der.octets(der.expect(digests[0], der.UNIVERSAL, der.OCTET_STRING, "message-digest"))
    if not hmac.compare_digest(signed_digest, hashlib.new(digest.asn1_name, content).digest()):
        raise ProtectionError(
            FailureKind.CONTENT_DIGEST,
            "the content does not match the digest the sender signed (altered after signing)",
        )
