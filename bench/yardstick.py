"""The machine's own crypto limit, which every benchmark here is measured against."""

from __future__ import annotations

import re
import subprocess


def openssl_sign_rate(seconds: int = 3) -> float:
    """RSA-2048 private-key operations per second, single core, from `openssl speed`."""
    out = subprocess.run(
        ["openssl", "speed", "-seconds", str(seconds), "rsa2048"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"^rsa\s+2048 bits\s+\S+\s+\S+\s+([\d.]+)\s+([\d.]+)", out, re.MULTILINE)
    if not match:
        raise SystemExit(f"could not read `openssl speed` output:\n{out}")
    return float(match.group(1))
