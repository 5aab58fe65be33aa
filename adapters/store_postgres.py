"""The shared store: PostgreSQL, for several gateway nodes on one database (asyncpg).

Same semantics as the SQLite store (tests/test_store_contract.py runs both through one suite);
what differs is that several `komut serve` processes use it at once:

- Work is claimed with `SELECT ... FOR UPDATE SKIP LOCKED` inside the claiming statement, which
  also moves the deliveries to `sending` with a lease (owner, until) and writes their events:
  two nodes never claim the same delivery, and neither waits for the other's locked rows.
- `release_expired_leases` takes back only leases that have run out, so a live node keeps its
  work while a killed node's in-flight deliveries return to the queue when their leases expire.
  `shared = True` tells the composition root not to release every lease at start-up as a single
  node may (it would steal live nodes' work).
- A change is applied by one server-side function call (`komut_apply`), one round trip and one
  transaction per change however many records it has. PostgreSQL commits concurrent
  transactions with one WAL flush (its own group commit), so there is no writer thread here.
- LISTEN/NOTIFY wakes idle dispatchers on the other nodes when work is queued. The NOTIFY is
  sent after the change has committed, coalesced to a few per second, and in a transaction of
  its own: a NOTIFY inside the data transactions would serialise their commits on PostgreSQL's
  notification queue lock.
- Deliveries per state: every state change appends a row to `delivery_moves` (appends take no
  lock that others wait for); a maintenance task folds them into `delivery_counts` every few
  seconds. Counters updated in place would make every transaction queue on a few hot rows.

Payloads are zlib-compressed by this module, as in the SQLite store, and stored in a table of
their own with column storage EXTERNAL (PostgreSQL does not try to compress them again). A
deleted payload is gone for queries at once; its bytes stay in the table file until VACUUM
reuses the space, which autovacuum does.

All SQL of this adapter is in the "SQL" section below; the schema evolves only by appending to
MIGRATIONS (table `komut_migrations` records which have been applied; nodes starting together
take turns under an advisory lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

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

log = logging.getLogger("komut.store.postgres")

# ------------------------------------------------------------------------------------------------
# SQL
# ------------------------------------------------------------------------------------------------

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
# Case-folded party names from the summary, for the text search (folded by Python, like the
# other stores: PostgreSQL's lower() under the C locale leaves Æ, Ø and Å alone).
NAME_COLUMNS = ("sender_folded", "receiver_folded")
DELIVERY_COLUMNS = tuple(f.name for f in dataclasses.fields(DeliveryRecord) if f.name != "id")
DELIVERY_UPDATE_COLUMNS = tuple(c for c in DELIVERY_COLUMNS if c != "message_id")
MESSAGE_UPDATE_COLUMNS = (*MESSAGE_COLUMNS, *NAME_COLUMNS)
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


def _from_record(columns: Sequence[str], alias: str = "r") -> str:
    return ", ".join(f"{alias}.{c}" for c in columns)


CHANNEL = "komut_work"
ADVISORY_LOCK = 0x6B6F6D7574  # "komut": nodes starting together migrate one at a time

SQL_MIGRATIONS_TABLE = """
    CREATE TABLE IF NOT EXISTS komut_migrations (
        version     integer PRIMARY KEY,
        applied_at  timestamptz NOT NULL DEFAULT now()
    )
