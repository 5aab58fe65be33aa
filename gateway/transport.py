"""The transport interface the core owns. Adapters (HTTPS between gateways, folders for local
systems, AMQP, the local-system API) implement it; the dispatcher and the pipeline only see this.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class Outcome(enum.StrEnum):
    DELIVERED = "delivered"  # the other side has it durably (a transport receipt)
    TRANSIENT = "transient"  # try again later: network down, 5xx, timeout, broker away
    PERMANENT = "permanent"  # it will never work as it is: refused, unknown receiver at the peer


@dataclass(frozen=True)
class Outgoing:
    """One delivery attempt. `body` is what goes on the wire: CMS for peers, plain XML for local systems."""

    delivery_id: int
    endpoint: str  # the transport's address for the receiver (URL, folder path, queue name)
    body: bytes
    content_type: str
    # Routing facts that carry no patient data: from/to HER-ids, message type and id.
    sender_her: int | None
    receiver_her: int
    msg_type: str
    msg_id: str
    filename: str = ""  # a suggested file name for folder-like transports


@dataclass(frozen=True)
class SendResult:
    outcome: Outcome
    detail: str = ""  # the reason a person can act on, or the receipt's text
    receipt: dict = field(default_factory=dict)
    retry_after: float | None = None  # seconds, when the peer said so


@dataclass(frozen=True)
class PeerReceipt:
    """What the receiving gateway answers a peer: it has the message durably (or already had it)."""

    accepted: bool
    status: int  # HTTP-like: 200 stored, 200 duplicate, 400/403/422 refused, 503 try later
    detail: str = ""
    duplicate: bool = False
    message_ref: str = ""  # the receiver's own reference for the message
    retry_after: float | None = None


@dataclass(frozen=True)
class SubmitResult:
    """What a local system is told about a message it handed in."""

    accepted: bool
    message_id: int | None
    detail: str = ""
    duplicate: bool = False
    problems: list[dict] = field(default_factory=list)
    status: int = 200  # HTTP-like, for API-shaped front doors


class Inbound(Protocol):
    """The pipeline's front doors, called by transports that receive."""

    async def from_peer(self, body: bytes, routing: dict, source: str) -> PeerReceipt:
        """A protected (CMS) message from another gateway. `routing` holds the non-patient headers."""

    async def from_local(self, data: bytes, source: str, sender_her: int | None = None) -> SubmitResult:
        """A plain business document from one of our local systems (folder, API, ...)."""


class Transport(Protocol):
    name: str

    async def start(self, inbound: Inbound) -> None:
        """Start receiving (servers, folder watchers, consumers), feeding `inbound`."""

    async def send(self, item: Outgoing) -> SendResult: ...

    async def stop(self) -> None: ...
