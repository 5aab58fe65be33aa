"""Richer explanations of schema failures with xmlschema.

xmlschema is about 65 times slower than lxml, so it never runs on the hot path: only when a person
asks why a document is schema-invalid (`komut validate --explain`). Its reasons name the expected
element or the facet a value broke, which libxml2's messages often do not.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import xmlschema

from gateway.schemas import SchemaSet
from message_types.kinds import MSGHEAD_NS

MAX_EXPLANATIONS = 10


@dataclass(frozen=True)
class Explanation:
    reason: str
    path: str

    def to_dict(self) -> dict:
        return {"reason": self.reason, "path": self.path}


@lru_cache(maxsize=4)
def _schema(locations: tuple[tuple[str, str], ...], main: str) -> xmlschema.XMLSchema:
    return xmlschema.XMLSchema(main, locations=list(locations))


def explain(data: bytes, schemas: SchemaSet) -> list[Explanation]:
    entries = schemas.entries
    main = entries.get(MSGHEAD_NS) or next(iter(entries.values()))
    locations = tuple(sorted((ns, str(e.path)) for ns, e in entries.items()))
    schema = _schema(locations, str(main.path))
    out = []
    # The document is parsed by xmlschema's own hardened defaults (no DTD, no external entities).
    for error in schema.iter_errors(xmlschema.XMLResource(data, allow="none", defuse="always")):
        out.append(Explanation(error.reason or str(error), error.path or ""))
        if len(out) >= MAX_EXPLANATIONS:
            break
    return out
