"""Compare two versions of komut end to end: CPU per hop, both run at the same time.

This VM's speed drifts by 10-30% within minutes, more than most changes are worth, so two
`bench/e2e.py` runs one after the other compare the minutes as much as the versions. Here both
versions' one-hop saturation phases run side by side (each its own two gateways and load
generator), so whatever the machine does, it does to both; each round swaps which one starts first.
The number compared is CPU ms per hop at each gateway, which depends far less on how much of the
machine a run gets than msg/s does.

    python bench/ab.py REV [--other REV2] [--rounds 3] [--seconds 20] [-- e2e arguments...]

REV is any git revision (checked out into a temporary worktree); the other side is this working
tree unless --other names a revision too. Arguments after -- go to both runs of bench/e2e.py
(e.g. `-- --delivery concurrency_per_receiver=16`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GATEWAYS = ("hospital", "municipal")


def worktree(rev: str, parent: Path) -> Path:
    path = parent / rev.replace("/", "_")
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), rev], check=True)
    return path


def one_hop(tree: Path, seconds: float, extra: list[str]) -> dict:
    """One one-hop saturation phase of `tree`'s bench/e2e.py, with this interpreter."""
    command = [
        sys.executable,
        str(tree / "bench" / "e2e.py"),
        "--loads",
        "",
        "--phases",
        "one-hop",
        "--saturation",
        str(seconds),
        "--openssl-seconds",
        "1",
        "--json",
        *extra,
    ]
    done = subprocess.run(command, capture_output=True, text=True, cwd=tree)
    if done.returncode != 0:
        raise SystemExit(f"bench/e2e.py in {tree} failed:\n{done.stderr[-2000:]}")
    report = json.loads(done.stdout)
    (phase,) = [p for p in report["phases"] if p["phase"] == "saturation, one hop"]
    return phase


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rev", help="the version to compare against (a git revision)")
    ap.add_argument("--other", help="a revision for the other side instead of this working tree")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=20, help="measured seconds of each saturation phase")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="komut-ab-") as tmp:
        base = worktree(args.rev, Path(tmp))
        other = worktree(args.other, Path(tmp)) if args.other else REPO
        names = (args.rev, args.other or "working tree")
        trees = (base, other)
        rows = []
        try:
            for i in range(args.rounds):
                order = (0, 1) if i % 2 == 0 else (1, 0)
                with ThreadPoolExecutor(2) as pool:
                    futures = {k: pool.submit(one_hop, trees[k], args.seconds, extra) for k in order}
                    phases = [futures[k].result() for k in (0, 1)]
                rows.append(phases)
                print(
                    f"round {i + 1}: "
                    + "; ".join(
                        f"{names[k]}: {p['one_hop_per_s']:.1f} msg/s, CPU ms per hop "
                        + ", ".join(f"{p['cpu_ms_per_hop'][g]:.2f}" for g in GATEWAYS)
                        for k, p in enumerate(phases)
                    ),
                    flush=True,
                )
        finally:
            for tree in trees:
                if tree != REPO:
                    subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])
    ratios = [
        sum(b["cpu_ms_per_hop"][g] for g in GATEWAYS) / sum(a["cpu_ms_per_hop"][g] for g in GATEWAYS)
        for a, b in rows
    ]
    print(
        f"{names[1]} against {names[0]}: gateway CPU per hop x{statistics.median(ratios):.3f} (median of "
        f"{len(ratios)} rounds; each round {', '.join(f'x{r:.3f}' for r in ratios)}); below 1 is less CPU"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
