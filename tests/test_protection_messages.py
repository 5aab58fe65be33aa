"""protect/unprotect through the Python API: every refusal names its check, code and certificate."""

from __future__ import annotations

import datetime as dt
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import padding
from protection_helpers import GP_OFFICE, HOSPITAL, MESSAGE, MUNICIPALITY, Pki, seal

from gateway.protection import (
    AppRecCode,
    Cipher,
    Credential,
    FailureKind,
    ProtectionError,
    ProtectionPolicy,
    StaticCrlSource,
    UnknownRevocation,
    envelope,
    protect,
    signed,
    to_pem,
    unprotect,
)
from gateway.protection.certs import record_of
from gateway.protection.pki import ENCRYPTION_USAGE, party_name

pytest_plugins = ("protection_fixtures",)  # the session's demo PKI


@pytest.fixture(scope="module")
def hospital(pki: Pki):
    return pki.party(HOSPITAL)


@pytest.fixture(scope="module")
def municipality(pki: Pki):
    return pki.party(MUNICIPALITY)


def receive(pki: Pki, data: bytes, receiver, expected, **kwargs):
    kwargs.setdefault("checker", pki.checker())
    return unprotect(data, credentials=[receiver[1]], expected_signers=expected, **kwargs)


def refused(pki: Pki, data: bytes, receiver, expected, **kwargs) -> ProtectionError:
    with pytest.raises(ProtectionError) as caught:
        receive(pki, data, receiver, expected, **kwargs)
    return caught.value


@pytest.mark.parametrize("cipher", [Cipher.AES256, Cipher.AES128, Cipher.DES3])
def test_round_trip_reports_signer_and_algorithms(pki, hospital, municipality, cipher):
    data = protect(
        MESSAGE,
        signer=hospital[0],
        recipient=municipality[1].cert,
        policy=ProtectionPolicy(send_cipher=cipher),
    )
    policy = ProtectionPolicy.legacy() if cipher is Cipher.DES3 else ProtectionPolicy()
    result = receive(pki, data, municipality, [hospital[0].cert], policy=policy)
    assert result.content == MESSAGE  # byte for byte: no CRLF conversion
    assert result.signer == hospital[0].cert
    assert "serialNumber=191000005" in result.signer_info.subject
    assert result.signer_info.serial == format(hospital[0].cert.serial_number, "X")
    assert result.algorithms.digest == "SHA-256"
    assert result.algorithms.key_transport == "RSA-PKCS1v1.5"
    expected_label = {Cipher.AES256: "AES-256-CBC", Cipher.AES128: "AES-128-CBC", Cipher.DES3: "3DES-CBC"}[
        cipher
    ]
    assert result.algorithms.content_encryption == expected_label
    assert result.algorithms.legacy == (("3DES-CBC",) if cipher is Cipher.DES3 else ())
    assert not result.rollover_key_used and not result.revocation_unknown


def test_pem_input_is_accepted(pki, hospital, municipality):
    data = to_pem(protect(MESSAGE, signer=hospital[0], recipient=municipality[1].cert))
    assert receive(pki, data, municipality, [hospital[0].cert]).content == MESSAGE


def test_3des_refused_unless_partner_policy_allows(pki, hospital, municipality):
    data = protect(
        MESSAGE,
        signer=hospital[0],
        recipient=municipality[1].cert,
        policy=ProtectionPolicy(send_cipher=Cipher.DES3),
    )
    error = refused(pki, data, municipality, [hospital[0].cert])
    assert error.kind is FailureKind.CIPHER_REFUSED
    assert "3DES-CBC is not accepted" in error.reason
    assert error.apprec is None and not error.retryable
    policy = ProtectionPolicy(accepted_ciphers={Cipher.AES256, Cipher.DES3})
    assert receive(pki, data, municipality, [hospital[0].cert], policy=policy).content == MESSAGE


