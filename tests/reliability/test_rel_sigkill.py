"""SIGKILL at random moments under load, through both front doors and in both directions.

Four flows run at once: folder systems on each gateway (Vestre Viken's EPJ, Drammen) and API
systems on each gateway (Hallingdal sjukestugu, Asker) send to each other, and every receiving
system answers with an AppRec. Meanwhile the hospital gateway, the municipal gateway, or both are
killed with SIGKILL and restarted, over and over. API clients send a document again until they
get 201 (the gateway recognises it by sender and MsgId). Afterwards every message is app-ok at its
sender's gateway, reached its receiving system exactly once, and its AppRec reached the sending
system exactly once; nothing an API client marked read came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time

import aiohttp
from e2e import wait_for
from rel_net import (
    FLOWS,
    Received,
    RelNet,
    app_ok,
    post_until_accepted,
    read_api,
    read_folder,
    receivers_of,
)

CYCLES = 21  # kill-and-restart cycles: the hospital gateway, the municipal one, both at once, ...


async def test_sigkill_cycles_under_load_lose_nothing_and_deliver_once(tmp_path, demo_pki):
    net = RelNet(tmp_path / "net", demo_pki)
    rng = random.Random(20261123)
    sent: dict[str, object] = {}  # MsgId -> Flow
    received = {her: Received() for flow in FLOWS for her in (flow.sender, flow.receiver)}
    stop_load, stop_answering = asyncio.Event(), asyncio.Event()
    kills = {"hospital": 0, "municipal": 0}
    try:
        await asyncio.to_thread(net.start, "hospital")
        await asyncio.to_thread(net.start, "municipal")
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            clients = {flow.sender: net.api(session, flow.sender) for flow in FLOWS if flow.api}

            async def load(flow) -> None:
                n = 0
                while not stop_load.is_set():
                    data, msg_id = net.document(flow)
                    sent[msg_id] = flow
                    if flow.api:
                        await post_until_accepted(clients[flow.sender], data)
                    else:
                        net.system(flow.sender).send(data, f"load-{n:03}.xml")
                    n += 1
                    await asyncio.sleep(rng.uniform(1.0, 2.5))

            async def answer() -> None:
                while not stop_answering.is_set():
                    for her, got in received.items():
                        if her in clients:
                            # Its gateway may be down: the next round tries again.
                            with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                                await read_api(clients[her], receivers_of(net, her), got)
                        else:
                            await asyncio.to_thread(read_folder, net, her, got)
                    await asyncio.sleep(0.1)

            loaders = [asyncio.create_task(load(flow)) for flow in FLOWS]
            answering = asyncio.create_task(answer())
            try:
                for cycle in range(CYCLES):
                    victims = (("hospital",), ("municipal",), ("hospital", "municipal"))[cycle % 3]
                    await asyncio.sleep(rng.uniform(0.1, 1.0))
                    for victim in victims:
                        await asyncio.to_thread(net.kill, victim)
                        kills[victim] += 1
                    await asyncio.sleep(rng.uniform(0.0, 0.5))
                    await asyncio.gather(*(asyncio.to_thread(net.start, victim) for victim in victims))
                started_drain = time.monotonic()
                stop_load.set()
                await asyncio.gather(*loaders)

                def all_app_ok() -> bool:
                    if not all(received[f.sender].apprec_times(m) for m, f in sent.items()):
                        return False  # the AppRecs are not all at the sending systems yet
                    return all(
                        app_ok(net, name, [m for m, f in sent.items() if f.gateway == name])
                        for name in ("hospital", "municipal")
                    )

                await asyncio.to_thread(
                    wait_for,
                    all_app_ok,
                    240,
                    2.0,
                    "every message to be app-ok and its AppRec at the sending system",
                )
                drained = time.monotonic() - started_drain
            finally:
                stop_load.set()
                stop_answering.set()
                await asyncio.gather(*loaders, answering, return_exceptions=True)
    finally:
        net.stop_all()

    assert sum(kills.values()) >= 20 and min(kills.values()) >= 10, kills
    for flow in FLOWS:
        mine = [m for m, f in sent.items() if f is flow]
        assert len(mine) >= 10, f"{flow.name}: only {len(mine)} messages under load"
        for msg_id in mine:
            times = received[flow.receiver].times(msg_id)
            assert times == 1, f"{flow.name}: {msg_id} reached its receiving system {times} times"
            answers = received[flow.sender].apprec_times(msg_id)
            assert answers == 1, f"{flow.name}: the AppRec for {msg_id} reached the sender {answers} times"
    for her, got in received.items():
        assert not got.listed_after_read, f"{her}: listed again after the gateway confirmed it read"
    print(
        f"\n{sum(kills.values())} SIGKILLs ({kills}) in {CYCLES} cycles; {len(sent)} messages "
        f"({', '.join(f'{f.name} {sum(1 for x in sent.values() if x is f)}' for f in FLOWS)}): "
        f"all app-ok {drained:.0f} s after the last restart, each delivered once and answered once"
    )
