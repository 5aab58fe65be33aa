"""The spec's message ids (UUIDs) to and from komut's store ids.

A UUID is the store id encrypted in one AES block under a key this gateway keeps: stable across
restarts, reversible without a lookup table, and it tells a client nothing (neither how many
messages the gateway has seen nor which ids exist). A UUID that does not decrypt to our marker is
simply not a message here, the same answer as for a message the client may not see.
"""

from __future__ import annotations

import os
import secrets
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

MARKER = b"komut-id"
KEY_BYTES = 16


def load_or_create_key(path: Path) -> bytes:
    """The id key in `path`, made (owner-only) on first use. Losing it invalidates issued ids."""
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = secrets.token_bytes(KEY_BYTES)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(key.hex() + "\n")
        try:
            # Another process on the same state folder may have won the race: keep its key.
            os.link(tmp, path)
        except FileExistsError:
            key = bytes.fromhex(path.read_text(encoding="ascii").strip())
        finally:
            tmp.unlink()
    if len(key) not in (16, 24, 32):
        raise ValueError(f"{path}: an AES key of 16, 24 or 32 bytes (hex) was expected")
    return key


class MessageIds:
    def __init__(self, key: bytes):
        cipher = Cipher(algorithms.AES(key), modes.ECB())  # one block, one id: no chaining needed
        # ECB keeps no state between blocks, so one context serves every id: a new one per id cost
        # more than the encryption (GET /Messages makes up to a hundred ids per request).
        self._encryptor = cipher.encryptor()
        self._decryptor = cipher.decryptor()

    def to_uuid(self, store_id: int) -> str:
        block = MARKER + int(store_id).to_bytes(8, "big")
        return str(uuid.UUID(bytes=self._encryptor.update(block)))

    def from_uuid(self, value: str) -> int | None:
        """The store id, or None for anything that is not one of our ids (including non-UUIDs)."""
        try:
            raw = uuid.UUID(value).bytes
        except (ValueError, TypeError, AttributeError):
            return None
        block = self._decryptor.update(raw)
        if block[:8] != MARKER:
            return None
        return int.from_bytes(block[8:], "big")


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        return False
    return True
