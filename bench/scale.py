"""Scale-out benchmark: one gateway on SQLite, one node on PostgreSQL, two nodes on PostgreSQL.

The municipal demo gateway (`komut serve`, set up like the demo) carries messages between two of
its folder-connected local systems: Drammen kommune's PLO system sends HELSEOPPLYSNINGER til lege
(9 KB) to Bakkevik legekontor. N files are dropped into the sender's out/ folder at once; the
throughput is N divided by the time until the last one is in the GP office's in/ folder (accepted
-> validated -> routed -> stored -> claimed -> written to the receiver's folder -> recorded).
With two nodes, both take files from the same out/ folder and deliver from the same store; each
message must arrive exactly once.

Each configuration runs in a fresh demo folder with a warm-up batch first. PostgreSQL is a
throwaway server started by this script (Debian's binaries, as in the tests: fsync on,
synchronous_commit on). Also printed: how busy the machine's cores were (load generator idle,
gateways and PostgreSQL sharing them) and the gateway nodes' CPU seconds per 1000 messages.

    python bench/scale.py [--messages 1000] [--warmup 100] [--rounds 2] [--configs sqlite,pg1,pg2]
                          [--profile DIR] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from cluster import node_config, use_postgres  # noqa: E402
from servers import PostgresServer, free_port, postgres_bin  # noqa: E402

from gateway.demo.setup import setup_demo  # noqa: E402
from gateway.demo.systems import Cast, recast  # noqa: E402
from gateway.protection.pki import init_pki  # noqa: E402
from gateway.registry import default_certificate_holders, load_default_registry  # noqa: E402

SENDER, RECEIVER = 9203000, 9320100  # Drammen kommune -> Bakkevik legekontor, both on "municipal"
TEMPLATE = REPO / "sample_messages/valid/plo/09-helseopplysninger-til-lege.xml"
CAST = {
    "trust": 9100000,
    "site": 9100200,
    "somatikk": 9100201,
    "municipality": SENDER,
    "sykepleie": 9203001,
    "lege": 9203002,
    "saksbehandler": 9203003,
    "gp_office": RECEIVER,
    "gp": 9320101,
}
DELIVERY = {"poll_interval": '"50ms"', "lease_seconds": '"30s"'}
CLK_TCK = os.sysconf("SC_CLK_TCK")
# Thread CPU time: what the node's event loop spends, not what it waits.
PROFILE_LAUNCH = (
    "import cProfile, sys, time; sys.argv[0] = 'komut'; from gateway.cli import main; "
    "p = cProfile.Profile(time.thread_time); p.runcall(main); p.dump_stats('{out}')"
)
LABELS = {"sqlite": "1 node, SQLite", "pg1": "1 node, PostgreSQL", "pg2": "2 nodes, PostgreSQL"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree_cpu(root: int) -> float:
    """CPU seconds of `root` and its children (PostgreSQL: the postmaster and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def postmaster_pid(pg: PostgresServer) -> int:
    return int((pg.data / "postmaster.pid").read_text().split()[0])


def machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies over all cores since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class Run:
    """One configuration: a fresh demo folder, its gateway node(s), files in and out."""

    def __init__(
        self, base: Path, pki: Path, kind: str, pg: PostgresServer | None, round_: int, profile: Path | None
    ):
        self.kind = kind
        self.profile = profile
        self.pg = pg if kind != "sqlite" else None
        self.dir = base / f"{kind}-{round_}"
        shutil.copytree(pki, self.dir / "pki")
        self.info = setup_demo(self.dir, free_port(), delivery=DELIVERY)
        config = Path(self.info["gateways"]["municipal"]["config"])
        self.configs = [config]
        if kind != "sqlite":
            use_postgres(config, pg.new_database(kind))
        if kind == "pg2":
            self.configs = [node_config(config, node, free_port()) for node in ("a", "b")]
        systems = self.info["systems"]
        self.out = Path(systems[str(SENDER)]["out"])
        self.inbox = Path(systems[str(RECEIVER)]["in"])
        self.staging = self.dir / "staging"
        self.staging.mkdir()
        self.procs: list[subprocess.Popen] = []
        self.registry = load_default_registry()
        self.template = TEMPLATE.read_bytes()

    def start(self) -> None:
        for i, config in enumerate(self.configs):
            log = open(self.dir / f"node-{i}.log", "ab")  # noqa: SIM115 - lives as long as the process
            command = ["-m", "gateway.cli"]
            if self.profile is not None:
                command = ["-c", PROFILE_LAUNCH.format(out=self.profile / f"{self.dir.name}-node{i}.prof")]
            self.procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        *command,
                        "serve",
                        "--config",
                        str(config),
                        "--log-level",
                        "WARNING",
                    ],
                    stdout=log,
                    stderr=log,
                    cwd=REPO,
                )
            )
            log.close()

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stage(self, count: int, tag: str) -> list[Path]:
        files = []
        for i in range(count):
            data, _ = recast(self.template, self.registry, Cast(CAST), {})
            path = self.staging / f"{tag}-{i:05}.xml"
            path.write_bytes(data)
            files.append(path)
        return files

    def delivered(self) -> int:
        return sum(1 for name in os.listdir(self.inbox) if name.endswith(".xml") and not name.startswith("."))

    def batch(self, files: list[Path], timeout: float = 300.0) -> dict:
        before = self.delivered()
        target = before + len(files)
        cpu0 = self.cpu()
        busy0, total0 = machine_busy()
        start = time.monotonic()
        for path in files:  # a rename each: out/ sees complete files only
            os.rename(path, self.out / path.name)
        while (done := self.delivered()) < target:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise SystemExit(f"a {self.kind} node exited; see {self.dir}/node-*.log")
            if time.monotonic() - start > timeout:
                raise SystemExit(
                    f"{self.kind}: only {done - before} of {len(files)} delivered in {timeout:.0f} s"
                )
            time.sleep(0.02)
        elapsed = time.monotonic() - start
        busy1, total1 = machine_busy()
        nodes, database = (after - before for after, before in zip(self.cpu(), cpu0, strict=True))
        per_message = (nodes + database) / len(files)
        return {
            "messages": len(files),
            "seconds": round(elapsed, 2),
            "per_second": round(len(files) / elapsed, 1),
            "machine_cores_busy": round((busy1 - busy0) / max(total1 - total0, 1) * os.cpu_count(), 2),
            "node_cpu_ms": round(nodes / len(files) * 1000, 2),
            "postgres_cpu_ms": round(database / len(files) * 1000, 2),
            # What one core would carry if nothing else ran on it: a load-independent capacity figure.
            "per_core_second": round(1 / per_message, 1) if per_message else None,
        }

    def cpu(self) -> tuple[float, float]:
        nodes = sum(cpu_seconds(p.pid) for p in self.procs)
        return nodes, process_tree_cpu(postmaster_pid(self.pg)) if self.pg is not None else 0.0

    def wait_ready(self, timeout: float = 60.0) -> None:
        # The gateways answer /healthz once started; a warm-up batch that arrives proves it better.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(p.poll() is None for p in self.procs) and self.out.parent.joinpath(".processing").exists():
                return
            time.sleep(0.1)
        raise SystemExit(f"{self.kind}: the gateway did not come up; see {self.dir}/node-*.log")

    def received_once(self) -> bool:
        ids = [p.read_bytes().split(b"<MsgId>", 1)[1][:36] for p in self.inbox.glob("*.xml")]
        return len(ids) == len(set(ids))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--rounds", type=int, default=2, help="configurations run interleaved; the best round counts"
    )
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--configs", default="sqlite,pg1,pg2")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--profile", type=Path, help="write a cProfile of each node (thread CPU time) here")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.configs.split(",") if k.strip()]
    unknown = set(kinds) - set(LABELS)
    if unknown:
        parser.error(f"unknown configuration(s) {sorted(unknown)}; choose from {sorted(LABELS)}")
    pg = None
    if any(k != "sqlite" for k in kinds):
        folder = postgres_bin()
        if folder is None:
            print("PostgreSQL server binaries not found: apt-get install postgresql", file=sys.stderr)
            return 2
        pg = PostgresServer(folder).start()
    base = Path(tempfile.mkdtemp(prefix="komut-scale-"))
    results: dict[str, dict] = {}
    load_before = os.getloadavg()[0]
    try:
        pki = base / "pki"
        init_pki(pki, default_certificate_holders())
        # Interleaved rounds: a neighbour that loads the machine for a while hurts every configuration.
        for round_ in range(args.rounds):
            for kind in kinds:
                run = Run(base, pki, kind, pg, round_, args.profile)
                warm, measured = run.stage(args.warmup, "warm"), run.stage(args.messages, "load")
                run.start()
                try:
                    run.wait_ready()
                    run.batch(warm, timeout=120)
                    result = run.batch(measured)
                    result["once"] = run.received_once()
                finally:
                    run.stop()
                    shutil.rmtree(run.dir, ignore_errors=True)
                best = results.get(kind)
                if best is None or result["per_second"] > best["per_second"]:
                    results[kind] = result | {"once": result["once"] and (best is None or best["once"])}
                elif not result["once"]:
                    best["once"] = False
                if not args.json:
                    print(
                        f"round {round_ + 1}: {LABELS[kind]:<22} {result['per_second']:>8.1f} msg/s",
                        file=sys.stderr,
                    )
    finally:
        if pg is not None:
            pg.stop()
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        print(
            json.dumps(
                {"cores": os.cpu_count(), "load_average_before": load_before, "results": results}, indent=2
            )
        )
        return 0 if all(r["once"] for r in results.values()) else 1
    base_rate = results.get("sqlite", {}).get("per_second")
    print(
        f"\nfolder -> gateway -> folder, {args.messages} messages of {TEMPLATE.stat().st_size // 1024} KB, "
        f"best of {args.rounds} rounds; {os.cpu_count()} cores shared by the gateway nodes, PostgreSQL and "
        f"anything else running (load average {load_before:.1f} at the start)\n"
    )
    print(
        f"{'configuration':<22} {'msg/s':>7} {'vs SQLite':>9} {'cores busy':>10} {'node CPU':>9} "
        f"{'PG CPU':>7} {'msg/s per core':>15} {'each once':>9}"
    )
    for kind, r in results.items():
        ratio = f"{r['per_second'] / base_rate:.2f}x" if base_rate else "-"
        print(
            f"{LABELS[kind]:<22} {r['per_second']:>7.1f} {ratio:>9} {r['machine_cores_busy']:>10.2f} "
            f"{r['node_cpu_ms']:>6.2f} ms {r['postgres_cpu_ms']:>4.2f} ms {r['per_core_second']:>15.1f} "
            f"{'yes' if r['once'] else 'NO':>9}"
        )
    print(
        "\nnode/PG CPU: CPU time per message in the gateway node(s) and in PostgreSQL; msg/s per core: 1 / both."
    )
    return 0 if all(r["once"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
