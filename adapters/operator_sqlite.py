"""Operator accounts, sessions and the audit log in a SQLite file of their own (operators.db in the
gateway's state folder by default).

Small tables and few writes (a login, an action), so one connection behind a lock, used from a
worker thread, is plenty; every write commits with synchronous=FULL before it returns, so an
action's audit entry is on disk when the operator sees the answer. The file is created readable
by its owner only: it holds password hashes and the audit trail.

All SQL of this adapter is in the "SQL" section; the schema evolves only by appending to
MIGRATIONS.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.ui.operators import USER_FIELDS, AuditEntry, AuditQuery, Role, Session, User, UserExists

# ------------------------------------------------------------------------------------------------
# SQL
# ------------------------------------------------------------------------------------------------

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        name                 TEXT PRIMARY KEY,
        role                 TEXT NOT NULL,
        password_hash        TEXT NOT NULL,
        created_at           REAL NOT NULL,
        disabled             INTEGER NOT NULL DEFAULT 0,
        password_changed_at  REAL NOT NULL DEFAULT 0,
        last_login_at        REAL
    );
    CREATE TABLE sessions (
        token_hash    TEXT PRIMARY KEY,
        user          TEXT NOT NULL REFERENCES users(name),
        csrf          TEXT NOT NULL,
        created_at    REAL NOT NULL,
        last_seen_at  REAL NOT NULL,
        expires_at    REAL NOT NULL,
        remote        TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX sessions_user ON sessions(user);
    CREATE TABLE audit (
        id           INTEGER PRIMARY KEY,
        at           REAL NOT NULL,
        user         TEXT NOT NULL,
        action       TEXT NOT NULL,
        message_id   INTEGER,
        delivery_id  INTEGER,
        reason       TEXT NOT NULL DEFAULT '',
        details      TEXT NOT NULL DEFAULT '{}',
        remote       TEXT NOT NULL DEFAULT ''
    );
    -- Each filter of the audit page walks its own index newest first (the rowid ends every index).
    CREATE INDEX audit_user ON audit(user);
    CREATE INDEX audit_action ON audit(action);
    CREATE INDEX audit_message ON audit(message_id) WHERE message_id IS NOT NULL;
    """,
)
PRAGMAS = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = FULL",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA foreign_keys = ON",
)
USER_COLUMNS = (
    "name",
    "role",
    "password_hash",
    "created_at",
    "disabled",
    "password_changed_at",
    "last_login_at",
)
SESSION_COLUMNS = ("token_hash", "user", "csrf", "created_at", "last_seen_at", "expires_at", "remote")
AUDIT_COLUMNS = ("at", "user", "action", "message_id", "delivery_id", "reason", "details", "remote")

SQL_INSERT_USER = (
    f"INSERT INTO users ({', '.join(USER_COLUMNS)}) VALUES ({', '.join('?' * len(USER_COLUMNS))})"
)
SQL_USER = f"SELECT {', '.join(USER_COLUMNS)} FROM users WHERE name = ?"
SQL_USERS = f"SELECT {', '.join(USER_COLUMNS)} FROM users ORDER BY name"
# Column names come from USER_FIELDS only, never from callers.
SQL_UPDATE_USER = "UPDATE users SET {assignments} WHERE name = ?"
SQL_INSERT_SESSION = (
    f"INSERT INTO sessions ({', '.join(SESSION_COLUMNS)}) VALUES ({', '.join('?' * len(SESSION_COLUMNS))})"
)
SQL_SESSION = f"SELECT {', '.join(SESSION_COLUMNS)} FROM sessions WHERE token_hash = ?"
SQL_TOUCH_SESSION = "UPDATE sessions SET last_seen_at = ? WHERE token_hash = ?"
SQL_DELETE_SESSION = "DELETE FROM sessions WHERE token_hash = ?"
SQL_DELETE_SESSIONS_OF = "DELETE FROM sessions WHERE user = ?"
SQL_PURGE_SESSIONS = "DELETE FROM sessions WHERE expires_at <= ? OR last_seen_at <= ?"
SQL_INSERT_AUDIT = (
    f"INSERT INTO audit ({', '.join(AUDIT_COLUMNS)}) VALUES ({', '.join('?' * len(AUDIT_COLUMNS))})"
)
SQL_AUDIT = f"SELECT id, {', '.join(AUDIT_COLUMNS)} FROM audit WHERE {{where}} ORDER BY id DESC LIMIT ?"

# ------------------------------------------------------------------------------------------------

MAX_LIMIT = 1000


def _user(row) -> User:
    values = dict(zip(USER_COLUMNS, row, strict=True))
    values["role"] = Role(values["role"])
    values["disabled"] = bool(values["disabled"])
    return User(**values)


