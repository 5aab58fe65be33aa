"""Operator UI benchmark: the log page and filtered searches over HTTP on a million-row log.

Fills a SQLite delivery log with --rows messages (default 1,000,000, spread over 90 days, with
deliveries and their delivered/AppRec transitions) through the adapter's own SQL
(bench/store.py's generator), starts the UI in this process on 127.0.0.1 (plain HTTP, a logged-in
viewer), and times whole HTTP requests, rendering included: p50 and p95 of --repeat requests per
page, after one warm-up. Generating the million rows takes one to five minutes (longer on a busy
machine); --keep-log keeps them for the next run, which then takes about two minutes.

    python bench/ui.py [--rows 1000000] [--repeat 30] [--keep-log /tmp/ui-log.db] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import aiohttp  # noqa: E402
import store as store_bench  # noqa: E402  (bench/store.py: the million-row generator)
from aiohttp import web  # noqa: E402

from adapters.operator_memory import MemoryOperatorStore  # noqa: E402
from adapters.store_sqlite import SqliteStore  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from gateway.registry import load_default_registry  # noqa: E402
from gateway.ui.app import OperatorUi  # noqa: E402
from gateway.ui.operators import Role, User  # noqa: E402
from gateway.ui.passwords import hash_password  # noqa: E402
from gateway.ui.settings import parse_ui_settings  # noqa: E402

PASSWORD = "benchmark password"
# Transitions the dashboard's latency reads: a transport receipt a few seconds after arrival,
# then the AppRec minutes later, for every delivery that got that far.
SQL_EVENTS = """
    INSERT INTO events (message_id, delivery_id, at, actor, kind, from_state, to_state, reason, details)
    SELECT d.message_id, d.id, m.received_at + 0.2 + (d.id % 50) / 10.0, 'peer', 'transport receipt',
           'sending', 'delivered', '', '{}'
    FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id
    WHERE d.state IN ('delivered', 'app-ok', 'app-rejected', 'app-partial', 'apprec-missing');
    INSERT INTO events (message_id, delivery_id, at, actor, kind, from_state, to_state, reason, details)
    SELECT d.message_id, d.id, m.received_at + 30 + (d.id % 600), 'peer', 'AppRec OK',
           'delivered', d.state, '', '{}'
    FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id
    WHERE d.state IN ('app-ok', 'app-rejected', 'app-partial');
