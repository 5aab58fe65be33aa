"""Pure functions between the Meldingstjener v2 JSON (msh-api-v2.json) and komut's records.

No I/O here: request bodies and query strings in, typed values or `RequestInvalid` out; store
records in, the spec's JSON objects out.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.lifecycle import DeliveryState, MessageState
from gateway.store import DeliveryRecord, MessageRecord
from message_types.codes import APPREC_ERRORS, AppRecStatus
from message_types.model import parse_datetime

INT32_MAX = 2**31 - 1
INT32_MIN = -(2**31)
DEFAULT_FETCH = 10
MAX_FETCH = 100
MAX_DETAIL = 500  # what the pipeline keeps of an AppRec error's free text, too
ERROR_VALIDATION = 1000  # NHN's errorCode for "Model validation error occurred"
XML_TYPES = {"application/xml", "text/xml"}

D = DeliveryState
TRANSPORT_STATE = {
    D.QUEUED: "Unconfirmed",
    D.SENDING: "Unconfirmed",
    D.RETRY_WAIT: "Unconfirmed",
    D.DELIVERED: "Acknowledged",
    D.APP_OK: "Acknowledged",
    D.APP_REJECTED: "Acknowledged",
    D.APP_PARTIAL: "Acknowledged",
    D.APPREC_MISSING: "Acknowledged",
    D.EXPIRED: "Rejected",
    D.DEAD: "Rejected",
    D.CANCELLED: "Rejected",
}
APPREC_NAME = {"1": "Ok", "2": "Rejected", "3": "OkErrorInMessagePart"}
_APPREC_BY_NAME = {
    "ok": AppRecStatus.OK,
    "rejected": AppRecStatus.REJECTED,
    "okerrorinmessagepart": AppRecStatus.OK_ERROR_IN_PART,
    "1": AppRecStatus.OK,
    "2": AppRecStatus.REJECTED,
    "3": AppRecStatus.OK_ERROR_IN_PART,
}


class RequestInvalid(Exception):
    """The request breaks the spec; answered 400 with these lines in validationErrors."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


def error_body(
    request_id: str, error: str, *, code: int = 0, validation_errors: list[str] | None = None
) -> dict:
    """The spec's ErrorMessage. No stack trace, ever: this is production."""
    return {
        "error": error,
        "errorCode": code,
        "validationErrors": validation_errors,
        "stackTrace": None,
        "requestId": request_id,
    }


# --- dates ------------------------------------------------------------------------------------------


def _norway() -> tzinfo | None:
    try:
        return ZoneInfo("Europe/Oslo")
    except ZoneInfoNotFoundError:  # no tz database: fall back to the host's own zone
        return None


NORWAY = _norway()


def gen_datetime(value: str | None) -> datetime | None:
    """GenDate as an aware datetime; a GenDate without a zone is Norwegian local time (HIS 1153)."""
    parsed = parse_datetime(value)
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=NORWAY) if NORWAY is not None else parsed.astimezone()
    return parsed


def iso_gen_date(value: str | None) -> str | None:
    parsed = gen_datetime(value)
    return None if parsed is None else parsed.isoformat()


# --- records to JSON ------------------------------------------------------------------------------


def message_json(
    message_uuid: str, record: MessageRecord, receiver_her: int | None, metadata: bool = True
) -> dict:
    """The spec's Message. Without metadata only the id and the receiver, as GET /Messages does."""
    out: dict = {"id": message_uuid, "receiverHerId": _int32(receiver_her)}
    if metadata:
        out.update(
            {
                "contentType": "application/xml",
                "senderHerId": _int32(record.sender_her),
                "businessDocumentId": record.msg_id or None,
                "businessDocumentGenDate": iso_gen_date(record.summary.get("gen_date")),
                "isAppRec": record.msg_type == "APPREC",
            }
        )
    return out


def _int32(value: int | None) -> int | None:
    return value if value is not None and INT32_MIN <= value <= INT32_MAX else None


def apprec_name(code: str | None) -> str | None:
    return APPREC_NAME.get(str(code)) if code is not None else None


def status_json(deliveries: Iterable[DeliveryRecord], message: MessageRecord | None = None) -> list[dict]:
    """StatusInfo per receiver. A message refused before routing has no deliveries; its receiver
    is then shown as Rejected."""
    out = [
        {
            "receiverHerId": d.receiver_her,
            "transportDeliveryState": TRANSPORT_STATE[DeliveryState(d.state)],
            "appRecStatus": apprec_name(d.apprec_status),
        }
        for d in deliveries
    ]
    if not out and message is not None and message.state == MessageState.REJECTED and message.receiver_her:
        out.append(
            {
                "receiverHerId": message.receiver_her,
                "transportDeliveryState": "Rejected",
                "appRecStatus": None,
            }
        )
    return out


