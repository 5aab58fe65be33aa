"""The CMS messages a hostile or broken peer gateway sends, as data: what the peer entry points
(HTTPS, AMQP) receive, and the answer each must give. The business documents come from
`hostile_cases`; here they travel signed by Vestre Viken HF and encrypted for Drammen kommune,
and then come broken CMS, wrong recipients, tampered signatures, bad signer certificates, spoofed
senders, routing errors and duplicates."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from e2e import DRAMMEN_CAST
from hostile_cases import SAMPLES, document_cases

from gateway.demo.systems import Cast, recast
from gateway.protection import Cipher, Credential, der, envelope, load_certificate, protect, signed, to_pem
from gateway.protection.certs import record_of
from gateway.protection.pki import DemoCa, load_party
from gateway.registry import load_default_registry
from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, DRAMMEN, ASKER, KONGSBERG = 9100000, 9203000, 9201000, 9212000
SOMATIKK, NURSING, ASKER_NURSING, KONGSBERG_NURSING = 9100201, 9203001, 9201001, 9212001
PLO = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
DIALOG = (SAMPLES / "valid/dialog/01-dialog-foresporsel.xml").read_bytes()
REGISTRY = load_default_registry()
HEADERS = {"X-Komut-From-Her": str(SOMATIKK), "X-Komut-To-Her": str(NURSING)}
CMS = "application/pkcs7-mime"
AES256_CBC = der.oid("2.16.840.1.101.3.4.1.42")
AES256_OFB = der.oid("2.16.840.1.101.3.4.1.43")


def fresh(cast: dict | None = None, template: bytes = PLO) -> bytes:
    return recast(template, REGISTRY, Cast(cast or DRAMMEN_CAST), {})[0]


def msg_id(data: bytes) -> str:
    return read_message(parse_xml(data)).msg_id


class Keys:
    """The demo parties' keys and the PKI's broken test certificates, from the network's directory."""

    def __init__(self, pki: Path):
        self.pki = pki
        self.hospital_sign, self.hospital_enc = load_party(pki, HOSPITAL)
        self.drammen_sign, self.drammen_enc = load_party(pki, DRAMMEN)
        self.asker_sign, self.asker_enc = load_party(pki, ASKER)
        self.kongsberg_sign, _ = load_party(pki, KONGSBERG)

    def test(self, name: str) -> Credential:
        return Credential.load(self.pki / "test" / f"{name}.key", self.pki / "test" / f"{name}.pem")

    def to_drammen(self, data: bytes, signer: Credential | None = None) -> bytes:
        return protect(data, signer=signer or self.hospital_sign, recipient=self.drammen_enc.cert)

    def sealed(self, inner: bytes, cipher: Cipher = Cipher.AES256, recipient=None) -> bytes:
        """Encrypt already signed (or deliberately unsigned) bytes, skipping protect()'s checks."""
        return envelope.encrypt(inner, record_of(recipient or self.drammen_enc.cert), cipher)


@dataclass
class PeerCase:
    name: str
    category: str
    build: Callable[[Keys], bytes]
    status: int
    detail: str = ""  # a word the receipt's detail must contain
    apprec: frozenset[str] | None = None  # the AppRec Avvist's codes, when the sender gets one
    headers: dict = field(default_factory=lambda: dict(HEADERS))
    content_type: str = CMS
    apprec_at: int = HOSPITAL  # whose local system the AppRec reaches
    document: bytes | None = None  # the business document inside, when there is one
    sends: int = 1  # POSTed this many times, one after the other

    @property
    def msg_id(self) -> str | None:
        try:
            return msg_id(self.document) if self.document else None
        except Exception:
            return None


def _document_case(case) -> PeerCase:
    if case.addressable:
        return PeerCase(
            f"doc-{case.name}",
            case.category,
            lambda k, d=case.data: k.to_drammen(d),
            200,
            "refused by AppRec",
            apprec=case.codes,
            document=case.data,
        )
    # Signed and encrypted properly, but no MsgHead to answer: only the transport can say no.
    return PeerCase(
        f"doc-{case.name}",
        case.category,
        lambda k, d=case.data: k.to_drammen(d),
        400,
        "transport:unsupported-message",
        document=case.data,
    )


