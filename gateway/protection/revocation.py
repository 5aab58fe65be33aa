"""Revocation from CRLs: where CRLs come from (a Protocol) and what a CRL says about a certificate.

The core never fetches anything: a ``CrlSource`` hands over CRLs it already has. Files live here;
fetching from http distribution points and caching until nextUpdate is ``adapters.crl_http``.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509

from gateway.protection.certs import CertRecord

# Issuers' and our clocks disagree a little; a CRL issued "in the future" by this much is still fine.
CLOCK_SKEW = dt.timedelta(minutes=5)


@runtime_checkable
class CrlSource(Protocol):
    def crls(self, issuer: x509.Certificate, urls: Sequence[str]) -> Sequence[x509.CertificateRevocationList]:
        """The CRLs this source has for certificates issued by ``issuer``.

        ``urls`` are the certificate's http distribution points, for sources that fetch by URL. Must
        not block on the network: an empty answer means "unknown for now".
        """
        ...


def crl_urls(cert: x509.Certificate) -> tuple[str, ...]:
    """The http(s) CRL distribution points of a certificate."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    urls: list[str] = []
    for point in points:
        for name in point.full_name or ():
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith("http"):
                urls.append(name.value)
    return tuple(urls)


def load_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """Every CRL in a PEM file, or the one in a DER file."""
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    crls = []
    for block in data.split(b"-----END X509 CRL-----")[:-1]:
        crls.append(x509.load_pem_x509_crl(block + b"-----END X509 CRL-----\n"))
    return crls


class StaticCrlSource:
    """CRLs held in memory, found by issuer name."""

    def __init__(self, crls: Iterable[x509.CertificateRevocationList] = ()) -> None:
        self._by_issuer: dict[bytes, list[x509.CertificateRevocationList]] = {}
        self.replace(crls)

    def replace(self, crls: Iterable[x509.CertificateRevocationList]) -> None:
        by_issuer: dict[bytes, list[x509.CertificateRevocationList]] = {}
        for crl in crls:
            by_issuer.setdefault(crl.issuer.public_bytes(), []).append(crl)
        self._by_issuer = by_issuer

    def crls(self, issuer: x509.Certificate, urls: Sequence[str]) -> Sequence[x509.CertificateRevocationList]:
        return self._by_issuer.get(issuer.subject.public_bytes(), ())


class FileCrlSource(StaticCrlSource):
    """CRLs from files (PEM or DER), re-read when a file changes: operators drop new CRLs in place."""

    def __init__(self, paths: Iterable[str | Path], recheck_seconds: float = 10.0) -> None:
        self._paths = [Path(p) for p in paths]
        self._recheck = recheck_seconds
        self._next_check = 0.0
        self._stamps: tuple[tuple[int, int], ...] = ()
        self._lock = threading.Lock()
        super().__init__()
        self._reload_if_changed(force=True)

    def crls(self, issuer: x509.Certificate, urls: Sequence[str]) -> Sequence[x509.CertificateRevocationList]:
        if time.monotonic() >= self._next_check:
            self._reload_if_changed()
        return super().crls(issuer, urls)

    def _reload_if_changed(self, force: bool = False) -> None:
        with self._lock:
            self._next_check = time.monotonic() + self._recheck
            stamps = tuple(_stamp(p) for p in self._paths)
            if stamps == self._stamps and not force:
                return
            crls: list[x509.CertificateRevocationList] = []
            for path in self._paths:
                try:
                    crls.extend(load_crls(path.read_bytes()))
                except (OSError, ValueError):
                    # An unreadable CRL leaves its issuer's status unknown, which the policy handles;
                    # on the very first load, though, a typo in a path should be loud.
                    if force:
                        raise
            self._stamps = stamps
            self.replace(crls)


def _stamp(path: Path) -> tuple[int, int]:
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


