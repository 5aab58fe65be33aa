"""The `[ui]` section of a gateway configuration (docs/operators.md lists every key)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from gateway.config import Config, ConfigError, seconds


@dataclass(frozen=True)
class UiSettings:
    enabled: bool = True
    # A listener of its own for operators: browsers carry no client certificate, and the gateway's
    # port may demand one of its peers. None: the UI is only on the gateway's port.
    listen_host: str | None = None
    listen_port: int | None = None
    tls_cert: Path | None = None  # for the operators' listener; the gateway's [tls] cert by default
    tls_key: Path | None = None
    tls: bool = True  # False: plain HTTP on that listener (loopback, or behind a TLS proxy)
    on_gateway_port: bool = True  # also serve /ui/ and /api/ on the gateway's own port
    # Secure (and __Host-) session cookies also on plain HTTP: for a listener behind a proxy that
    # terminates TLS. None: exactly when the request came over TLS.
    secure_cookies: bool | None = None
    users_db: Path | None = None
    session_idle: float = 30 * 60.0
    session_max: float = 12 * 3600.0
    unmask_for: float = 15 * 60.0  # how long an unmasking lasts for that operator and message
    timezone: str = "Europe/Oslo"
    page_size: int = 50
    live_poll: float = 0.5  # how often the live views look for new events in the store
    login_failures: int = 5  # failed logins per name or address within login_window ...
    login_window: float = 15 * 60.0  # ... before further attempts wait out the window
    expiry_warning_days: float = 60.0  # certificates expiring within this are flagged

    @property
    def has_listener(self) -> bool:
        return self.listen_port is not None


def _path(base: Path | None, value) -> Path | None:
    if value in (None, ""):
        return None
    path = Path(str(value))
    return path if path.is_absolute() or base is None else base / path


def parse_ui_settings(config: Config) -> UiSettings:
    raw = (config.sections or {}).get("ui", {})
    if not isinstance(raw, dict):
        raise ConfigError("[ui] must be a table")
    base = config.base_dir
    d = UiSettings()
    host = port = None
    if raw.get("listen"):
        text = str(raw["listen"])
        host, _, port_text = text.rpartition(":")
        try:
            port = int(port_text)
        except ValueError:
            raise ConfigError(f"[ui] listen: not host:port: {text!r}") from None
        host = host or "127.0.0.1"
    tls = bool(raw.get("tls", True))
    cert = _path(base, raw.get("tls_cert")) or config.tls_cert
    key = _path(base, raw.get("tls_key")) or config.tls_key
    if port is not None and tls and (cert is None or key is None):
        raise ConfigError(
            "[ui] listen with TLS needs a certificate: set [ui] tls_cert and tls_key, "
            "or [tls] cert and key, or tls = false for plain HTTP behind a proxy"
        )
    users_db = _path(config.state_dir, raw.get("users_db")) or config.state_dir / "operators.db"
    try:
        settings = UiSettings(
            enabled=bool(raw.get("enabled", d.enabled)),
            listen_host=host,
            listen_port=port,
            tls_cert=cert,
            tls_key=key,
            tls=tls,
            on_gateway_port=bool(raw.get("on_gateway_port", d.on_gateway_port)),
            secure_cookies=None if raw.get("secure_cookies") is None else bool(raw["secure_cookies"]),
            users_db=users_db,
            session_idle=seconds(raw.get("session_idle", d.session_idle)),
            session_max=seconds(raw.get("session_max", d.session_max)),
            unmask_for=seconds(raw.get("unmask_for", d.unmask_for)),
            timezone=str(raw.get("timezone", d.timezone)),
            page_size=int(raw.get("page_size", d.page_size)),
            live_poll=seconds(raw.get("live_poll", d.live_poll)),
            login_failures=int(raw.get("login_failures", d.login_failures)),
            login_window=seconds(raw.get("login_window", d.login_window)),
            expiry_warning_days=float(raw.get("expiry_warning_days", d.expiry_warning_days)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"[ui]: {exc}") from None
    if not 1 <= settings.page_size <= 500:
        raise ConfigError("[ui] page_size must be between 1 and 500")
    return settings


def listener_ssl_context(settings: UiSettings) -> ssl.SSLContext | None:
    """Server TLS for the operators' listener; no client certificate is asked for."""
    if not settings.tls:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(settings.tls_cert), str(settings.tls_key))
    return ctx


def make_operator_store(settings: UiSettings):
    """The operator store adapter for these settings (imported here, as the composition root does)."""
    from adapters.operator_sqlite import SqliteOperatorStore

    return SqliteOperatorStore(settings.users_db)