def apprec_error_json(error: Mapping) -> dict:
    """An AppRec Error (V, DN, OT, S) as the spec's AppRecError.

    `details` carries the code's text (DN), as in the spec's own example ("E10" / "Ugyldig
    meldingsidentifikator"); `description` the receiver's free text (OT); `oid` the code system.
    """
    code = str(error.get("code") or "")
    return {
        "errorCode": code or None,
        "details": error.get("text") or APPREC_ERRORS.text(code) or None,
        "description": error.get("detail") or None,
        "oid": error.get("system") or None,
    }


def apprec_json(delivery: DeliveryRecord, errors: list[Mapping] | None) -> dict:
    status = apprec_name(delivery.apprec_status)
    return {
        "receiverHerId": delivery.receiver_her,
        "appRecStatus": status,
        "appRecErrorList": [apprec_error_json(e) for e in errors] if status is not None and errors else None,
    }


def problem_lines(problems: Iterable[Mapping]) -> list[str]:
    """The pipeline's problems (AppRec error code, text, where) as validationErrors lines."""
    out = []
    for p in problems:
        line = f"{p.get('code')} {p.get('code_text') or ''}".strip() + f": {p.get('message')}"
        if p.get("line"):
            line += f" (line {p['line']})"
        out.append(line)
    return out


# --- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostMessage:
    document: bytes
    receivers_subset: tuple[int, ...] | None


@dataclass(frozen=True)
class PostAppRec:
    status: AppRecStatus
    errors: tuple[tuple[str, str], ...]  # (8221 code, free text for OT)


@dataclass(frozen=True)
class ListQuery:
    receivers: tuple[int, ...]
    sender: int | None = None
    business_document_id: str | None = None
    include_metadata: bool = False
    limit: int = DEFAULT_FETCH
    descending: bool = False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def parse_post_message(body) -> PostMessage:
    if not isinstance(body, dict):
        raise RequestInvalid(["The request body must be a JSON object (PostMessageRequest)."])
    problems = []
    document = body.get("businessDocument")
    if not isinstance(document, str) or not document:
        problems.append("The BusinessDocument field is required (a base64-encoded XML document).")
    content_type = body.get("contentType")
    if not isinstance(content_type, str) or not content_type:
        problems.append("The ContentType field is required.")
    elif _media_type(content_type) not in XML_TYPES:
        problems.append(f"ContentType must be application/xml, not {content_type[:100]!r}.")
    encoding = body.get("contentTransferEncoding")
    if not isinstance(encoding, str) or not encoding:
        problems.append("The ContentTransferEncoding field is required.")
    elif encoding.strip().lower() != "base64":
        problems.append(f"ContentTransferEncoding must be base64, not {encoding[:100]!r}.")
    overrides = body.get("ebXmlOverrides")
    if overrides is not None and not isinstance(overrides, dict):
        problems.append("EbXmlOverrides must be an object or null.")
    subset = body.get("receiverHerIdsSubset")
    if subset is not None and (
        not isinstance(subset, list) or not all(_is_int(h) and INT32_MIN <= h <= INT32_MAX for h in subset)
    ):
        problems.append("ReceiverHerIdsSubset must be a list of HER-ids (int32) or null.")
    data = b""
    if isinstance(document, str) and document:
        try:
            data = _b64decode(document)
        except (binascii.Error, ValueError):
            problems.append("BusinessDocument is not valid base64.")
        else:
            if not data:
                problems.append("BusinessDocument is empty once base64-decoded.")
    if problems:
        raise RequestInvalid(problems)
    return PostMessage(data, tuple(dict.fromkeys(subset)) if subset else None)


