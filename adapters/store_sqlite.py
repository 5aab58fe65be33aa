"""The embedded default store: one SQLite file in WAL mode.

Durability costs one fsync per transaction, so every write goes through one writer thread that
takes all waiting changes and commits them in one transaction (group commit): a hundred callers
waiting together share one fsync. Each change runs inside its own SAVEPOINT, so a change that
fails (a Conflict, a bug) is rolled back alone and the others in the batch still commit. Callers
are answered only after COMMIT has returned, i.e. once the WAL is on disk (synchronous=FULL).

Reads run on a small pool of threads with their own connections; WAL lets them proceed while the
writer commits. Payloads are zlib-compressed in a table of their own so that scanning and
indexing metadata never touches them, and they can be purged (and the space given back with
incremental vacuum) while metadata and events stay.

All SQL of this adapter is in the "SQL" section below; the schema evolves only by appending to
MIGRATIONS (the file's `PRAGMA user_version` says how many have been applied).

Search semantics (shared with the other stores, pinned by tests/test_store_contract.py):
newest first by id; `since` inclusive, `until` exclusive on received_at; `her_id` and a numeric
`text` match the sender, the receiver or the receiver of any delivery (copies); `text` also
matches msg_id exactly and a case-insensitive substring of the sender's or receiver's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import math
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from adapters.payload_codec import CODEC, compress, decompress
from gateway.lifecycle import (
    FINAL_DELIVERY_STATES,
    FINAL_MESSAGE_STATES,
    DeliveryState,
    MessageState,
    check_delivery,
)
from gateway.store import (
    FAILED_STATES,
    LATENCY_STATES,
    Applied,
    Change,
    Claimed,
    Conflict,
    DeliveryRecord,
    Direction,
    Event,
    Latency,
    MessageRecord,
    PartnerStats,
    Query,
    StoreUnavailable,
    TrafficStats,
)

# ------------------------------------------------------------------------------------------------
# SQL
# ------------------------------------------------------------------------------------------------

# Applied in order at open(); never edit a released step, append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the delivery log
    """
    CREATE TABLE messages (
        id            INTEGER PRIMARY KEY,
        direction     TEXT NOT NULL,
        state         TEXT NOT NULL,
        dedupe_key    TEXT NOT NULL,
        received_at   REAL NOT NULL,
        source        TEXT NOT NULL,
        msg_id        TEXT NOT NULL DEFAULT '',
        msg_type      TEXT NOT NULL DEFAULT '',
        sender_her    INTEGER,
        receiver_her  INTEGER,
        conversation  TEXT,
        refers_to     TEXT,
        size          INTEGER NOT NULL DEFAULT 0,
        summary       TEXT NOT NULL DEFAULT '{}',
        problems      TEXT NOT NULL DEFAULT '[]',
        sender_party  INTEGER REFERENCES parties(id),
        receiver_party INTEGER REFERENCES parties(id)
    );
    CREATE UNIQUE INDEX messages_dedupe ON messages(dedupe_key);
    -- Every SQLite index ends with the rowid, so an equality on one column yields its rows
    -- newest first for free: keyset pages (id < ? ORDER BY id DESC LIMIT ?) stop early.
    CREATE INDEX messages_msg_id ON messages(msg_id);
    CREATE INDEX messages_sender ON messages(sender_her);
    CREATE INDEX messages_receiver ON messages(receiver_her);
    CREATE INDEX messages_conversation ON messages(conversation);
    CREATE INDEX messages_state ON messages(state);
    CREATE INDEX messages_type ON messages(msg_type);
    CREATE INDEX messages_sender_party ON messages(sender_party) WHERE sender_party IS NOT NULL;
    CREATE INDEX messages_receiver_party ON messages(receiver_party) WHERE receiver_party IS NOT NULL;

    -- A time range becomes an id range: the smallest and largest received_at per block of ids
    -- (as PostgreSQL's BRIN does). Ids follow arrival, so a range maps to few blocks, and every
    -- index above keeps serving rows newest first within it; out-of-order times only widen it.
    CREATE TABLE time_blocks (
        block   INTEGER PRIMARY KEY,
        min_at  REAL NOT NULL,
        max_at  REAL NOT NULL
    );

    -- Party names for text search, one row per distinct name: a substring match scans this
    -- small table, then the party indexes above find the messages.
    CREATE TABLE parties (
        id      INTEGER PRIMARY KEY,
        name    TEXT NOT NULL UNIQUE,
        folded  TEXT NOT NULL
    );

    CREATE TABLE payloads (
        message_id   INTEGER PRIMARY KEY REFERENCES messages(id),
        received_at  REAL NOT NULL,
        stored       INTEGER NOT NULL,
        codec        TEXT NOT NULL,
        data         BLOB NOT NULL
    );
    -- Retention by age, and the total for the size cap, without reading the blobs.
    CREATE INDEX payloads_age ON payloads(received_at, stored);

    CREATE TABLE deliveries (
        id              INTEGER PRIMARY KEY,
        message_id      INTEGER NOT NULL REFERENCES messages(id),
        receiver_her    INTEGER NOT NULL,
        role            TEXT NOT NULL,
        transport       TEXT NOT NULL,
        endpoint        TEXT NOT NULL,
        state           TEXT NOT NULL,
        expires_at      REAL NOT NULL,
        expects_apprec  INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at REAL,
        apprec_due_at   REAL,
        apprec_status   TEXT,
        apprec_msg_id   TEXT,
        fifo_key        TEXT,
        last_error      TEXT,
        lease_owner     TEXT,
        lease_until     REAL,
        updated_at      REAL NOT NULL
    );
    CREATE INDEX deliveries_message ON deliveries(message_id);
    CREATE INDEX deliveries_receiver ON deliveries(receiver_her, message_id);
    CREATE INDEX deliveries_state ON deliveries(state, message_id);
    CREATE INDEX deliveries_expiry ON deliveries(state, expires_at);
    CREATE INDEX deliveries_apprec_due ON deliveries(state, apprec_due_at) WHERE apprec_due_at IS NOT NULL;
    -- The claim scan reads only this index: a backlog of not-yet-due retries or of receivers
    -- with an open circuit is skipped without touching the table.
    CREATE INDEX deliveries_claimable ON deliveries(transport, id, state, next_attempt_at, receiver_her)
        WHERE state IN ('queued', 'retry-wait');
    CREATE INDEX deliveries_fifo ON deliveries(receiver_her, fifo_key, id)
        WHERE fifo_key IS NOT NULL AND state IN ('queued', 'sending', 'retry-wait');
    CREATE INDEX deliveries_leases ON deliveries(lease_until) WHERE state = 'sending';

    -- Deliveries per state, kept by triggers in the same transactions: counts() for dashboards
    -- and metrics costs the same with a thousand deliveries or a hundred million.
    CREATE TABLE delivery_counts (
        state  TEXT PRIMARY KEY,
        n      INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TRIGGER deliveries_counted_insert AFTER INSERT ON deliveries BEGIN
        INSERT INTO delivery_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_counted_update AFTER UPDATE OF state ON deliveries
        WHEN OLD.state IS NOT NEW.state BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE state = OLD.state;
        INSERT INTO delivery_counts (state, n) VALUES (NEW.state, 1)
            ON CONFLICT (state) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER deliveries_counted_delete AFTER DELETE ON deliveries BEGIN
        UPDATE delivery_counts SET n = n - 1 WHERE state = OLD.state;
    END;

    CREATE TABLE events (
        id           INTEGER PRIMARY KEY,
        message_id   INTEGER,
        delivery_id  INTEGER,
        at           REAL NOT NULL,
        actor        TEXT NOT NULL,
        kind         TEXT NOT NULL,
        from_state   TEXT,
        to_state     TEXT,
        reason       TEXT NOT NULL DEFAULT '',
        details      TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_message ON events(message_id);
    """,
    # 2: latency statistics read the transitions to delivered and to an AppRec state from this
    # index alone (two or so entries per message) instead of every event row of every message.
    """
    CREATE INDEX events_outcomes ON events(message_id, to_state, at)
        WHERE to_state IN ('delivered', 'app-ok', 'app-partial', 'app-rejected');
    """,
)

PRAGMAS_NEW_FILE = "PRAGMA auto_vacuum = INCREMENTAL"  # only takes effect before the first table
PRAGMAS_WRITER = (
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = {synchronous}",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA cache_size = -65536",
    "PRAGMA temp_store = MEMORY",
    # After a large transaction the WAL is cut back to this size rather than kept at its peak.
    "PRAGMA journal_size_limit = 67108864",
)
PRAGMAS_READER = (
    "PRAGMA busy_timeout = 10000",
    "PRAGMA cache_size = -32768",
    "PRAGMA temp_store = MEMORY",
    "PRAGMA query_only = ON",
)
# Lookups on the caller's thread never wait: busy means "ask a reader thread" (see _lookup).
PRAGMAS_LOOKUP = (
    "PRAGMA busy_timeout = 0",
    "PRAGMA cache_size = -8192",
    "PRAGMA query_only = ON",
)
SQL_ANALYZE_QUICK = "PRAGMA analysis_limit = 1000; ANALYZE;"
SQL_HAS_STATS = "SELECT count(*) FROM sqlite_master WHERE name = 'sqlite_stat1'"
SQL_OPTIMIZE = "PRAGMA optimize"
SQL_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)"
SQL_FREELIST = "PRAGMA freelist_count"
SQL_INCREMENTAL_VACUUM = "PRAGMA incremental_vacuum({pages})"

MESSAGE_COLUMNS = (
    "direction",
    "state",
    "dedupe_key",
    "received_at",
    "source",
    "msg_id",
    "msg_type",
    "sender_her",
    "receiver_her",
    "conversation",
    "refers_to",
    "size",
    "summary",
    "problems",
)
DELIVERY_COLUMNS = tuple(f.name for f in dataclasses.fields(DeliveryRecord) if f.name != "id")
EVENT_COLUMNS = (
    "message_id",
    "delivery_id",
    "at",
    "actor",
    "kind",
    "from_state",
    "to_state",
    "reason",
    "details",
)

_M = ", ".join(MESSAGE_COLUMNS)
_D = ", ".join(DELIVERY_COLUMNS)
_E = ", ".join(EVENT_COLUMNS)

SQL_INSERT_MESSAGE = (
    f"INSERT INTO messages ({_M}, sender_party, receiver_party) "
    f"VALUES ({', '.join('?' * (len(MESSAGE_COLUMNS) + 2))})"
)
SQL_INSERT_PAYLOAD = (
    "INSERT INTO payloads (message_id, received_at, stored, codec, data) VALUES (?, ?, ?, ?, ?)"
)
SQL_REPLACE_PAYLOAD = SQL_INSERT_PAYLOAD.replace("INSERT", "INSERT OR REPLACE", 1)
SQL_PAYLOAD_RECEIVED_AT = "UPDATE payloads SET received_at = ? WHERE message_id = ?"
SQL_TIME_BLOCK = """
    INSERT INTO time_blocks (block, min_at, max_at) VALUES (? / {size}, ?, ?)
    ON CONFLICT (block) DO UPDATE SET min_at = min(min_at, excluded.min_at), max_at = max(max_at, excluded.max_at)
"""
SQL_TIME_BLOCKS_REBUILD = """
    DELETE FROM time_blocks;
    INSERT INTO time_blocks (block, min_at, max_at)
        SELECT id / {size}, min(received_at), max(received_at) FROM messages GROUP BY id / {size};
"""
SQL_TIME_RANGE_IDS = """
    SELECT min(block) * {size}, max(block) * {size} + {size} - 1 FROM time_blocks
    WHERE max_at >= ? AND min_at < ?
"""
SQL_SECURE_DELETE = "PRAGMA secure_delete = {on}"
SQL_DELETE_PAYLOAD = "DELETE FROM payloads WHERE message_id = ?"
SQL_INSERT_DELIVERY = f"INSERT INTO deliveries ({_D}) VALUES ({', '.join('?' * len(DELIVERY_COLUMNS))})"
SQL_INSERT_EVENT = f"INSERT INTO events ({_E}) VALUES ({', '.join('?' * len(EVENT_COLUMNS))})"
SQL_MESSAGE_BY_DEDUPE = "SELECT id FROM messages WHERE dedupe_key = ?"
SQL_DELIVERY_IDS = "SELECT id FROM deliveries WHERE message_id = ? ORDER BY id"
SQL_MESSAGE_EXISTS = "SELECT 1 FROM messages WHERE id = ?"
SQL_MESSAGE_RECEIVED_AT = "SELECT received_at FROM messages WHERE id = ?"
SQL_DELIVERY_EXISTS = "SELECT 1 FROM deliveries WHERE id = ?"
# Column names in UPDATEs come from MESSAGE_COLUMNS/DELIVERY_COLUMNS only, never from callers.
SQL_UPDATE_MESSAGE = "UPDATE messages SET {assignments} WHERE id = ?"
SQL_UPDATE_DELIVERY = "UPDATE deliveries SET {assignments} WHERE id = ?"
SQL_UPDATE_DELIVERY_FROM = "UPDATE deliveries SET {assignments} WHERE id = ? AND state = ?"
SQL_PARTY_INSERT = "INSERT INTO parties (name, folded) VALUES (?, ?) ON CONFLICT (name) DO NOTHING"
SQL_PARTY_ID = "SELECT id FROM parties WHERE name = ?"
SQL_PARTIES_MATCHING = "SELECT id FROM parties WHERE instr(folded, ?) > 0"

SQL_SELECT_MESSAGE = f"SELECT id, {_M} FROM messages"
SQL_MESSAGE_BY_ID = SQL_SELECT_MESSAGE + " WHERE id = ?"
SQL_MESSAGE_BY_KEY = SQL_SELECT_MESSAGE + " WHERE dedupe_key = ?"
SQL_MESSAGES_BY_MSG_ID = SQL_SELECT_MESSAGE + " WHERE msg_id = ? ORDER BY id"
SQL_MESSAGES_BY_MSG_ID_DIR = SQL_SELECT_MESSAGE + " WHERE msg_id = ? AND direction = ? ORDER BY id"
SQL_MESSAGES_BY_IDS = SQL_SELECT_MESSAGE + " WHERE id IN ({marks}) ORDER BY id DESC"
SQL_PAYLOAD = "SELECT codec, data FROM payloads WHERE message_id = ?"
SQL_SELECT_DELIVERY = f"SELECT id, {_D} FROM deliveries"
SQL_DELIVERIES_OF = SQL_SELECT_DELIVERY + " WHERE message_id = ? ORDER BY id"
SQL_DELIVERY_BY_ID = SQL_SELECT_DELIVERY + " WHERE id = ?"
SQL_EVENTS_OF = f"SELECT id, {_E} FROM events WHERE message_id = ? ORDER BY id"
SQL_HAS_EVENT = "SELECT 1 FROM events WHERE message_id = ? AND kind = ? LIMIT 1"
SQL_HAS_DELIVERY_EVENT = "SELECT 1 FROM events WHERE message_id = ? AND kind = ? AND delivery_id = ? LIMIT 1"
SQL_DUE = SQL_SELECT_DELIVERY + " WHERE state IN ({marks}) AND {field} <= ? ORDER BY {field}, id LIMIT ?"
SQL_COUNTS = "SELECT state, n FROM delivery_counts"

# Receivers to skip (open circuits, full slots) are left out in the index scan ({excluded}: "AND
# d.receiver_her NOT IN (?, ...)" or nothing), so a backlog for a busy receiver costs no Python.
SQL_CLAIM_CANDIDATES = """
    SELECT d.id, d.state
    FROM deliveries AS d INDEXED BY deliveries_claimable
    WHERE d.transport = ? AND d.state IN ('queued', 'retry-wait')
      AND (d.state = 'queued' OR d.next_attempt_at <= ?){excluded}
      AND (d.fifo_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM deliveries AS o
            WHERE o.receiver_her = d.receiver_her AND o.fifo_key = d.fifo_key AND o.id < d.id
              AND o.fifo_key IS NOT NULL AND o.state IN ('queued', 'sending', 'retry-wait')))
    ORDER BY d.id LIMIT ?
"""
SQL_CLAIM_ONE = """
    UPDATE deliveries SET state = 'sending', lease_owner = ?, lease_until = ?, updated_at = ?
    WHERE id = ? AND state = ?
"""
SQL_EXPIRED_LEASES = """
    SELECT id, message_id, lease_owner FROM deliveries INDEXED BY deliveries_leases
    WHERE state = 'sending' AND (lease_until IS NULL OR lease_until <= ?) ORDER BY id
"""
SQL_RELEASE_ONE = """
    UPDATE deliveries SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = ?
    WHERE id = ? AND state = 'sending'
"""

SQL_PURGE_OLD = "DELETE FROM payloads WHERE received_at < ?"
SQL_PAYLOAD_TOTAL = "SELECT coalesce(sum(stored), 0) FROM payloads INDEXED BY payloads_age"
# Oldest first, those whose story is over first: a final message state, or no delivery still
# able to move by itself (DELIVERED counts as final when no AppRec is expected).
SQL_PURGE_CANDIDATES = """
    SELECT p.message_id, p.stored FROM payloads AS p INDEXED BY payloads_age
    WHERE (
        (SELECT m.state FROM messages AS m WHERE m.id = p.message_id) IN ({final_messages})
        OR NOT EXISTS (
            SELECT 1 FROM deliveries AS d WHERE d.message_id = p.message_id
              AND d.state NOT IN ({final_deliveries})
              AND NOT (d.state = 'delivered' AND d.expects_apprec = 0))
    ) = ?
    ORDER BY p.received_at, p.message_id
"""

# Search: one or more "branches", each of which walks one index newest first and stops after
# `limit` rows; their union is cut to `limit` again. Filters that do not drive a branch are
# written with a unary "+" so SQLite does not pick their index and lose the id order.
SQL_SEARCH_BRANCH = "SELECT id FROM (SELECT m.id AS id FROM messages AS m {indexed} WHERE {where} ORDER BY m.id DESC LIMIT {limit})"
SQL_SEARCH_BRANCH_DELIVERY = (
    "SELECT id FROM (SELECT DISTINCT d.message_id AS id FROM deliveries AS d INDEXED BY {index} "
    "CROSS JOIN messages AS m ON m.id = d.message_id WHERE {where} ORDER BY d.message_id DESC LIMIT {limit})"
)
SQL_SEARCH = "SELECT id FROM ({union}) ORDER BY id DESC LIMIT {limit}"
# How many index entries a driver would walk, counted on the index alone and capped.
SQL_ESTIMATE_MESSAGES = "SELECT count(*) FROM (SELECT 1 FROM messages INDEXED BY {index} WHERE {column} = ? AND id BETWEEN ? AND ? LIMIT ?)"
SQL_ESTIMATE_DELIVERIES = (
    "SELECT count(*) FROM (SELECT 1 FROM deliveries INDEXED BY deliveries_state "
    "WHERE state = ? AND message_id BETWEEN ? AND ? LIMIT ?)"
)
SQL_HAS_DELIVERY_IN_STATE = "EXISTS (SELECT 1 FROM deliveries AS s WHERE s.message_id = m.id AND s.state = ?)"

# Change feed and statistics. The statistics walk the id range of the time window (time_blocks)
# in rowid order; "+" keeps SQLite from trading that range for a column index.
SQL_EVENTS_SINCE = f"SELECT id, {_E} FROM events WHERE id > ? ORDER BY id LIMIT ?"
SQL_LAST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM events"
SQL_STATS_WINDOW = "m.id BETWEEN ? AND ? AND +m.received_at >= ? AND +m.received_at < ?"
SQL_STATS_HOURLY = f"""
    SELECT CAST(m.received_at / 3600 AS INTEGER) * 3600 AS hour, m.msg_type, count(*)
    FROM messages AS m WHERE {SQL_STATS_WINDOW} GROUP BY hour, m.msg_type
"""
SQL_STATS_SENDERS = f"""
    SELECT m.sender_her, count(*), sum(m.state = 'rejected') FROM messages AS m
    WHERE {SQL_STATS_WINDOW} AND +m.sender_her IS NOT NULL GROUP BY m.sender_her
"""
SQL_STATS_RECEIVERS = f"""
    SELECT d.receiver_her, count(*), sum(d.state IN ({{failed}})), sum(d.state = 'apprec-missing')
    FROM messages AS m CROSS JOIN deliveries AS d INDEXED BY deliveries_message ON d.message_id = m.id
    WHERE {SQL_STATS_WINDOW} GROUP BY d.receiver_her
"""
# The IN list is migration 2's, word for word, so that SQLite may use the partial index.
SQL_STATS_LATENCY = f"""
    SELECT e.to_state, e.at - m.received_at
    FROM messages AS m CROSS JOIN events AS e INDEXED BY events_outcomes ON e.message_id = m.id
    WHERE {SQL_STATS_WINDOW} AND e.to_state IN ('delivered', 'app-ok', 'app-partial', 'app-rejected')
"""

# ------------------------------------------------------------------------------------------------

MAX_BATCH = 2000  # bounds how long one transaction holds the writer and how much a caller may wait
VACUUM_CHUNK = 2048  # pages per incremental_vacuum step, so writers get turns while space is reclaimed
MAX_LIMIT = 1000
OFF_LOOP_BYTES = 256 * 1024  # payloads above this are (de)compressed off the event loop thread
TIME_BLOCK = 1024  # ids per time_blocks row: a million messages make about a thousand rows
SQL_TIME_BLOCK_SIZED = SQL_TIME_BLOCK.format(size=TIME_BLOCK)
SQL_TIME_BLOCKS_REBUILD_SIZED = SQL_TIME_BLOCKS_REBUILD.format(size=TIME_BLOCK)
SQL_TIME_RANGE_IDS_SIZED = SQL_TIME_RANGE_IDS.format(size=TIME_BLOCK)
INDEX_OF = {
    "msg_id": "messages_msg_id",
    "conversation": "messages_conversation",
    "receiver_her": "messages_receiver",
    "sender_her": "messages_sender",
    "state": "messages_state",
    "msg_type": "messages_type",
}
UNIQUE_ENOUGH = ("msg_id", "conversation")  # a handful of rows per value: no need to compare
ESTIMATE_CAP = 20_000
MESSAGE_FIELDS = frozenset(f.name for f in dataclasses.fields(MessageRecord)) - {"id"}
DELIVERY_FIELDS = frozenset(DELIVERY_COLUMNS) - {"message_id"}
TIME_FIELDS = frozenset({"expires_at", "apprec_due_at", "next_attempt_at", "lease_until", "updated_at"})
ALLOWED_SYNCHRONOUS = frozenset({"OFF", "NORMAL", "FULL", "EXTRA"})


_BUSY = (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
# SQLite primary result codes that mean "not now" rather than a bug in the caller: busy or locked
# by another process, read-only, I/O error, disk full, cannot open the file.
_UNAVAILABLE = {
    5: "locked by another process",
    6: "locked",
    8: "read-only",
    10: "I/O error",
    13: "disk full",
    14: "cannot open the file",
}


def _unavailable(exc: BaseException | None) -> BaseException | None:
    """StoreUnavailable for SQLite's temporary failures, so front doors can say "try again later"."""
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    if code is None or code & 0xFF not in _UNAVAILABLE:
        return exc
    unavailable = StoreUnavailable(f"the SQLite store is unavailable ({_UNAVAILABLE[code & 0xFF]}): {exc}")
    unavailable.__cause__ = exc
    return unavailable


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _sql_value(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, str):
        return str(value)  # a StrEnum member becomes its plain value
    return value


def _fold(name: str) -> str:
    return name.casefold()


def _literals(values) -> str:
    # Only ever called with lifecycle enum values, which contain no quotes.
    return ", ".join(f"'{v}'" for v in sorted(str(v) for v in values))


def _message(row, payload: bytes | None = None) -> MessageRecord:
    (id_, direction, state, dedupe_key, received_at, source, msg_id, msg_type, sender, receiver) = row[:10]
    conversation, refers_to, size, summary, problems = row[10:15]
    return MessageRecord(
        direction=Direction(direction),
        state=MessageState(state),
        dedupe_key=dedupe_key,
        received_at=received_at,
        source=source,
        msg_id=msg_id,
        msg_type=msg_type,
        sender_her=sender,
        receiver_her=receiver,
        conversation=conversation,
        refers_to=refers_to,
        size=size,
        payload=payload,
        summary=json.loads(summary),
        problems=json.loads(problems),
        id=id_,
    )


def _delivery(row) -> DeliveryRecord:
    values = dict(zip(DELIVERY_COLUMNS, row[1:], strict=True))
    values["state"] = DeliveryState(values["state"])
    values["expects_apprec"] = bool(values["expects_apprec"])
    return DeliveryRecord(id=row[0], **values)


def _event(row) -> Event:
    values = dict(zip(EVENT_COLUMNS, row[1:], strict=True))
    values["details"] = json.loads(values["details"])
    return Event(id=row[0], **values)


@dataclasses.dataclass
class _Prepared:
    """A Change turned into SQL parameters on the caller's thread, so the writer only executes."""

    change: Change
    message_row: tuple | None
    names: tuple[str | None, str | None]
    blob: bytes | None
    message_updates: dict
    blob_update: tuple[bool, bytes | None]  # (payload given in message_fields, its compressed form)


@dataclasses.dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    kind: str  # "write": inside the batch transaction; "solo": alone, outside any transaction


_STOP = object()
_LARGE = object()  # a payload too large to read on the event loop thread
MESSAGE_SIZE_COLUMN = 1 + MESSAGE_COLUMNS.index("size")  # in rows of SQL_SELECT_MESSAGE (id first)


class SqliteStore:
    """Store on one SQLite file. See the module docstring for how writes are grouped.

    compress_level=1: with 20 KB PLO messages, level 6 saves about 8 % of the bytes but
    measured slower end to end (bench/store.py). read_threads=0 runs reads on the writer thread
    instead; measured, that doubles read latency under write load. inline_lookups: lookups of a few
    rows by index run on the calling thread (see _lookup); searches and statistics on reader threads.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        compress_level: int = 1,
        read_threads: int = 4,
        max_batch: int = MAX_BATCH,
        inline_lookups: bool = True,
    ):
        synchronous = synchronous.upper()
        if synchronous not in ALLOWED_SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {sorted(ALLOWED_SYNCHRONOUS)}")
        self.path = Path(path)
        self.synchronous = synchronous
        self.compress_level = compress_level
        self.read_threads = read_threads
        self.max_batch = max_batch
        self.inline_lookups = inline_lookups
        self.commits = 0  # committed write transactions; with group commit, fewer than changes
        self.changes = 0  # write jobs that went into those transactions
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._local = threading.local()
        self._parties: dict[str, int] = {}  # name -> id, only what is committed (cleared on rollback)
        self._failed: BaseException | None = None
        self._open = False

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        ready: asyncio.Future = asyncio.get_running_loop().create_future()
        loop = asyncio.get_running_loop()
        self._failed = None
        self._writer = threading.Thread(
            target=self._writer_main,
            args=(loop, ready),
            name=f"komut-sqlite-writer:{self.path.name}",
            daemon=True,
        )
        self._writer.start()
        await ready
        if self.read_threads > 0:
            self._readers = ThreadPoolExecutor(self.read_threads, thread_name_prefix="komut-sqlite-read")
        self._open = True

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self._queue.put(_STOP)
        writer, self._writer = self._writer, None
        if writer is not None:
            await asyncio.to_thread(writer.join)
        readers, self._readers = self._readers, None
        if readers is not None:
            await asyncio.to_thread(readers.shutdown, True)
        with self._reader_lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: this module issues BEGIN/COMMIT itself.
        return sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} has schema version {version}; this komut knows only up to {len(MIGRATIONS)}"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            # executescript runs the whole step; user_version changes inside the same transaction.
            conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")

    # --- the writer thread ---------------------------------------------------------------------

    def _writer_main(self, loop: asyncio.AbstractEventLoop, ready: asyncio.Future) -> None:
        conn = None
        try:
            fresh = not self.path.exists() or self.path.stat().st_size == 0
            conn = self._connect()
            if fresh:
                conn.execute(PRAGMAS_NEW_FILE)
            for pragma in PRAGMAS_WRITER:
                conn.execute(pragma.format(synchronous=self.synchronous))
            self._migrate(conn)
            if not conn.execute(SQL_HAS_STATS).fetchone()[0]:
                # Planner statistics; analysis_limit keeps this to milliseconds on a large file.
                conn.executescript(SQL_ANALYZE_QUICK)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            loop.call_soon_threadsafe(_settle, ready, None, exc)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            stop = False
            while not stop:
                batch = [self._queue.get()]
                while len(batch) < self.max_batch:
                    try:
                        batch.append(self._queue.get_nowait())
                    except queue.Empty:
                        break
                if any(job is _STOP for job in batch):
                    stop = True
                    batch = [job for job in batch if job is not _STOP]
                self._run_batch(conn, batch)
            # Anything queued after close() was called still gets an answer.
            leftover = []
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    leftover.append(job)
            self._run_batch(conn, leftover)
            try:
                conn.execute(SQL_OPTIMIZE)
                conn.execute(SQL_CHECKPOINT)
            except sqlite3.Error:
                pass  # an optimisation; the data is already committed
        except BaseException as exc:  # a bug in this module: fail every waiting caller, not hang them
            self._failed = exc
            while True:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is not _STOP:
                    job.loop.call_soon_threadsafe(_settle, job.future, None, exc)
            raise
        finally:
            conn.close()

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Job]) -> None:
        outcomes: list[tuple[_Job, Any, BaseException | None]] = []
        writes = [job for job in batch if job.kind == "write"]
        if writes:
            done: list[tuple[_Job, Any, BaseException | None]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for job in writes:
                    conn.execute("SAVEPOINT change")
                    try:
                        result = job.fn(conn)
                    except Exception as exc:
                        # Undo this change only. If SQLite already rolled back the whole
                        # transaction (I/O error, disk full), the batch fails with that error.
                        try:
                            conn.execute("ROLLBACK TO change")
                            conn.execute("RELEASE change")
                        except sqlite3.Error:
                            raise exc from None
                        self._parties.clear()
                        done.append((job, None, exc))
                    else:
                        conn.execute("RELEASE change")
                        done.append((job, result, None))
                conn.execute("COMMIT")
                self.commits += 1
                self.changes += len(writes)
                outcomes += done
            except Exception as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                self._parties.clear()
                outcomes += [(job, None, exc) for job in writes]
        self._answer(outcomes)
        for job in batch:
            if job.kind == "write":
                continue
            try:
                result, exc = job.fn(conn), None
            except Exception as error:
                result, exc = None, error
            self._answer([(job, result, exc)])

    @staticmethod
    def _answer(outcomes: list[tuple[_Job, Any, BaseException | None]]) -> None:
        # One wake-up per event loop for the whole batch rather than one per caller.
        by_loop: dict[asyncio.AbstractEventLoop, list] = {}
        for job, result, exc in outcomes:
            by_loop.setdefault(job.loop, []).append((job.future, result, _unavailable(exc)))
        for loop, items in by_loop.items():
            # A closed loop raises RuntimeError: nobody is waiting there any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_settle_all, items)

    async def _write(self, fn: Callable[[sqlite3.Connection], Any], kind: str = "write") -> Any:
        if not self._open:
            raise RuntimeError("store is not open")
        if self._failed is not None:
            raise RuntimeError("the store's writer thread failed") from self._failed
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put(_Job(fn, future, loop, kind))
        return await future

    # --- reads ---------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            for pragma in PRAGMAS_READER:
                conn.execute(pragma)
            self._local.conn = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        return conn

    async def _lookup(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """A lookup of a few rows by index, run on the calling (event loop) thread.

        It takes tens of microseconds; handing it to a reader thread costs several times that in
        CPU (thread wake-ups, the GIL going back and forth) for every message. WAL readers do not
        wait for the writer; in the rare moment SQLite answers busy (the WAL being reset), the
        lookup goes to a reader thread instead of blocking the event loop.
        """
        if not self._open:
            raise RuntimeError("store is not open")
        if self._readers is None or not self.inline_lookups:
            return await self._read(fn)
        conn = getattr(self._local, "lookup", None)
        if conn is None:
            conn = self._connect()
            for pragma in PRAGMAS_LOOKUP:
                conn.execute(pragma)
            self._local.lookup = conn
            with self._reader_lock:
                self._reader_conns.append(conn)
        try:
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF not in _BUSY:
                translated = _unavailable(exc)
                if translated is exc:
                    raise
                raise translated from exc
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        return await self._read(fn)

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if not self._open:
            raise RuntimeError("store is not open")
        if self._readers is None:
            # read_threads=0: reads queue behind the writer, outside its transactions.
            return await self._write(fn, kind="solo")
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._in_reader, fn)

    def _in_reader(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            conn = self._reader()
            # One read transaction, so multi-statement reads see one snapshot.
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            translated = _unavailable(exc)
            if translated is exc:
                raise
            raise translated from exc

    # --- apply ---------------------------------------------------------------------------------

    def _prepare(self, change: Change) -> _Prepared:
        message_row, names, blob = None, (None, None), None
        m = change.new_message
        if m is not None:
            message_row = tuple(
                _json(getattr(m, c)) if c in ("summary", "problems") else _sql_value(getattr(m, c))
                for c in MESSAGE_COLUMNS
            )
            names = (_name(m.summary, "sender_name"), _name(m.summary, "receiver_name"))
            if m.payload is not None:
                blob = compress(m.payload, self.compress_level)
        updates, blob_update = {}, (False, None)
        for key, value in change.message_fields.items():
            if key not in MESSAGE_FIELDS:
                raise ValueError(f"unknown message field {key!r}")
            if key == "payload":
                blob_update = (True, None if value is None else compress(value, self.compress_level))
            elif key in ("summary", "problems"):
                updates[key] = _json(value)
            else:
                updates[key] = _sql_value(value)
        if "summary" in change.message_fields:
            summary = change.message_fields["summary"] or {}
            updates["sender_party"] = _name(summary, "sender_name")
            updates["receiver_party"] = _name(summary, "receiver_name")
        for update in change.delivery_updates:
            for key in update.fields:
                if key not in DELIVERY_FIELDS:
                    raise ValueError(f"unknown delivery field {key!r}")
        return _Prepared(change, message_row, names, blob, updates, blob_update)

    async def apply(self, change: Change) -> Applied:
        if _payload_bytes(change) > OFF_LOOP_BYTES:
            # Compressing megabytes would hold the event loop; zlib lets go of the GIL meanwhile.
            prepared = await asyncio.to_thread(self._prepare, change)
        else:
            prepared = self._prepare(change)
        return await self._write(lambda conn: self._apply(conn, prepared))

    def _party(self, conn: sqlite3.Connection, name: str | None) -> int | None:
        if not name:
            return None
        party = self._parties.get(name)
        if party is None:
            conn.execute(SQL_PARTY_INSERT, (name, _fold(name)))
            party = conn.execute(SQL_PARTY_ID, (name,)).fetchone()[0]
            self._parties[name] = party
        return party

    def _apply(self, conn: sqlite3.Connection, p: _Prepared) -> Applied:
        change = p.change
        new_id = None
        if p.message_row is not None:
            m = change.new_message
            row = conn.execute(SQL_MESSAGE_BY_DEDUPE, (m.dedupe_key,)).fetchone()
            if row is not None:
                ids = [r[0] for r in conn.execute(SQL_DELIVERY_IDS, (row[0],))]
                return Applied(row[0], ids, created=False)
            parties = (self._party(conn, p.names[0]), self._party(conn, p.names[1]))
            new_id = conn.execute(SQL_INSERT_MESSAGE, p.message_row + parties).lastrowid
            conn.execute(SQL_TIME_BLOCK_SIZED, (new_id, m.received_at, m.received_at))
            if p.blob is not None:
                conn.execute(SQL_INSERT_PAYLOAD, (new_id, m.received_at, len(p.blob), CODEC, p.blob))
        message_id = new_id if new_id is not None else change.message_id
        # The store has no clock of its own; the change's latest event says when it happened.
        now = max((e.at for e in change.events), default=None)
        if now is None:
            now = time.time()

        if change.message_fields:
            if change.message_id is None:
                raise ValueError("message_fields without message_id")
            if not conn.execute(SQL_MESSAGE_EXISTS, (change.message_id,)).fetchone():
                raise LookupError(f"no message {change.message_id}")
            updates = dict(p.message_updates)
            for key in ("sender_party", "receiver_party"):
                if key in updates:
                    updates[key] = self._party(conn, updates[key])
            if updates:
                assignments = ", ".join(f"{key} = ?" for key in updates)
                conn.execute(
                    SQL_UPDATE_MESSAGE.format(assignments=assignments), (*updates.values(), change.message_id)
                )
            if "received_at" in updates:
                at = updates["received_at"]
                conn.execute(SQL_TIME_BLOCK_SIZED, (change.message_id, at, at))
                conn.execute(SQL_PAYLOAD_RECEIVED_AT, (at, change.message_id))
            given, blob = p.blob_update
            if given:
                with _secure_delete(conn):
                    if blob is None:
                        conn.execute(SQL_DELETE_PAYLOAD, (change.message_id,))
                    else:
                        received = conn.execute(SQL_MESSAGE_RECEIVED_AT, (change.message_id,)).fetchone()[0]
                        conn.execute(
                            SQL_REPLACE_PAYLOAD, (change.message_id, received, len(blob), CODEC, blob)
                        )

        delivery_ids = []
        for d in change.new_deliveries:
            owner = d.message_id if d.message_id is not None else message_id
            if owner is None:
                raise ValueError("a new delivery needs a message: new_message, message_id or its own")
            values = {c: getattr(d, c) for c in DELIVERY_COLUMNS}
            values["message_id"] = owner
            if not values["updated_at"]:
                values["updated_at"] = now
            row = tuple(_sql_value(values[c]) for c in DELIVERY_COLUMNS)
            delivery_ids.append(conn.execute(SQL_INSERT_DELIVERY, row).lastrowid)

        for update in change.delivery_updates:
            fields = {k: _sql_value(v) for k, v in update.fields.items()}
            fields.setdefault("updated_at", now)
            assignments = ", ".join(f"{key} = ?" for key in fields)
            if update.expect_state is None:
                cursor = conn.execute(
                    SQL_UPDATE_DELIVERY.format(assignments=assignments),
                    (*fields.values(), update.delivery_id),
                )
            else:
                cursor = conn.execute(
                    SQL_UPDATE_DELIVERY_FROM.format(assignments=assignments),
                    (*fields.values(), update.delivery_id, str(update.expect_state)),
                )
            if cursor.rowcount == 0:
                if not conn.execute(SQL_DELIVERY_EXISTS, (update.delivery_id,)).fetchone():
                    raise LookupError(f"no delivery {update.delivery_id}")
                raise Conflict(f"delivery {update.delivery_id} is no longer {update.expect_state}")

        rows = []
        for e in change.events:
            delivery_id = e.delivery_id
            if delivery_id is None and e.new_delivery_index is not None:
                delivery_id = delivery_ids[e.new_delivery_index]
            rows.append(
                (
                    e.message_id if e.message_id is not None else message_id,
                    delivery_id,
                    e.at,
                    str(e.actor),
                    str(e.kind),
                    None if e.from_state is None else str(e.from_state),
                    None if e.to_state is None else str(e.to_state),
                    e.reason or "",
                    _json(e.details or {}),
                )
            )
        if rows:
            conn.executemany(SQL_INSERT_EVENT, rows)
        return Applied(message_id, delivery_ids, created=True)

    # --- claim and leases ----------------------------------------------------------------------

    async def claim(
        self,
        transport: str,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        exclude_receivers: Sequence[int] = (),
    ) -> list[Claimed]:
        if limit <= 0:
            return []
        excluded = frozenset(exclude_receivers)
        rows = await self._write(
            lambda conn: self._claim(conn, transport, now, limit, owner, now + lease_seconds, excluded)
        )
        if sum(len(prow[1]) for _, _, prow in rows if prow is not None) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(self._claimed, rows)
        return self._claimed(rows)

    def _claim(self, conn, transport, now, limit, owner, lease_until, excluded) -> list:
        skip = sorted(excluded)
        sql = SQL_CLAIM_CANDIDATES.format(
            excluded=f" AND d.receiver_her NOT IN ({', '.join('?' * len(skip))})" if skip else ""
        )
        picked = conn.execute(sql, (transport, now, *skip, limit)).fetchall()
        attempt = check_delivery(DeliveryState.QUEUED, DeliveryState.SENDING)
        out, messages = [], {}
        for delivery_id, state in picked:
            conn.execute(SQL_CLAIM_ONE, (owner, lease_until, now, delivery_id, state))
            row = conn.execute(SQL_DELIVERY_BY_ID, (delivery_id,)).fetchone()
            delivery = _delivery(row)
            conn.execute(
                SQL_INSERT_EVENT,
                (
                    delivery.message_id,
                    delivery_id,
                    now,
                    str(attempt.actor),
                    attempt.trigger,
                    state,
                    str(DeliveryState.SENDING),
                    f"attempt {delivery.attempts + 1}",
                    _json({"owner": owner}),
                ),
            )
            if delivery.message_id not in messages:
                mrow = conn.execute(SQL_MESSAGE_BY_ID, (delivery.message_id,)).fetchone()
                prow = conn.execute(SQL_PAYLOAD, (delivery.message_id,)).fetchone()
                messages[delivery.message_id] = (mrow, prow)
            out.append((delivery, *messages[delivery.message_id]))
        return out

    @staticmethod
    def _claimed(rows) -> list[Claimed]:
        # Decompressed here, on the caller's side, to keep the writer thread free.
        cache: dict[int, MessageRecord] = {}
        out = []
        for delivery, mrow, prow in rows:
            message = cache.get(delivery.message_id)
            if message is None:
                message = _message(mrow, None if prow is None else decompress(*prow))
                cache[delivery.message_id] = message
            out.append(Claimed(delivery, message))
        return out

    async def release_expired_leases(self, now: float, *, expired_by: float | None = None) -> int:
        limit = now if expired_by is None else expired_by
        return await self._write(lambda conn: self._release(conn, now, limit))

    def _release(self, conn: sqlite3.Connection, now: float, limit: float) -> int:
        resumed = check_delivery(DeliveryState.SENDING, DeliveryState.QUEUED)
        count = 0
        for delivery_id, message_id, owner in conn.execute(SQL_EXPIRED_LEASES, (limit,)).fetchall():
            if conn.execute(SQL_RELEASE_ONE, (now, delivery_id)).rowcount:
                conn.execute(
                    SQL_INSERT_EVENT,
                    (
                        message_id,
                        delivery_id,
                        now,
                        str(resumed.actor),
                        resumed.trigger,
                        str(DeliveryState.SENDING),
                        str(DeliveryState.QUEUED),
                        f"lease of {owner} ran out",
                        "{}",
                    ),
                )
                count += 1
        return count

    # --- simple reads --------------------------------------------------------------------------

    async def get_message(self, message_id: int, with_payload: bool = False) -> MessageRecord | None:
        def read(conn, inline: bool):
            row = conn.execute(SQL_MESSAGE_BY_ID, (message_id,)).fetchone()
            if row is None or not with_payload:
                return row, None
            if inline and row[MESSAGE_SIZE_COLUMN] > OFF_LOOP_BYTES:
                return row, _LARGE
            payload = conn.execute(SQL_PAYLOAD, (message_id,)).fetchone()
            if payload is None:
                return row, None
            if inline and len(payload[1]) > OFF_LOOP_BYTES // 8:
                return row, _LARGE
            return row, decompress(*payload)

        # A small payload is read and decompressed on the calling thread, like any lookup: a
        # reader-thread hand-off costs more CPU than that. A large one would hold the event loop:
        # it is read again on a reader thread.
        row, payload = await self._lookup(lambda conn: read(conn, True))
        if payload is _LARGE:
            row, payload = await self._read(lambda conn: read(conn, False))
        return None if row is None else _message(row, payload)

    async def find_message(self, dedupe_key: str) -> MessageRecord | None:
        row = await self._lookup(lambda conn: conn.execute(SQL_MESSAGE_BY_KEY, (dedupe_key,)).fetchone())
        return None if row is None else _message(row)

    async def find_by_msg_id(self, msg_id: str, direction: Direction | None = None) -> list[MessageRecord]:
        if direction is None:
            rows = await self._lookup(lambda conn: conn.execute(SQL_MESSAGES_BY_MSG_ID, (msg_id,)).fetchall())
        else:
            rows = await self._lookup(
                lambda conn: conn.execute(SQL_MESSAGES_BY_MSG_ID_DIR, (msg_id, str(direction))).fetchall()
            )
        return [_message(row) for row in rows]

    async def deliveries(self, message_id: int) -> list[DeliveryRecord]:
        rows = await self._lookup(lambda conn: conn.execute(SQL_DELIVERIES_OF, (message_id,)).fetchall())
        return [_delivery(row) for row in rows]

    async def events(self, message_id: int) -> list[Event]:
        rows = await self._lookup(lambda conn: conn.execute(SQL_EVENTS_OF, (message_id,)).fetchall())
        return [_event(row) for row in rows]

    async def has_event(self, message_id: int, kind: str, delivery_id: int | None = None) -> bool:
        if delivery_id is None:
            sql, params = SQL_HAS_EVENT, (message_id, kind)
        else:
            sql, params = SQL_HAS_DELIVERY_EVENT, (message_id, kind, delivery_id)
        return await self._lookup(lambda conn: conn.execute(sql, params).fetchone()) is not None

    async def due(
        self, now: float, states: Sequence[DeliveryState], field_name: str, limit: int
    ) -> list[DeliveryRecord]:
        if field_name not in TIME_FIELDS:
            raise ValueError(f"due() cannot look at {field_name!r}")
        if not states or limit <= 0:
            return []
        sql = SQL_DUE.format(marks=", ".join("?" * len(states)), field=field_name)
        params = (*(str(s) for s in states), now, limit)
        rows = await self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [_delivery(row) for row in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._lookup(lambda conn: conn.execute(SQL_COUNTS).fetchall())
        out = {str(state): 0 for state in DeliveryState}
        out.update(dict(rows))
        return out

    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        if limit <= 0:
            return []
        rows = await self._read(lambda conn: conn.execute(SQL_EVENTS_SINCE, (after_id, limit)).fetchall())
        return [_event(row) for row in rows]

    async def last_event_id(self) -> int:
        return await self._read(lambda conn: conn.execute(SQL_LAST_EVENT_ID).fetchone()[0])

    # --- statistics ----------------------------------------------------------------------------

    async def traffic_stats(self, since: float, until: float) -> TrafficStats:
        return await self._read(lambda conn: self._traffic_stats(conn, since, until))

    def _traffic_stats(self, conn: sqlite3.Connection, since: float, until: float) -> TrafficStats:
        out = TrafficStats(since=since, until=until)
        kinds = sorted(set(LATENCY_STATES.values()))
        out.latency = {kind: Latency() for kind in kinds}
        low, high = conn.execute(SQL_TIME_RANGE_IDS_SIZED, (since, until)).fetchone()
        if low is None:
            return out
        window = (low, high, since, until)
        out.hourly = sorted((float(h), t, n) for h, t, n in conn.execute(SQL_STATS_HOURLY, window))
        for her, sent, refused in conn.execute(SQL_STATS_SENDERS, window):
            out.partners[her] = PartnerStats(her, sent=sent, refused=refused)
        sql = SQL_STATS_RECEIVERS.format(failed=_literals(FAILED_STATES))
        for her, count, failed, missing in conn.execute(sql, window):
            p = out.partners.setdefault(her, PartnerStats(her))
            p.deliveries, p.failed, p.apprec_missing = count, failed, missing
        values: dict[str, list[float]] = {kind: [] for kind in kinds}
        for state, seconds in conn.execute(SQL_STATS_LATENCY, window):
            values[LATENCY_STATES[state]].append(seconds)
        out.latency = {kind: Latency.of(v) for kind, v in values.items()}
        return out

    # --- search --------------------------------------------------------------------------------

    async def search(self, query: Query) -> list[MessageRecord]:
        return await self._read(lambda conn: self._search(conn, query))

    def _search(self, conn: sqlite3.Connection, q: Query) -> list[MessageRecord]:
        limit = max(1, min(int(q.limit), MAX_LIMIT))
        # Equalities on indexed message columns, most selective first: the first may drive.
        equal = [
            (column, value)
            for column, value in (
                ("msg_id", q.msg_id),
                ("conversation", q.conversation),
                ("receiver_her", q.receiver_her),
                ("sender_her", q.sender_her),
            )
            if value is not None
        ]
        delivery_state = None
        if q.state is not None:
            if q.state in MessageState._value2member_map_:
                equal.append(("state", q.state))
            elif q.state in DeliveryState._value2member_map_:
                delivery_state = q.state
            else:
                return []
        if q.msg_type is not None:
            equal.append(("msg_type", q.msg_type))
        # A time range narrows the ids to look at; the drivers below then stay in id order.
        low, high = None, None if q.before_id is None else q.before_id - 1
        if q.since is not None or q.until is not None:
            since = -math.inf if q.since is None else q.since
            until = math.inf if q.until is None else q.until
            low, top = conn.execute(SQL_TIME_RANGE_IDS_SIZED, (since, until)).fetchone()
            if low is None:
                return []
            high = top if high is None else min(high, top)

        groups: list[list[tuple[str, str, tuple]]] = []  # OR groups of (source, condition, params)
        if q.text is not None and q.text.strip():
            groups.append(self._text_alternatives(conn, q.text.strip()))
        if q.her_id is not None:
            groups.append(_her_alternatives(q.her_id))

        if groups:
            drivers = groups[0]
        elif equal and equal[0][0] in UNIQUE_ENOUGH:
            column, value = equal.pop(0)
            drivers = [(INDEX_OF[column], f"m.{column} = ?", (value,))]
        else:
            options = [(INDEX_OF[column], column, value) for column, value in equal]
            if delivery_state is not None:
                options.append(("deliveries_state", "state", delivery_state))
            if len(options) > 1:
                # Walk the index with the fewest entries: the others are then checked on fewer rows.
                options.sort(key=lambda option: _estimate(conn, option, low, high))
            if not options:
                drivers = [("messages", "1", ())]
            elif options[0][0].startswith("messages"):
                index, column, value = options[0]
                equal.remove((column, value))
                drivers = [(index, f"m.{column} = ?", (value,))]
            else:
                drivers = [("deliveries_state", "d.state = ?", (delivery_state,))]
                delivery_state = None

        # Everything that does not drive is a plain filter; "+" keeps SQLite off its index.
        filters: list[tuple[str, tuple]] = [(f"+m.{column} = ?", (value,)) for column, value in equal]
        if q.direction is not None:
            filters.append(("+m.direction = ?", (str(q.direction),)))
        if q.since is not None:
            filters.append(("+m.received_at >= ?", (q.since,)))
        if q.until is not None:
            filters.append(("+m.received_at < ?", (q.until,)))
        if delivery_state is not None:
            filters.append((SQL_HAS_DELIVERY_IN_STATE, (delivery_state,)))
        for group in groups[1:]:
            filters.append(_or_condition(group))

        branches = [_branch(driver, filters, low, high, limit) for driver in drivers]
        sql = SQL_SEARCH.format(union=" UNION ".join(b for b, _ in branches), limit=limit)
        params = tuple(p for _, ps in branches for p in ps)
        ids = [row[0] for row in conn.execute(sql, params)]
        if not ids:
            return []
        rows = conn.execute(SQL_MESSAGES_BY_IDS.format(marks=", ".join("?" * len(ids))), ids).fetchall()
        return [_message(row) for row in rows]

    def _text_alternatives(self, conn: sqlite3.Connection, text: str) -> list[tuple[str, str, tuple]]:
        out: list[tuple[str, str, tuple]] = [("messages_msg_id", "m.msg_id = ?", (text,))]
        if text.isascii() and text.isdigit() and len(text) <= 18:
            out += _her_alternatives(int(text))
        parties = [row[0] for row in conn.execute(SQL_PARTIES_MATCHING, (_fold(text),))]
        if parties:
            marks = ", ".join("?" * len(parties))
            out.append(("messages_sender_party", f"m.sender_party IN ({marks})", tuple(parties)))
            out.append(("messages_receiver_party", f"m.receiver_party IN ({marks})", tuple(parties)))
        return out

    # --- retention -----------------------------------------------------------------------------

    async def purge_payloads(self, older_than: float, max_total_bytes: int | None) -> int:
        purged = await self._write(lambda conn: self._purge(conn, older_than, max_total_bytes))
        if purged:
            # Give the freed pages back to the file system, a chunk at a time so that other
            # writers get their turns in between.
            while await self._write(self._vacuum_step, kind="solo"):
                pass
        return purged

    def _purge(self, conn: sqlite3.Connection, older_than: float, cap: int | None) -> int:
        with _secure_delete(conn):
            return self._purge_payloads(conn, older_than, cap)

    def _purge_payloads(self, conn: sqlite3.Connection, older_than: float, cap: int | None) -> int:
        purged = conn.execute(SQL_PURGE_OLD, (older_than,)).rowcount
        if cap is None:
            return purged
        excess = conn.execute(SQL_PAYLOAD_TOTAL).fetchone()[0] - cap
        if excess <= 0:
            return purged
        sql = SQL_PURGE_CANDIDATES.format(
            final_messages=_literals(FINAL_MESSAGE_STATES), final_deliveries=_literals(FINAL_DELIVERY_STATES)
        )
        victims = []
        for final in (1, 0):
            for message_id, stored in conn.execute(sql, (final,)):
                victims.append((message_id,))
                excess -= stored
                if excess <= 0:
                    break
            if excess <= 0:
                break
        conn.executemany(SQL_DELETE_PAYLOAD, victims)
        return purged + len(victims)

    def _vacuum_step(self, conn: sqlite3.Connection) -> bool:
        conn.execute(SQL_INCREMENTAL_VACUUM.format(pages=VACUUM_CHUNK)).fetchall()
        return conn.execute(SQL_FREELIST).fetchone()[0] > 0 and self._open

    # --- for benchmarks and tools --------------------------------------------------------------

    async def checkpoint(self) -> None:
        """Copy the WAL into the main file and truncate it (tests read the file afterwards)."""
        await self._write(lambda conn: conn.execute(SQL_CHECKPOINT).fetchall(), kind="solo")


@contextlib.contextmanager
def _secure_delete(conn: sqlite3.Connection):
    # Payloads are patient data: what is deleted is overwritten with zeros, not left in free
    # pages. Only around deletes, because it also zeroes on every page split during inserts.
    conn.execute(SQL_SECURE_DELETE.format(on="ON"))
    try:
        yield
    finally:
        conn.execute(SQL_SECURE_DELETE.format(on="OFF"))


def _payload_bytes(change: Change) -> int:
    total = len(change.new_message.payload or b"") if change.new_message is not None else 0
    payload = change.message_fields.get("payload")
    return total + (len(payload) if isinstance(payload, bytes | bytearray) else 0)


def _name(summary: dict | None, key: str) -> str | None:
    value = (summary or {}).get(key)
    return value if isinstance(value, str) and value else None


def _branch(
    driver: tuple[str, str, tuple],
    filters: list[tuple[str, tuple]],
    low: int | None,
    high: int | None,
    limit: int,
) -> tuple[str, tuple]:
    source, condition, params = driver
    conditions = [condition, *(c for c, _ in filters)]
    params = params + tuple(p for _, ps in filters for p in ps)
    on_messages = source.startswith("messages")
    column = "m.id" if on_messages else "d.message_id"
    if low is not None:
        conditions.append(f"{column} >= ?")
        params += (low,)
    if high is not None:
        conditions.append(f"{column} <= ?")
        params += (high,)
    where = " AND ".join(conditions)
    if on_messages:
        # Pinned, so the plan does not depend on statistics: the driver's index, or the ids.
        indexed = "NOT INDEXED" if source == "messages" else f"INDEXED BY {source}"
        return SQL_SEARCH_BRANCH.format(indexed=indexed, where=where, limit=limit), params
    return SQL_SEARCH_BRANCH_DELIVERY.format(index=source, where=where, limit=limit), params


def _estimate(
    conn: sqlite3.Connection, option: tuple[str, str, Any], low: int | None, high: int | None
) -> int:
    source, column, value = option
    bounds = (-1 if low is None else low, 2**63 - 1 if high is None else high)
    if source.startswith("messages"):
        sql = SQL_ESTIMATE_MESSAGES.format(index=source, column=column)
    else:
        sql = SQL_ESTIMATE_DELIVERIES
    return conn.execute(sql, (value, *bounds, ESTIMATE_CAP)).fetchone()[0]


def _her_alternatives(her: int) -> list[tuple[str, str, tuple]]:
    return [
        ("messages_sender", "m.sender_her = ?", (her,)),
        ("messages_receiver", "m.receiver_her = ?", (her,)),
        ("deliveries_receiver", "d.receiver_her = ?", (her,)),
    ]


def _or_condition(alternatives: list[tuple[str, str, tuple]]) -> tuple[str, tuple]:
    parts, params = [], []
    for source, condition, ps in alternatives:
        if source.startswith("messages"):
            parts.append("+" + condition)
        else:
            parts.append(
                "EXISTS (SELECT 1 FROM deliveries AS x WHERE x.message_id = m.id AND "
                + condition.replace("d.", "x.")
                + ")"
            )
        params += ps
    return "(" + " OR ".join(parts) + ")", tuple(params)


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


def _settle_all(items) -> None:
    for future, result, exc in items:
        _settle(future, result, exc)
