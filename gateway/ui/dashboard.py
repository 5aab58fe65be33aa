"""The dashboard's data: traffic per hour and type, partners with problems, latency, what waits
for an AppRec, dead letters, refusals, and certificates about to expire."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from gateway.registry import Registry
from gateway.store import Query
from gateway.ui import charts
from gateway.ui.model import fmt_duration, party_name

log = logging.getLogger("komut.ui.dashboard")

HOUR = 3600.0
TOP_TYPES = 7
TOP_PARTNERS = 12
LIST_SIZE = 8
WINDOWS = {"24h": 24, "7d": 24 * 7}
ATTENTION_LISTS = (
    ("dead", "Dead letters", "cannot be delivered: resend after fixing the cause, or cancel"),
    ("apprec-missing", "Missing AppRec", "delivered, but the receiver's system never answered"),
    ("rejected", "Refused by this gateway", "the sender got an AppRec saying why"),
    ("expired", "Expired", "the time to live ran out before delivery"),
    ("delivered", "Waiting for an AppRec", "delivered; the receiver's AppRec has not come yet"),
)


@dataclass
class CertificateRow:
    her_id: int
    party: str
    usage: str  # sign, enc, next_sign, next_enc
    subject: str
    serial: str
    not_after: dt.datetime
    days_left: float
    ours: bool
    fingerprint: str

    @property
    def warn(self) -> bool:
        return self.days_left < 60

    @property
    def expired(self) -> bool:
        return self.days_left < 0


def _cn(cert: x509.Certificate) -> str:
    try:
        names = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return str(names[0].value) if names else cert.subject.rfc4514_string()
    except ValueError:
        return cert.subject.rfc4514_string()


def certificates(
    registry: Registry, config, now: dt.datetime | None = None, her_id: int | None = None
) -> list[CertificateRow]:
    """Every certificate komut knows (the registry's, and our own keys'), soonest expiry first.
    With `her_id`, only those that party uses (its own or its organisation's)."""
    now = now or dt.datetime.now(dt.UTC)
    ours = set(config.keys)
    rows: dict[str, CertificateRow] = {}

    def add(her: int, usage: str, cert: x509.Certificate | None) -> None:
        if cert is None:
            return
        fingerprint = cert.fingerprint(hashes.SHA256()).hex()
        key = f"{fingerprint}:{her}"
        if key in rows:
            return
        left = (cert.not_valid_after_utc - now).total_seconds() / 86400
        rows[key] = CertificateRow(
            her_id=her,
            party=party_name(registry, her) or str(her),
            usage=usage,
            subject=_cn(cert),
            serial=format(cert.serial_number, "x"),
            not_after=cert.not_valid_after_utc,
            days_left=left,
            ours=her in ours,
            fingerprint=fingerprint,
        )

    holders = registry.certificate_holders()
    if her_id is not None:
        holder = registry.certificate_holder(her_id) if her_id in registry else None
        holders = (holder,) if holder is not None else ()
    for party in holders:
        certs = party.certificates
        for usage in ("sign", "enc", "next_sign", "next_enc"):
            file = getattr(certs, usage)
            add(party.her_id, usage, file.certificate if file is not None else None)
    if her_id is None:
        from gateway.protection import load_certificate

        for her, keys in config.keys.items():
            for usage, path in (("sign", keys.sign_cert), ("enc", keys.enc_cert)):
                try:
                    add(her, usage, load_certificate(Path(path)))
                except (OSError, ValueError):
                    log.warning("cannot read our %s certificate %s", usage, path)
    return sorted(rows.values(), key=lambda r: (r.not_after, r.her_id))


def hour_label(epoch: float, tz) -> str:
    return dt.datetime.fromtimestamp(epoch, tz).strftime("%H:%M")


def day_hour_label(epoch: float, tz) -> str:
    return dt.datetime.fromtimestamp(epoch, tz).strftime("%a %H")


async def build(ui, window: str) -> dict:
    hours = WINDOWS.get(window, 24)
    now = ui.clock()
    first_hour = (now // HOUR) * HOUR - (hours - 1) * HOUR
    store = ui.store
    registry = ui.registry
    stats = await ui.traffic_stats(hours, align=True)
    counts = await store.counts()

    totals: dict[str, int] = {}
    by_hour: dict[float, dict[str, int]] = {}
    for hour, msg_type, n in stats.hourly:
        name = msg_type or "(unreadable)"
        totals[name] = totals.get(name, 0) + n
        by_hour.setdefault(hour, {})[name] = by_hour.get(hour, {}).get(name, 0) + n
    ranked = sorted(totals, key=lambda t: -totals[t])
    series = ranked[:TOP_TYPES] + (["other"] if len(ranked) > TOP_TYPES else [])
    keep = set(ranked[:TOP_TYPES])
    columns = []
    label = hour_label if hours <= 48 else day_hour_label
    for i in range(hours):
        hour = first_hour + i * HOUR
        values: dict[str, int] = {}
        for name, n in by_hour.get(hour, {}).items():
            key = name if name in keep else "other"
            values[key] = values.get(key, 0) + n
        columns.append((label(hour, ui.tz), values))
    volume_chart = charts.stacked_columns(
        columns, series, label_every=3 if hours <= 48 else 24, title="messages per hour by type"
    )

    partner_series = ["refused", "failed", "apprec-missing"]
    trouble = [p for p in stats.partners.values() if p.refused or p.failed or p.apprec_missing]
    trouble.sort(key=lambda p: -(p.refused + p.failed + p.apprec_missing))
    partner_rows = [
        (
            f"{party_name(registry, p.her_id) or p.her_id} ({p.her_id})",
            f"/ui/partners/{p.her_id}",
            [("refused", p.refused), ("failed", p.failed), ("apprec-missing", p.apprec_missing)],
        )
        for p in trouble[:TOP_PARTNERS]
    ]
    partner_chart = charts.stacked_rows(
        partner_rows, partner_series, title="refusals and failures per partner"
    )

    lists = []
    for state, title, help_text in ATTENTION_LISTS:
        if state == "delivered":
            # An AppRec is delivered for good (nothing answers it): leave those out, and the count
            # too, which cannot tell them apart.
            found = await store.search(Query(state=state, limit=LIST_SIZE * 8))
            rows = await ui.rows([m for m in found if m.msg_type != "APPREC"][:LIST_SIZE])
            count = None
        else:
            rows = await ui.rows(await store.search(Query(state=state, limit=LIST_SIZE)))
            count = counts.get(state)
        lists.append({"state": state, "title": title, "help": help_text, "rows": rows, "count": count})

    certs = certificates(registry, ui.gateway.config)
    soon = [c for c in certs if c.days_left < ui.settings.expiry_warning_days]
    return {
        "window": window if window in WINDOWS else "24h",
        "windows": list(WINDOWS),
        "since": first_hour,
        "total": sum(totals.values()),
        "types": [(t, totals[t]) for t in ranked],
        "series": series,
        "volume_chart": volume_chart,
        "volume_legend": charts.legend(series),
        "partner_chart": partner_chart,
        "partner_legend": charts.legend(partner_series),
        "partners": trouble[:TOP_PARTNERS],
        "latency": [
            {
                "kind": kind,
                "label": "to transport receipt" if kind == "transport" else "to AppRec",
                "count": lat.count,
                "p50": fmt_duration(lat.p50) if lat.count else "",
                "p90": fmt_duration(lat.p90) if lat.count else "",
                "p99": fmt_duration(lat.p99) if lat.count else "",
                "max": fmt_duration(lat.max) if lat.count else "",
            }
            for kind, lat in sorted(stats.latency.items(), key=lambda kv: kv[0] != "transport")
        ],
        "latency_raw": {k: v.__dict__ for k, v in stats.latency.items()},
        "counts": counts,
        "lists": lists,
        "certificates": soon,
        "certificates_total": len(certs),
        "stats": stats,
    }
