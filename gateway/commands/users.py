"""`komut user`: operator accounts of the web UI (add, list, passwd, role, disable, enable).

The accounts live in the gateway's operator store ([ui] users_db, operators.db in its state folder
by default), which a running gateway reads on every request: changes take effect at once, and a
changed role, password or a disabling ends the user's sessions. Each change is audited as
"cli:<login name>".
"""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import time

from gateway.config import ConfigError, load_config

USAGE_ERROR = 2
FAILED = 1
ROLES = ("viewer", "operator", "admin")


def register(subparsers) -> None:
    p = subparsers.add_parser("user", help="operator accounts of the web UI")
    sub = p.add_subparsers(dest="user_command", metavar="ACTION", required=True)

    add = sub.add_parser("add", help="add an operator account")
    add.add_argument("name")
    add.add_argument("--role", choices=ROLES, required=True, help="viewer, operator (may act) or admin")
    add.add_argument("--password", help="the password (else asked for; 12 characters or more)")
    add.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML configuration")
    add.set_defaults(func=cmd_add)

    ls = sub.add_parser("list", help="list operator accounts")
    ls.add_argument("--config", required=True, metavar="FILE")
    ls.set_defaults(func=cmd_list)

    pw = sub.add_parser("passwd", help="set a new password")
    pw.add_argument("name")
    pw.add_argument("--password")
    pw.add_argument("--config", required=True, metavar="FILE")
    pw.set_defaults(func=cmd_passwd)

    role = sub.add_parser("role", help="change a user's role")
    role.add_argument("name")
    role.add_argument("role", choices=ROLES)
    role.add_argument("--config", required=True, metavar="FILE")
    role.set_defaults(func=cmd_role)

    for action in ("disable", "enable"):
        q = sub.add_parser(action, help=f"{action} an account")
        q.add_argument("name")
        q.add_argument("--config", required=True, metavar="FILE")
        q.set_defaults(func=cmd_disable if action == "disable" else cmd_enable)


def _store(args):
    from gateway.ui.settings import make_operator_store, parse_ui_settings

    try:
        config = load_config(args.config)
        return make_operator_store(parse_ui_settings(config))
    except ConfigError as exc:
        print(f"komut: {exc}", file=sys.stderr)
        return None


def _password(args) -> str | None:
    from gateway.ui.passwords import WeakPassword, check_policy

    password = args.password
    if password is None:
        if not sys.stdin.isatty():
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("Password: ")
            if getpass.getpass("Again: ") != password:
                print("komut: the passwords differ", file=sys.stderr)
                return None
    try:
        check_policy(password)
    except WeakPassword as exc:
        print(f"komut: {exc}", file=sys.stderr)
        return None
    return password


def _actor() -> str:
    try:
        return f"cli:{os.getlogin()}"
    except OSError:
        return f"cli:{os.getuid()}"


async def _with(store, fn):
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def _run(args, fn) -> int:
    store = _store(args)
    if store is None:
        return USAGE_ERROR
    try:
        return asyncio.run(_with(store, fn))
    except LookupError:
        print(f"komut: no user {args.name!r}", file=sys.stderr)
        return FAILED


async def _audit(store, action: str, details: dict) -> None:
    from gateway.ui.operators import AuditEntry

    await store.add_audit(AuditEntry(at=time.time(), user=_actor(), action=action, details=details))


def cmd_add(args) -> int:
    from gateway.ui.operators import Role, User, UserExists
    from gateway.ui.passwords import hash_password

    password = _password(args)
    if password is None:
        return USAGE_ERROR

    async def add(store) -> int:
        now = time.time()
        try:
            await store.add_user(
                User(args.name, Role(args.role), hash_password(password), now, password_changed_at=now)
            )
        except UserExists:
            print(f"komut: user {args.name!r} exists already (komut user passwd / role)", file=sys.stderr)
            return FAILED
        await _audit(store, "user-add", {"user": args.name, "role": args.role})
        print(f"added {args.name} ({args.role})")
        return 0

    return _run(args, add)


def cmd_list(args) -> int:
    from datetime import datetime

    async def ls(store) -> int:
        for u in await store.users():
            last = (
                datetime.fromtimestamp(u.last_login_at).isoformat(timespec="minutes")
                if u.last_login_at
                else "never"
            )
            state = "disabled" if u.disabled else "active"
            print(f"{u.name:<24} {u.role:<9} {state:<9} last login {last}")
        return 0

    return _run(args, ls)


def cmd_passwd(args) -> int:
    from gateway.ui.passwords import hash_password

    password = _password(args)
    if password is None:
        return USAGE_ERROR

    async def passwd(store) -> int:
        await store.update_user(
            args.name, {"password_hash": hash_password(password), "password_changed_at": time.time()}
        )
        await store.delete_sessions(args.name)
        await _audit(store, "password-reset", {"user": args.name})
        print(f"new password set for {args.name}")
        return 0

    return _run(args, passwd)


def cmd_role(args) -> int:
    async def role(store) -> int:
        await store.update_user(args.name, {"role": args.role})
        await store.delete_sessions(args.name)
        await _audit(store, "user-change", {"user": args.name, "role": args.role})
        print(f"{args.name} is now {args.role}")
        return 0

    return _run(args, role)


def _set_disabled(args, disabled: bool) -> int:
    async def change(store) -> int:
        await store.update_user(args.name, {"disabled": disabled})
        await store.delete_sessions(args.name)
        await _audit(store, "user-change", {"user": args.name, "disabled": disabled})
        print(f"{args.name} {'disabled' if disabled else 'enabled'}")
        return 0

    return _run(args, change)


def cmd_disable(args) -> int:
    return _set_disabled(args, True)


def cmd_enable(args) -> int:
    return _set_disabled(args, False)