"""
SQL_LOCK = "SELECT pg_advisory_xact_lock($1)"
SQL_VERSION = "SELECT coalesce(max(version), 0) FROM komut_migrations"
SQL_RECORD_VERSION = "INSERT INTO komut_migrations (version) VALUES ($1)"

# Applied in order at open(); never edit a released step, append a new one.
MIGRATIONS: tuple[str, ...] = (
    # 1: the delivery log
    f"""
    CREATE TABLE messages (
        id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        direction       text NOT NULL,
        state           text NOT NULL,
        dedupe_key      text NOT NULL,
        received_at     double precision NOT NULL,
        source          text NOT NULL,
        msg_id          text NOT NULL DEFAULT '',
        msg_type        text NOT NULL DEFAULT '',
        sender_her      bigint,
        receiver_her    bigint,
        conversation    text,
        refers_to       text,
        size            bigint NOT NULL DEFAULT 0,
        summary         jsonb NOT NULL DEFAULT '{{}}',
        problems        jsonb NOT NULL DEFAULT '[]',
        sender_folded   text,
        receiver_folded text
    );
    CREATE UNIQUE INDEX messages_dedupe ON messages (dedupe_key);
    CREATE INDEX messages_msg_id ON messages (msg_id);
    CREATE INDEX messages_sender ON messages (sender_her);
    CREATE INDEX messages_receiver ON messages (receiver_her);
    CREATE INDEX messages_conversation ON messages (conversation);
    CREATE INDEX messages_state ON messages (state);
    CREATE INDEX messages_type ON messages (msg_type);
    CREATE INDEX messages_received ON messages (received_at);

    CREATE TABLE payloads (
        message_id   bigint PRIMARY KEY REFERENCES messages (id),
        received_at  double precision NOT NULL,
        stored       integer NOT NULL,
        codec        text NOT NULL,
        data         bytea NOT NULL
    );
    -- Already zlib-compressed: stored out of line without a second compression attempt.
    ALTER TABLE payloads ALTER COLUMN data SET STORAGE EXTERNAL;
    CREATE INDEX payloads_age ON payloads (received_at, message_id);

    CREATE TABLE deliveries (
        id              bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id      bigint NOT NULL REFERENCES messages (id),
        receiver_her    bigint NOT NULL,
        role            text NOT NULL,
        transport       text NOT NULL,
        endpoint        text NOT NULL,
        state           text NOT NULL,
        expires_at      double precision NOT NULL,
        expects_apprec  boolean NOT NULL,
        attempts        integer NOT NULL DEFAULT 0,
        next_attempt_at double precision,
        apprec_due_at   double precision,
        apprec_status   text,
        apprec_msg_id   text,
        fifo_key        text,
        last_error      text,
        lease_owner     text,
        lease_until     double precision,
        updated_at      double precision NOT NULL
    );
    CREATE INDEX deliveries_message ON deliveries (message_id);
    CREATE INDEX deliveries_receiver ON deliveries (receiver_her, message_id);
    CREATE INDEX deliveries_state ON deliveries (state, message_id);
    CREATE INDEX deliveries_expiry ON deliveries (state, expires_at);
    CREATE INDEX deliveries_apprec_due ON deliveries (state, apprec_due_at) WHERE apprec_due_at IS NOT NULL;
    -- The claim walks this small index in id order (only waiting deliveries are in it).
    CREATE INDEX deliveries_claimable ON deliveries (transport, id) WHERE state IN ('queued', 'retry-wait');
    CREATE INDEX deliveries_fifo ON deliveries (receiver_her, fifo_key, id)
        WHERE fifo_key IS NOT NULL AND state IN ('queued', 'sending', 'retry-wait');
    CREATE INDEX deliveries_leases ON deliveries (lease_until) WHERE state = 'sending';

    CREATE TABLE events (
        id           bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        message_id   bigint,
        delivery_id  bigint,
        at           double precision NOT NULL,
        actor        text NOT NULL,
        kind         text NOT NULL,
        from_state   text,
        to_state     text,
        reason       text NOT NULL DEFAULT '',
        details      jsonb NOT NULL DEFAULT '{{}}'
    );
    CREATE INDEX events_message ON events (message_id, id);

    -- Deliveries per state: appended moves, folded into the totals by compaction.
    CREATE TABLE delivery_counts (
        state  text PRIMARY KEY,
        n      bigint NOT NULL
    );
    CREATE TABLE delivery_moves (
        from_state  text,
        to_state    text
    );
    CREATE FUNCTION komut_delivery_moved() RETURNS trigger LANGUAGE plpgsql AS $fn$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO delivery_moves VALUES (NULL, NEW.state);
        ELSIF TG_OP = 'DELETE' THEN
            INSERT INTO delivery_moves VALUES (OLD.state, NULL);
        ELSE
            INSERT INTO delivery_moves VALUES (OLD.state, NEW.state);
        END IF;
        RETURN NULL;
    END
    $fn$;
    CREATE TRIGGER deliveries_moved AFTER INSERT OR DELETE ON deliveries
        FOR EACH ROW EXECUTE FUNCTION komut_delivery_moved();
    CREATE TRIGGER deliveries_moved_state AFTER UPDATE OF state ON deliveries
        FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION komut_delivery_moved();

    -- One Change, applied in one call. Everything the caller could check (field names, event
    -- indexes) was checked before; what needs the data raises: KM404 (no such message or
    -- delivery), KM409 (a delivery is not in the expected state). Any error undoes the call.
    CREATE FUNCTION komut_apply(c jsonb, blob bytea, field_blob bytea)
    RETURNS TABLE (applied_message bigint, applied_deliveries bigint[], applied_created boolean)
    LANGUAGE plpgsql AS $fn$
    DECLARE
        mid   bigint;
        ids   bigint[] := '{{}}';
        item  jsonb;
        did   bigint;
        n     integer;
    BEGIN
        IF jsonb_typeof(c->'message') = 'object' THEN
            INSERT INTO messages AS m ({_M}, sender_folded, receiver_folded)
                SELECT {_from_record((*MESSAGE_COLUMNS, *NAME_COLUMNS))}
                FROM jsonb_populate_record(NULL::messages, c->'message') AS r
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING m.id INTO mid;
            IF mid IS NULL THEN
                -- A duplicate: nothing of this change is written. (A statement of its own sees
                -- a row that a concurrent transaction committed meanwhile.)
                SELECT m.id INTO mid FROM messages AS m WHERE m.dedupe_key = c->'message'->>'dedupe_key';
                RETURN QUERY SELECT mid,
                    coalesce((SELECT array_agg(d.id ORDER BY d.id) FROM deliveries AS d
                              WHERE d.message_id = mid), '{{}}'::bigint[]),
                    false;
                RETURN;
            END IF;
            IF blob IS NOT NULL THEN
                INSERT INTO payloads (message_id, received_at, stored, codec, data)
                VALUES (mid, (c->'message'->>'received_at')::float8, length(blob), c->>'codec', blob);
            END IF;
        ELSE
            mid := (c->>'message_id')::bigint;
        END IF;

        IF jsonb_typeof(c->'message_fields') = 'object' THEN
            UPDATE messages AS t SET ({", ".join(MESSAGE_UPDATE_COLUMNS)}) = (
                SELECT {_from_record(MESSAGE_UPDATE_COLUMNS)}
                FROM jsonb_populate_record(t, c->'message_fields') AS r)
            WHERE t.id = (c->>'message_id')::bigint;
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                RAISE EXCEPTION 'no message %', c->>'message_id' USING ERRCODE = 'KM404';
            END IF;
            IF c->'message_fields' ? 'received_at' THEN
                UPDATE payloads AS p SET received_at = (c->'message_fields'->>'received_at')::float8
                WHERE p.message_id = (c->>'message_id')::bigint;
            END IF;
            IF (c->>'payload_given')::boolean THEN
                IF field_blob IS NULL THEN
                    DELETE FROM payloads AS p WHERE p.message_id = (c->>'message_id')::bigint;
                ELSE
                    INSERT INTO payloads AS p (message_id, received_at, stored, codec, data)
                        SELECT t.id, t.received_at, length(field_blob), c->>'codec', field_blob
                        FROM messages AS t WHERE t.id = (c->>'message_id')::bigint
                    ON CONFLICT (message_id) DO UPDATE
                        SET stored = excluded.stored, codec = excluded.codec, data = excluded.data;
                END IF;
            END IF;
        END IF;

        FOR item IN SELECT value FROM jsonb_array_elements(c->'deliveries') LOOP
            INSERT INTO deliveries AS d ({_D})
                SELECT coalesce(r.message_id, mid), {_from_record(DELIVERY_UPDATE_COLUMNS)}
                FROM jsonb_populate_record(NULL::deliveries, item) AS r
                RETURNING d.id INTO did;
            ids := ids || did;
        END LOOP;

        FOR item IN SELECT value FROM jsonb_array_elements(c->'updates') LOOP
            UPDATE deliveries AS t SET ({", ".join(DELIVERY_UPDATE_COLUMNS)}) = (
                SELECT {_from_record(DELIVERY_UPDATE_COLUMNS)}
                FROM jsonb_populate_record(t, item->'fields') AS r)
            WHERE t.id = (item->>'id')::bigint AND (item->>'expect' IS NULL OR t.state = item->>'expect');
            GET DIAGNOSTICS n = ROW_COUNT;
            IF n = 0 THEN
                IF EXISTS (SELECT 1 FROM deliveries AS d WHERE d.id = (item->>'id')::bigint) THEN
                    RAISE EXCEPTION 'delivery % is no longer %', item->>'id', item->>'expect'
                        USING ERRCODE = 'KM409';
                END IF;
                RAISE EXCEPTION 'no delivery %', item->>'id' USING ERRCODE = 'KM404';
            END IF;
        END LOOP;

        INSERT INTO events ({_E})
            SELECT coalesce((e->>'message_id')::bigint, mid),
                   coalesce((e->>'delivery_id')::bigint, ids[(e->>'new_delivery_index')::integer + 1]),
                   (e->>'at')::float8, e->>'actor', e->>'kind', e->>'from_state', e->>'to_state',
                   coalesce(e->>'reason', ''), coalesce(e->'details', '{{}}'::jsonb)
            FROM jsonb_array_elements(c->'events') WITH ORDINALITY AS x (e, i)
            ORDER BY x.i;

        RETURN QUERY SELECT mid, ids, true;
    END
    $fn$;
    """,
)

SQL_APPLY = "SELECT applied_message, applied_deliveries, applied_created FROM komut_apply($1::jsonb, $2, $3)"

SQL_SELECT_MESSAGE = f"SELECT id, {_M} FROM messages"
SQL_MESSAGE_BY_ID = SQL_SELECT_MESSAGE + " WHERE id = $1"
SQL_MESSAGE_WITH_PAYLOAD = (
    f"SELECT m.id, {_from_record(MESSAGE_COLUMNS, 'm')}, p.codec, p.data FROM messages AS m "
    "LEFT JOIN payloads AS p ON p.message_id = m.id WHERE m.id = $1"
)
SQL_MESSAGE_BY_KEY = SQL_SELECT_MESSAGE + " WHERE dedupe_key = $1"
SQL_MESSAGES_BY_MSG_ID = (
    SQL_SELECT_MESSAGE + " WHERE msg_id = $1 AND ($2::text IS NULL OR direction = $2) ORDER BY id"
)
SQL_MESSAGES_BY_IDS = SQL_SELECT_MESSAGE + " WHERE id = ANY($1::bigint[]) ORDER BY id DESC"
SQL_SELECT_DELIVERY = f"SELECT id, {_D} FROM deliveries"
SQL_DELIVERIES_OF = SQL_SELECT_DELIVERY + " WHERE message_id = $1 ORDER BY id"
SQL_EVENTS_OF = f"SELECT id, {_E} FROM events WHERE message_id = $1 ORDER BY id"
SQL_HAS_EVENT = (
    "SELECT 1 FROM events WHERE message_id = $1 AND kind = $2"
    " AND ($3::bigint IS NULL OR delivery_id = $3) LIMIT 1"
)
# {field} comes from TIME_FIELDS only.
SQL_DUE = (
    SQL_SELECT_DELIVERY + " WHERE state = ANY($1::text[]) AND {field} <= $2 ORDER BY {field}, id LIMIT $3"
)

SQL_COUNTS = """
    SELECT state, sum(n)::bigint FROM (
        SELECT state, n FROM delivery_counts
        UNION ALL SELECT to_state, 1 FROM delivery_moves WHERE to_state IS NOT NULL
        UNION ALL SELECT from_state, -1 FROM delivery_moves WHERE from_state IS NOT NULL
    ) AS all_moves GROUP BY state
