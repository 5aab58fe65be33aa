"""End to end through the EDI 2.0 API only, on real gateways (`komut serve` processes, demo set-up,
mutual TLS, SQLite): no folder is touched on either side."""

from __future__ import annotations

import base64
import ssl

import aiohttp
from api_helpers import ASKER, ASKER_CAST, ASKER_NURSING, GP, Client, document, poll
from e2e import wait_for

from message_types.read import read_message
from message_types.xmlparse import parse_xml

HALLINGDAL, HALLINGDAL_SOMATIKK, GP_OFFICE = 9100500, 9100501, 9310100


def _client(net, session, her_id: int) -> Client:
    entry = net.info["systems"][str(her_id)]
    assert entry["api"] is True
    ctx = ssl.create_default_context(cafile=str(net.directory / "pki" / "ca.pem"))
    ctx.load_cert_chain(entry["client_cert"], entry["client_key"])
    return Client(session, entry["url"], net.info["tokens"][str(her_id)], ssl=ctx)


async def test_dialogmelding_from_municipality_to_gp_and_apprec_back_through_the_api(net):
    net.start("municipal")
    data, msg_id = document("dialog/01-dialog-foresporsel.xml", ASKER_CAST)
    async with aiohttp.ClientSession() as session:
        municipality, gp = _client(net, session, ASKER), _client(net, session, GP_OFFICE)

        status, message_id, hdrs = await municipality.post_message(data)
        assert status == 201, message_id
        assert hdrs["Location"] == f"/Messages/{message_id}"
        again = await municipality.post_message(data)
        assert again[:2] == (201, message_id), "the same MsgId from the same sender is the same message"

        async def listed():
            status, items, _ = await gp.unread(GP)
            assert status == 200, items
            return [i for i in items if i["id"] == message_id]

        [item] = await poll(listed, what="the Dialogmelding in the GP's unread list")
        assert item == {
            "id": message_id,
            "receiverHerId": GP,
            "contentType": "application/xml",
            "senderHerId": ASKER_NURSING,
            "businessDocumentId": msg_id,
            "businessDocumentGenDate": item["businessDocumentGenDate"],
            "isAppRec": False,
        }
        status, doc, _ = await gp.call("GET", f"/Messages/{message_id}/business-document")
        assert status == 200 and doc["contentTransferEncoding"] == "base64"
        assert base64.b64decode(doc["businessDocument"]) == data, "the GP gets exactly what was sent"

        assert (await gp.call("PUT", f"/Messages/{message_id}/read/{GP}"))[0] == 204
        assert not await listed(), "a message marked read is no longer unread"
        assert (await gp.call("PUT", f"/Messages/{message_id}/read/{GP}"))[0] == 204, (
            "marking read again is fine"
        )

        status, apprec_id, _ = await gp.call(
            "POST", f"/Messages/{message_id}/apprec/{GP}", json={"appRecStatus": "Ok"}
        )
        assert status == 201, apprec_id

        async def answered():
            status, infos, _ = await municipality.call("GET", f"/Messages/{message_id}/status")
            assert status == 200, infos
            return infos if infos and infos[0]["appRecStatus"] else None

        infos = await poll(answered, what="appRecStatus in the municipality's /status")
        assert infos == [
            {"receiverHerId": GP, "transportDeliveryState": "Acknowledged", "appRecStatus": "Ok"}
        ]
        status, apprecs, _ = await municipality.call("GET", f"/Messages/{message_id}/apprec")
        assert apprecs == [{"receiverHerId": GP, "appRecStatus": "Ok", "appRecErrorList": None}]

        # The AppRec itself reaches the sending party's mailbox, as it would reach its in folder.
        async def apprec_listed():
            _, items, _ = await municipality.unread(ASKER_NURSING)
            return [i for i in items if i["id"] == apprec_id]

        [receipt] = await poll(apprec_listed, what="the AppRec in the municipality's unread list")
        assert receipt["isAppRec"] is True and receipt["senderHerId"] == GP
        _, doc, _ = await municipality.call("GET", f"/Messages/{apprec_id}/business-document")
        apprec = read_message(parse_xml(base64.b64decode(doc["businessDocument"]))).apprec
        assert apprec.original_msg_id == msg_id and str(apprec.status) == "1"

    entry = wait_for(lambda: net.entry("municipal", msg_id), what="the Dialogmelding in the delivery log")
    assert entry["status"] == "app-ok"
    assert "read" in [e["kind"] for e in entry["events"]], "komut records when the GP read it"
    assert not any(net.directory.joinpath("systems").rglob("*.xml")), "no folder was used"


async def test_plo_message_across_gateways_refused_by_apprec_with_errors(net):
    """Hallingdal sjukestugu (hospital gateway, API) to Asker's home nursing (municipal gateway,
    API): signed and encrypted between the gateways, refused by the municipality with E35."""
    net.start("hospital")
    net.start("municipal")
    cast = {**ASKER_CAST, "site": HALLINGDAL, "somatikk": HALLINGDAL_SOMATIKK}
    data, msg_id = document("plo/01-log-innlagt.xml", cast)
    async with aiohttp.ClientSession() as session:
        hospital, municipality = _client(net, session, HALLINGDAL), _client(net, session, ASKER)
        status, message_id, _ = await hospital.post_message(data)
        assert status == 201, message_id

        async def listed():
            _, items, _ = await municipality.unread(ASKER_NURSING)
            return [i for i in items if i["businessDocumentId"] == msg_id]

        [item] = await poll(listed, what="LOG_INNLAGT in Asker's unread list")
        inbound_id = item["id"]
        assert inbound_id != message_id, "each gateway has its own ids"
        _, doc, _ = await municipality.call("GET", f"/Messages/{inbound_id}/business-document")
        assert base64.b64decode(doc["businessDocument"]) == data
        assert (await municipality.call("PUT", f"/Messages/{inbound_id}/read/{ASKER_NURSING}"))[0] == 204
        rejection = {
            "appRecStatus": "Rejected",
            "appRecErrorList": [
                {
                    "errorCode": "E35",
                    "details": None,
                    "description": "Ukjent pasient i fagsystemet",
                    "oid": None,
                }
            ],
        }
        status, apprec_id, _ = await municipality.call(
            "POST", f"/Messages/{inbound_id}/apprec/{ASKER_NURSING}", json=rejection
        )
        assert status == 201, apprec_id
        retried = await municipality.call(
            "POST", f"/Messages/{inbound_id}/apprec/{ASKER_NURSING}", json=rejection
        )
        assert retried[:2] == (201, apprec_id), "a retried AppRec POST gets the AppRec already sent"

        async def answered():
            _, infos, _ = await hospital.call("GET", f"/Messages/{message_id}/apprec")
            return infos if infos and infos[0]["appRecStatus"] else None

        infos = await poll(answered, what="the AppRec at the hospital")
        assert infos == [
            {
                "receiverHerId": ASKER_NURSING,
                "appRecStatus": "Rejected",
                "appRecErrorList": [
                    {
                        "errorCode": "E35",
                        "details": "Pasienten finnes ikke i mottakersystemet",
                        "description": "Ukjent pasient i fagsystemet",
                        "oid": "2.16.578.1.12.4.1.1.8221",
                    }
                ],
            }
        ]
        _, status_infos, _ = await hospital.call("GET", f"/Messages/{message_id}/status")
        assert status_infos == [
            {
                "receiverHerId": ASKER_NURSING,
                "transportDeliveryState": "Acknowledged",
                "appRecStatus": "Rejected",
            }
        ]