class RevocationStatus(Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class RevocationAnswer:
    status: RevocationStatus
    reason: str = ""


@dataclass(eq=False)
class _CheckedCrl:
    crl: x509.CertificateRevocationList
    problem: str  # empty when the CRL is genuine
    this_update: dt.datetime
    next_update: dt.datetime | None
    by_serial: dict[int, str | None] = field(default_factory=dict)


class RevocationChecker:
    """Answers "is this certificate revoked?" from a CrlSource, checking each CRL's signature once."""

    def __init__(self, source: CrlSource | None, cache_limit: int = 256) -> None:
        self.source = source
        self._checked: dict[tuple[int, bytes], _CheckedCrl] = {}
        self._urls: dict[bytes, tuple[str, ...]] = {}
        self._limit = cache_limit

    def status(self, record: CertRecord, issuer_record: CertRecord, at: dt.datetime) -> RevocationAnswer:
        issuer = issuer_record.cert
        urls = self._urls.get(record.der)
        if urls is None:
            if len(self._urls) >= 4 * self._limit:
                self._urls.clear()
            urls = self._urls[record.der] = crl_urls(record.cert)
        crls = self.source.crls(issuer, urls) if self.source is not None else ()
        issuer_name = issuer_record.info.subject
        if not crls:
            where = f" (distribution points: {', '.join(urls)})" if urls else ""
            return RevocationAnswer(
                RevocationStatus.UNKNOWN, f"no CRL available for issuer {issuer_name!r}{where}"
            )
        problems: list[str] = []
        good = False
        # Every usable CRL is consulted: with an old and a new CRL at hand, only the new one may
        # list a revocation.
        for crl in crls:
            checked = self._check(crl, issuer_record)
            if checked.problem:
                problems.append(checked.problem)
                continue
            if checked.this_update > at + CLOCK_SKEW:
                problems.append(
                    f"CRL from {issuer_name!r} is dated in the future ({checked.this_update:%Y-%m-%d %H:%M}Z)"
                )
                continue
            if checked.next_update is not None and at >= checked.next_update:
                problems.append(
                    f"CRL from {issuer_name!r} is out of date (nextUpdate {checked.next_update:%Y-%m-%d %H:%M}Z)"
                )
                continue
            answer = self._lookup(checked, record.serial)
            if answer.status is RevocationStatus.REVOKED:
                return answer
            good = True
        if good:
            return RevocationAnswer(RevocationStatus.GOOD)
        return RevocationAnswer(RevocationStatus.UNKNOWN, "; ".join(problems))

    def _lookup(self, checked: _CheckedCrl, serial: int) -> RevocationAnswer:
        if serial in checked.by_serial:
            detail = checked.by_serial[serial]
        else:
            entry = checked.crl.get_revoked_certificate_by_serial_number(serial)
            detail = None if entry is None else _describe_revocation(entry)
            checked.by_serial[serial] = detail
        if detail is None:
            return RevocationAnswer(RevocationStatus.GOOD)
        return RevocationAnswer(RevocationStatus.REVOKED, detail)

    def _check(self, crl: x509.CertificateRevocationList, issuer_record: CertRecord) -> _CheckedCrl:
        # Keyed by object identity: sources hand out the same object until they load a new CRL, and
        # the entry keeps the CRL alive so the id cannot be reused while cached. The issuer is part of
        # the key because a re-keyed CA has two certificates with one name.
        key = (id(crl), issuer_record.der)
        checked = self._checked.get(key)
        if checked is not None and checked.crl is crl:
            return checked
        issuer = issuer_record.cert
        problem = ""
        if crl.issuer.public_bytes() != issuer.subject.public_bytes():
            problem = f"CRL issuer {crl.issuer.rfc4514_string()!r} is not {issuer.subject.rfc4514_string()!r}"
        elif not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
            problem = f"CRL claiming to be from {crl.issuer.rfc4514_string()!r} has a bad signature"
        checked = _CheckedCrl(crl, problem, crl.last_update_utc, crl.next_update_utc)
        if len(self._checked) >= self._limit:
            self._checked.clear()
        self._checked[key] = checked
        return checked


def _describe_revocation(entry: x509.RevokedCertificate) -> str:
    text = f"revoked on {entry.revocation_date_utc:%Y-%m-%d %H:%M}Z"
    try:
        reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
        text += f" (reason: {reason.name})"
    except x509.ExtensionNotFound:
        pass
    return text


__all__ = [
    "CrlSource",
    "FileCrlSource",
    "RevocationAnswer",
    "RevocationChecker",
    "RevocationStatus",
    "StaticCrlSource",
    "crl_urls",
    "load_crls",
]
