"""protect(): sign, then encrypt. unprotect(): decrypt, verify, check the signer.

Pure functions over prepared objects (Credential, CertificateChecker): no I/O, safe to call from a
thread pool. Everything that fails raises ProtectionError naming the check and the certificate.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from gateway.protection.algorithms import AlgorithmsSeen
from gateway.protection.certs import Credential, read_cms, record_of
from gateway.protection.checks import CertificateChecker, Purpose, check_key_usage, check_validity, now_utc
from gateway.protection.envelope import decrypt, encrypt
from gateway.protection.errors import UNREADABLE, CertificateInfo, FailureKind, ProtectionError
from gateway.protection.policy import DEFAULT_POLICY, ProtectionPolicy
from gateway.protection.signed import parse_signed, sign, verify

OUR_SIGNING = "our signing certificate"
RECEIVER_ENCRYPTION = "the receiver's encryption certificate"


def protect(
    content: bytes,
    *,
    signer: Credential,
    recipient: x509.Certificate,
    policy: ProtectionPolicy = DEFAULT_POLICY,
    checker: CertificateChecker | None = None,
    at: dt.datetime | None = None,
) -> bytes:
    """Sign ``content`` (SHA-256, RSA) and encrypt it for ``recipient`` with ``policy.send_cipher``.

    Returns DER. With a ``checker`` the receiver's certificate gets every check (chain, revocation);
    without one only validity and key usage, so a wrong certificate still fails here and not at the
    receiver.
    """
    at = at or now_utc()
    own = signer.record
    check_validity(own, at, OUR_SIGNING)
    check_key_usage(own, Purpose.SIGNING, OUR_SIGNING)
    receiver = record_of(recipient)
    if checker is not None:
        checker.check(receiver, Purpose.ENCRYPTION, policy=policy, at=at, source=RECEIVER_ENCRYPTION)
    else:
        check_validity(receiver, at, RECEIVER_ENCRYPTION)
        check_key_usage(receiver, Purpose.ENCRYPTION, RECEIVER_ENCRYPTION)
    return encrypt(sign(content, signer), receiver, policy.send_cipher)


@dataclass(frozen=True)
class Unprotected:
    content: bytes
    signer: x509.Certificate
    signer_info: CertificateInfo
    algorithms: AlgorithmsSeen
    decrypted_with: CertificateInfo
    rollover_key_used: bool  # decrypted with a previous key: the sender has an old certificate of ours
    revocation_unknown: bool  # accepted although no CRL could say (only when the policy allows it)
    notes: tuple[str, ...] = ()


def unprotect(
    data: bytes,
    *,
    credentials: Sequence[Credential],
    checker: CertificateChecker,
    expected_signers: Sequence[x509.Certificate] | None,
    policy: ProtectionPolicy = DEFAULT_POLICY,
    at: dt.datetime | None = None,
) -> Unprotected:
    """Decrypt, verify and check a message; return its content and who signed it.

    ``credentials``: our decryption keys, current first, then the ones kept for certificate rollover.
    ``expected_signers``: the certificates the address registry holds for the sender's HER-id; the
    signer must be one of them. ``None`` skips that check and is meant for operators' tools only.
    """
    at = at or now_utc()
    try:
        der = data if data[:1] == b"\x30" else read_cms(data)
        decrypted = decrypt(der, credentials, policy)
    except ProtectionError:
        raise
    except UNREADABLE as exc:
        # Hostile bytes must end as a refusal the caller knows how to answer, never as a crash
        # that a peer would read as "try again later".
        raise ProtectionError(FailureKind.MALFORMED, f"not a readable CMS message: {exc}") from None
    seen = AlgorithmsSeen(decrypted.cipher.label, decrypted.key_transport, legacy=decrypted.legacy)
    signed = parse_signed(decrypted.plaintext)
    expected = [record_of(c) for c in expected_signers] if expected_signers is not None else []
    try:
        verified = verify(signed, policy, expected)
        seen = AlgorithmsSeen(
            seen.content_encryption,
            seen.key_transport,
            verified.digest.label,
            verified.signature,
            seen.legacy + verified.legacy,
        )
        source = verified.signer_source
        checked = checker.validate(
            verified.signer, Purpose.SIGNING, at=at, intermediates=verified.certificates, source=source
        )
        if expected_signers is not None and all(r.der != verified.signer.der for r in expected):
            raise ProtectionError(
                FailureKind.NOT_REGISTERED,
                f"the signer is not among the {len(expected)} certificate(s) the address registry holds "
                "for the sender",
                verified.signer.described(source),
            )
        checked = checker.check_revocation(checked, policy=policy, at=at, source=source)
    except (ProtectionError, *UNREADABLE) as exc:
        if not isinstance(exc, ProtectionError):
            # A certificate in the SignedData that parses lazily can fail on first use of a field.
            exc = ProtectionError(FailureKind.UNTRUSTED, f"the signer's certificate cannot be read: {exc}")
        # The caller needs the (unverified) content to address an AppRec, and the algorithms for the log.
        exc.content = signed.content
        exc.algorithms = seen
        raise exc from None
    notes = checked.notes
    if decrypted.credential_index:
        notes += ("decrypted with a previous key: the sender uses an old encryption certificate of ours",)
    return Unprotected(
        content=verified.content,
        signer=verified.signer.cert,
        signer_info=verified.signer.described(source),
        algorithms=seen,
        decrypted_with=decrypted.credential.record.described(
            "our current decryption certificate"
            if not decrypted.credential_index
            else "a previous decryption certificate"
        ),
        rollover_key_used=bool(decrypted.credential_index),
        revocation_unknown=checked.revocation_unknown,
        notes=notes,
    )
