"""The API's pure parts: JSON <-> records, the id cipher, the rate limiter, HER-id claims, settings."""

from __future__ import annotations

import base64
import uuid

import pytest

from gateway.api.auth import parse_her_ids
from gateway.api.ids import MessageIds, load_or_create_key
from gateway.api.mapping import (
    RequestInvalid,
    apprec_error_json,
    iso_gen_date,
    message_json,
    parse_list_query,
    parse_post_apprec,
    parse_post_message,
    status_json,
)
from gateway.api.ratelimit import RateLimiter
from gateway.api.settings import parse_api_settings
from gateway.config import ConfigError, parse_config
from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import DeliveryRecord, Direction, MessageRecord
from message_types.codes import AppRecStatus


def _problems(fn, *args) -> list[str]:
    with pytest.raises(RequestInvalid) as info:
        fn(*args)
    return info.value.problems


# --- POST /Messages ------------------------------------------------------------------------------


def test_post_message_decodes_base64_with_line_breaks():
    data = b"<?xml version='1.0' encoding='UTF-8'?><MsgHead/>"
    encoded = base64.b64encode(data).decode()
    wrapped = "\r\n".join(encoded[i : i + 10] for i in range(0, len(encoded), 10))
    post = parse_post_message(
        {
            "businessDocument": wrapped,
            "contentType": "application/xml; charset=utf-8",
            "contentTransferEncoding": "BASE64",
        }
    )
    assert post.document == data and post.receivers_subset is None


@pytest.mark.parametrize(
    "body, expected",
    [
        ([], "JSON object"),
        ({}, "BusinessDocument field is required"),
        (
            {"businessDocument": "!!", "contentType": "application/xml", "contentTransferEncoding": "base64"},
            "not valid base64",
        ),
        (
            {
                "businessDocument": "PGEvPg==",
                "contentType": "application/pdf",
                "contentTransferEncoding": "base64",
            },
            "application/xml",
        ),
        (
            {
                "businessDocument": "PGEvPg==",
                "contentType": "application/xml",
                "contentTransferEncoding": "7bit",
            },
            "must be base64",
        ),
        (
            {
                "businessDocument": "PGEvPg==",
                "contentType": "application/xml",
                "contentTransferEncoding": "base64",
                "receiverHerIdsSubset": [True],
            },
            "ReceiverHerIdsSubset",
        ),
    ],
)
def test_post_message_refusals(body, expected):
    assert any(expected in p for p in _problems(parse_post_message, body))


# --- POST apprec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["Ok", "ok", 1, "1"])
def test_apprec_status_by_name_or_number(value):
    assert parse_post_apprec({"appRecStatus": value}).status == AppRecStatus.OK


def test_apprec_error_text_goes_to_ot_unless_it_only_repeats_the_code_text():
    post = parse_post_apprec(
        {
            "appRecStatus": "Rejected",
            "appRecErrorList": [
                {"errorCode": "E35", "details": "Pasienten finnes ikke i mottakersystemet"},
                {"errorCode": "X99", "details": "Feil i vedlegg", "description": None},
                {"errorCode": "E10", "details": None, "description": "MsgId er ikke en GUID"},
            ],
        }
    )
    assert post.status == AppRecStatus.REJECTED
    assert post.errors == (("E35", ""), ("X99", "Feil i vedlegg"), ("E10", "MsgId er ikke en GUID"))


@pytest.mark.parametrize(
    "body, expected",
    [
        ({}, "AppRecStatus field is required"),
        ({"appRecStatus": "Maybe"}, "is not Ok"),
        ({"appRecStatus": True}, "must be Ok"),
        ({"appRecStatus": "Rejected"}, "at least one error"),
        ({"appRecStatus": "OkErrorInMessagePart", "appRecErrorList": []}, "at least one error"),
        ({"appRecStatus": "Ok", "appRecErrorList": [{"errorCode": "X99", "details": None}]}, "must be empty"),
        (
            {"appRecStatus": "Rejected", "appRecErrorList": [{"errorCode": "Q42", "details": None}]},
            "kodeverk 8221",
        ),
        (
            {"appRecStatus": "Rejected", "appRecErrorList": [{"errorCode": None, "details": None}]},
            "ErrorCode is required",
        ),
        (
            {
                "appRecStatus": "Rejected",
                "appRecErrorList": [{"errorCode": "X99", "details": None, "oid": "1.2.3"}],
            },
            "Oid must be",
        ),
    ],
)
def test_apprec_refusals(body, expected):
    assert any(expected in p for p in _problems(parse_post_apprec, body))


