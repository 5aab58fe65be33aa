"""First-time set-up of a demo folder: PKI, TLS certificates, one configuration per gateway,
the local systems' folders, and demo.json describing it all."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.protection import load_certificate, load_private_key
from gateway.protection.pki import init_pki, new_key
from gateway.registry import Category, default_certificate_holders, load_default_registry

GATEWAYS = ("hospital", "municipal")
# Short retries so that a demo recovers from a stopped peer within a minute or two.
DEMO_RETRY = '["10s", "30s", "2m", "10m"]'


def system_folder(directory: Path, her_id: int) -> Path:
    """Where the local system of level-1 party `her_id` keeps its out/ and in/ folders."""
    return directory / "systems" / str(her_id)


def peer_urls(base_port: int = 8080) -> dict[str, str]:
    """Each demo gateway's inbound URL for its peers: hospital on `base_port`, municipal on +1."""
    return {g: f"https://127.0.0.1:{base_port + i}/peer/v1/messages" for i, g in enumerate(GATEWAYS)}


@dataclass(frozen=True)
class DemoSystem:
    her_id: int
    name: str
    gateway: str
    kind: str  # hospital, municipality, gp-office
    folder: Path


def systems_of(directory: Path) -> list[DemoSystem]:
    registry = load_default_registry()
    out = []
    for party in registry.by_category(Category.HOSPITAL_TRUST):
        out.append(
            DemoSystem(
                party.her_id,
                f"{party.name} EPJ",
                "hospital",
                "hospital",
                system_folder(directory, party.her_id),
            )
        )
    for party in registry.by_category(Category.MUNICIPALITY):
        out.append(
            DemoSystem(
                party.her_id,
                f"{party.name} pleie- og omsorgssystem",
                "municipal",
                "municipality",
                system_folder(directory, party.her_id),
            )
        )
    for party in registry.by_category(Category.GP_OFFICE):
        out.append(
            DemoSystem(
                party.her_id,
                f"{party.name} journalsystem",
                "municipal",
                "gp-office",
                system_folder(directory, party.her_id),
            )
        )
    return out


def _tls_cert(pki: Path, name: str, out: Path) -> None:
    ca_cert = load_certificate(pki / "ca.pem")
    ca_key = load_private_key(pki / "ca.key")
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"komut {name} gateway (demo)")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path = out / f"{name}.key"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)


DEMO_DELIVERY = {
    "retry_schedule": DEMO_RETRY,
    "ttl": '"96h"',
    "apprec_timeout": '"96h"',
    "circuit_reset": '"20s"',
}


def _config_text(
    directory: Path,
    name: str,
    port: int,
    base_port: int,
    systems: list[DemoSystem],
    delivery: dict[str, str] | None = None,
) -> str:
    mine = [s for s in systems if s.gateway == name]
    serves = ", ".join(str(s.her_id) for s in mine)
    lines = [
        "# komut demo gateway configuration, written by `komut demo`. Paths are relative to this file.",
        "[gateway]",
        f'name = "{name}"',
        f'listen = "127.0.0.1:{port}"',
        f'state_dir = "state/{name}"',
        f"serves = [{serves}]",
        "",
        "[registry]",
        '# file = "registry.toml"   # unset: the embedded demo network',
        'cert_dir = "pki"',
        "",
        "[gateways]",
        *(f'{g} = "{url}"' for g, url in peer_urls(base_port).items()),
        "",
        "[tls]",
        f'cert = "tls/{name}.pem"',
        f'key = "tls/{name}.key"',
        'ca = "pki/ca.pem"',
        f'client_cert = "tls/{name}.pem"',
        f'client_key = "tls/{name}.key"',
        "require_client_cert = true",
        "",
        "[trust]",
        'anchors = ["pki/ca.pem"]',
        'crls = ["pki/crl.pem"]',
        'unknown_revocation = "retry"',
        "",
        "[store]",
        'kind = "sqlite"',
        'path = "komut.db"',
        "",
        "[delivery]",
        *(f"{key} = {value}" for key, value in {**DEMO_DELIVERY, **(delivery or {})}.items()),
        "",
        "[retention]",
        "payload_days = 30",
        "",
    ]
    for s in mine:
        lines += [
            f"[keys.{s.her_id}]",
            f'sign_key = "pki/parties/{s.her_id}/sign.key"',
            f'sign_cert = "pki/parties/{s.her_id}/sign.pem"',
            f'enc_key = "pki/parties/{s.her_id}/enc.key"',
            f'enc_cert = "pki/parties/{s.her_id}/enc.pem"',
            "",
        ]
    for s in mine:
        lines += [
            "[[local_systems]]",
            f'name = "{s.name}"',
            f"her_ids = [{s.her_id}]",
            'transport = "folder"',
            f'folder = "{s.folder.relative_to(directory)}"',
            "",
        ]
    return "\n".join(lines)


def setup_demo(
    directory: str | Path, base_port: int = 8080, *, delivery: dict[str, str] | None = None
) -> dict:
    """Create what is missing in `directory` (the PKI only once) and return demo.json's content.

    `delivery` overrides [delivery] settings, as TOML values (tests use fast retries)."""
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    pki = directory / "pki"
    if not (pki / "ca.pem").exists():
        init_pki(pki, default_certificate_holders())
    for name in GATEWAYS:
        if not (directory / "tls" / f"{name}.pem").exists():
            _tls_cert(pki, name, directory / "tls")
    systems = systems_of(directory)
    for s in systems:
        for sub in ("out", "in"):
            (s.folder / sub).mkdir(parents=True, exist_ok=True)
    info = {"gateways": {}, "systems": {}, "tokens": {}, "directory": str(directory)}
    for i, name in enumerate(GATEWAYS):
        port = base_port + i
        config = directory / f"{name}.toml"
        config.write_text(_config_text(directory, name, port, base_port, systems, delivery), encoding="utf-8")
        info["gateways"][name] = {"url": f"https://127.0.0.1:{port}", "config": str(config)}
    for s in systems:
        info["systems"][str(s.her_id)] = {
            "name": s.name,
            "gateway": s.gateway,
            "kind": s.kind,
            "out": str(s.folder / "out"),
            "in": str(s.folder / "in"),
        }
    (directory / "demo.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    return info
