"""The router: who receives a message, over which transport, with which protection, and why.

Pure decisions over a registry snapshot and this gateway's configuration. A level-2 HER-id
(service or person) routes through the nearest ancestor that has an endpoint; copy receivers
(OtherReceiver with role COP) become deliveries of their own. Every decision carries the
reasons, so `komut route` and the operator UI can explain it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.registry import Registry
from message_types.codes import ErrorCode, ReceiverRole
from message_types.kinds import Family
from message_types.model import Address, Message
from message_types.problems import Problem

PEER_TRANSPORTS = frozenset({"https", "amqp"})


@dataclass(frozen=True)
class LocalEndpoint:
    """How this gateway reaches one of its own local systems."""

    system: str
    transport: str  # "folder" or "api"
    address: str  # the in-folder, or the HER-id mailbox for the API


@dataclass(frozen=True)
class Route:
    receiver_her: int
    role: str  # 8112: PRIM or COP
    transport: str
    endpoint: str
    local: bool  # to one of this gateway's own local systems (no CMS on the way)
    gateway: str | None = None  # the logical gateway that serves the receiver
    fifo: bool = False
    why: tuple[str, ...] = ()


@dataclass
class Decision:
    routes: list[Route] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def explain(self) -> list[str]:
        lines = []
        for route in self.routes:
            lines.append(
                f"{route.role} {route.receiver_her} -> {route.transport} {route.endpoint}"
                + (" (local system)" if route.local else "")
            )
            lines += [f"    {why}" for why in route.why]
        lines += [f"REFUSED {p.code} {p.code_text}: {p.message}" for p in self.problems]
        return lines


def content_version(message: Message) -> str | None:
    """The version the receiver's capabilities are stated in: the business document's own."""
    if message.kind.family == Family.MSGHEAD:
        return message.content_kind.version if message.content_kind else None
    return message.kind.version


class Router:
    def __init__(
        self,
        registry: Registry,
        *,
        gateway_name: str,
        gateway_urls: dict[str, str],
        local_systems: dict[int, LocalEndpoint],
        fifo_receivers: frozenset[int] = frozenset(),
        fifo_all: bool = False,
    ):
        self.registry = registry
        self.gateway_name = gateway_name
        self.gateway_urls = gateway_urls
        self.local_systems = local_systems  # keyed by the HER-id the system serves (subtree root)
        self.fifo_receivers = fifo_receivers
        self.fifo_all = fifo_all

    def local_endpoint(self, her_id: int) -> LocalEndpoint | None:
        for party in self.registry.lineage(her_id):
            if party.her_id in self.local_systems:
                return self.local_systems[party.her_id]
        return None

    def is_ours(self, her_id: int) -> bool:
        endpoint = self.registry.endpoint(her_id) if her_id in self.registry else None
        return endpoint is not None and endpoint.gateway == self.gateway_name

    def route(self, message: Message) -> Decision:
        decision = Decision()
        receivers = [(message.receiver, ReceiverRole.PRIMARY.value)]
        receivers += [(c.address, c.role) for c in message.copies if c.role == ReceiverRole.COPY]
        seen: set[int] = set()
        for address, role in receivers:
            route = self._route_one(message, address, role, decision)
            if route is not None and route.receiver_her not in seen:
                seen.add(route.receiver_her)
                decision.routes.append(route)
        return decision

    def _route_one(self, message: Message, address: Address, role: str, decision: Decision) -> Route | None:
        who = "copy receiver" if role == ReceiverRole.COPY else "receiver"
        her = address.her_id
        if her is None:
            decision.problems.append(
                Problem(ErrorCode.E21, f"the {who} has no HER-id ({address.describe()})")
            )
            return None
        party = self.registry.find(her)
        if party is None:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"the {who} HER-id {her} ({address.describe()}) is not in the address registry",
                )
            )
            return None
        why = [f"{who} {her} is {party.name} ({party.kind}) under {self.registry.level1(her).name}"]
        version = content_version(message)
        if not self.registry.accepts(her, message.msg_type, version):
            accepted = self.registry.accepted(her)
            offered = ", ".join(accepted.by_type().get(message.msg_type, [])) if accepted else ""
            detail = f"it accepts version(s) {offered}" if offered else "it does not accept this message type"
            decision.problems.append(
                Problem(
                    ErrorCode.T10,
                    f"{party.name} (HER-id {her}) does not accept {message.msg_type} version {version}: {detail}",
                )
            )
            return None
        why.append(f"accepts {message.msg_type} {version}")
        holder = self.registry.nearest_with_endpoint(her)
        endpoint = self.registry.endpoint(her)
        if endpoint is None or holder is None:
            decision.problems.append(
                Problem(ErrorCode.E21, f"no endpoint for HER-id {her} or any of its parents")
            )
            return None
        if holder.her_id != her:
            why.append(f"routes through {holder.name} ({holder.her_id}), the nearest level with an endpoint")
        fifo = self.fifo_all or her in self.fifo_receivers
        if endpoint.gateway == self.gateway_name:
            local = self.local_endpoint(her)
            if local is None:
                decision.problems.append(
                    Problem(
                        ErrorCode.E21, f"HER-id {her} belongs to this gateway, but no local system serves it"
                    )
                )
                return None
            why.append(f"served here by local system {local.system} over {local.transport}")
            return Route(her, role, local.transport, local.address, True, self.gateway_name, fifo, tuple(why))
        url = self.gateway_urls.get(endpoint.gateway or "") or endpoint.address
        if not url:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"gateway {endpoint.gateway!r} serving HER-id {her} has no address configured",
                )
            )
            return None
        why.append(f"served by gateway {endpoint.gateway or url} over {endpoint.transport}")
        return Route(her, role, str(endpoint.transport), url, False, endpoint.gateway, fifo, tuple(why))