"""
# Moves committed so far become totals. Concurrent compactions (from several nodes) each take
# the rows they deleted; totals are updated in state order so that they never deadlock.
SQL_COMPACT_COUNTS = """
    WITH moved AS (DELETE FROM delivery_moves RETURNING from_state, to_state),
    deltas AS (
        SELECT state, sum(n) AS n FROM (
            SELECT to_state AS state, 1 AS n FROM moved WHERE to_state IS NOT NULL
            UNION ALL SELECT from_state, -1 FROM moved WHERE from_state IS NOT NULL
        ) AS d GROUP BY state
    )
    INSERT INTO delivery_counts AS c (state, n) SELECT state, n FROM deltas ORDER BY state
    ON CONFLICT (state) DO UPDATE SET n = c.n + excluded.n
"""
SQL_HAS_MOVES = "SELECT EXISTS (SELECT 1 FROM delivery_moves)"

# Due deliveries of one transport, oldest first, skipping rows another node is claiming right
# now; the FIFO rule looks at committed states and does not skip, so a later delivery of a
# conversation waits while an earlier one is being claimed elsewhere.
SQL_CLAIM = f"""
    WITH picked AS (
        SELECT d.id, d.state AS old_state FROM deliveries AS d
        WHERE d.transport = $1 AND d.state IN ('queued', 'retry-wait')
          AND (d.state = 'queued' OR d.next_attempt_at <= $2)
          AND d.receiver_her <> ALL ($3::bigint[])
          AND (d.fifo_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries AS o
                WHERE o.receiver_her = d.receiver_her AND o.fifo_key = d.fifo_key AND o.id < d.id
                  AND o.fifo_key IS NOT NULL AND o.state IN ('queued', 'sending', 'retry-wait')))
        ORDER BY d.id
        LIMIT $4
        FOR UPDATE OF d SKIP LOCKED
    ), claimed AS (
        UPDATE deliveries AS d SET state = 'sending', lease_owner = $5, lease_until = $6, updated_at = $2
        FROM picked WHERE d.id = picked.id
        RETURNING d.*, picked.old_state
    ), logged AS (
        INSERT INTO events ({_E})
        SELECT c.message_id, c.id, $2, $7, $8, c.old_state, 'sending', 'attempt ' || (c.attempts + 1), $9::jsonb
        FROM claimed AS c ORDER BY c.id
    )
    SELECT c.id, {_from_record(DELIVERY_COLUMNS, "c")},
           {", ".join(f"m.{col} AS m_{col}" for col in MESSAGE_COLUMNS)}, p.codec, p.data
    FROM claimed AS c
    JOIN messages AS m ON m.id = c.message_id
    LEFT JOIN payloads AS p ON p.message_id = c.message_id
    ORDER BY c.id
