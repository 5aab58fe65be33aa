"""CMS EnvelopedData: encrypt for one recipient, decrypt with one of our keys.

python-cryptography's builder is used where it can (AES-128/256 with RSA PKCS#1 v1.5); 3DES and
AES-192 are assembled with asn1crypto. Decryption is written here for every cipher, because
``pkcs7_decrypt_der`` refuses 3DES, AES-192, OAEP and key-id recipients, and one path means one
failure behaviour. That path must not be a padding oracle (Bleichenbacher): any key that fails to
unwrap is replaced by a random key of the right length (RFC 3218 section 2.3), so a bad wrapped key
and a bad message fail at the same later point with the same error.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from asn1crypto import algos, cms, core
from asn1crypto import x509 as asn1_x509
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers import Cipher as CipherContext
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from gateway.protection.algorithms import CIPHERS, CIPHERS_BY_ASN1, DIGESTS, Cipher, CipherSpec
from gateway.protection.certs import CertRecord, Credential
from gateway.protection.errors import FailureKind, ProtectionError
from gateway.protection.policy import ProtectionPolicy

CANNOT_DECRYPT = (
    "the content could not be decrypted with the private key of our certificate "
    "(encrypted with another key, or the message is damaged)"
)

_BUILDER_CIPHERS = {Cipher.AES128: algorithms.AES128, Cipher.AES256: algorithms.AES256}


@dataclass(frozen=True)
class Decrypted:
    plaintext: bytes
    credential: Credential
    credential_index: int  # 0 = current key, 1.. = kept for certificate rollover
    cipher: CipherSpec
    key_transport: str
    legacy: tuple[str, ...]


def encrypt(content: bytes, recipient: CertRecord, cipher: Cipher) -> bytes:
    builder_cipher = _BUILDER_CIPHERS.get(cipher)
    if builder_cipher is not None:
        builder = (
            pkcs7.PKCS7EnvelopeBuilder()
            .set_data(content)
            .add_recipient(recipient.cert)
            .set_content_encryption_algorithm(builder_cipher)
        )
        # Binary: without it the builder turns LF into CRLF and the receiver gets other bytes.
        return builder.encrypt(Encoding.DER, [pkcs7.PKCS7Options.Binary])
    return _encrypt_asn1(content, recipient, CIPHERS[cipher])


def _encrypt_asn1(content: bytes, recipient: CertRecord, spec: CipherSpec) -> bytes:
    key = os.urandom(spec.key_length)
    iv = os.urandom(spec.block_bytes)
    padder = sym_padding.PKCS7(spec.block_bytes * 8).padder()
    padded = padder.update(content) + padder.finalize()
    encryptor = CipherContext(spec.factory(key), modes.CBC(iv)).encryptor()
    encrypted = encryptor.update(padded) + encryptor.finalize()
    wrapped = recipient.cert.public_key().encrypt(key, padding.PKCS1v15())  # type: ignore[union-attr]
    recipient_info = cms.KeyTransRecipientInfo(
        {
            "version": "v0",
            "rid": cms.RecipientIdentifier(
                name="issuer_and_serial_number",
                value=cms.IssuerAndSerialNumber(
                    {"issuer": asn1_x509.Name.load(recipient.issuer_der), "serial_number": recipient.serial}
                ),
            ),
            "key_encryption_algorithm": {"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()},
            "encrypted_key": wrapped,
        }
    )
    enveloped = cms.EnvelopedData(
        {
            "version": "v0",
            "recipient_infos": [cms.RecipientInfo(name="ktri", value=recipient_info)],
            "encrypted_content_info": {
                "content_type": "data",
                "content_encryption_algorithm": {"algorithm": spec.asn1_name, "parameters": iv},
                "encrypted_content": encrypted,
            },
        }
    )
    return cms.ContentInfo({"content_type": "enveloped_data", "content": enveloped}).dump()


@dataclass(frozen=True)
class _Envelope:
    recipients: list[cms.KeyTransRecipientInfo]
    other_recipients: list[str]
    cipher_name: str
    iv: bytes | None
    encrypted: bytes | None


def _parse(der: bytes) -> _Envelope:
    try:
        info = cms.ContentInfo.load(der)
        content_type = info["content_type"].native
        if content_type != "enveloped_data":
            raise ProtectionError(
                FailureKind.MALFORMED, f"expected CMS enveloped-data, got {content_type or 'no content type'}"
            )
        enveloped = info["content"]
        recipients, others = [], []
        for recipient in enveloped["recipient_infos"]:
            if recipient.name == "ktri":
                recipients.append(recipient.chosen)
            else:
                others.append(recipient.name)
        content_info = enveloped["encrypted_content_info"]
        algorithm = content_info["content_encryption_algorithm"]
        name = algorithm["algorithm"].native
        iv = algorithm["parameters"].native if name in CIPHERS_BY_ASN1 else None
        encrypted = content_info["encrypted_content"].native
        return _Envelope(recipients, others, name, iv, encrypted)
    except ProtectionError:
        raise
    except (ValueError, TypeError, KeyError) as exc:
        raise ProtectionError(FailureKind.MALFORMED, f"not a readable CMS message: {exc}") from None


def _find_recipient(
    envelope: _Envelope, credentials: Sequence[Credential]
) -> tuple[int, Credential, cms.KeyTransRecipientInfo]:
    identities = []
    for recipient in envelope.recipients:
        rid = recipient["rid"]
        if rid.name == "issuer_and_serial_number":
            identities.append((rid.chosen["issuer"].dump(), rid.chosen["serial_number"].native, None))
        else:
            identities.append((None, None, rid.chosen.native))
    for index, credential in enumerate(credentials):
        record = credential.record
        for recipient, (issuer, serial, ski) in zip(envelope.recipients, identities, strict=True):
            if (issuer == record.issuer_der and serial == record.serial) or (
                ski is not None and ski == record.ski
            ):
                return index, credential, recipient
    raise ProtectionError(FailureKind.NOT_FOR_US, _not_for_us(envelope, identities, credentials))


def _not_for_us(envelope: _Envelope, identities: list, credentials: Sequence[Credential]) -> str:
    listed = []
    for issuer, serial, ski in identities:
        if issuer is not None:
            listed.append(f"issuer={asn1_x509.Name.load(issuer).human_friendly!r} serial={serial:X}")
        else:
            listed.append(f"subjectKeyIdentifier={ski.hex().upper()}")
    listed += [f"a {name} recipient" for name in envelope.other_recipients]
    ours = "; ".join(str(c.record.info) for c in credentials) or "none configured"
    return f"message is encrypted for {', '.join(listed) or 'nobody'}; our decryption certificates: {ours}"


def _key_transport(
    recipient: cms.KeyTransRecipientInfo, policy: ProtectionPolicy
) -> tuple[padding.AsymmetricPadding, str]:
    algorithm = recipient["key_encryption_algorithm"]
    name = algorithm["algorithm"].native
    if name == "rsaes_pkcs1v15":
        return padding.PKCS1v15(), "RSA-PKCS1v1.5"
    if name != "rsaes_oaep":
        raise ProtectionError(FailureKind.KEY_TRANSPORT_REFUSED, f"key transport {name} is not supported")
    if not policy.accept_oaep:
        raise ProtectionError(
            FailureKind.KEY_TRANSPORT_REFUSED,
            "RSA-OAEP key transport is not accepted from this partner (policy)",
        )
    try:
        params = algorithm["parameters"]
        if not isinstance(params, algos.RSAESOAEPParams):
            params = algos.RSAESOAEPParams({})
        digest = DIGESTS[params["hash_algorithm"]["algorithm"].native]
        mgf = params["mask_gen_algorithm"]
        mgf_digest = DIGESTS[mgf["parameters"]["algorithm"].native]
        label = params["p_source_algorithm"]["parameters"].native or None
    except (KeyError, ValueError, TypeError) as exc:
        raise ProtectionError(
            FailureKind.KEY_TRANSPORT_REFUSED, f"unsupported RSA-OAEP parameters: {exc}"
        ) from None
    oaep = padding.OAEP(mgf=padding.MGF1(mgf_digest.algorithm()), algorithm=digest.algorithm(), label=label)
    return oaep, f"RSA-OAEP-{digest.label}"


def decrypt(der: bytes, credentials: Sequence[Credential], policy: ProtectionPolicy) -> Decrypted:
    envelope = _parse(der)
    index, credential, recipient = _find_recipient(envelope, credentials)
    spec = CIPHERS_BY_ASN1.get(envelope.cipher_name)
    if spec is None:
        raise ProtectionError(
            FailureKind.CIPHER_REFUSED, f"content encryption {envelope.cipher_name} is not supported"
        )
    if spec.cipher not in policy.accepted_ciphers:
        raise ProtectionError(
            FailureKind.CIPHER_REFUSED, f"{spec.label} is not accepted from this partner (policy)"
        )
    pad, key_transport = _key_transport(recipient, policy)
    iv, encrypted = envelope.iv, envelope.encrypted
    if iv is None or len(iv) != spec.block_bytes:
        raise ProtectionError(FailureKind.MALFORMED, f"{spec.label} needs a {spec.block_bytes}-byte IV")
    if not encrypted or len(encrypted) % spec.block_bytes:
        raise ProtectionError(FailureKind.MALFORMED, "encrypted content is missing or not whole blocks")

    # Drawn before unwrapping so both outcomes cost the same; see the module docstring.
    substitute = os.urandom(spec.key_length)
    try:
        key = credential.key.decrypt(recipient["encrypted_key"].native, pad)
    except ValueError:
        key = substitute
    if len(key) != spec.key_length:
        key = substitute
    decryptor = CipherContext(spec.factory(key), modes.CBC(iv)).decryptor()
    padded = decryptor.update(encrypted) + decryptor.finalize()
    unpadder = sym_padding.PKCS7(spec.block_bytes * 8).unpadder()
    try:
        plaintext = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise ProtectionError(
            FailureKind.CANNOT_DECRYPT, CANNOT_DECRYPT, credential.record.described(_key_source(index))
        ) from None
    legacy = (spec.label,) if spec.legacy else ()
    return Decrypted(plaintext, credential, index, spec, key_transport, legacy)


def _key_source(index: int) -> str:
    return "our current decryption certificate" if index == 0 else "our previous decryption certificate"


__all__ = ["CANNOT_DECRYPT", "Decrypted", "decrypt", "encrypt"]
