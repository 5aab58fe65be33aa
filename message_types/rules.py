"""Business rules beyond the XSD, as pure checks over a parsed, schema-valid message.

Each rule returns Problems carrying the AppRec error code (kodeverk 8221) the receiver would
send back, so validation and AppRec generation speak the same language.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from lxml import etree
from stdnum.exceptions import ValidationError
from stdnum.no import fodselsnummer

from message_types.codes import MESSAGE_FUNCTION, AppRecStatus, ErrorCode
from message_types.kinds import CONTENT_RULES, MSGHEAD_NS, PATIENT_FAMILIES, Family
from message_types.model import Address, Message, Patient, parse_datetime
from message_types.problems import Problem, Severity
from message_types.xmlparse import readable_path

# A MsgId must be a UUID (HIS 80601, AppRec E10); we ask for the canonical textual form.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# A GenDate without a zone is Norwegian local time.
LOCAL_ZONE = ZoneInfo("Europe/Oslo")
DEFAULT_FUTURE_TOLERANCE = timedelta(minutes=10)
_MH = "{" + MSGHEAD_NS + "}"
_OBSOLETE_TYPES = {"DIALOG_NOTAT": "DIALOG_NOTAT was removed from code list 8279's latest revision"}


def is_uuid(value: str) -> bool:
    return bool(_UUID.match(value or ""))


def _where(element: etree._Element | None) -> dict:
    """Line and readable path of an element; only computed when a problem is reported."""
    if element is None:
        return {}
    return {"line": element.sourceline, "path": readable_path(element)}


def _find(root: etree._Element, path: str) -> etree._Element | None:
    # Only used to locate an element for a problem report, never on the path of a valid message.
    return root.find(path.replace("mh:", _MH))


def check_message(
    message: Message,
    root: etree._Element,
    *,
    now: datetime | None = None,
    future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE,
) -> list[Problem]:
    """Every business-rule problem of a schema-valid message (empty when it passes)."""
    problems: list[Problem] = []
    family = message.kind.family
    if family == Family.MSGHEAD:
        problems += _check_msg_type(message, root)
        if any(p.code == ErrorCode.T10 for p in problems):
            return problems  # an unknown message function makes the other rules meaningless
        id_path, date_path = "mh:MsgInfo/mh:MsgId", "mh:MsgInfo/mh:GenDate"
    elif family == Family.APPREC:
        ns = "{" + message.kind.namespace + "}"
        id_path, date_path = ns + "Id", ns + "GenDate"
        problems += _check_apprec_status(message, root, ns)
    else:
        return problems
    if not is_uuid(message.msg_id):
        problems.append(
            Problem(
                ErrorCode.E10,
                f"the message id {message.msg_id!r} is not a UUID (expected the form 8-4-4-4-12 hex digits)",
                **_where(_find(root, id_path)),
            )
        )
    problems += [
        replace(p, **_where(_find(root, date_path)))
        for p in _check_gen_date(message.gen_date, now, future_tolerance)
    ]
    problems += _check_her_ids(root, family, message)
    if family == Family.MSGHEAD:
        problems += _check_content(message, root)
        content_family = message.content_kind.family if message.content_kind else None
        rule = CONTENT_RULES.get(message.msg_type)
        if content_family in PATIENT_FAMILIES or (rule and rule.family in PATIENT_FAMILIES):
            found = _patient_problems(message.patient)
            if found:
                patient_el = _find(root, "mh:MsgInfo/mh:Patient")
                if patient_el is None:
                    patient_el = _find(root, "mh:MsgInfo")
                where = _where(patient_el)
                problems += [replace(p, **where) for p in found]
    return problems


def _check_msg_type(message: Message, root: etree._Element) -> list[Problem]:
    if message.msg_type in MESSAGE_FUNCTION and message.msg_type not in _OBSOLETE_TYPES:
        return []
    where = _where(_find(root, "mh:MsgInfo/mh:Type"))
    if message.msg_type not in MESSAGE_FUNCTION:
        return [
            Problem(
                ErrorCode.T10,
                f"MsgInfo/Type {message.msg_type!r} is not a message function komut knows (code list 8279)",
                **where,
            )
        ]
    return [Problem(ErrorCode.X99, _OBSOLETE_TYPES[message.msg_type], Severity.WARNING, **where)]


def _check_gen_date(value: str, now: datetime | None, tolerance: timedelta) -> list[Problem]:
    moment = parse_datetime(value)
    if moment is None:
        return []  # the schema already guarantees an xs:dateTime; nothing more to say
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=LOCAL_ZONE)
    now_ts = now.timestamp() if now else time.time()
    if moment.timestamp() - now_ts > tolerance.total_seconds():
        return [
            Problem(
                ErrorCode.X99,
                f"GenDate {value} lies in the future (more than {int(tolerance.total_seconds() // 60)} minutes "
                "ahead of the gateway's clock); check the sending system's clock",
            )
        ]
    return []


def _her_elements(root: etree._Element, family: Family):
    """(HER-id text, element) for every HER identifier of sender, receiver and copy receivers."""
    if family == Family.MSGHEAD:
        info = root.find(_MH + "MsgInfo")
        for party in ("Sender", "Receiver", "OtherReceiver"):
            for block in info.iterfind(_MH + party):
                for ident in block.iter(_MH + "Ident"):
                    type_id = ident.find(_MH + "TypeId")
                    if type_id is not None and type_id.get("V") == "HER":
                        id_el = ident.find(_MH + "Id")
                        yield (id_el.text or "").strip(), id_el
    else:
        ns = "{" + etree.QName(root).namespace + "}"
        for party in ("Sender", "Receiver"):
            for block in root.iterfind(ns + party):
                for element in block.iter(ns + "Inst", ns + "Dept", ns + "HCPerson", ns + "HCProf"):
                    type_id = element.find(ns + "TypeId")
                    if type_id is not None and type_id.get("V") == "HER":
                        id_el = element.find(ns + "Id")
                        if id_el is not None:
                            yield (id_el.text or "").strip(), id_el


def _well_formed_her(value: str) -> bool:
    return value.isdigit() and int(value) > 0


def _check_her_ids(root: etree._Element, family: Family, message: Message) -> list[Problem]:
    problems = []
    bad = set()
    for address in (message.sender, message.receiver, *(c.address for c in message.copies)):
        for level in address.levels:
            for ident in level.idents:
                if ident.type == "HER" and not _well_formed_her(ident.id):
                    bad.add(ident.id)
    if bad:
        for value, element in _her_elements(root, family):
            if value in bad:
                problems.append(
                    Problem(
                        ErrorCode.X99, f"HER-id {value!r} is not a positive whole number", **_where(element)
                    )
                )
    sender, receiver = message.sender.her_id, message.receiver.her_id
    if sender is not None and sender == receiver:
        problems.append(
            Problem(
                ErrorCode.X99,
                f"sender and receiver are the same party (HER-id {sender}); a message must go to someone else",
                **_where(root.find(f"{_MH}MsgInfo/{_MH}Receiver") if family == Family.MSGHEAD else None),
            )
        )
    return problems


def _check_apprec_status(message: Message, root: etree._Element, ns: str) -> list[Problem]:
    info = message.apprec
    problems = _apprec_status_problems(info)
    return [replace(p, **_where(root.find(ns + "Status"))) for p in problems]


def _apprec_status_problems(info) -> list[Problem]:
    if info.status == AppRecStatus.OK and info.errors:
        return [Problem(ErrorCode.X99, "AppRec status 1 (OK) must not carry errors (HIS 80415)")]
    if info.status in (AppRecStatus.REJECTED, AppRecStatus.OK_ERROR_IN_PART) and not info.errors:
        return [
            Problem(
                ErrorCode.X99,
                f"AppRec status {info.status.value} needs at least one Error (HIS 80415)",
            )
        ]
    if not isinstance(info.status, AppRecStatus):
        return [Problem(ErrorCode.X99, f"AppRec status {info.status!r} is not in code list 8258 (1, 2 or 3)")]
    return []


def _check_content(message: Message, root: etree._Element) -> list[Problem]:
    rule = CONTENT_RULES.get(message.msg_type)
    main = message.main_document
    if rule is None or main is None:
        return []
    kind = message.content_kind
    expected = f"{rule.family.value} <{'/'.join(rule.roots)}>"
    if kind is None or kind.family != rule.family or main.content_root not in rule.roots:
        found = f"<{main.content_root}> ({kind.title if kind else main.content_namespace or 'no content'})"
        return [
            Problem(
                ErrorCode.T99,
                f"MsgInfo/Type {message.msg_type} needs {expected} as content, but the document holds {found}",
                **_where(_main_content(root) if main.content_root else _find(root, "mh:Document")),
            )
        ]
    # The content element is only looked up when a rule needs to look inside it.
    content = _main_content(root) if rule.child is not None or rule.type_innhold else None
    if (
        rule.child is not None
        and next(content.iterchildren("{" + kind.namespace + "}" + rule.child), None) is None
    ):
        present = next(
            (
                etree.QName(c).localname
                for c in content
                if etree.QName(c).localname.startswith(("Melding", "Avmelding", "Orientering"))
            ),
            "none",
        )
        return [
            Problem(
                ErrorCode.T99,
                f"MsgInfo/Type {message.msg_type} needs <{rule.child}> in {main.content_root}, but it holds <{present}>",
                **_where(content),
            )
        ]
    if rule.type_innhold:
        code_el = next(content.iter("{*}TypeInnhold"), None)
        code = code_el.get("V") if code_el is not None else None
        if code not in rule.type_innhold:
            return [
                Problem(
                    ErrorCode.T99,
                    f"MsgInfo/Type {message.msg_type} needs TypeInnholdIMelding/TypeInnhold "
                    f"{' or '.join(rule.type_innhold)}, but the content says {code!r}",
                    **_where(code_el if code_el is not None else content),
                )
            ]
    return []


def _main_content(root: etree._Element) -> etree._Element | None:
    from message_types.msghead import content_element

    return content_element(root)


def check_patient(patient: Patient | None, element: etree._Element | None) -> list[Problem]:
    """Patient identification as the AppRec standard requires (HIS 80415 §3.3, HITS 1168).

    Sufficient: name and fødselsnummer, name and D-nummer, name and felles hjelpenummer,
    or name with date of birth and sex.
    """
    problems = _patient_problems(patient)
    if not problems:
        return problems
    where = _where(element)
    return [replace(p, **where) for p in problems]


def _patient_problems(patient: Patient | None) -> list[Problem]:
    if patient is None:
        return [Problem(ErrorCode.E36, "the message identifies no patient (MsgInfo/Patient is missing)")]
    ids = [i for i in patient.idents if i.id.strip()]
    if not patient.has_name and not ids:
        return [Problem(ErrorCode.E36, "the patient has neither a name nor an identifier")]
    problems = []
    if not patient.has_name:
        problems.append(Problem(ErrorCode.E32, "the patient's name is missing (FamilyName/GivenName)"))
    national = [i for i in ids if i.type in ("FNR", "DNR")]
    for ident in national:
        label = "fødselsnummer" if ident.type == "FNR" else "D-nummer"
        try:
            fodselsnummer.validate(ident.id)
        except ValidationError as exc:
            problems.append(
                Problem(ErrorCode.E31, f"the patient's {label} is not valid: {_stdnum_reason(exc)}")
            )
    has_number = bool(national) or any(i.type == "FHN" for i in ids)
    if patient.has_name and not has_number and not (patient.date_of_birth and patient.sex):
        problems.append(
            Problem(
                ErrorCode.E30,
                "the patient has no fødselsnummer, D-nummer or felles hjelpenummer, and not both date of birth "
                "and sex, so cannot be identified",
            )
        )
    return problems


def _stdnum_reason(exc: ValidationError) -> str:
    name = type(exc).__name__
    return {
        "InvalidChecksum": "the check digits do not match",
        "InvalidLength": "it must have 11 digits",
        "InvalidFormat": "it must consist of 11 digits",
        "InvalidComponent": "the birth date part is not a real date",
    }.get(name, str(exc))


def describe_address(address: Address) -> str:
    return address.describe()
