"""Two real gateways that reach each other over RabbitMQ (every registry endpoint says `amqp`):
PLO messages both ways under a steady load with AppRecs back, and the broker stopped in the middle
of it and started again. Afterwards every message is answered (app-ok), every local system got each
message exactly once, and no queue holds anything: nothing was lost or dead-lettered."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections import Counter

import pytest
from cluster import answered, use_amqp
from conftest import SAMPLES
from e2e import DRAMMEN_CAST, Net, wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

pytest_plugins = ("servers",)
pytest.importorskip("aio_pika", reason="pip install aio-pika")

HOSPITAL, MUNICIPALITY = 9100000, 9203000
MESSAGES = 60
SENT_OVER = (
    "SELECT DISTINCT d.transport FROM deliveries AS d JOIN messages AS m ON m.id = d.message_id "
    "WHERE m.direction = 'outbound'"
)
RETRIED = "SELECT count(*) FROM deliveries WHERE transport = 'amqp' AND attempts > 1"


def _received_ids(system) -> Counter:
    ids: Counter = Counter()
    for path in system.read_dir.glob("*.xml"):
        ids[read_message(parse_xml(path.read_bytes())).msg_id] += 1
    return ids


def test_gateways_over_rabbitmq_lose_nothing_when_the_broker_restarts(tmp_path, demo_pki, rabbitmq_server):
    rng = random.Random(20261125)
    net = Net(tmp_path / "net", demo_pki)
    url = rabbitmq_server.new_vhost("e2e")
    vhost = url.rsplit("/", 1)[1]
    use_amqp(net, url)
    hospital, municipality = net.system(HOSPITAL), net.system(MUNICIPALITY)
    templates = {
        HOSPITAL: (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes(),
        MUNICIPALITY: (SAMPLES / "valid/plo/02-innleggelsesrapport.xml").read_bytes(),
    }
    sent: dict[str, int] = {}
    stop = threading.Event()
    halfway = threading.Event()

    def load():
        for i in range(MESSAGES):
            sender = HOSPITAL if i % 3 else MUNICIPALITY
            data, org = net.recast(templates[sender], DRAMMEN_CAST)
            sent[read_message(parse_xml(data)).msg_id] = sender
            (hospital if sender == HOSPITAL else municipality).send(data, f"load-{i:03}.xml")
            if i == MESSAGES // 3:
                halfway.set()
            time.sleep(rng.uniform(0.05, 0.25))

    def answer():
        while not stop.is_set():
            hospital.poll_once()
            municipality.poll_once()
            time.sleep(0.05)

    loader, answering = threading.Thread(target=load), threading.Thread(target=answer)
    try:
        net.start("hospital")
        net.start("municipal")
        loader.start()
        answering.start()
        assert halfway.wait(60)
        t0 = time.monotonic()
        rabbitmq_server.stop()  # mid-load: sends fail over to retries, consumers lose their connection
        time.sleep(1.0)
        rabbitmq_server.start()
        t1 = time.monotonic()
        loader.join()

        def all_answered():
            return answered(net, "hospital") | answered(net, "municipal") >= set(sent)

        wait_for(all_answered, timeout=180, interval=0.5, what="every message to reach app-ok")
        t2 = time.monotonic()
    finally:
        stop.set()
        if answering.is_alive():
            answering.join()
        net.stop_all()
        if not rabbitmq_server.running:
            rabbitmq_server.start()

    at_municipality, at_hospital = _received_ids(municipality), _received_ids(hospital)
    for msg_id, sender in sent.items():
        got = (at_municipality if sender == HOSPITAL else at_hospital)[msg_id]
        assert got == 1, f"{msg_id} reached its receiver {got} times"
    twice = {m: n for m, n in (at_municipality + at_hospital).items() if n > 1}
    assert not twice, f"delivered more than once (messages or AppRecs): {twice}"
    # It went over the broker, and the outage was felt: some sends had to be tried again.
    transports, retried = set(), 0
    for name in ("hospital", "municipal"):
        with contextlib.closing(sqlite3.connect(net.directory / "state" / name / "komut.db")) as db:
            transports |= {row[0] for row in db.execute(SENT_OVER)}
            retried += db.execute(RETRIED).fetchone()[0]
    assert transports == {"amqp"}
    assert retried, "no send was retried: the broker was not stopped while sending"
    # Nothing waits in a queue and nothing was dead-lettered.
    # rabbitmqctl's counts for quorum queues are refreshed on each queue's 5 s tick, so a queue just
    # emptied can still show its old count for a few seconds: wait for them to read zero.
    counts: dict[str, int] = {}

    def all_empty() -> bool:
        counts.update(rabbitmq_server.queue_counts(vhost))
        return bool(counts) and all(n == 0 for n in counts.values())

    try:
        wait_for(all_empty, timeout=30, interval=1.0, what="every queue to be empty")
    except AssertionError:
        raise AssertionError(f"messages left in queues: {counts}") from None
    print(
        f"\namqp test: {len(sent)} messages both ways, broker away for {t1 - t0:.0f} s, all answered "
        f"{t2 - t1:.0f} s after it was back, {retried} sends retried"
    )
