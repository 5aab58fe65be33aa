"""Failure kinds and the exception that carries everything an operator needs to act on one."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

if TYPE_CHECKING:
    from gateway.protection.algorithms import AlgorithmsSeen


# What parsing hostile CMS or certificate bytes can raise besides ProtectionError: asn1crypto raises
# ValueError (and lazily, on first use of a field), cryptography its own types for certificates it
# cannot take. Readers turn these into a ProtectionError, never a crash.
UNREADABLE = (
    ValueError,
    TypeError,
    IndexError,
    KeyError,
    UnsupportedAlgorithm,
    x509.InvalidVersion,
    x509.DuplicateExtension,
    x509.UnsupportedGeneralNameType,
    x509.AttributeNotFound,
)


class AppRecCode(StrEnum):
    """Kodeverk 8221 codes for signature and certificate errors (what the AppRec says)."""

    S01 = "S01"  # signature error
    S02 = "S02"  # invalid certificate
    S03 = "S03"  # revoked certificate
    S99 = "S99"  # other signature/certificate error


class FailureKind(Enum):
    """The check that failed.

    Each kind says how the gateway answers: with an AppRec code when the content could be read (the
    AppRec needs the MsgHead), otherwise with a transport error (Helsenorge errorCondition names); a
    retryable kind means "keep the message, try again later".
    """

    # Before decryption: the sender cannot get an AppRec because we never saw the content.
    MALFORMED = ("cms-structure", None, "transport:unsupported-message", False)
    CIPHER_REFUSED = ("content-encryption-algorithm", None, "transport:unsupported-message", False)
    KEY_TRANSPORT_REFUSED = ("key-transport-algorithm", None, "transport:unsupported-message", False)
    NOT_FOR_US = ("recipient", None, "transport:invalid-certificate", False)
    CANNOT_DECRYPT = ("decryption", None, "transport:invalid-certificate", False)
    # After decryption: the content is known, so these become AppRec errors.
    DIGEST_REFUSED = ("digest-algorithm", AppRecCode.S01, "transport:invalid-certificate", False)
    CONTENT_DIGEST = ("content-digest", AppRecCode.S01, "transport:invalid-certificate", False)
    SIGNATURE = ("signature", AppRecCode.S01, "transport:invalid-certificate", False)
    SIGNER_MISSING = ("signer-certificate", AppRecCode.S02, "transport:missing-certificate", False)
    EXPIRED = ("validity-not-after", AppRecCode.S02, "transport:expired-certificate", False)
    NOT_YET_VALID = ("validity-not-before", AppRecCode.S02, "transport:invalid-certificate", False)
    KEY_USAGE = ("key-usage", AppRecCode.S02, "transport:invalid-certificate", False)
    UNTRUSTED = ("chain", AppRecCode.S02, "transport:unverified-certificate", False)
    NOT_REGISTERED = ("registered-signer", AppRecCode.S02, "transport:invalid-certificate", False)
    REVOKED = ("revocation", AppRecCode.S03, "transport:revoked-certificate", False)
    REVOCATION_UNKNOWN = ("revocation-status", None, "transport:revoked-certificate-offline", True)
    OTHER = ("other", AppRecCode.S99, "transport:internal-error", False)

    def __init__(self, check: str, apprec: AppRecCode | None, transport: str, retryable: bool) -> None:
        self.check = check
        self.apprec = apprec
        self.transport = transport
        self.retryable = retryable


@dataclass(frozen=True)
class CertificateInfo:
    """What an operator needs to find a certificate: in the registry, in a CA's CRL, in a key store."""

    subject: str
    serial: str
    issuer: str
    sha256: str
    not_before: dt.datetime
    not_after: dt.datetime
    source: str = ""

    @classmethod
    def of(cls, cert: x509.Certificate, source: str = "") -> CertificateInfo:
        return cls(
            subject=name_text(cert.subject),
            serial=format_serial(cert.serial_number),
            issuer=name_text(cert.issuer),
            sha256=cert.fingerprint(hashes.SHA256()).hex().upper(),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            source=source,
        )

    def with_source(self, source: str) -> CertificateInfo:
        return CertificateInfo(
            self.subject, self.serial, self.issuer, self.sha256, self.not_before, self.not_after, source
        )

    def __str__(self) -> str:
        where = f", from {self.source}" if self.source else ""
        return (
            f"subject={self.subject!r} serial={self.serial} issuer={self.issuer!r} "
            f"sha256={self.sha256}{where}"
        )


# rfc4514_string() only knows the RFC 4514 short names; the organisation number is a serialNumber.
_NAME_OVERRIDES = {
    NameOID.SERIAL_NUMBER: "serialNumber",
    NameOID.ORGANIZATION_IDENTIFIER: "organizationIdentifier",
}


def name_text(name: x509.Name) -> str:
    return name.rfc4514_string(_NAME_OVERRIDES)


def format_serial(serial: int) -> str:
    # CA portals and `openssl x509 -serial` show serials as hex, so operators can paste this one.
    return format(serial, "X")


@dataclass(eq=False)
class ProtectionError(Exception):
    """A refused message or certificate.

    ``content`` is the decrypted but *unverified* content when decryption succeeded, so the caller
    can address an AppRec; it must not be processed as if it came from the sender.
    """

    kind: FailureKind
    reason: str
    certificate: CertificateInfo | None = None
    content: bytes | None = field(default=None, repr=False)
    algorithms: AlgorithmsSeen | None = None

    def __post_init__(self) -> None:
        super().__init__(str(self))

    @property
    def apprec(self) -> AppRecCode | None:
        return self.kind.apprec

    @property
    def transport_error(self) -> str:
        return self.kind.transport

    @property
    def retryable(self) -> bool:
        return self.kind.retryable

    def __str__(self) -> str:
        answer = self.kind.apprec.value if self.kind.apprec else self.kind.transport
        if self.kind.retryable:
            answer += ", retry later"
        text = f"{self.kind.check} check failed ({answer}): {self.reason}"
        if self.certificate is not None:
            text += f"; certificate {self.certificate}"
        return text
