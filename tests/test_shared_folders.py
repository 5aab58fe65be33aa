"""Two gateway nodes on one folder tree (a shared store, several `komut serve`): a file leaves out/
once (the claim is an atomic rename), and a file another node holds in .processing/ is taken over
only when that claim is old enough to mean the node died."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime

from adapters.folders import FolderParty, FolderTransport
from gateway.transport import SubmitResult


class Pipeline:
    def __init__(self):
        self.taken: list[bytes] = []

    async def from_local(self, data, source, sender_her=None):
        self.taken.append(data)
        await asyncio.sleep(0.01)
        return SubmitResult(accepted=True, message_id=len(self.taken))

    async def from_peer(self, body, routing, source):
        raise AssertionError("not used")


async def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y%m%dT%H%M%S.%fZ")


async def test_two_nodes_take_each_file_from_out_once(tmp_path):
    party = FolderParty(9100000, tmp_path / "epj")
    party.create()
    for i in range(200):
        (party.out / f"m{i:03}.xml").write_bytes(f"<m{i}/>".encode())
    nodes = [Pipeline(), Pipeline()]
    transports = [FolderTransport("folder", [party], 0.01, claim_grace=60, batch=16) for _ in nodes]
    for transport, pipeline in zip(transports, nodes, strict=True):
        await transport.start(pipeline)  # each polls on its own, like two nodes
    try:
        await _until(lambda: len(os.listdir(party.archive)) == 200)
    finally:
        await asyncio.gather(*(t.stop() for t in transports))
    taken = nodes[0].taken + nodes[1].taken
    assert len(taken) == 200 and len(set(taken)) == 200
    assert nodes[0].taken and nodes[1].taken  # both did some of the work


async def test_another_nodes_claim_is_left_alone_until_it_is_old(tmp_path):
    party = FolderParty(9100000, tmp_path / "epj")
    party.create()
    fresh = party.processing / f"{_stamp(time.time())}_fresh.xml"
    old = party.processing / f"{_stamp(time.time() - 120)}_old.xml"
    fresh.write_bytes(b"<fresh/>")
    old.write_bytes(b"<old/>")
    survivor = Pipeline()
    transport = FolderTransport("folder", [party], 0.01, claim_grace=60)
    await transport.start(survivor)
    try:
        await _until(lambda: survivor.taken)
        await asyncio.sleep(0.2)  # more polls
        assert survivor.taken == [b"<old/>"]  # the dead node's file; the fresh one is someone's work in hand
        assert fresh.exists()
    finally:
        await transport.stop()

    # A node alone on its folders takes its own leftovers at once, as before.
    alone = Pipeline()
    transport = FolderTransport("folder", [party], 0.01)
    await transport.start(alone)
    try:
        await _until(lambda: alone.taken)
        assert alone.taken == [b"<fresh/>"]
    finally:
        await transport.stop()
