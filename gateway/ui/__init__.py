"""The operators' web UI and JSON API (issue 7): the delivery log people actually use.

Mounted through `gateway.web.WEB_MODULES`: `setup(app, gateway)` builds the operator store from
the `[ui]` section, adds /ui/, /api/ and /metrics to the gateway's app, and, with `[ui] listen`,
serves the same on an operators' listener of its own (browsers carry no client certificate). The
pages are rendered on the server and work without JavaScript; a little script makes the log and
the message page live (server-sent events). See docs/operators.md.
"""

from __future__ import annotations

from aiohttp import web

from gateway.ui.app import OperatorUi
from gateway.ui.settings import make_operator_store, parse_ui_settings

__all__ = ["OperatorUi", "setup"]


def setup(app: web.Application, gateway) -> OperatorUi | None:
    settings = parse_ui_settings(gateway.config)
    if not settings.enabled:
        return None
    ui = OperatorUi(gateway, settings, make_operator_store(settings))
    if settings.on_gateway_port:
        ui.mount(app)

    async def on_startup(_app):
        await ui.start()

    async def on_shutdown(_app):
        await ui.shutdown()

    async def on_cleanup(_app):
        await ui.cleanup()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    return ui
