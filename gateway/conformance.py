"""Conformance runner: each message makes the whole trip in a sandbox (validate, route in the demo
network, sign and encrypt as its sender, decrypt and verify as its receiver, and the AppRec the
receiver would send), and is compared with the outcome expected in a manifest.

Integrators run it on their own messages before going live. The sandbox is the embedded demo
network with a throwaway PKI (kept in the user's cache so later runs start at once).
"""

from __future__ import annotations

import datetime as dt
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from gateway.protection import CertificateChecker, StaticCrlSource, protect, unprotect
from gateway.protection.errors import ProtectionError
from gateway.protection.pki import init_pki, load_party
from gateway.registry import Registry, default_certificate_holders, load_default_registry
from gateway.schemas import load_schema_set
from gateway.validation import ValidationResult, Validator
from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus
from message_types.kinds import Family


@dataclass
class Row:
    path: str
    type: str | None
    expected: str | None  # "valid", "E10,X99", or None when no manifest names the file
    actual: str  # "valid" or the sorted error codes
    apprec: str  # the AppRec the receiver would send
    route: str = ""
    protection: str = ""
    problems: list[dict] = field(default_factory=list)
    mismatch: str = ""  # why this row fails; empty when it passes

    def to_dict(self) -> dict:
        return {k: v for k, v in self.__dict__.items()}


def sandbox_pki_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "komut" / "sandbox-pki"


def ensure_pki(directory: Path) -> Path:
    """A demo PKI for every party of the demo network, made once and reused while valid."""
    ca = directory / "ca.pem"
    if ca.exists():
        from gateway.protection import load_certificate

        cert = load_certificate(ca)
        if cert.not_valid_after_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=30):
            return directory
    directory.mkdir(parents=True, exist_ok=True)
    init_pki(directory, default_certificate_holders())
    return directory


def load_manifests(paths: list[Path]) -> dict[Path, object]:
    """Expected outcomes by resolved file path, from every manifest.toml next to or above the files."""
    expected: dict[Path, object] = {}
    seen: set[Path] = set()
    for path in paths:
        for folder in [path if path.is_dir() else path.parent, *path.resolve().parents]:
            manifest = folder / "manifest.toml"
            if manifest in seen or not manifest.is_file():
                continue
            seen.add(manifest)
            for entry in tomllib.loads(manifest.read_text(encoding="utf-8")).get("message", []):
                expected[(folder / entry["file"]).resolve()] = entry["expect"]
    return expected


class Sandbox:
    def __init__(self, schema_dirs: tuple = (), pki_dir: Path | None = None):
        self.validator = Validator(load_schema_set(tuple(schema_dirs)))
        self.pki = ensure_pki(pki_dir or sandbox_pki_dir())
        self.registry: Registry = load_default_registry(self.pki)
        from gateway.protection import load_certificate, load_crls

        anchors = [load_certificate(self.pki / "ca.pem")]
        crls = load_crls((self.pki / "crl.pem").read_bytes())
        self.checker = CertificateChecker(anchors, crl_source=StaticCrlSource(crls))
        self._routers: dict[str, object] = {}

    def router(self, gateway: str):
        from gateway.commands.route import demo_router

        if gateway not in self._routers:
            self._routers[gateway] = demo_router(self.registry, gateway)
        return self._routers[gateway]

    def run(self, path: Path, expected: object = None) -> Row:
        data = path.read_bytes()
        result = self.validator.validate(data)
        row = Row(str(path), result.msg_type, _expect_text(expected), _actual(result), "")
        row.problems = [p.to_dict() for p in result.problems]
        message = result.message
        if result.valid and message is not None:
            self._trip(row, data, message)
        row.apprec = self._apprec(result, row)
        row.mismatch = _compare(row, expected)
        return row

    def _trip(self, row: Row, data: bytes, message) -> None:
        sender = message.sender.her_id
        endpoint = self.registry.endpoint(sender) if sender in self.registry else None
        if endpoint is None or endpoint.gateway is None:
            row.actual, row.route = "E21", f"sender HER-id {sender} is not in the demo network"
            return
        decision = self.router(endpoint.gateway).route(message)
        if decision.problems:
            row.actual = ",".join(sorted({str(p.code) for p in decision.problems}))
            row.route = "; ".join(p.message for p in decision.problems)
            row.problems += [p.to_dict() for p in decision.problems]
            return
        first = decision.routes[0]
        row.route = "; ".join(
            f"{r.role} {r.receiver_her} {'local ' + r.transport if r.local else 'peer ' + (r.gateway or r.transport)}"
            for r in decision.routes
        )
        # The CMS trip is made between the two organisations even for a local delivery, so every
        # message proves that its sender's signature and its receiver's decryption work.
        try:
            sender_org = self.registry.certificate_holder(sender).her_id
            receiver_org = self.registry.certificate_holder(first.receiver_her).her_id
            signing, _ = load_party(self.pki, sender_org)
            _, decryption = load_party(self.pki, receiver_org)
            certs = self.registry.certificates(first.receiver_her)
            body = protect(data, signer=signing, recipient=certs.encryption_certificate())
            opened = unprotect(
                body,
                credentials=[decryption],
                checker=self.checker,
                expected_signers=list(self.registry.certificates(sender).signing_certificates()),
            )
        except ProtectionError as exc:
            row.protection = f"FAILED {exc.kind.check}: {exc.reason}"
            row.actual = str(exc.apprec or "S99")
            return
        if opened.content != data:
            row.protection = "FAILED: the content changed on the way"
            return
        row.protection = f"signed {sender_org} -> encrypted {receiver_org} ({opened.algorithms})"

    @staticmethod
    def _apprec(result: ValidationResult, row: Row) -> str:
        message = result.message
        if message is not None and message.kind.family == Family.APPREC:
            return "-"  # an AppRec is never answered with an AppRec
        if row.actual == "valid":
            return f"1 {AppRecStatus.OK.text}"
        if message is None:
            return "none (unreadable: the sender cannot be addressed)"
        errors = [(p["code"], p["message"]) for p in row.problems if p["severity"] == "error"]
        try:
            build_apprec(message, AppRecStatus.REJECTED, errors or [("X99", row.actual)])
        except ValueError as exc:
            return f"cannot build: {exc}"
        return f"2 {AppRecStatus.REJECTED.text}: {row.actual}"


def _actual(result: ValidationResult) -> str:
    return "valid" if result.valid else ",".join(result.codes)


def _expect_text(expected: object) -> str | None:
    if expected is None:
        return None
    return "valid" if expected == "valid" else ",".join(sorted(set(expected)))


def _compare(row: Row, expected: object) -> str:
    if row.actual == "valid" and row.protection.startswith("FAILED"):
        return row.protection
    want = _expect_text(expected)
    if want is None or want == row.actual:
        return ""
    return f"expected {want}, got {row.actual}"


def files_of(paths: list[str]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out += sorted(p for p in path.rglob("*.xml") if p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(raw)
    return out
