"""The API mailbox: unread messages per HER-id, ordered and filtered as GET /Messages says, and kept
across a restart of the gateway (SQLite store): what was read stays read, ids stay valid."""

from __future__ import annotations

import dataclasses
import re

import aiohttp
from api_helpers import ASKER_NURSING, GP, TOKENS, Client, document, gateway_config, poll, running_gateway

from gateway.api.mailbox import READ


def _with_gen_date(data: bytes, when: str) -> bytes:
    return re.sub(rb"<GenDate>[^<]*</GenDate>", f"<GenDate>{when}</GenDate>".encode(), data, count=1)


async def _ids(gp: Client, **params) -> list[str]:
    query = [("ReceiverHerIds", str(GP))] + [(k, str(v)) for k, v in params.items()]
    status, items, _ = await gp.call("GET", "/Messages", params=query)
    assert status == 200, items
    return [i["id"] for i in items]


async def test_unread_list_order_filters_and_restart(tmp_path):
    config = gateway_config(tmp_path, store="sqlite")
    # Posted newest first: the list must follow GenDate, not arrival.
    dates = ["2025-03-01T12:00:00+01:00", "2025-02-01T12:00:00+01:00", "2025-01-01T12:00:00+01:00"]
    async with running_gateway(config) as (gateway, base), aiohttp.ClientSession() as session:
        asker, gp = Client(session, base, TOKENS["asker"]), Client(session, base, TOKENS["gp"])
        posted, msg_ids = [], []
        for when in dates:
            data, msg_id = document()
            status, message_id, _ = await asker.post_message(_with_gen_date(data, when))
            assert status == 201, message_id
            posted.append(message_id)
            msg_ids.append(msg_id)

        async def all_there():
            return len(await _ids(gp)) == 3

        await poll(all_there, what="three messages in the GP's mailbox")
        oldest_first = list(reversed(posted))
        assert await _ids(gp) == oldest_first
        assert await _ids(gp, OrderBy="Descending") == posted
        assert await _ids(gp, MessagesToFetch=2) == oldest_first[:2]
        assert await _ids(gp, BusinessDocumentId=msg_ids[1]) == [posted[1]]
        assert await _ids(gp, SenderHerId=ASKER_NURSING) == oldest_first
        assert await _ids(gp, SenderHerId=9999999) == []

        assert (await gp.call("PUT", f"/Messages/{posted[0]}/read/{GP}"))[0] == 204
        [record] = await gateway.store.find_by_msg_id(msg_ids[0])
        events = await gateway.store.events(record.id)
        [read] = [e for e in events if e.kind == READ]
        assert read.reason == f"read by API client gp for HER-id {GP}" and read.at > 0

    # A new process on the same store and state folder: a fresh mailbox, built from the store.
    async with running_gateway(config) as (_, base), aiohttp.ClientSession() as session:
        gp = Client(session, base, TOKENS["gp"])
        assert await _ids(gp) == oldest_first[:2], "read stays read, unread stays unread, ids stay the same"
        status, body, _ = await gp.call("GET", f"/Messages/{posted[0]}")
        assert status == 200 and body["businessDocumentId"] == msg_ids[0]
        for message_id in oldest_first[:2]:
            assert (await gp.call("PUT", f"/Messages/{message_id}/read/{GP}"))[0] == 204
        assert await _ids(gp) == []


async def test_copy_receiver_reads_and_answers_for_itself(tmp_path):
    """A Dialogmelding to a GP with a copy to another GP at the same office: two deliveries, two
    mailboxes, each read and answered on its own (the AppRec from the copy receiver says COP)."""
    from lxml import etree

    from gateway.demo.systems import address_of
    from gateway.registry import load_default_registry
    from message_types.kinds import MSGHEAD_NS
    from message_types.msghead import write_address
    from message_types.read import read_message
    from message_types.xmlparse import parse_xml

    data, msg_id = document()
    root = etree.fromstring(data)
    ns = "{" + MSGHEAD_NS + "}"
    info = root.find(ns + "MsgInfo")
    receiver = info.find(ns + "Receiver")
    copy_gp = 9310102  # another GP at the same office
    copy = etree.Element(ns + "OtherReceiver")
    etree.SubElement(copy, ns + "RoleReceiver", V="COP", DN="Kopimottaker")
    write_address(copy, address_of(load_default_registry(), copy_gp))
    receiver.addnext(copy)
    data = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
    config = gateway_config(tmp_path)
    async with running_gateway(config) as (gateway, base), aiohttp.ClientSession() as session:
        asker, gp = Client(session, base, TOKENS["asker"]), Client(session, base, TOKENS["gp"])
        status, message_id, _ = await asker.post_message(data)
        assert status == 201, message_id

        async def both():
            _, items, _ = await gp.unread(GP, copy_gp)
            return sorted(i["receiverHerId"] for i in items if i["id"] == message_id) == [GP, copy_gp]

        await poll(both, what="the message in both GPs' mailboxes")
        status, apprec_id, _ = await gp.call(
            "POST", f"/Messages/{message_id}/apprec/{copy_gp}", json={"appRecStatus": "Ok"}
        )
        assert status == 201, apprec_id
        record = await gateway.store.get_message(gateway_id(gateway, apprec_id), with_payload=True)
        apprec = read_message(parse_xml(record.payload))
        assert apprec.apprec.sender_role == "COP" and apprec.sender.her_id == copy_gp

        async def statuses():
            _, infos, _ = await asker.call("GET", f"/Messages/{message_id}/status")
            return {i["receiverHerId"]: i["appRecStatus"] for i in infos}

        await poll(lambda: _eq(statuses, {GP: None, copy_gp: "Ok"}), what="the copy receiver's AppRec")
        # Marking read for one receiver leaves the other's copy unread.
        assert (await gp.call("PUT", f"/Messages/{message_id}/read/{copy_gp}"))[0] == 204
        _, items, _ = await gp.unread(GP, copy_gp)
        assert [(i["id"], i["receiverHerId"]) for i in items] == [(message_id, GP)]


