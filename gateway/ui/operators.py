"""Operators of the web UI: users and their roles, login sessions, and the audit log.

The UI owns this interface; adapters implement it (`adapters/operator_sqlite.py`, a file of its
own in the gateway's state folder, and `adapters/operator_memory.py` for tests). It is kept apart
from the delivery log's `Store`: operator accounts and the audit trail have their own life cycle
(an audit log must outlive payload retention, and a scaled-out gateway may keep them elsewhere).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Role(enum.StrEnum):
    VIEWER = "viewer"  # browses the log, patient identifiers always masked
    OPERATOR = "operator"  # also resends, cancels, marks handled, unmasks with a reason, reads raw XML
    ADMIN = "admin"  # also manages users and reads the configuration


_RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def at_least(role: Role | str, wanted: Role) -> bool:
    try:
        return _RANK[Role(role)] >= _RANK[wanted]
    except ValueError:
        return False


class UserExists(Exception):
    """Adding a user whose name is taken."""


@dataclass
class User:
    name: str
    role: Role
    password_hash: str
    created_at: float
    disabled: bool = False
    password_changed_at: float = 0.0
    last_login_at: float | None = None


@dataclass
class Session:
    token_hash: str  # sha256 of the cookie value: a copy of the database opens no session
    user: str
    csrf: str
    created_at: float
    last_seen_at: float
    expires_at: float  # absolute end, whatever the activity
    remote: str = ""


@dataclass
class AuditEntry:
    at: float
    user: str
    action: str  # login, login-failed, logout, resend, cancel, handled, unmask, user-add, ...
    message_id: int | None = None
    delivery_id: int | None = None
    reason: str = ""
    details: dict = field(default_factory=dict)
    remote: str = ""
    id: int | None = None


@dataclass
class AuditQuery:
    user: str | None = None
    action: str | None = None
    message_id: int | None = None
    before_id: int | None = None  # keyset pagination, newest first
    limit: int = 100


USER_FIELDS = frozenset({"role", "password_hash", "disabled", "password_changed_at", "last_login_at"})


class OperatorStore(Protocol):
    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def add_user(self, user: User) -> None:
        """Raises UserExists when the name is taken."""

    async def get_user(self, name: str) -> User | None: ...

    async def users(self) -> list[User]:
        """By name."""

    async def update_user(self, name: str, fields: dict) -> None:
        """Set USER_FIELDS; raises LookupError for an unknown user."""

    async def add_session(self, session: Session) -> None: ...

    async def get_session(self, token_hash: str) -> Session | None: ...

    async def touch_session(self, token_hash: str, at: float) -> None: ...

    async def delete_session(self, token_hash: str) -> None: ...

    async def delete_sessions(self, user: str) -> int:
        """End every session of a user (role change, password reset, disabling)."""

    async def purge_sessions(self, now: float, idle: float) -> int:
        """Drop sessions past their absolute end or idle longer than `idle` seconds."""

    async def add_audit(self, entry: AuditEntry) -> AuditEntry:
        """Durable before it returns; the entry comes back with its id."""

    async def audit_entries(self, query: AuditQuery) -> list[AuditEntry]:
        """Newest first."""
