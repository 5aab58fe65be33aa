"""`komut pki init DIR` (a demo PKI for the demo network) and `komut pki check CERT`."""

from __future__ import annotations

import sys
from pathlib import Path

from gateway.protection import (
    CertificateChecker,
    CertificateInfo,
    FileCrlSource,
    ProtectionError,
    Purpose,
    load_certificates,
)
from gateway.protection.pki import CA_NAME, init_pki

REFUSED = 1
BAD_INPUT = 2


def register(subparsers) -> None:
    pki = subparsers.add_parser("pki", help="demo PKI and certificate checks")
    commands = pki.add_subparsers(dest="pki_command", metavar="COMMAND", required=True)

    p = commands.add_parser(
        "init",
        help="create a demo CA and certificates for every party of the demo network (NOT FOR PRODUCTION)",
        description=f"Create DIR/ca.pem, ca.key, crl.pem, parties/<her_id>/{{sign,enc}}.{{pem,key}} and "
        f"test certificates in DIR/test/, issued by '{CA_NAME}'. Keys are written unencrypted.",
    )
    p.add_argument("directory", metavar="DIR", type=Path)
    p.add_argument("--crl-url", metavar="URL", help="CRL distribution point to write into the certificates")
    p.add_argument("--force", action="store_true", help="replace an existing PKI in DIR")
    p.set_defaults(func=cmd_init)

    p = commands.add_parser(
        "check",
        help="check certificates: validity, key usage, chain, revocation",
        description="Check a partner's (or our own) certificates as unprotect/protect would. "
        "Exit 0 all pass, 1 any refused.",
    )
    p.add_argument("certs", nargs="+", metavar="CERT.pem", type=Path)
    p.add_argument("--trust", metavar="CA.pem", type=Path, action="append", required=True)
    p.add_argument("--intermediate", metavar="CERT.pem", type=Path, action="append", default=[])
    p.add_argument("--crl", metavar="CRL.pem", type=Path, action="append", default=[])
    p.add_argument("--purpose", choices=("signing", "encryption"), required=True)
    p.set_defaults(func=cmd_check)


def cmd_init(args) -> int:
    directory: Path = args.directory
    if (directory / "ca.key").exists() and not args.force:
        print(f"komut pki init: {directory} already holds a PKI (use --force to replace it)", file=sys.stderr)
        return BAD_INPUT
    from gateway.registry import default_certificate_holders

    holders = default_certificate_holders()
    pki = init_pki(directory, holders, crl_url=args.crl_url)
    print(f"CA: {directory / 'ca.pem'} ({CA_NAME})")
    print(f"parties: {len(pki.parties)} in {directory / 'parties'} (sign.pem/key, enc.pem/key each)")
    print(
        f"CRL: {directory / 'crl.pem'}; test certificates: {', '.join(sorted(pki.test))} in {directory / 'test'}"
    )
    print("keys are unencrypted: NOT FOR PRODUCTION")
    return 0


def cmd_check(args) -> int:
    try:
        anchors = [c for path in args.trust for c in load_certificates(path)]
        intermediates = [c for path in args.intermediate for c in load_certificates(path)]
        certs = [(path, c) for path in args.certs for c in load_certificates(path)[:1]]
        crls = FileCrlSource(args.crl) if args.crl else None
    except (OSError, ValueError) as exc:
        print(f"komut pki check: {exc}", file=sys.stderr)
        return BAD_INPUT
    checker = CertificateChecker(anchors, intermediates=intermediates, crl_source=crls)
    purpose = Purpose.SIGNING if args.purpose == "signing" else Purpose.ENCRYPTION
    status = 0
    for path, cert in certs:
        try:
            checked = checker.check(cert, purpose, source=str(path))
        except ProtectionError as exc:
            print(f"{path}: REFUSED: {exc}")
            status = REFUSED
            continue
        info = CertificateInfo.of(cert, str(path))
        print(f"{path}: ok for {purpose.label}: {info}; valid until {info.not_after:%Y-%m-%d}")
        for note in checked.notes:
            print(f"  note: {note}")
    return status
