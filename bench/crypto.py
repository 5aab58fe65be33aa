"""Message protection throughput against `openssl speed rsa2048`, measured in the same run.

protect = sign (SHA-256, RSA-2048) + encrypt (AES-256-CBC) of a 20 KB message; unprotect =
decrypt + verify + signer checks (validity, key usage, chain, CRL, registered signer). Both run
in this process on one thread, like `openssl speed` (single-core by default), whose RSA-2048 sign
rate is the yardstick: protect does one private-key operation, unprotect one private and one public.

    python bench/crypto.py [--seconds 1.5] [--rounds 4] [--size 20000] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import padding  # noqa: E402

from bench.yardstick import openssl_sign_rate  # noqa: E402
from gateway.protection import (  # noqa: E402
    CertificateChecker,
    ProtectionPolicy,
    StaticCrlSource,
    protect,
    unprotect,
)
from gateway.protection.pki import init_pki  # noqa: E402

TARGETS = {"protect": 0.75, "unprotect": 0.45}
HOLDERS = [(9100000, "Vestre Viken HF", "191000005"), (9203000, "Drammen kommune", "192030006")]


def message(size: int) -> bytes:
    line = (
        b"    <Merknad>Pasienten har behov for oppfolging av hjemmesykepleien, se vedlagt plan.</Merknad>\n"
    )
    body = line * (size // len(line) + 1)
    return (b'<?xml version="1.0" encoding="UTF-8"?>\n<MsgHead>\n' + body)[: size - 11] + b"</MsgHead>\n"


def rate(fn, seconds: float) -> float:
    """Operations per CPU-second of this process, as `openssl speed` counts (it divides by CPU user
    time unless given -elapsed): on a shared machine, wall time would mostly measure the neighbours."""
    count = 0
    cpu_started = time.process_time()
    deadline = time.perf_counter() + seconds
    while True:
        for _ in range(20):
            fn()
        count += 20
        if time.perf_counter() >= deadline:
            return count / (time.process_time() - cpu_started)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1.5, help="per measurement")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--size", type=int, default=20_000, help="message size in bytes")
    ap.add_argument("--openssl-seconds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        pki = init_pki(tmp, HOLDERS)
    sender, receiver = pki.parties[9100000], pki.parties[9203000]
    signer, decryption = sender.sign.credential(), [receiver.enc.credential()]
    checker = CertificateChecker([pki.ca.cert], crl_source=StaticCrlSource([pki.crl]))
    policy = ProtectionPolicy()
    content = message(args.size)
    expected = [sender.sign.cert]
    protected = protect(content, signer=signer, recipient=receiver.enc.cert, policy=policy)
    assert (
        unprotect(protected, credentials=decryption, checker=checker, expected_signers=expected).content
        == content
    )

    def do_protect() -> None:
        protect(content, signer=signer, recipient=receiver.enc.cert, policy=policy)

    def do_raw_sign() -> None:
        signer.key.sign(b"0123456789abcdef0123456789abcdef", padding.PKCS1v15(), hashes.SHA256())

    def do_unprotect() -> None:
        unprotect(
            protected, credentials=decryption, checker=checker, expected_signers=expected, policy=policy
        )

    # Rounds alternate komut and openssl so that both see the same machine state; ratios are taken
    # per round and the median reported (a shared, busy machine moves both numbers by +-25%).
    results: dict[str, list[float]] = {"protect": [], "unprotect": [], "openssl": [], "python_sign": []}
    for _ in range(args.rounds):
        results["python_sign"].append(rate(do_raw_sign, args.seconds / 2))
        results["protect"].append(rate(do_protect, args.seconds))
        results["unprotect"].append(rate(do_unprotect, args.seconds))
        results["openssl"].append(openssl_sign_rate(args.openssl_seconds))
    medians = {name: statistics.median(values) for name, values in results.items()}
    openssl = medians["openssl"]
    ratios = {
        name: statistics.median(a / b for a, b in zip(results[name], results["openssl"], strict=True))
        for name in ("protect", "unprotect", "python_sign")
    }

    if args.json:
        print(json.dumps({"per_second": medians, "rounds": results, "ratios": ratios}))
    else:
        print(
            f"{args.size}-byte message, AES-256-CBC, SHA-256/RSA-2048; one process, one thread; "
            f"median of {args.rounds} rounds, ratios per round"
        )
        print(f"{'operation':<28}{'per second':>12}{'vs openssl sign':>18}{'target':>9}")
        print(f"{'openssl speed rsa2048 sign':<28}{openssl:>12.0f}{'100.0%':>18}{'':>9}")
        print(
            f"{'  same, from Python':<28}{medians['python_sign']:>12.0f}{ratios['python_sign']:>18.1%}{'':>9}"
        )
        for name in ("protect", "unprotect"):
            mark = "ok" if ratios[name] >= TARGETS[name] else "BELOW"
            print(f"{name:<28}{medians[name]:>12.0f}{ratios[name]:>18.1%}{TARGETS[name]:>7.0%} {mark}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
