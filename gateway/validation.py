"""The validator: hardened parse, recognition, XSD (lxml) and business rules, in that order.

Each stage stops the next when it fails, because later stages assume what earlier ones proved:
T01 (not XML) -> T10 (unknown format or no schema) -> T02 (schema) -> business rules.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from lxml import etree

from gateway.schemas import SchemaSet, load_schema_set
from message_types.codes import ErrorCode
from message_types.kinds import MSGHEAD_NS, DocumentKind, kind_of
from message_types.model import Message
from message_types.problems import InvalidMessage, Problem, Severity
from message_types.read import read_message, unsupported
from message_types.rules import DEFAULT_FUTURE_TOLERANCE, check_message
from message_types.xmlparse import DEFAULT_MAX_BYTES, parse_xml, readable_path, split_tag

# Enough to act on; a badly broken file can produce thousands of schema errors.
MAX_XSD_PROBLEMS = 50
_CLARK = re.compile(r"\{[^}]*\}")
_DOCUMENT, _REFDOC, _CONTENT = (f"{{{MSGHEAD_NS}}}{tag}" for tag in ("Document", "RefDoc", "Content"))


def _contents(root: etree._Element):
    """Every Document/RefDoc/Content, by direct iteration (ElementPath costs more than validating)."""
    for doc in root.iterchildren(_DOCUMENT):
        for ref in doc.iterchildren(_REFDOC):
            yield from ref.iterchildren(_CONTENT)


@dataclass
class ValidationResult:
    problems: list[Problem] = field(default_factory=list)
    message: Message | None = None
    kind: DocumentKind | None = None
    tree: etree._ElementTree | None = field(default=None, repr=False)

    @property
    def valid(self) -> bool:
        return not any(p.severity == Severity.ERROR for p in self.problems)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == Severity.ERROR]

    @property
    def codes(self) -> list[str]:
        return sorted({str(p.code) for p in self.errors})

    @property
    def msg_type(self) -> str | None:
        return self.message.msg_type if self.message else None


class Validator:
    def __init__(
        self,
        schemas: SchemaSet | None = None,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        future_tolerance: timedelta = DEFAULT_FUTURE_TOLERANCE,
    ):
        self.schemas = schemas or load_schema_set()
        self.max_bytes = max_bytes
        self.future_tolerance = future_tolerance

    def validate(self, data: bytes, *, now: datetime | None = None) -> ValidationResult:
        try:
            tree = parse_xml(data, self.max_bytes)
        except InvalidMessage as exc:
            return ValidationResult(exc.problems)
        return self.validate_tree(tree, now=now)

    def validate_tree(self, tree: etree._ElementTree, *, now: datetime | None = None) -> ValidationResult:
        root = tree.getroot()
        qname = etree.QName(root)
        kind = kind_of(qname.namespace)
        result = ValidationResult(kind=kind, tree=tree)
        result.problems = self._coverage(root, qname, kind)
        if result.problems:
            result.message = _addressable(root, kind)
            return result
        errors = self.schemas.xsd_errors(tree)
        # A content namespace without schema is T10, not T02. With only our schemas, MsgHead's
        # strict Content wildcard already refused it, so the content is only looked at on failure.
        if kind.root == "MsgHead" and (errors or not self.schemas.only_built_in):
            result.problems = self._content_coverage(root)
            if result.problems:
                result.message = _addressable(root, kind)
                return result
        if errors:
            result.problems = [self._xsd_problem(tree, e) for e in errors[:MAX_XSD_PROBLEMS]]
            if len(errors) > MAX_XSD_PROBLEMS:
                result.problems.append(
                    Problem(ErrorCode.T02, f"... and {len(errors) - MAX_XSD_PROBLEMS} more schema errors")
                )
            result.message = _addressable(root, kind)
            return result
        try:
            result.message = read_message(root, kind)  # _coverage proved the root is this kind's
        except InvalidMessage as exc:
            result.problems = exc.problems
            return result
        result.problems = check_message(result.message, root, now=now, future_tolerance=self.future_tolerance)
        return result

    def _coverage(self, root: etree._Element, qname: etree.QName, kind: DocumentKind | None) -> list[Problem]:
        """T10 when komut cannot know this format: unknown root, or a namespace without schema."""
        if kind is None or kind.root != qname.localname:
            if self.schemas.covers(qname.namespace):
                # A known schema but not a message root (e.g. bare PLO content without MsgHead).
                return [
                    Problem(
                        ErrorCode.T10,
                        f"<{qname.localname}> ({qname.namespace}) is not a message on its own; "
                        "business documents travel inside a MsgHead",
                        line=1,
                        path=f"/{qname.localname}",
                    )
                ]
            return unsupported(qname.namespace, qname.localname).problems
        if not kind.standalone and kind.root != "MsgHead":
            return [
                Problem(
                    ErrorCode.T10,
                    f"{kind.title} is not a message on its own; it must travel inside a MsgHead",
                    line=1,
                    path=f"/{qname.localname}",
                )
            ]
        if not self.schemas.covers(qname.namespace):
            return [self._no_schema(kind.title, qname.namespace, root)]
        return []

    def _content_coverage(self, root: etree._Element) -> list[Problem]:
        problems = []
        for content in _contents(root):
            for child in content:
                if not isinstance(child.tag, str):
                    continue
                ns = split_tag(child.tag)[0]
                if not self.schemas.covers(ns):
                    content_kind = kind_of(ns)
                    title = content_kind.title if content_kind else f"<{etree.QName(child).localname}>"
                    problems.append(self._no_schema(title, ns, child))
        return problems

    @staticmethod
    def _no_schema(title: str, namespace: str | None, element: etree._Element) -> Problem:
        return Problem(
            ErrorCode.T10,
            f"{title} (namespace {namespace}) has no schema in this gateway; "
            "add the official schema with --schema-dir or the schema_dirs setting",
            line=element.sourceline,
            path=readable_path(element),
        )

    @staticmethod
    def _xsd_problem(tree: etree._ElementTree, entry) -> Problem:
        path = None
        if entry.path:
            try:
                found = tree.xpath(entry.path)
                if found and isinstance(found[0], etree._Element):
                    path = readable_path(found[0])
            except etree.XPathError:
                path = None
        return Problem(ErrorCode.T02, _CLARK.sub("", entry.message), line=entry.line or None, path=path)


def _addressable(root: etree._Element, kind: DocumentKind | None) -> Message | None:
    """The envelope of a refused message, read as far as it goes, so the refusal can be answered
    with an AppRec (T02, T10) and logged with its parties. Only a MsgHead whose MsgId, sender and
    receiver could be read counts; no business rule is applied to it."""
    if kind is None or kind.family.value != "MsgHead":
        return None
    try:
        message = read_message(root)
    except Exception:  # a broken envelope may fail anywhere in the reader; then there is no one to answer
        return None
    if message.msg_id and message.sender.levels and message.receiver.levels and message.sender.her_id:
        return message
    return None


_default: Validator | None = None


def default_validator() -> Validator:
    global _default
    if _default is None:
        _default = Validator()
    return _default
