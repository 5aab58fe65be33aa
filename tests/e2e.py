"""A harness for tests with real gateways: `komut serve` processes on 127.0.0.1, set up like the
demo network, with simulated local systems driven from the test."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from gateway.demo.setup import setup_demo
from gateway.demo.systems import ApiSystem, SimulatedSystem, api_system, recast
from gateway.registry import default_certificate_holders, load_default_registry

REPO = Path(__file__).resolve().parent.parent
FAST_DELIVERY = {
    "retry_schedule": '["0.3s", "0.6s", "1s"]',
    "jitter": "0.1",
    "poll_interval": '"50ms"',
    "circuit_failures": "3",
    "circuit_reset": '"1s"',
    "lease_seconds": '"10s"',
}


def make_pki(directory: Path) -> Path:
    from gateway.protection.pki import init_pki

    init_pki(directory / "pki", default_certificate_holders())
    return directory


def free_base_port(offsets: tuple[int, ...] = (0, 1)) -> int:
    """A port on 127.0.0.1 such that it and every port at the given offsets from it are free."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + max(offsets) > 60000:
            continue
        if all(_bindable(port + offset) for offset in offsets if offset):
            return port
    raise RuntimeError("no free ports")


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


class Net:
    def __init__(
        self, directory: Path, pki_source: Path, delivery: dict | None = None, api_rate: float | None = None
    ):
        self.directory = directory
        shutil.copytree(pki_source / "pki", directory / "pki")
        self.base_port = free_base_port()
        extra = {"api_rate": api_rate} if api_rate is not None else {}
        self.info = setup_demo(
            directory, self.base_port, delivery={**FAST_DELIVERY, **(delivery or {})}, **extra
        )
        self.procs: dict[str, subprocess.Popen] = {}
        self.registry = load_default_registry()
        tls = directory / "tls"
        self._ctx = {}
        for name in self.info["gateways"]:
            ctx = ssl.create_default_context(cafile=str(directory / "pki" / "ca.pem"))
            ctx.load_cert_chain(str(tls / f"{name}.pem"), str(tls / f"{name}.key"))
            self._ctx[name] = ctx

    def config(self, name: str) -> str:
        return self.info["gateways"][name]["config"]

    def start(self, name: str, wait: bool = True) -> None:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        self.procs[name] = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "serve",
                "--config",
                self.config(name),
                "--log-level",
                "WARNING",
            ],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )
        if wait:
            self.wait_healthy(name)

    def healthy(self, name: str) -> bool:
        url = self.info["gateways"][name]["url"] + "/healthz"
        try:
            with urllib.request.urlopen(url, context=self._ctx[name], timeout=2) as resp:
                return resp.status == 200
        except OSError:
            return False

    def wait_healthy(self, name: str, timeout: float = 60.0) -> None:
        proc = self.procs[name]

        def ok():
            if proc.poll() is not None:
                raise AssertionError(f"{name} gateway exited with {proc.returncode}: {self.tail(name)}")
            return self.healthy(name)

        wait_for(ok, timeout, 0.1, f"{name} gateway to answer /healthz")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.directory / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def system(self, her_id: int) -> SimulatedSystem:
        s = self.info["systems"][str(her_id)]
        return SimulatedSystem(her_id, s["name"], Path(s["out"]), Path(s["in"]))

    def api_system(self, her_id: int) -> ApiSystem:
        """A demo system on the EDI 2.0 API, with its token and TLS client certificate."""
        return api_system(
            her_id,
            self.info["systems"][str(her_id)],
            self.info["tokens"][str(her_id)],
            self.directory / "pki" / "ca.pem",
        )

    def folder(self, her_id: int, which: str) -> Path:
        return Path(self.info["systems"][str(her_id)][which])

    def log(self, name: str, *args: str) -> list[dict]:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "log",
                "--config",
                self.config(name),
                "--json",
                "--limit",
                "100000",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO,
        )
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def entry(self, name: str, msg_id: str) -> dict | None:
        rows = self.log(name, "--msg-id", msg_id)
        return rows[0] if rows else None

    def recast(self, template: bytes, cast: dict[str, int], ids: dict | None = None) -> tuple[bytes, int]:
        from gateway.demo.systems import Cast

        return recast(template, self.registry, Cast(cast), ids if ids is not None else {})


DRAMMEN_CAST = {
    "trust": 9100000,
    "site": 9100200,
    "somatikk": 9100201,
    "municipality": 9203000,
    "sykepleie": 9203001,
    "lege": 9203002,
    "saksbehandler": 9203003,
    "gp_office": 9320100,
    "gp": 9320101,
}