def gateway_id(gateway, message_uuid: str) -> int:
    from gateway.api.edi import APP_KEY

    return gateway.app[APP_KEY].ids.from_uuid(message_uuid)


async def _eq(fn, expected) -> bool:
    return await fn() == expected


async def test_nodes_sharing_a_store_see_each_others_hand_overs_and_read_marks_after_refresh():
    """Two mailboxes over one store stand for two nodes: what one hands over or marks read, the
    other learns when its index is older than `refresh`, not before."""
    from adapters.store_memory import MemoryStore
    from gateway.api.mailbox import Mailbox
    from gateway.lifecycle import DeliveryState, MessageState
    from gateway.store import Change, DeliveryRecord, DeliveryUpdate, Direction, MessageRecord

    store = MemoryStore()
    await store.open()
    now = [1_000_000.0]
    node_a = Mailbox(store, window=86400, refresh=10, clock=lambda: now[0])
    node_b = Mailbox(store, window=86400, refresh=10, clock=lambda: now[0])
    assert await node_b.unread([GP]) == []  # node B has built its (empty) index

    record = MessageRecord(
        Direction.OUTBOUND,
        MessageState.ACCEPTED,
        "k:1",
        now[0],
        "test",
        msg_id="m-1",
        sender_her=ASKER_NURSING,
    )
    delivery = DeliveryRecord(None, GP, "PRIM", "api", str(9310100), DeliveryState.QUEUED, now[0] + 3600)
    applied = await store.apply(Change(new_message=record, new_deliveries=[delivery]))
    [delivery_id] = applied.delivery_ids
    sent = DeliveryUpdate(delivery_id, DeliveryState.QUEUED, {"state": DeliveryState.DELIVERED})
    await store.apply(Change(delivery_updates=[sent]))
    await node_a.deliver(await store.get_message(applied.message_id), delivery_id, GP)

    assert [e.delivery_id for e in await node_a.unread([GP])] == [delivery_id]
    assert await node_b.unread([GP]) == [], "within refresh, node B answers from its index"
    now[0] += 11
    assert [e.delivery_id for e in await node_b.unread([GP])] == [delivery_id]

    [d] = await store.deliveries(applied.message_id)
    assert await node_b.mark_read(applied.message_id, d, "gp") is True
    assert await node_a.mark_read(applied.message_id, d, "gp") is False, "already read, on the other node"
    now[0] += 11
    assert await node_a.unread([GP]) == [] and await node_b.unread([GP]) == []


async def _delivery_story(gateway, msg_id: str):
    [record] = await gateway.store.find_by_msg_id(msg_id)
    [delivery] = await gateway.store.deliveries(record.id)
    events = [e for e in await gateway.store.events(record.id) if e.delivery_id == delivery.id]
    return delivery, [(e.kind, e.from_state, e.to_state) for e in events]


async def test_a_message_for_an_api_system_is_delivered_by_the_transaction_that_stores_it(tmp_path):
    """The mailbox delivers by the message being fetchable, so storing it records its delivery
    too: the same states and events a worker would write, in one transaction, and the message is
    listed at once. A FIFO receiver's deliveries still go through the dispatcher, which keeps the
    order."""
    from gateway.lifecycle import DeliveryState

    story = [
        ("routed to a receiver", None, "queued"),
        ("attempt", "queued", "sending"),
        ("transport receipt", "sending", "delivered"),
    ]
    for fifo in (False, True):
        config = gateway_config(tmp_path / str(fifo), store="sqlite")
        config = dataclasses.replace(config, delivery=dataclasses.replace(config.delivery, fifo=fifo))
        async with running_gateway(config) as (gateway, base), aiohttp.ClientSession() as session:
            asker, gp = Client(session, base, TOKENS["asker"]), Client(session, base, TOKENS["gp"])
            data, msg_id = document()
            status, message_id, _ = await asker.post_message(data)
            assert status == 201, message_id
            if not fifo:
                assert await _ids(gp) == [message_id], "listed as soon as POST /Messages has answered"

            async def delivered(gateway=gateway, gp=gp, message_id=message_id, msg_id=msg_id):
                delivery, _ = await _delivery_story(gateway, msg_id)
                return await _ids(gp) == [message_id] and delivery.state == DeliveryState.DELIVERED

            await poll(delivered, what="the message delivered to the GP's mailbox")
            delivery, events = await _delivery_story(gateway, msg_id)
            assert delivery.state == DeliveryState.DELIVERED and delivery.attempts == 1
            assert delivery.apprec_due_at is not None and delivery.apprec_due_at > delivery.updated_at
            assert events == story, fifo
            assert (await gp.call("PUT", f"/Messages/{message_id}/read/{GP}"))[0] == 204
            assert await _ids(gp) == []
