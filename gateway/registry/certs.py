"""Reading the registry's certificate files, and checking them for `komut registry check`.

Reading is the only I/O here; the checks are pure functions of a loaded registry and a clock.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import ExtensionOID, NameOID

from gateway.registry.model import CertificateFile, Party, Registry
from gateway.registry.problems import Problem, Severity

#: `komut registry check` warns about certificates that expire within this window.
EXPIRY_WARNING = dt.timedelta(days=30)


class CertificateReadError(Exception):
    """A certificate file that is missing, unreadable or not a certificate."""


def read_certificate(path: Path) -> x509.Certificate:
    """Read a PEM (first certificate in the file) or DER certificate."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CertificateReadError(f"missing certificate file {path}") from None
    except OSError as exc:
        raise CertificateReadError(f"cannot read certificate file {path}: {exc.strerror or exc}") from None
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
            return certs[0]
        return x509.load_der_x509_certificate(data)
    except (ValueError, IndexError) as exc:
        raise CertificateReadError(f"{path} is not a readable X.509 certificate ({exc})") from None


def read_optional(path: Path) -> x509.Certificate | None:
    """For `komut registry check`: the CA certificate or None if absent; still raises if broken."""
    return read_certificate(path) if path.exists() else None


def read_crl(path: Path) -> x509.CertificateRevocationList | None:
    if not path.exists():
        return None
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError as exc:
        raise CertificateReadError(f"{path} is not a readable CRL ({exc})") from None


# -- checks (pure) -----------------------------------------------------------------------------


def check_certificates(
    registry: Registry,
    *,
    now: dt.datetime | None = None,
    ca: x509.Certificate | None = None,
    crl: x509.CertificateRevocationList | None = None,
) -> list[Problem]:
    """Everything `komut registry check` says about the loaded certificates.

    An expired or revoked current certificate is an error: nobody can encrypt for, or verify,
    that party. The loader still accepts such a registry, so one party's lapsed certificate does
    not stop traffic to everyone else; `check` exists so operators and CI notice in advance.
    """
    now = now or dt.datetime.now(dt.UTC)
    problems: list[Problem] = []
    for party in registry.certificate_holders():
        certs = party.certificates
        assert certs is not None
        slots = (
            ("sign", certs.sign),
            ("enc", certs.enc),
            ("next_sign", certs.next_sign),
            ("next_enc", certs.next_enc),
        )
        for slot, file in slots:
            if file is None or file.certificate is None:
                continue
            problems += _check_one(registry, party, slot, file, now, ca, crl)
    return problems


def _check_one(
    registry: Registry,
    party: Party,
    slot: str,
    file: CertificateFile,
    now: dt.datetime,
    ca: x509.Certificate | None,
    crl: x509.CertificateRevocationList | None,
) -> list[Problem]:
    cert = file.certificate
    assert cert is not None
    field = f"certificates.{slot}"
    current = not slot.startswith("next_")
    out: list[Problem] = []

    def add(message: str, severity: Severity = Severity.WARNING) -> None:
        out.append(Problem(party.her_id, field, f"{file.path}: {message}", severity))

    expires = cert.not_valid_after_utc
    if expires < now:
        add(f"expired {expires:%Y-%m-%d}", Severity.ERROR if current else Severity.WARNING)
    elif expires - now <= EXPIRY_WARNING:
        add(f"expires {expires:%Y-%m-%d} (within {EXPIRY_WARNING.days} days)")
    if cert.not_valid_before_utc > now and current:
        add(f"not valid before {cert.not_valid_before_utc:%Y-%m-%d}")

    wanted = ("sign" in slot and _can_sign(cert)) or ("enc" in slot and _can_encrypt(cert))
    if not wanted:
        usage = "nonRepudiation or digitalSignature" if "sign" in slot else "keyEncipherment or keyAgreement"
        add(f"key usage lacks {usage}")

    org_no = registry.org_no(party.her_id)
    subject_numbers = _subject_numbers(cert)
    if org_no and subject_numbers and not any(org_no in value for value in subject_numbers):
        add(f"subject names organisation {', '.join(subject_numbers)}, party has {org_no}")

    if ca is not None:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError) as exc:
            add(f"not issued by the CA certificate ({type(exc).__name__})")
    if crl is not None and crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
        add("revoked by the CRL", Severity.ERROR if current else Severity.WARNING)
    return out


def _key_usage(cert: x509.Certificate) -> x509.KeyUsage | None:
    try:
        return cert.extensions.get_extension_for_oid(ExtensionOID.KEY_USAGE).value
    except x509.ExtensionNotFound:
        return None


def _can_sign(cert: x509.Certificate) -> bool:
    usage = _key_usage(cert)
    # No KeyUsage extension means no restriction (RFC 5280 §4.2.1.3).
    return usage is None or usage.content_commitment or usage.digital_signature


def _can_encrypt(cert: x509.Certificate) -> bool:
    usage = _key_usage(cert)
    return usage is None or usage.key_encipherment or usage.key_agreement


def _subject_numbers(cert: x509.Certificate) -> list[str]:
    """Organisation number fields of the subject: Norwegian enterprise certificates carry the
    organisation number as serialNumber (older) or organizationIdentifier "NTRNO-<orgnr>"."""
    oids = (NameOID.SERIAL_NUMBER, NameOID.ORGANIZATION_IDENTIFIER)
    return [str(attr.value) for oid in oids for attr in cert.subject.get_attributes_for_oid(oid)]
