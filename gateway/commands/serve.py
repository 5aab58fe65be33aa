"""`komut serve` runs one gateway; `komut log` prints its delivery log."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import datetime

from gateway.config import ConfigError, load_config
from gateway.lifecycle import DeliveryState, MessageState

USAGE_ERROR = 2


def register(subparsers) -> None:
    p = subparsers.add_parser("serve", help="run a gateway")
    p.add_argument("--config", required=True, metavar="FILE", help="the gateway's TOML configuration")
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_serve)

    p = subparsers.add_parser("log", help="print the delivery log of a gateway")
    p.add_argument("--config", required=True, metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per message")
    p.add_argument("--msg-id", help="only this MsgId")
    p.add_argument("--status", help="a message state or a delivery state, e.g. app-ok, dead, rejected")
    p.add_argument("--since", help="ISO time, or a duration back from now such as 2h or 30m")
    p.add_argument("--limit", type=int, default=200)
    p.set_defaults(func=cmd_log)


def _config(path):
    try:
        return load_config(path)
    except ConfigError as exc:
        print(f"komut: {exc}", file=sys.stderr)
        return None


def cmd_serve(args) -> int:
    config = _config(args.config)
    if config is None:
        return USAGE_ERROR
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from gateway.service import serve

    run_loop(serve(config), config.event_loop)
    return 0


def run_loop(coro, kind: str):
    """Run the service on the configured event loop; without uvloop installed, on asyncio's own."""
    if kind == "uvloop":
        try:
            import uvloop
        except ImportError:
            logging.getLogger("komut").warning(
                "event_loop = uvloop, but uvloop is not installed (pip install uvloop): using asyncio's loop"
            )
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)


def parse_since(value: str | None, now: float) -> float | None:
    if not value:
        return None
    from gateway.config import seconds

    try:
        return now - seconds(value)
    except ValueError:
        return datetime.fromisoformat(value).timestamp()


def overall_status(message, deliveries) -> str:
    """One word for a message: its own state until accepted, then its least advanced delivery."""
    if message.state != MessageState.ACCEPTED or not deliveries:
        return str(message.state)
    order = [s.value for s in DeliveryState]
    worst = {
        DeliveryState.DEAD,
        DeliveryState.EXPIRED,
        DeliveryState.APP_REJECTED,
        DeliveryState.APPREC_MISSING,
    }
    states = [d.state for d in deliveries]
    bad = [s for s in states if s in worst]
    if bad:
        return str(bad[0])
    return str(min(states, key=lambda s: order.index(str(s))))


async def _log(config, args) -> int:
    import time

    from gateway.service import make_store
    from gateway.store import Query

    store = make_store(config)
    await store.open()
    try:
        now = time.time()
        query = Query(
            msg_id=args.msg_id, state=args.status, since=parse_since(args.since, now), limit=args.limit
        )
        messages = await store.search(query)
        for message in reversed(messages):
            deliveries = await store.deliveries(message.id)
            status = overall_status(message, deliveries)
            events = await store.events(message.id)
            if args.json:
                print(json.dumps(_as_json(message, deliveries, events, status), ensure_ascii=False))
            else:
                when = datetime.fromtimestamp(message.received_at).isoformat(timespec="seconds")
                receivers = ", ".join(f"{d.receiver_her}:{d.state}" for d in deliveries) or "-"
                print(
                    f"{when} {message.direction:<8} {message.msg_type:<24} {message.sender_her} -> "
                    f"{message.receiver_her} {status:<15} [{receivers}] {message.msg_id}"
                )
    finally:
        await store.close()
    return 0


def _as_json(message, deliveries, events, status) -> dict:
    return {
        "id": message.id,
        "msg_id": message.msg_id,
        "type": message.msg_type,
        "direction": str(message.direction),
        "sender": message.sender_her,
        "receiver": message.receiver_her,
        "status": status,
        "state": str(message.state),
        "received_at": message.received_at,
        "conversation": message.conversation,
        "refers_to": message.refers_to,
        "problems": message.problems,
        "deliveries": [
            {
                "id": d.id,
                "receiver": d.receiver_her,
                "role": d.role,
                "transport": d.transport,
                "state": str(d.state),
                "attempts": d.attempts,
                "apprec_status": d.apprec_status,
                "last_error": d.last_error,
            }
            for d in deliveries
        ],
        "events": [
            {
                "at": e.at,
                "actor": e.actor,
                "kind": e.kind,
                "delivery": e.delivery_id,
                "from": e.from_state,
                "to": e.to_state,
                "reason": e.reason,
            }
            for e in events
        ],
    }


def cmd_log(args) -> int:
    config = _config(args.config)
    if config is None:
        return USAGE_ERROR
    return asyncio.run(_log(config, args))