"""
SQL_RELEASE = f"""
    WITH expired AS (
        SELECT id, lease_owner FROM deliveries
        WHERE state = 'sending' AND (lease_until IS NULL OR lease_until <= $4)
        ORDER BY id
        FOR UPDATE SKIP LOCKED
    ), released AS (
        UPDATE deliveries AS d SET state = 'queued', lease_owner = NULL, lease_until = NULL, updated_at = $1
        FROM expired WHERE d.id = expired.id
        RETURNING d.id, d.message_id, expired.lease_owner AS owner
    ), logged AS (
        INSERT INTO events ({_E})
        SELECT r.message_id, r.id, $1, $2, $3, 'sending', 'queued',
               'lease of ' || coalesce(r.owner, 'None') || ' ran out', '{{}}'::jsonb
        FROM released AS r ORDER BY r.id
    )
    SELECT count(*) FROM released
"""
SQL_NOTIFY = "SELECT pg_notify($1, $2)"

SQL_PURGE_OLD = "DELETE FROM payloads WHERE received_at < $1"
SQL_PAYLOAD_TOTAL = "SELECT coalesce(sum(stored), 0)::bigint FROM payloads"
# Oldest first, those whose story is over first: a final message state, or no delivery still
# able to move by itself (DELIVERED counts as final when no AppRec is expected).
SQL_PURGE_CANDIDATES = """
    SELECT p.message_id, p.stored FROM payloads AS p JOIN messages AS m ON m.id = p.message_id
    WHERE (m.state = ANY($1::text[]) OR NOT EXISTS (
            SELECT 1 FROM deliveries AS d WHERE d.message_id = p.message_id
              AND d.state <> ALL ($2::text[])
              AND NOT (d.state = 'delivered' AND NOT d.expects_apprec))) = $3
    ORDER BY p.received_at, p.message_id
"""
SQL_DELETE_PAYLOADS = "DELETE FROM payloads WHERE message_id = ANY($1::bigint[])"

SQL_SEARCH = "SELECT id, {columns} FROM messages AS m WHERE {where} ORDER BY m.id DESC LIMIT {limit}"
SQL_HAS_DELIVERY_IN_STATE = (
    "EXISTS (SELECT 1 FROM deliveries AS s WHERE s.message_id = m.id AND s.state = {p})"
)
SQL_INVOLVES = (
    "(m.sender_her = {p} OR m.receiver_her = {p} OR "
    "EXISTS (SELECT 1 FROM deliveries AS x WHERE x.message_id = m.id AND x.receiver_her = {p}))"
)
SQL_NAME_MATCHES = "(strpos(m.sender_folded, {p}) > 0 OR strpos(m.receiver_folded, {p}) > 0)"

# Change feed and statistics (the operator UI). Ids come from a sequence, so with concurrent
# writers a lower id may commit after a higher one was read; the live views re-read a window
# behind their position for that reason (gateway/ui/live.py).
SQL_EVENTS_SINCE = f"SELECT id, {_E} FROM events WHERE id > $1 ORDER BY id LIMIT $2"
SQL_LAST_EVENT_ID = "SELECT coalesce(max(id), 0) FROM events"
SQL_STATS_HOURLY = """
    SELECT floor(received_at / 3600) * 3600 AS hour, msg_type, count(*) FROM messages
    WHERE received_at >= $1 AND received_at < $2 GROUP BY 1, 2
"""
SQL_STATS_SENDERS = """
    SELECT sender_her, count(*), count(*) FILTER (WHERE state = 'rejected') FROM messages
    WHERE received_at >= $1 AND received_at < $2 AND sender_her IS NOT NULL GROUP BY sender_her
"""
SQL_STATS_RECEIVERS = """
    SELECT d.receiver_her, count(*), count(*) FILTER (WHERE d.state = ANY($3::text[])),
           count(*) FILTER (WHERE d.state = 'apprec-missing')
    FROM messages AS m JOIN deliveries AS d ON d.message_id = m.id
    WHERE m.received_at >= $1 AND m.received_at < $2 GROUP BY d.receiver_her