def _tampered_signature(k: Keys, data: bytes) -> bytes:
    inner = bytearray(signed.sign(data, k.hospital_sign))
    inner[-1] ^= 0x01  # the signature value is the last field of the SignedData
    return k.sealed(bytes(inner))


def _tampered_content(k: Keys, data: bytes, old: bytes, new: bytes) -> bytes:
    inner = signed.sign(data, k.hospital_sign)
    assert inner.count(old) >= 1
    return k.sealed(inner.replace(old, new, 1))


def _cipher_oid_swapped(k: Keys, data: bytes) -> bytes:
    body = k.to_drammen(data)
    assert body.count(AES256_CBC) == 1
    return body.replace(AES256_CBC, AES256_OFB)


def _garbage_wrapped_key(k: Keys, data: bytes) -> bytes:
    inner = signed.sign(data, k.hospital_sign)
    pad = 16 - len(inner) % 16
    rng = random.Random(3)
    body = bytes(rng.randrange(256) for _ in range(len(inner) + pad))
    return envelope.assemble(
        record_of(k.drammen_enc.cert), Cipher.AES256, os.urandom(16), os.urandom(256), [body]
    )


def _signed_by(name: str) -> Callable[[Keys, bytes], bytes]:
    return lambda k, data: k.sealed(signed.sign(data, k.test(name)))


