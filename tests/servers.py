"""Throwaway PostgreSQL and RabbitMQ servers for tests, as a pytest plugin.

Test modules say ``pytest_plugins = ("servers",)`` and ask for the `postgres_server` or
`rabbitmq_server` fixture; code that is not a fixture (the store contract's backends) calls
`postgres()` or `rabbitmq()`. Each server is started once per test session, on 127.0.0.1 with
random ports and its own data directory, and removed when the session ends. A test that needs a
server is skipped only when the server's binary is not installed, and the skip says how to
install it; any other failure to start is an error.

PostgreSQL: Debian's server binaries (/usr/lib/postgresql/<version>/bin). `initdb` and `pg_ctl`
refuse to run as root, so under root they run as the `postgres` user (`runuser`).
RabbitMQ: Debian's rabbitmq-server, started `-detached` with a private node name, ports (AMQP,
Erlang distribution, epmd), data and log directories and Erlang cookie, so it never meets
another broker on the machine.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_HINT = "apt-get install postgresql (Debian's PostgreSQL server: initdb, pg_ctl)"
RABBIT_HINT = "apt-get install rabbitmq-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, timeout: float, alive=lambda: True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if not alive():
            break
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on 127.0.0.1:{port} after {timeout:.0f} s")


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin() -> Path | None:
    """The newest directory with initdb, pg_ctl and psql: Debian's layout first, then PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    found = shutil.which("initdb")
    if found:
        candidates.append(Path(found).parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in ("initdb", "pg_ctl", "psql")):
            return folder
    return None


class PostgresServer:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="komut-pg-"))
        self.data = self.dir / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError(
                    "running as root and there is no 'postgres' user to run initdb as"
                ) from None
            os.chown(self.dir, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._databases = 0

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.dir
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc

    def start(self) -> PostgresServer:
        if not self.data.exists():
            # --no-sync only for initdb's own files; the server itself runs with fsync on.
            self._run(
                str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
                "-E", "UTF8", "--no-locale", "--no-sync",
            )  # fmt: skip
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=on "
            "-c synchronous_commit=on -c max_connections=300 -c shared_buffers=128MB"
        )
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "server.log"),
            "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip
        return self

    def restart(self) -> None:
        """A fast shutdown (clients are disconnected) and a start on the same data and port."""
        self.stop(remove=False)
        self.start()

    def stop(self, remove: bool = True) -> None:
        if self.data.exists():
            with contextlib.suppress(Exception):
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        proc = subprocess.run(
            [str(self.bin / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(database),
             "-c", sql],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"psql: {proc.stderr.strip()}")
        return proc.stdout.strip()

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its DSN."""
        self._databases += 1
        name = f"{prefix}_{self._databases}_{secrets.token_hex(3)}"
        self.psql(f"CREATE DATABASE {name}")
        return self.dsn(name)


# --- RabbitMQ -----------------------------------------------------------------------------------


def rabbitmq_bin() -> Path | None:
    """Where rabbitmq-server and rabbitmqctl are. Debian's /usr/sbin ones are wrappers that switch
    to the rabbitmq user; the scripts they call take our environment as it is."""
    for folder in (Path("/usr/lib/rabbitmq/bin"),):
        if (folder / "rabbitmq-server").is_file() and (folder / "rabbitmqctl").is_file():
            return folder
    found = shutil.which("rabbitmq-server")
    if found and shutil.which("rabbitmqctl"):
        return Path(found).parent
    return None


class RabbitServer:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="komut-rabbit-"))
        self.port = free_port()
        self.dist_port = free_port()
        self.epmd_port = free_port()
        self.node = f"komut{secrets.token_hex(4)}@localhost"
        (self.dir / "enabled_plugins").write_text("[].\n")
        self._proc: subprocess.Popen | None = None
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))},
            "HOME": str(self.dir),  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_PID_FILE": str(self.dir / "rabbit.pid"),
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),  # none: defaults, not /etc/rabbitmq's
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.dir / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(
            [str(self.bin / "rabbitmqctl"), *args],
            env=self.env, capture_output=True, text=True, timeout=timeout, cwd=self.dir,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc

    def start(self, timeout: float = 90) -> RabbitServer:
        # Not -detached: then this process is the broker's parent and can tell when it dies early.
        log = open(self.dir / "startup.log", "ab")  # noqa: SIM115 - closed with the process
        self._proc = subprocess.Popen(
            [str(self.bin / "rabbitmq-server")],
            env=self.env,
            stdout=log,
            stderr=log,
            cwd=self.dir,
            start_new_session=True,
        )
        log.close()
        try:
            _wait_for_port(self.port, timeout, alive=lambda: self._proc.poll() is None)
        except RuntimeError:
            tail = (self.dir / "startup.log").read_text(errors="replace")[-2000:]
            self.stop(remove=False)
            raise RuntimeError(f"RabbitMQ did not start: {tail}") from None
        return self

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, remove: bool = False) -> None:
        """Stop the broker (a clean shutdown); its data stays for `start()` unless `remove`."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            self.ctl("stop", str(self.dir / "rabbit.pid"), check=False, timeout=60)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if remove:
            # The epmd daemon the node started for its private port outlives it.
            epmd = shutil.which("epmd") or next(iter(Path("/usr/lib/erlang/bin").glob("epmd")), None)
            if epmd:
                subprocess.run([str(epmd), "-kill"], env=self.env, capture_output=True, timeout=10)
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"

    def new_vhost(self, prefix: str = "t") -> str:
        """A fresh virtual host (its own queues) for one test; returns its AMQP URL."""
        name = f"{prefix}-{secrets.token_hex(4)}"
        self.ctl("add_vhost", name)
        self.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return self.url(name)

    def queue_counts(self, vhost: str) -> dict[str, int]:
        out = self.ctl("list_queues", "-p", vhost, "name", "messages", "--no-table-headers", "-q").stdout
        counts = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1].isdigit():
                counts[parts[0]] = int(parts[1])
        return counts


# --- session singletons and fixtures -----------------------------------------------------------

_servers: dict[str, object] = {}


def _stop_all() -> None:
    for server in list(_servers.values()):
        if isinstance(server, PostgresServer):
            server.stop()
        elif isinstance(server, RabbitServer):
            server.stop(remove=True)
    _servers.clear()


atexit.register(_stop_all)


def postgres() -> PostgresServer:
    """The session's PostgreSQL; skips the calling test when PostgreSQL is not installed."""
    server = _servers.get("postgres")
    if server is None:
        folder = postgres_bin()
        if folder is None:
            pytest.skip(f"PostgreSQL server binaries not found; {PG_HINT}")
        server = _servers["postgres"] = PostgresServer(folder).start()
    return server


def rabbitmq() -> RabbitServer:
    """The session's RabbitMQ; skips the calling test when rabbitmq-server is not installed."""
    server = _servers.get("rabbitmq")
    if server is None:
        folder = rabbitmq_bin()
        if folder is None:
            pytest.skip(f"rabbitmq-server not found; {RABBIT_HINT}")
        server = _servers["rabbitmq"] = RabbitServer(folder).start()
    elif not server.running:
        server.start()  # a test stopped it and failed before starting it again
    return server


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    return postgres()


@pytest.fixture(scope="session")
def rabbitmq_server() -> RabbitServer:
    return rabbitmq()


def pytest_unconfigure(config) -> None:
    _stop_all()
