"""Helpers for tests with several gateway nodes and brokers: node processes on one shared store,
a TCP load balancer in front of them, configurations switched to PostgreSQL or to AMQP."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

from e2e import REPO, Net, wait_for

REGISTRY = REPO / "gateway" / "registry" / "default_network.toml"


def free_port() -> int:
    # Imported here, not at the top: test modules load `servers` as a pytest plugin after importing this.
    import servers

    return servers.free_port()


# --- configurations ------------------------------------------------------------------------------


def use_postgres(config: Path, dsn: str) -> None:
    """Point a demo gateway configuration at a PostgreSQL store."""
    text = config.read_text(encoding="utf-8")
    new, n = re.subn(
        r'\[store\]\nkind = "sqlite"\npath = "komut.db"\n',
        f'[store]\nkind = "postgresql"\ndsn = "{dsn}"\n',
        text,
    )
    assert n == 1, "the demo configuration's [store] section changed; update tests/cluster.py"
    config.write_text(new, encoding="utf-8")


def set_value(config: Path, key: str, value: str, section: str = "gateway") -> None:
    """Replace `key = ...` in `[section]` of a configuration file."""
    text = config.read_text(encoding="utf-8")
    start = text.index(f"[{section}]\n")
    end = text.find("\n[", start + 1)
    end = len(text) if end < 0 else end
    body, n = re.subn(rf"(?m)^{re.escape(key)} = .*$", f"{key} = {value}", text[start:end], count=1)
    assert n == 1, f"no {key} in [{section}] of {config}"
    config.write_text(text[:start] + body + text[end:], encoding="utf-8")


def node_config(config: Path, node: str, port: int) -> Path:
    """A copy of `config` for one more node of the same gateway, listening on `port`."""
    path = config.with_name(f"{config.stem}-{node}.toml")
    path.write_text(config.read_text(encoding="utf-8"), encoding="utf-8")
    set_value(path, "listen", f'"127.0.0.1:{port}"')
    if "\n[ui]\n" in path.read_text(encoding="utf-8"):
        set_value(path, "listen", f'"127.0.0.1:{free_port()}"', section="ui")  # each node its own UI listener
    return path


def use_amqp(net: Net, url: str) -> None:
    """Both demo gateways reach each other over AMQP: every registry endpoint says `amqp`, each
    gateway name maps to the Helsenorge queue convention, and each gateway connects to `url`."""
    registry = net.directory / "registry-amqp.toml"
    text = REGISTRY.read_text(encoding="utf-8")
    assert 'transport = "https"' in text
    registry.write_text(text.replace('transport = "https"', 'transport = "amqp"'), encoding="utf-8")
    for name in net.info["gateways"]:
        config = Path(net.config(name))
        text = config.read_text(encoding="utf-8")
        text, n = re.subn(r'(?m)^# file = "registry.toml".*$', f'file = "{registry}"', text)
        assert n == 1, "the demo configuration's [registry] section changed; update tests/cluster.py"
        config.write_text(text + f'\n[amqp]\nurl = "{url}"\n', encoding="utf-8")
        for gateway in net.info["gateways"]:
            set_value(config, gateway, '"amqp:"', section="gateways")


# --- processes -----------------------------------------------------------------------------------


class Nodes:
    """`komut serve` processes of one gateway, each with its own configuration file."""

    def __init__(self, directory: Path, tls_name: str):
        self.directory = directory
        self.procs: dict[str, subprocess.Popen] = {}
        self.configs: dict[str, Path] = {}
        self.ports: dict[str, int] = {}
        tls = directory / "tls"
        self._ctx = ssl.create_default_context(cafile=str(directory / "pki" / "ca.pem"))
        self._ctx.load_cert_chain(str(tls / f"{tls_name}.pem"), str(tls / f"{tls_name}.key"))

    def add(self, node: str, config: Path, port: int) -> None:
        self.configs[node], self.ports[node] = config, port

    def start(self, node: str, wait: bool = True) -> None:
        log = open(self.directory / f"{node}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[node] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                str(self.configs[node]),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        log.close()
        if wait:
            self.wait_healthy(node)

    def healthy(self, node: str) -> bool:
        try:
            url = f"https://127.0.0.1:{self.ports[node]}/healthz"
            with urllib.request.urlopen(url, context=self._ctx, timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_healthy(self, node: str, timeout: float = 60.0) -> None:
        proc = self.procs[node]

        def ok():
            if proc.poll() is not None:
                raise AssertionError(f"{node} exited with {proc.returncode}: {self.tail(node)}")
            return self.healthy(node)

        wait_for(ok, timeout, 0.1, f"{node} to answer /healthz")

    def pid(self, node: str) -> int:
        return self.procs[node].pid

    def kill(self, node: str) -> None:
        proc = self.procs.pop(node, None)
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        self.procs.clear()

    def tail(self, node: str, lines: int = 30) -> str:
        path = self.directory / f"{node}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


# --- a TCP load balancer -------------------------------------------------------------------------


class TcpBalancer:
    """What HAProxy in TCP mode does in front of gateway nodes: each connection goes to the next
    backend that accepts it (TLS passes through untouched, so mutual TLS is end to end). With
    `delay`, every chunk from a backend is held back that long: a slow link."""

    def __init__(self, port: int, backends: list[int], delay: float = 0.0):
        self.port = port
        self.backends = list(backends)
        self.delay = delay
        self.connections = 0
        self._next = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"balancer-{port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the balancer did not start")

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._client, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = None
        for _ in range(len(self.backends)):
            port = self.backends[self._next % len(self.backends)]
            self._next += 1
            with contextlib.suppress(OSError):
                upstream = await asyncio.open_connection("127.0.0.1", port)
                break
        if upstream is None:
            writer.close()
            return
        self.connections += 1
        up_reader, up_writer = upstream
        await asyncio.gather(self._pipe(reader, up_writer, 0.0), self._pipe(up_reader, writer, self.delay))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
        try:
            while data := await reader.read(65536):
                if delay:
                    await asyncio.sleep(delay)
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            with contextlib.suppress(OSError, RuntimeError):
                writer.close()

    def stop(self) -> None:
        def shutdown():
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()
            self._loop.stop()

        self._loop.call_soon_threadsafe(shutdown)
        self._thread.join(10)


def sql(dsn: str, query: str) -> str:
    """One query through psql (tests/servers.py found it), the result as plain text."""
    import servers

    server = servers.postgres()
    proc = subprocess.run(
        [str(server.bin / "psql"), "-X", "-q", "-A", "-t", "-d", dsn, "-c", query],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return proc.stdout.strip()


# Messages sent whose every delivery is answered with AppRec OK (the same SQL on both stores).
ANSWERED = (
    "SELECT m.msg_id FROM messages AS m WHERE m.direction = 'outbound' "
    "AND EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id) "
    "AND NOT EXISTS (SELECT 1 FROM deliveries AS d WHERE d.message_id = m.id AND d.state <> 'app-ok')"
)


def answered(net: Net, name: str, dsn: str | None = None) -> set[str]:
    """MsgIds of messages gateway `name` sent that are answered with AppRec OK; read from its store
    directly (`komut log` takes a second or two per call)."""
    if dsn is not None:
        return set(sql(dsn, ANSWERED).splitlines())
    path = net.directory / "state" / name / "komut.db"
    if not path.exists():
        return set()
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as db:
        return {row[0] for row in db.execute(ANSWERED)}


__all__ = [
    "answered",
    "Nodes",
    "TcpBalancer",
    "free_port",
    "node_config",
    "set_value",
    "sql",
    "use_amqp",
    "use_postgres",
]
