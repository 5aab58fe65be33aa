"""The operator UI in the demo network: each gateway's operators' listener, and an admin and a
viewer with generated passwords (kept in demo.json under "ui", and kept across runs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import threading
import time
from pathlib import Path

UI_PORT_OFFSET = 10  # the hospital gateway's UI on 8090 beside its 8080, the municipal one on 8091
DEMO_USERS = {"admin": "admin", "viewer": "viewer"}


def config_text(gateway_port: int) -> str:
    return "\n".join(
        [
            "",
            "[ui]",
            "# The operators' web UI and JSON API; browsers carry no client certificate, so they get a",
            "# listener of their own (TLS with the gateway's certificate). Users: komut user add.",
            f'listen = "127.0.0.1:{gateway_port + UI_PORT_OFFSET}"',
            "",
        ]
    )


def _run(coro):
    """asyncio.run, also from code that is itself inside an event loop (then on a thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(asyncio.run(coro)))
    thread.start()
    thread.join()
    return result[0]


def _old_passwords(directory: Path) -> dict[str, str]:
    try:
        users = json.loads((directory / "demo.json").read_text(encoding="utf-8"))["ui"]["users"]
        return {name: str(u["password"]) for name, u in users.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


async def _ensure(config_path: str, users: dict[str, tuple[str, str, str]]) -> str | None:
    """Each (role, password hash, password) user exists with that password and role."""
    from gateway.config import load_config
    from gateway.ui.operators import Role, User, UserExists
    from gateway.ui.passwords import verify_password
    from gateway.ui.settings import make_operator_store, parse_ui_settings

    settings = parse_ui_settings(load_config(config_path))
    store = make_operator_store(settings)
    await store.open()
    try:
        for name, (role, password_hash, password) in users.items():
            existing = await store.get_user(name)
            if existing is None:
                now = time.time()
                with contextlib.suppress(UserExists):
                    await store.add_user(User(name, Role(role), password_hash, now, password_changed_at=now))
            elif not verify_password(existing.password_hash, password) or existing.role != role:
                await store.update_user(
                    name, {"password_hash": password_hash, "role": role, "disabled": False}
                )
    finally:
        await store.close()
    if settings.listen_port is None:
        return None
    scheme = "https" if settings.tls else "http"
    return f"{scheme}://{settings.listen_host}:{settings.listen_port}/ui/"


def demo_users(directory: Path, configs: dict[str, str]) -> dict:
    """Create (or keep) the demo's operator accounts on every gateway; returns demo.json's "ui"."""
    from gateway.ui.passwords import hash_password

    old = _old_passwords(Path(directory))
    passwords = {name: old.get(name) or secrets.token_urlsafe(12) for name in DEMO_USERS}
    # One hash per user for all gateways: hashing is the slow part of setting up.
    hashes = {name: hash_password(password) for name, password in passwords.items()}
    users = {name: (DEMO_USERS[name], hashes[name], passwords[name]) for name in DEMO_USERS}
    urls = {name: _run(_ensure(path, users)) for name, path in configs.items()}
    return {
        "urls": urls,
        "users": {name: {"role": DEMO_USERS[name], "password": passwords[name]} for name in DEMO_USERS},
    }
