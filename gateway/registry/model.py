"""The registry's data model: communication parties and the lookups the gateway needs.

Everything here is immutable. A `Registry` is a snapshot: a message being processed keeps using
the snapshot it looked its parties up in, while a reload builds a new one and swaps it in (see
`reload.py`). That is what lets the registry change under a running gateway without a message
seeing half of the old and half of the new file.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType

from cryptography import x509
from cryptography.hazmat.primitives import hashes


class PartyKind(StrEnum):
    """The three kinds of communication party in service-based addressing (HIS 1153)."""

    ORGANISATION = "organisation"
    SERVICE = "service"
    PERSON = "person"


class Category(StrEnum):
    """What sort of enterprise an organisation is; lets the router and the demo find, e.g., "the
    municipality this GP office lies in" without guessing from names (cf. kodeverk 9040)."""

    HOSPITAL_TRUST = "hospital-trust"
    HOSPITAL = "hospital"
    MUNICIPALITY = "municipality"
    GP_OFFICE = "gp-office"


class Transport(StrEnum):
    """How a party's gateway is reached. Kept as a closed set so a typo in the file is refused
    instead of turning into an undeliverable endpoint at the first message."""

    HTTPS = "https"
    AMQP = "amqp"
    SMTP = "smtp"
    FILE = "file"


class Cipher(StrEnum):
    """CMS content-encryption algorithms (CBC), named as `gateway.protection` names them, so a
    registry policy converts to the protection layer's by value (standards.md §7.5)."""

    AES256 = "aes256"
    AES192 = "aes192"
    AES128 = "aes128"
    DES3 = "des3"


@dataclass(frozen=True)
class Endpoint:
    """Where messages for a party are delivered.

    `gateway` is a logical gateway name (the demo runs "hospital" and "municipal"), resolved to a
    concrete address by the deployment's configuration, so the registry carries no host names.
    `address` is a concrete address (URL, queue, mailbox) for parties outside our deployment.
    """

    transport: Transport
    gateway: str | None = None
    address: str | None = None

    def describe(self) -> str:
        target = f"gateway {self.gateway}" if self.gateway else (self.address or "?")
        return f"{self.transport} {target}"

    def as_dict(self) -> dict[str, str]:
        out = {"transport": str(self.transport)}
        if self.gateway:
            out["gateway"] = self.gateway
        if self.address:
            out["address"] = self.address
        return out


@dataclass(frozen=True)
class ProtectionPolicy:
    """The cipher a party encrypts with when it sends, and what it accepts when it receives.

    `name` is the policy's name in the registry file, or None when written inline on a party.
    """

    send_cipher: Cipher
    accept_ciphers: frozenset[Cipher]
    accept_sha1: bool = False
    name: str | None = None

    def accepts_cipher(self, cipher: Cipher) -> bool:
        return cipher in self.accept_ciphers

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "send_cipher": str(self.send_cipher),
            "accept_ciphers": sorted(str(c) for c in self.accept_ciphers),
            "accept_sha1": self.accept_sha1,
        }


