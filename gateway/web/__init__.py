"""HTTP features mounted on each gateway's aiohttp application.

Each module listed here exposes `setup(app, gateway)`, called by the composition root before the
server starts; `gateway` is the running `gateway.service.Gateway` (store, pipeline, registry,
config). Keeping the list as data lets each feature own its routes.
"""

WEB_MODULES: tuple[str, ...] = ("gateway.api.edi", "gateway.ui")
