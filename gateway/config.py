"""Gateway configuration: one TOML file, read into dataclasses.

Paths in the file are relative to the file's own folder, so a configuration folder can be moved
as a whole (the demo writes one per gateway).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def seconds(value: str | int | float) -> float:
    """'5m', '96h', '500ms', 30 -> seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 5m, 96h, 2d)")
    return float(match.group(1)) * _UNIT[match.group(2)]


EVENT_LOOPS = ("uvloop", "asyncio")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OrgKeys:
    """Our own credentials for one served organisation (level-1 HER-id)."""

    her_id: int
    sign_key: Path
    sign_cert: Path
    enc_key: Path
    enc_cert: Path
    previous_enc: tuple[tuple[Path, Path], ...] = ()  # (key, cert) kept for certificate rollover


@dataclass(frozen=True)
class LocalSystem:
    """A local system (EPJ, care system, GP system) connected to this gateway."""

    name: str
    her_ids: tuple[int, ...]  # the parties it serves, with their subtrees
    transport: str  # "folder" or "api"
    folder: Path | None = None


@dataclass(frozen=True)
class DeliveryConfig:
    retry_schedule: tuple[float, ...] = (300.0, 900.0, 3600.0, 86400.0)  # then the last one repeats
    jitter: float = 0.1  # +-10 % so that retries from many messages spread out
    ttl: float = 96 * 3600.0
    apprec_timeout: float = 96 * 3600.0
    apprec_timeout_by_type: dict[str, float] = field(default_factory=dict)
    concurrency_per_receiver: int = 4
    workers_per_transport: int = 8
    circuit_failures: int = 5
    circuit_reset: float = 30.0
    fifo: bool = False
    poll_interval: float = 0.2
    lease_seconds: float = 120.0
    overrides: dict[int, dict] = field(default_factory=dict)  # per receiver HER-id: retry_schedule, fifo, ...


@dataclass(frozen=True)
class RetentionConfig:
    payload_days: float = 30.0
    payload_max_bytes: int | None = None
    interval: float = 3600.0


@dataclass(frozen=True)
class Config:
    name: str  # this gateway's logical name in the registry's endpoints ("hospital", "municipal")
    listen_host: str
    listen_port: int
    state_dir: Path
    serves: tuple[int, ...]  # level-1 HER-ids whose messages this gateway handles
    keys: dict[int, OrgKeys]
    trust_anchors: tuple[Path, ...]
    crls: tuple[Path, ...]
    unknown_revocation: str
    registry_file: Path | None
    cert_dir: Path | None
    gateways: dict[str, str]  # logical gateway name -> peer inbound URL
    tls_cert: Path | None
    tls_key: Path | None
    tls_ca: Path | None  # to verify peers' servers, and clients when mutual TLS is on
    tls_client_cert: Path | None
    tls_client_key: Path | None
    require_client_cert: bool
    store_kind: str
    store_path: Path
    local_systems: tuple[LocalSystem, ...]
    delivery: DeliveryConfig
    retention: RetentionConfig
    schema_dirs: tuple[Path, ...] = ()
    apprec_version: str = "1.0"
    # uvloop (libuv) runs the same asyncio code with ~10% less CPU per message than the standard
    # loop (docs/PERFORMANCE.md); "asyncio" is there for platforms without it and for comparison.
    event_loop: str = "uvloop"
    source: Path | None = None
    # Every section of the file as read, so a feature can parse its own (e.g. [api], [ui]) without
    # this module knowing it; relative paths in them resolve against `base_dir`.
    sections: dict = field(default_factory=dict)
    base_dir: Path | None = None


def _path(base: Path, value: str | None) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(value)
    return path if path.is_absolute() else (base / path)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(data, path.resolve().parent, path)


