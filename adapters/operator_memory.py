"""Operator accounts, sessions and audit log in dicts, for tests (same semantics as the SQLite one)."""

from __future__ import annotations

import dataclasses

from gateway.ui.operators import USER_FIELDS, AuditEntry, AuditQuery, Role, Session, User, UserExists

MAX_LIMIT = 1000


class MemoryOperatorStore:
    def __init__(self) -> None:
        self._users: dict[str, User] = {}
        self._sessions: dict[str, Session] = {}
        self._audit: list[AuditEntry] = []

    async def open(self) -> None:
        """Nothing to open: everything lives in this process (for tests)."""

    async def close(self) -> None:
        """Nothing to close."""

    async def add_user(self, user: User) -> None:
        if user.name in self._users:
            raise UserExists(user.name)
        self._users[user.name] = dataclasses.replace(user, role=Role(user.role))

    async def get_user(self, name: str) -> User | None:
        user = self._users.get(name)
        return None if user is None else dataclasses.replace(user)

    async def users(self) -> list[User]:
        return [dataclasses.replace(u) for _, u in sorted(self._users.items())]

    async def update_user(self, name: str, fields: dict) -> None:
        unknown = set(fields) - USER_FIELDS
        if unknown:
            raise ValueError(f"unknown user fields {sorted(unknown)}")
        user = self._users.get(name)
        if user is None:
            raise LookupError(f"no user {name!r}")
        for key, value in fields.items():
            setattr(user, key, Role(value) if key == "role" else value)

    async def add_session(self, session: Session) -> None:
        self._sessions[session.token_hash] = dataclasses.replace(session)

    async def get_session(self, token_hash: str) -> Session | None:
        session = self._sessions.get(token_hash)
        return None if session is None else dataclasses.replace(session)

    async def touch_session(self, token_hash: str, at: float) -> None:
        if token_hash in self._sessions:
            self._sessions[token_hash].last_seen_at = at

    async def delete_session(self, token_hash: str) -> None:
        self._sessions.pop(token_hash, None)

    async def delete_sessions(self, user: str) -> int:
        gone = [k for k, s in self._sessions.items() if s.user == user]
        for key in gone:
            del self._sessions[key]
        return len(gone)

    async def purge_sessions(self, now: float, idle: float) -> int:
        gone = [k for k, s in self._sessions.items() if s.expires_at <= now or s.last_seen_at + idle <= now]
        for key in gone:
            del self._sessions[key]
        return len(gone)

    async def add_audit(self, entry: AuditEntry) -> AuditEntry:
        stored = dataclasses.replace(entry, id=len(self._audit) + 1, details=dict(entry.details))
        self._audit.append(stored)
        return dataclasses.replace(stored)

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        limit = max(1, min(int(query.limit), MAX_LIMIT))
        out = []
        for entry in reversed(self._audit):
            if query.before_id is not None and entry.id >= query.before_id:
                continue
            if query.user is not None and entry.user != query.user:
                continue
            if query.action is not None and entry.action != query.action:
                continue
            if query.message_id is not None and entry.message_id != query.message_id:
                continue
            out.append(dataclasses.replace(entry, details=dict(entry.details)))
            if len(out) >= limit:
                break
        return out
