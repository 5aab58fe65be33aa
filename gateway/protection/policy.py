"""Per-partner protection policy: what we send and which old algorithms we still take."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from gateway.protection.algorithms import Cipher


class UnknownRevocation(StrEnum):
    """What to do when no current CRL says whether a certificate is revoked."""

    RETRY = "retry"  # keep the message and try again later (the default)
    ACCEPT_AND_FLAG = "accept"  # accept, and mark the result so it is logged and visible


MODERN_CIPHERS = frozenset({Cipher.AES128, Cipher.AES192, Cipher.AES256})


@dataclass(frozen=True)
class ProtectionPolicy:
    send_cipher: Cipher = Cipher.AES256
    accepted_ciphers: frozenset[Cipher] = field(default=MODERN_CIPHERS)
    accept_sha1: bool = False
    accept_oaep: bool = False
    unknown_revocation: UnknownRevocation = UnknownRevocation.RETRY

    def __post_init__(self) -> None:
        # A policy that takes a set/list from configuration still compares and hashes as a value.
        object.__setattr__(self, "accepted_ciphers", frozenset(Cipher(c) for c in self.accepted_ciphers))
        object.__setattr__(self, "send_cipher", Cipher(self.send_cipher))

    @classmethod
    def legacy(cls, **overrides: object) -> ProtectionPolicy:
        """For a partner still on 3DES, SHA-1 or OAEP key transport (we keep sending AES-256)."""
        base = cls(accepted_ciphers=MODERN_CIPHERS | {Cipher.DES3}, accept_sha1=True, accept_oaep=True)
        return replace(base, **overrides)  # type: ignore[arg-type]


DEFAULT_POLICY = ProtectionPolicy()
