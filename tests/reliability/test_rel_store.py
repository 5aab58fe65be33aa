"""The store cannot write: out of disk space, or locked by another process.

The API answers 503 with Retry-After and no id; the folder front door leaves the file waiting (in
out/ or .processing/, never in archive/ or error/); a peer gateway gets no transport receipt and
tries again. Nothing refused this way is in the store, and everything flows once the store
can write again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from api_helpers import ASKER_CAST, GP_OFFICE, document, post_body
from e2e import wait_for
from rel_net import (
    FLOWS,
    HALLINGDAL,
    HOSPITAL,
    MUNICIPALITY,
    Received,
    RelNet,
    answer_until,
    app_ok,
    post_until_accepted,
)

API_TO_HOSPITAL = next(f for f in FLOWS if f.api and f.gateway == "municipal")
FOLDER_TO_HOSPITAL = next(f for f in FLOWS if not f.api and f.gateway == "municipal")
FOLDER_TO_MUNICIPALITY = next(f for f in FLOWS if not f.api and f.gateway == "hospital")


def _waiting_files(net: RelNet, her_id: int) -> dict[str, list[str]]:
    root = net.folder(her_id, "out").parent
    return {
        sub: sorted(p.name for p in (root / sub).glob("*") if p.is_file() and not p.name.startswith("."))
        for sub in ("out", ".processing", "archive", "error")
    }


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system under `folder`."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * (1 << 20)
        with contextlib.suppress(OSError):
            while True:
                f.write(chunk)
        with contextlib.suppress(OSError):
            while True:  # the last partial megabyte
                f.write(b"\0" * 4096)
    return filler


async def test_out_of_disk_space_refuses_with_503_acknowledges_nothing_and_recovers(tmp_path, demo_pki):
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs for the store (run the suite as root, as CI does)")
    net = RelNet(tmp_path / "net", demo_pki)
    state = net.state_dir("municipal")
    state.mkdir(parents=True, exist_ok=True)
    # The set-up may have put files there already (the operators' database): they move along.
    kept = {p.name: p.read_bytes() for p in state.iterdir() if p.is_file()}
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "komut-test-full", str(state)], check=True)
    for name, data in kept.items():
        (state / name).write_bytes(data)
    filler = None
    try:
        net.start("hospital")
        net.start("municipal")
        filler = _fill(state)

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
            asker, hallingdal = net.api(session, API_TO_HOSPITAL.sender), net.api(session, HALLINGDAL)
            refused = []
            for _ in range(3):
                data, msg_id = net.document(API_TO_HOSPITAL)
                status, body, headers = await asker.call("POST", "/Messages", json=post_body(data))
                assert status == 503, (status, body)
                assert headers["Retry-After"].isdigit() and int(headers["Retry-After"]) >= 1
                assert "cannot store" in body["error"], body
                refused.append((data, msg_id))

            # The folder front door: Drammen's files wait; nothing goes to archive/ or error/.
            waiting = []
            for i in range(2):
                data, msg_id = net.document(FOLDER_TO_HOSPITAL)
                net.system(MUNICIPALITY).send(data, f"full-{i}.xml")
                waiting.append(msg_id)
            # A peer's message: no transport receipt, so the hospital keeps it and tries again.
            data, peer_msg_id = net.document(FOLDER_TO_MUNICIPALITY)
            net.system(HOSPITAL).send(data, "to-full-municipality.xml")

            def peer_refused():
                rows = net.rows("hospital").get(peer_msg_id, [])
                deliveries = [d for r in rows for d in r["deliveries"]]
                return deliveries and any(
                    d["state"] == "retry-wait" and "503" in (d["last_error"] or "") for d in deliveries
                )

            await asyncio.to_thread(
                wait_for, peer_refused, 60, 0.5, "the hospital to get 503 from the full peer"
            )
            files = _waiting_files(net, MUNICIPALITY)
            assert not files["archive"] and not files["error"], files
            assert len(files["out"]) + len(files[".processing"]) == 2, files
            assert net.procs["municipal"].poll() is None, "the gateway keeps running with a full disk"

            filler.unlink()
            filler = None
            # Nothing that was refused was stored meanwhile.
            rows = net.rows("municipal")
            assert not [m for _, m in refused if m in rows], "a message answered 503 is in the store"

            for data, _ in refused:
                await post_until_accepted(asker, data)
            received = {h: Received() for h in (HALLINGDAL, HOSPITAL, MUNICIPALITY)}
            sent_from_municipal = [m for _, m in refused] + waiting
            await answer_until(
                net,
                lambda: (
                    app_ok(net, "municipal", sent_from_municipal) and app_ok(net, "hospital", [peer_msg_id])
                ),
                {HALLINGDAL: hallingdal},
                received,
                120,
                "every message to be app-ok once the disk has room",
            )
        files = _waiting_files(net, MUNICIPALITY)
        assert sorted(n.rsplit("_", 1)[-1] for n in files["archive"] if "full-" in n) == [
            "full-0.xml",
            "full-1.xml",
        ]
        assert not files["error"] and not files["out"] and not files[".processing"], files
        for _, msg_id in refused:
            assert received[HALLINGDAL].times(msg_id) == 1
        for msg_id in waiting:
            assert received[HOSPITAL].times(msg_id) == 1
        assert received[MUNICIPALITY].times(peer_msg_id) == 1
    finally:
        net.stop_all()
        if filler is not None:
            filler.unlink()
        subprocess.run(["umount", "-l", str(state)], check=False)


LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("ROLLBACK")
"""


async def test_store_locked_by_another_process_refuses_with_503_and_recovers(tmp_path, demo_pki):
    net = RelNet(tmp_path / "net", demo_pki)
    net.start("municipal")
    locker = None
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=90)) as session:
            asker = net.api(session, API_TO_HOSPITAL.sender)
            data, msg_id = document("dialog/01-dialog-foresporsel.xml", ASKER_CAST)
            locker = subprocess.Popen(
                [sys.executable, "-c", LOCKER, str(net.state_dir("municipal") / "komut.db")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert locker.stdout.readline().strip() == "locked"
            folder_data, folder_msg_id = net.document(FOLDER_TO_HOSPITAL)
            net.system(MUNICIPALITY).send(folder_data, "while-locked.xml")

            # SQLite waits for the lock (busy_timeout) before it gives up.
            status, body, headers = await asker.call("POST", "/Messages", json=post_body(data))
            assert status == 503, (status, body)
            assert headers["Retry-After"].isdigit(), headers
            files = _waiting_files(net, MUNICIPALITY)
            assert not files["archive"] and not files["error"], files

            locker.communicate("release\n", timeout=10)
            locker = None
            assert msg_id not in net.rows("municipal"), "a message answered 503 is in the store"
            message_id, _ = await post_until_accepted(asker, data)
            status, _, _ = await net.api(session, GP_OFFICE).call("GET", f"/Messages/{message_id}")
            assert status == 200, "the GP office sees the message once it is stored"
        wait_for(
            lambda: len(_waiting_files(net, MUNICIPALITY)["archive"]) == 1,
            60,
            0.5,
            "the waiting file to be taken once the lock is gone",
        )
        assert folder_msg_id in net.rows("municipal")
    finally:
        if locker is not None:
            locker.kill()
        net.stop_all()
