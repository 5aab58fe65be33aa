"""An AppRec that arrives while the delivery it answers is being moved by someone else (its transport
receipt recorded by another node, or a moment earlier on this one) still moves it: the pipeline
looks again instead of keeping the AppRec without its effect."""

from __future__ import annotations

from conftest import SAMPLES
from e2e import DRAMMEN_CAST

from adapters.store_memory import MemoryStore
from gateway.config import parse_config
from gateway.demo.systems import Cast, recast
from gateway.lifecycle import DeliveryState as D
from gateway.lifecycle import MessageState
from gateway.registry import load_default_registry
from gateway.store import Change, DeliveryRecord, DeliveryUpdate, Direction, Event, MessageRecord
from message_types.apprec import build_apprec
from message_types.codes import AppRecStatus
from message_types.read import read_message
from message_types.xmlparse import parse_xml


class RacingStore(MemoryStore):
    """Records the transport receipt of `delivery_id` just before the first change that updates it."""

    def __init__(self):
        super().__init__()
        self.message_id: int | None = None
        self.delivery_id: int | None = None
        self.raced = False

    async def apply(self, change: Change):
        touches = any(u.delivery_id == self.delivery_id for u in change.delivery_updates)
        if touches and not self.raced:
            self.raced = True
            await super().apply(
                Change(
                    delivery_updates=[DeliveryUpdate(self.delivery_id, D.SENDING, {"state": D.DELIVERED})],
                    events=[Event(2.0, "peer", "transport receipt", self.message_id, self.delivery_id)],
                )
            )
        return await super().apply(change)


async def test_apprec_overtaking_the_transport_receipt_still_answers_the_delivery(tmp_path):
    from gateway.service import Gateway

    config = parse_config(
        {
            "gateway": {"name": "municipal", "serves": [9203000]},
            "gateways": {"hospital": "https://127.0.0.1:9/peer/v1/messages"},
            "store": {"kind": "memory"},
            "local_systems": [{"name": "PLO", "her_ids": [9203000], "folder": "systems/9203000"}],
        },
        tmp_path,
    )
    store = RacingStore()
    await store.open()
    gateway = Gateway(config, store=store)
    template = (SAMPLES / "valid/plo/01-log-innlagt.xml").read_bytes()
    data, _ = recast(template, load_default_registry(), Cast(DRAMMEN_CAST), {})
    original = read_message(parse_xml(data))
    receiver = original.receiver.her_id
    applied = await store.apply(
        Change(
            new_message=MessageRecord(
                Direction.INBOUND,
                MessageState.ACCEPTED,
                f"{original.sender.her_id}:{original.msg_id}",
                1.0,
                "https:hospital",
                msg_id=original.msg_id,
                sender_her=original.sender.her_id,
                receiver_her=receiver,
            ),
            new_deliveries=[DeliveryRecord(None, receiver, "PRIM", "folder", "in", D.SENDING, 9e9)],
        )
    )
    store.message_id, store.delivery_id = applied.message_id, applied.delivery_ids[0]

    apprec = build_apprec(original, AppRecStatus.OK, [])
    result = await gateway.pipeline.from_local(apprec, source="folder:9203000", sender_her=9203000)

    assert result.accepted, result.detail
    assert store.raced
    (delivery,) = await store.deliveries(applied.message_id)
    assert delivery.state == D.APP_OK
    kinds = [e.kind for e in await store.events(applied.message_id)]
    assert kinds[-2:] == ["transport receipt", "AppRec OK"]
