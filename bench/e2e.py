"""End to end: two gateways, local systems on the EDI 2.0 API, against `openssl speed rsa2048`.

Two `komut serve` processes on 127.0.0.1, set up like the demo (mutual TLS between gateways and
for API clients, SQLite with synchronous=FULL). Hallingdal sjukestugu (on the hospital gateway)
sends LOG_INNLAGT (3.5 KB) to Asker's home nursing (on the municipal gateway), and Asker sends
INNLEGGELSESRAPPORT (16 KB) the other way, both through POST /Messages. Each receiving system lists
its unread messages (GET /Messages), fetches every business document, marks it read and, for
round trips, answers with an AppRec (POST /Messages/{id}/apprec/{herId}).

- one hop: accepted (POST /Messages answered 201) to delivered at the receiver's local system
  (the message shows up in its GET /Messages);
- one hop to folders: the same senders, but to folder systems (Drammen, Vestre Viken's EPJ):
  delivered = the file is in the system's in/ folder (the bench takes it away at once);
- round trip: accepted to the AppRec showing up at the sender's local system.

Fixed offered loads are open loop (messages start on a schedule, whatever the answers); saturation
is closed loop (at most --window messages per direction in flight, so the queues stay bounded and
the rate is what the two gateways sustain). Also: p50/p95/p99, each gateway's CPU (cores used) and
peak RSS, the load generator's own CPU (it shares the machine), and store growth per message.

The yardstick is `openssl speed -seconds 3 rsa2048` sign/s, measured in the same run (before and
after the load). A one-hop message costs two RSA private-key operations (sign at the sender's
gateway, decrypt at the receiver's), a round trip four. openssl speed runs on one core, so

    bound per core  = sign/s / 2 one-hop messages/s   (/ 4 for round trips)
    machine bound   = bound per core x cores (two gateways can use every core)

Every throughput is printed as a ratio to both.

    python bench/e2e.py [--loads 10,25,50] [--seconds 12] [--saturation 20] [--window 128]
                        [--phases one-hop,folders,round-trip] [--profile DIR [--profile-folders]]
                        [--delivery KEY=VALUE] [--event-loop uvloop|asyncio]
                        [--keep DIR] [--json]

--profile runs py-spy (pip install py-spy) on both gateways during one saturation phase and prints
where their time goes by category (busy samples of all threads: waiting in fsync counts as busy).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from bench.yardstick import openssl_sign_rate  # noqa: E402
from gateway.commands.serve import run_loop  # noqa: E402
from gateway.demo.setup import setup_demo  # noqa: E402
from gateway.demo.systems import Cast, recast  # noqa: E402
from gateway.protection.pki import init_pki  # noqa: E402
from gateway.registry import default_certificate_holders, load_default_registry  # noqa: E402
from message_types.read import read_message  # noqa: E402
from message_types.xmlparse import parse_xml  # noqa: E402

SAMPLES = REPO / "sample_messages" / "valid"
HALLINGDAL, HALLINGDAL_SOMATIKK = 9100500, 9100501
ASKER, ASKER_NURSING = 9201000, 9201001
CAST = {
    "trust": 9100000,
    "site": HALLINGDAL,
    "somatikk": HALLINGDAL_SOMATIKK,
    "municipality": ASKER,
    "sykepleie": ASKER_NURSING,
    "lege": 9201002,
    "saksbehandler": 9201003,
    "gp_office": 9310100,
    "gp": 9310101,
}
VESTRE_VIKEN, DRAMMEN = 9100000, 9203000  # the trust's EPJ and Drammen's care system: folders
TO_DRAMMEN = {
    **CAST,
    "municipality": DRAMMEN,
    "sykepleie": 9203001,
    "lege": 9203002,
    "saksbehandler": 9203003,
}
TO_VESTRE_VIKEN = {**CAST, "site": 9100200, "somatikk": 9100201}


@dataclass(frozen=True, eq=False)  # keys of dicts by identity: two flows may look alike
class Flow:
    name: str
    sender: int  # an API system
    receiver: int  # the receiving local system
    template: str
    cast: dict
    folder: bool = False  # the receiver reads a folder instead of the API


API_FLOWS = (
    Flow("hospital->municipal", HALLINGDAL, ASKER, "plo/01-log-innlagt.xml", CAST),
    Flow("municipal->hospital", ASKER, HALLINGDAL, "plo/02-innleggelsesrapport.xml", CAST),
)
FOLDER_FLOWS = (
    Flow("hospital->municipal", HALLINGDAL, DRAMMEN, "plo/01-log-innlagt.xml", TO_DRAMMEN, True),
    Flow("municipal->hospital", ASKER, VESTRE_VIKEN, "plo/02-innleggelsesrapport.xml", TO_VESTRE_VIKEN, True),
)
FILE_MSG_ID = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")
ORIGINAL_ID = re.compile(rb"OriginalMsgId>.*?<(?:\w+:)?Id>([^<]+)<", re.DOTALL)
CLK_TCK = os.sysconf("SC_CLK_TCK")
POSTERS = 8  # concurrent POST /Messages per direction at saturation
# An API system with nothing unread asks again after this long: the resolution of the latencies, and
# a cost to the gateway (an empty GET /Messages is about 0.3 ms of its CPU).
IDLE_POLL = 0.02


# --- the two gateways ------------------------------------------------------------------------------


def free_base_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > 60000:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free ports")


class Gateways:
    def __init__(
        self,
        directory: Path,
        api_rate: float,
        delivery: dict[str, str] | None = None,
        event_loop: str | None = None,
    ):
        self.directory = directory
        init_pki(directory / "pki", default_certificate_holders())
        self.info = setup_demo(directory, free_base_port(), api_rate=api_rate, delivery=delivery)
        if event_loop:
            for gateway in self.info["gateways"].values():
                path = Path(gateway["config"])
                text = path.read_text(encoding="utf-8")
                path.write_text(text.replace("[gateway]\n", f'[gateway]\nevent_loop = "{event_loop}"\n', 1))
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, name: str) -> None:
        log = open(self.directory / f"{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        config = self.info["gateways"][name]["config"]
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", "serve", "--config", config, "--log-level", "WARNING"],
            stdout=log,
            stderr=log,
            cwd=REPO,
        )

    async def wait_healthy(self, session: aiohttp.ClientSession, ctx: ssl.SSLContext) -> None:
        for name, proc in self.procs.items():
            url = self.info["gateways"][name]["url"] + "/healthz"
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"{name} gateway exited: see {self.directory / (name + '.log')}")
                healthy = False
                # Not listening yet is the normal answer while the gateway starts.
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with session.get(url, ssl=ctx) as resp:
                        healthy = resp.status == 200
                if healthy:
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} gateway did not answer /healthz")
                await asyncio.sleep(0.1)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()

    def cpu_seconds(self, name: str) -> float:
        fields = Path(f"/proc/{self.procs[name].pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime, all threads

    def peak_rss_mb(self, name: str) -> float:
        for line in Path(f"/proc/{self.procs[name].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def db(self, name: str) -> Path:
        return self.directory / "state" / name / "komut.db"

    def store_bytes(self, name: str) -> int:
        db = self.db(name)
        return sum(p.stat().st_size for p in (db, Path(f"{db}-wal")) if p.exists())

    def stored_messages(self, name: str) -> int:
        with sqlite3.connect(f"file:{self.db(name)}?mode=ro", uri=True, timeout=30) as conn:
            return conn.execute("SELECT count(*) FROM messages").fetchone()[0]


# --- local systems on the API ----------------------------------------------------------------------


class ApiClient:
    def __init__(self, her_id: int, entry: dict, token: str, ca: Path):
        self.her_id = her_id
        self.base = entry["url"]
        self.receivers = [("ReceiverHerIds", str(h)) for h in entry["receiver_her_ids"]]
        self.ctx = ssl.create_default_context(cafile=str(ca))
        self.ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
        self.headers = {
            "Authorization": f"Bearer {token}",
            "api-version": "2",
            "nhn-source-system": "komut bench, 1",
        }
        self.session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        connector = aiohttp.TCPConnector(limit=64, ssl=self.ctx)
        self.session = aiohttp.ClientSession(connector=connector, headers=self.headers)

    async def close(self) -> None:
        await self.session.close()

    async def post(self, body: bytes) -> tuple[int, str]:
        async with self.session.post(
            self.base + "/Messages", data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            return resp.status, await resp.text()

    async def unread(self) -> list[dict]:
        params = [*self.receivers, ("IncludeMetadata", "true"), ("MessagesToFetch", "100")]
        async with self.session.get(self.base + "/Messages", params=params) as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET /Messages: HTTP {resp.status} {await resp.text()}")
            return await resp.json()

    async def document(self, message_id: str) -> bytes:
        async with self.session.get(f"{self.base}/Messages/{message_id}/business-document") as resp:
            if resp.status != 200:
                raise RuntimeError(f"GET business-document: HTTP {resp.status}")
            return base64.b64decode((await resp.json())["businessDocument"])

    async def mark_read(self, message_id: str, her: int) -> None:
        async with self.session.put(f"{self.base}/Messages/{message_id}/read/{her}") as resp:
            if resp.status != 204:
                raise RuntimeError(f"PUT read: HTTP {resp.status}")

    async def apprec(self, message_id: str, her: int) -> None:
        async with self.session.post(
            f"{self.base}/Messages/{message_id}/apprec/{her}", json={"appRecStatus": "Ok"}
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"POST apprec: HTTP {resp.status} {await resp.text()}")


# --- documents -------------------------------------------------------------------------------------


class Documents:
    """A recast sample per direction; each message gets fresh ids by byte replacement (cheap, so
    the load generator spends its CPU on HTTP rather than on building documents)."""

    def __init__(self, template: str, cast: dict):
        registry = load_default_registry()
        data, _ = recast((SAMPLES / template).read_bytes(), registry, Cast(cast), {})
        message = read_message(parse_xml(data))
        self.data = data
        self.size = len(data)
        self.ids = [message.msg_id.encode()]
        if message.conversation:
            for ref in (message.conversation.parent, message.conversation.conversation):
                if ref and ref.encode() not in self.ids:
                    self.ids.append(ref.encode())

    def make(self) -> tuple[str, bytes]:
        data = self.data
        fresh = [str(uuid.uuid4()).encode() for _ in self.ids]
        for old, new in zip(self.ids, fresh, strict=True):
            data = data.replace(old, new)
        body = json.dumps(
            {
                "businessDocument": base64.b64encode(data).decode("ascii"),
                "contentType": "application/xml",
                "contentTransferEncoding": "base64",
            }
        ).encode()
        return fresh[0].decode(), body


# --- one run ---------------------------------------------------------------------------------------


@dataclass
class Track:
    flow: str
    posted: float
    accepted: float | None = None
    delivered: float | None = None
    answered: float | None = None


@dataclass
class Phase:
    name: str
    offered: float | None  # msg/s in total, None at saturation
    round_trip: bool
    flows: tuple[Flow, ...] = API_FLOWS
    started: float = 0.0
    ended: float = 0.0
    measure_from: float = 0.0
    tracks: dict[str, Track] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cpu: dict[str, float] = field(default_factory=dict)


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(-(-p * len(ordered) // 1)) - 1))]


class Bench:
    def __init__(self, gateways: Gateways, window: int):
        info = gateways.info
        ca = gateways.directory / "pki" / "ca.pem"
        self.gateways = gateways
        self.systems = {
            her: ApiClient(her, info["systems"][str(her)], info["tokens"][str(her)], ca)
            for her in (HALLINGDAL, ASKER)
        }
        self.documents = {flow: Documents(flow.template, flow.cast) for flow in API_FLOWS + FOLDER_FLOWS}
        self.inboxes = {Path(info["systems"][str(flow.receiver)]["in"]) for flow in FOLDER_FLOWS}
        self.window = window
        self.phase: Phase | None = None
        self.slots: dict[str, asyncio.Semaphore] = {}
        self.pollers: list[asyncio.Task] = []
        self.polling = True

    async def start(self) -> None:
        for system in self.systems.values():
            await system.open()
        self.pollers = [asyncio.create_task(self._poll(s)) for s in self.systems.values()]
        self.pollers += [asyncio.create_task(self._watch(folder)) for folder in self.inboxes]

    async def stop(self) -> None:
        self.polling = False
        await asyncio.gather(*self.pollers, return_exceptions=True)
        for system in self.systems.values():
            await system.close()

    # A folder system: takes each file from its in-folder (the MsgId is in the file name).
    async def _watch(self, folder: Path) -> None:
        while self.polling:
            seen = time.perf_counter()
            names = [e.name for e in os.scandir(folder) if e.name.endswith(".xml") and e.name[0] != "."]
            for name in names:
                match = FILE_MSG_ID.search(name)
                self._delivered(match.group(1) if match else "", seen)
                os.unlink(folder / name)
            await asyncio.sleep(0.005 if not names else 0)

    def _delivered(self, msg_id: str, seen: float) -> None:
        phase = self.phase
        track = phase.tracks.get(msg_id) if phase else None
        if track is not None and track.delivered is None:
            track.delivered = seen
            if not phase.round_trip:
                self.slots[track.flow].release()

    # The receiving side: list, fetch, mark read, answer.
    async def _poll(self, system: ApiClient) -> None:
        while self.polling:
            phase = self.phase
            if phase is not None and not phase.round_trip and all(f.folder for f in phase.flows):
                # Nothing comes to the API systems: do not load the gateways with empty polls.
                await asyncio.sleep(0.05)
                continue
            try:
                items = await system.unread()
            except (aiohttp.ClientError, OSError, RuntimeError) as exc:
                self._error(f"list at {system.her_id}: {exc}")
                await asyncio.sleep(0.2)
                continue
            if not items:
                await asyncio.sleep(IDLE_POLL)
                continue
            seen = time.perf_counter()
            await asyncio.gather(*(self._handle(system, item, seen) for item in items))

    async def _handle(self, system: ApiClient, item: dict, seen: float) -> None:
        phase = self.phase
        message_id, her = item["id"], item["receiverHerId"]
        try:
            if item.get("isAppRec"):
                match = ORIGINAL_ID.search(await system.document(message_id))
                track = phase.tracks.get(match.group(1).decode()) if match and phase else None
                if track is not None and track.answered is None:
                    track.answered = seen
                    if phase.round_trip:
                        self.slots[track.flow].release()
                await system.mark_read(message_id, her)
                return
            self._delivered(item.get("businessDocumentId") or "", seen)
            await system.document(message_id)
            await system.mark_read(message_id, her)
            if phase is not None and phase.round_trip:
                await system.apprec(message_id, her)
        except (aiohttp.ClientError, OSError, RuntimeError) as exc:
            self._error(f"{system.her_id} handling {message_id}: {exc}")

    def _error(self, text: str) -> None:
        if self.phase is not None and len(self.phase.errors) < 20:
            self.phase.errors.append(text)

    # The sending side.
    async def _post(self, flow: Flow, msg_id: str, body: bytes) -> bool:
        phase = self.phase
        sender = self.systems[flow.sender]
        track = Track(flow.name, time.perf_counter())
        phase.tracks[msg_id] = track
        try:
            status, text = await sender.post(body)
        except (aiohttp.ClientError, OSError) as exc:
            status, text = 0, str(exc)
        if status != 201:
            del phase.tracks[msg_id]
            self._error(f"POST /Messages ({flow.name}): HTTP {status} {text[:200]}")
            return False
        track.accepted = time.perf_counter()
        return True

    async def _sample_cpu(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        out = {name: self.gateways.cpu_seconds(name) for name in self.gateways.procs}
        out["load generator"] = usage.ru_utime + usage.ru_stime
        return out

    async def run_offered(
        self, rate: float, seconds: float, round_trip: bool = True, folder: bool = False
    ) -> Phase:
        name = f"{rate:g} msg/s" + (", one hop" if not round_trip else "") + (" to folders" if folder else "")
        phase = Phase(name, rate, round_trip, FOLDER_FLOWS if folder else API_FLOWS)
        self.phase = phase
        self.slots = {flow.name: asyncio.Semaphore(10**6) for flow in phase.flows}
        count = int(rate * seconds)
        flows = phase.flows
        bodies = [(flows[i % 2], *self.documents[flows[i % 2]].make()) for i in range(count)]
        cpu0 = await self._sample_cpu()
        phase.started = phase.measure_from = time.perf_counter()
        tasks = []
        for i, (flow, msg_id, body) in enumerate(bodies):
            delay = phase.started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(self._post(flow, msg_id, body)))
        await asyncio.gather(*tasks)
        await self._drain(phase)
        phase.ended = time.perf_counter()
        phase.cpu = _delta(cpu0, await self._sample_cpu())
        return phase

    async def run_saturation(
        self, seconds: float, warmup: float, round_trip: bool, folder: bool = False
    ) -> Phase:
        name = (
            "saturation, " + ("round trip" if round_trip else "one hop") + (" to folders" if folder else "")
        )
        phase = Phase(name, None, round_trip, FOLDER_FLOWS if folder else API_FLOWS)
        self.phase = phase
        self.slots = {flow.name: asyncio.Semaphore(self.window) for flow in phase.flows}
        # Enough documents for well above what two gateways on this machine can do.
        stock = {
            flow: [self.documents[flow].make() for _ in range(int(400 * (seconds + warmup)))]
            for flow in phase.flows
        }
        phase.started = time.perf_counter()
        phase.measure_from = phase.started + warmup
        deadline = phase.started + warmup + seconds
        cpu0: dict[str, float] = {}

        async def poster(flow: Flow) -> None:
            while time.perf_counter() < deadline and stock[flow]:
                await self.slots[flow.name].acquire()
                msg_id, body = stock[flow].pop()
                if not await self._post(flow, msg_id, body):
                    self.slots[flow.name].release()
                    await asyncio.sleep(0.05)

        async def mark() -> None:
            await asyncio.sleep(warmup)
            cpu0.update(await self._sample_cpu())

        marker = asyncio.create_task(mark())
        await asyncio.gather(*(poster(flow) for flow in phase.flows for _ in range(POSTERS)))
        await marker
        cpu1 = await self._sample_cpu()
        phase.ended = deadline
        await self._drain(phase)
        phase.cpu = _delta(cpu0, cpu1)
        return phase

    async def _drain(self, phase: Phase, timeout: float = 120.0) -> None:
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if all(
                (t.answered if phase.round_trip else t.delivered) is not None for t in phase.tracks.values()
            ):
                return
            await asyncio.sleep(0.1)
        missing = sum(1 for t in phase.tracks.values() if t.delivered is None)
        phase.errors.append(f"{missing} message(s) not delivered within {timeout:.0f} s of the end")


def _delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after[k] - before.get(k, after[k]) for k in after}


def summarise(phase: Phase, cores: int, sign: float) -> dict:
    tracks = list(phase.tracks.values())
    window_start = phase.measure_from
    if phase.offered is not None:
        # Open loop: the rate is what came through over the whole phase, drain included.
        span = max(t.answered or t.delivered or t.accepted or 0 for t in tracks) - phase.started
        delivered = sum(1 for t in tracks if t.delivered)
        answered = sum(1 for t in tracks if t.answered)
        accepted = sum(1 for t in tracks if t.accepted)
    else:
        # Closed loop: completions inside the measured window (after the warm-up).
        span = phase.ended - window_start
        delivered = sum(1 for t in tracks if t.delivered and window_start <= t.delivered <= phase.ended)
        answered = sum(1 for t in tracks if t.answered and window_start <= t.answered <= phase.ended)
        accepted = sum(1 for t in tracks if t.accepted and window_start <= t.accepted <= phase.ended)
    one_hop = [t.delivered - t.accepted for t in tracks if t.delivered and t.accepted]
    trip = [t.answered - t.accepted for t in tracks if t.answered and t.accepted]
    submit = [t.accepted - t.posted for t in tracks if t.accepted]
    completed = (
        (delivered + answered)
        if phase.offered is not None
        else (
            sum(1 for t in tracks if t.delivered and window_start <= t.delivered <= phase.ended)
            + sum(1 for t in tracks if t.answered and window_start <= t.answered <= phase.ended)
        )
    )
    cpu_span = (phase.ended - window_start) if phase.offered is None else (phase.ended - phase.started)

    def lat(values):
        return {p: percentile(values, q) * 1000 for p, q in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))}

    out = {
        "phase": phase.name,
        "offered": phase.offered,
        "messages": len(tracks),
        "accepted_per_s": accepted / span if span > 0 else 0,
        "one_hop_per_s": delivered / span if span > 0 else 0,
        "one_hop_ms": lat(one_hop),
        "submit_ms": lat(submit),
        "cores_used": {k: v / cpu_span for k, v in phase.cpu.items()} if cpu_span > 0 else {},
        # CPU time per one-hop message (an AppRec back is a one-hop message too): robust against
        # neighbours on a shared machine, unlike the rates.
        "cpu_ms_per_hop": {k: v * 1000 / max(1, completed) for k, v in phase.cpu.items()},
        "errors": phase.errors,
    }
    if phase.round_trip:
        out["round_trip_per_s"] = answered / span if span > 0 else 0
        out["round_trip_ms"] = lat(trip)
    bound = sign / 2
    out["one_hop_vs_core_bound"] = out["one_hop_per_s"] / bound
    out["one_hop_vs_machine_bound"] = out["one_hop_per_s"] / (bound * cores)
    if phase.round_trip:
        out["round_trip_vs_core_bound"] = out["round_trip_per_s"] / (sign / 4)
        out["round_trip_vs_machine_bound"] = out["round_trip_per_s"] / (sign / 4 * cores)
    return out


def print_report(report: dict) -> None:
    sign, cores = report["openssl_sign_per_s"], report["cores"]
    print(
        f"openssl speed -seconds {report['openssl_seconds']} rsa2048: sign/s {' / '.join(f'{s:.0f}' for s in report['openssl_runs'])} "
        f"(before / after the load), used: {sign:.0f}"
    )
    print(
        f"RSA private-key bound per core: one hop {sign / 2:.0f} msg/s (sign + decrypt), round trip "
        f"{sign / 4:.0f} msg/s; machine ({cores} cores): {sign / 2 * cores:.0f} and {sign / 4 * cores:.0f}"
    )
    print(f"messages: {report['sizes']}; API clients and gateways share the {cores} cores")
    head = (
        f"{'phase':<26}{'accepted/s':>11}{'one hop/s':>10}{'core':>7}{'machine':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}  {'round trip/s':>12}{'core':>7}{'machine':>8}"
        f"{'p50':>7}{'p95':>7}{'p99':>7}  cores used (hospital, municipal, load)"
    )
    print(head)
    for r in report["phases"]:
        h, t = r["one_hop_ms"], r.get("round_trip_ms")
        cores_used = r["cores_used"]
        line = (
            f"{r['phase']:<26}{r['accepted_per_s']:>11.1f}{r['one_hop_per_s']:>10.1f}"
            f"{r['one_hop_vs_core_bound']:>7.1%}{r['one_hop_vs_machine_bound']:>8.1%}"
            f"{h['p50']:>7.0f}{h['p95']:>7.0f}{h['p99']:>7.0f}  "
        )
        if t is not None:
            line += (
                f"{r['round_trip_per_s']:>12.1f}{r['round_trip_vs_core_bound']:>7.1%}"
                f"{r['round_trip_vs_machine_bound']:>8.1%}{t['p50']:>7.0f}{t['p95']:>7.0f}{t['p99']:>7.0f}  "
            )
        else:
            line += f"{'-':>12}{'':>7}{'':>8}{'':>7}{'':>7}{'':>7}  "
        line += ", ".join(f"{cores_used.get(k, 0):.2f}" for k in ("hospital", "municipal", "load generator"))
        print(line)
        per_hop = r["cpu_ms_per_hop"]
        print(
            f"{'':<26}CPU ms per hop: "
            + ", ".join(f"{k} {per_hop.get(k, 0):.1f}" for k in ("hospital", "municipal", "load generator"))
        )
        for error in r["errors"][:3]:
            print(f"    ! {error}")
    print("latencies in ms; one hop: accepted (201) to listed at the receiving system; round trip: to the")
    print(
        "AppRec listed at the sending system. Ratios: throughput / RSA private-key bound (per core, machine)."
    )
    print(f"{'gateway':<12}{'peak RSS MB':>12}{'stored msgs':>12}{'store growth':>14}{'per message':>13}")
    for name, g in report["gateways"].items():
        print(
            f"{name:<12}{g['peak_rss_mb']:>12.0f}{g['stored']:>12}{g['growth_bytes'] / 1e6:>12.1f}MB"
            f"{g['bytes_per_message'] / 1024:>11.1f}KB"
        )
    for name, profile in report.get("profiles", {}).items():
        print(f"py-spy, {name} gateway, {report['profiled']}: {profile['busy_samples']} busy samples")
        for category, share in profile["categories"].items():
            print(f"  {share:6.1%}  {category}")
        print("  threads: " + ", ".join(f"{t} {share:.0%}" for t, share in profile["threads"].items()))


async def bench(args, directory: Path) -> dict:
    cores = os.cpu_count() or 1
    delivery = dict(item.split("=", 1) for item in args.delivery)
    gateways = Gateways(directory, api_rate=1e6, delivery=delivery, event_loop=args.event_loop)
    openssl_runs = [openssl_sign_rate(args.openssl_seconds)]
    for name in ("hospital", "municipal"):
        gateways.start(name)
    ctx = ssl.create_default_context(cafile=str(directory / "pki" / "ca.pem"))
    ctx.load_cert_chain(str(directory / "tls" / "hospital.pem"), str(directory / "tls" / "hospital.key"))
    profilers: list[subprocess.Popen] = []
    try:
        async with aiohttp.ClientSession() as session:
            await gateways.wait_healthy(session, ctx)
        start_bytes = {name: gateways.store_bytes(name) for name in gateways.procs}
        runner = Bench(gateways, args.window)
        await runner.start()
        try:
            # Warm-up: connections, schema caches, SQLite pages.
            await runner.run_offered(20, 2)
            phases = []
            for rate in args.loads:
                phases.append(await runner.run_offered(rate, args.seconds))
            for folder in (False, True):
                if ("folders" if folder else "one-hop") not in args.phases:
                    continue
                if args.profile and folder == args.profile_folders:
                    profilers = start_profilers(gateways, args.profile, args.saturation + args.warmup)
                phases.append(
                    await runner.run_saturation(args.saturation, args.warmup, round_trip=False, folder=folder)
                )
                for p in profilers:
                    p.wait(60)
                profilers = []
            if "round-trip" in args.phases:
                phases.append(await runner.run_saturation(args.saturation, args.warmup, round_trip=True))
        finally:
            await runner.stop()
        stats = {}
        for name in gateways.procs:
            stored = gateways.stored_messages(name)
            growth = gateways.store_bytes(name) - start_bytes[name]
            stats[name] = {
                "peak_rss_mb": gateways.peak_rss_mb(name),
                "stored": stored,
                "growth_bytes": growth,
                "bytes_per_message": growth / stored if stored else 0,
            }
    finally:
        gateways.stop()
    openssl_runs.append(openssl_sign_rate(args.openssl_seconds))
    sign = statistics.mean(openssl_runs)
    profiles = {}
    if args.profile:
        for name in ("hospital", "municipal"):
            path = Path(args.profile) / f"{name}.txt"
            if path.exists():
                profiles[name] = summarise_profile(path)
    return {
        "command": "python bench/e2e.py " + " ".join(sys.argv[1:]),
        "cores": cores,
        "openssl_runs": openssl_runs,
        "openssl_seconds": args.openssl_seconds,
        "openssl_sign_per_s": sign,
        "sizes": ", ".join(
            f"{flow.name} {d.size} B" for flow, d in runner.documents.items() if not flow.folder
        ),
        "phases": [summarise(p, cores, sign) for p in phases],
        "gateways": stats,
        "profiles": profiles,
        "profiled": f"saturation, one hop{' to folders' if args.profile_folders else ''}",
    }


def start_profilers(gateways: Gateways, folder: str, seconds: float) -> list[subprocess.Popen]:
    """py-spy on both gateways during the one-hop saturation phase (collapsed stacks, all threads)."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        raise SystemExit("--profile needs py-spy (pip install py-spy)")
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    procs = []
    for name, proc in gateways.procs.items():
        procs.append(
            subprocess.Popen(
                [
                    py_spy,
                    "record",
                    "--pid",
                    str(proc.pid),
                    "--duration",
                    str(int(seconds)),
                    "--rate",
                    "200",
                    "--format",
                    "raw",
                    "--threads",
                    "--output",
                    str(out / f"{name}.txt"),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    return procs


# Where a gateway's time goes, from py-spy's samples: each busy sample is counted for the innermost
# frame that belongs to one of these (so json.dumps in the store counts as store, in the API as API).
CATEGORIES = (
    ("RSA and CMS (protect, unprotect)", ("gateway/protection/", "cryptography/", "asn1crypto/")),
    (
        "validation (parse, XSD, rules)",
        ("gateway/validation.py", "gateway/schemas.py", "message_types/", "stdnum/"),
    ),
    ("store (SQLite, group commit)", ("adapters/store_sqlite.py",)),
    ("HTTP and TLS (aiohttp, ssl)", ("aiohttp/", "ssl.py", "asyncio/sslproto.py", "multidict/", "yarl/")),
    ("API handlers (auth, JSON, mailbox)", ("gateway/api/",)),
    ("folders", ("adapters/folders.py",)),
    (
        "pipeline, routing, dispatcher",
        (
            "gateway/pipeline.py",
            "gateway/dispatcher.py",
            "gateway/routing.py",
            "gateway/timers.py",
            "gateway/registry/",
            "gateway/security.py",
        ),
    ),
    ("thread hand-offs", ("concurrent/futures/", "asyncio/threads.py", "threading.py", "queue.py")),
    ("event loop", ("asyncio/", "selectors.py")),
)
# Leaf frames of a thread that waits: not work.
IDLE = (
    ("select", "selectors.py"),
    ("_worker", "concurrent/futures/thread.py"),
    ("wait", "threading.py"),
    ("_writer_main", "adapters/store_sqlite.py"),
)


def _frame(text: str) -> tuple[str, str]:
    name, _, where = text.rpartition(" (")
    return name, where


def summarise_profile(path: Path) -> dict:
    """Busy samples by category and by thread, from py-spy's raw (collapsed) output."""
    categories: dict[str, int] = {}
    threads: dict[str, int] = {}
    busy = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        name, where = _frame(frames[-1])
        if any(name.rpartition(".")[2] == n and f in where for n, f in IDLE):
            continue
        n = int(count)
        busy += n
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0])
        thread = "event loop" if thread == "MainThread" else re.sub(r"_\d+$", "", thread)
        threads[thread] = threads.get(thread, 0) + n
        category = "other"
        for frame in reversed(frames[1:]):
            where = _frame(frame)[1]
            match = next((c for c, patterns in CATEGORIES if any(p in where for p in patterns)), None)
            if match:
                category = match
                break
        categories[category] = categories.get(category, 0) + n
    return {
        "busy_samples": busy,
        "categories": {k: v / busy for k, v in sorted(categories.items(), key=lambda kv: -kv[1])}
        if busy
        else {},
        "threads": {k: v / busy for k, v in sorted(threads.items(), key=lambda kv: -kv[1])} if busy else {},
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", default="10,25,50", help="fixed offered loads, msg/s in total")
    ap.add_argument("--seconds", type=float, default=12, help="per fixed load")
    ap.add_argument("--saturation", type=float, default=20, help="measured seconds per saturation phase")
    ap.add_argument(
        "--phases",
        default="one-hop,folders,round-trip",
        help="saturation phases to run (one-hop, folders, round-trip), comma-separated",
    )
    ap.add_argument("--warmup", type=float, default=3, help="seconds before a saturation phase is measured")
    ap.add_argument("--window", type=int, default=128, help="messages in flight per direction at saturation")
    ap.add_argument("--openssl-seconds", type=int, default=3)
    ap.add_argument("--profile", metavar="DIR", help="py-spy both gateways during one-hop saturation")
    ap.add_argument(
        "--profile-folders", action="store_true", help="profile the one hop to folders instead of to the API"
    )
    ap.add_argument("--keep", metavar="DIR", help="set up in DIR and keep it (logs, stores)")
    ap.add_argument(
        "--delivery",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a [delivery] setting as TOML, e.g. concurrency_per_receiver=16 (default: the demo's)",
    )
    ap.add_argument(
        "--event-loop",
        choices=("uvloop", "asyncio"),
        help="the gateways' [gateway] event_loop (default: the configuration's default, uvloop)",
    )
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.loads = [float(x) for x in args.loads.split(",") if x.strip()]
    args.phases = {x.strip() for x in args.phases.split(",") if x.strip()}
    unknown = args.phases - {"one-hop", "folders", "round-trip"}
    if unknown:
        ap.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    # The load generator shares the machine with the gateways: the cheaper loop for it too.
    if args.keep:
        directory = Path(args.keep).resolve()
        if directory.exists():
            shutil.rmtree(directory)
        report = run_loop(bench(args, directory), "uvloop")
    else:
        with tempfile.TemporaryDirectory(prefix="komut-bench-") as tmp:
            report = run_loop(bench(args, Path(tmp)), "uvloop")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
