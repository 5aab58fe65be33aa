"""Crash test: under a steady load, the sending and the receiving gateway are killed with SIGKILL
at random moments and restarted. Afterwards every accepted message is in a final state, none is
lost, and no receiver got any MsgId twice."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter

from conftest import SAMPLES
from e2e import DRAMMEN_CAST, wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, MUNICIPALITY = 9100000, 9203000
KILLS = 12
MESSAGES = 60


def _received_ids(system) -> Counter:
    ids: Counter = Counter()
    for path in system.read_dir.glob("*.xml"):
        message = read_message(parse_xml(path.read_bytes()))
        ids[message.msg_id] += 1
    return ids


def test_sigkill_under_load_loses_nothing_and_delivers_once(net):
    rng = random.Random(20261123)
    net.start("hospital")
    net.start("municipal")
    hospital, municipality = net.system(HOSPITAL), net.system(MUNICIPALITY)
    templates = {
        HOSPITAL: (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes(),
        MUNICIPALITY: (SAMPLES / "valid/plo/02-innleggelsesrapport.xml").read_bytes(),
    }
    sent: dict[str, int] = {}  # MsgId -> sending level-1 HER-id
    stop = threading.Event()

    def load():
        for i in range(MESSAGES):
            sender = HOSPITAL if i % 3 else MUNICIPALITY
            data, org = net.recast(templates[sender], DRAMMEN_CAST)
            assert org == sender
            sent[read_message(parse_xml(data)).msg_id] = sender
            (hospital if sender == HOSPITAL else municipality).send(data, f"load-{i:03}.xml")
            time.sleep(rng.uniform(0.05, 0.25))

    def answer():
        while not stop.is_set():
            hospital.poll_once()
            municipality.poll_once()
            time.sleep(0.05)

    loader = threading.Thread(target=load)
    answering = threading.Thread(target=answer)
    loader.start()
    answering.start()
    try:
        for k in range(KILLS):
            victim = ("hospital", "municipal")[k % 2]
            time.sleep(rng.uniform(0.2, 1.2))
            net.kill(victim)
            time.sleep(rng.uniform(0.0, 0.5))
            net.start(victim)
        loader.join()

        def all_final():
            final = 0
            for name, org in (("hospital", HOSPITAL), ("municipal", MUNICIPALITY)):
                rows = {r["msg_id"]: r for r in net.log(name)}
                final += sum(
                    1 for m, s in sent.items() if s == org and rows.get(m, {}).get("status") == "app-ok"
                )
            return final == len(sent)

        wait_for(all_final, timeout=180, interval=1.0, what="every message to reach app-ok")
    finally:
        stop.set()
        answering.join()
    assert len(sent) == MESSAGES
    # Nothing lost: every message reached its receiving system; nothing twice.
    at_municipality = _received_ids(municipality)
    at_hospital = _received_ids(hospital)
    for msg_id, sender in sent.items():
        receiver_ids = at_municipality if sender == HOSPITAL else at_hospital
        assert receiver_ids[msg_id] == 1, f"{msg_id} reached its receiver {receiver_ids[msg_id]} times"
    twice = {m: n for m, n in (at_municipality + at_hospital).items() if n > 1}
    assert not twice, f"delivered more than once: {twice}"
    print(
        f"\ncrash test: {KILLS} SIGKILLs, {len(sent)} messages, all app-ok, "
        f"{sum(at_municipality.values()) + sum(at_hospital.values())} files received, none twice"
    )
