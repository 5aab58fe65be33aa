"""From the delivery log to what the pages, the API and the live stream show: log filters as a
store `Query`, one row per message, and the same filter applied to a row in memory (live updates)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, tzinfo

from gateway.commands.serve import overall_status
from gateway.config import seconds
from gateway.lifecycle import DeliveryState, MessageState
from gateway.registry import Registry
from gateway.store import DeliveryRecord, Direction, Event, MessageRecord, Query
from gateway.ui.content import mask_text
from gateway.ui.texts import ATTENTION, apprec_status_text, error_entry, type_text

RANGES = {"1h": "1h", "24h": "24h", "7d": "7d", "30d": "30d"}
FILTER_KEYS = (
    "q",
    "sender",
    "receiver",
    "type",
    "status",
    "conversation",
    "msgid",
    "direction",
    "range",
    "since",
    "until",
)
_HER_IN_PARENS = re.compile(r"\((\d{1,18})\)\s*$")


def fmt_time(epoch: float | None, tz: tzinfo, seconds_too: bool = True) -> str:
    if epoch is None:
        return ""
    return datetime.fromtimestamp(epoch, tz).strftime(
        "%Y-%m-%d %H:%M:%S" if seconds_too else "%Y-%m-%d %H:%M"
    )


def fmt_duration(value: float | None) -> str:
    if value is None:
        return ""
    value = max(0.0, value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    if value < 172800:
        return f"{value / 3600:.1f} h"
    return f"{value / 86400:.1f} d"


def party_name(registry: Registry, her: int | None) -> str:
    if her is None:
        return ""
    try:
        return registry.display_name(her)
    except KeyError:
        return ""


def party_choices(registry: Registry) -> list[tuple[int, str]]:
    return [(p.her_id, registry.display_name(p.her_id)) for p in registry]


@dataclass
class Filters:
    values: dict[str, str]  # as typed, to fill the form again
    query: Query
    notes: list[str] = field(default_factory=list)
    choices: dict[str, list[tuple[int, str]]] = field(default_factory=dict)  # ambiguous names

    @property
    def active(self) -> bool:
        return any(self.values.get(k) for k in FILTER_KEYS)

    def link(self, **changes) -> str:
        """The query string of these filters with some values changed (for pagers and links)."""
        from urllib.parse import urlencode

        values = {k: v for k, v in self.values.items() if v}
        values.update({k: str(v) for k, v in changes.items() if v not in (None, "")})
        for k, v in changes.items():
            if v in (None, ""):
                values.pop(k, None)
        return urlencode(values)


def resolve_party(registry: Registry, text: str) -> tuple[int | None, list[tuple[int, str]]]:
    """A HER-id from what was typed: digits, "Name (HER-id)" as the datalist offers, or a name
    that matches one party. Several matches come back as choices."""
    text = text.strip()
    if text.isdigit() and len(text) <= 18:
        return int(text), []
    match = _HER_IN_PARENS.search(text)
    if match:
        return int(match.group(1)), []
    folded = text.casefold()
    hits = [(p.her_id, registry.display_name(p.her_id)) for p in registry]
    exact = [(h, n) for h, n in hits if n.casefold() == folded]
    if len(exact) == 1:
        return exact[0][0], []
    partial = [(h, n) for h, n in hits if folded in n.casefold()]
    if len(partial) == 1:
        return partial[0][0], []
    return None, partial[:20]


def _local_time(value: str, tz: tzinfo) -> float | None:
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=tz)
    return moment.timestamp()


def parse_filters(
    params: Mapping[str, str], registry: Registry, tz: tzinfo, now: float, limit: int
) -> Filters:
    values = {k: (params.get(k) or "").strip()[:200] for k in FILTER_KEYS}
    q = Query(limit=limit)
    notes: list[str] = []
    choices: dict[str, list[tuple[int, str]]] = {}
    text = values["q"] or None
    for key in ("sender", "receiver"):
        if not values[key]:
            continue
        her, options = resolve_party(registry, values[key])
        if her is not None:
            setattr(q, f"{key}_her", her)
        elif text is None:
            # No single party: any message whose sender or receiver name contains the words.
            text = values[key]
            choices[key] = options
            notes.append(
                f"“{values[key]}” is not one party: showing messages whose sender or receiver name contains it"
                + ("; pick one below to narrow it down" if options else "")
            )
        else:
            choices[key] = options
            notes.append(f"“{values[key]}” is not one party and was left out; pick one below")
    q.text = text
    if values["type"]:
        q.msg_type = values["type"]
    if values["status"]:
        if (
            values["status"] in MessageState._value2member_map_
            or values["status"] in DeliveryState._value2member_map_
        ):
            q.state = values["status"]
        else:
            notes.append(f"unknown status {values['status']!r} was left out")
    q.conversation = values["conversation"] or None
    q.msg_id = values["msgid"] or None
    if values["direction"] in ("inbound", "outbound"):
        q.direction = Direction(values["direction"])
    if values["range"] in RANGES:
        q.since = now - seconds(RANGES[values["range"]])
    for key in ("since", "until"):
        if values[key]:
            at = _local_time(values[key], tz)
            if at is None:
                notes.append(f"{key}: not a date and time ({values[key]!r})")
            else:
                setattr(q, key, at)
    before = (params.get("before") or "").strip()
    if before.isdigit():
        q.before_id = int(before)
    return Filters(values, q, notes, choices)


def matches(q: Query, m: MessageRecord, deliveries: list[DeliveryRecord]) -> bool:
    """The store's search semantics (tests/test_store_contract.py) applied to one message, for the
    live stream: a changed message goes to the viewers whose filter it passes."""
    if q.before_id is not None and m.id >= q.before_id:
        return False
    for attr in ("sender_her", "receiver_her", "msg_type", "conversation", "msg_id", "direction"):
        wanted = getattr(q, attr)
        if wanted is not None and getattr(m, attr) != wanted:
            return False
    if q.since is not None and m.received_at < q.since:
        return False
    if q.until is not None and m.received_at >= q.until:
        return False
    receivers = {d.receiver_her for d in deliveries}
    if q.state is not None:
        if q.state in MessageState._value2member_map_:
            if m.state != q.state:
                return False
        elif not any(d.state == q.state for d in deliveries):
            return False
    if q.her_id is not None and q.her_id not in {m.sender_her, m.receiver_her, *receivers}:
        return False
    text = (q.text or "").strip()
    if not text:
        return True
    if m.msg_id == text:
        return True
    if (
        text.isascii()
        and text.isdigit()
        and len(text) <= 18
        and int(text) in {m.sender_her, m.receiver_her, *receivers}
    ):
        return True
    folded = text.casefold()
    return any(
        isinstance(m.summary.get(k), str) and folded in m.summary[k].casefold()
        for k in ("sender_name", "receiver_name")
    )


def short_reason(m: MessageRecord, deliveries: list[DeliveryRecord]) -> str:
    """Why a row needs attention, in a few words: the first refusal code or the failure."""
    if m.state == MessageState.REJECTED and m.problems:
        first = m.problems[0]
        entry = error_entry(str(first.get("code", "")), "", str(first.get("code_text", "")))
        return f"{entry['code']} {entry['text']}".strip()
    for d in deliveries:
        if str(d.state) in ATTENTION and d.last_error:
            return mask_text(d.last_error)[:160]
        if d.state in (DeliveryState.APP_REJECTED, DeliveryState.APP_PARTIAL) and d.apprec_status:
            return f"AppRec: {apprec_status_text(d.apprec_status)}"
    return ""


def delivery_json(d: DeliveryRecord, registry: Registry, tz: tzinfo) -> dict:
    return {
        "id": d.id,
        "receiver_her": d.receiver_her,
        "receiver_name": party_name(registry, d.receiver_her),
        "role": d.role,
        "transport": d.transport,
        "endpoint": d.endpoint,
        "state": str(d.state),
        "attempts": d.attempts,
        "next_attempt_at": d.next_attempt_at,
        "next_attempt": fmt_time(d.next_attempt_at, tz) if d.state == DeliveryState.RETRY_WAIT else "",
        "expires_at": d.expires_at,
        "apprec_status": d.apprec_status,
        "apprec_status_text": apprec_status_text(d.apprec_status),
        "apprec_msg_id": d.apprec_msg_id,
        "apprec_due_at": d.apprec_due_at,
        "last_error": mask_text(d.last_error) if d.last_error else None,
        "updated_at": d.updated_at,
        "updated": fmt_time(d.updated_at, tz),
    }


def row(m: MessageRecord, deliveries: list[DeliveryRecord], registry: Registry, tz: tzinfo) -> dict:
    summary = m.summary or {}
    status = overall_status(m, deliveries)
    return {
        "id": m.id,
        "received_at": m.received_at,
        "time": fmt_time(m.received_at, tz),
        "direction": str(m.direction),
        "state": str(m.state),
        "status": status,
        "attention": status in ATTENTION,
        "reason": short_reason(m, deliveries),
        "msg_type": m.msg_type,
        "type_text": type_text(m.msg_type) or summary.get("type_text") or "",
        "msg_id": m.msg_id,
        "conversation": m.conversation,
        "refers_to": m.refers_to,
        "sender_her": m.sender_her,
        "sender_name": summary.get("sender_name") or party_name(registry, m.sender_her),
        "receiver_her": m.receiver_her,
        "receiver_name": summary.get("receiver_name") or party_name(registry, m.receiver_her),
        "source": m.source,
        "size": m.size,
        "handled": summary.get("handled"),
        "deliveries": [delivery_json(d, registry, tz) for d in deliveries],
    }


def event_json(e: Event, tz: tzinfo, receivers: Mapping[int, int] | None = None) -> dict:
    details = e.details or {}
    errors = [
        error_entry(str(x.get("code", "")), mask_text(str(x.get("detail", ""))), str(x.get("text", "")))
        for x in details.get("errors", []) or []
        if isinstance(x, dict)
    ]
    problems = [
        error_entry(str(x.get("code", "")), mask_text(str(x.get("message", ""))), str(x.get("code_text", "")))
        for x in details.get("problems", []) or []
        if isinstance(x, dict)
    ]
    return {
        "id": e.id,
        "at": e.at,
        "time": fmt_time(e.at, tz),
        "actor": e.actor,
        "kind": e.kind,
        "message_id": e.message_id,
        "delivery_id": e.delivery_id,
        "receiver_her": (receivers or {}).get(e.delivery_id) if e.delivery_id is not None else None,
        "from_state": e.from_state,
        "to_state": e.to_state,
        "reason": mask_text(e.reason),
        "user": details.get("user"),
        "apprec_msg_id": details.get("apprec_msg_id"),
        "errors": errors,
        "problems": problems,
    }
