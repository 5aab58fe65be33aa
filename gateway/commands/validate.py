"""`komut validate`, `komut inspect` and `komut schemas`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from gateway.schemas import load_schema_set
from gateway.validation import Validator
from message_types.model import Address, Message, Patient
from message_types.problems import InvalidMessage
from message_types.read import read_message
from message_types.xmlparse import parse_xml

USAGE_ERROR = 2


def register(subparsers) -> None:
    p = subparsers.add_parser("validate", help="validate message files (exit 0 all valid, 1 any invalid)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="files, or folders searched for *.xml")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p.add_argument(
        "--explain",
        action="store_true",
        help="ask xmlschema why a schema-invalid file fails (slower, clearer)",
    )
    _schema_dir_option(p)
    p.set_defaults(func=cmd_validate)

    p = subparsers.add_parser("inspect", help="print the envelope facts of a message")
    p.add_argument("file", metavar="FILE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--show-patient", action="store_true", help="print patient identifiers unmasked")
    p.set_defaults(func=cmd_inspect)

    p = subparsers.add_parser(
        "schemas", help="list the schemas: namespace, file, built-in or from --schema-dir"
    )
    p.add_argument("--json", action="store_true")
    _schema_dir_option(p)
    p.set_defaults(func=cmd_schemas)


def _schema_dir_option(parser) -> None:
    parser.add_argument(
        "--schema-dir",
        action="append",
        default=[],
        metavar="DIR",
        help="add or override namespaces with the *.xsd files of DIR (repeatable)",
    )


def _files(paths: list[str]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*.xml") if p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(raw)
    return files


def _load_schemas(args):
    try:
        return load_schema_set(tuple(args.schema_dir))
    except FileNotFoundError as exc:
        print(f"komut: {exc}", file=sys.stderr)
        return None


def cmd_validate(args) -> int:
    try:
        files = _files(args.paths)
    except FileNotFoundError as exc:
        print(f"komut validate: no such file or folder: {exc}", file=sys.stderr)
        return USAGE_ERROR
    schemas = _load_schemas(args)
    if schemas is None:
        return USAGE_ERROR
    validator = Validator(schemas)
    all_valid = True
    for path in files:
        data = path.read_bytes()
        result = validator.validate(data)
        all_valid &= result.valid
        explanations = []
        if args.explain and "T02" in result.codes:
            from gateway.explain import explain

            explanations = explain(data, schemas)
        if args.json:
            print(
                json.dumps(
                    {
                        "path": str(path),
                        "valid": result.valid,
                        "type": result.msg_type,
                        "problems": [p.to_dict() for p in result.problems],
                        **({"explanations": [e.to_dict() for e in explanations]} if args.explain else {}),
                    },
                    ensure_ascii=False,
                )
            )
        else:
            label = f" ({result.msg_type})" if result.msg_type else ""
            print(f"{path}: {'valid' if result.valid else 'INVALID'}{label}")
            for problem in result.problems:
                print(f"  {problem.severity.upper()} {problem.describe()}")
            for explanation in explanations:
                print(f"  why: {explanation.reason} (at {explanation.path})")
    return 0 if all_valid else 1


def mask(value: str) -> str:
    """Patient identifiers stay out of plain output unless asked for: keep the first six digits."""
    return value[:6] + "*" * max(0, len(value) - 6) if value else value


def _address(address: Address) -> list[dict]:
    return [{"name": lvl.name, "kind": str(lvl.kind), "her_id": lvl.her_id} for lvl in address.levels]


def _patient(patient: Patient | None, show: bool) -> dict | None:
    if patient is None:
        return None
    return {
        "name": " ".join(p for p in (patient.given_name, patient.middle_name, patient.family_name) if p),
        "date_of_birth": patient.date_of_birth,
        "sex": patient.sex,
        "idents": [{"type": i.type, "id": i.id if show else mask(i.id)} for i in patient.idents],
    }


def facts(message: Message, show_patient: bool = False) -> dict:
    out = {
        "format": message.kind.title,
        "namespace": message.kind.namespace,
        "type": message.msg_type,
        "type_text": message.msg_type_text,
        "msg_id": message.msg_id,
        "gen_date": message.gen_date,
        "mig_version": message.mig_version,
        "sender": _address(message.sender),
        "receiver": _address(message.receiver),
        "copies": [{"role": c.role, "address": _address(c.address)} for c in message.copies],
        "patient": _patient(message.patient, show_patient),
        "conversation": (
            {"parent": message.conversation.parent, "conversation": message.conversation.conversation}
            if message.conversation
            else None
        ),
        "documents": [
            {
                "connection": d.connection,
                "msg_type": d.msg_type,
                "mime_type": d.mime_type,
                "description": d.description,
                "content": f"{{{d.content_namespace}}}{d.content_root}" if d.content_root else None,
                "content_kind": (
                    message.content_kind.title if message.content_kind and not d.is_attachment else None
                ),
            }
            for d in message.documents
        ],
    }
    if message.apprec:
        a = message.apprec
        out["apprec"] = {
            "status": str(getattr(a.status, "value", a.status)),
            "status_text": getattr(a.status, "text", ""),
            "errors": [{"code": e.code, "text": e.text, "detail": e.detail} for e in a.errors],
            "original": {
                "msg_id": a.original_msg_id,
                "type": a.original_msg_type,
                "issue_date": a.original_issue_date,
            },
            "sender_role": a.sender_role,
        }
    return out


def _print_facts(f: dict) -> None:
    print(f"Format:       {f['format']}")
    print(f"Type:         {f['type']} ({f['type_text']})")
    print(f"MsgId:        {f['msg_id']}")
    print(f"GenDate:      {f['gen_date']}")
    for role in ("sender", "receiver"):
        chain = " / ".join(f"{lvl['name']} [HER {lvl['her_id']}]" for lvl in f[role])
        print(f"{role.capitalize() + ':':<14}{chain}")
    for copy in f["copies"]:
        chain = " / ".join(f"{lvl['name']} [HER {lvl['her_id']}]" for lvl in copy["address"])
        print(f"Copy ({copy['role']}):   {chain}")
    if f["patient"]:
        ids = ", ".join(f"{i['type']} {i['id']}" for i in f["patient"]["idents"])
        print(f"Patient:      {f['patient']['name']} {ids}".rstrip())
    if f["conversation"]:
        print(f"Conversation: {f['conversation']['conversation']} (parent {f['conversation']['parent']})")
    for doc in f["documents"]:
        what = doc["content_kind"] or doc["content"] or doc["mime_type"] or doc["msg_type"]
        print(
            f"Document:     {doc['msg_type']} {what}"
            + (f" - {doc['description']}" if doc["description"] else "")
        )
    if "apprec" in f:
        a = f["apprec"]
        print(f"Status:       {a['status']} {a['status_text']}")
        for e in a["errors"]:
            print(f"Error:        {e['code']} {e['text']} {e['detail']}".rstrip())
        print(
            f"Answers:      {a['original']['type']} {a['original']['msg_id']} ({a['original']['issue_date']})"
        )


def cmd_inspect(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"komut inspect: no such file: {path}", file=sys.stderr)
        return USAGE_ERROR
    try:
        message = read_message(parse_xml(path.read_bytes()))
    except InvalidMessage as exc:
        for problem in exc.problems:
            print(f"{path}: {problem.describe()}", file=sys.stderr)
        return 1
    f = facts(message, args.show_patient)
    if args.json:
        print(json.dumps(f, ensure_ascii=False, indent=2))
    else:
        _print_facts(f)
    return 0


def cmd_schemas(args) -> int:
    schemas = _load_schemas(args)
    if schemas is None:
        return USAGE_ERROR
    rows = sorted(schemas.entries.values(), key=lambda e: e.namespace)
    if args.json:
        for e in rows:
            print(
                json.dumps(
                    {"namespace": e.namespace, "file": str(e.path), "source": e.source, "title": e.title}
                )
            )
    else:
        width = max(len(e.namespace) for e in rows)
        for e in rows:
            print(f"{e.namespace:<{width}}  {e.source:<9}  {e.path}")
    for note in schemas.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0
