"""The router: who receives a message, over which transport, with which protection, and why.

Pure decisions over a registry snapshot and this gateway's configuration. A level-2 HER-id
(service or person) routes through the nearest ancestor that has an endpoint; copy receivers
(OtherReceiver with role COP) become deliveries of their own. Every decision carries the
reasons, so `komut route` and the operator UI can explain it.

The checks run in the order a human would ask: does the receiver exist (E21), does the address
hang together, where is it reached (E21), does it accept this message type and version (T10),
and only then can this deployment deliver it (a local system, a peer gateway's address; E21).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import Config
from gateway.registry import ProtectionPolicy, Registry, Transport
from message_types.codes import ErrorCode, ReceiverRole
from message_types.kinds import Family
from message_types.model import Address, Message
from message_types.problems import Problem

# Every transport a registry endpoint can name leads to another organisation, so whatever goes
# over it must be signed and encrypted; the dispatcher protects exactly these. Local systems use
# "folder" or "api", which are deliberately not in the set.
PEER_TRANSPORTS = frozenset(str(t) for t in Transport)


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
    # The receiver's policy from the registry (send cipher, accepted ciphers) for a peer route;
    # None for a local route, which is not CMS-protected.
    protection: ProtectionPolicy | None = None


@dataclass
class Decision:
    routes: list[Route] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    # Receivers named in the message that get no delivery of their own, and why.
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def explain(self) -> list[str]:
        lines = []
        for route in self.routes:
            where = "local system" if route.local else f"peer gateway {route.gateway or route.endpoint}"
            lines.append(f"{route.role} {route.receiver_her} -> {route.transport} {route.endpoint} ({where})")
            lines += [f"    {why}" for why in route.why]
        lines += [f"NOTE {note}" for note in self.notes]
        lines += [f"REFUSED {p.code} {p.code_text}: {p.message}" for p in self.problems]
        return lines


def content_version(message: Message) -> str | None:
    """The version the receiver's capabilities are stated in: the business document's own."""
    if message.kind.family == Family.MSGHEAD:
        return message.content_kind.version if message.content_kind else None
    return message.kind.version


def describe_policy(policy: ProtectionPolicy | None) -> str:
    if policy is None:
        return "the protection layer's default cipher (the registry names no policy for the receiver)"
    name = f"policy {policy.name!r}" if policy.name else "inline policy"
    accepts = ", ".join(sorted(str(c) for c in policy.accept_ciphers))
    return f"{policy.send_cipher}, per the receiver's {name} (accepts {accepts})"


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

    def is_ours(self, her_id: int | None) -> bool:
        endpoint = self.registry.endpoint(her_id) if her_id is not None and her_id in self.registry else None
        return endpoint is not None and endpoint.gateway == self.gateway_name

    def route(self, message: Message, *, inbound: bool = False) -> Decision:
        """Route to the receiver and every copy receiver (COP), each HER-id once.

        `inbound` is for a message that arrived from a peer gateway: the sending gateway delivers
        to each receiver separately, so here only the receivers this gateway serves are routed;
        the others are noted, not refused. It is refused (E21) only if none of them is ours,
        because then a peer is using us as a relay.
        """
        decision = Decision()
        receivers = [(message.receiver, ReceiverRole.PRIMARY.value)]
        for copy in message.copies:
            if copy.is_copy:
                receivers.append((copy.address, ReceiverRole.COPY.value))
            else:
                decision.notes.append(
                    f"OtherReceiver with role {copy.role or '(none)'} ({_describe(copy.address)}) "
                    "is not a copy receiver (COP); no delivery"
                )
        seen: set[int] = set()
        for address, role in receivers:
            her = address.her_id
            if her is not None and her in seen:
                # A copy to the primary receiver (or the same copy twice) must not arrive twice.
                decision.notes.append(
                    f"{_who(role)} {her} is already a receiver of this message; delivered once"
                )
                continue
            if her is not None:
                seen.add(her)
            if inbound and not self.is_ours(her):
                decision.notes.append(
                    f"{_who(role)} {her if her is not None else _describe(address)} is not served by this "
                    f"gateway ({self.gateway_name}); the sending gateway delivers to it"
                )
                continue
            route = self._route_one(message, address, role, decision)
            if route is not None:
                decision.routes.append(route)
        if inbound and not decision.routes and not decision.problems:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"none of the message's receivers is served by this gateway ({self.gateway_name})",
                )
            )
        return decision

    def _route_one(self, message: Message, address: Address, role: str, decision: Decision) -> Route | None:
        who = _who(role)
        registry = self.registry
        her = address.her_id
        if her is None:
            decision.problems.append(
                Problem(ErrorCode.E21, f"the {who} has no HER-id ({_describe(address)})")
            )
            return None
        party = registry.find(her)
        if party is None:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"the {who} HER-id {her} ({_describe(address)}) is not in the address registry",
                )
            )
            return None
        name = registry.display_name(her)
        mismatch = self._chain_mismatch(address, her)
        if mismatch is not None:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"the {who}'s address does not hang together: {mismatch} is not {name} (HER-id {her}) "
                    "or one of its parents in the address registry",
                )
            )
            return None
        why = [f"{who} {her} is {name} ({party.kind})"]
        holder = registry.nearest_with_endpoint(her)
        if holder is None or holder.endpoint is None:
            decision.problems.append(
                Problem(ErrorCode.E21, f"no endpoint for {name} (HER-id {her}) or any of its parents")
            )
            return None
        endpoint = holder.endpoint
        if holder.her_id != her:
            why.append(
                f"reached through {registry.display_name(holder.her_id)} ({holder.her_id}), "
                f"the nearest level with an endpoint: {endpoint.describe()}"
            )
        else:
            why.append(f"has its own endpoint: {endpoint.describe()}")
        refusal = self._capability_refusal(message, her, name)
        if refusal is not None:
            decision.problems.append(refusal)
            return None
        why.append(f"accepts {message.msg_type} {content_version(message)}")
        fifo = self.fifo_all or her in self.fifo_receivers
        if endpoint.gateway is not None and endpoint.gateway == self.gateway_name:
            local = self.local_endpoint(her)
            if local is None:
                decision.problems.append(
                    Problem(
                        ErrorCode.E21,
                        f"{name} (HER-id {her}) is served by this gateway ({self.gateway_name}), "
                        "but no local system is connected for it",
                    )
                )
                return None
            why.append(
                f"gateway {endpoint.gateway} is this gateway: delivered to local system {local.system} "
                f"over {local.transport}, without CMS protection"
            )
            if fifo:
                why.append("delivered in order (FIFO) within its conversation")
            return Route(her, role, local.transport, local.address, True, self.gateway_name, fifo, tuple(why))
        url = (self.gateway_urls.get(endpoint.gateway) if endpoint.gateway else None) or endpoint.address
        if not url:
            decision.problems.append(
                Problem(
                    ErrorCode.E21,
                    f"gateway {endpoint.gateway!r}, which serves {name} (HER-id {her}), "
                    "has no address in this gateway's configuration",
                )
            )
            return None
        policy = registry.protection(her)
        why.append(
            f"sent to peer gateway {endpoint.gateway} over {endpoint.transport}"
            if endpoint.gateway
            else f"sent over {endpoint.transport} to the registry's address"
        )
        why.append(f"signed and encrypted with {describe_policy(policy)}")
        if fifo:
            why.append("delivered in order (FIFO) within its conversation")
        return Route(
            her, role, str(endpoint.transport), url, False, endpoint.gateway, fifo, tuple(why), policy
        )

    def _chain_mismatch(self, address: Address, her: int) -> str | None:
        """The first outer level of the address that is not `her`'s organisation or a parent.

        The deepest HER-id decides the route, so an address like "Drammen kommune / Somatikk plo
        meldingsmottak (of a hospital)" would otherwise be delivered to the hospital although the
        sender named the municipality: refuse it rather than guess which level was meant.
        """
        lineage = {p.her_id for p in self.registry.lineage(her)}
        for level in address.levels:
            raw = (level.her_id or "").strip()
            if raw.isdigit() and int(raw) not in lineage:
                return f"{level.name or 'a level'} (HER-id {int(raw)})"
        return None

    def _capability_refusal(self, message: Message, her: int, name: str) -> Problem | None:
        version = content_version(message)
        if version is None:
            # Without the business document's version the capability cannot be checked.
            return Problem(
                ErrorCode.T10,
                f"cannot tell the version of the {message.msg_type} business document, "
                f"so it cannot be checked against what {name} (HER-id {her}) accepts",
            )
        if self.registry.accepts(her, message.msg_type, version):
            return None
        accepted = self.registry.accepted(her)
        by_type = accepted.by_type() if accepted is not None else {}
        if message.msg_type in by_type:
            detail = f"it accepts {message.msg_type} version(s) {', '.join(by_type[message.msg_type])}"
        elif by_type:
            detail = "it accepts " + "; ".join(f"{t} {'/'.join(v)}" for t, v in by_type.items())
        else:
            detail = "it accepts no messages"
        return Problem(
            ErrorCode.T10,
            f"{name} (HER-id {her}) does not accept {message.msg_type} version {version}: {detail}",
        )


def _who(role: str) -> str:
    return "copy receiver" if role == ReceiverRole.COPY else "receiver"


def _describe(address: Address) -> str:
    return address.describe() or "empty address"


# --- built from a gateway's configuration ------------------------------------------------------------


def local_endpoints(config: Config) -> dict[int, LocalEndpoint]:
    """The local systems of a configuration, keyed by the HER-id each serves.

    The same layout the folder transport uses (`gateway.service.folder_layout`): a system serving
    one HER-id uses its folder directly, one serving several gets a sub-folder per HER-id. An
    API-connected system's address is the HER-id whose mailbox it reads (`gateway.api`).
    """
    endpoints: dict[int, LocalEndpoint] = {}
    for system in config.local_systems:
        if system.transport == "api":
            for her in system.her_ids:
                endpoints[her] = LocalEndpoint(system.name, "api", str(her))
            continue
        if system.transport != "folder" or system.folder is None:
            continue
        for her in system.her_ids:
            root = system.folder if len(system.her_ids) == 1 else system.folder / str(her)
            endpoints[her] = LocalEndpoint(system.name, "folder", str(root / "in"))
    return endpoints


def build_router(config: Config, registry: Registry, local_systems: dict[int, LocalEndpoint]) -> Router:
    """The router a gateway with this configuration uses over `registry`."""
    d = config.delivery
    return Router(
        registry,
        gateway_name=config.name,
        gateway_urls=config.gateways,
        local_systems=local_systems,
        fifo_receivers=frozenset(h for h, o in d.overrides.items() if o.get("fifo")),
        fifo_all=d.fifo,
    )