def test_rollover_key_decrypts_old_messages(pki: Pki, hospital, municipality):
    old = municipality[1]
    new_issued = pki.ca.issue(
        party_name("Drammen kommune", "192030005"),
        ENCRYPTION_USAGE,
        not_before=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1),
        not_after=dt.datetime.now(dt.UTC) + dt.timedelta(days=30),
    )
    new = Credential(new_issued.key, new_issued.cert)
    data = protect(MESSAGE, signer=hospital[0], recipient=old.cert)
    with pytest.raises(ProtectionError) as caught:
        unprotect(data, credentials=[new], checker=pki.checker(), expected_signers=[hospital[0].cert])
    assert caught.value.kind is FailureKind.NOT_FOR_US
    assert "our decryption certificates" in caught.value.reason
    result = unprotect(
        data, credentials=[new, old], checker=pki.checker(), expected_signers=[hospital[0].cert]
    )
    assert result.content == MESSAGE
    assert result.rollover_key_used
    assert result.decrypted_with.sha256 == record_of(old.cert).info.sha256
    assert any("previous key" in note for note in result.notes)


def test_wrong_recipient(pki, hospital, municipality):
    gp = pki.party(GP_OFFICE)
    data = protect(MESSAGE, signer=hospital[0], recipient=gp[1].cert)
    error = refused(pki, data, municipality, [hospital[0].cert])
    assert error.kind is FailureKind.NOT_FOR_US
    assert error.transport_error == "transport:invalid-certificate"
    assert format(gp[1].cert.serial_number, "X") in error.reason  # names whom it was for


def test_tampered_content(pki, hospital, municipality):
    inner = signed.sign(MESSAGE, hospital[0])
    tampered = inner.replace(b"trenger", b"trengte", 1)
    assert tampered != inner
    data = envelope.encrypt(tampered, record_of(municipality[1].cert), Cipher.AES256)
    error = refused(pki, data, municipality, [hospital[0].cert])
    assert error.kind is FailureKind.CONTENT_DIGEST
    assert error.apprec is AppRecCode.S01
    assert "altered after signing" in error.reason
    assert error.content is not None and b"trengte" in error.content  # for addressing the AppRec


def test_tampered_signature(pki, hospital, municipality):
    inner = bytearray(signed.sign(MESSAGE, hospital[0]))
    inner[-1] ^= 0x01  # the signature value is the last field of the SignedData
    data = envelope.encrypt(bytes(inner), record_of(municipality[1].cert), Cipher.AES256)
    error = refused(pki, data, municipality, [hospital[0].cert])
    assert error.kind is FailureKind.SIGNATURE
    assert error.apprec is AppRecCode.S01
    assert error.certificate is not None
    assert error.certificate.sha256 == record_of(hospital[0].cert).info.sha256
    assert error.certificate.source == "the message's SignedData"


def test_untrusted_signer(pki: Pki, municipality):
    untrusted = pki.test("untrusted")
    error = refused(pki, seal(MESSAGE, untrusted, municipality[1].cert), municipality, [untrusted.cert])
    assert error.kind is FailureKind.UNTRUSTED
    assert error.apprec is AppRecCode.S02
    assert "komut untrusted test CA" in error.reason
    assert error.certificate.subject.startswith("serialNumber=999999999,CN=komut test party - untrusted")


@pytest.mark.parametrize(
    ("name", "kind", "words"),
    [
        ("expired", FailureKind.EXPIRED, "certificate expired"),
        ("not-yet-valid", FailureKind.NOT_YET_VALID, "not valid before"),
        ("wrong-usage", FailureKind.KEY_USAGE, "needs nonRepudiation or digitalSignature"),
    ],
)
def test_invalid_signer_certificate(pki: Pki, municipality, name, kind, words):
    signer = pki.test(name)
    error = refused(pki, seal(MESSAGE, signer, municipality[1].cert), municipality, [signer.cert])
    assert error.kind is kind
    assert error.apprec is AppRecCode.S02
    assert words in error.reason
    info = error.certificate
    assert info.serial == format(signer.cert.serial_number, "X")
    assert info.issuer == "CN=komut demo CA - NOT FOR PRODUCTION,O=komut demo,C=NO"
    assert len(info.sha256) == 64
    assert info.source == "the message's SignedData"
    text = str(error)
    assert kind.check in text and "S02" in text and info.sha256 in text


