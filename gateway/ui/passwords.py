"""Operator passwords: Argon2id, at the OWASP Password Storage Cheat Sheet's minimum cost (19 MiB,
2 passes, 1 lane; about 80 ms here). The parameters travel inside each hash, so raising them later
re-hashes a password at its next successful login without invalidating the others."""

from __future__ import annotations

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_LENGTH = 12
MAX_LENGTH = 256  # hashing is deliberately costly; do not let a request hash megabytes

_HASHER = PasswordHasher(
    time_cost=2, memory_cost=19456, parallelism=1, hash_len=32, salt_len=16, type=Type.ID
)
# Compared against when the user does not exist, so that a wrong name costs as long as a wrong password.
_DUMMY = _HASHER.hash("komut: no such user, but take as long as if there were")


class WeakPassword(ValueError):
    """A new password that does not meet the policy; the text says which rule it breaks."""


def check_policy(password: str) -> None:
    if len(password) < MIN_LENGTH:
        raise WeakPassword(f"a password needs at least {MIN_LENGTH} characters")
    if len(password) > MAX_LENGTH:
        raise WeakPassword(f"a password may have at most {MAX_LENGTH} characters")


def hash_password(password: str) -> str:
    check_policy(password)
    return _HASHER.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    if len(password) > MAX_LENGTH:
        return False
    try:
        return _HASHER.verify(password_hash or _DUMMY, password) and password_hash is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    try:
        return _HASHER.check_needs_rehash(password_hash)
    except InvalidHashError:
        return True
