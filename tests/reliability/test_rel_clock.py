"""Clock skew between gateways, and GenDate in the future.

The municipal gateway runs with its clock ahead (libfaketime). Within the GenDate tolerance (10
minutes) everything flows both ways, the AppRecs that gateway writes for its API systems included.
Beyond it, what that gateway dates itself (an AppRec built for Asker's API system) is refused by
the hospital with X99 and a reason that names the clock, while documents dated by the local
systems' own (correct) clocks still flow. A local system whose GenDate lies too far ahead is
refused at once with the same reason; a little ahead is accepted.
"""

from __future__ import annotations

import glob
import re
from datetime import datetime, timedelta

import aiohttp
import pytest
from api_helpers import post_body
from rel_net import FLOWS, HALLINGDAL, Received, RelNet, answer_until, app_ok, post_until_accepted

API_TO_MUNICIPALITY = next(f for f in FLOWS if f.api and f.gateway == "hospital")
FOLDER_TO_MUNICIPALITY = next(f for f in FLOWS if not f.api and f.gateway == "hospital")
FOLDER_TO_HOSPITAL = next(f for f in FLOWS if not f.api and f.gateway == "municipal")
_GEN_DATE = re.compile(rb"<GenDate>[^<]*</GenDate>")


def _dated(data: bytes, ahead: timedelta) -> bytes:
    when = (datetime.now().astimezone() + ahead).replace(microsecond=0).isoformat()
    return _GEN_DATE.sub(f"<GenDate>{when}</GenDate>".encode(), data, count=1)


def _libfaketime() -> str | None:
    found = sorted(
        glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1")
        + glob.glob("/usr/lib/faketime/libfaketimeMT.so.1")
    )
    return found[0] if found else None


def _skewed(net: RelNet, name: str, ahead: str) -> None:
    # Preloaded into the gateway itself, not through the `faketime` wrapper: the wrapper would be the
    # process the test stops, and the gateway would outlive it.
    net.env[name] = {
        "LD_PRELOAD": _libfaketime(),
        "FAKETIME": ahead,
        # asyncio's timers run on the monotonic clock; only the wall clock is skewed.
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
    }


async def _round(net, session, received, clients) -> tuple[list[str], list[str]]:
    """One message each way through folders and one from the hospital's API system; returns the
    MsgIds sent from the hospital and from the municipality."""
    from_hospital, from_municipality = [], []
    data, msg_id = net.document(API_TO_MUNICIPALITY)
    await post_until_accepted(clients[API_TO_MUNICIPALITY.sender], data)
    from_hospital.append(msg_id)
    for flow, out in ((FOLDER_TO_MUNICIPALITY, from_hospital), (FOLDER_TO_HOSPITAL, from_municipality)):
        data, msg_id = net.document(flow)
        net.system(flow.sender).send(data, f"{msg_id}.xml")
        out.append(msg_id)
    return from_hospital, from_municipality


@pytest.mark.skipif(_libfaketime() is None, reason="needs libfaketime (apt-get install faketime)")
async def test_clock_skew_between_gateways(tmp_path, demo_pki):
    net = RelNet(tmp_path / "net", demo_pki)
    try:
        net.start("hospital")
        _skewed(net, "municipal", "+5m")
        net.start("municipal")
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
            clients = {f.sender: net.api(session, f.sender) for f in FLOWS if f.api}
            received = {h: Received() for f in FLOWS for h in (f.sender, f.receiver)}

            # Within the tolerance: everything is answered, gateway-built AppRecs included.
            hospital_ids, municipal_ids = await _round(net, session, received, clients)
            await answer_until(
                net,
                lambda: app_ok(net, "hospital", hospital_ids) and app_ok(net, "municipal", municipal_ids),
                clients,
                received,
                90,
                "app-ok both ways with the municipal clock 5 minutes ahead",
            )
            at_hospital = net.rows("hospital")[hospital_ids[0]][0]["received_at"]
            at_municipal = net.rows("municipal")[hospital_ids[0]][0]["received_at"]
            assert 240 < at_municipal - at_hospital < 420, (
                "the municipal gateway's clock runs 5 minutes ahead"
            )

            # Beyond the tolerance: the AppRec the municipal gateway builds for Asker is dated 15
            # minutes ahead and refused; the folder systems' own documents still flow.
            net.kill("municipal")
            _skewed(net, "municipal", "+15m")
            net.start("municipal")
            hospital_ids, municipal_ids = await _round(net, session, received, clients)
            api_msg_id, folder_ids = hospital_ids[0], hospital_ids[1:]

            def settled() -> bool:
                rows = net.rows("hospital")
                refused = [
                    r
                    for rs in rows.values()
                    for r in rs
                    if r["type"] == "APPREC" and r["status"] == "rejected" and r["refers_to"] == api_msg_id
                ]
                return (
                    bool(refused)
                    and app_ok(net, "hospital", folder_ids)
                    and app_ok(net, "municipal", municipal_ids)
                )

            await answer_until(net, settled, clients, received, 90, "the future-dated AppRec to be refused")
            rows = net.rows("hospital")
            [refusal] = [
                r
                for rs in rows.values()
                for r in rs
                if r["type"] == "APPREC" and r["refers_to"] == api_msg_id
            ]
            [problem] = refusal["problems"]
            assert problem["code"] == "X99" and "lies in the future" in problem["message"], problem
            assert "clock" in problem["message"], problem
            assert rows[api_msg_id][0]["status"] == "delivered", "the refused AppRec answers nothing"

            # The same rule at the API front door, for a local system's own GenDate.
            hallingdal = clients[HALLINGDAL]
            data, _ = net.document(API_TO_MUNICIPALITY)
            status, body, _ = await hallingdal.call(
                "POST", "/Messages", json=post_body(_dated(data, timedelta(minutes=15)))
            )
            assert status == 400, (status, body)
            assert any("X99" in line and "future" in line for line in body["validationErrors"]), body
            data, _ = net.document(API_TO_MUNICIPALITY)
            status, body, _ = await hallingdal.call(
                "POST", "/Messages", json=post_body(_dated(data, timedelta(minutes=5)))
            )
            assert status == 201, (status, body)
    finally:
        net.stop_all()
