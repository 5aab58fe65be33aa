"""Who is calling, and which HER-ids it may act for.

Two kinds of bearer token:

- static tokens from `[[api.clients]]`: the configuration holds only their sha256, and a presented
  token is compared with every client's digest in constant time;
- JWT access tokens from an OAuth2 identity provider such as HelseID (`[api.jwt]`): signature
  against the issuer's JWKS, expiry, issuer and audience are checked by PyJWT, and a configurable
  claim lists the HER-ids the client is bound to.

A client bound to a HER-id may act for that party and every party below it in the address
registry (a department, a GP at an office), the same reach a local system has in the router.
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import jwt

from gateway.api.settings import ApiSettings, JwtSettings
from gateway.registry import Registry

log = logging.getLogger("komut.api.auth")

MAX_JWKS_BYTES = 1024 * 1024
MAX_TOKEN_CHARS = 16 * 1024
_BEARER = re.compile(r"^\s*Bearer\s+([A-Za-z0-9\-._~+/]+=*)\s*$", re.IGNORECASE)


class AuthError(Exception):
    """401 (not authenticated) or 503 (cannot check a token now)."""

    def __init__(self, status: int, description: str, *, error: str | None = "invalid_token"):
        super().__init__(description)
        self.status = status
        self.description = description
        self.error = error  # RFC 6750 error code; None when no credentials were sent at all

    def www_authenticate(self) -> str:
        if self.error is None:
            return 'Bearer realm="komut"'
        text = self.description.replace('"', "'")
        return f'Bearer realm="komut", error="{self.error}", error_description="{text}"'


@dataclass(frozen=True)
class Principal:
    """An authenticated API client."""

    name: str  # for the log and the message's source ("api:<name>")
    her_ids: frozenset[int]
    rate_key: str
    rate: float
    burst: float

    def root_for(self, her_id: int, registry: Registry) -> int | None:
        """The bound HER-id that covers `her_id` (itself or the nearest ancestor), or None."""
        if her_id in self.her_ids:
            return her_id
        if her_id in registry:
            for party in registry.lineage(her_id):
                if party.her_id in self.her_ids:
                    return party.her_id
        return None

    def may_act_for(self, her_id: int | None, registry: Registry) -> bool:
        return her_id is not None and self.root_for(her_id, registry) is not None


def _is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_her_ids(value) -> frozenset[int]:
    """A claim value as HER-ids: a number, a list, or a string of numbers split by spaces or commas."""
    items = value if isinstance(value, list) else [value]
    out = set()
    for item in items:
        if isinstance(item, bool):
            continue
        if isinstance(item, int):
            out.add(item)
        elif isinstance(item, str):
            out.update(int(p) for p in re.split(r"[\s,]+", item) if p.isascii() and p.isdigit())
    return frozenset(h for h in out if h > 0)


def _scopes(claims: dict) -> set[str]:
    out: set[str] = set()
    for name in ("scope", "scp"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(str(v) for v in value)
    return out


class JwksSource:
    """The issuer's signing keys, from a URL (cached, refreshed) or a file (re-read when it changes)."""

    def __init__(self, settings: JwtSettings, clock=time.monotonic):
        self.s = settings
        self.clock = clock
        self._keys: list[dict] = []
        self._fetched_at: float | None = None
        self._file_mtime: float | None = None
        self._lock = asyncio.Lock()
        if (
            settings.jwks_url
            and not settings.jwks_url.startswith("https://")
            and not _is_loopback(settings.jwks_url)
        ):
            raise ValueError(
                "[api.jwt] jwks_url must be https:// (plain http only on the loopback interface)"
            )

    def _due(self, force: bool) -> bool:
        if self._fetched_at is None:
            return True
        age = self.clock() - self._fetched_at
        return age >= (self.s.jwks_min_refresh if force else self.s.jwks_refresh)

    async def keys(self, *, force: bool = False) -> list[dict]:
        if self.s.jwks_file is not None:
            return self._from_file(self.s.jwks_file)
        if not self._due(force):
            return self._keys
        async with self._lock:
            if not self._due(force):
                return self._keys
            try:
                self._keys = _usable(await self._fetch(self.s.jwks_url))
                self._fetched_at = self.clock()
            except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
                log.warning("could not fetch the JWKS from %s: %s", self.s.jwks_url, exc)
                if not self._keys:
                    raise AuthError(503, "the token issuer's signing keys are not available now") from None
                # Keep the keys we have; try again after the short interval, not the long one.
                self._fetched_at = self.clock() - self.s.jwks_refresh + self.s.jwks_min_refresh
        return self._keys

    async def _fetch(self, url: str) -> dict:
        timeout = aiohttp.ClientTimeout(total=self.s.jwks_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            raw = await resp.content.read(MAX_JWKS_BYTES + 1)
            if len(raw) > MAX_JWKS_BYTES:
                raise ValueError("the JWKS is larger than 1 MB")
            return json.loads(raw)

    def _from_file(self, path: Path) -> list[dict]:
        try:
            mtime = path.stat().st_mtime
            if mtime != self._file_mtime:
                self._keys = _usable(json.loads(path.read_text(encoding="utf-8")))
                self._file_mtime = mtime
        except (OSError, ValueError) as exc:
            log.warning("could not read the JWKS file %s: %s", path, exc)
            if not self._keys:
                raise AuthError(503, "the token issuer's signing keys are not available now") from None
        return self._keys


def _usable(jwks) -> list[dict]:
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list):
        raise ValueError("not a JWKS (a JSON object with a 'keys' list)")
    return [k for k in jwks["keys"] if isinstance(k, dict) and k.get("use", "sig") == "sig" and "kty" in k]