# --- GET /Messages query ---------------------------------------------------------------------------


def test_list_query_names_are_case_insensitive_and_values_repeat_or_comma_separate():
    q = parse_list_query(
        {
            "receiverherids": ["42", "1337,42"],
            "includemetadata": ["True"],
            "messagestofetch": ["100"],
            "orderby": ["Descending"],
            "senderherid": ["7"],
        }
    )
    assert (
        q.receivers == (42, 1337) and q.include_metadata and q.limit == 100 and q.descending and q.sender == 7
    )
    assert parse_list_query({"receiverherids": ["1"], "orderby": ["2"]}).descending
    defaults = parse_list_query({"receiverherids": ["1"]})
    assert (defaults.limit, defaults.descending, defaults.include_metadata) == (10, False, False)


@pytest.mark.parametrize(
    "query, expected",
    [
        ({}, "ReceiverHerIds field is required"),
        ({"receiverherids": ["x"]}, "not valid for ReceiverHerIds"),
        ({"receiverherids": ["99999999999"]}, "not valid for ReceiverHerIds"),
        ({"receiverherids": ["1"], "messagestofetch": ["0"]}, "between 1 and 100"),
        ({"receiverherids": ["1"], "messagestofetch": ["101"]}, "between 1 and 100"),
        ({"receiverherids": ["1"], "includemetadata": ["yes"]}, "IncludeMetadata"),
        ({"receiverherids": ["1"], "orderby": ["Sideways"]}, "OrderBy"),
        ({"receiverherids": ["1"], "businessdocumentid": ["x" * 101]}, "longer than 100"),
    ],
)
def test_list_query_refusals(query, expected):
    assert any(expected in p for p in _problems(parse_list_query, query))


# --- records to JSON -------------------------------------------------------------------------------


def _record(**extra) -> MessageRecord:
    return MessageRecord(
        direction=Direction.INBOUND,
        state=MessageState.ACCEPTED,
        dedupe_key="k",
        received_at=0.0,
        source="test",
        msg_id="m-1",
        msg_type="DIALOG_FORESPORSEL",
        sender_her=9201001,
        receiver_her=9310101,
        summary={"gen_date": "2025-01-15T10:00:00"},
        id=5,
        **extra,
    )


def test_gen_date_without_zone_is_norwegian_time():
    assert iso_gen_date("2025-01-15T10:00:00") == "2025-01-15T10:00:00+01:00"
    assert iso_gen_date("2025-07-15T10:00:00") == "2025-07-15T10:00:00+02:00"
    assert iso_gen_date("2025-07-15T10:00:00Z") == "2025-07-15T10:00:00+00:00"
    assert iso_gen_date("not a date") is None


def test_message_json_with_and_without_metadata():
    record = _record()
    assert message_json("u", record, 9310101, metadata=False) == {"id": "u", "receiverHerId": 9310101}
    full = message_json("u", record, 9310101)
    assert (
        full["senderHerId"] == 9201001 and full["businessDocumentId"] == "m-1" and full["isAppRec"] is False
    )
    assert full["businessDocumentGenDate"] == "2025-01-15T10:00:00+01:00"


def _delivery(state, apprec=None) -> DeliveryRecord:
    return DeliveryRecord(1, 9310101, "PRIM", "api", "9310100", state, 0.0, apprec_status=apprec, id=1)


@pytest.mark.parametrize(
    "state, transport",
    [
        (DeliveryState.QUEUED, "Unconfirmed"),
        (DeliveryState.RETRY_WAIT, "Unconfirmed"),
        (DeliveryState.DELIVERED, "Acknowledged"),
        (DeliveryState.APPREC_MISSING, "Acknowledged"),
        (DeliveryState.DEAD, "Rejected"),
        (DeliveryState.EXPIRED, "Rejected"),
    ],
)
def test_transport_delivery_state(state, transport):
    assert status_json([_delivery(state)]) == [
        {"receiverHerId": 9310101, "transportDeliveryState": transport, "appRecStatus": None}
    ]


