"""The `[api]` section of a gateway configuration (see docs/api.md for every key)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, ConfigError, seconds

MB = 1024 * 1024
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# Asymmetric algorithms only: with HS* the JWKS (public) would be the shared secret, and "none"
# is no signature at all.
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)


@dataclass(frozen=True)
class StaticClient:
    name: str
    token_sha256: bytes  # the digest, never the token
    her_ids: frozenset[int]
    rate: float
    burst: float


@dataclass(frozen=True)
class JwtSettings:
    issuer: str
    audience: tuple[str, ...]
    jwks_url: str | None
    jwks_file: Path | None
    her_id_claim: str
    client_claim: str = "client_id"
    algorithms: tuple[str, ...] = ("RS256", "PS256", "ES256")
    leeway: float = 30.0
    required_scope: str | None = None
    rate: float = 20.0
    burst: float = 40.0
    jwks_refresh: float = 3600.0
    # An unknown key id makes the verifier fetch the JWKS again (the issuer rotated its keys), but
    # not more often than this: otherwise made-up key ids would make komut hammer the issuer.
    jwks_min_refresh: float = 30.0
    jwks_timeout: float = 10.0


@dataclass(frozen=True)
class ApiSettings:
    clients: tuple[StaticClient, ...] = ()
    jwt: JwtSettings | None = None
    max_request_bytes: int = 35 * MB
    mailbox_days: float = 30.0
    mailbox_refresh: float = 0.0
    id_key_file: Path | None = None


def _her_ids(value, where: str) -> frozenset[int]:
    if not isinstance(value, list) or not value:
        raise ConfigError(f"{where}: her_ids must be a non-empty list of HER-ids")
    try:
        return frozenset(int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: her_ids must be numbers, got {value!r}") from None


def _rate(spec: dict, where: str, default_rate: float, default_burst: float | None) -> tuple[float, float]:
    rate = float(spec.get("rate", default_rate))
    if rate <= 0:
        raise ConfigError(f"{where}: rate must be above 0 requests per second")
    burst = float(spec.get("burst", default_burst if default_burst is not None else max(1.0, 2 * rate)))
    if burst < 1:
        raise ConfigError(f"{where}: burst must be at least 1")
    return rate, burst


def _path(base: Path | None, value: str | None) -> Path | None:
    if not value:
        return None
    path = Path(value)
    return path if path.is_absolute() or base is None else base / path


def parse_api_settings(config: Config) -> ApiSettings:
    """Read `[api]` from the raw configuration; relative files resolve against the config's folder."""
    section = config.sections.get("api", {})
    if not isinstance(section, dict):
        raise ConfigError("[api] must be a table")
    base = config.base_dir
    default_rate = float(section.get("default_rate", 20))
    clients = []
    names, digests = set(), {}
    for index, spec in enumerate(section.get("clients", [])):
        where = f"[[api.clients]] #{index + 1}"
        name = str(spec.get("name") or "").strip()
        if not name:
            raise ConfigError(f"{where}: name is required")
        if name in names:
            raise ConfigError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        digest = str(spec.get("token_sha256") or "").strip().lower()
        if not _SHA256.match(digest):
            raise ConfigError(f"{where} ({name}): token_sha256 must be 64 hex digits (sha256 of the token)")
        if digest in digests:
            # One token, two identities: which HER-ids it may act for would depend on file order.
            raise ConfigError(f"{where} ({name}): the same token as {digests[digest]!r}; give each its own")
        digests[digest] = name
        rate, burst = _rate(spec, where, default_rate, None)
        clients.append(
            StaticClient(name, bytes.fromhex(digest), _her_ids(spec.get("her_ids"), where), rate, burst)
        )
    jwt = None
    if "jwt" in section:
        j = section["jwt"]
        for key in ("issuer", "audience", "her_id_claim"):
            if not j.get(key):
                raise ConfigError(f"[api.jwt]: {key} is required")
        if bool(j.get("jwks_url")) == bool(j.get("jwks_file")):
            raise ConfigError("[api.jwt]: give exactly one of jwks_url and jwks_file")
        audience = j["audience"]
        algorithms = tuple(j.get("algorithms", JwtSettings.algorithms))
        unsafe = set(algorithms) - ALLOWED_ALGORITHMS
        if unsafe or not algorithms:
            raise ConfigError(
                f"[api.jwt]: algorithms {sorted(unsafe)} are not allowed; use of {sorted(ALLOWED_ALGORITHMS)}"
            )
        rate, burst = _rate(j, "[api.jwt]", default_rate, None)
        jwt = JwtSettings(
            issuer=str(j["issuer"]),
            audience=tuple(audience) if isinstance(audience, list) else (str(audience),),
            jwks_url=j.get("jwks_url"),
            jwks_file=_path(base, j.get("jwks_file")),
            her_id_claim=str(j["her_id_claim"]),
            client_claim=str(j.get("client_claim", "client_id")),
            algorithms=algorithms,
            leeway=seconds(j.get("leeway", 30)),
            required_scope=j.get("required_scope"),
            rate=rate,
            burst=burst,
            jwks_refresh=seconds(j.get("jwks_refresh", "1h")),
            jwks_min_refresh=seconds(j.get("jwks_min_refresh", "30s")),
            jwks_timeout=seconds(j.get("jwks_timeout", "10s")),
        )
    max_mb = float(section.get("max_request_mb", 35))
    shared = config.store_kind in ("postgresql", "postgres")
    return ApiSettings(
        clients=tuple(clients),
        jwt=jwt,
        max_request_bytes=int(max_mb * MB),
        mailbox_days=float(section.get("mailbox_days", config.retention.payload_days)),
        # Nodes sharing a store (PostgreSQL) each keep their own index: re-read it now and then.
        mailbox_refresh=seconds(section.get("mailbox_refresh", "10s" if shared else 0)),
        id_key_file=_path(config.state_dir, section.get("id_key_file", "api-ids.key")),
    )
