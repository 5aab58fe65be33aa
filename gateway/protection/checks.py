"""Certificate checks: validity, key usage, chain to the trust anchors, revocation.

Path building and chain signatures are cryptography's ``x509.verification`` (Rust, maintained with
the library we already depend on). Its web-PKI profile is kept for CA certificates; end-entity
extension checks are relaxed because enterprise certificates carry no subjectAltName, and key usage
is checked here so that a wrong one gets its own, clear, failure.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

from cryptography import x509
from cryptography.x509.verification import ExtensionPolicy, PolicyBuilder, Store, VerificationError

from gateway.protection.certs import CertRecord, record_of
from gateway.protection.errors import FailureKind, ProtectionError
from gateway.protection.policy import DEFAULT_POLICY, ProtectionPolicy, UnknownRevocation
from gateway.protection.revocation import CrlSource, RevocationChecker, RevocationStatus


class Purpose(Enum):
    SIGNING = ("signing", "nonRepudiation or digitalSignature")
    ENCRYPTION = ("encryption", "keyEncipherment")

    def __init__(self, label: str, needs: str) -> None:
        self.label = label
        self.needs = needs


@dataclass(frozen=True)
class CheckedCertificate:
    record: CertRecord
    chain: tuple[CertRecord, ...]  # leaf first, trust anchor last
    revocation_unknown: bool = False
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class _Chain:
    chain: tuple[CertRecord, ...]
    valid_from: dt.datetime
    valid_until: dt.datetime


_KEY_USAGE_NAMES = (
    ("digital_signature", "digitalSignature"),
    ("content_commitment", "nonRepudiation"),
    ("key_encipherment", "keyEncipherment"),
    ("data_encipherment", "dataEncipherment"),
    ("key_agreement", "keyAgreement"),
    ("key_cert_sign", "keyCertSign"),
    ("crl_sign", "cRLSign"),
)


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def check_validity(record: CertRecord, at: dt.datetime, source: str) -> None:
    if at < record.not_before:
        raise ProtectionError(
            FailureKind.NOT_YET_VALID,
            f"certificate is not valid before {record.not_before:%Y-%m-%d %H:%M}Z",
            record.described(source),
        )
    if at > record.not_after:
        raise ProtectionError(
            FailureKind.EXPIRED,
            f"certificate expired {record.not_after:%Y-%m-%d %H:%M}Z",
            record.described(source),
        )


def key_usage_problem(cert: x509.Certificate, purpose: Purpose) -> str | None:
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return f"certificate has no keyUsage extension; a {purpose.label} certificate needs {purpose.needs}"
    if purpose is Purpose.SIGNING:
        ok = usage.digital_signature or usage.content_commitment
    else:
        ok = usage.key_encipherment
    if ok:
        return None
    present = [name for attr, name in _KEY_USAGE_NAMES if getattr(usage, attr)]
    return (
        f"certificate key usage is {', '.join(present) or 'empty'}; "
        f"a {purpose.label} certificate needs {purpose.needs}"
    )


# Key usage never changes for a certificate; protect() checks two certificates per message.
_KEY_USAGE: dict[tuple[bytes, Purpose], str | None] = {}


def cached_key_usage_problem(record: CertRecord, purpose: Purpose) -> str | None:
    key = (record.der, purpose)
    try:
        return _KEY_USAGE[key]
    except KeyError:
        pass
    if len(_KEY_USAGE) >= 4096:
        _KEY_USAGE.clear()
    problem = _KEY_USAGE[key] = key_usage_problem(record.cert, purpose)
    return problem


def check_key_usage(record: CertRecord, purpose: Purpose, source: str) -> None:
    problem = cached_key_usage_problem(record, purpose)
    if problem:
        raise ProtectionError(FailureKind.KEY_USAGE, problem, record.described(source))


class CertificateChecker:
    """Checks certificates against one set of trust anchors, caching what does not change per message.

    Built once per configuration (anchors are parsed into a Store once); chain results are cached per
    certificate until the chain's earliest expiry or ``cache_seconds``, whichever comes first.
    Revocation is looked up on every check (cheap: CRL signatures are verified once per CRL).
    """

    def __init__(
        self,
        trust_anchors: Sequence[x509.Certificate],
        *,
        intermediates: Sequence[x509.Certificate] = (),
        crl_source: CrlSource | None = None,
        cache_seconds: float = 300.0,
        cache_limit: int = 4096,
    ) -> None:
        if not trust_anchors:
            raise ValueError("at least one trust anchor is needed")
        self._store = Store(list(trust_anchors))
        self._intermediates = list(intermediates)
        self.revocation = RevocationChecker(crl_source)
        self._cache_seconds = dt.timedelta(seconds=cache_seconds)
        self._cache_limit = cache_limit
        self._chains: dict[bytes, _Chain] = {}

    def check(
        self,
        cert: x509.Certificate | CertRecord,
        purpose: Purpose,
        *,
        policy: ProtectionPolicy = DEFAULT_POLICY,
        at: dt.datetime | None = None,
        intermediates: Sequence[x509.Certificate] = (),
        source: str = "",
    ) -> CheckedCertificate:
        """Every check: validity, key usage, chain, revocation."""
        at = at or now_utc()
        checked = self.validate(cert, purpose, at=at, intermediates=intermediates, source=source)
        return self.check_revocation(checked, policy=policy, at=at, source=source)

    def validate(
        self,
        cert: x509.Certificate | CertRecord,
        purpose: Purpose,
        *,
        at: dt.datetime | None = None,
        intermediates: Sequence[x509.Certificate] = (),
        source: str = "",
    ) -> CheckedCertificate:
        """Validity, key usage and chain; revocation is separate so callers can put cheaper,
        final checks (is this the sender's certificate?) before one that may only say "retry"."""
        record = cert if isinstance(cert, CertRecord) else record_of(cert)
        at = at or now_utc()
        check_validity(record, at, source)
        check_key_usage(record, purpose, source)
        return CheckedCertificate(record, self._chain(record, at, intermediates, source))

    def _chain(
        self, record: CertRecord, at: dt.datetime, intermediates: Sequence[x509.Certificate], source: str
    ) -> tuple[CertRecord, ...]:
        cached = self._chains.get(record.der)
        if cached is not None and cached.valid_from <= at <= cached.valid_until:
            return cached.chain
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(at)
            .extension_policies(
                ca_policy=ExtensionPolicy.webpki_defaults_ca(), ee_policy=ExtensionPolicy.permit_all()
            )
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(record.cert, [*intermediates, *self._intermediates])
        except VerificationError as exc:
            raise ProtectionError(
                FailureKind.UNTRUSTED,
                f"no valid chain from issuer {record.info.issuer!r} to a configured trust anchor "
                f"(is the issuing CA, or its intermediate, configured?): {exc}",
                record.described(source),
            ) from None
        chain = tuple(record_of(c) for c in verified.chain)
        valid_from = max(r.not_before for r in chain)
        valid_until = min(min(r.not_after for r in chain), now_utc() + self._cache_seconds)
        if len(self._chains) >= self._cache_limit:
            self._chains.clear()
        self._chains[record.der] = _Chain(chain, valid_from, valid_until)
        return chain

    def check_revocation(
        self,
        checked: CheckedCertificate,
        *,
        policy: ProtectionPolicy = DEFAULT_POLICY,
        at: dt.datetime | None = None,
        source: str = "",
    ) -> CheckedCertificate:
        """Every certificate in the chain but the anchor, against its issuer's CRL."""
        at = at or now_utc()
        record, chain = checked.record, checked.chain
        notes: list[str] = []
        for index, subject in enumerate(chain[:-1]):
            where = source if index == 0 else f"intermediate CA in the chain of {record.info.subject}"
            answer = self.revocation.status(subject, chain[index + 1], at)
            if answer.status is RevocationStatus.GOOD:
                continue
            if answer.status is RevocationStatus.REVOKED:
                raise ProtectionError(FailureKind.REVOKED, answer.reason, subject.described(where))
            if policy.unknown_revocation is UnknownRevocation.RETRY:
                raise ProtectionError(
                    FailureKind.REVOCATION_UNKNOWN,
                    f"revocation status unknown: {answer.reason}",
                    subject.described(where),
                )
            notes.append(f"revocation status unknown for {subject.info.subject}: {answer.reason}")
        return CheckedCertificate(record, chain, bool(notes), tuple(notes))
