"""The operator UI of one gateway: its state (operators, sessions, live feed, unmaskings) and its
web applications (mounted on the gateway's app, and on an operators' listener of its own)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from aiohttp import web

from gateway.registry import Registry
from gateway.store import DeliveryRecord, MessageRecord, Store, TrafficStats
from gateway.ui import model
from gateway.ui.actions import Actions
from gateway.ui.auth import Auth, Principal
from gateway.ui.live import LiveFeed
from gateway.ui.metrics import Metrics
from gateway.ui.operators import OperatorStore
from gateway.ui.settings import UiSettings, listener_ssl_context

log = logging.getLogger("komut.ui")

UI_KEY = web.AppKey("komut.ui", object)
STATS_TTL = 30.0


def template_env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("gateway.ui", "templates"),
        autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env


class OperatorUi:
    def __init__(self, gateway, settings: UiSettings, operators: OperatorStore, *, clock=time.time):
        self.gateway = gateway
        self.settings = settings
        self.operators = operators
        self.clock = clock
        try:
            self.tz = ZoneInfo(settings.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            log.warning("[ui] timezone %r is unknown here; showing UTC", settings.timezone)
            self.tz = UTC
        self.auth = Auth(operators, settings, gateway.config.name, clock)
        self.actions = Actions(gateway, self.auth, clock)
        self.feed = LiveFeed(lambda: self.gateway.store, settings.live_poll, self.live_payload, model.matches)
        self.metrics = Metrics(self)
        self.templates = template_env()
        # (session token hash, message id) -> (until, reason): who may see which message unmasked.
        self.unmasked: dict[tuple[str, int], tuple[float, str]] = {}
        self.listener_url: str | None = None
        self._stats: dict[tuple[float, float], tuple[float, TrafficStats]] = {}
        self._stats_lock = asyncio.Lock()
        self._refreshing: dict[tuple[float, float], asyncio.Task] = {}
        self._runner: web.AppRunner | None = None
        self._purger: asyncio.Task | None = None

    @property
    def store(self) -> Store:
        return self.gateway.store

    @property
    def registry(self) -> Registry:
        return self.gateway.registry_holder.current

    # --- shared helpers for the pages and the API ----------------------------------------------

    def row(self, message: MessageRecord, deliveries: list[DeliveryRecord]) -> dict:
        out = model.row(message, deliveries, self.registry, self.tz)
        handled = out.get("handled")
        # "Handled" holds until something new happens to the message.
        if handled and any(d.updated_at > float(handled.get("at", 0)) for d in deliveries):
            out["handled"] = None
        return out

    async def rows(self, messages: list[MessageRecord]) -> list[dict]:
        deliveries = await asyncio.gather(*(self.store.deliveries(m.id) for m in messages))
        return [self.row(m, ds) for m, ds in zip(messages, deliveries, strict=True)]

    async def traffic_stats(self, hours: float, align: bool = False) -> TrafficStats:
        """The store's statistics of the last `hours` (from the start of an hour with `align`).

        Computed at most every STATS_TTL seconds however many dashboards are open, and served
        stale while a fresh copy is computed in the background (a week of a busy log takes
        seconds to scan); only the first request for a window waits for it."""
        key = (hours, float(align))
        cached = self._stats.get(key)
        if cached is not None:
            if self.clock() - cached[0] >= STATS_TTL and key not in self._refreshing:
                task = asyncio.create_task(self._refresh_stats(key), name="ui-stats")
                self._refreshing[key] = task
            return cached[1]
        return await self._refresh_stats(key)

    async def _refresh_stats(self, key: tuple[float, float]) -> TrafficStats:
        hours, align = key
        try:
            async with self._stats_lock:
                cached = self._stats.get(key)
                if cached is not None and self.clock() - cached[0] < STATS_TTL:
                    return cached[1]
                now = self.clock()
                since = (now // 3600) * 3600 - (hours - 1) * 3600 if align else now - hours * 3600
                stats = await self.store.traffic_stats(since, now + 1)
                self._stats[key] = (now, stats)
                return stats
        finally:
            self._refreshing.pop(key, None)

    def live_payload(self, message: MessageRecord, deliveries: list, events: list) -> dict:
        receivers = {d.id: d.receiver_her for d in deliveries}
        return {
            "row": self.row(message, deliveries),
            "events": [model.event_json(e, self.tz, receivers) for e in events],
        }

    def unmask_grant(self, who: Principal, message_id: int) -> tuple[float, str] | None:
        grant = self.unmasked.get((who.session.token_hash, message_id))
        if grant is None:
            return None
        if grant[0] <= self.clock():
            self.unmasked.pop((who.session.token_hash, message_id), None)
            return None
        return grant

    def render(
        self, name: str, request: web.Request, who: Principal | None, status: int = 200, **context
    ) -> web.Response:
        template = self.templates.get_template(name)
        context.setdefault("title", "")
        body = template.render(
            gateway=self.gateway.config.name,
            who=who,
            csrf=who.csrf if who else "",
            path=request.path,
            fmt_time=lambda t, s=True: model.fmt_time(t, self.tz, s),
            fmt_duration=model.fmt_duration,
            **context,
        )
        return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")

    # --- mounting and life cycle -------------------------------------------------------------

    def mount(self, app: web.Application) -> None:
        from gateway.ui import api, views

        app[UI_KEY] = self
        views.add_routes(app, self)
        api.add_routes(app, self)
        app.router.add_get("/metrics", self.metrics.handler)

    async def start(self) -> None:
        await self.operators.open()
        await self.operators.purge_sessions(self.clock(), self.settings.session_idle)
        self._purger = asyncio.create_task(self._purge_loop(), name="ui-session-purge")
        if self.settings.has_listener:
            await self._start_listener()

    async def _start_listener(self) -> None:
        s = self.settings
        app = web.Application()
        self.mount(app)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        try:
            site = web.TCPSite(runner, s.listen_host, s.listen_port, ssl_context=listener_ssl_context(s))
            await site.start()
        except OSError as exc:
            # The gateway carries on: its messages matter more than its UI listener.
            log.error("operator UI cannot listen on %s:%s: %s", s.listen_host, s.listen_port, exc)
            await runner.cleanup()
            return
        self._runner = runner
        scheme = "https" if s.tls else "http"
        self.listener_url = f"{scheme}://{s.listen_host}:{s.listen_port}/ui/"
        log.info("operator UI on %s", self.listener_url)

    async def shutdown(self) -> None:
        await self.feed.close()
        for task in list(self._refreshing.values()):
            task.cancel()
        if self._purger is not None:
            self._purger.cancel()
            await asyncio.gather(self._purger, return_exceptions=True)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def cleanup(self) -> None:
        await self.operators.close()

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(300)
            try:
                await self.operators.purge_sessions(self.clock(), self.settings.session_idle)
                now = self.clock()
                for key in [k for k, (until, _) in self.unmasked.items() if until <= now]:
                    self.unmasked.pop(key, None)
            except Exception:
                log.exception("purging sessions failed")

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "gateway": self.gateway.config.name})

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ready", "deliveries": await self.store.counts()})
