"""Store benchmark: durable messages per second, and delivery-log search on a million rows.

Part 1 submits changes shaped like the pipeline's (1 message + 1 delivery + 2 events, a 20 KB
PLO payload) to SqliteStore with synchronous=FULL from 1, 10 and 100 concurrent submitters and
counts what apply() acknowledged (each acknowledgement means: on disk).

Part 2 fills a log of --rows messages (default 1,000,000; about a minute to generate) with the
adapter's own INSERT statements, then times search() for the queries the operator UI makes.
The whole default run takes about 70 s.

    python bench/store.py [--seconds 4] [--rows 1000000] [--levels 1,6] [--dir /tmp] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from adapters import store_sqlite as S  # noqa: E402
from adapters.store_sqlite import SqliteStore  # noqa: E402
from gateway.lifecycle import DeliveryState, MessageState  # noqa: E402
from gateway.store import Change, DeliveryRecord, Direction, Event, MessageRecord, Query  # noqa: E402

PAYLOAD = (REPO / "sample_messages/valid/plo/07-utskrivningsrapport.xml").read_bytes()[:20_000]


def change(n: int, now: float) -> Change:
    key = f"{n}-{uuid.uuid4()}"
    # The MsgId inside the body differs per message, as it would.
    payload = PAYLOAD.replace(b"<MsgId>", b"<MsgId>" + key.encode(), 1)
    record = MessageRecord(
        direction=Direction.OUTBOUND,
        state=MessageState.ACCEPTED,
        dedupe_key=f"100001:{key}",
        received_at=now,
        source="folder:100001",
        msg_id=key,
        msg_type="PLO_UTSKRIVNINGSRAPPORT",
        sender_her=100001,
        receiver_her=100002,
        conversation=key,
        size=len(payload),
        payload=payload,
        summary={"sender_name": "Bakkevik legekontor", "receiver_name": "Ørnes sykehjem", "type_text": "x"},
    )
    deliveries = [
        DeliveryRecord(None, 100002, "PRIM", "https", "https://peer/x", DeliveryState.QUEUED, now + 86400)
    ]
    events = [
        Event(now, "gateway", "stored", to_state="received", reason="from folder:100001"),
        Event(now, "gateway", "validated and routed", from_state="received", to_state="accepted"),
    ]
    return Change(new_message=record, new_deliveries=deliveries, events=events)


async def throughput(
    directory: Path, concurrency: int, seconds: float, level: int, read_threads: int
) -> dict:
    path = directory / f"tp-{concurrency}-{level}-{read_threads}.db"
    store = SqliteStore(path, synchronous="FULL", compress_level=level, read_threads=read_threads)
    await store.open()
    counter = [0]
    deadline = time.perf_counter() + seconds
    latencies: list[float] = []

    async def submitter(i: int) -> None:
        while time.perf_counter() < deadline:
            counter[0] += 1
            c = change(counter[0], time.time())
            started = time.perf_counter()
            await store.apply(c)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    commits0 = store.commits
    await asyncio.gather(*(submitter(i) for i in range(concurrency)))
    elapsed = time.perf_counter() - started
    commits = store.commits - commits0
    await store.close()
    size = sum(p.stat().st_size for p in directory.glob(path.name + "*"))
    latencies.sort()
    return {
        "concurrency": concurrency,
        "level": level,
        "msgs_per_s": len(latencies) / elapsed,
        "commits_per_s": commits / elapsed,
        "per_commit": len(latencies) / max(commits, 1),
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "bytes_per_msg": size / max(len(latencies), 1),
    }


async def read_mix(directory: Path, seconds: float, read_threads: int) -> dict:
    """The pipeline's shape: find_message (dedupe check) then apply, 100 submitters."""
    path = directory / f"mix-{read_threads}.db"
    store = SqliteStore(path, read_threads=read_threads)
    await store.open()
    counter = [0]
    done = [0]
    deadline = time.perf_counter() + seconds
    read_latency: list[float] = []

    async def submitter() -> None:
        while time.perf_counter() < deadline:
            counter[0] += 1
            c = change(counter[0], time.time())
            started = time.perf_counter()
            await store.find_message(c.new_message.dedupe_key)
            read_latency.append(time.perf_counter() - started)
            await store.apply(c)
            done[0] += 1

    started = time.perf_counter()
    await asyncio.gather(*(submitter() for _ in range(100)))
    elapsed = time.perf_counter() - started
    await store.close()
    read_latency.sort()
    return {
        "read_threads": read_threads,
        "msgs_per_s": done[0] / elapsed,
        "read_p50_ms": read_latency[len(read_latency) // 2] * 1000,
        "read_p99_ms": read_latency[int(len(read_latency) * 0.99)] * 1000,
    }


# --- the million-row log -------------------------------------------------------------------------

TYPES = [  # (type, weight): AppRecs are about half of all traffic
    ("APPREC", 45),
    ("DIALOG_HELSEFAGLIG", 15),
    ("PLO_LOGISTIKK", 12),
    ("PLO_HELSEOPPLYSNINGER", 10),
    ("PLO_INNLEGGELSESRAPPORT", 6),
    ("PLO_UTSKRIVNINGSRAPPORT", 5),
    ("DIALOG_FORESPORSEL", 4),
    ("DIALOG_SVAR", 2),
    ("PLO_MEDISINSKE_OPPLYSNINGER", 0.9),
    ("PLO_ORIENTERING_OM_TJENESTETILBUD", 0.1),
]
DELIVERY_STATES = [
    ("app-ok", 88),
    ("delivered", 4),
    ("queued", 1),
    ("retry-wait", 0.5),
    ("app-rejected", 1),
    ("app-partial", 0.5),
    ("apprec-missing", 2),
    ("expired", 0.5),
    ("dead", 0.3),
    ("cancelled", 0.2),
]
TOWNS = [
    "Bakkevik",
    "Ørnes",
    "Åsgård",
    "Fjellstad",
    "Nordvik",
    "Sørbø",
    "Lillevåg",
    "Storøya",
    "Elvedal",
    "Tindeby",
]
KINDS = ["legekontor", "sykehjem", "hjemmetjeneste", "legevakt", "sykehus", "helsestasjon", "fysioterapi"]


def weighted(rng: random.Random, table):
    values, weights = zip(*table, strict=True)
    return lambda: rng.choices(values, weights)[0]


def generate(path: Path, rows: int, seed: int = 1) -> dict:
    """Fill the log through the adapter's own SQL; returns facts for choosing queries."""
    rng = random.Random(seed)
    parties = [(100_000 + i, f"{rng.choice(TOWNS)} {rng.choice(KINDS)} {i}") for i in range(2000)]
    # A few parties carry most traffic, as in practice (large hospitals and municipalities).
    party_weights = [1 / (i + 1) ** 0.8 for i in range(len(parties))]
    pick_type = weighted(rng, TYPES)
    pick_state = weighted(rng, DELIVERY_STATES)
    span = 90 * 86400.0
    start = time.time() - span
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    conn.execute("PRAGMA journal_mode = OFF")  # a throwaway file: no rollback needed
    # Indexes are built once at the end, by sorting, rather than maintained row by row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL "
        "AND tbl_name IN ('messages', 'deliveries')"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    party_ids = {}
    for her, name in parties:
        conn.execute(S.SQL_PARTY_INSERT, (name, name.casefold()))
        party_ids[her] = conn.execute(S.SQL_PARTY_ID, (name,)).fetchone()[0]
    facts = {"msg_ids": [], "start": start, "end": start + span}
    batch = 20_000
    message_id = 0
    conn.execute("BEGIN")
    for first in range(0, rows, batch):
        messages, deliveries = [], []
        senders = rng.choices(parties, party_weights, k=batch)
        receivers = rng.choices(parties, party_weights, k=batch)
        for i in range(min(batch, rows - first)):
            message_id += 1
            at = start + span * (first + i) / rows + rng.random()
            (s, sname), (r, rname) = senders[i], receivers[i]
            msg_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
            if rng.random() < 0.0002:
                facts["msg_ids"].append(msg_id)
            state = "accepted" if rng.random() < 0.97 else rng.choice(["rejected", "duplicate"])
            summary = json.dumps({"sender_name": sname, "receiver_name": rname, "type_text": "x"})
            messages.append(
                (
                    rng.choice(["outbound", "inbound"]),
                    state,
                    f"{s}:{msg_id}",
                    at,
                    f"folder:{s}",
                    msg_id,
                    pick_type(),
                    s,
                    r,
                    msg_id,
                    None,
                    20_000,
                    summary,
                    "[]",
                    party_ids[s],
                    party_ids[r],
                )
            )
            if state == "accepted":
                receivers_here = [r] + ([rng.choice(parties)[0]] if rng.random() < 0.1 else [])
                for her in receivers_here:
                    d_state = pick_state()
                    deliveries.append(
                        (
                            message_id,
                            her,
                            "PRIM",
                            "https",
                            "https://peer/x",
                            d_state,
                            at + 86400,
                            1,
                            1,
                            at + 60 if d_state == "retry-wait" else None,
                            at + 96 * 3600 if d_state == "delivered" else None,
                            "1" if d_state == "app-ok" else None,
                            None,
                            None,
                            None,
                            None,
                            None,
                            at,
                        )
                    )
        conn.executemany(S.SQL_INSERT_MESSAGE, messages)
        conn.executemany(S.SQL_INSERT_DELIVERY, deliveries)
    conn.execute("COMMIT")
    for _, sql in indexes:
        conn.execute(sql)
    conn.executescript(S.SQL_TIME_BLOCKS_REBUILD_SIZED)
    conn.execute("ANALYZE")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    facts["popular_her"] = parties[0][0]
    facts["rare_her"] = parties[-1][0]
    facts["last_id"] = message_id
    return facts


async def time_search(store: SqliteStore, query: Query, repeat: int = 7) -> tuple[float, float, int]:
    times, found = [], 0
    for _ in range(repeat):
        started = time.perf_counter()
        found = len(await store.search(query))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), max(times), found


