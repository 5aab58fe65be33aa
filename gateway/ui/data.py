"""What the message, conversation and partner pages show, assembled once for both the HTML pages
and the JSON API (so the two cannot disagree)."""

from __future__ import annotations

import asyncio
import datetime as dt

from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import PartnerStats, Query
from gateway.ui.actions import allowed
from gateway.ui.auth import Principal
from gateway.ui.content import mask_text, render
from gateway.ui.dashboard import certificates
from gateway.ui.model import event_json, fmt_time, party_name
from gateway.ui.operators import AuditQuery, Role
from gateway.ui.texts import STATE_HELP, error_entry

OFF_LOOP_BYTES = 256 * 1024
MAX_MEMBERS = 50
ERROR_STATES = ("rejected", "dead", "expired", "app-rejected", "app-partial", "apprec-missing")


async def _linked(store, msg_id: str | None) -> list[dict]:
    if not msg_id:
        return []
    return [
        {"id": m.id, "msg_type": m.msg_type, "direction": str(m.direction)}
        for m in await store.find_by_msg_id(msg_id)
    ]


async def message_detail(ui, who: Principal, message_id: int) -> dict | None:
    store = ui.store
    message = await store.get_message(message_id, with_payload=True)
    if message is None:
        return None
    deliveries, events = await asyncio.gather(store.deliveries(message_id), store.events(message_id))
    grant = ui.unmask_grant(who, message_id) if who.may(Role.OPERATOR) else None
    masked = grant is None
    if message.payload is not None and len(message.payload) > OFF_LOOP_BYTES:
        view = await asyncio.to_thread(render, message.payload, masked=masked)
    else:
        view = render(message.payload, masked=masked)
    names = view.names if masked else frozenset()
    receivers = {d.id: d.receiver_her for d in deliveries}
    timeline = [event_json(e, ui.tz, receivers) for e in events]
    if names:
        for item in timeline:
            item["reason"] = mask_text(item["reason"], names)

    refusal = []
    if message.state == MessageState.REJECTED:
        for p in message.problems:
            detail = mask_text(str(p.get("message", "")), names)
            refusal.append(error_entry(str(p.get("code", "")), detail, str(p.get("code_text", ""))))

    row = ui.row(message, deliveries)
    apprec_errors: dict[int, list[dict]] = {}
    for item in timeline:
        if item["delivery_id"] is not None and item["errors"]:
            apprec_errors[item["delivery_id"]] = item["errors"]
    delivery_rows = []
    for d, info in zip(deliveries, row["deliveries"], strict=True):
        info = dict(info)
        info["help"] = STATE_HELP.get(d.state, "")
        info["can_resend"] = allowed(d.state, DeliveryState.QUEUED)
        info["can_cancel"] = allowed(d.state, DeliveryState.CANCELLED)
        info["errors"] = apprec_errors.get(d.id, [])
        info["apprecs"] = await _linked(store, d.apprec_msg_id)
        delivery_rows.append(info)

    sent_apprecs = []
    for item in timeline:
        if item["apprec_msg_id"] and item["delivery_id"] is None:
            sent_apprecs += await _linked(store, item["apprec_msg_id"])
    audit = []
    if who.may(Role.OPERATOR):
        for entry in await ui.operators.audit_entries(AuditQuery(message_id=message_id, limit=50)):
            audit.append(
                {
                    "at": entry.at,
                    "time": fmt_time(entry.at, ui.tz),
                    "user": entry.user,
                    "action": entry.action,
                    "reason": entry.reason,
                    "delivery_id": entry.delivery_id,
                }
            )
    return {
        "message": row,
        "state_help": STATE_HELP.get(message.state, ""),
        "summary": {k: v for k, v in (message.summary or {}).items() if k not in ("handled",)},
        "refusal": refusal,
        "deliveries": delivery_rows,
        "timeline": timeline,
        "originals": await _linked(store, message.refers_to),
        "sent_apprecs": sent_apprecs,
        "readable": view.readable,
        "raw": view.raw if who.may(Role.OPERATOR) else None,
        "masked": masked,
        "unmasked_until": fmt_time(grant[0], ui.tz) if grant else None,
        "unmask_reason": grant[1] if grant else None,
        "audit": audit,
        "last_event_id": max((e.id for e in events), default=0),
        "has_payload": message.payload is not None,
    }


