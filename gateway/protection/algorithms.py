"""The algorithms komut knows, with their OIDs (as encoded bytes, to compare without decoding)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm
from cryptography.hazmat.primitives.ciphers.algorithms import AES

from gateway.protection.der import oid_contents


class Cipher(StrEnum):
    """Content encryption algorithms (all CBC), named as on the command line."""

    AES256 = "aes256"
    AES192 = "aes192"
    AES128 = "aes128"
    DES3 = "des3"


@dataclass(frozen=True)
class CipherSpec:
    cipher: Cipher
    oid: str
    asn1_name: str
    label: str
    key_length: int
    block_bytes: int
    factory: Callable[[bytes], BlockCipherAlgorithm]
    legacy: bool = False


CIPHERS: dict[Cipher, CipherSpec] = {
    Cipher.AES256: CipherSpec(
        Cipher.AES256, "2.16.840.1.101.3.4.1.42", "aes256_cbc", "AES-256-CBC", 32, 16, AES
    ),
    Cipher.AES192: CipherSpec(
        Cipher.AES192, "2.16.840.1.101.3.4.1.22", "aes192_cbc", "AES-192-CBC", 24, 16, AES
    ),
    Cipher.AES128: CipherSpec(
        Cipher.AES128, "2.16.840.1.101.3.4.1.2", "aes128_cbc", "AES-128-CBC", 16, 16, AES
    ),
    Cipher.DES3: CipherSpec(
        Cipher.DES3, "1.2.840.113549.3.7", "tripledes_3key", "3DES-CBC", 24, 8, TripleDES, legacy=True
    ),
}
CIPHERS_BY_OID = {oid_contents(spec.oid): spec for spec in CIPHERS.values()}


@dataclass(frozen=True)
class DigestSpec:
    oid: str
    asn1_name: str  # also the hashlib name
    label: str
    algorithm: type[hashes.HashAlgorithm]
    legacy: bool = False


DIGESTS: dict[str, DigestSpec] = {
    "sha1": DigestSpec("1.3.14.3.2.26", "sha1", "SHA-1", hashes.SHA1, legacy=True),
    "sha224": DigestSpec("2.16.840.1.101.3.4.2.4", "sha224", "SHA-224", hashes.SHA224),
    "sha256": DigestSpec("2.16.840.1.101.3.4.2.1", "sha256", "SHA-256", hashes.SHA256),
    "sha384": DigestSpec("2.16.840.1.101.3.4.2.2", "sha384", "SHA-384", hashes.SHA384),
    "sha512": DigestSpec("2.16.840.1.101.3.4.2.3", "sha512", "SHA-512", hashes.SHA512),
}
DIGESTS_BY_OID = {oid_contents(spec.oid): spec for spec in DIGESTS.values()}

# Signature algorithms: plain rsaEncryption (the digest algorithm decides), RSA with a named hash,
# and RSASSA-PSS (parameters decide).
RSA_ENCRYPTION = oid_contents("1.2.840.113549.1.1.1")
RSA_OAEP = oid_contents("1.2.840.113549.1.1.7")
RSASSA_PSS = oid_contents("1.2.840.113549.1.1.10")
RSA_WITH: dict[bytes, str] = {
    oid_contents("1.2.840.113549.1.1.5"): "sha1",
    oid_contents("1.2.840.113549.1.1.14"): "sha224",
    oid_contents("1.2.840.113549.1.1.11"): "sha256",
    oid_contents("1.2.840.113549.1.1.12"): "sha384",
    oid_contents("1.2.840.113549.1.1.13"): "sha512",
}

# CMS content types and the two signed attributes that matter.
DATA = oid_contents("1.2.840.113549.1.7.1")
SIGNED_DATA = oid_contents("1.2.840.113549.1.7.2")
ENVELOPED_DATA = oid_contents("1.2.840.113549.1.7.3")
CONTENT_TYPE_NAMES = {DATA: "data", SIGNED_DATA: "signed-data", ENVELOPED_DATA: "enveloped-data"}
ATTR_CONTENT_TYPE = oid_contents("1.2.840.113549.1.9.3")
ATTR_MESSAGE_DIGEST = oid_contents("1.2.840.113549.1.9.4")


@dataclass(frozen=True)
class AlgorithmsSeen:
    """What a received message used, for the log: peers still on 3DES or SHA-1 are worth naming."""

    content_encryption: str
    key_transport: str
    digest: str = ""
    signature: str = ""
    legacy: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [self.content_encryption, self.key_transport]
        parts += [p for p in (self.digest, self.signature) if p]
        text = ", ".join(parts)
        if self.legacy:
            text += f" (legacy: {', '.join(self.legacy)})"
        return text