async def search_bench(directory: Path, rows: int, keep: Path | None) -> list[dict]:
    path = keep or directory / "log.db"
    facts_file = path.with_suffix(".facts.json")
    if keep and facts_file.exists() and json.loads(facts_file.read_text())["rows"] == rows:
        facts = json.loads(facts_file.read_text())
        print(f"reusing the {rows:,}-message log in {path}", file=sys.stderr)
    else:
        for old in path.parent.glob(path.name + "*"):
            old.unlink()
        store = SqliteStore(path)
        await store.open()  # creates the schema
        await store.close()
        started = time.perf_counter()
        facts = generate(path, rows)
        facts["rows"] = rows
        generated = time.perf_counter() - started
        size = path.stat().st_size / 1e6
        print(f"generated {rows:,} messages in {generated:.0f} s ({size:.0f} MB)", file=sys.stderr)
        if keep:
            facts_file.write_text(json.dumps(facts))
    store = SqliteStore(path)
    await store.open()
    end = facts["end"]
    page = await store.search(Query(limit=100))
    deep_before = facts["last_id"] - rows // 2
    queries = [
        ("newest page", Query()),
        ("page in the middle (before_id)", Query(before_id=deep_before)),
        ("next page after the first", Query(before_id=page[-1].id)),
        ("receiver HER-id (busiest)", Query(receiver_her=facts["popular_her"])),
        ("receiver HER-id (quiet)", Query(receiver_her=facts["rare_her"])),
        ("her_id, sender or receiver or copy", Query(her_id=facts["popular_her"])),
        ("delivery state dead (rare)", Query(state="dead")),
        ("delivery state app-ok (common)", Query(state="app-ok")),
        ("message state rejected", Query(state="rejected")),
        ("msg type + last 7 days", Query(msg_type="DIALOG_HELSEFAGLIG", since=end - 7 * 86400, until=end)),
        ("msg type + 30 days (busiest type)", Query(msg_type="APPREC", since=end - 30 * 86400, until=end)),
        (
            "msg type + a day 60 days ago",
            Query(msg_type="PLO_LOGISTIKK", since=end - 60 * 86400, until=end - 59 * 86400),
        ),
        ("rare msg type, no time", Query(msg_type="PLO_ORIENTERING_OM_TJENESTETILBUD")),
        ("time range only, 1 day", Query(since=end - 40 * 86400, until=end - 39 * 86400)),
        ("time range only, 60 days", Query(since=end - 80 * 86400, until=end - 20 * 86400)),
        ("text = MsgId", Query(text=facts["msg_ids"][0])),
        ("text = HER-id", Query(text=str(facts["rare_her"]))),
        ("text = party name fragment", Query(text="Storøya sykehus")),
        ("text = common word", Query(text="legekontor")),
        (
            "state + type + receiver",
            Query(state="apprec-missing", msg_type="APPREC", receiver_her=facts["popular_her"]),
        ),
    ]
    out = []
    for name, query in queries:
        median, worst, found = await time_search(store, query)
        out.append({"query": name, "median_ms": median, "max_ms": worst, "rows": found})
    await store.close()
    return out


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=4.0, help="per throughput measurement")
    ap.add_argument("--rows", type=int, default=1_000_000, help="log size for the search part; 0 skips it")
    ap.add_argument("--levels", default="1", help="zlib levels to compare, e.g. 1,6")
    ap.add_argument("--read-mix", action="store_true", help="also compare reads on a pool vs the writer")
    ap.add_argument("--dir", default=None, help="where to put the temporary files")
    ap.add_argument("--keep-log", type=Path, default=None, help="keep the generated log here and reuse it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    results: dict = {"throughput": [], "read_mix": [], "search": []}
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="komut-bench-") as tmp:
        directory = Path(tmp)
        for level in (int(x) for x in args.levels.split(",")):
            for concurrency in (1, 10, 100):
                results["throughput"].append(await throughput(directory, concurrency, args.seconds, level, 4))
        if args.read_mix:
            for threads in (4, 0):
                results["read_mix"].append(await read_mix(directory, args.seconds, threads))
        if args.rows:
            results["search"] = await search_bench(directory, args.rows, args.keep_log)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"\nDurable messages/s, SQLite WAL synchronous=FULL, 20 KB payload ({args.seconds:g} s each)")
    print(
        f"{'zlib':>4} {'submitters':>10} {'msgs/s':>9} {'commits/s':>9} {'per commit':>10} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'bytes/msg':>9}"
    )
    for r in results["throughput"]:
        print(
            f"{r['level']:>4} {r['concurrency']:>10} {r['msgs_per_s']:>9.0f} {r['commits_per_s']:>9.0f} "
            f"{r['per_commit']:>10.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['bytes_per_msg']:>9.0f}"
        )
    if results["read_mix"]:
        print("\nfind_message + apply, 100 submitters")
        for r in results["read_mix"]:
            where = (
                f"{r['read_threads']} reader threads" if r["read_threads"] else "reads on the writer thread"
            )
            print(
                f"  {where:<28} {r['msgs_per_s']:>7.0f} msgs/s  read p50 {r['read_p50_ms']:.2f} ms"
                f"  p99 {r['read_p99_ms']:.2f} ms"
            )
    if results["search"]:
        print(f"\nsearch() on {args.rows:,} messages, limit 100 (median and worst of 7)")
        print(f"{'query':<38} {'median ms':>9} {'max ms':>8} {'rows':>5}")
        for r in results["search"]:
            print(f"{r['query']:<38} {r['median_ms']:>9.1f} {r['max_ms']:>8.1f} {r['rows']:>5}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