async def conversation(ui, ref: str) -> list[dict]:
    """Every message of a conversation, oldest first, each with the AppRecs that answered it."""
    store = ui.store
    messages = list(reversed(await store.search(Query(conversation=ref, limit=1000))))
    rows = await ui.rows(messages)
    for row in rows:
        apprecs = []
        for d in row["deliveries"]:
            for linked in await _linked(store, d["apprec_msg_id"]):
                apprecs.append(
                    {
                        **linked,
                        "receiver_her": d["receiver_her"],
                        "status": d["apprec_status"],
                        "status_text": d["apprec_status_text"],
                    }
                )
        row["apprecs"] = apprecs
    return rows


async def partner(ui, her_id: int, window_hours: int = 24) -> dict | None:
    registry = ui.registry
    party = registry.find(her_id)
    store = ui.store
    # An organisation's page covers what is addressed below it too (services, persons).
    members = [her_id]
    if party is not None:
        members += [p.her_id for p in _subtree(registry, her_id)][1:MAX_MEMBERS]
    found: dict[int, object] = {}
    for her in members:
        for m in await store.search(Query(her_id=her, limit=25)):
            found[m.id] = m
    recent = await ui.rows(sorted(found.values(), key=lambda m: -m.id)[:25])
    bad: dict[int, object] = {}
    for her in members:
        for state in ERROR_STATES:
            for m in await store.search(Query(her_id=her, state=state, limit=10)):
                bad[m.id] = m
    errors = await ui.rows(sorted(bad.values(), key=lambda m: -m.id)[:25])
    window = await ui.traffic_stats(window_hours)
    stats = None
    for her in members:
        st = window.partners.get(her)
        if st is not None:
            stats = stats or PartnerStats(her_id)
            for field in ("sent", "refused", "deliveries", "failed", "apprec_missing"):
                setattr(stats, field, getattr(stats, field) + getattr(st, field))
    if party is None and not recent:
        return None
    info = None
    if party is not None:
        endpoint = registry.endpoint(her_id)
        holder = registry.certificate_holder(her_id)
        acceptance = registry.accepted(her_id)
        protection = registry.protection(her_id)
        url = ui.gateway.config.gateways.get(endpoint.gateway) if endpoint and endpoint.gateway else None
        info = {
            "her_id": party.her_id,
            "name": registry.display_name(her_id),
            "kind": str(party.kind),
            "category": str(party.category) if party.category else "",
            "org_no": registry.org_no(her_id) or "",
            "lineage": [(p.her_id, p.name) for p in reversed(registry.lineage(her_id))],
            "children": [(p.her_id, p.name) for p in registry.children(her_id)],
            "endpoint": endpoint.describe() if endpoint else "none (unreachable)",
            "endpoint_url": url or (endpoint.address if endpoint else None),
            "certificate_holder": (holder.her_id, holder.name) if holder else None,
            "accepts": acceptance.by_type() if acceptance else {},
            "protection": protection.as_dict() if protection else None,
            "local": her_id in getattr(ui.gateway.pipeline, "local_systems", {}),
        }
    certs = certificates(registry, ui.gateway.config, dt.datetime.now(dt.UTC), her_id=her_id)
    return {
        "her_id": her_id,
        "party": info,
        "name": party_name(registry, her_id) or str(her_id),
        "certificates": certs,
        "recent": recent,
        "errors": errors,
        "stats": stats,
        "members": len(members),
        "window_hours": window_hours,
    }


def _subtree(registry, her_id: int) -> list:
    out = [registry.get(her_id)]
    for child in registry.children(her_id):
        out += _subtree(registry, child.her_id)
    return out
