"""`komut route FILE`: validate a message, route it, and explain the decision.

Without `--config` the decision is the one a gateway of the demo layout would make: the gateway
that serves the message's sender (or `--gateway NAME`), the demo gateways' peer URLs, and one
folder-connected local system per level-1 party that gateway serves (`systems/<her_id>/in`, as
`komut demo` lays it out). With `--config` the router is built exactly as the gateway builds it.

Exit codes: 0 routable, 1 refused or invalid, 2 usage errors (no such file, a configuration or
registry that cannot be read, no way to tell which gateway is routing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TextIO

from gateway.config import ConfigError, load_config
from gateway.registry import Registry, RegistryError, RegistrySource
from gateway.routing import (
    Decision,
    LocalEndpoint,
    Route,
    Router,
    build_router,
    content_version,
    describe_policy,
    local_endpoints,
)
from gateway.schemas import load_schema_set
from gateway.validation import ValidationResult, Validator
from message_types.codes import RECEIVER_ROLES
from message_types.model import Message

ROUTABLE = 0
REFUSED = 1
USAGE_ERROR = 2


class UsageError(Exception):
    pass


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "route",
        help="validate a message and explain how it would be routed",
        description="Validate a message file, route it, and explain the decision: receivers, role, "
        "transport, endpoint, local system or peer gateway, protection policy, and any refusal with "
        "its AppRec error code. Exit 0 routable, 1 refused or invalid, 2 usage error.",
    )
    p.add_argument("file", metavar="FILE", type=Path, help="the message (MsgHead, AppRec, ...)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--gateway",
        metavar="NAME",
        help="the gateway that routes (without --config; default: the one that serves the sender)",
    )
    p.add_argument("--config", metavar="FILE", type=Path, help="route as the gateway with this configuration")
    p.add_argument(
        "--registry",
        metavar="FILE",
        type=Path,
        help="registry TOML file (default: the configuration's, else the embedded demo network)",
    )
    p.add_argument("--cert-dir", metavar="DIR", type=Path, help="directory certificate paths are resolved in")
    p.set_defaults(func=cmd_route)


def cmd_route(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    try:
        report = route_file(args)
    except UsageError as exc:
        print(f"komut route: {exc}", file=err)
        return USAGE_ERROR
    if args.json:
        print(json.dumps(report, ensure_ascii=False, indent=2), file=out)
    else:
        print_report(report, out)
    return ROUTABLE if report["routable"] else REFUSED


# --- the decision ------------------------------------------------------------------------------------


def route_file(args: argparse.Namespace) -> dict:
    """Everything `komut route` prints, as one JSON-able dict."""
    if not args.file.is_file():
        raise UsageError(f"no such file: {args.file}")
    config = None
    if args.config is not None:
        try:
            config = load_config(args.config)
        except (ConfigError, KeyError, ValueError) as exc:
            raise UsageError(f"cannot read configuration {args.config}: {exc}") from None
        if args.gateway is not None and args.gateway != config.name:
            raise UsageError(
                f"--gateway {args.gateway} contradicts {args.config}, which configures gateway {config.name}"
            )
    source = RegistrySource(
        args.registry or (config.registry_file if config else None),
        args.cert_dir or (config.cert_dir if config else None),
    )
    try:
        registry = source.load()
    except RegistryError as exc:
        problems = "; ".join(str(p) for p in exc.problems[:5])
        raise UsageError(f"registry {source.describe()} refused: {problems}") from None
    try:
        schemas = load_schema_set(config.schema_dirs if config else ())
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    result = Validator(schemas).validate(args.file.read_bytes())
    report = _message_facts(args.file, result, registry)
    report["registry"] = source.describe()
    if not result.valid or result.message is None:
        report.update(routable=False, gateway=None, routes=[], notes=[])
        report["explanation"] = [f"INVALID {p.describe()}" for p in result.errors]
        return report
    message = result.message
    if config is not None:
        router = build_router(config, registry, local_endpoints(config))
        chosen = f"configured in {args.config}"
    else:
        name, chosen = _demo_gateway(args.gateway, message, registry)
        router = demo_router(registry, name)
    decision = router.route(message)
    report["gateway"] = router.gateway_name
    report["gateway_chosen"] = chosen
    report["routable"] = decision.ok
    report["routes"] = [_route_dict(registry, route) for route in decision.routes]
    report["notes"] = list(decision.notes)
    report["problems"] += [p.to_dict() for p in decision.problems]
    report["explanation"] = explanation(registry, router, decision)
    return report


def _demo_gateway(requested: str | None, message: Message, registry: Registry) -> tuple[str, str]:
    known = sorted({p.endpoint.gateway for p in registry if p.endpoint and p.endpoint.gateway})
    if requested is not None:
        if requested not in known:
            raise UsageError(
                f"--gateway {requested}: the registry names no such gateway (it has {', '.join(known)})"
            )
        return requested, "--gateway"
    her = message.sender.her_id
    endpoint = registry.endpoint(her) if her is not None and her in registry else None
    if endpoint is None or endpoint.gateway is None:
        raise UsageError(
            f"cannot tell which gateway serves the sender (HER-id {her}) from the registry; "
            f"name one with --gateway ({', '.join(known)})"
        )
    return endpoint.gateway, f"the gateway that serves the sender {her}"


def demo_router(registry: Registry, gateway: str) -> Router:
    """The router of demo gateway `gateway` as `komut demo` configures it."""
    from gateway.demo.setup import peer_urls, system_folder, systems_of

    names = {s.her_id: s.name for s in systems_of(Path())}
    local = {
        party.her_id: LocalEndpoint(
            names.get(party.her_id, f"{party.name} local system"),
            "folder",
            str(system_folder(Path(), party.her_id) / "in"),
        )
        for party in registry
        if party.parent is None and party.endpoint is not None and party.endpoint.gateway == gateway
    }
    return Router(registry, gateway_name=gateway, gateway_urls=peer_urls(), local_systems=local)


def _party(registry: Registry, her: int | None) -> dict:
    if her is None or her not in registry:
        return {"her_id": her, "name": None, "kind": None}
    return {"her_id": her, "name": registry.display_name(her), "kind": str(registry.get(her).kind)}


def _message_facts(path: Path, result: ValidationResult, registry: Registry) -> dict:
    message = result.message
    return {
        "file": str(path),
        "valid": result.valid,
        "type": message.msg_type if message else None,
        "type_text": message.msg_type_text if message else None,
        "format": message.kind.title if message else (result.kind.title if result.kind else None),
        "content": message.content_kind.title if message and message.content_kind else None,
        "version": content_version(message) if message else None,
        "msg_id": message.msg_id if message else None,
        "sender": _party(registry, message.sender.her_id) if message else None,
        "receiver": _party(registry, message.receiver.her_id) if message else None,
        "copies": [_party(registry, c.address.her_id) | {"role": c.role} for c in message.copies]
        if message
        else [],
        "problems": [p.to_dict() for p in result.problems],
    }


def _route_dict(registry: Registry, route: Route) -> dict:
    via = registry.nearest_with_endpoint(route.receiver_her)
    return {
        "role": route.role,
        "role_text": RECEIVER_ROLES.text(route.role),
        "receiver": _party(registry, route.receiver_her),
        "via": _party(registry, via.her_id if via else None),
        "transport": route.transport,
        "endpoint": route.endpoint,
        "local": route.local,
        "gateway": route.gateway,
        "fifo": route.fifo,
        "protection": route.protection.as_dict() if route.protection else None,
        "why": list(route.why),
    }


def explanation(registry: Registry, router: Router, decision: Decision) -> list[str]:
    """The decision in lines a person reads: one block per delivery, then notes and refusals."""
    lines = []
    for route in decision.routes:
        lines.append(f"{route.role} {route.receiver_her} {registry.display_name(route.receiver_her)}")
        if route.local:
            lines.append(
                f"  local system of this gateway ({router.gateway_name}): {route.transport} {route.endpoint}"
            )
            lines.append("  policy: none, a local delivery is not CMS-protected")
        else:
            lines.append(f"  peer gateway {route.gateway or '-'}: {route.transport} {route.endpoint}")
            lines.append(f"  policy: {describe_policy(route.protection)}")
        lines.append("  why:")
        lines += [f"    - {why}" for why in route.why]
    lines += [f"NOTE {note}" for note in decision.notes]
    lines += [f"REFUSED {p.code} {p.code_text}: {p.message}" for p in decision.problems]
    return lines


# --- printing ----------------------------------------------------------------------------------------


def print_report(report: dict, out: TextIO) -> None:
    print(report["file"], file=out)
    if report["type"]:
        what = f"{report['type']} ({report['type_text']}), {report['format']}"
        if report["content"]:
            what += f" with {report['content']}"
        print(f"  message:  {what}, version {report['version']}", file=out)
    for role in ("sender", "receiver"):
        party = report.get(role)
        if party:
            print(f"  {role + ':':<9} {party['her_id']} {party['name'] or '(not in the registry)'}", file=out)
    print(f"  registry: {report['registry']}", file=out)
    if not report["valid"]:
        print("INVALID: not routed", file=out)
    else:
        print(f"  gateway:  {report['gateway']} ({report['gateway_chosen']})", file=out)
        for problem in report["problems"]:
            if problem["severity"] == "warning":
                print(f"  warning:  {problem['code']} {problem['message']}", file=out)
        n = len(report["routes"])
        print(
            f"ROUTABLE: {n} deliver{'y' if n == 1 else 'ies'}" if report["routable"] else "REFUSED",
            file=out,
        )
    for line in report["explanation"]:
        print(f"  {line}", file=out)