def _session(row) -> Session:
    return Session(**dict(zip(SESSION_COLUMNS, row, strict=True)))


def _audit(row) -> AuditEntry:
    values = dict(zip(AUDIT_COLUMNS, row[1:], strict=True))
    values["details"] = json.loads(values["details"])
    return AuditEntry(id=row[0], **values)


class SqliteOperatorStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    async def open(self) -> None:
        if self._conn is None:
            self._conn = await asyncio.to_thread(self._connect)

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._close, conn)

    def _close(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            # Created 0600 before SQLite writes anything into it.
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in PRAGMAS:
                conn.execute(pragma)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"{self.path} has schema version {version}; this komut knows {len(MIGRATIONS)}"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        except BaseException:
            conn.close()
            raise
        return conn

    async def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await asyncio.to_thread(self._locked, fn)

    def _locked(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        with self._lock:
            if self._conn is None:
                raise RuntimeError("operator store is not open")
            return fn(self._conn)

    # --- users ---------------------------------------------------------------------------------

    async def add_user(self, user: User) -> None:
        row = (
            user.name,
            str(Role(user.role)),
            user.password_hash,
            user.created_at,
            int(user.disabled),
            user.password_changed_at,
            user.last_login_at,
        )

        def insert(conn):
            try:
                conn.execute(SQL_INSERT_USER, row)
            except sqlite3.IntegrityError:
                raise UserExists(user.name) from None

        await self._run(insert)

    async def get_user(self, name: str) -> User | None:
        row = await self._run(lambda conn: conn.execute(SQL_USER, (name,)).fetchone())
        return None if row is None else _user(row)

    async def users(self) -> list[User]:
        return [_user(row) for row in await self._run(lambda conn: conn.execute(SQL_USERS).fetchall())]

    async def update_user(self, name: str, fields: dict) -> None:
        unknown = set(fields) - USER_FIELDS
        if unknown:
            raise ValueError(f"unknown user fields {sorted(unknown)}")
        if not fields:
            return
        values = {
            k: str(Role(v)) if k == "role" else int(v) if k == "disabled" else v for k, v in fields.items()
        }
        sql = SQL_UPDATE_USER.format(assignments=", ".join(f"{k} = ?" for k in values))

        def update(conn):
            if conn.execute(sql, (*values.values(), name)).rowcount == 0:
                raise LookupError(f"no user {name!r}")

        await self._run(update)

    # --- sessions ------------------------------------------------------------------------------

    async def add_session(self, session: Session) -> None:
        row = tuple(getattr(session, c) for c in SESSION_COLUMNS)
        await self._run(lambda conn: conn.execute(SQL_INSERT_SESSION, row))

    async def get_session(self, token_hash: str) -> Session | None:
        row = await self._run(lambda conn: conn.execute(SQL_SESSION, (token_hash,)).fetchone())
        return None if row is None else _session(row)

    async def touch_session(self, token_hash: str, at: float) -> None:
        await self._run(lambda conn: conn.execute(SQL_TOUCH_SESSION, (at, token_hash)))

    async def delete_session(self, token_hash: str) -> None:
        await self._run(lambda conn: conn.execute(SQL_DELETE_SESSION, (token_hash,)))

    async def delete_sessions(self, user: str) -> int:
        return await self._run(lambda conn: conn.execute(SQL_DELETE_SESSIONS_OF, (user,)).rowcount)

    async def purge_sessions(self, now: float, idle: float) -> int:
        return await self._run(lambda conn: conn.execute(SQL_PURGE_SESSIONS, (now, now - idle)).rowcount)

    # --- audit ---------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> AuditEntry:
        details = json.dumps(entry.details or {}, ensure_ascii=False, default=str)
        row = (
            entry.at,
            entry.user,
            entry.action,
            entry.message_id,
            entry.delivery_id,
            entry.reason or "",
            details,
            entry.remote or "",
        )
        new_id = await self._run(lambda conn: conn.execute(SQL_INSERT_AUDIT, row).lastrowid)
        return AuditEntry(**{**entry.__dict__, "id": new_id, "details": json.loads(details)})

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        limit = max(1, min(int(query.limit), MAX_LIMIT))
        conditions, params = [], []
        for column, value in (
            ("user", query.user),
            ("action", query.action),
            ("message_id", query.message_id),
        ):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        if query.before_id is not None:
            conditions.append("id < ?")
            params.append(query.before_id)
        sql = SQL_AUDIT.format(where=" AND ".join(conditions) or "1")
        rows = await self._run(lambda conn: conn.execute(sql, (*params, limit)).fetchall())
        return [_audit(row) for row in rows]
