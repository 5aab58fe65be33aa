"""Typed views of the facts the gateway needs from a message. Pure data, no XML here."""

from __future__ import annotations

import enum
from dataclasses import MISSING, dataclass, field, fields
from datetime import datetime
from typing import Any

from message_types.codes import AppRecStatus, ReceiverRole
from message_types.kinds import DocumentKind


class cached_property:  # noqa: N801 - used like functools.cached_property
    """Computed once per instance, stored in its __dict__ (frozen dataclasses allow that).

    functools.cached_property takes a lock on every first access in Python 3.11, which cost more
    than the values it caches on the validator's path (three per address, per message)."""

    def __init__(self, func) -> None:
        self.func = func
        self.__doc__ = func.__doc__

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, instance, owner=None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value  # an instance attribute now shadows this descriptor
        return value


def quick_init(cls):
    """Give a frozen dataclass an __init__ that fills the instance's __dict__ directly.

    The generated __init__ of a frozen dataclass sets every field through object.__setattr__,
    about 0.2 µs each; the reader builds some twenty of these objects per message, which made their
    construction a quarter of reading an envelope. Instances stay frozen afterwards (assignment still
    raises FrozenInstanceError); equality, hashing, replace() and asdict() are the dataclass's own."""
    namespace: dict[str, Any] = {}
    params, body = [], []
    for f in fields(cls):
        if f.default_factory is not MISSING:
            raise TypeError(f"quick_init does not handle default_factory ({cls.__name__}.{f.name})")
        if f.default is MISSING:
            params.append(f.name)
        else:
            namespace[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
        body.append(f"d[{f.name!r}] = {f.name}")
    source = f"def __init__(self, {', '.join(params)}):\n    d = self.__dict__\n    " + "\n    ".join(body)
    exec(source, namespace)  # noqa: S102 - code generated from the class's own field names, as dataclasses does
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = init
    return cls


@quick_init
@dataclass(frozen=True)
class Ident:
    id: str
    type: str  # TypeId/@V: HER, ENH, FNR, DNR, HPR, ...


class LevelKind(enum.StrEnum):
    ORGANISATION = "organisation"
    SERVICE = "service"  # a sub-organisation: department or service (tjeneste)
    PERSON = "person"  # a health professional, e.g. a GP


@quick_init
@dataclass(frozen=True)
class PartyLevel:
    name: str
    kind: LevelKind
    idents: tuple[Ident, ...] = ()

    # Cached: routing, validation and the store ask for HER-ids dozens of times per message.
    @cached_property
    def her_id(self) -> str | None:
        for ident in self.idents:
            if ident.type == "HER":
                return ident.id
        return None

    def ident(self, type_: str) -> str | None:
        return next((i.id for i in self.idents if i.type == type_), None)


@quick_init
@dataclass(frozen=True)
class Address:
    """An organisation chain, outermost first: level 1 is the organisation (virksomhet)."""

    levels: tuple[PartyLevel, ...]

    @cached_property
    def her_ids(self) -> tuple[str | None, ...]:
        return tuple(level.her_id for level in self.levels)

    @cached_property
    def her_id(self) -> int | None:
        """The deepest HER-id: the service or person the message is really addressed to."""
        for level in reversed(self.levels):
            her = level.her_id
            if her is not None and her.strip().isdigit():
                return int(her)
        return None

    @property
    def organisation(self) -> PartyLevel | None:
        return self.levels[0] if self.levels else None

    def describe(self) -> str:
        return " / ".join(f"{lvl.name} (HER {lvl.her_id})" if lvl.her_id else lvl.name for lvl in self.levels)


@quick_init
@dataclass(frozen=True)
class CopyReceiver:
    role: str  # kodeverk 8112; COP for copies
    address: Address

    @property
    def is_copy(self) -> bool:
        return self.role == ReceiverRole.COPY


@quick_init
@dataclass(frozen=True)
class Patient:
    family_name: str | None = None
    middle_name: str | None = None
    given_name: str | None = None
    date_of_birth: str | None = None
    sex: str | None = None
    idents: tuple[Ident, ...] = ()

    @property
    def has_name(self) -> bool:
        return bool((self.family_name or "").strip() or (self.given_name or "").strip())

    def ident(self, *types: str) -> Ident | None:
        return next((i for i in self.idents if i.type in types), None)


@quick_init
@dataclass(frozen=True)
class ConversationRef:
    parent: str
    conversation: str


@quick_init
@dataclass(frozen=True)
class Document:
    """One MsgHead Document: the main business document or an attachment."""

    connection: str | None  # kodeverk 4702: H main document, V attachment
    msg_type: str  # RefDoc/MsgType: XML, A (attachment), REF
    mime_type: str | None = None
    description: str | None = None
    content_namespace: str | None = None
    content_root: str | None = None
    file_reference: str | None = None

    @property
    def is_attachment(self) -> bool:
        return self.msg_type != "XML" or self.connection == "V"


@dataclass(frozen=True)
class AppRecError:
    code: str
    text: str = ""
    detail: str = ""  # the OT attribute: free text the receiver must display
    system: str = ""  # OID of the error code system, 8221 for the general codes


@quick_init
@dataclass(frozen=True)
class Message:
    """What the gateway knows about any recognised document (MsgHead, AppRec or standalone)."""

    kind: DocumentKind
    msg_id: str
    msg_type: str  # kodeverk 8279; APPREC for AppRec
    gen_date: str
    sender: Address
    receiver: Address
    mig_version: str | None = None
    msg_type_text: str = ""
    copies: tuple[CopyReceiver, ...] = ()
    patient: Patient | None = None
    conversation: ConversationRef | None = None
    documents: tuple[Document, ...] = ()
    content_kind: DocumentKind | None = None  # the main document's kind for MsgHead
    apprec: AppRecInfo | None = None

    @property
    def gen_datetime(self) -> datetime | None:
        return parse_datetime(self.gen_date)

    @property
    def main_document(self) -> Document | None:
        return next((d for d in self.documents if not d.is_attachment), None)

    @property
    def attachments(self) -> tuple[Document, ...]:
        return tuple(d for d in self.documents if d.is_attachment)


@dataclass(frozen=True)
class AppRecInfo:
    status: AppRecStatus | str
    errors: tuple[AppRecError, ...] = ()
    original_msg_id: str = ""
    original_msg_type: str = ""
    original_issue_date: str = ""
    sender_role: str | None = None  # PRIM or COP: which receiver of the original answers
    extra: dict = field(default_factory=dict, hash=False, compare=False)


def parse_datetime(value: str | None) -> datetime | None:
    """xs:dateTime to datetime; naive when the value has no zone (Norwegian local time)."""
    if not value:
        return None
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
