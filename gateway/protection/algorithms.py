"""The algorithms komut knows, keyed the way asn1crypto names their OIDs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import BlockCipherAlgorithm
from cryptography.hazmat.primitives.ciphers.algorithms import AES


class Cipher(StrEnum):
    """Content encryption algorithms (all CBC), named as on the command line."""

    AES256 = "aes256"
    AES192 = "aes192"
    AES128 = "aes128"
    DES3 = "des3"


@dataclass(frozen=True)
class CipherSpec:
    cipher: Cipher
    asn1_name: str
    label: str
    key_length: int
    block_bytes: int
    factory: Callable[[bytes], BlockCipherAlgorithm]
    legacy: bool = False


CIPHERS: dict[Cipher, CipherSpec] = {
    Cipher.AES256: CipherSpec(Cipher.AES256, "aes256_cbc", "AES-256-CBC", 32, 16, AES),
    Cipher.AES192: CipherSpec(Cipher.AES192, "aes192_cbc", "AES-192-CBC", 24, 16, AES),
    Cipher.AES128: CipherSpec(Cipher.AES128, "aes128_cbc", "AES-128-CBC", 16, 16, AES),
    Cipher.DES3: CipherSpec(Cipher.DES3, "tripledes_3key", "3DES-CBC", 24, 8, TripleDES, legacy=True),
}
CIPHERS_BY_ASN1 = {spec.asn1_name: spec for spec in CIPHERS.values()}


@dataclass(frozen=True)
class DigestSpec:
    asn1_name: str
    label: str
    algorithm: type[hashes.HashAlgorithm]
    legacy: bool = False


DIGESTS: dict[str, DigestSpec] = {
    "sha1": DigestSpec("sha1", "SHA-1", hashes.SHA1, legacy=True),
    "sha224": DigestSpec("sha224", "SHA-224", hashes.SHA224),
    "sha256": DigestSpec("sha256", "SHA-256", hashes.SHA256),
    "sha384": DigestSpec("sha384", "SHA-384", hashes.SHA384),
    "sha512": DigestSpec("sha512", "SHA-512", hashes.SHA512),
}


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