@pytest.mark.parametrize("code, name", [("1", "Ok"), ("2", "Rejected"), ("3", "OkErrorInMessagePart")])
def test_apprec_status_names(code, name):
    assert status_json([_delivery(DeliveryState.APP_OK, code)])[0]["appRecStatus"] == name


def test_refused_message_without_deliveries_shows_its_receiver_rejected():
    record = _record()
    record.state = MessageState.REJECTED
    assert status_json([], record) == [
        {"receiverHerId": 9310101, "transportDeliveryState": "Rejected", "appRecStatus": None}
    ]


def test_apprec_error_json():
    error = {
        "code": "E35",
        "text": "Pasienten finnes ikke i mottakersystemet",
        "detail": "ukjent",
        "system": "2.16.578.1.12.4.1.1.8221",
    }
    assert apprec_error_json(error) == {
        "errorCode": "E35",
        "details": "Pasienten finnes ikke i mottakersystemet",
        "description": "ukjent",
        "oid": "2.16.578.1.12.4.1.1.8221",
    }


# --- ids, rate limits, claims, settings -------------------------------------------------------------


def test_ids_round_trip_and_foreign_ids_are_nothing(tmp_path):
    ids = MessageIds(load_or_create_key(tmp_path / "k"))
    again = MessageIds(load_or_create_key(tmp_path / "k"))
    assert [again.from_uuid(ids.to_uuid(n)) for n in (1, 2, 10**12)] == [1, 2, 10**12]
    assert ids.to_uuid(1) != ids.to_uuid(2)
    other = MessageIds(load_or_create_key(tmp_path / "other"))
    assert other.from_uuid(ids.to_uuid(1)) is None
    assert ids.from_uuid(str(uuid.uuid4())) is None and ids.from_uuid("not-a-uuid") is None
    assert (tmp_path / "k").stat().st_mode & 0o077 == 0


def test_rate_limiter_token_bucket():
    now = [0.0]
    limiter = RateLimiter(clock=lambda: now[0])
    assert [limiter.take("a", 1.0, 2) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.take("b", 1.0, 2) == 0.0
    now[0] += 0.5
    assert limiter.take("a", 1.0, 2) == pytest.approx(0.5)
    now[0] += 0.5
    assert limiter.take("a", 1.0, 2) == 0.0
    now[0] += 10_000
    limiter.take("c", 1.0, 2)
    assert len(limiter) == 1, "full buckets are forgotten"


@pytest.mark.parametrize(
    "value, expected",
    [
        ([9310100, "9201000"], {9310100, 9201000}),
        ("9310100 9201000,42", {9310100, 9201000, 42}),
        (9310100, {9310100}),
        ([True, None, "x", -5, {"a": 1}], set()),
        (None, set()),
    ],
)
def test_her_id_claim_values(value, expected):
    assert parse_her_ids(value) == expected


def _config(tmp_path, api):
    return parse_config({"gateway": {"name": "g"}, "api": api}, tmp_path)


@pytest.mark.parametrize(
    "api, expected",
    [
        ({"clients": [{"name": "a", "token_sha256": "abc", "her_ids": [1]}]}, "64 hex digits"),
        ({"clients": [{"name": "a", "token_sha256": "0" * 64, "her_ids": []}]}, "her_ids"),
        ({"clients": [{"token_sha256": "0" * 64, "her_ids": [1]}]}, "name is required"),
        ({"jwt": {"issuer": "i", "audience": "a", "her_id_claim": "h"}}, "exactly one of jwks_url"),
        (
            {
                "jwt": {
                    "issuer": "i",
                    "audience": "a",
                    "her_id_claim": "h",
                    "jwks_file": "f",
                    "algorithms": ["HS256"],
                }
            },
            "not allowed",
        ),
        ({"clients": [{"name": "a", "token_sha256": "0" * 64, "her_ids": [1], "rate": 0}]}, "rate"),
    ],
)
def test_settings_refusals(tmp_path, api, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_api_settings(_config(tmp_path, api))


def test_plain_http_jwks_only_on_loopback(tmp_path):
    from gateway.api.auth import JwksSource

    def source(url):
        api = {"jwt": {"issuer": "i", "audience": "a", "her_id_claim": "h", "jwks_url": url}}
        return JwksSource(parse_api_settings(_config(tmp_path, api)).jwt)

    source("http://127.0.0.1:9/jwks")
    source("https://idp.example/jwks")
    with pytest.raises(ValueError, match="https"):
        source("http://idp.example/jwks")
