"""How the SQL stores keep payloads: a plain zlib stream, with its codec name stored beside it."""

from __future__ import annotations

import zlib

CODEC = "zlib"


def compress(payload: bytes, level: int) -> bytes:
    """zlib with its window and hash table sized to the payload. For the default 32 KB window
    deflate sets up 256 KB of state, which costs more than compressing a message of a few KB
    (about 100 us against 35 for a 3.8 KB PLO message). The window still covers the whole payload,
    so the output is as small, and it is a plain zlib stream (its header says the window size)."""
    wbits = min(15, max(9, (len(payload) + 261).bit_length()))
    deflate = zlib.compressobj(level, zlib.DEFLATED, wbits, min(7, max(5, wbits - 8)))
    return deflate.compress(payload) + deflate.flush()


def decompress(codec: str, data: bytes) -> bytes:
    if codec != CODEC:
        raise ValueError(f"unknown payload codec {codec!r}")
    return zlib.decompress(data)