def test_revoked_signer(pki: Pki, municipality):
    revoked = pki.test("revoked")
    error = refused(pki, seal(MESSAGE, revoked, municipality[1].cert), municipality, [revoked.cert])
    assert error.kind is FailureKind.REVOKED
    assert error.apprec is AppRecCode.S03
    assert "revoked on" in error.reason and "key_compromise" in error.reason
    assert error.certificate.serial == format(revoked.cert.serial_number, "X")


def test_signer_not_registered_for_sender(pki: Pki, hospital, municipality):
    gp_sign = pki.party(GP_OFFICE)[0]
    data = protect(MESSAGE, signer=gp_sign, recipient=municipality[1].cert)
    error = refused(pki, data, municipality, [hospital[0].cert])  # the registry says: the hospital sent it
    assert error.kind is FailureKind.NOT_REGISTERED
    assert error.apprec is AppRecCode.S02
    assert "Bragernes legesenter" in error.certificate.subject
    assert error.content == MESSAGE


def test_unknown_revocation_is_retryable_by_default(pki: Pki, hospital, municipality):
    data = protect(MESSAGE, signer=hospital[0], recipient=municipality[1].cert)
    error = refused(pki, data, municipality, [hospital[0].cert], checker=pki.checker(crl_source=None))
    assert error.kind is FailureKind.REVOCATION_UNKNOWN
    assert error.retryable and error.apprec is None
    assert error.transport_error == "transport:revoked-certificate-offline"
    assert "no CRL available" in error.reason
    assert "retry later" in str(error)


def test_unknown_revocation_accepted_and_flagged_when_policy_says_so(pki: Pki, hospital, municipality):
    data = protect(MESSAGE, signer=hospital[0], recipient=municipality[1].cert)
    policy = ProtectionPolicy(unknown_revocation=UnknownRevocation.ACCEPT_AND_FLAG)
    result = receive(
        pki, data, municipality, [hospital[0].cert], checker=pki.checker(crl_source=None), policy=policy
    )
    assert result.content == MESSAGE
    assert result.revocation_unknown
    assert any("revocation status unknown" in note for note in result.notes)


def test_stale_or_forged_crl_means_unknown(pki: Pki, hospital, municipality):
    data = protect(MESSAGE, signer=hospital[0], recipient=municipality[1].cert)
    now = dt.datetime.now(dt.UTC)
    stale = pki.ca.crl(now=now - dt.timedelta(days=10), next_update=now - dt.timedelta(days=1))
    error = refused(
        pki, data, municipality, [hospital[0].cert], checker=pki.checker(crl_source=StaticCrlSource([stale]))
    )
    assert error.kind is FailureKind.REVOCATION_UNKNOWN and "out of date" in error.reason
    forger = type(pki.ca).create(pki.ca.cert.subject.rfc4514_string())  # another key, same-looking name
    forger.cert = pki.ca.cert  # the CRL claims the real CA's name
    forged = forger.crl()
    error = refused(
        pki, data, municipality, [hospital[0].cert], checker=pki.checker(crl_source=StaticCrlSource([forged]))
    )
    assert error.kind is FailureKind.REVOCATION_UNKNOWN and "bad signature" in error.reason


def test_revoked_intermediate_ca(tmp_path):
    from gateway.protection import CertificateChecker
    from gateway.protection.pki import SIGNING_USAGE, DemoCa

    root = DemoCa.create("komut test root - NOT FOR PRODUCTION")
    issuing = root.intermediate("komut test issuing CA - NOT FOR PRODUCTION")
    now = dt.datetime.now(dt.UTC)
    leaf = issuing.issue(
        party_name("Intermediate test", "999999999"),
        SIGNING_USAGE,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=9),
    )
    enc = root.issue(
        party_name("Receiver", "999999998"),
        ENCRYPTION_USAGE,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=9),
    )
    sender = Credential(leaf.key, leaf.cert, chain=(issuing.cert,))  # the intermediate travels in the message
    receiver = Credential(enc.key, enc.cert)
    data = protect(MESSAGE, signer=sender, recipient=enc.cert)
    good = CertificateChecker([root.cert], crl_source=StaticCrlSource([root.crl(), issuing.crl()]))
    result = unprotect(data, credentials=[receiver], checker=good, expected_signers=[leaf.cert])
    assert result.content == MESSAGE
    bad = CertificateChecker(
        [root.cert], crl_source=StaticCrlSource([root.crl([issuing.cert]), issuing.crl()])
    )
    with pytest.raises(ProtectionError) as caught:
        unprotect(data, credentials=[receiver], checker=bad, expected_signers=[leaf.cert])
    assert caught.value.kind is FailureKind.REVOKED
    assert "komut test issuing CA" in caught.value.certificate.subject
    assert "intermediate CA" in caught.value.certificate.source