def parse_config(data: dict, base: Path, source: Path | None = None) -> Config:
    gw = data.get("gateway", {})
    if "name" not in gw:
        raise ConfigError("[gateway] name is required (the logical name peers' registry endpoints use)")
    listen = str(gw.get("listen", "127.0.0.1:8080"))
    host, _, port = listen.rpartition(":")
    keys = {}
    for her, spec in data.get("keys", {}).items():
        previous = tuple(
            (_path(base, p["key"]), _path(base, p["cert"])) for p in spec.get("previous_enc", [])
        )
        keys[int(her)] = OrgKeys(
            int(her),
            _path(base, spec["sign_key"]),
            _path(base, spec["sign_cert"]),
            _path(base, spec["enc_key"]),
            _path(base, spec["enc_cert"]),
            previous,
        )
    trust = data.get("trust", {})
    reg = data.get("registry", {})
    tls = data.get("tls", {})
    store = data.get("store", {})
    state_dir = _path(base, gw.get("state_dir", ".")) or base
    d = data.get("delivery", {})
    defaults = DeliveryConfig()
    delivery = DeliveryConfig(
        retry_schedule=tuple(seconds(s) for s in d.get("retry_schedule", [])) or defaults.retry_schedule,
        jitter=float(d.get("jitter", defaults.jitter)),
        ttl=seconds(d.get("ttl", defaults.ttl)),
        apprec_timeout=seconds(d.get("apprec_timeout", defaults.apprec_timeout)),
        apprec_timeout_by_type={k: seconds(v) for k, v in d.get("apprec_timeout_by_type", {}).items()},
        concurrency_per_receiver=int(d.get("concurrency_per_receiver", defaults.concurrency_per_receiver)),
        workers_per_transport=int(d.get("workers_per_transport", defaults.workers_per_transport)),
        circuit_failures=int(d.get("circuit_failures", defaults.circuit_failures)),
        circuit_reset=seconds(d.get("circuit_reset", defaults.circuit_reset)),
        fifo=bool(d.get("fifo", defaults.fifo)),
        poll_interval=seconds(d.get("poll_interval", defaults.poll_interval)),
        lease_seconds=seconds(d.get("lease_seconds", defaults.lease_seconds)),
        overrides={int(k): v for k, v in d.get("receivers", {}).items()},
    )
    event_loop = str(gw.get("event_loop", "uvloop"))
    if event_loop not in EVENT_LOOPS:
        raise ConfigError(f"[gateway] event_loop must be one of {', '.join(EVENT_LOOPS)}, not {event_loop!r}")
    r = data.get("retention", {})
    retention = RetentionConfig(
        payload_days=float(r.get("payload_days", 30)),
        payload_max_bytes=int(r["payload_max_mb"] * 1024 * 1024) if "payload_max_mb" in r else None,
        interval=seconds(r.get("interval", "1h")),
    )
    systems = tuple(
        LocalSystem(
            name=s.get("name", f"system {s['her_ids']}"),
            her_ids=tuple(int(h) for h in s["her_ids"]),
            transport=s.get("transport", "folder"),
            folder=_path(base, s.get("folder")),
        )
        for s in data.get("local_systems", [])
    )
    return Config(
        name=gw["name"],
        listen_host=host or "127.0.0.1",
        listen_port=int(port),
        state_dir=state_dir,
        serves=tuple(int(h) for h in gw.get("serves", [])),
        keys=keys,
        trust_anchors=tuple(_path(base, p) for p in trust.get("anchors", [])),
        crls=tuple(_path(base, p) for p in trust.get("crls", [])),
        unknown_revocation=trust.get("unknown_revocation", "retry"),
        registry_file=_path(base, reg.get("file")),
        cert_dir=_path(base, reg.get("cert_dir")),
        gateways=dict(data.get("gateways", {})),
        tls_cert=_path(base, tls.get("cert")),
        tls_key=_path(base, tls.get("key")),
        tls_ca=_path(base, tls.get("ca")),
        tls_client_cert=_path(base, tls.get("client_cert")),
        tls_client_key=_path(base, tls.get("client_key")),
        require_client_cert=bool(tls.get("require_client_cert", False)),
        store_kind=store.get("kind", "sqlite"),
        store_path=_path(state_dir, store.get("path", "komut.db")),
        local_systems=systems,
        delivery=delivery,
        retention=retention,
        schema_dirs=tuple(_path(base, p) for p in data.get("validation", {}).get("schema_dirs", [])),
        apprec_version=str(data.get("receipts", {}).get("apprec_version", "1.0")),
        event_loop=event_loop,
        source=source,
        sections=data,
        base_dir=base,
    )