@dataclass(frozen=True)
class Acceptance:
    """The message types and versions a party accepts.

    `pairs` holds (kodeverk 8279 code, version). `profiles` keeps the names of the capability
    profiles it was built from, for display only.
    """

    pairs: frozenset[tuple[str, str]]
    profiles: tuple[str, ...] = ()

    def accepts(self, msg_type: str, version: str | None = None) -> bool:
        if version is None:
            return any(t == msg_type for t, _ in self.pairs)
        return (msg_type, version) in self.pairs

    def by_type(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for msg_type, version in sorted(self.pairs):
            out.setdefault(msg_type, []).append(version)
        return out


@dataclass(frozen=True)
class CertificateFile:
    """One certificate as the registry file names it, and the certificate itself once read.

    `certificate` is None when the registry was loaded without a certificate directory (e.g.
    listing the embedded network before `komut pki init` has been run).
    """

    path: Path
    certificate: x509.Certificate | None = field(default=None, compare=False)

    @property
    def loaded(self) -> bool:
        return self.certificate is not None

    def valid_at(self, when: dt.datetime) -> bool:
        cert = self.certificate
        return cert is not None and cert.not_valid_before_utc <= when <= cert.not_valid_after_utc

    def sha256(self) -> str | None:
        cert = self.certificate
        return cert.fingerprint(hashes.SHA256()).hex() if cert is not None else None


@dataclass(frozen=True)
class CertificateSet:
    """A party's enterprise certificates: current signing and encryption certificates, and the
    next ones during a rollover (standards.md §7.4: receivers keep decrypting with the old key
    while senders move to the new certificate)."""

    sign: CertificateFile
    enc: CertificateFile
    next_sign: CertificateFile | None = None
    next_enc: CertificateFile | None = None

    def files(self) -> tuple[CertificateFile, ...]:
        return tuple(f for f in (self.sign, self.enc, self.next_sign, self.next_enc) if f is not None)

    def signing_certificates(self) -> tuple[x509.Certificate, ...]:
        """Certificates a signature from this party may verify against: during a rollover the
        sender may already have switched to the next key."""
        return tuple(
            f.certificate for f in (self.sign, self.next_sign) if f is not None and f.certificate is not None
        )

    def encryption_certificate(self, when: dt.datetime | None = None) -> x509.Certificate | None:
        """The certificate to encrypt for this party: the current one while it is valid, else the
        next one if that is valid (rollover). None if neither is usable at `when`."""
        when = when or dt.datetime.now(dt.UTC)
        for candidate in (self.enc, self.next_enc):
            if candidate is not None and candidate.valid_at(when):
                return candidate.certificate
        return None


@dataclass(frozen=True)
class Area:
    """A local cooperation area (samhandlingsområde) between the hospital and its municipalities."""

    key: str
    number: int
    name: str


@dataclass(frozen=True)
class Party:
    """A communication party, as written in the registry file.

    Fields left None are inherited from ancestors by the `Registry` lookups (endpoint,
    certificates, protection, accepts, org_no, area); the party itself stores only what the file
    says about it, so `komut registry show` can tell own values from inherited ones.
    """

    her_id: int
    name: str
    kind: PartyKind
    parent: int | None = None
    category: Category | None = None
    org_no: str | None = None
    municipality: int | None = None
    area: str | None = None
    endpoint: Endpoint | None = None
    protection: ProtectionPolicy | None = None
    accepts: Acceptance | None = None
    certificates: CertificateSet | None = None


class UnknownParty(KeyError):
    """No party with that HER-id in the registry."""

    def __init__(self, her_id: int) -> None:
        super().__init__(her_id)
        self.her_id = her_id

    def __str__(self) -> str:
        return f"unknown HER-id {self.her_id}"


class Registry:
    """An immutable snapshot of the communication parties, with the lookups routing needs.

    The constructor trusts its input to be consistent (unique HER-ids, known parents, no
    cycles); `load.py` checks that before building one.
    """

    def __init__(
        self,
        parties: Iterable[Party],
        areas: Mapping[str, Area] | None = None,
        *,
        source: str = "",
        files: Iterable[Path] = (),
    ) -> None:
        self._parties: Mapping[int, Party] = MappingProxyType({p.her_id: p for p in parties})
        self._areas: Mapping[str, Area] = MappingProxyType(dict(areas or {}))
        children: dict[int, list[Party]] = {}
        for party in self._parties.values():
            if party.parent is not None:
                children.setdefault(party.parent, []).append(party)
        self._children = {k: tuple(sorted(v, key=lambda p: p.her_id)) for k, v in children.items()}
        #: Where the snapshot came from, for logs and `komut registry check`.
        self.source = source
        #: The files it was built from (registry file, certificates): what the file watcher polls.
        self.files = tuple(files)

    # -- plain lookups -------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._parties)

    def __iter__(self) -> Iterator[Party]:
        """Parties in hierarchy order: each root followed by its descendants, by HER-id."""
        for root in sorted((p for p in self._parties.values() if p.parent is None), key=lambda p: p.her_id):
            yield from self._subtree(root)

    def _subtree(self, party: Party) -> Iterator[Party]:
        yield party
        for child in self._children.get(party.her_id, ()):
            yield from self._subtree(child)

    def __contains__(self, her_id: object) -> bool:
        return her_id in self._parties

    @property
    def areas(self) -> Mapping[str, Area]:
        return self._areas

    def get(self, her_id: int) -> Party:
        """The party with this HER-id; raises `UnknownParty` (a KeyError) if there is none."""
        try:
            return self._parties[her_id]
        except KeyError:
            raise UnknownParty(her_id) from None

    def find(self, her_id: int) -> Party | None:
        return self._parties.get(her_id)

    def children(self, her_id: int) -> tuple[Party, ...]:
        self.get(her_id)
        return self._children.get(her_id, ())

    def ancestors(self, her_id: int) -> tuple[Party, ...]:
        """Parent first, up to the level-1 party; empty for a level-1 party."""
        out: list[Party] = []
        party = self.get(her_id)
        while party.parent is not None:
            party = self.get(party.parent)
            out.append(party)
        return tuple(out)

    def lineage(self, her_id: int) -> tuple[Party, ...]:
        """The party itself followed by its ancestors: the order inherited values are looked up in."""
        return (self.get(her_id), *self.ancestors(her_id))

    def level1(self, her_id: int) -> Party:
        """The level-1 party (virksomhet) this party belongs to, or the party itself."""
        return self.lineage(her_id)[-1]

    def display_name(self, her_id: int) -> str:
        """How to name the party to a human: an organisation by its own name ("Drammen sykehus"),
        a service or person after its parent ("Drammen sykehus, Somatikk plo meldingsmottak").
        Only the parent, because a service name alone is ambiguous (every site has a "Somatikk
        plo meldingsmottak") while the whole chain up to the trust is needlessly long."""
        party = self.get(her_id)
        if party.kind is PartyKind.ORGANISATION or party.parent is None:
            return party.name
        return f"{self.get(party.parent).name}, {party.name}"

    # -- inherited values ----------------------------------------------------------------------

    def _nearest(self, her_id: int, attr: str) -> Party | None:
        for party in self.lineage(her_id):
            if getattr(party, attr) is not None:
                return party
        return None

    def nearest_with_endpoint(self, her_id: int) -> Party | None:
        """The party (itself or an ancestor) whose endpoint messages for `her_id` go to."""
        return self._nearest(her_id, "endpoint")

    def endpoint(self, her_id: int) -> Endpoint | None:
        holder = self.nearest_with_endpoint(her_id)
        return holder.endpoint if holder else None

    def certificate_holder(self, her_id: int) -> Party | None:
        """The nearest ancestor-or-self with certificates. Enterprise certificates belong to the
        organisation number, so services and persons use their organisation's."""
        return self._nearest(her_id, "certificates")

    def certificates(self, her_id: int) -> CertificateSet | None:
        holder = self.certificate_holder(her_id)
        return holder.certificates if holder else None

    def protection(self, her_id: int) -> ProtectionPolicy | None:
        holder = self._nearest(her_id, "protection")
        return holder.protection if holder else None

    def accepted(self, her_id: int) -> Acceptance | None:
        """The message types and versions this party accepts, inherited when not set on it."""
        holder = self._nearest(her_id, "accepts")
        return holder.accepts if holder else None

    def accepts(self, her_id: int, msg_type: str, version: str | None = None) -> bool:
        """Whether the party accepts `msg_type` (kodeverk 8279) at `version` (any version if None)."""
        acceptance = self.accepted(her_id)
        return acceptance is not None and acceptance.accepts(msg_type, version)

    def org_no(self, her_id: int) -> str | None:
        holder = self._nearest(her_id, "org_no")
        return holder.org_no if holder else None

    def municipality_of(self, her_id: int) -> Party | None:
        """The municipality a party is, belongs to, or (for e.g. a GP office) lies in."""
        for party in self.lineage(her_id):
            if party.category is Category.MUNICIPALITY:
                return party
            if party.municipality is not None:
                return self.find(party.municipality)
        return None

    def area_of(self, her_id: int) -> Area | None:
        """The local cooperation area: set on the party or an ancestor, else its municipality's."""
        for party in self.lineage(her_id):
            if party.area is not None:
                return self._areas.get(party.area)
        municipality = self.municipality_of(her_id)
        if municipality is not None and municipality.her_id != her_id:
            return self.area_of(municipality.her_id)
        return None

    # -- whole-registry views ------------------------------------------------------------------

    def by_category(self, category: Category) -> tuple[Party, ...]:
        return tuple(p for p in self if p.category is category)

    def in_area(self, area_key: str) -> tuple[Party, ...]:
        return tuple(p for p in self if (a := self.area_of(p.her_id)) is not None and a.key == area_key)

    def certificate_holders(self) -> tuple[Party, ...]:
        return tuple(p for p in self if p.certificates is not None)