def test_bad_keys_are_indistinguishable(pki: Pki, hospital, municipality):
    """No padding oracle: a wrapped key that is garbage, one of the wrong length, and a right key
    with damaged content all fail the same way (RFC 3218 random-key substitution)."""
    recipient = record_of(municipality[1].cert)
    public = municipality[1].cert.public_key()
    inner = signed.sign(MESSAGE, hospital[0])

    def build(wrapped: bytes, key: bytes, damage: bool = False) -> bytes:
        from cryptography.hazmat.primitives.ciphers import Cipher as Ctx
        from cryptography.hazmat.primitives.ciphers import algorithms, modes

        iv = os.urandom(16)
        pad = 16 - len(inner) % 16
        body = Ctx(algorithms.AES(key), modes.CBC(iv)).encryptor().update(inner + bytes([pad]) * pad)
        if damage:
            body = body[:-1] + bytes([body[-1] ^ 0xFF])
        return envelope.assemble(recipient, Cipher.AES256, iv, wrapped, [body])

    key = os.urandom(32)
    cases = {
        "garbage wrapped key": build(os.urandom(256), key),
        "wrapped key of wrong length": build(public.encrypt(os.urandom(16), padding.PKCS1v15()), key),
        "right key, damaged content": build(public.encrypt(key, padding.PKCS1v15()), key, damage=True),
    }
    answers = set()
    for name, data in cases.items():
        error = refused(pki, data, municipality, [hospital[0].cert])
        assert error.kind is FailureKind.CANNOT_DECRYPT, name
        answers.add((error.kind, error.reason, str(error.certificate), error.content))
    assert len(answers) == 1
    assert (
        receive(
            pki, build(public.encrypt(key, padding.PKCS1v15()), key), municipality, [hospital[0].cert]
        ).content
        == MESSAGE
    )


def test_not_cms_at_all(pki, municipality, hospital):
    for data in (b"<MsgHead/>", b"\x30\x03\x02\x01\x00", signed.sign(MESSAGE, hospital[0])):
        error = refused(pki, data, municipality, [hospital[0].cert])
        assert error.kind is FailureKind.MALFORMED
        assert error.apprec is None


def test_protect_refuses_a_receiver_certificate_that_cannot_encrypt(pki: Pki, hospital, municipality):
    with pytest.raises(ProtectionError) as caught:
        protect(MESSAGE, signer=hospital[0], recipient=municipality[0].cert)  # the signing certificate
    assert caught.value.kind is FailureKind.KEY_USAGE
    assert caught.value.certificate.source == "the receiver's encryption certificate"
    with pytest.raises(ProtectionError) as caught:
        protect(MESSAGE, signer=pki.test("expired"), recipient=municipality[1].cert)
    assert caught.value.kind is FailureKind.EXPIRED
    assert caught.value.certificate.source == "our signing certificate"


def test_protect_with_checker_checks_receiver_revocation(pki: Pki, hospital):
    now = dt.datetime.now(dt.UTC)
    issued = pki.ca.issue(
        party_name("Revoked receiver", "999999997"),
        ENCRYPTION_USAGE,
        not_before=now - dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
    )
    assert protect(MESSAGE, signer=hospital[0], recipient=issued.cert, checker=pki.checker())
    revoking = pki.checker(crl_source=StaticCrlSource([pki.ca.crl([issued.cert])]))
    with pytest.raises(ProtectionError) as caught:
        protect(MESSAGE, signer=hospital[0], recipient=issued.cert, checker=revoking)
    assert caught.value.kind is FailureKind.REVOKED
    assert caught.value.certificate.source == "the receiver's encryption certificate"


