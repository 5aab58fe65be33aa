"""A demo/test PKI: a root CA, a signing and an encryption certificate per party, a CRL, and
deliberately broken certificates for tests. Keys are written unencrypted: NOT FOR PRODUCTION.

Layout of ``init_pki(DIR, ...)`` (the address registry's demo data relies on it)::

    DIR/ca.pem  ca.key  crl.pem
    DIR/parties/<her_id>/sign.pem  sign.key  enc.pem  enc.key
    DIR/test/revoked.*  expired.*  not-yet-valid.*  wrong-usage.*  untrusted.*  untrusted-ca.pem
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from gateway.protection.certs import Credential

CA_NAME = "komut demo CA - NOT FOR PRODUCTION"
UNTRUSTED_CA_NAME = "komut untrusted test CA - NOT FOR PRODUCTION"
TEST_ORGNR = "999999999"  # fictional, like everything in the demo network
KEY_SIZE = 2048

SIGNING_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=True,  # nonRepudiation, as on Norwegian enterprise signing certificates
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
ENCRYPTION_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=True,
    data_encipherment=True,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)
CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=KEY_SIZE)


def _new_keys(count: int) -> list[rsa.RSAPrivateKey]:
    # RSA key generation releases the GIL: threads make `pki init` for ~40 parties twice as fast.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return list(pool.map(lambda _: new_key(), range(count)))


def party_name(name: str, orgnr: str) -> x509.Name:
    # Like Buypass enterprise certificates: the organisation number is the subject's serialNumber.
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "NO"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
            x509.NameAttribute(NameOID.SERIAL_NUMBER, orgnr),
        ]
    )


@dataclass(frozen=True)
class Issued:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate

    def credential(self) -> Credential:
        return Credential(self.key, self.cert)

    def write(self, directory: Path, stem: str) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"{stem}.pem").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / f"{stem}.key", self.key)


def _write_key(path: Path, key: rsa.RSAPrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)


@dataclass
class DemoCa:
    key: rsa.RSAPrivateKey
    cert: x509.Certificate
    crl_url: str | None = None

    @classmethod
    def create(
        cls,
        name: str = CA_NAME,
        *,
        now: dt.datetime | None = None,
        days: int = 3650,
        key: rsa.RSAPrivateKey | None = None,
        crl_url: str | None = None,
    ) -> DemoCa:
        now = now or dt.datetime.now(dt.UTC)
        key = key or new_key()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "NO"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "komut demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, cert, crl_url)

    def issue(
        self,
        subject: x509.Name,
        usage: x509.KeyUsage,
        *,
        not_before: dt.datetime,
        not_after: dt.datetime,
        key: rsa.RSAPrivateKey | None = None,
    ) -> Issued:
        key = key or new_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        if self.crl_url:
            point = x509.DistributionPoint([x509.UniformResourceIdentifier(self.crl_url)], None, None, None)
            builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
        return Issued(key, builder.sign(self.key, hashes.SHA256()))

    def intermediate(self, name: str, *, key: rsa.RSAPrivateKey | None = None, days: int = 1825) -> DemoCa:
        """A subordinate CA, as national CAs issue enterprise certificates (root, then issuing CA)."""
        key = key or new_key()
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "NO"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "komut demo"),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(min(now + dt.timedelta(days=days), self.cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(CA_USAGE, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
            .sign(self.key, hashes.SHA256())
        )
        return DemoCa(key, cert, self.crl_url)

    def crl(
        self,
        revoked: Iterable[x509.Certificate] = (),
        *,
        now: dt.datetime | None = None,
        next_update: dt.datetime | None = None,
        number: int = 1,
    ) -> x509.CertificateRevocationList:
        now = now or dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.cert.subject)
            .last_update(now - dt.timedelta(minutes=1))
            .next_update(next_update or now + dt.timedelta(days=365))
            .add_extension(x509.CRLNumber(number), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False
            )
        )
        for cert in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(cert.serial_number)
                .revocation_date(now - dt.timedelta(minutes=5))
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)
        return builder.sign(self.key, hashes.SHA256())

    @classmethod
    def load(cls, directory: str | Path) -> DemoCa:
        """The CA of a PKI made by init_pki (to issue more certificates or a new CRL)."""
        directory = Path(directory)
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError("the demo CA key is not RSA")
        return cls(key, x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes()))

    def write(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ca.pem").write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        _write_key(directory / "ca.key", self.key)


@dataclass(frozen=True)
class Party:
    her_id: int
    name: str
    orgnr: str
    sign: Issued
    enc: Issued


@dataclass
class DemoPki:
    directory: Path
    ca: DemoCa
    crl: x509.CertificateRevocationList
    parties: dict[int, Party] = field(default_factory=dict)
    test: dict[str, Issued] = field(default_factory=dict)
    untrusted_ca: DemoCa | None = None


TEST_CERTIFICATES = ("revoked", "expired", "not-yet-valid", "wrong-usage", "untrusted")


def init_pki(
    directory: str | Path,
    holders: Iterable[tuple[int, str, str]],
    *,
    crl_url: str | None = None,
    now: dt.datetime | None = None,
    years: int = 3,
) -> DemoPki:
    """Create the demo PKI in ``directory`` for ``holders`` = (HER-id, name, organisation number)."""
    directory = Path(directory)
    now = now or dt.datetime.now(dt.UTC)
    holders = list(holders)
    keys = _new_keys(2 + 2 * len(holders) + len(TEST_CERTIFICATES))
    ca = DemoCa.create(now=now, key=keys.pop(), crl_url=crl_url)
    ca.write(directory)
    start, end = (
        now - dt.timedelta(hours=1),
        min(now + dt.timedelta(days=365 * years), ca.cert.not_valid_after_utc),
    )

    pki = DemoPki(directory, ca, crl=ca.crl(now=now))
    for her_id, name, orgnr in holders:
        subject = party_name(name, orgnr)
        sign = ca.issue(subject, SIGNING_USAGE, not_before=start, not_after=end, key=keys.pop())
        enc = ca.issue(subject, ENCRYPTION_USAGE, not_before=start, not_after=end, key=keys.pop())
        party_dir = directory / "parties" / str(her_id)
        sign.write(party_dir, "sign")
        enc.write(party_dir, "enc")
        pki.parties[her_id] = Party(her_id, name, orgnr, sign, enc)

    def test_name(what: str) -> x509.Name:
        return party_name(f"komut test party - {what}", TEST_ORGNR)

    day = dt.timedelta(days=1)
    test = pki.test
    test["revoked"] = ca.issue(
        test_name("revoked"), SIGNING_USAGE, not_before=start, not_after=end, key=keys.pop()
    )
    test["expired"] = ca.issue(
        test_name("expired"), SIGNING_USAGE, not_before=now - 400 * day, not_after=now - day, key=keys.pop()
    )
    test["not-yet-valid"] = ca.issue(
        test_name("not yet valid"), SIGNING_USAGE, not_before=now + 30 * day, not_after=end, key=keys.pop()
    )
    test["wrong-usage"] = ca.issue(
        test_name("wrong key usage"), ENCRYPTION_USAGE, not_before=start, not_after=end, key=keys.pop()
    )
    untrusted = DemoCa.create(UNTRUSTED_CA_NAME, now=now, key=keys.pop())
    test["untrusted"] = untrusted.issue(
        test_name("untrusted"), SIGNING_USAGE, not_before=start, not_after=end, key=keys.pop()
    )
    pki.untrusted_ca = untrusted
    test_dir = directory / "test"
    for stem, issued in test.items():
        issued.write(test_dir, stem)
    (test_dir / "untrusted-ca.pem").write_bytes(untrusted.cert.public_bytes(serialization.Encoding.PEM))

    pki.crl = ca.crl([test["revoked"].cert], now=now)
    (directory / "crl.pem").write_bytes(pki.crl.public_bytes(serialization.Encoding.PEM))
    (directory / "README.txt").write_text(
        f"Demo PKI made by `komut pki init` on {now:%Y-%m-%d}. NOT FOR PRODUCTION: the keys are not\n"
        "protected and anyone with this directory can sign as any party.\n"
    )
    return pki


def load_party(directory: str | Path, her_id: int) -> tuple[Credential, Credential]:
    """(signing, encryption) credentials of one party of a PKI made by init_pki."""
    party_dir = Path(directory) / "parties" / str(her_id)
    return (
        Credential.load(party_dir / "sign.key", party_dir / "sign.pem"),
        Credential.load(party_dir / "enc.key", party_dir / "enc.pem"),
    )
