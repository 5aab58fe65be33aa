"""The same CMS message arriving twice at once (the sender's retry while its first POST is still being
handled) is stored once and gets one local delivery, even when both requests pass the duplicate
check before either has stored: the store decides on the dedupe key inside its write transaction."""

from __future__ import annotations

import asyncio
import shutil

from conftest import SAMPLES
from e2e import DRAMMEN_CAST

from gateway.config import load_config
from gateway.demo.setup import setup_demo
from gateway.demo.systems import Cast, recast
from gateway.registry import load_default_registry
from gateway.service import Gateway
from message_types.read import read_message
from message_types.xmlparse import parse_xml

HOSPITAL, DRAMMEN = 9100000, 9203000


async def test_two_concurrent_posts_of_one_message_both_pass_the_check_and_it_is_stored_once(
    tmp_path, demo_pki
):
    shutil.copytree(demo_pki / "pki", tmp_path / "pki")
    info = setup_demo(tmp_path, 9)  # the configurations only: nothing listens
    hospital = Gateway(load_config(info["gateways"]["hospital"]["config"]))
    municipal = Gateway(load_config(info["gateways"]["municipal"]["config"]))
    template = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
    data, _ = recast(template, load_default_registry(), Cast(DRAMMEN_CAST), {})
    message = read_message(parse_xml(data))
    body = hospital.security.protect(hospital.registry_holder.current, data, HOSPITAL, DRAMMEN)
    routing = {"from_her": str(HOSPITAL), "to_her": str(DRAMMEN)}

    store = municipal.store
    looked, both_looked = 0, asyncio.Event()
    find_message = store.find_message

    async def find_then_wait_for_the_other(key):
        nonlocal looked
        found = await find_message(key)
        looked += 1
        if looked == 2:
            both_looked.set()
        await both_looked.wait()  # neither stores before both have found nothing
        return found

    store.find_message = find_then_wait_for_the_other
    await store.open()
    try:
        first, second = await asyncio.gather(
            municipal.pipeline.from_peer(body, routing, "https:hospital"),
            municipal.pipeline.from_peer(body, routing, "https:hospital"),
        )
        assert looked == 2
        assert (first.accepted, first.status) == (second.accepted, second.status) == (True, 200)
        assert sorted([first.duplicate, second.duplicate]) == [False, True]
        assert first.message_ref == second.message_ref
        stored = await store.find_by_msg_id(message.msg_id)
        assert len(stored) == 1
        assert len(await store.deliveries(stored[0].id)) == 1
    finally:
        await store.close()