class JwtVerifier:
    def __init__(self, settings: JwtSettings, clock=time.monotonic):
        self.s = settings
        self.source = JwksSource(settings, clock)

    def _pick(self, keys: list[dict], kid: str | None, alg: str):
        candidates = [k for k in keys if kid is None or k.get("kid") == kid]
        if kid is None and len(candidates) != 1:
            return None  # without a key id, only an unambiguous JWKS will do
        for jwk in candidates:
            if "alg" in jwk and jwk["alg"] != alg:
                continue
            try:
                return jwt.PyJWK(jwk, algorithm=alg)
            except jwt.PyJWTError:
                continue
        return None

    async def verify(self, token: str) -> Principal:
        s = self.s
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "the token is neither a known static token nor a readable JWT") from None
        alg = header.get("alg")
        if alg not in s.algorithms:
            raise AuthError(401, f"token algorithm {alg!r} is not accepted")
        kid = header.get("kid")
        key = self._pick(await self.source.keys(), kid, alg)
        if key is None:
            # The issuer may have rotated its keys since we fetched them.
            key = self._pick(await self.source.keys(force=True), kid, alg)
        if key is None:
            raise AuthError(401, "the token is not signed by a key of the configured issuer")
        try:
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=list(s.audience),
                issuer=s.issuer,
                leeway=s.leeway,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "the token has expired") from None
        except jwt.InvalidAudienceError:
            raise AuthError(401, "the token is not meant for this service (audience)") from None
        except jwt.InvalidIssuerError:
            raise AuthError(401, "the token is from another issuer") from None
        except jwt.InvalidSignatureError:
            raise AuthError(401, "the token's signature is not valid") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"the token is not valid: {exc}") from None
        if "cnf" in claims:
            # A sender-constrained (DPoP or mTLS-bound) token is only safe when the proof is
            # checked too; komut does not check it, so it must not take such a token as a bearer.
            raise AuthError(401, "sender-constrained (cnf) tokens are not supported; use a bearer token")
        if s.required_scope and s.required_scope not in _scopes(claims):
            raise AuthError(401, f"the token lacks the scope {s.required_scope}", error="insufficient_scope")
        client = str(claims.get(s.client_claim) or claims.get("sub") or "unnamed")[:100]
        return Principal(
            name=f"jwt:{client}",
            her_ids=parse_her_ids(claims.get(s.her_id_claim)),
            rate_key=f"jwt:{client}",
            rate=s.rate,
            burst=s.burst,
        )


class Authenticator:
    def __init__(self, settings: ApiSettings, clock=time.monotonic):
        # Looked up by the presented token's sha256: a caller chooses the token but not its digest,
        # so the lookup's timing tells nothing about a stored one (a constant-time compare against
        # every client costs time in proportion to the number of clients, ~5 us a request for 40).
        self.clients = {client.token_sha256: client for client in settings.clients}
        self.jwt = JwtVerifier(settings.jwt, clock) if settings.jwt is not None else None

    def _static(self, token: str) -> Principal | None:
        found = self.clients.get(hashlib.sha256(token.encode("utf-8")).digest())
        if found is None:
            return None
        return Principal(found.name, found.her_ids, f"static:{found.name}", found.rate, found.burst)

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthError(401, "a bearer token is required", error=None)
        if len(authorization) > MAX_TOKEN_CHARS:
            raise AuthError(401, "the token is too long")
        match = _BEARER.match(authorization)
        if match is None:
            raise AuthError(401, "use the Authorization header 'Bearer <token>'", error="invalid_request")
        token = match.group(1)
        principal = self._static(token)
        if principal is not None:
            return principal
        if self.jwt is not None and token.count(".") == 2:
            return await self.jwt.verify(token)
        raise AuthError(401, "unknown token")