"""
SQL_STATS_LATENCY = """
    SELECT e.to_state, e.at - m.received_at FROM messages AS m JOIN events AS e ON e.message_id = m.id
    WHERE m.received_at >= $1 AND m.received_at < $2 AND e.to_state = ANY($3::text[])
"""

# ------------------------------------------------------------------------------------------------

MAX_LIMIT = 1000
OFF_LOOP_BYTES = 256 * 1024  # payloads above this are (de)compressed off the event loop thread
MESSAGE_FIELDS = frozenset(f.name for f in dataclasses.fields(MessageRecord)) - {"id"}
DELIVERY_FIELDS = frozenset(DELIVERY_UPDATE_COLUMNS)
TIME_FIELDS = frozenset({"expires_at", "apprec_due_at", "next_attempt_at", "lease_until", "updated_at"})
KNOWN_STATES = frozenset(str(s) for s in DeliveryState)


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


def _value(value: Any) -> Any:
    if isinstance(value, str):
        return str(value)  # a StrEnum member becomes its plain value
    return value


def _folded(summary: dict | None, key: str) -> str | None:
    value = (summary or {}).get(key)
    return value.casefold() if isinstance(value, str) and value else None


def _message(row, payload: bytes | None = None, prefix: str = "") -> MessageRecord:
    return MessageRecord(
        direction=Direction(row[prefix + "direction"]),
        state=MessageState(row[prefix + "state"]),
        dedupe_key=row[prefix + "dedupe_key"],
        received_at=row[prefix + "received_at"],
        source=row[prefix + "source"],
        msg_id=row[prefix + "msg_id"],
        msg_type=row[prefix + "msg_type"],
        sender_her=row[prefix + "sender_her"],
        receiver_her=row[prefix + "receiver_her"],
        conversation=row[prefix + "conversation"],
        refers_to=row[prefix + "refers_to"],
        size=row[prefix + "size"],
        payload=payload,
        summary=json.loads(row[prefix + "summary"]),
        problems=json.loads(row[prefix + "problems"]),
        id=row["message_id"] if prefix else row["id"],
    )


def _delivery(row) -> DeliveryRecord:
    values = {c: row[c] for c in DELIVERY_COLUMNS}
    values["state"] = DeliveryState(values["state"])
    return DeliveryRecord(id=row["id"], **values)


def _event(row) -> Event:
    values = {c: row[c] for c in EVENT_COLUMNS}
    values["details"] = json.loads(values["details"])
    return Event(id=row["id"], **values)


def _payload_bytes(change: Change) -> int:
    total = len(change.new_message.payload or b"") if change.new_message is not None else 0
    payload = change.message_fields.get("payload")
    return total + (len(payload) if isinstance(payload, bytes | bytearray) else 0)


# SQLSTATE classes that mean "not now" rather than "never": connection exceptions, insufficient
# resources (disk full, too many connections), operator intervention (shutdown, restart), system
# errors; and read-only (a standby after a failover), serialization failure, deadlock.
UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
UNAVAILABLE_STATES = frozenset({"25006", "40001", "40P01"})


def _unavailable(exc: BaseException) -> StoreUnavailable | None:
    if isinstance(exc, asyncpg.PostgresError):
        state = exc.sqlstate or ""
        if state[:2] in UNAVAILABLE_CLASSES or state in UNAVAILABLE_STATES:
            return StoreUnavailable(f"the PostgreSQL store is unavailable ({state}): {exc}")
        return None
    if isinstance(exc, OSError | TimeoutError) or (
        isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc)
    ):
        return StoreUnavailable(f"the PostgreSQL store is unreachable: {type(exc).__name__}: {exc}")
    return None


def _translated(method):
    """Front doors answer "try again later" for StoreUnavailable; other errors stay what they are."""

    @functools.wraps(method)
    async def wrapper(self, *args, **kwargs):
        try:
            return await method(self, *args, **kwargs)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            unavailable = _unavailable(exc)
            if unavailable is None:
                raise
            raise unavailable from exc

    return wrapper


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool connections carry no session state here (LISTEN has a connection of its own, the
    advisory lock is transaction-scoped), so asyncpg's reset (UNLISTEN, RESET ALL, ...) after every
    use would only add a round trip per operation."""


