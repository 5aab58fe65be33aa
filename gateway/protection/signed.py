"""CMS SignedData: sign with python-cryptography, verify with asn1crypto parsing + cryptography RSA.

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

from asn1crypto import cms, core
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.protection.algorithms import DIGESTS, DigestSpec
from gateway.protection.certs import CertRecord, Credential, record_from_der
from gateway.protection.envelope import CANNOT_DECRYPT
from gateway.protection.errors import FailureKind, ProtectionError
from gateway.protection.policy import ProtectionPolicy

EMBEDDED = "embedded in the message"
REGISTERED = "the address registry (expected signer certificates)"


def sign(content: bytes, signer: Credential) -> bytes:
    builder = (
        pkcs7.PKCS7SignatureBuilder().set_data(content).add_signer(signer.cert, signer.key, hashes.SHA256())
    )
    # add_certificate() only after set_data()/add_signer(): those silently drop earlier certificates.
    for cert in signer.chain:
        builder = builder.add_certificate(cert)
    # Binary keeps the bytes as they are (no LF to CRLF); SMIMECapabilities mean nothing to our peers.
    options = [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoCapabilities]
    return builder.sign(Encoding.DER, options)


@dataclass(frozen=True)
class Verified:
    content: bytes
    signer: CertRecord
    signer_source: str
    certificates: tuple[x509.Certificate, ...]  # everything embedded, for chain building
    digest: DigestSpec
    signature: str
    legacy: tuple[str, ...]


def parse_signed(plaintext: bytes) -> cms.SignedData:
    """The decrypted SignedData. Failing to parse it is reported exactly like a failed decryption:
    after a substituted random key this is where the failure shows, and it must look the same."""
    try:
        info = cms.ContentInfo.load(plaintext)
        if info["content_type"].native != "signed_data":
            raise ValueError("not signed-data")
        signed = info["content"]
        signed["signer_infos"]  # noqa: B018 - forces parsing of the structure's outer layers
        return signed
    except (ValueError, TypeError, KeyError):
        raise ProtectionError(FailureKind.CANNOT_DECRYPT, CANNOT_DECRYPT) from None


def content_of(signed: cms.SignedData) -> bytes | None:
    """The embedded content, even before verification (an AppRec for a refused message needs it)."""
    try:
        content = signed["encap_content_info"]["content"]
        if isinstance(content, core.Void):
            return None
        return content.native if isinstance(content.native, bytes) else content.contents
    except (ValueError, TypeError, KeyError):
        return None


def verify(signed: cms.SignedData, policy: ProtectionPolicy, expected: Sequence[CertRecord]) -> Verified:
    try:
        return _verify(signed, policy, expected)
    except ProtectionError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtectionError(FailureKind.SIGNATURE, f"signed data is malformed: {exc}") from None


def _verify(signed: cms.SignedData, policy: ProtectionPolicy, expected: Sequence[CertRecord]) -> Verified:
    content = content_of(signed)
    if content is None:
        raise ProtectionError(
            FailureKind.MALFORMED, "signed data has no embedded content (detached signature)"
        )
    signer_infos = signed["signer_infos"]
    if len(signer_infos) != 1:
        raise ProtectionError(
            FailureKind.SIGNATURE, f"expected exactly one signer, found {len(signer_infos)}"
        )
    signer_info = signer_infos[0]
    embedded = [
        record_from_der(choice.chosen.dump())
        for choice in signed["certificates"] or ()
        if choice.name == "certificate"
    ]
    signer, source = _find_signer(signer_info["sid"], embedded, expected)

    digest = DIGESTS.get(signer_info["digest_algorithm"]["algorithm"].native)
    if digest is None:
        name = signer_info["digest_algorithm"]["algorithm"].native
        raise ProtectionError(FailureKind.DIGEST_REFUSED, f"digest algorithm {name} is not supported")
    legacy = [digest.label] if digest.legacy else []
    if digest.legacy and not policy.accept_sha1:
        raise ProtectionError(
            FailureKind.DIGEST_REFUSED,
            f"{digest.label} signatures are not accepted from this partner (policy)",
        )
    pad, signature_label = _signature_padding(signer_info, digest, policy)

    attrs = signer_info["signed_attrs"]
    if isinstance(attrs, core.Void):
        to_verify = content
    else:
        _check_attributes(attrs, signed["encap_content_info"]["content_type"].native, content, digest)
        # The signature covers the attributes DER-encoded as a SET, not with their [0] tag.
        encoded = attrs.dump()
        to_verify = b"\x31" + encoded[1:]
    public_key = signer.cert.public_key()
    if not isinstance(public_key, rsa.RSAPublicKey):
        raise ProtectionError(
            FailureKind.SIGNATURE, "only RSA signatures are supported", signer.described(source)
        )
    try:
        public_key.verify(signer_info["signature"].native, to_verify, pad, digest.algorithm())
    except InvalidSignature:
        raise ProtectionError(
            FailureKind.SIGNATURE,
            "signature does not verify with the signer certificate's key (signature or signed data altered)",
            signer.described(source),
        ) from None
    others = tuple(r.cert for r in embedded if r is not signer)
    return Verified(content, signer, source, others, digest, signature_label, tuple(legacy))


def _find_signer(
    sid: cms.SignerIdentifier, embedded: list[CertRecord], expected: Sequence[CertRecord]
) -> tuple[CertRecord, str]:
    if sid.name == "issuer_and_serial_number":
        issuer, serial = sid.chosen["issuer"].dump(), sid.chosen["serial_number"].native

        def matches(record: CertRecord) -> bool:
            return record.serial == serial and record.issuer_der == issuer

        described = f"issuer={sid.chosen['issuer'].human_friendly!r} serial={serial:X}"
    else:
        ski = sid.chosen.native

        def matches(record: CertRecord) -> bool:
            return record.ski == ski

        described = f"subjectKeyIdentifier={ski.hex().upper()}"
    for records, source in ((embedded, EMBEDDED), (expected, REGISTERED)):
        for record in records:
            if matches(record):
                return record, source
    raise ProtectionError(
        FailureKind.SIGNER_MISSING,
        f"the signer certificate ({described}) is neither in the message nor registered for the sender",
    )


def _signature_padding(
    signer_info: cms.SignerInfo, digest: DigestSpec, policy: ProtectionPolicy
) -> tuple[padding.AsymmetricPadding, str]:
    algorithm = signer_info["signature_algorithm"]
    kind = algorithm.signature_algo
    if kind == "rsassa_pkcs1v15":
        try:
            declared = algorithm.hash_algo
        except ValueError:
            declared = digest.asn1_name  # plain rsaEncryption: the digest algorithm decides
        if declared != digest.asn1_name:
            raise ProtectionError(
                FailureKind.SIGNATURE,
                f"signature algorithm hash {declared} differs from digest {digest.asn1_name}",
            )
        return padding.PKCS1v15(), f"RSA-PKCS1v1.5-{digest.label}"
    if kind == "rsassa_pss":
        params = algorithm["parameters"]
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
    raise ProtectionError(FailureKind.SIGNATURE, f"signature algorithm {kind} is not supported")


def _check_attributes(
    attrs: cms.CMSAttributes, content_type: str, content: bytes, digest: DigestSpec
) -> None:
    found: dict[str, list] = {}
    for attr in attrs:
        name = attr["type"].native
        if name in ("content_type", "message_digest"):
            found.setdefault(name, []).extend(attr["values"])
    types, digests = found.get("content_type", []), found.get("message_digest", [])
    if len(types) != 1 or len(digests) != 1:
        raise ProtectionError(
            FailureKind.SIGNATURE, "signed attributes need exactly one content-type and one message-digest"
        )
    if types[0].native != content_type:
        raise ProtectionError(
            FailureKind.SIGNATURE,
            f"signed content-type {types[0].native} differs from the content's {content_type}",
        )
    if not hmac.compare_digest(digests[0].native, hashlib.new(digest.asn1_name, content).digest()):
        raise ProtectionError(
            FailureKind.CONTENT_DIGEST,
            "the content does not match the digest the sender signed (altered after signing)",
        )