def _b64decode(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # Line breaks and spaces are allowed (MIME style); removing them costs a regex pass over the
        # whole document, so only when the plain decode failed.
        return base64.b64decode(re.sub(r"\s+", "", text), validate=True)


def parse_post_apprec(body) -> PostAppRec:
    if not isinstance(body, dict):
        raise RequestInvalid(["The request body must be a JSON object (PostAppRecRequest)."])
    problems = []
    raw = body.get("appRecStatus")
    status = None
    if raw is None:
        problems.append("The AppRecStatus field is required (Ok, Rejected or OkErrorInMessagePart).")
    elif isinstance(raw, bool) or not isinstance(raw, str | int):
        problems.append("AppRecStatus must be Ok, Rejected or OkErrorInMessagePart.")
    else:
        status = _APPREC_BY_NAME.get(str(raw).strip().lower())
        if status is None:
            problems.append(f"AppRecStatus {str(raw)[:50]!r} is not Ok, Rejected or OkErrorInMessagePart.")
    raw_errors = body.get("appRecErrorList")
    errors: list[tuple[str, str]] = []
    if raw_errors is not None and not isinstance(raw_errors, list):
        problems.append("AppRecErrorList must be a list or null.")
        raw_errors = None
    for index, item in enumerate(raw_errors or []):
        where = f"AppRecErrorList[{index}]"
        if not isinstance(item, dict):
            problems.append(f"{where} must be an object.")
            continue
        code, details, description, oid = (
            item.get(k) for k in ("errorCode", "details", "description", "oid")
        )
        if not isinstance(code, str) or not code.strip():
            problems.append(f"{where}.ErrorCode is required (a code from kodeverk 8221, e.g. E35).")
            continue
        code = code.strip()
        if code not in APPREC_ERRORS:
            problems.append(
                f"{where}.ErrorCode {code[:20]!r} is not in kodeverk 8221 ({APPREC_ERRORS.name})."
            )
        if any(v is not None and not isinstance(v, str) for v in (details, description, oid)):
            problems.append(f"{where}: Details, Description and Oid must be strings or null.")
            continue
        if oid and oid.strip() != APPREC_ERRORS.oid:
            problems.append(f"{where}.Oid must be {APPREC_ERRORS.oid} (kodeverk 8221) or null.")
        # OT is the receiver's own words; a client that repeats the code's text there adds nothing.
        text = (description or "").strip()
        if not text and details and details.strip() != APPREC_ERRORS.text(code):
            text = details.strip()
        errors.append((code, text[:MAX_DETAIL]))
    if status == AppRecStatus.OK and errors:
        problems.append("AppRecErrorList must be empty when AppRecStatus is Ok.")
    if status is not None and status != AppRecStatus.OK and not errors and not problems:
        problems.append(
            f"AppRecErrorList must list at least one error when AppRecStatus is {APPREC_NAME[status.value]}."
        )
    if problems:
        raise RequestInvalid(problems)
    return PostAppRec(status, tuple(errors))


def _values(query: Mapping[str, Iterable[str]], name: str) -> list[str]:
    return list(query.get(name.lower(), ()))


def _int(text: str, name: str, problems: list[str]) -> int | None:
    t = text.strip()
    if re.fullmatch(r"[+-]?\d{1,11}", t) and INT32_MIN <= int(t) <= INT32_MAX:
        return int(t)
    problems.append(f"The value {text[:30]!r} is not valid for {name}.")
    return None


def parse_list_query(query: Mapping[str, Iterable[str]]) -> ListQuery:
    """GET /Messages' query; `query` maps lower-cased names to their values (ASP.NET binds names
    case-insensitively, and clients rely on it)."""
    problems: list[str] = []
    receivers: list[int] = []
    for value in _values(query, "ReceiverHerIds"):
        for part in value.split(","):
            her = _int(part, "ReceiverHerIds", problems)
            if her is not None and her not in receivers:
                receivers.append(her)
    if not receivers and not problems:
        problems.append("The ReceiverHerIds field is required.")
    sender = None
    for value in _values(query, "SenderHerId")[-1:]:
        sender = _int(value, "SenderHerId", problems)
    document_id = None
    for value in _values(query, "BusinessDocumentId")[-1:]:
        if len(value) > 100:
            problems.append("BusinessDocumentId is longer than 100 characters.")
        document_id = value or None
    include = False
    for value in _values(query, "IncludeMetadata")[-1:]:
        if value.strip().lower() not in ("true", "false"):
            problems.append(f"The value {value[:30]!r} is not valid for IncludeMetadata.")
        include = value.strip().lower() == "true"
    limit = DEFAULT_FETCH
    for value in _values(query, "MessagesToFetch")[-1:]:
        parsed = _int(value, "MessagesToFetch", problems)
        if parsed is not None and not 1 <= parsed <= MAX_FETCH:
            problems.append(f"MessagesToFetch must be between 1 and {MAX_FETCH}.")
        elif parsed is not None:
            limit = parsed
    descending = False
    for value in _values(query, "OrderBy")[-1:]:
        key = value.strip().lower()
        if key not in ("ascending", "descending", "1", "2"):
            problems.append(f"The value {value[:30]!r} is not valid for OrderBy (Ascending or Descending).")
        descending = key in ("descending", "2")
    if problems:
        raise RequestInvalid(problems)
    return ListQuery(tuple(receivers), sender, document_id, include, limit, descending)
