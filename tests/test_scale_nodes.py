"""Two nodes of the hospital's gateway on one PostgreSQL, behind a TCP load balancer, sharing the
hospital's folders. Under a steady load in both directions one node is killed with SIGKILL several
times, each time while it holds leases, and restarted. Afterwards every message is answered
(app-ok), no local system got any message twice, and the surviving node took over the killed
node's in-flight deliveries when their leases ran out."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from pathlib import Path

from cluster import Nodes, TcpBalancer, answered, free_port, node_config, set_value, sql, use_postgres
from conftest import SAMPLES
from e2e import DRAMMEN_CAST, Net, wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

pytest_plugins = ("servers",)

HOSPITAL, MUNICIPALITY = 9100000, 9203000
MIN_MESSAGES, MAX_MESSAGES = 40, 150
KILLS = 4
LEASE = 4  # seconds; short, so that a killed node's work comes back quickly


def _received_ids(system) -> Counter:
    ids: Counter = Counter()
    for path in system.read_dir.glob("*.xml"):
        ids[read_message(parse_xml(path.read_bytes())).msg_id] += 1
    return ids


def test_two_nodes_on_postgres_survive_sigkills(tmp_path, demo_pki, postgres_server):
    rng = random.Random(20261124)
    net = Net(tmp_path / "net", demo_pki, delivery={"lease_seconds": f'"{LEASE}s"'})
    dsn = postgres_server.new_database("hospital")
    config = Path(net.config("hospital"))
    use_postgres(config, dsn)
    # The hospital's nodes reach the municipality over a slow link, so that their sends are in
    # flight (holding leases) long enough to be cut off by a kill.
    slow_port = free_port()
    set_value(config, "municipal", f'"https://127.0.0.1:{slow_port}/peer/v1/messages"', section="gateways")
    nodes = Nodes(net.directory, "hospital")
    for node in ("a", "b"):
        port = free_port()
        nodes.add(node, node_config(config, f"node-{node}", port), port)
    # The municipality knows one hospital address: the balancer in front of both nodes.
    balancer = TcpBalancer(net.base_port, [nodes.ports["a"], nodes.ports["b"]])
    link = TcpBalancer(slow_port, [net.base_port + 1], delay=0.2)
    hospital, municipality = net.system(HOSPITAL), net.system(MUNICIPALITY)
    templates = {
        HOSPITAL: (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes(),
        MUNICIPALITY: (SAMPLES / "valid/plo/02-innleggelsesrapport.xml").read_bytes(),
    }
    sent: dict[str, int] = {}
    stop = threading.Event()
    held_at_death: dict[str, list[str]] = {}  # owner (":pid") of a killed node a -> deliveries it held

    kills_done = threading.Event()

    def load():
        # A steady load for as long as the kills go on.
        for i in range(MAX_MESSAGES):
            if kills_done.is_set() and i >= MIN_MESSAGES:
                break
            sender = HOSPITAL if i % 3 else MUNICIPALITY
            data, org = net.recast(templates[sender], DRAMMEN_CAST)
            sent[read_message(parse_xml(data)).msg_id] = sender
            (hospital if sender == HOSPITAL else municipality).send(data, f"load-{i:03}.xml")
            time.sleep(rng.uniform(0.05, 0.3))

    def answer():
        while not stop.is_set():
            hospital.poll_once()
            municipality.poll_once()
            time.sleep(0.05)

    def held_by(pid: int) -> list[str]:
        return sql(
            dsn, f"SELECT id FROM deliveries WHERE state = 'sending' AND lease_owner LIKE '%:{pid}'"
        ).split()

    def leases_of(pid: int) -> int:
        return int(
            sql(
                dsn, f"SELECT count(*) FROM deliveries WHERE state = 'sending' AND lease_owner LIKE '%:{pid}'"
            )
        )

    try:
        net.start("municipal")
        nodes.start("a")
        nodes.start("b")
        loader, answering = threading.Thread(target=load), threading.Thread(target=answer)
        loader.start()
        answering.start()
        t0 = time.monotonic()
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.2, 0.8))
            pid = nodes.pid("a")
            # Kill it while it has work in hand (or after a while without, if the load is light).
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not leases_of(pid):
                time.sleep(0.01)
            nodes.kill("a")
            # Read after the kill: what a dead node still holds is exactly what it held when it
            # died (read before, a delivery could finish between the query and the kill).
            held = held_by(pid)
            if held:
                held_at_death[f":{pid}"] = held
            nodes.start("a")
        kills_done.set()
        loader.join()
        t1 = time.monotonic()

        def all_answered():
            done = answered(net, "hospital", dsn) | answered(net, "municipal")
            return done >= set(sent)

        try:
            wait_for(all_answered, timeout=120, interval=0.5, what="every message to reach app-ok")
        except AssertionError:
            for name in ("hospital", "municipal"):
                for row in net.log(name):
                    if row["msg_id"] in sent and row["direction"] == "outbound" and row["status"] != "app-ok":
                        print(
                            name,
                            row["msg_id"],
                            row["status"],
                            [(e["kind"], e["reason"]) for e in row["events"]],
                        )
            raise

        # Deliveries a dead node held come back when their lease runs out, unless an AppRec settled
        # them first (sending -> app-ok): nothing may stay in flight.
        def nothing_in_flight():
            return (
                sql(dsn, "SELECT count(*) FROM deliveries WHERE state IN ('queued', 'sending', 'retry-wait')")
                == "0"
            )

        wait_for(nothing_in_flight, timeout=60, interval=0.5, what="every delivery to leave the queue")
        t2 = time.monotonic()
    finally:
        stop.set()
        nodes.stop_all()
        net.stop_all()
        balancer.stop()
        link.stop()
    assert len(sent) >= MIN_MESSAGES
    at_municipality, at_hospital = _received_ids(municipality), _received_ids(hospital)
    for msg_id, sender in sent.items():
        got = (at_municipality if sender == HOSPITAL else at_hospital)[msg_id]
        assert got == 1, f"{msg_id} reached its receiver {got} times"
    twice = {m: n for m, n in (at_municipality + at_hospital).items() if n > 1}
    assert not twice, f"delivered more than once (messages or AppRecs): {twice}"

    # The survivor took over: each delivery a killed node held either went back to the queue when
    # its lease ran out and was then sent by a live node, or was settled by its AppRec before any
    # transport receipt; and it ended well.
    assert held_at_death, "node a never held a lease when it was killed; the test proved nothing"
    taken_over = 0
    for owner, held in held_at_death.items():
        for delivery in held:
            state = sql(dsn, f"SELECT state FROM deliveries WHERE id = {delivery}")
            assert state in ("delivered", "app-ok"), f"delivery {delivery} held by {owner} ended {state}"
            events = sql(
                dsn,
                "SELECT kind, CASE WHEN kind = 'resumed after restart' THEN reason ELSE '' END, "
                f"coalesce(details->>'owner', '') FROM events WHERE delivery_id = {delivery} "
                "AND (kind IN ('resumed after restart', 'attempt') OR kind LIKE '%before transport receipt') "
                "ORDER BY id",
            ).splitlines()
            rows = [e.split("|") for e in events]
            released = next(
                (
                    i
                    for i, (kind, reason, _) in enumerate(rows)
                    if kind == "resumed after restart" and f"{owner} ran out" in reason
                ),
                None,
            )
            if released is None:
                assert any(kind.endswith("before transport receipt") for kind, _, _ in rows), (
                    f"delivery {delivery} held by dead {owner} was neither released nor settled by an AppRec: {rows}"
                )
                continue
            next_owner = next((o for kind, _, o in rows[released + 1 :] if kind == "attempt"), "")
            assert next_owner, f"delivery {delivery} went back to the queue and was never sent again"
            assert not next_owner.endswith(owner), f"delivery {delivery}: sent again by the dead {owner}"
            taken_over += 1
    assert taken_over >= 1, f"no delivery was taken over from a killed node: {held_at_death}"
    # Both nodes did work, and nothing is left in flight.
    owners = sql(dsn, "SELECT DISTINCT details->>'owner' FROM events WHERE kind = 'attempt'").splitlines()
    assert len({o.rsplit(":", 1)[-1] for o in owners}) >= 2
    print(
        f"\nscale test: {len(sent)} messages in {t1 - t0:.0f} s, all answered {t2 - t1:.0f} s later, {KILLS} SIGKILLs of node a ({len(held_at_death)} holding leases), "
        f"{taken_over} deliveries taken over, {balancer.connections} connections through the balancer"
    )
