"""Logging operators in and out, sessions, roles and CSRF protection.

A session is a random token in an HttpOnly, SameSite=Strict cookie (Secure and `__Host-` prefixed
over HTTPS); the operator store keeps only its sha256. It ends after `session_idle` without use or
`session_max` after login, when the user is disabled or their role or password changes. Every
request that changes something carries the session's CSRF token (a form field or the
X-CSRF-Token header) and, when the browser sends one, an Origin of this very host.
Failed logins are counted per name and per address; past the limit, attempts wait out the window.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web

from gateway.ui.operators import AuditEntry, OperatorStore, Role, Session, User, at_least
from gateway.ui.passwords import hash_password, needs_rehash, verify_password
from gateway.ui.settings import UiSettings

log = logging.getLogger("komut.ui.auth")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
TOUCH_EVERY = 60.0  # seconds between writes of a session's last use
MAX_THROTTLE_KEYS = 10_000
SECURITY_HEADERS = {
    # Everything comes from this origin; no inline script or style, so an injected tag does nothing.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def remote_of(request: web.Request) -> str:
    return request.remote or ""


@dataclass
class Principal:
    user: User
    session: Session

    @property
    def name(self) -> str:
        return self.user.name

    @property
    def role(self) -> Role:
        return self.user.role

    def may(self, wanted: Role) -> bool:
        return at_least(self.user.role, wanted)

    @property
    def csrf(self) -> str:
        return self.session.csrf


class Throttle:
    """Failed attempts per key within a sliding window."""

    def __init__(self, limit: int, window: float):
        self.limit = limit
        self.window = window
        self._failures: dict[str, collections.deque] = {}

    def blocked(self, key: str, now: float) -> bool:
        times = self._failures.get(key)
        if not times:
            return False
        while times and times[0] <= now - self.window:
            times.popleft()
        return len(times) >= self.limit

    def failure(self, key: str, now: float) -> None:
        if len(self._failures) >= MAX_THROTTLE_KEYS and key not in self._failures:
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(key, collections.deque(maxlen=self.limit * 2)).append(now)

    def success(self, key: str) -> None:
        self._failures.pop(key, None)


class LoginError(Exception):
    """A refused login; the text is what the login page shows (never which part was wrong)."""


class Auth:
    def __init__(self, operators: OperatorStore, settings: UiSettings, gateway_name: str, clock=time.time):
        self.operators = operators
        self.settings = settings
        self.clock = clock
        safe = "".join(c if c.isalnum() else "-" for c in gateway_name) or "gateway"
        self.cookie_secure = f"__Host-komut-{safe}"
        self.cookie_plain = f"komut-{safe}"
        self.throttle = Throttle(settings.login_failures, settings.login_window)

    def secure(self, request: web.Request) -> bool:
        forced = self.settings.secure_cookies
        return request.secure if forced is None else forced

    def cookie_name(self, request: web.Request) -> str:
        return self.cookie_secure if self.secure(request) else self.cookie_plain

    async def audit(self, user: str, action: str, request: web.Request | None = None, **fields) -> AuditEntry:
        entry = AuditEntry(
            at=self.clock(), user=user, action=action, remote=remote_of(request) if request else "", **fields
        )
        return await self.operators.add_audit(entry)

    # --- login and logout ---------------------------------------------------------------------

    async def login(self, request: web.Request, name: str, password: str) -> tuple[str, Session]:
        """A new session for a correct name and password; raises LoginError (always the same words)."""
        now = self.clock()
        name = name.strip()[:100]
        keys = (f"user:{name.casefold()}", f"addr:{remote_of(request)}")
        if any(self.throttle.blocked(k, now) for k in keys):
            await self.audit(name or "-", "login-refused", request, reason="too many failed attempts")
            raise LoginError("Too many failed attempts. Wait a while and try again.")
        user = await self.operators.get_user(name) if name else None
        ok = verify_password(user.password_hash if user else None, password)
        if not ok or user is None or user.disabled:
            for key in keys:
                self.throttle.failure(key, now)
            await self.audit(name or "-", "login-failed", request)
            raise LoginError("Wrong user name or password.")
        for key in keys:
            self.throttle.success(key)
        fields: dict = {"last_login_at": now}
        if needs_rehash(user.password_hash):
            fields["password_hash"] = hash_password(password)
        await self.operators.update_user(user.name, fields)
        token = secrets.token_urlsafe(32)
        session = Session(
            token_hash=token_hash(token),
            user=user.name,
            csrf=secrets.token_urlsafe(32),
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.settings.session_max,
            remote=remote_of(request),
        )
        await self.operators.add_session(session)
        await self.audit(user.name, "login", request)
        return token, session

    def set_cookie(self, request: web.Request, response: web.StreamResponse, token: str) -> None:
        response.set_cookie(
            self.cookie_name(request),
            token,
            path="/",
            secure=self.secure(request),
            httponly=True,
            samesite="Strict",
            max_age=int(self.settings.session_max),
        )

    def clear_cookie(self, request: web.Request, response: web.StreamResponse) -> None:
        response.del_cookie(
            self.cookie_name(request), path="/", secure=self.secure(request), samesite="Strict"
        )

    async def logout(self, request: web.Request, who: Principal) -> None:
        await self.operators.delete_session(who.session.token_hash)
        await self.audit(who.name, "logout", request)

    # --- who is asking ------------------------------------------------------------------------

    async def principal(self, request: web.Request) -> Principal | None:
        token = request.cookies.get(self.cookie_name(request))
        if not token or len(token) > 200:
            return None
        digest = token_hash(token)
        session = await self.operators.get_session(digest)
        now = self.clock()
        if session is None:
            return None
        if session.expires_at <= now or session.last_seen_at + self.settings.session_idle <= now:
            await self.operators.delete_session(digest)
            return None
        user = await self.operators.get_user(session.user)
        if user is None or user.disabled:
            await self.operators.delete_session(digest)
            return None
        if now - session.last_seen_at >= TOUCH_EVERY:
            await self.operators.touch_session(digest, now)
            session.last_seen_at = now
        return Principal(user, session)

    @staticmethod
    def csrf_ok(request: web.Request, who: Principal, form: dict | None) -> bool:
        origin = request.headers.get("Origin")
        if origin and origin != "null" and urlsplit(origin).netloc != request.host:
            return False
        given = request.headers.get("X-CSRF-Token") or (form or {}).get("_csrf") or ""
        return hmac.compare_digest(str(given), who.csrf)


Handler = Callable[..., Awaitable[web.StreamResponse]]


def with_headers(response: web.StreamResponse) -> web.StreamResponse:
    for key, value in SECURITY_HEADERS.items():
        response.headers.setdefault(key, value)
    return response


def guarded(
    auth_of: Callable[[web.Request], Auth],
    role: Role,
    *,
    api: bool,
    on_denied: Callable[[web.Request, Principal | None, int], Awaitable[web.StreamResponse]],
) -> Callable[[Handler], Handler]:
    """Wrap a handler(request, who[, form]) with login, role and (for changes) CSRF checks."""

    def decorate(handler: Handler) -> Handler:
        @functools.wraps(handler)
        async def wrapper(request: web.Request) -> web.StreamResponse:
            auth = auth_of(request)
            who = await auth.principal(request)
            if who is None:
                return with_headers(await on_denied(request, None, 401))
            if not who.may(role):
                return with_headers(await on_denied(request, who, 403))
            if request.method in SAFE_METHODS:
                return with_headers(await handler(request, who))
            form: dict = {}
            if api:
                if request.can_read_body and request.content_type == "application/json":
                    try:
                        body = await request.json()
                    except ValueError:
                        return with_headers(web.json_response({"error": "the body is not JSON"}, status=400))
                    form = body if isinstance(body, dict) else {}
            else:
                form = dict(await request.post())
            if not auth.csrf_ok(request, who, None if api else form):
                return with_headers(await on_denied(request, who, 419))
            return with_headers(await handler(request, who, form))

        return wrapper

    return decorate
