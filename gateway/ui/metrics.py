"""GET /metrics in the Prometheus text format.

Gauges are read at scrape time (the store keeps delivery counts per state by trigger, so this is
cheap on any log size); counters of operator activity live in this process."""

from __future__ import annotations

import datetime as dt

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from gateway.ui.dashboard import certificates


class _Snapshot:
    def __init__(self, families):
        self.families = families

    def collect(self):
        return self.families


class Metrics:
    def __init__(self, ui):
        self.ui = ui
        # Unregistered: each scrape builds a registry of its own around them (see render).
        self.logins = Counter("komut_ui_logins", "Operator logins by outcome", ["outcome"], registry=None)
        self.actions = Counter("komut_ui_actions", "Operator actions", ["action"], registry=None)
        self.unmasks = Counter("komut_ui_unmask", "Unmaskings of patient identifiers", registry=None)

    async def families(self) -> list:
        ui = self.ui
        store = ui.store
        out = []
        deliveries = GaugeMetricFamily("komut_deliveries", "Deliveries per state", labels=["state"])
        for state, n in sorted((await store.counts()).items()):
            deliveries.add_metric([state], n)
        out.append(deliveries)
        out.append(
            CounterMetricFamily(
                "komut_events", "Events written to the delivery log", await store.last_event_id()
            )
        )
        dispatcher = ui.gateway.dispatcher
        circuits = GaugeMetricFamily(
            "komut_circuit_open",
            "Receivers whose circuit breaker is not closed",
            labels=["receiver", "state"],
        )
        in_flight = GaugeMetricFamily("komut_deliveries_in_flight", "Deliveries being sent now")
        if dispatcher is not None:
            for receiver, state in sorted(dispatcher.breakers.state().items()):
                circuits.add_metric([str(receiver), state], 1)
            in_flight.add_metric([], sum(dispatcher.in_flight.values()))
        out += [circuits, in_flight]
        expiry = GaugeMetricFamily(
            "komut_certificate_expiry_timestamp_seconds",
            "When each known certificate expires (alert on it minus time())",
            labels=["her_id", "party", "usage", "ours"],
        )
        for cert in certificates(ui.registry, ui.gateway.config, dt.datetime.now(dt.UTC)):
            expiry.add_metric(
                [str(cert.her_id), cert.party, cert.usage, str(cert.ours).lower()], cert.not_after.timestamp()
            )
        out.append(expiry)
        out.append(GaugeMetricFamily("komut_ui_live_viewers", "Open live views", len(ui.feed.subscribers)))
        info = GaugeMetricFamily("komut_gateway_info", "This gateway", labels=["gateway"])
        info.add_metric([ui.gateway.config.name], 1)
        out.append(info)
        return out

    async def render(self) -> bytes:
        registry = CollectorRegistry()
        registry.register(_Snapshot(await self.families()))
        registry.register(
            _Snapshot([*self.logins.collect(), *self.actions.collect(), *self.unmasks.collect()])
        )
        return generate_latest(registry)

    async def handler(self, request: web.Request) -> web.Response:
        body = await self.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
