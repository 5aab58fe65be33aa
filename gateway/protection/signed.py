"""CMS SignedData: signed with python-cryptography's PKCS7SignatureBuilder, verified here.

cryptography has no public API to verify a CMS signature. Verification here is the RFC 5652
section 5.4/5.6 procedure and nothing more: one signer, content embedded, message-digest attribute
compared with the content, signature checked over the DER of the signed attributes (or over the
content when there are none). Certificate checks are ``checks.py``'s job.
"""

from __future__ import annotations

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
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

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
from gateway.protection.certs import CertRecord, Credential, record_from_der
from gateway.protection.envelope import CANNOT_DECRYPT
from gateway.protection.errors import UNREADABLE, FailureKind, ProtectionError
from gateway.protection.policy import ProtectionPolicy

EMBEDDED = "the message's SignedData"
REGISTERED = "the address registry (expected signer certificates)"


def sign(content: bytes, signer: Credential) -> bytes:
    """SignedData: content embedded, SHA-256, RSA PKCS#1 v1.5, our certificate (and intermediates)."""
    builder = (
        pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(signer.cert, signer.key, hashes.SHA256())
    )
    # add_certificate() only after set_data()/add_signer(): those silently drop earlier certificates.
    for cert in signer.chain:
        builder = builder.add_certificate(cert)
    # Binary keeps the bytes as they are (no LF to CRLF); SMIMECapabilities mean nothing to our peers.
    return builder.sign(Encoding.DER, [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities])


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