def peer_cases() -> list[PeerCase]:
    rng = random.Random(11)
    base = fresh()
    cases = [_document_case(c) for c in document_cases(fresh)]

    def plain(body: bytes) -> Callable[[Keys], bytes]:
        return lambda k: body

    def built(make, data: bytes) -> Callable[[Keys], bytes]:
        return lambda k: make(k, data)

    def to_drammen(data: bytes) -> Callable[[Keys], bytes]:
        return lambda k: k.to_drammen(data)

    unsupported = "transport:unsupported-message"
    invalid_cert = "transport:invalid-certificate"
    spoof = "abuse:spoofing-attack"
    cms = [
        # --- not CMS, or broken CMS: nothing to answer with an AppRec ------------------------------
        PeerCase("cms-empty-body", "cms", plain(b""), 400, "empty body"),
        PeerCase("cms-one-byte", "cms", plain(b"0"), 400, unsupported),
        PeerCase(
            "cms-random-bytes", "cms", plain(bytes(rng.randrange(256) for _ in range(4096))), 400, unsupported
        ),
        PeerCase("cms-plain-xml", "cms", plain(fresh()), 400, unsupported),
        PeerCase("cms-indefinite-length-bomb", "cms", plain(b"\x30\x80" * 100_000), 400, unsupported),
        PeerCase(
            "cms-length-overflow", "cms", plain(b"\x30\x84\xff\xff\xff\xff" + b"\x00" * 64), 400, unsupported
        ),
        PeerCase(
            "cms-pem-bad-base64",
            "cms",
            plain(b"-----BEGIN PKCS7-----\nnot*base64\n-----END PKCS7-----\n"),
            400,
            unsupported,
        ),
        PeerCase("cms-pem-of-garbage", "cms", plain(to_pem(bytes(range(256)))), 400, unsupported),
        PeerCase(
            "cms-smime-garbage",
            "cms",
            plain(b"MIME-Version: 1.0\r\nContent-Transfer-Encoding: base64\r\n\r\n%%%%\r\n"),
            400,
            unsupported,
        ),
        PeerCase(
            "cms-signed-not-encrypted",
            "cms",
            built(lambda k, d: signed.sign(d, k.hospital_sign), fresh()),
            400,
            unsupported,
        ),
        PeerCase(
            "cms-3des-refused-by-policy",
            "cms",
            built(lambda k, d: k.sealed(signed.sign(d, k.hospital_sign), Cipher.DES3), fresh()),
            400,
            unsupported,
        ),
        PeerCase("cms-unknown-cipher", "cms", built(_cipher_oid_swapped, fresh()), 400, unsupported),
        PeerCase(
            "cms-trailing-garbage",
            "cms",
            built(lambda k, d: k.to_drammen(d) + b"JUNK", fresh()),
            400,
            unsupported,
        ),
    ]
    good = None  # truncations of one valid CMS, built once the keys are known

    def truncated(fraction: float | None, keep: int | None = None) -> Callable[[Keys], bytes]:
        def build(k: Keys) -> bytes:
            nonlocal good
            good = good or k.to_drammen(base)
            return good[: keep if keep is not None else int(len(good) * fraction)]

        return build

    for label, fraction, keep in (
        ("2-bytes", None, 2),
        ("100-bytes", None, 100),
        ("10-percent", 0.1, None),
        ("half", 0.5, None),
        ("90-percent", 0.9, None),
    ):
        cms.append(PeerCase(f"cms-truncated-{label}", "cms", truncated(fraction, keep), 400, unsupported))
    cms.append(PeerCase("cms-last-byte-missing", "cms", lambda k: truncated(None, -1)(k), 400, unsupported))
    # --- encrypted for someone else, or not decryptable ---------------------------------------------
    cms += [
        PeerCase(
            "recipient-another-organisation",
            "recipient",
            built(lambda k, d: protect(d, signer=k.hospital_sign, recipient=k.asker_enc.cert), fresh()),
            403,
            invalid_cert,
        ),
        PeerCase(
            "recipient-the-sender-itself",
            "recipient",
            built(lambda k, d: protect(d, signer=k.hospital_sign, recipient=k.hospital_enc.cert), fresh()),
            403,
            invalid_cert,
        ),
        PeerCase(
            "recipient-drammens-signing-certificate",
            "recipient",
            built(
                lambda k, d: k.sealed(signed.sign(d, k.hospital_sign), recipient=k.drammen_sign.cert), fresh()
            ),
            403,
            invalid_cert,
        ),
        PeerCase(
            "to-her-another-organisation",
            "recipient",
            to_drammen(fresh()),
            403,
            invalid_cert,
            headers={**HEADERS, "X-Komut-To-Her": str(ASKER_NURSING)},
        ),
        PeerCase("garbage-wrapped-key", "recipient", built(_garbage_wrapped_key, fresh()), 403, invalid_cert),
        PeerCase(
            "encrypted-but-not-signed",
            "recipient",
            built(lambda k, d: k.sealed(d), fresh()),
            403,
            invalid_cert,
        ),
    ]
    # --- signature: readable, so the sender gets an AppRec S01 -------------------------------------
    d1, d2, d3 = fresh(), fresh(), fresh()
    cms += [
        PeerCase(
            "tampered-signature",
            "signature",
            built(_tampered_signature, d1),
            200,
            "AppRec",
            frozenset({"S01"}),
            document=d1,
        ),
        PeerCase(
            "tampered-content-still-readable",
            "signature",
            lambda k, d=d2: _tampered_content(k, d, b"Lerkeveien 7B", b"Lerkeveien 9B"),
            200,
            "AppRec",
            frozenset({"S01"}),
            document=d2,
        ),
        PeerCase(
            "tampered-content-unreadable",
            "signature",
            lambda k, d=d3: _tampered_content(k, d, b"<Patient>", b"<Patienx>"),
            400,
            invalid_cert,
        ),
    ]
    # --- bad signer certificates: S02 / S03 ----------------------------------------------------------
    for name in ("expired", "not-yet-valid", "wrong-usage", "untrusted", "revoked"):
        data = fresh()
        cms.append(
            PeerCase(
                f"signer-{name}",
                "certificate",
                built(_signed_by(name), data),
                200,
                "AppRec",
                frozenset({"S02"}),
                document=data,
            )
        )
    kongsberg = fresh({**DRAMMEN_CAST, "somatikk": KONGSBERG_NURSING})
    cms.append(
        PeerCase(
            "signer-registered-but-revoked",
            "certificate",
            lambda k, d=kongsberg: k.to_drammen(d, k.kongsberg_sign),
            200,
            "AppRec",
            frozenset({"S03"}),
            headers={**HEADERS, "X-Komut-From-Her": str(KONGSBERG_NURSING)},
            apprec_at=KONGSBERG,
            document=kongsberg,
        )
    )
    # --- spoofed senders: 403, and no AppRec to the party whose name was used ----------------------
    as_asker = fresh({**DRAMMEN_CAST, "somatikk": ASKER_NURSING})
    hospital_docs = [fresh() for _ in range(3)]
    cms += [
        PeerCase(
            "spoof-msghead-sender-of-another-org",
            "spoof",
            to_drammen(as_asker),
            403,
            spoof,
            document=as_asker,
        ),
        PeerCase(
            "spoof-signer-and-header-of-another-org",
            "spoof",
            lambda k, d=hospital_docs[0]: k.to_drammen(d, k.asker_sign),
            403,
            spoof,
            headers={**HEADERS, "X-Komut-From-Her": str(ASKER)},
            document=hospital_docs[0],
        ),
        PeerCase(
            "spoof-signer-of-another-org",
            "spoof",
            lambda k, d=hospital_docs[1]: k.to_drammen(d, k.asker_sign),
            403,
            spoof,
            document=hospital_docs[1],
        ),
        PeerCase(
            "spoof-header-names-the-receiver",
            "spoof",
            to_drammen(hospital_docs[2]),
            403,
            spoof,
            headers={**HEADERS, "X-Komut-From-Her": str(NURSING)},
            document=hospital_docs[2],
        ),
        PeerCase("spoof-resent", "spoof", to_drammen(as_asker), 403, spoof, document=as_asker, sends=2),
        PeerCase(
            "from-her-missing",
            "spoof",
            to_drammen(fresh()),
            403,
            invalid_cert,
            headers={"X-Komut-To-Her": str(NURSING)},
        ),
        PeerCase(
            "from-her-unknown",
            "spoof",
            to_drammen(fresh()),
            403,
            invalid_cert,
            headers={**HEADERS, "X-Komut-From-Her": "9999999"},
        ),
        PeerCase(
            "from-her-not-a-number",
            "spoof",
            to_drammen(fresh()),
            403,
            invalid_cert,
            headers={**HEADERS, "X-Komut-From-Her": "9100201; DROP TABLE messages"},
        ),
    ]
    # --- routing ------------------------------------------------------------------------------------
    elsewhere = fresh({**DRAMMEN_CAST, "sykepleie": SOMATIKK, "gp": 9100501}, DIALOG)
    cms.append(
        PeerCase(
            "receiver-served-by-the-other-gateway",
            "routing",
            to_drammen(elsewhere),
            200,
            "AppRec",
            frozenset({"E21"}),
            document=elsewhere,
        )
    )
    # --- duplicates -----------------------------------------------------------------------------------
    same, reencrypted, refused_twice = fresh(), fresh(), fresh()
    cms += [
        PeerCase(
            "duplicate-same-body-3-times", "duplicate", to_drammen(same), 200, "", document=same, sends=3
        ),
        PeerCase(
            "duplicate-re-encrypted", "duplicate", to_drammen(reencrypted), 200, "", document=reencrypted
        ),
        PeerCase(
            "duplicate-re-encrypted-again",
            "duplicate",
            to_drammen(reencrypted),
            200,
            "duplicate",
            document=reencrypted,
        ),
        PeerCase(
            "duplicate-of-a-refused-message",
            "duplicate",
            built(_tampered_signature, refused_twice),
            200,
            "",
            frozenset({"S01"}),
            document=refused_twice,
            sends=2,
        ),
        PeerCase(
            "duplicate-garbage-twice", "duplicate", plain(b"\x30\x03\x02\x01\x07"), 400, unsupported, sends=2
        ),
    ]
    # --- HTTP ---------------------------------------------------------------------------------------------
    cms += [
        PeerCase(
            "http-content-type-xml", "http", to_drammen(fresh()), 415, "pkcs7", content_type="application/xml"
        ),
        PeerCase(
            "http-content-type-form",
            "http",
            to_drammen(fresh()),
            415,
            "pkcs7",
            content_type="application/x-www-form-urlencoded",
        ),
        PeerCase(
            "http-body-over-35-mb", "http", plain(b"\x30\x84" + b"\x00" * (36 * 1024 * 1024)), 413, "larger"
        ),
    ]
    cases += cms
    names = [c.name for c in cases]
    assert len(names) == len(set(names))
    return cases


def revoke_kongsberg(pki: Path) -> None:
    """A registered signer whose certificate the CA has revoked: the only way to S03 through a gateway."""
    ca = DemoCa.load(pki)
    revoked = [
        load_certificate(pki / "test" / "revoked.pem"),
        load_certificate(pki / "parties" / str(KONGSBERG) / "sign.pem"),
    ]
    (pki / "crl.pem").write_bytes(ca.crl(revoked).public_bytes(serialization.Encoding.PEM))