"""


def generate(path: Path, rows: int) -> dict:
    async def create():
        s = SqliteStore(path)
        await s.open()  # the schema, with every migration
        await s.close()

    asyncio.run(create())
    facts = store_bench.generate(path, rows)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -1000000")
    # As the generator does: indexes built once afterwards, by sorting, not row by row.
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name = 'events'"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    conn.executescript(SQL_EVENTS)
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("ANALYZE")
    conn.close()
    return facts


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def serve(path: Path, tmp: Path):
    config = parse_config({"gateway": {"name": "bench"}, "ui": {"page_size": 50}}, tmp)
    store = SqliteStore(path)
    await store.open()
    gateway = SimpleNamespace(
        config=config,
        store=store,
        registry_holder=SimpleNamespace(current=load_default_registry()),
        dispatcher=None,
        pipeline=SimpleNamespace(local_systems={}),
    )
    operators = MemoryOperatorStore()
    await operators.add_user(User("viewer", Role.VIEWER, hash_password(PASSWORD), time.time()))
    ui = OperatorUi(gateway, parse_ui_settings(config), operators)
    app = web.Application()
    ui.mount(app)
    await ui.start()
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return f"http://127.0.0.1:{port}", runner, ui, store


async def time_get(http: aiohttp.ClientSession, url: str, repeat: int, before=None) -> dict:
    # Warm-up (SQLite's page cache, Jinja's compiled templates); no redirects: the login page is fast.
    async with http.get(url, allow_redirects=False) as resp:
        body = await resp.read()
        assert resp.status == 200, (url, resp.status, body[:300])
    times = []
    for _ in range(repeat):
        if before is not None:
            before()
        started = time.perf_counter()
        async with http.get(url, allow_redirects=False) as resp:
            body = await resp.read()
        times.append((time.perf_counter() - started) * 1000)
    times.sort()
    rows = (
        len(re.findall(rb'<tr data-id="\d', body))
        if b"<html" in body[:200]
        else len(json.loads(body).get("items", []))
    )
    return {
        "p50_ms": statistics.median(times),
        "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))],
        "max_ms": times[-1],
        "rows": rows,
        "kb": len(body) / 1024,
    }


async def run(path: Path, facts: dict, repeat: int, tmp: Path) -> list[dict]:
    base, runner, ui, store = await serve(path, tmp)
    try:
        # unsafe=True: keep cookies for an IP address (127.0.0.1), which aiohttp refuses by default.
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:
            async with http.post(
                f"{base}/ui/login", data={"username": "viewer", "password": PASSWORD}
            ) as resp:
                assert resp.status == 200, "login failed"
            last = facts["last_id"]
            middle = last - facts["rows"] // 2
            popular, rare, msg_id = facts["popular_her"], facts["rare_her"], facts["msg_ids"][0]
            # A message in the middle of the log, for the detail page.
            pages = [
                ("log page, newest 50", "/ui/log"),
                ("log page, older page (before=middle)", f"/ui/log?before={middle}"),
                ("filter: status dead", "/ui/log?status=dead"),
                ("filter: status apprec-missing", "/ui/log?status=apprec-missing"),
                ("filter: receiver HER-id, busiest", f"/ui/log?receiver={popular}"),
                ("filter: receiver HER-id, quiet", f"/ui/log?receiver={rare}"),
                ("filter: sender + status app-ok", f"/ui/log?sender={popular}&status=app-ok"),
                ("filter: type + last 7 days", "/ui/log?type=DIALOG_HELSEFAGLIG&range=7d"),
                ("filter: status rejected + 24 h", "/ui/log?status=rejected&range=24h"),
                ("filter: search MsgId", f"/ui/log?q={msg_id}"),
                ("filter: search party name", "/ui/log?q=Storøya+sykehus"),
                ("filter: search HER-id (sender or receiver)", f"/ui/log?q={rare}"),
                ("API: /api/v1/messages?status=dead", "/api/v1/messages?status=dead"),
                ("message page", f"/ui/messages/{middle}"),
                ("dashboard, 24 h (statistics cached, as served)", "/ui/dashboard"),
                ("dashboard, 24 h (statistics recomputed)", "/ui/dashboard", True),
                ("dashboard, 7 days (statistics recomputed)", "/ui/dashboard?window=7d", True),
            ]
            out = []
            for name, url, *fresh in pages:
                # The UI keeps statistics for 30 s; "recomputed" drops them before each request.
                result = await time_get(http, base + url, repeat, ui._stats.clear if fresh else None)
                out.append({"page": name, "url": url, **result})
                print(
                    f"  {name:<48} p50 {result['p50_ms']:7.1f} ms  p95 {result['p95_ms']:7.1f} ms",
                    file=sys.stderr,
                )
            return out
    finally:
        await ui.shutdown()
        await runner.cleanup()
        await store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--keep-log", type=Path, default=None, help="keep the generated log here and reuse it")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="komut-bench-ui-") as tmp:
        path = args.keep_log or Path(tmp) / "log.db"
        facts_file = path.with_suffix(".facts.json")
        reuse = args.keep_log and path.exists() and facts_file.exists()
        if reuse and json.loads(facts_file.read_text())["rows"] == args.rows:
            facts = json.loads(facts_file.read_text())
            print(f"reusing the {args.rows:,}-message log in {path}", file=sys.stderr)
        else:
            for old in path.parent.glob(path.name + "*"):
                old.unlink()
            started = time.perf_counter()
            facts = generate(path, args.rows)
            facts["rows"] = args.rows
            size = path.stat().st_size / 1e6
            print(
                f"generated {args.rows:,} messages in {time.perf_counter() - started:.0f} s ({size:.0f} MB)",
                file=sys.stderr,
            )
            if args.keep_log:
                facts_file.write_text(json.dumps(facts))
        results = asyncio.run(run(path, facts, args.repeat, Path(tmp)))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"\nOperator UI over HTTP on {args.rows:,} messages: whole requests, {args.repeat} each after a warm-up"
    )
    print(f"{'page':<48} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'rows':>5} {'KB':>6}")
    for r in results:
        print(
            f"{r['page']:<48} {r['p50_ms']:>7.1f} {r['p95_ms']:>7.1f} {r['max_ms']:>7.1f} {r['rows']:>5} {r['kb']:>6.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