def test_failure_kinds_map_to_apprec_or_transport():
    for kind in FailureKind:
        assert kind.transport.startswith("transport:")
        assert kind.retryable == (kind is FailureKind.REVOCATION_UNKNOWN)
    assert FailureKind.REVOKED.apprec is AppRecCode.S03
    assert {k for k in FailureKind if k.apprec is None} == {
        FailureKind.MALFORMED,
        FailureKind.CIPHER_REFUSED,
        FailureKind.KEY_TRANSPORT_REFUSED,
        FailureKind.NOT_FOR_US,
        FailureKind.CANNOT_DECRYPT,
        FailureKind.REVOCATION_UNKNOWN,
    }


def test_keys_on_disk_are_unencrypted_demo_keys(pki: Pki):
    data = pki.path("parties", HOSPITAL, "sign.key").read_bytes()
    assert serialization.load_pem_private_key(data, None).key_size == 2048


def test_revoked_in_any_current_crl(pki: Pki, municipality):
    revoked = pki.test("revoked")
    data = seal(MESSAGE, revoked, municipality[1].cert)
    both = StaticCrlSource([pki.ca.crl(), pki.crl])  # an older CRL without the revocation comes first
    error = refused(pki, data, municipality, [revoked.cert], checker=pki.checker(crl_source=both))
    assert error.kind is FailureKind.REVOKED


def test_crl_files_are_reread_when_they_change(pki: Pki, municipality, tmp_path):
    from gateway.protection import FileCrlSource

    revoked = pki.test("revoked")
    data = seal(MESSAGE, revoked, municipality[1].cert)
    path = tmp_path / "ca.crl"
    path.write_bytes(pki.ca.crl().public_bytes(serialization.Encoding.DER))
    source = FileCrlSource([path], recheck_seconds=0)
    assert (
        receive(pki, data, municipality, [revoked.cert], checker=pki.checker(crl_source=source)).content
        == MESSAGE
    )
    path.write_bytes(pki.crl.public_bytes(serialization.Encoding.PEM) + b"\n")
    error = refused(pki, data, municipality, [revoked.cert], checker=pki.checker(crl_source=source))
    assert error.kind is FailureKind.REVOKED


def test_signed_data_is_what_peers_expect(pki, hospital):
    """Our hand-written SignedData, read back by asn1crypto's typed CMS classes: v1, SHA-256,
    content embedded, our certificate, signed attributes content type, signing time and digest."""
    from asn1crypto import cms
    from cryptography.hazmat.primitives import hashes

    from gateway.protection.signed import sign

    at = dt.datetime(2026, 11, 23, 12, 30, 5, tzinfo=dt.UTC)
    signed = cms.ContentInfo.load(sign(MESSAGE, hospital[0], at=at))
    assert signed["content_type"].native == "signed_data"
    data = signed["content"]
    assert data["version"].native == "v1"
    assert [a["algorithm"].native for a in data["digest_algorithms"]] == ["sha256"]
    assert data["encap_content_info"]["content"].native == MESSAGE
    assert [c.dump() for c in data["certificates"]] == [
        hospital[0].cert.public_bytes(serialization.Encoding.DER)
    ]
    (info,) = data["signer_infos"]
    assert info["sid"].chosen["serial_number"].native == hospital[0].cert.serial_number
    assert info["signature_algorithm"]["algorithm"].native == "rsassa_pkcs1v15"
    attrs = {a["type"].native: a["values"][0].native for a in info["signed_attrs"]}
    digest = hashes.Hash(hashes.SHA256())
    digest.update(MESSAGE)
    assert attrs == {"content_type": "data", "signing_time": at, "message_digest": digest.finalize()}
    # The signature is over the DER of the attributes as a SET.
    hospital[0].cert.public_key().verify(
        info["signature"].native, info["signed_attrs"].untag().dump(), padding.PKCS1v15(), hashes.SHA256()
    )
