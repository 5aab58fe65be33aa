"""A peer gateway goes away under load and comes back.

While the municipal gateway is down, the hospital's local systems keep sending through both front
doors: the API answers 201 and the folder system's files are taken in, so nothing waits at the
sender's side; deliveries back off and the circuit to the receiver opens. Drammen's system keeps
writing files for its own (stopped) gateway. When the peer returns, every message is delivered
exactly once and answered, in both directions, and the circuit closes.
"""

from __future__ import annotations

import asyncio

import aiohttp
from e2e import wait_for
from rel_net import FLOWS, Received, RelNet, answer_until, app_ok, post_until_accepted

FROM_HOSPITAL = [f for f in FLOWS if f.gateway == "hospital"]
FOLDER_FROM_MUNICIPALITY = next(f for f in FLOWS if f.gateway == "municipal" and not f.api)


async def test_peer_outage_and_return_through_both_front_doors(tmp_path, demo_pki):
    net = RelNet(tmp_path / "net", demo_pki)
    try:
        net.start("hospital")
        net.start("municipal")
        net.kill("municipal")
        sent: dict[str, object] = {}
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            clients = {f.sender: net.api(session, f.sender) for f in FLOWS if f.api}
            for i in range(4):
                for flow in FROM_HOSPITAL:
                    data, msg_id = net.document(flow)
                    sent[msg_id] = flow
                    if flow.api:
                        _, attempts = await post_until_accepted(clients[flow.sender], data)
                        assert attempts == 1, "the API takes messages while the peer is down"
                    else:
                        net.system(flow.sender).send(data, f"outage-{i}.xml")
                data, msg_id = net.document(FOLDER_FROM_MUNICIPALITY)
                net.system(FOLDER_FROM_MUNICIPALITY.sender).send(data, f"while-down-{i}.xml")
                sent[msg_id] = FOLDER_FROM_MUNICIPALITY

            def backing_off():
                rows = net.rows("hospital")
                mine = [r for m, f in sent.items() if f.gateway == "hospital" for r in rows.get(m, [])]
                events = [e["kind"] for r in mine for e in r["events"]]
                return (
                    len(mine) == 8
                    and all(r["status"] in ("queued", "sending", "retry-wait") for r in mine)
                    and any(d["attempts"] >= 2 for r in mine for d in r["deliveries"])
                    and "circuit opened" in events
                )

            await asyncio.to_thread(wait_for, backing_off, 60, 0.5, "backoff and an open circuit")

            await asyncio.to_thread(net.start, "municipal")
            received = {h: Received() for f in FLOWS for h in (f.sender, f.receiver)}
            await answer_until(
                net,
                lambda: (
                    all(received[f.sender].apprec_times(m) for m, f in sent.items())
                    and app_ok(net, "hospital", [m for m, f in sent.items() if f.gateway == "hospital"])
                    and app_ok(net, "municipal", [m for m, f in sent.items() if f.gateway == "municipal"])
                ),
                clients,
                received,
                120,
                "every message to be app-ok after the peer returned",
            )
        for msg_id, flow in sent.items():
            assert received[flow.receiver].times(msg_id) == 1, f"{flow.name}: {msg_id}"
            assert received[flow.sender].apprec_times(msg_id) == 1, f"{flow.name}: AppRec of {msg_id}"
        events = [e["kind"] for rows in net.rows("hospital").values() for r in rows for e in r["events"]]
        assert "circuit closed" in events, "the circuit closed once the peer answered again"
    finally:
        net.stop_all()
