"""Helpers for the test_protection_* modules: the demo PKI's parties, building messages (including
broken ones), running komut and openssl. The PKI fixture itself is in protection_fixtures."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.protection import (
    CertificateChecker,
    Cipher,
    Credential,
    StaticCrlSource,
    envelope,
    signed,
)
from gateway.protection.certs import record_of
from gateway.protection.pki import DemoCa, load_party

REPO = Path(__file__).resolve().parent.parent
HOSPITAL = 9100000  # Vestre Viken HF
MUNICIPALITY = 9203000  # Drammen kommune
GP_OFFICE = 9320100  # Bragernes legesenter
MESSAGE = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<MsgHead xmlns="http://www.kith.no/xmlstds/msghead/2006-05-24">\n'
    + b"  <Merknad>Pasienten trenger oppf\xc3\xb8lging.\r\nLinjeskift bevares: LF og CRLF.</Merknad>\n" * 200
    + b"</MsgHead>\n"
)


@dataclass
class Pki:
    directory: Path
    ca: DemoCa
    crl: x509.CertificateRevocationList

    def party(self, her_id: int) -> tuple[Credential, Credential]:
        return load_party(self.directory, her_id)

    def test(self, name: str) -> Credential:
        return Credential.load(
            self.directory / "test" / f"{name}.key", self.directory / "test" / f"{name}.pem"
        )

    def path(self, *parts: str | int) -> Path:
        return self.directory.joinpath(*(str(p) for p in parts))

    def checker(self, **kwargs) -> CertificateChecker:
        kwargs.setdefault("crl_source", StaticCrlSource([self.crl]))
        return CertificateChecker([self.ca.cert], **kwargs)


def komut(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the CLI in this process (a subprocess per call would triple these tests' time)."""
    from gateway.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = [str(a) for a in args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = exc.code if isinstance(exc.code, int) else 2
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def komut_process(*args: str | Path) -> subprocess.CompletedProcess:
    """Run the CLI as operators do: a new `python -m gateway.cli` process."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["openssl", *map(str, args)], capture_output=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"openssl {' '.join(map(str, args))} failed: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def seal(
    content: bytes, signer: Credential, recipient: x509.Certificate, cipher: Cipher = Cipher.AES256
) -> bytes:
    """Sign then encrypt without protect()'s own checks, the way a careless peer could send."""
    return envelope.encrypt(signed.sign(content, signer), record_of(recipient), cipher)