class PostgresStore:
    """Store on a PostgreSQL database that several gateway nodes may share. See the module docstring."""

    # Other nodes hold live leases in this store: never release leases that have not run out.
    shared = True

    def __init__(
        self,
        dsn: str,
        *,
        pool_size: int = 10,
        compress_level: int = 1,
        command_timeout: float = 60.0,
        notify_delay: float = 0.02,
        compact_interval: float = 5.0,
    ):
        self.dsn = dsn
        self.pool_size = pool_size
        self.compress_level = compress_level
        self.command_timeout = command_timeout
        self.notify_delay = notify_delay
        self.compact_interval = compact_interval
        self.commits = 0  # applied changes (each its own transaction)
        self._pool: asyncpg.Pool | None = None
        self._open = False
        self._token = secrets.token_hex(8)  # tells our own notifications from other nodes'
        self._listeners: list[Callable[[], None]] = []
        self._tasks: set[asyncio.Task] = set()
        self._listen_task: asyncio.Task | None = None
        self._notify_pending = False

    # --- life cycle ----------------------------------------------------------------------------

    async def open(self) -> None:
        if self._open:
            return
        pool = await asyncpg.create_pool(
            self.dsn,
            min_size=1,
            max_size=self.pool_size,
            command_timeout=self.command_timeout,
            server_settings={"application_name": "komut"},
            reset=_keep_session,
        )
        try:
            async with pool.acquire() as conn:
                await self._migrate(conn)
        except BaseException:
            await pool.close()
            raise
        self._pool = pool
        self._open = True
        self._spawn(self._maintain(), "komut-pg-maintenance")

    async def close(self) -> None:
        if not self._open:
            return
        self._open = False
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listen_task = None
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        async with conn.transaction():
            await conn.execute(SQL_LOCK, ADVISORY_LOCK)
            await conn.execute(SQL_MIGRATIONS_TABLE)
            version = await conn.fetchval(SQL_VERSION)
            if version > len(MIGRATIONS):
                raise RuntimeError(
                    f"the database has schema version {version}; this komut knows only up to {len(MIGRATIONS)}"
                )
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                await conn.execute(script)
                await conn.execute(SQL_RECORD_VERSION, number)

    def _pool_or_fail(self) -> asyncpg.Pool:
        if not self._open or self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # --- other nodes: LISTEN/NOTIFY ------------------------------------------------------------

    async def listen(self, callback: Callable[[], None]) -> None:
        """Call `callback` (on this event loop) when another node has queued work."""
        self._pool_or_fail()
        self._listeners.append(callback)
        if self._listen_task is None:
            self._listen_task = self._spawn(self._listen_loop(), "komut-pg-listen")

    async def _listen_loop(self) -> None:
        delay = 0.5
        while self._open:
            conn = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": "komut-listen"})
                closed = asyncio.Event()
                conn.add_termination_listener(lambda _conn, closed=closed: closed.set())
                await conn.add_listener(CHANNEL, self._on_notify)
                delay = 0.5
                self._wake_listeners()  # whatever was queued while nobody listened
                while not closed.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), 30)
                    if not closed.is_set():
                        # A connection that died silently (no FIN) shows up here, not in `closed`.
                        await conn.execute("SELECT 1", timeout=10)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("LISTEN connection lost (%s); reconnecting in %.1f s", exc, delay)
            finally:
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(conn.close(), 5)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)

    def _on_notify(self, _conn, _pid, _channel, payload: str) -> None:
        if payload != self._token:
            self._wake_listeners()

    def _wake_listeners(self) -> None:
        for callback in self._listeners:
            try:
                callback()
            except Exception:
                log.exception("store listener failed")

    def _poke(self) -> None:
        """Tell the other nodes, soon and once for many changes, that work was queued."""
        if self._notify_pending or not self._open:
            return
        self._notify_pending = True
        self._spawn(self._notify_soon(), "komut-pg-notify")

    async def _notify_soon(self) -> None:
        try:
            await asyncio.sleep(self.notify_delay)
            self._notify_pending = False
            await self._pool_or_fail().execute(SQL_NOTIFY, CHANNEL, self._token)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Only a wake-up: the other nodes poll anyway.
            self._notify_pending = False
            log.debug("NOTIFY failed: %s", exc)

    async def _maintain(self) -> None:
        while self._open:
            await asyncio.sleep(self.compact_interval)
            try:
                await self.compact_counts()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("delivery count compaction failed: %s", exc)

    @_translated
    async def compact_counts(self) -> None:
        pool = self._pool_or_fail()
        async with pool.acquire() as conn:
            if await conn.fetchval(SQL_HAS_MOVES):
                await conn.execute(SQL_COMPACT_COUNTS)

    # --- apply ---------------------------------------------------------------------------------

    def _prepare(self, change: Change) -> tuple[str, bytes | None, bytes | None]:
        """The change as the JSON document komut_apply reads, plus the compressed payloads."""
        doc: dict[str, Any] = {"codec": CODEC}
        blob = field_blob = None
        m = change.new_message
        has_message = m is not None or change.message_id is not None
        for key in change.message_fields:
            if key not in MESSAGE_FIELDS:
                raise ValueError(f"unknown message field {key!r}")
        for update in change.delivery_updates:
            for key in update.fields:
                if key not in DELIVERY_FIELDS:
                    raise ValueError(f"unknown delivery field {key!r}")
        if change.message_fields and change.message_id is None:
            raise ValueError("message_fields without message_id")
        for d in change.new_deliveries:
            if d.message_id is None and not has_message:
                raise ValueError("a new delivery needs a message: new_message, message_id or its own")
        for e in change.events:
            if e.new_delivery_index is not None and e.delivery_id is None:
                change.new_deliveries[e.new_delivery_index]  # IndexError before anything is written
                if e.new_delivery_index < 0:
                    raise IndexError("new_delivery_index must not be negative")

        # The store has no clock of its own; the change's latest event says when it happened.
        now = max((e.at for e in change.events), default=None)
        if now is None:
            now = time.time()
        if m is not None:
            record = {c: _value(getattr(m, c)) for c in MESSAGE_COLUMNS}
            record["sender_folded"] = _folded(m.summary, "sender_name")
            record["receiver_folded"] = _folded(m.summary, "receiver_name")
            doc["message"] = record
            if m.payload is not None:
                blob = compress(m.payload, self.compress_level)
        if change.message_id is not None:
            doc["message_id"] = change.message_id
        if change.message_fields:
            fields = {}
            for key, value in change.message_fields.items():
                if key == "payload":
                    doc["payload_given"] = True
                    field_blob = None if value is None else compress(value, self.compress_level)
                else:
                    fields[key] = _value(value)
            if "summary" in fields:
                fields["sender_folded"] = _folded(fields["summary"], "sender_name")
                fields["receiver_folded"] = _folded(fields["summary"], "receiver_name")
            doc["message_fields"] = fields
        deliveries = []
        for d in change.new_deliveries:
            values = {c: _value(getattr(d, c)) for c in DELIVERY_COLUMNS}
            if not values["updated_at"]:
                values["updated_at"] = now
            deliveries.append(values)
        doc["deliveries"] = deliveries
        doc["updates"] = [
            {
                "id": u.delivery_id,
                "expect": None if u.expect_state is None else str(u.expect_state),
                "fields": {"updated_at": now, **{k: _value(v) for k, v in u.fields.items()}},
            }
            for u in change.delivery_updates
        ]
        doc["events"] = [
            {
                "message_id": e.message_id,
                "delivery_id": e.delivery_id,
                "new_delivery_index": e.new_delivery_index,
                "at": e.at,
                "actor": str(e.actor),
                "kind": str(e.kind),
                "from_state": None if e.from_state is None else str(e.from_state),
                "to_state": None if e.to_state is None else str(e.to_state),
                "reason": e.reason or "",
                "details": e.details or {},
            }
            for e in change.events
        ]
        return _json(doc), blob, field_blob

    @_translated
    async def apply(self, change: Change) -> Applied:
        pool = self._pool_or_fail()
        if _payload_bytes(change) > OFF_LOOP_BYTES:
            # Compressing megabytes would hold the event loop; zlib lets go of the GIL meanwhile.
            doc, blob, field_blob = await asyncio.to_thread(self._prepare, change)
        else:
            doc, blob, field_blob = self._prepare(change)
        try:
            row = await pool.fetchrow(SQL_APPLY, doc, blob, field_blob)
        except asyncpg.PostgresError as exc:
            if exc.sqlstate == "KM409":
                raise Conflict(str(exc)) from None
            if exc.sqlstate == "KM404":
                raise LookupError(str(exc)) from None
            raise
        self.commits += 1
        applied = Applied(row[0], list(row[1]), created=row[2])
        if applied.created and self._queues_work(change):
            self._poke()
        return applied

    @staticmethod
    def _queues_work(change: Change) -> bool:
        if any(d.state == DeliveryState.QUEUED for d in change.new_deliveries):
            return True
        return any(u.fields.get("state") == DeliveryState.QUEUED for u in change.delivery_updates)

    # --- claim and leases ----------------------------------------------------------------------

    @_translated
    async def claim(
        self,
        transport: str,
        now: float,
        limit: int,
        owner: str,
        lease_seconds: float,
        exclude_receivers: Sequence[int] = (),
    ) -> list[Claimed]:
        pool = self._pool_or_fail()
        if limit <= 0:
            return []
        attempt = check_delivery(DeliveryState.QUEUED, DeliveryState.SENDING)
        rows = await pool.fetch(
            SQL_CLAIM,
            transport,
            now,
            list(exclude_receivers),
            limit,
            owner,
            now + lease_seconds,
            str(attempt.actor),
            attempt.trigger,
            _json({"owner": owner}),
        )
        if sum(len(r["data"] or b"") for r in rows) > OFF_LOOP_BYTES:
            return await asyncio.to_thread(self._claimed, rows)
        return self._claimed(rows)

    @staticmethod
    def _claimed(rows) -> list[Claimed]:
        cache: dict[int, MessageRecord] = {}
        out = []
        for row in rows:
            delivery = _delivery(row)
            message = cache.get(delivery.message_id)
            if message is None:
                payload = None if row["codec"] is None else decompress(row["codec"], row["data"])
                message = _message(row, payload, prefix="m_")
                cache[delivery.message_id] = message
            out.append(Claimed(delivery, message))
        return out

    @_translated
    async def release_expired_leases(self, now: float, *, expired_by: float | None = None) -> int:
        pool = self._pool_or_fail()
        resumed = check_delivery(DeliveryState.SENDING, DeliveryState.QUEUED)
        limit = now if expired_by is None else expired_by
        count = await pool.fetchval(SQL_RELEASE, now, str(resumed.actor), resumed.trigger, limit)
        if count:
            self._poke()
        return count

    # --- simple reads --------------------------------------------------------------------------

    @_translated
    async def get_message(self, message_id: int, with_payload: bool = False) -> MessageRecord | None:
        pool = self._pool_or_fail()
        if not with_payload:
            row = await pool.fetchrow(SQL_MESSAGE_BY_ID, message_id)
            return None if row is None else _message(row)
        row = await pool.fetchrow(SQL_MESSAGE_WITH_PAYLOAD, message_id)
        if row is None:
            return None
        payload = None
        if row["codec"] is not None:
            if len(row["data"]) > OFF_LOOP_BYTES:
                payload = await asyncio.to_thread(decompress, row["codec"], row["data"])
            else:
                payload = decompress(row["codec"], row["data"])
        return _message(row, payload)

    @_translated
    async def find_message(self, dedupe_key: str) -> MessageRecord | None:
        row = await self._pool_or_fail().fetchrow(SQL_MESSAGE_BY_KEY, dedupe_key)
        return None if row is None else _message(row)

    @_translated
    async def find_by_msg_id(self, msg_id: str, direction: Direction | None = None) -> list[MessageRecord]:
        rows = await self._pool_or_fail().fetch(
            SQL_MESSAGES_BY_MSG_ID, msg_id, None if direction is None else str(direction)
        )
        return [_message(row) for row in rows]

    @_translated
    async def deliveries(self, message_id: int) -> list[DeliveryRecord]:
        rows = await self._pool_or_fail().fetch(SQL_DELIVERIES_OF, message_id)
        return [_delivery(row) for row in rows]

    @_translated
    async def events(self, message_id: int) -> list[Event]:
        rows = await self._pool_or_fail().fetch(SQL_EVENTS_OF, message_id)
        return [_event(row) for row in rows]

    @_translated
    async def has_event(self, message_id: int, kind: str, delivery_id: int | None = None) -> bool:
        return await self._pool_or_fail().fetchval(SQL_HAS_EVENT, message_id, kind, delivery_id) is not None

    @_translated
    async def due(
        self, now: float, states: Sequence[DeliveryState], field_name: str, limit: int
    ) -> list[DeliveryRecord]:
        pool = self._pool_or_fail()
        if field_name not in TIME_FIELDS:
            raise ValueError(f"due() cannot look at {field_name!r}")
        if not states or limit <= 0:
            return []
        rows = await pool.fetch(SQL_DUE.format(field=field_name), [str(s) for s in states], now, limit)
        return [_delivery(row) for row in rows]

    @_translated
    async def counts(self) -> dict[str, int]:
        rows = await self._pool_or_fail().fetch(SQL_COUNTS)
        out = {str(state): 0 for state in DeliveryState}
        out.update({state: int(n) for state, n in rows})
        return out

    @_translated
    async def events_since(self, after_id: int, limit: int = 1000) -> list[Event]:
        if limit <= 0:
            return []
        rows = await self._pool_or_fail().fetch(SQL_EVENTS_SINCE, after_id, limit)
        return [_event(row) for row in rows]

    @_translated
    async def last_event_id(self) -> int:
        return int(await self._pool_or_fail().fetchval(SQL_LAST_EVENT_ID))

    @_translated
    async def traffic_stats(self, since: float, until: float) -> TrafficStats:
        pool = self._pool_or_fail()
        out = TrafficStats(since=since, until=until)
        hourly = await pool.fetch(SQL_STATS_HOURLY, since, until)
        out.hourly = sorted((float(h), t, int(n)) for h, t, n in hourly)
        for her, sent, refused in await pool.fetch(SQL_STATS_SENDERS, since, until):
            out.partners[int(her)] = PartnerStats(int(her), sent=int(sent), refused=int(refused))
        failed = [str(s) for s in FAILED_STATES]
        for her, count, bad, missing in await pool.fetch(SQL_STATS_RECEIVERS, since, until, failed):
            p = out.partners.setdefault(int(her), PartnerStats(int(her)))
            p.deliveries, p.failed, p.apprec_missing = int(count), int(bad), int(missing)
        values: dict[str, list[float]] = {kind: [] for kind in set(LATENCY_STATES.values())}
        states = [str(s) for s in LATENCY_STATES]
        for state, seconds in await pool.fetch(SQL_STATS_LATENCY, since, until, states):
            values[LATENCY_STATES[state]].append(float(seconds))
        out.latency = {kind: Latency.of(v) for kind, v in values.items()}
        return out

    # --- search --------------------------------------------------------------------------------

    @_translated
    async def search(self, query: Query) -> list[MessageRecord]:
        pool = self._pool_or_fail()
        q = query
        limit = max(1, min(int(q.limit), MAX_LIMIT))
        conditions: list[str] = []
        params: list[Any] = []

        def p(value: Any) -> str:
            params.append(value)
            return f"${len(params)}"

        if q.before_id is not None:
            conditions.append(f"m.id < {p(q.before_id)}")
        for column in ("sender_her", "receiver_her", "msg_type", "conversation", "msg_id"):
            value = getattr(q, column)
            if value is not None:
                conditions.append(f"m.{column} = {p(value)}")
        if q.direction is not None:
            conditions.append(f"m.direction = {p(str(q.direction))}")
        if q.since is not None:
            conditions.append(f"m.received_at >= {p(float(q.since))}")
        if q.until is not None:
            conditions.append(f"m.received_at < {p(float(q.until))}")
        if q.state is not None:
            if q.state in MessageState._value2member_map_:
                conditions.append(f"m.state = {p(q.state)}")
            elif q.state in KNOWN_STATES:
                conditions.append(SQL_HAS_DELIVERY_IN_STATE.format(p=p(q.state)))
            else:
                return []
        if q.her_id is not None:
            conditions.append(SQL_INVOLVES.format(p=p(int(q.her_id))))
        text = (q.text or "").strip()
        if text:
            alternatives = [f"m.msg_id = {p(text)}"]
            if text.isascii() and text.isdigit() and len(text) <= 18:
                alternatives.append(SQL_INVOLVES.format(p=p(int(text))))
            alternatives.append(SQL_NAME_MATCHES.format(p=p(text.casefold())))
            conditions.append("(" + " OR ".join(alternatives) + ")")
        sql = SQL_SEARCH.format(columns=_M, where=" AND ".join(conditions) or "TRUE", limit=limit)
        rows = await pool.fetch(sql, *params)
        return [_message(row) for row in rows]

    # --- retention -----------------------------------------------------------------------------

    @_translated
    async def purge_payloads(self, older_than: float, max_total_bytes: int | None) -> int:
        pool = self._pool_or_fail()
        async with pool.acquire() as conn, conn.transaction():
            status = await conn.execute(SQL_PURGE_OLD, older_than)
            purged = int(status.split()[-1])
            if max_total_bytes is None:
                return purged
            excess = await conn.fetchval(SQL_PAYLOAD_TOTAL) - max_total_bytes
            if excess <= 0:
                return purged
            final_messages = [str(s) for s in FINAL_MESSAGE_STATES]
            final_deliveries = [str(s) for s in FINAL_DELIVERY_STATES]
            victims: list[int] = []
            for final in (True, False):
                async for message_id, stored in conn.cursor(
                    SQL_PURGE_CANDIDATES, final_messages, final_deliveries, final
                ):
                    victims.append(message_id)
                    excess -= stored
                    if excess <= 0:
                        break
                if excess <= 0:
                    break
            if victims:
                await conn.execute(SQL_DELETE_PAYLOADS, victims)
            return purged + len(victims)
