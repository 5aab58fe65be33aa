"""First-time set-up of a demo folder: PKI, TLS certificates, one configuration per gateway,
the local systems' folders, and demo.json describing it all."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.protection import load_certificate, load_private_key
from gateway.protection.pki import init_pki, new_key
from gateway.registry import Category, default_certificate_holders, load_default_registry
from gateway.ui import demo as ui_demo

GATEWAYS = ("hospital", "municipal")
# Short retries so that a demo recovers from a stopped peer within a minute or two.
DEMO_RETRY = '["10s", "30s", "2m", "10m"]'
# Local systems on the EDI 2.0 API instead of a folder, at least one per gateway: a hospital site
# (its subtree leaves the trust's EPJ folder: the router takes the nearest connected system), a
# municipality, and a GP office so that a municipality-to-GP dialogue can be API on both sides.
API_SYSTEMS = {
    9100500: ("hospital", "hospital", "Hallingdal sjukestugu EPJ (EDI 2.0 API)"),
    9201000: ("municipal", "municipality", None),
    9310100: ("municipal", "gp-office", None),
}
API_RATE = 20.0  # requests per second per demo client


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
    api: bool = False  # on the EDI 2.0 API (gateway.api) instead of its folder


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
    out = [
        DemoSystem(s.her_id, s.name, s.gateway, s.kind, s.folder, api=True) if s.her_id in API_SYSTEMS else s
        for s in out
    ]
    known = {s.her_id for s in out}
    for her, (gateway, kind, name) in API_SYSTEMS.items():
        if her not in known:
            out.append(
                DemoSystem(her, name or str(her), gateway, kind, system_folder(directory, her), api=True)
            )
    return out


def api_token_digest(token: str) -> str:
    """What a gateway configuration keeps of a static API token: its sha256, never the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _tls_cert(pki: Path, name: str, out: Path, common_name: str | None = None) -> None:
    ca_cert = load_certificate(pki / "ca.pem")
    ca_key = load_private_key(pki / "ca.key")
    key = new_key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, common_name or f"komut {name} gateway (demo)")]
            )
        )
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
    tokens: dict[str, str] | None = None,
    api_rate: float = API_RATE,
) -> str:
    mine = [s for s in systems if s.gateway == name]
    registry = load_default_registry()
    # Keys and `serves` belong to level-1 parties; an API system may serve a site below one.
    orgs = sorted({registry.level1(s.her_id).her_id for s in mine})
    serves = ", ".join(str(h) for h in orgs)
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
    for her in orgs:
        lines += [
            f"[keys.{her}]",
            f'sign_key = "pki/parties/{her}/sign.key"',
            f'sign_cert = "pki/parties/{her}/sign.pem"',
            f'enc_key = "pki/parties/{her}/enc.key"',
            f'enc_cert = "pki/parties/{her}/enc.pem"',
            "",
        ]
    for s in mine:
        lines += ["[[local_systems]]", f'name = "{s.name}"', f"her_ids = [{s.her_id}]"]
        if s.api:
            lines += ['transport = "api"', ""]
        else:
            lines += ['transport = "folder"', f'folder = "{s.folder.relative_to(directory)}"', ""]
    api = [s for s in mine if s.api and tokens and str(s.her_id) in tokens]
    if api:
        lines += [
            "# EDI 2.0 API clients: the sha256 of each token; the tokens themselves are in demo.json.",
            "[api]",
            "",
        ]
    for s in api:
        lines += [
            "[[api.clients]]",
            f'name = "{s.name}"',
            f'token_sha256 = "{api_token_digest(tokens[str(s.her_id)])}"',
            f"her_ids = [{s.her_id}]",
            f"rate = {api_rate:g}",
            "",
        ]
    return "\n".join(lines)


def setup_demo(
    directory: str | Path,
    base_port: int = 8080,
    *,
    delivery: dict[str, str] | None = None,
    api_rate: float = API_RATE,
) -> dict:
    """Create what is missing in `directory` (the PKI only once) and return demo.json's content.

    `delivery` overrides [delivery] settings, as TOML values (tests use fast retries); `api_rate`
    is the API clients' requests per second."""
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
        if s.api:
            # The gateways require mutual TLS (for their peers), so an API client shows a certificate too.
            if not (directory / "tls" / f"api-{s.her_id}.pem").exists():
                _tls_cert(pki, f"api-{s.her_id}", directory / "tls", f"{s.name} (demo API client)")
            continue
        for sub in ("out", "in"):
            (s.folder / sub).mkdir(parents=True, exist_ok=True)
    tokens = _api_tokens(directory, systems)
    info = {"gateways": {}, "systems": {}, "tokens": tokens, "directory": str(directory)}
    for i, name in enumerate(GATEWAYS):
        port = base_port + i
        config = directory / f"{name}.toml"
        text = _config_text(directory, name, port, base_port, systems, delivery, tokens, api_rate)
        text += ui_demo.config_text(port)
        config.write_text(text, encoding="utf-8")
        info["gateways"][name] = {"url": f"https://127.0.0.1:{port}", "config": str(config)}
    registry = load_default_registry()
    for s in systems:
        entry = {"name": s.name, "gateway": s.gateway, "kind": s.kind}
        if s.api:
            entry |= {
                "api": True,
                "url": info["gateways"][s.gateway]["url"],
                # What GET /Messages takes as ReceiverHerIds: the party and everything below it.
                "receiver_her_ids": [p.her_id for p in _subtree(registry, s.her_id)],
                "client_cert": str(directory / "tls" / f"api-{s.her_id}.pem"),
                "client_key": str(directory / "tls" / f"api-{s.her_id}.key"),
            }
        else:
            entry |= {"out": str(s.folder / "out"), "in": str(s.folder / "in")}
        info["systems"][str(s.her_id)] = entry
    info["ui"] = ui_demo.demo_users(directory, {name: gw["config"] for name, gw in info["gateways"].items()})
    (directory / "demo.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), encoding="utf-8")
    return info


def _subtree(registry, her_id: int) -> list:
    out = [registry.get(her_id)]
    for child in registry.children(her_id):
        out += _subtree(registry, child.her_id)
    return out


def _api_tokens(directory: Path, systems: list[DemoSystem]) -> dict[str, str]:
    """A bearer token per API system; kept from an earlier demo.json so that copied tokens keep working."""
    try:
        old = json.loads((directory / "demo.json").read_text(encoding="utf-8")).get("tokens", {})
    except (OSError, ValueError, AttributeError):
        old = {}
    if not isinstance(old, dict):
        old = {}
    return {str(s.her_id): old.get(str(s.her_id)) or secrets.token_urlsafe(32) for s in systems if s.api}
