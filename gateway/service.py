"""The composition root: reads the configuration and wires the core to concrete adapters.

This is the one module of the core that imports adapters; everything else sees only the
interfaces in `gateway.store` and `gateway.transport`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import signal
import socket
import time
from pathlib import Path

from aiohttp import web

from gateway.config import Config
from gateway.dispatcher import Dispatcher
from gateway.pipeline import Pipeline
from gateway.registry import RegistryHolder, RegistrySource, install_sighup
from gateway.routing import LocalEndpoint, local_endpoints
from gateway.schemas import load_schema_set
from gateway.security import Security
from gateway.store import Store
from gateway.timers import Timers
from gateway.transport import Transport
from gateway.validation import Validator
from gateway.web import WEB_MODULES

log = logging.getLogger("komut.service")

PEER_PATH = "/peer/v1/messages"


def make_store(config: Config) -> Store:
    if config.store_kind == "sqlite":
        from adapters.store_sqlite import SqliteStore

        config.store_path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStore(config.store_path)
    if config.store_kind == "memory":
        from adapters.store_memory import MemoryStore

        return MemoryStore()
    if config.store_kind in ("postgresql", "postgres"):
        from adapters.store_postgres import PostgresStore

        section = config.sections.get("store", {})
        # The password belongs in the environment (or ~/.pgpass), not in the configuration file.
        dsn = section.get("dsn") or os.environ.get(section.get("dsn_env", "KOMUT_STORE_DSN"), "")
        if not dsn:
            raise ValueError('[store] kind = "postgresql" needs dsn = "postgresql://..." or dsn_env')
        return PostgresStore(dsn, pool_size=int(section.get("pool_size", 10)))
    raise ValueError(f"unknown store kind {config.store_kind!r} (sqlite, postgresql or memory)")


def folder_layout(config: Config) -> tuple[list, dict[int, LocalEndpoint]]:
    """FolderParty per served HER-id of each folder-connected local system, and their endpoints."""
    from adapters.folders import FolderParty

    endpoints = local_endpoints(config)
    # The endpoint's address is the party's in-folder; its parent is the party's folder root.
    parties = [
        FolderParty(her, Path(e.address).parent) for her, e in endpoints.items() if e.transport == "folder"
    ]
    return parties, endpoints


class Gateway:
    def __init__(self, config: Config, *, store: Store | None = None):
        self.config = config
        self.store = store or make_store(config)
        self.registry_holder = RegistryHolder(RegistrySource(config.registry_file, config.cert_dir))
        self.security = Security(config) if config.keys else None
        self.validator = Validator(load_schema_set(tuple(config.schema_dirs)))
        self.transports: dict[str, Transport] = {}
        self.runner: web.AppRunner | None = None
        self.app = web.Application(client_max_size=36 * 1024 * 1024)
        self.owner = f"{config.name}@{socket.gethostname()}:{os.getpid()}"
        parties, local_endpoints = folder_layout(config)
        self._folder_parties = parties
        self.pipeline = Pipeline(
            config=config,
            store=self.store,
            validator=self.validator,
            registry=lambda: self.registry_holder.current,
            security=self.security,
            local_systems=local_endpoints,
            wake=self._wake,
            transports=self.transports,  # filled in below and by the web modules' setup()
        )
        self.dispatcher: Dispatcher | None = None
        self.timers = Timers(config=config, store=self.store)
        self._stopped = asyncio.Event()

    def _wake(self, *transports: str) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake(*transports)

    def _build_transports(self) -> None:
        from adapters.folders import FolderTransport
        from adapters.https_peer import HttpsPeerTransport, client_ssl_context

        c = self.config
        ssl_ctx = None
        if c.tls_ca is not None:
            ssl_ctx = client_ssl_context(c.tls_ca, cert=c.tls_client_cert, key=c.tls_client_key)
        self.transports["https"] = HttpsPeerTransport("https", ssl_context=ssl_ctx)
        self.transports["folder"] = FolderTransport(
            "folder",
            self._folder_parties,
            poll_interval=c.delivery.poll_interval,
            # With FIFO on, files are taken in in the order the local system wrote them.
            concurrency=1 if c.delivery.fifo else 4,
            # Nodes sharing a store share the folders too: another node's claimed file is its
            # work in hand until it is as old as a lease.
            claim_grace=c.delivery.lease_seconds if getattr(self.store, "shared", False) else 0.0,
        )
        amqp = c.sections.get("amqp")
        if amqp:
            from adapters.amqp import AmqpTransport

            url = amqp.get("url") or os.environ.get(amqp.get("url_env", "KOMUT_AMQP_URL"), "")
            if not url:
                raise ValueError('[amqp] needs url = "amqp://..." or url_env')
            self.transports["amqp"] = AmqpTransport(
                "amqp",
                url=url,
                her_ids=c.serves,
                queue_owner=self._queue_owner,
                store=self.store,
                prefetch=int(amqp.get("prefetch", 32)),
                max_redeliveries=int(amqp.get("max_redeliveries", 10)),
                declare=bool(amqp.get("declare", True)),
            )

    def _queue_owner(self, her: int) -> int:
        """The organisation whose AMQP queue set serves `her` (its level-1 HER-id)."""
        registry = self.registry_holder.current
        return registry.level1(her).her_id if her in registry else her

    async def start(self) -> None:
        from adapters.https_peer import peer_routes, server_ssl_context

        c = self.config
        await self.store.open()
        # Whatever this gateway was sending when it stopped goes back to the queue now, not when
        # its lease would have run out: a single node owns all of its leases. In a store several
        # nodes share, the other nodes' leases are live: there, leases come back only by expiring.
        if not getattr(self.store, "shared", False):
            now = time.time()
            await self.store.release_expired_leases(now, expired_by=now + c.delivery.lease_seconds + 1)
        self._build_transports()
        self.dispatcher = Dispatcher(
            config=c,
            store=self.store,
            transports=self.transports,
            security=self.security,
            registry=lambda: self.registry_holder.current,
            owner=self.owner,
        )
        peer_routes(self.app, self.pipeline, path=PEER_PATH)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        for module in WEB_MODULES:
            importlib.import_module(module).setup(self.app, self)
        ssl_ctx = None
        if c.tls_cert and c.tls_key:
            ssl_ctx = server_ssl_context(
                c.tls_cert, c.tls_key, client_ca=c.tls_ca, require_client_cert=c.require_client_cert
            )
        self.runner = web.AppRunner(self.app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, c.listen_host, c.listen_port, ssl_context=ssl_ctx)
        await site.start()
        for transport in self.transports.values():
            await transport.start(self.pipeline)
        await self.dispatcher.start()
        listen = getattr(self.store, "listen", None)
        if listen is not None:
            # Work another node queued wakes this node's dispatcher at once instead of at its next poll.
            await listen(self._wake)
        await self.timers.start()
        self._watch = self.registry_holder.watch()
        log.info("gateway %s listening on %s:%s", c.name, c.listen_host, c.listen_port)

    async def stop(self) -> None:
        await self.registry_holder.stop()
        await self.timers.stop()
        if self.dispatcher:
            await self.dispatcher.stop()
        for transport in self.transports.values():
            await transport.stop()
        if self.runner:
            await self.runner.cleanup()
        await self.store.close()
        self._stopped.set()

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "gateway": self.config.name})

    async def _readyz(self, request: web.Request) -> web.Response:
        counts = await self.store.counts()
        return web.json_response({"status": "ready", "deliveries": counts})


async def serve(config: Config) -> None:
    """Run until SIGINT/SIGTERM; SIGHUP reloads the address registry."""
    gateway = Gateway(config)
    await gateway.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    install_sighup(loop, gateway.registry_holder)
    await stop.wait()
    await gateway.stop()


def state_path(config: Config, name: str) -> Path:
    return config.state_dir / name
