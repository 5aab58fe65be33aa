"""The schema set: our own schemas from xsd/catalog.toml, plus namespaces added or overridden from
extra folders (e.g. the official bundle), compiled once into one lxml schema.

One umbrella schema imports every namespace, dependencies first, so that MsgHead's strict
RefDoc/Content wildcard validates each business document against its own namespace's schema,
and an override from an extra folder wins over the file a built-in schema would import.
"""

from __future__ import annotations

import threading
import tomllib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

from lxml import etree

import xsd as builtin_xsd

XS = "{http://www.w3.org/2001/XMLSchema}"
BUILT_IN = "built-in"


@dataclass(frozen=True)
class SchemaEntry:
    namespace: str
    path: Path
    title: str
    source: str  # "built-in" or the extra folder it came from
    imports: tuple[str, ...] = ()


@dataclass
class SchemaSet:
    entries: dict[str, SchemaEntry]
    schema: etree.XMLSchema
    notes: list[str] = field(default_factory=list)  # duplicates and schemas that failed to compile
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def covers(self, namespace: str | None) -> bool:
        return (namespace or "") in self.entries

    @cached_property
    def only_built_in(self) -> bool:
        """Every schema is ours: MsgHead's Content wildcard is strict, and nothing is imported from
        outside the catalog, so a document that passes XSD has a schema for all of its content."""
        return all(e.source == BUILT_IN for e in self.entries.values())

    def xsd_errors(self, tree: etree._ElementTree | etree._Element) -> list:
        """lxml error-log entries; empty when the document is valid."""
        # An XMLSchema keeps its error log on the instance, so calls must not interleave.
        with self._lock:
            if self.schema.validate(tree):
                return []
            return list(self.schema.error_log)


def _read_schema_head(path: Path) -> tuple[str | None, tuple[str, ...]]:
    """targetNamespace and imported namespaces, read without resolving anything."""
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)
    root = etree.parse(str(path), parser).getroot()
    imports = tuple(i.get("namespace") for i in root.iter(XS + "import") if i.get("namespace"))
    return root.get("targetNamespace"), imports


def builtin_entries() -> dict[str, SchemaEntry]:
    base = Path(builtin_xsd.DIR)
    catalog = tomllib.loads((base / "catalog.toml").read_text(encoding="utf-8"))
    entries = {}
    for item in catalog.get("schema", []):
        path = base / item["file"]
        _, imports = _read_schema_head(path)
        entries[item["namespace"]] = SchemaEntry(
            item["namespace"], path, item.get("title", ""), BUILT_IN, imports
        )
    return entries


def folder_entries(folder: Path, notes: list[str]) -> dict[str, SchemaEntry]:
    entries: dict[str, SchemaEntry] = {}
    for path in sorted(Path(folder).glob("*.xsd")):
        try:
            namespace, imports = _read_schema_head(path)
        except etree.XMLSyntaxError as exc:
            notes.append(f"{path}: not readable XML ({exc}); ignored")
            continue
        if not namespace:
            continue  # a chameleon include, only meaningful inside another schema
        if namespace in entries:
            notes.append(f"{namespace}: both {entries[namespace].path.name} and {path.name}; using the first")
            continue
        entries[namespace] = SchemaEntry(namespace, path.resolve(), path.stem, str(folder), imports)
    return entries


def _dependency_order(entries: dict[str, SchemaEntry]) -> list[SchemaEntry]:
    ordered: list[SchemaEntry] = []
    seen: set[str] = set()

    def visit(ns: str, trail: tuple[str, ...]) -> None:
        if ns in seen or ns not in entries or ns in trail:
            return
        for dep in entries[ns].imports:
            visit(dep, (*trail, ns))
        seen.add(ns)
        ordered.append(entries[ns])

    for ns in sorted(entries):
        visit(ns, ())
    return ordered


def _compile(entries: list[SchemaEntry]) -> etree.XMLSchema:
    imports = "".join(
        f'<xs:import namespace="{e.namespace}" schemaLocation="{e.path.as_uri()}"/>' for e in entries
    )
    umbrella = f'<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema">{imports}</xs:schema>'
    parser = etree.XMLParser(resolve_entities=False, no_network=True)
    doc = etree.fromstring(umbrella.encode(), parser, base_url=str(Path(builtin_xsd.DIR) / "umbrella.xsd"))
    return etree.XMLSchema(doc)


def build_schema_set(extra_dirs: tuple[str | Path, ...] = ()) -> SchemaSet:
    notes: list[str] = []
    entries = builtin_entries()
    for folder in extra_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"schema folder {folder} does not exist")
        entries.update(folder_entries(folder, notes))
    ordered = _dependency_order(entries)
    try:
        schema = _compile(ordered)
    except etree.XMLSchemaParseError:
        # Find the schemas that cannot compile on their own, drop them, and say so.
        good = []
        for entry in ordered:
            try:
                _compile([*good, entry])
                good.append(entry)
            except etree.XMLSchemaParseError as exc:
                notes.append(f"{entry.namespace} ({entry.path.name}) does not compile and is left out: {exc}")
                entries.pop(entry.namespace)
        schema = _compile(good)
    return SchemaSet(entries, schema, notes)


@lru_cache(maxsize=8)
def _cached(extra_dirs: tuple[str, ...]) -> SchemaSet:
    return build_schema_set(extra_dirs)


def load_schema_set(extra_dirs=()) -> SchemaSet:
    """The compiled schema set, built once per process for each combination of folders."""
    return _cached(tuple(str(Path(d).resolve()) for d in extra_dirs))
