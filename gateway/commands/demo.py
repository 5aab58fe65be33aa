"""`komut demo`: set up (first time) and run the demo network on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="run the Vestre Viken demo network: two gateways and simulated systems"
    )
    p.add_argument(
        "--dir", required=True, metavar="DIR", help="where the demo keeps its PKI, configs and data"
    )
    p.add_argument(
        "--base-port", type=int, default=8080, help="hospital gateway port; the municipal one is +1"
    )
    p.add_argument(
        "--no-traffic", action="store_true", help="do not play traffic (systems still answer AppRecs)"
    )
    p.add_argument("--pace", type=float, default=2.0, help="seconds between played messages")
    p.add_argument(
        "--no-api-systems",
        action="store_true",
        help="do not simulate the API-connected systems: drive them yourself (docs/api.md)",
    )
    p.set_defaults(func=cmd_demo)


async def wait_healthy(
    url: str, ca: Path, client: tuple[Path, Path] | None = None, timeout: float = 60.0
) -> None:
    import aiohttp

    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        # The demo gateways require mutual TLS, so the health check shows a certificate too.
        ctx.load_cert_chain(str(client[0]), str(client[1]))
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while True:
            try:
                async with session.get(f"{url}/healthz", ssl=ctx) as resp:
                    if resp.status == 200:
                        return
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not become healthy within {timeout:.0f} s")
            await asyncio.sleep(0.2)


async def run_demo(
    directory: Path, base_port: int, traffic: bool, pace: float, simulate_api: bool = True
) -> int:
    from gateway.demo.setup import setup_demo
    from gateway.demo.systems import SimulatedSystem, TrafficPlayer, api_system
    from gateway.registry import load_default_registry

    print(f"setting up the demo in {directory} (the PKI is made once; that takes a few seconds)", flush=True)
    info = await asyncio.to_thread(setup_demo, directory, base_port)
    logs = directory / "logs"
    logs.mkdir(exist_ok=True)
    processes = []
    for name, gw in info["gateways"].items():
        out = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the child process
        processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "serve", "--config", gw["config"]],
                stdout=out,
                stderr=out,
            )
        )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        tls = directory / "tls"
        for name, gw in info["gateways"].items():
            await wait_healthy(
                gw["url"], directory / "pki" / "ca.pem", (tls / f"{name}.pem", tls / f"{name}.key")
            )
        ca = directory / "pki" / "ca.pem"
        systems = {
            int(her): api_system(int(her), s, info["tokens"][her], ca)
            if s.get("api")
            else SimulatedSystem(int(her), s["name"], Path(s["out"]), Path(s["in"]))
            for her, s in info["systems"].items()
            if simulate_api or not s.get("api")
        }
        tasks = [asyncio.create_task(s.run(stop)) for s in systems.values()]
        if traffic:
            player = TrafficPlayer(load_default_registry(), systems, pace=pace)
            tasks.append(asyncio.create_task(player.run(stop)))
        for name, gw in info["gateways"].items():
            print(f"  {name:<10} {gw['url']}   config {gw['config']}")
        print(f"  demo.json  {directory / 'demo.json'}")
        for her, s in info["systems"].items():
            if s.get("api"):
                print(f"  API        {s['name']} ({her}) on {s['url']}; its token is in demo.json")
        print(f"  logs       {logs}/")
        users = ", ".join(f"{u} / {x['password']}" for u, x in info.get("ui", {}).get("users", {}).items())
        for name, url in info.get("ui", {}).get("urls", {}).items():
            print(f"  UI         {name:<10} {url}   log in as {users}")
        print(f"watch the delivery log:  komut log --config {info['gateways']['hospital']['config']}")
        print("Ctrl-C stops everything.", flush=True)
        while not stop.is_set():
            for proc in processes:
                if proc.poll() is not None:
                    print(f"a gateway exited with {proc.returncode}; see {logs}", file=sys.stderr)
                    stop.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for proc in processes:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in processes:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("demo stopped", flush=True)
    return 0


def cmd_demo(args) -> int:
    directory = Path(args.dir).resolve()
    return asyncio.run(
        run_demo(directory, args.base_port, not args.no_traffic, args.pace, not args.no_api_systems)
    )


def read_demo_json(directory: Path) -> dict:
    return json.loads((directory / "demo.json").read_text(encoding="utf-8"))
