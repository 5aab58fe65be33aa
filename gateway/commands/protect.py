"""`komut protect` and `komut unprotect`: CMS sign-then-encrypt from the command line.

Exit codes: 0 done; 1 the message was refused (the reason is printed); 2 the command's own inputs
(key, certificate, CRL files) could not be read.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

from gateway.protection import (
    CertificateChecker,
    Cipher,
    Credential,
    FileCrlSource,
    ProtectionError,
    ProtectionPolicy,
    UnknownRevocation,
    load_certificate,
    load_certificates,
    protect,
    to_pem,
    unprotect,
)

REFUSED = 1
BAD_INPUT = 2
SEND_CIPHERS = (Cipher.AES256.value, Cipher.AES128.value, Cipher.DES3.value)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "protect",
        help="sign (SHA-256, RSA) then encrypt (CMS) a message for one receiver",
        description="Sign IN with the signing key, encrypt the result for the receiver's encryption "
        "certificate, write CMS EnvelopedData (DER, or PEM with --pem) to OUT.",
    )
    p.add_argument("input", metavar="IN", type=Path)
    p.add_argument("-o", "--output", metavar="OUT", type=Path, required=True)
    p.add_argument("--sign-key", metavar="KEY.pem", type=Path, required=True)
    p.add_argument(
        "--sign-cert", metavar="CERT.pem", type=Path, required=True, help="(intermediates may follow)"
    )
    p.add_argument("--encrypt-for", metavar="CERT.pem", type=Path, required=True)
    p.add_argument(
        "--cipher",
        choices=SEND_CIPHERS,
        default=Cipher.AES256.value,
        help="content encryption (default aes256; des3 only for partners that need it)",
    )
    p.add_argument("--pem", action="store_true", help="write PEM instead of DER")
    p.set_defaults(func=cmd_protect)

    p = subparsers.add_parser(
        "unprotect",
        help="decrypt and verify a CMS message; print who signed it",
        description="Decrypt IN (DER, PEM or S/MIME), verify the signature and check the signer's "
        "certificate; write the content to OUT and print the signer. Exit 1 with the reason if refused.",
    )
    p.add_argument("input", metavar="IN", type=Path)
    p.add_argument("-o", "--output", metavar="OUT", type=Path, required=True)
    p.add_argument(
        "--decrypt-key",
        metavar="KEY.pem",
        type=Path,
        action="append",
        required=True,
        help="repeatable, paired in order with --decrypt-cert: current first, then kept for rollover",
    )
    p.add_argument("--decrypt-cert", metavar="CERT.pem", type=Path, action="append", required=True)
    p.add_argument("--trust", metavar="CA.pem", type=Path, action="append", required=True, help="repeatable")
    p.add_argument("--intermediate", metavar="CERT.pem", type=Path, action="append", default=[])
    p.add_argument("--crl", metavar="CRL.pem", type=Path, action="append", default=[], help="repeatable")
    p.add_argument(
        "--expect-signer",
        metavar="CERT.pem",
        type=Path,
        action="append",
        help="the signer must be one of these (the sender's registered certificates); repeatable",
    )
    p.add_argument("--allow-legacy", action="store_true", help="accept 3DES, SHA-1 and RSA-OAEP")
    p.add_argument(
        "--unknown-revocation",
        choices=[u.value for u in UnknownRevocation],
        default=UnknownRevocation.RETRY.value,
        help="when no CRL answers: refuse and retry later (default), or accept and flag",
    )
    p.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    p.set_defaults(func=cmd_unprotect)


def cmd_protect(args) -> int:
    try:
        content = args.input.read_bytes()
        signer = Credential.load(args.sign_key, args.sign_cert)
        recipient = load_certificate(args.encrypt_for)
    except (OSError, ValueError) as exc:
        print(f"komut protect: {exc}", file=sys.stderr)
        return BAD_INPUT
    try:
        protected = protect(
            content,
            signer=signer,
            recipient=recipient,
            policy=ProtectionPolicy(send_cipher=Cipher(args.cipher)),
        )
    except ProtectionError as exc:
        print(f"komut protect: refused: {exc}", file=sys.stderr)
        return REFUSED
    args.output.write_bytes(to_pem(protected) if args.pem else protected)
    return 0


def cmd_unprotect(args) -> int:
    if len(args.decrypt_key) != len(args.decrypt_cert):
        print("komut unprotect: give --decrypt-key and --decrypt-cert in pairs", file=sys.stderr)
        return BAD_INPUT
    try:
        data = args.input.read_bytes()
        credentials = [
            Credential.load(k, c) for k, c in zip(args.decrypt_key, args.decrypt_cert, strict=True)
        ]
        anchors = [cert for path in args.trust for cert in load_certificates(path)]
        intermediates = [cert for path in args.intermediate for cert in load_certificates(path)]
        expected = None
        if args.expect_signer:
            expected = [cert for path in args.expect_signer for cert in load_certificates(path)]
        crls = FileCrlSource(args.crl) if args.crl else None
    except (OSError, ValueError) as exc:
        print(f"komut unprotect: {exc}", file=sys.stderr)
        return BAD_INPUT
    base = ProtectionPolicy.legacy() if args.allow_legacy else ProtectionPolicy()
    policy = replace(base, unknown_revocation=UnknownRevocation(args.unknown_revocation))
    checker = CertificateChecker(anchors, intermediates=intermediates, crl_source=crls)
    try:
        result = unprotect(
            data, credentials=credentials, checker=checker, expected_signers=expected, policy=policy
        )
    except ProtectionError as exc:
        _report_refusal(exc, args.json)
        return REFUSED
    args.output.write_bytes(result.content)
    info = result.signer_info
    if args.json:
        print(
            json.dumps(
                {
                    "ok": True,
                    "signer": _cert_json(info),
                    "algorithms": str(result.algorithms),
                    "legacy": list(result.algorithms.legacy),
                    "rollover_key_used": result.rollover_key_used,
                    "revocation_unknown": result.revocation_unknown,
                    "notes": list(result.notes),
                    "bytes": len(result.content),
                }
            )
        )
        return 0
    print(f"signer: {info.subject}")
    print(f"serial: {info.serial}")
    print(f"issuer: {info.issuer}")
    print(f"sha256: {info.sha256}")
    print(f"algorithms: {result.algorithms}")
    for note in result.notes:
        print(f"note: {note}")
    if expected is None:
        print("note: signer not compared with registered certificates (no --expect-signer)")
    return 0


def _report_refusal(exc: ProtectionError, as_json: bool) -> None:
    if as_json:
        print(
            json.dumps(
                {
                    "ok": False,
                    "check": exc.kind.check,
                    "kind": exc.kind.name,
                    "reason": exc.reason,
                    "apprec": exc.apprec.value if exc.apprec else None,
                    "transport_error": exc.transport_error,
                    "retryable": exc.retryable,
                    "certificate": _cert_json(exc.certificate) if exc.certificate else None,
                    "algorithms": str(exc.algorithms) if exc.algorithms else None,
                }
            )
        )
        return
    print(f"komut unprotect: refused: {exc}", file=sys.stderr)
    if exc.retryable:
        print("komut unprotect: this is retryable: keep the message and try again later", file=sys.stderr)


def _cert_json(info) -> dict:
    return {
        "subject": info.subject,
        "serial": info.serial,
        "issuer": info.issuer,
        "sha256": info.sha256,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "source": info.source,
    }
