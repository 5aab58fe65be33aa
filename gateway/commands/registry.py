"""`komut registry list|show|check`: inspect and check the address registry.

All three take `--registry FILE` (default: the embedded demo network) and `--cert-dir DIR`
(where certificate paths are resolved; default: the registry file's directory, or for the
embedded network none, in which case certificates are named but not read).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.registry import (
    CertificateFile,
    Party,
    Problem,
    Registry,
    RegistryError,
    RegistrySource,
    Severity,
    UnknownParty,
)
from gateway.registry.certs import CertificateReadError, check_certificates, read_crl, read_optional

OK = 0
FAILED = 1


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "registry",
        help="inspect and check the address registry",
        description="Inspect and check komut's address registry (HER-id → party, endpoint, certificates).",
    )
    commands = parser.add_subparsers(dest="registry_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: _usage(parser))

    list_ = commands.add_parser(
        "list", help="list every party", description="List every communication party."
    )
    list_.add_argument("--json", action="store_true", help="one JSON object per line per party")
    _add_common(list_)
    list_.set_defaults(func=cmd_list)

    show = commands.add_parser(
        "show", help="show one party", description="Show one party with inherited values."
    )
    show.add_argument("her_id", metavar="HERID", type=_her_id, help="HER-id of the party")
    show.add_argument("--json", action="store_true", help="print one JSON object")
    _add_common(show)
    show.set_defaults(func=cmd_show)

    check = commands.add_parser(
        "check",
        help="check a registry file and its certificates",
        description="Check a registry file: exit 1 listing every problem; warn about certificates "
        "expiring within 30 days.",
    )
    check.add_argument("--json", action="store_true", help="one JSON object per line per problem")
    _add_common(check)
    check.set_defaults(func=cmd_check)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--registry",
        metavar="FILE",
        type=Path,
        help="registry TOML file (default: the embedded demo network)",
    )
    parser.add_argument(
        "--cert-dir",
        metavar="DIR",
        type=Path,
        help="directory certificate paths are resolved in (default: the registry file's directory)",
    )


def _her_id(text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise argparse.ArgumentTypeError(f"not a HER-id: {text!r}")
    return int(text)


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(args: argparse.Namespace, err: TextIO) -> Registry | None:
    source = RegistrySource(args.registry, args.cert_dir)
    try:
        return source.load()
    except RegistryError as exc:
        print(f"registry {source.describe()} refused: {len(exc.problems)} problem(s)", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return None


# -- list ----------------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    registry = _load(args, err)
    if registry is None:
        return FAILED
    for party in registry:
        if args.json:
            print(json.dumps(party_summary(registry, party), ensure_ascii=False), file=out)
        else:
            depth = len(registry.ancestors(party.her_id))
            extra = f"  [{party.category}]" if party.category else ""
            print(f"{'  ' * depth}{party.her_id}  {party.kind:<12}  {party.name}{extra}", file=out)
    return OK


def party_summary(registry: Registry, party: Party) -> dict[str, Any]:
    """The JSON object `list --json` prints: the party's own fields plus effective (inherited)
    values, so a consumer needs no hierarchy logic of its own."""
    her_id = party.her_id
    municipality = registry.municipality_of(her_id)
    area = registry.area_of(her_id)
    endpoint = registry.endpoint(her_id)
    holder = registry.certificate_holder(her_id)
    protection = registry.protection(her_id)
    accepted = registry.accepted(her_id)
    return {
        "her_id": her_id,
        "name": party.name,
        "display_name": registry.display_name(her_id),
        "kind": str(party.kind),
        "parent": party.parent,
        "level1": registry.level1(her_id).her_id,
        "category": str(party.category) if party.category else None,
        "org_no": registry.org_no(her_id),
        "municipality": municipality.name if municipality else None,
        "municipality_her_id": municipality.her_id if municipality else None,
        "area": area.key if area else None,
        "area_name": area.name if area else None,
        "endpoint": endpoint.as_dict() if endpoint else None,
        "certificate_holder": holder.her_id if holder else None,
        "protection": (protection.name or "inline") if protection else None,
        "accepts": list(accepted.profiles) if accepted else None,
    }


# -- show ----------------------------------------------------------------------------------------


def cmd_show(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    registry = _load(args, err)
    if registry is None:
        return FAILED
    try:
        party = registry.get(args.her_id)
    except UnknownParty as exc:
        print(f"{exc} in registry {registry.source}", file=err)
        return FAILED
    detail = party_detail(registry, party)
    if args.json:
        print(json.dumps(detail, ensure_ascii=False, indent=2), file=out)
        return OK
    _print_detail(registry, party, detail, out)
    return OK


def party_detail(registry: Registry, party: Party) -> dict[str, Any]:
    her_id = party.her_id
    detail = party_summary(registry, party)
    accepted = registry.accepted(her_id)
    protection = registry.protection(her_id)
    certs = registry.certificates(her_id)
    detail.update(
        {
            "ancestors": [p.her_id for p in registry.ancestors(her_id)],
            "children": [p.her_id for p in registry.children(her_id)],
            "inherited_from": _inherited_from(registry, party),
            "protection_policy": protection.as_dict() if protection else None,
            "accepted_messages": accepted.by_type() if accepted else None,
            "certificates": (
                {slot: _cert_json(f) for slot, f in _slots(certs) if f is not None} if certs else None
            ),
        }
    )
    return detail


def _inherited_from(registry: Registry, party: Party) -> dict[str, int]:
    """For each inherited setting, the ancestor it comes from."""
    out = {}
    for attr in ("org_no", "endpoint", "protection", "accepts", "certificates"):
        if getattr(party, attr) is None:
            for ancestor in registry.ancestors(party.her_id):
                if getattr(ancestor, attr) is not None:
                    out[attr] = ancestor.her_id
                    break
    return out


def _slots(certs: Any) -> list[tuple[str, CertificateFile | None]]:
    return [
        ("sign", certs.sign),
        ("enc", certs.enc),
        ("next_sign", certs.next_sign),
        ("next_enc", certs.next_enc),
    ]


def _cert_json(file: CertificateFile) -> dict[str, Any]:
    cert = file.certificate
    if cert is None:
        return {"path": str(file.path), "loaded": False}
    return {
        "path": str(file.path),
        "loaded": True,
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": file.sha256(),
    }


def _print_detail(registry: Registry, party: Party, detail: dict[str, Any], out: TextIO) -> None:
    inherited = detail["inherited_from"]

    def origin(attr: str) -> str:
        return f"  (from {inherited[attr]})" if attr in inherited else ""

    def name_of(her_id: int | None) -> str:
        return f"{her_id} {registry.get(her_id).name}" if her_id is not None else "-"

    rows = [
        ("HER-id", str(party.her_id)),
        ("Name", party.name),
        ("Full name", detail["display_name"]),
        ("Kind", detail["kind"]),
        ("Parent", name_of(party.parent)),
        ("Level 1", name_of(detail["level1"])),
        ("Category", detail["category"] or "-"),
        ("Org. number", (detail["org_no"] or "-") + origin("org_no")),
        ("Municipality", name_of(detail["municipality_her_id"])),
        ("Area", f"{detail['area_name']} ({detail['area']})" if detail["area"] else "-"),
    ]
    endpoint = registry.endpoint(party.her_id)
    rows.append(("Endpoint", (endpoint.describe() if endpoint else "- (not reachable)") + origin("endpoint")))
    policy = registry.protection(party.her_id)
    if policy:
        ciphers = ", ".join(sorted(str(c) for c in policy.accept_ciphers))
        text = f"{policy.name or 'inline'}: sends {policy.send_cipher}; accepts {ciphers}; "
        text += f"SHA-1 {'accepted' if policy.accept_sha1 else 'refused'}"
        rows.append(("Protection", text + origin("protection")))
    else:
        rows.append(("Protection", "-"))
    for label, value in rows:
        print(f"{label:<14}{value}", file=out)

    certs = detail["certificates"]
    holder = detail["certificate_holder"]
    print(f"{'Certificates':<14}{name_of(holder) if certs else '-'}", file=out)
    for slot, info in (certs or {}).items():
        if not info["loaded"]:
            print(f"  {slot:<10}  {info['path']}  (not read: no --cert-dir)", file=out)
        else:
            print(f"  {slot:<10}  {info['path']}", file=out)
            print(f"  {'':<10}  subject {info['subject']}", file=out)
            print(f"  {'':<10}  valid {info['not_before'][:10]} .. {info['not_after'][:10]}", file=out)
            print(f"  {'':<10}  sha256 {info['sha256']}", file=out)

    accepted = detail["accepted_messages"]
    profiles = ", ".join(detail["accepts"] or [])
    head = f"profiles {profiles}" if profiles else ("inline" if accepted else "nothing")
    print(f"{'Accepts':<14}{head}{origin('accepts')}", file=out)
    for msg_type, versions in (accepted or {}).items():
        print(f"  {msg_type:<28}{', '.join(versions)}", file=out)
    children = registry.children(party.her_id)
    print(f"{'Children':<14}{'-' if not children else ''}", file=out)
    for child in children:
        print(f"  {child.her_id}  {child.kind:<12}  {child.name}", file=out)


# -- check ---------------------------------------------------------------------------------------


def cmd_check(
    args: argparse.Namespace,
    out: TextIO | None = None,
    err: TextIO | None = None,
    now: dt.datetime | None = None,
) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    source = RegistrySource(args.registry, args.cert_dir)
    try:
        registry = source.load()
    except RegistryError as exc:
        _report(exc.problems, args.json, out)
        if not args.json:
            print(f"registry {source.describe()} refused: {len(exc.problems)} problem(s)", file=out)
        return FAILED

    cert_dir = source.effective_cert_dir
    problems: list[Problem] = []
    ca = crl = None
    if cert_dir is not None:
        try:
            ca = read_optional(cert_dir / "ca.pem")
            crl = read_crl(cert_dir / "crl.pem")
        except CertificateReadError as exc:
            problems.append(Problem(None, "cert-dir", str(exc)))
        problems += check_certificates(registry, now=now, ca=ca, crl=crl)
    _report(problems, args.json, out)

    errors = sum(p.severity is Severity.ERROR for p in problems)
    warnings = len(problems) - errors
    if not args.json:
        holders = registry.certificate_holders()
        if cert_dir is None:
            note = "certificates not read (no --cert-dir)"
        else:
            count = sum(f.loaded for p in holders if p.certificates for f in p.certificates.files())
            checked = " against ca.pem" if ca is not None else ""
            note = f"{count} certificate(s) read from {cert_dir}{checked}"
        print(
            f"registry {source.describe()}: {len(registry)} parties, {len(holders)} certificate holders; {note}",
            file=out,
        )
        print(f"{'FAILED' if errors else 'OK'}: {errors} error(s), {warnings} warning(s)", file=out)
    return FAILED if errors else OK


def _report(problems: list[Problem], as_json: bool, out: TextIO) -> None:
    for problem in problems:
        print(json.dumps(problem.as_dict(), ensure_ascii=False) if as_json else str(problem), file=out)


def main(argv: list[str] | None = None) -> int:
    """Run the registry commands on their own (`python -m gateway.commands.registry list`)."""
    parser = argparse.ArgumentParser(prog="komut")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["registry", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
