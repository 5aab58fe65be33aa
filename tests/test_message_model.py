"""The message model: recognition, typed facts, and the MsgHead and AppRec builders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from conftest import SAMPLES
from lxml import etree

from message_types.apprec import build_apprec
from message_types.codes import CODE_LISTS, AppRecStatus, ErrorCode
from message_types.kinds import KINDS, Family, kind_of
from message_types.model import LevelKind
from message_types.msghead import build_msghead, content_element
from message_types.read import read_message
from message_types.rules import is_uuid
from message_types.xmlparse import parse_xml


def _valid(manifest, family_prefix=""):
    return [m for m in manifest if m["expect"] == "valid" and m["file"].startswith(family_prefix)]


def _read(entry):
    return read_message(parse_xml((SAMPLES / entry["file"]).read_bytes()))


def test_code_lists_are_data_with_texts():
    for number, code_list in CODE_LISTS.items():
        assert code_list.oid == f"2.16.578.1.12.4.1.1.{number}"
        assert code_list.codes and all(code_list.codes.values())
    for code in ErrorCode:
        assert code.text, code
    assert AppRecStatus.REJECTED.text == "Avvist"


def test_every_kind_is_recognised_by_namespace():
    for kind in KINDS:
        assert kind_of(kind.namespace) is kind


def test_every_valid_sample_reads_into_typed_facts(manifest):
    for entry in _valid(manifest):
        message = _read(entry)
        assert message.msg_type == entry["type"], entry["file"]
        assert is_uuid(message.msg_id), entry["file"]
        assert message.sender.her_id and message.receiver.her_id, entry["file"]
        assert message.sender.her_id != message.receiver.her_id
        assert message.gen_datetime is not None
        if message.kind.family == Family.MSGHEAD:
            assert message.content_kind is not None, entry["file"]
            assert message.patient is not None and message.patient.ident("FNR", "DNR"), entry["file"]


def test_service_based_addressing_has_her_id_at_every_level(manifest):
    entry = next(m for m in _valid(manifest) if m.get("type") == "LOG_INNLAGT")
    message = _read(entry)
    assert message.sender.her_ids == ("9100000", "9100201")
    assert message.sender.levels[1].kind == LevelKind.SERVICE
    assert message.receiver.her_ids[0] == "9203000"
    assert message.content_kind.family == Family.PLO and message.content_kind.version == "1.6"
    assert message.main_document.content_root == "Pasientlogistikk"


def test_conversation_and_attachments(manifest):
    messages = [_read(m) for m in _valid(manifest) if m.get("type") != "APPREC"]
    followups = [m for m in messages if m.conversation]
    assert followups, "the PLO stay has follow-up messages with ConversationRef"
    for m in followups:
        assert is_uuid(m.conversation.parent) and is_uuid(m.conversation.conversation)
    with_attachment = [m for m in messages if m.attachments]
    assert with_attachment, "one sample carries an attachment"
    attachment = with_attachment[0].attachments[0]
    assert attachment.mime_type == "application/pdf" and attachment.msg_type == "A"


def test_apprec_samples_read_status_and_original(manifest):
    apprecs = [_read(m) for m in _valid(manifest) if m.get("type") == "APPREC"]
    assert {a.kind.version for a in apprecs} == {"1.0", "1.1"}
    statuses = {a.apprec.status for a in apprecs}
    assert {AppRecStatus.OK, AppRecStatus.REJECTED} <= statuses
    for a in apprecs:
        assert is_uuid(a.apprec.original_msg_id)
        if a.apprec.status != AppRecStatus.OK:
            assert a.apprec.errors and all(e.code for e in a.apprec.errors)


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_build_apprec_mirrors_the_original_and_is_valid(manifest, validator, oracle_schema, version):
    for entry in _valid(manifest):
        if entry.get("type") == "APPREC":
            continue
        original = _read(entry)
        for status, errors in (
            (AppRecStatus.OK, []),
            (AppRecStatus.REJECTED, [(ErrorCode.E31, "Fødselsnummer har feil kontrollsiffer")]),
        ):
            data = build_apprec(original, status, errors, version=version, sender_role="PRIM")
            result = validator.validate(data)
            assert result.valid, (entry["file"], result.problems)
            assert oracle_schema.validate(etree.fromstring(data)), oracle_schema.error_log.last_error
            answer = result.message
            assert answer.sender.her_ids == original.receiver.her_ids
            assert answer.receiver.her_ids == original.sender.her_ids
            assert answer.apprec.original_msg_id == original.msg_id
            assert answer.apprec.original_msg_type == original.msg_type
            assert answer.apprec.status == status
            assert [e.code for e in answer.apprec.errors] == [str(c) for c, _ in errors]


def test_build_apprec_refuses_inconsistent_status(manifest):
    original = _read(_valid(manifest, "valid/plo")[0])
    with pytest.raises(ValueError):
        build_apprec(original, AppRecStatus.OK, [(ErrorCode.X99, "x")])
    with pytest.raises(ValueError):
        build_apprec(original, AppRecStatus.REJECTED, [])


def test_build_msghead_round_trip(manifest, validator, oracle_schema):
    for entry in _valid(manifest):
        if entry.get("type") == "APPREC":
            continue
        original = _read(entry)
        root = parse_xml((SAMPLES / entry["file"]).read_bytes()).getroot()
        payload = content_element(root)
        gen = datetime.now(UTC) - timedelta(minutes=1)
        data = build_msghead(
            msg_type=original.msg_type,
            sender=original.sender,
            receiver=original.receiver,
            payload=etree.fromstring(etree.tostring(payload)),
            patient=original.patient,
            conversation=original.conversation,
            gen_date=gen,
        )
        result = validator.validate(data)
        assert result.valid, (entry["file"], result.problems)
        assert oracle_schema.validate(etree.fromstring(data)), oracle_schema.error_log.last_error
        rebuilt = result.message
        assert rebuilt.sender.her_ids == original.sender.her_ids
        assert rebuilt.receiver.her_ids == original.receiver.her_ids
        assert rebuilt.patient.idents == original.patient.idents
        assert rebuilt.content_kind == original.content_kind
        assert rebuilt.msg_id != original.msg_id and is_uuid(rebuilt.msg_id)


def test_model_objects_built_by_the_fast_init_stay_frozen_dataclasses():
    import dataclasses

    from message_types.model import Address, Ident, Message, PartyLevel

    her = Ident("9203001", "HER")
    assert her == Ident("9203001", "HER") and hash(her) == hash(Ident("9203001", "HER"))
    assert her != Ident("9203001", "ENH")
    with pytest.raises(dataclasses.FrozenInstanceError):
        her.id = "1"  # type: ignore[misc]
    level = PartyLevel("Sykepleietjeneste", LevelKind.SERVICE, (her,))
    assert level.her_id == "9203001" and PartyLevel("x", LevelKind.PERSON).idents == ()
    message = Message(
        kind=kind_of("http://www.kith.no/xmlstds/msghead/2006-05-24"),
        msg_id="m",
        msg_type="DIALOG_FORESPORSEL",
        gen_date="2026-11-23T10:00:00",
        sender=Address((level,)),
        receiver=Address(()),
    )
    assert message.copies == () and message.patient is None and message.msg_type_text == ""
    assert dataclasses.replace(message, msg_id="n").msg_id == "n"
    assert dataclasses.asdict(message)["sender"]["levels"][0]["idents"][0] == {"id": "9203001", "type": "HER"}
    assert message.sender.her_id == 9203001
