"""Parsed certificates, keys and CMS files, loaded once and cached: parsing is the hot path's cost."""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import email
import threading
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.protection.der import seq
from gateway.protection.errors import CertificateInfo

DER = serialization.Encoding.DER


@dataclass(frozen=True, eq=False)
class CertRecord:
    """A certificate with the identifiers CMS refers to it by, precomputed.

    ``issuer_der`` is the issuer name exactly as encoded in the certificate: CMS IssuerAndSerialNumber
    copies those bytes, so comparing bytes is both correct and far cheaper than comparing Names.
    """

    cert: x509.Certificate
    der: bytes
    issuer_der: bytes
    serial: int
    ski: bytes | None
    issuer_and_serial: bytes  # the CMS IssuerAndSerialNumber naming this certificate, encoded
    not_before: dt.datetime
    not_after: dt.datetime
    _info: list[CertificateInfo] = field(default_factory=list, repr=False)

    @property
    def info(self) -> CertificateInfo:
        if not self._info:
            self._info.append(CertificateInfo.of(self.cert))
        return self._info[0]

    def described(self, source: str) -> CertificateInfo:
        return self.info.with_source(source)


class _RecordCache:
    """Bounded cache keyed by DER. Cleared when full rather than LRU: safe without a lock under
    concurrent readers, and a full clear only costs a re-parse of the few certificates in use."""

    def __init__(self, limit: int = 4096) -> None:
        self._limit = limit
        self._records: dict[bytes, CertRecord] = {}
        self._lock = threading.Lock()

    def get(self, der: bytes, cert: x509.Certificate | None = None) -> CertRecord:
        found = self._records.get(der)
        if found is not None:
            return found
        record = _build_record(der, cert)
        with self._lock:
            if len(self._records) >= self._limit:
                self._records.clear()
            self._records[der] = record
        return record


def _build_record(der: bytes, cert: x509.Certificate | None) -> CertRecord:
    if cert is None:
        cert = x509.load_der_x509_certificate(der)
    tbs = asn1_x509.Certificate.load(der)["tbs_certificate"]
    try:
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    except x509.ExtensionNotFound:
        ski = None
    issuer_der = tbs["issuer"].dump()
    return CertRecord(
        cert=cert,
        der=der,
        issuer_der=issuer_der,
        serial=cert.serial_number,
        ski=ski,
        issuer_and_serial=seq(issuer_der, tbs["serial_number"].dump()),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


_CACHE = _RecordCache()
# Serialising a certificate to look it up costs ~15 us; callers mostly pass the same objects again
# (registry entries, trust anchors, chain members), so remember those by identity first.
_BY_IDENTITY: dict[int, CertRecord] = {}


def record_from_der(der: bytes) -> CertRecord:
    return _CACHE.get(der)


def record_of(cert: x509.Certificate) -> CertRecord:
    found = _BY_IDENTITY.get(id(cert))
    if found is not None and found.cert is cert:
        return found
    record = _CACHE.get(cert.public_bytes(DER), cert)
    if len(_BY_IDENTITY) >= 4096:
        _BY_IDENTITY.clear()
    # The record holds the certificate, so its id cannot be reused while this entry is cached...
    # unless the record in the DER cache is for another object with the same DER; check `is`.
    if record.cert is not cert:
        record = replace(record, cert=cert, _info=[])
    _BY_IDENTITY[id(cert)] = record
    return record


@dataclass(frozen=True, eq=False)
class Credential:
    """Our own private key with its certificate (and intermediates to send along when signing)."""

    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    chain: tuple[x509.Certificate, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.key, rsa.RSAPrivateKey):
            raise ValueError(f"{self.source or 'key'}: only RSA keys are supported")
        if self.key.public_key().public_numbers() != self.cert.public_key().public_numbers():
            raise ValueError(f"{self.source or 'key'}: private key does not belong to the certificate")

    @cached_property
    def record(self) -> CertRecord:
        return record_of(self.cert)

    @classmethod
    def load(cls, key_path: str | Path, cert_path: str | Path) -> Credential:
        certs = load_certificates(cert_path)
        return cls(load_private_key(key_path), certs[0], tuple(certs[1:]), source=str(cert_path))


def load_certificates(source: str | Path | bytes) -> list[x509.Certificate]:
    """All certificates in a PEM bundle, or the one in a DER file."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if b"-----BEGIN" in data:
        certs = x509.load_pem_x509_certificates(data)
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return certs


def load_certificate(source: str | Path | bytes) -> x509.Certificate:
    return load_certificates(source)[0]


def load_private_key(source: str | Path | bytes, password: bytes | None = None) -> rsa.RSAPrivateKey:
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password)
    else:
        key = serialization.load_der_private_key(data, password)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("only RSA private keys are supported")
    return key


def read_cms(data: bytes) -> bytes:
    """DER from DER, PEM ("PKCS7" or "CMS") or S/MIME (openssl cms's default output)."""
    head = data[:64].lstrip()
    if head.startswith(b"-----BEGIN"):
        lines = data.strip().splitlines()
        body = b"".join(line for line in lines if not line.startswith(b"-----"))
        return _b64(body)
    if head[:1] != b"\x30" and b"MIME-Version" in head:
        message = email.message_from_bytes(data)
        payload = message.get_payload(decode=True)
        if isinstance(payload, bytes):
            return payload
    return data


def _b64(body: bytes) -> bytes:
    try:
        return base64.b64decode(body, validate=False)
    except binascii.Error as exc:
        raise ValueError(f"PEM body is not base64: {exc}") from None


def to_pem(der: bytes, label: str = "PKCS7") -> bytes:
    body = base64.encodebytes(der).replace(b"\n", b"")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return b"\n".join([f"-----BEGIN {label}-----".encode(), *lines, f"-----END {label}-----".encode(), b""])
