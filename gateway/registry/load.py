"""Registry file (TOML) → `Registry`, collecting every problem instead of stopping at the first.

The file format is described in docs/registry.md and by example in default_network.toml.
Parsing is pure apart from reading certificate files, which goes through an injectable reader.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cryptography import x509
from stdnum.exceptions import ValidationError
from stdnum.no import orgnr

from gateway.registry.certs import CertificateReadError, read_certificate
from gateway.registry.model import (
    Acceptance,
    Area,
    Category,
    CertificateFile,
    CertificateSet,
    Cipher,
    Endpoint,
    Party,
    PartyKind,
    ProtectionPolicy,
    Registry,
    Transport,
)
from gateway.registry.problems import Problem, RegistryError
from gateway.registry.validate import check_structure

DEFAULT_NETWORK_RESOURCE = "default_network.toml"
DEFAULT_NETWORK_SOURCE = "embedded default network"
SCHEMA_VERSION = 1

_TOP_KEYS = frozenset({"schema", "description", "areas", "protection", "profiles", "party"})
_PARTY_KEYS = frozenset(
    {
        "her_id",
        "name",
        "kind",
        "parent",
        "category",
        "org_no",
        "municipality",
        "area",
        "endpoint",
        "protection",
        "accepts",
        "certificates",
    }
)
_ENDPOINT_KEYS = frozenset({"transport", "gateway", "address"})
_POLICY_KEYS = frozenset({"send_cipher", "accept_ciphers", "accept_sha1"})
_CERT_SLOTS = ("sign", "enc", "next_sign", "next_enc")
_MSG_TYPE = re.compile(r"^[A-Z][A-Z0-9_-]*$")
_VERSION = re.compile(r"^\d+(\.\d+)*$")

CertificateReader = Callable[[Path], x509.Certificate]


@dataclass(frozen=True)
class RegistrySource:
    """Where a registry comes from: a file, or the embedded default network when `path` is None.

    `cert_dir` is where relative certificate paths are resolved. Left None, it is the registry
    file's directory; for the embedded network there is no such directory, so certificates are
    then named but not read (listing the demo network works before `komut pki init`).
    """

    path: Path | None = None
    cert_dir: Path | None = None

    @property
    def effective_cert_dir(self) -> Path | None:
        if self.cert_dir is not None:
            return self.cert_dir
        return self.path.parent if self.path is not None else None

    def describe(self) -> str:
        return str(self.path) if self.path is not None else DEFAULT_NETWORK_SOURCE

    def load(self) -> Registry:
        return load_registry(self.path, self.cert_dir)


def load_registry(path: Path | None = None, cert_dir: Path | None = None) -> Registry:
    """Load a registry file (or the embedded default network if `path` is None).

    Raises `RegistryError` listing every problem if the file cannot be used.
    """
    source = RegistrySource(path, cert_dir)
    if path is None:
        text = resources.files(__package__).joinpath(DEFAULT_NETWORK_RESOURCE).read_text("utf-8")
        return parse_registry(text, source=DEFAULT_NETWORK_SOURCE, cert_dir=source.effective_cert_dir)
    try:
        text = Path(path).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        message = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise RegistryError(
            [Problem(None, "file", f"cannot read {path}: {message}")], source=str(path), files=[Path(path)]
        ) from None
    return parse_registry(
        text, source=str(path), cert_dir=source.effective_cert_dir, extra_files=[Path(path)]
    )


def parse_registry(
    text: str,
    *,
    source: str = "<string>",
    cert_dir: Path | None = None,
    read_cert: CertificateReader = read_certificate,
    extra_files: Iterable[Path] = (),
) -> Registry:
    """Parse registry TOML. With `cert_dir` None, certificates are named but not read."""
    parser = _Parser(cert_dir, read_cert)
    parser.files.extend(extra_files)
    if cert_dir is not None and not cert_dir.is_dir():
        # One problem instead of one per certificate file.
        parser.problem(
            None, "cert-dir", f"certificate directory {cert_dir} does not exist (run `komut pki init`?)"
        )
        parser.cert_dir_missing = True
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(
            [Problem(None, "file", f"not valid TOML: {exc}")], source=source, files=parser.files
        ) from None
    parties, areas = parser.parse(data)
    problems = parser.problems + check_structure(parties, areas)
    if problems:
        raise RegistryError(problems, source=source, files=parser.files)
    return Registry((p for _, p in parties), areas, source=source, files=parser.files)


class _Parser:
    """One parse of one file: accumulates problems and the files it touched."""

    def __init__(self, cert_dir: Path | None, read_cert: CertificateReader) -> None:
        self.cert_dir = cert_dir
        self.read_cert = read_cert
        self.problems: list[Problem] = []
        self.files: list[Path] = []
        self.policies: dict[str, ProtectionPolicy] = {}
        self.profiles: dict[str, frozenset[tuple[str, str]]] = {}
        self.cert_dir_missing = False

    def problem(self, her_id: int | None, field: str, message: str) -> None:
        self.problems.append(Problem(her_id, field, message))

    def unknown_keys(self, her_id: int | None, where: str, table: dict, allowed: frozenset[str]) -> None:
        for key in sorted(set(table) - allowed):
            self.problem(
                her_id, f"{where}{key}", f"unknown key (expected one of: {', '.join(sorted(allowed))})"
            )

    # -- file level ----------------------------------------------------------------------------

    def parse(self, data: dict[str, Any]) -> tuple[list[tuple[int, Party]], dict[str, Area]]:
        self.unknown_keys(None, "", data, _TOP_KEYS)
        schema = data.get("schema", SCHEMA_VERSION)
        if schema != SCHEMA_VERSION:
            self.problem(None, "schema", f"unsupported schema {schema!r} (this komut reads {SCHEMA_VERSION})")
        areas = self.parse_areas(self.table(None, "areas", data.get("areas", {})))
        for name, value in self.table(None, "protection", data.get("protection", {})).items():
            policy = self.parse_policy(None, f"protection.{name}", value, name=name)
            if policy is not None:
                self.policies[name] = policy
        for name, value in self.table(None, "profiles", data.get("profiles", {})).items():
            pairs = self.parse_profile(None, f"profiles.{name}", value)
            if pairs is not None:
                self.profiles[name] = pairs
        entries = data.get("party", [])
        if not isinstance(entries, list):
            self.problem(None, "party", "must be an array of tables ([[party]])")
            entries = []
        parties = []
        for index, entry in enumerate(entries):
            party = self.parse_party(index, entry, areas)
            if party is not None:
                parties.append((index, party))
        return parties, areas

    def table(self, her_id: int | None, field: str, value: Any) -> dict[str, Any]:
        if isinstance(value, dict):
            return value
        self.problem(her_id, field, f"must be a table, not {type(value).__name__}")
        return {}

    def parse_areas(self, table: dict[str, Any]) -> dict[str, Area]:
        areas = {}
        for key, value in table.items():
            field = f"areas.{key}"
            value = self.table(None, field, value)
            self.unknown_keys(None, f"{field}.", value, frozenset({"number", "name"}))
            number, name = value.get("number"), value.get("name")
            if not _is_int(number) or number < 1:
                self.problem(None, f"{field}.number", "must be a positive integer")
                continue
            if not isinstance(name, str) or not name.strip():
                self.problem(None, f"{field}.name", "must be a non-empty string")
                continue
            areas[key] = Area(key, number, name)
        return areas

    def parse_policy(
        self, her_id: int | None, field: str, value: Any, *, name: str | None
    ) -> ProtectionPolicy | None:
        value = self.table(her_id, field, value)
        self.unknown_keys(her_id, f"{field}.", value, _POLICY_KEYS)
        before = len(self.problems)
        send = self.cipher(her_id, f"{field}.send_cipher", value.get("send_cipher"))
        accept_raw = value.get("accept_ciphers")
        accept: set[Cipher] = set()
        if not isinstance(accept_raw, list) or not accept_raw:
            self.problem(
                her_id, f"{field}.accept_ciphers", f"must be a non-empty list of: {_choices(Cipher)}"
            )
        else:
            for item in accept_raw:
                cipher = self.cipher(her_id, f"{field}.accept_ciphers", item)
                if cipher is not None:
                    accept.add(cipher)
        sha1 = value.get("accept_sha1", False)
        if not isinstance(sha1, bool):
            self.problem(her_id, f"{field}.accept_sha1", "must be true or false")
        if len(self.problems) > before or send is None:
            return None
        return ProtectionPolicy(send, frozenset(accept), sha1, name)

    def cipher(self, her_id: int | None, field: str, value: Any) -> Cipher | None:
        try:
            return Cipher(value)
        except ValueError:
            self.problem(her_id, field, f"unknown cipher {value!r} (expected one of: {_choices(Cipher)})")
            return None

    def parse_profile(self, her_id: int | None, field: str, value: Any) -> frozenset[tuple[str, str]] | None:
        value = self.table(her_id, field, value)
        pairs: set[tuple[str, str]] = set()
        ok = True
        for msg_type, versions in value.items():
            if not _MSG_TYPE.match(msg_type):
                self.problem(
                    her_id, f"{field}.{msg_type}", "not a message type code (kodeverk 8279, e.g. APPREC)"
                )
                ok = False
                continue
            if not isinstance(versions, list) or not versions:
                self.problem(
                    her_id, f"{field}.{msg_type}", 'must be a non-empty list of versions, e.g. ["1.0"]'
                )
                ok = False
                continue
            for version in versions:
                if not isinstance(version, str) or not _VERSION.match(version):
                    self.problem(
                        her_id, f"{field}.{msg_type}", f'version {version!r} must be a string like "1.6"'
                    )
                    ok = False
                else:
                    pairs.add((msg_type, version))
        return frozenset(pairs) if ok else None

    # -- one party -----------------------------------------------------------------------------

    def parse_party(self, index: int, entry: Any, areas: dict[str, Area]) -> Party | None:
        where = f"party[{index}]"
        if not isinstance(entry, dict):
            self.problem(None, where, "must be a table")
            return None
        her_id = entry.get("her_id")
        if not _is_int(her_id) or her_id <= 0:
            self.problem(None, f"{where}.her_id", f"missing or not a positive integer ({her_id!r})")
            return None
        self.unknown_keys(her_id, "", entry, _PARTY_KEYS)

        name = entry.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(her_id, "name", "missing or empty")
        kind = self.enum(her_id, "kind", entry.get("kind"), PartyKind, required=True)
        parent = self.optional_int(her_id, "parent", entry.get("parent"))
        category = self.enum(her_id, "category", entry.get("category"), Category)
        if category is not None and kind is not None and kind is not PartyKind.ORGANISATION:
            self.problem(her_id, "category", f"only organisations have a category, this is a {kind}")
        org_no = self.org_no(her_id, entry.get("org_no"))
        municipality = self.optional_int(her_id, "municipality", entry.get("municipality"))
        area = entry.get("area")
        if area is not None and area not in areas:
            known = ", ".join(sorted(areas)) or "none defined"
            self.problem(her_id, "area", f"unknown area {area!r} (known: {known})")
        endpoint = self.endpoint(her_id, entry["endpoint"]) if "endpoint" in entry else None
        protection = self.protection(her_id, entry["protection"]) if "protection" in entry else None
        accepts = self.accepts(her_id, entry["accepts"]) if "accepts" in entry else None
        certificates = self.certificates(her_id, entry["certificates"]) if "certificates" in entry else None

        # A party with problems is still returned (the file is refused anyway) so that the
        # cross-party checks (duplicates, parents, cycles) also report on it.
        return Party(
            her_id=her_id,
            name=name if isinstance(name, str) else "",
            kind=kind or PartyKind.ORGANISATION,
            parent=parent,
            category=category,
            org_no=org_no,
            municipality=municipality,
            area=area if isinstance(area, str) else None,
            endpoint=endpoint,
            protection=protection,
            accepts=accepts,
            certificates=certificates,
        )

    def enum(self, her_id: int, field: str, value: Any, enum: type, *, required: bool = False) -> Any:
        if value is None:
            if required:
                self.problem(her_id, field, f"missing (one of: {_choices(enum)})")
            return None
        try:
            return enum(value)
        except ValueError:
            self.problem(her_id, field, f"unknown value {value!r} (expected one of: {_choices(enum)})")
            return None

    def optional_int(self, her_id: int, field: str, value: Any) -> int | None:
        if value is None:
            return None
        if not _is_int(value) or value <= 0:
            self.problem(her_id, field, f"must be a HER-id (positive integer), not {value!r}")
            return None
        return value

    def org_no(self, her_id: int, value: Any) -> str | None:
        if value is None:
            return None
        try:
            return orgnr.validate(str(value))
        except ValidationError as exc:
            self.problem(her_id, "org_no", f"{value!r} is not a valid organisation number ({exc.message})")
            # Keep it: the file is refused anyway, and "needs an organisation number" would be noise.
            return str(value)

    def endpoint(self, her_id: int, value: Any) -> Endpoint | None:
        if not isinstance(value, dict):
            self.table(her_id, "endpoint", value)
            return None
        self.unknown_keys(her_id, "endpoint.", value, _ENDPOINT_KEYS)
        transport = self.enum(her_id, "endpoint.transport", value.get("transport"), Transport, required=True)
        gateway, address = value.get("gateway"), value.get("address")
        for key, item in (("gateway", gateway), ("address", address)):
            if item is not None and (not isinstance(item, str) or not item.strip()):
                self.problem(her_id, f"endpoint.{key}", "must be a non-empty string")
                return None
        if gateway is None and address is None:
            self.problem(her_id, "endpoint", "needs a gateway (logical name) or an address")
            return None
        return Endpoint(transport, gateway, address) if transport is not None else None

    def protection(self, her_id: int, value: Any) -> ProtectionPolicy | None:
        if isinstance(value, str):
            if value not in self.policies:
                self.problem(her_id, "protection", f"unknown protection policy {value!r}")
            return self.policies.get(value)
        return self.parse_policy(her_id, "protection", value, name=None)

    def accepts(self, her_id: int, value: Any) -> Acceptance | None:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            pairs: set[tuple[str, str]] = set()
            for name in value:
                if not isinstance(name, str) or name not in self.profiles:
                    self.problem(her_id, "accepts", f"unknown capability profile {name!r}")
                    continue
                pairs |= self.profiles[name]
            return Acceptance(frozenset(pairs), tuple(n for n in value if isinstance(n, str)))
        inline = self.parse_profile(her_id, "accepts", value)
        return Acceptance(inline) if inline is not None else None

    def certificates(self, her_id: int, value: Any) -> CertificateSet | None:
        value = self.table(her_id, "certificates", value)
        self.unknown_keys(her_id, "certificates.", value, frozenset({"dir", *_CERT_SLOTS}))
        paths: dict[str, Path] = {}
        optional: set[str] = set()
        if "dir" in value:
            if set(value) != {"dir"}:
                self.problem(
                    her_id, "certificates", "give either dir or the files (sign, enc, ...), not both"
                )
                return None
            if not isinstance(value["dir"], str) or not value["dir"]:
                self.problem(her_id, "certificates.dir", "must be a directory path")
                return None
            base = Path(value["dir"])
            paths = {slot: base / f"{slot}.pem" for slot in _CERT_SLOTS}
            # The next_* files are optional with `dir`: their appearance starts a rollover.
            optional = {"next_sign", "next_enc"}
        else:
            for slot in _CERT_SLOTS:
                if slot in value:
                    if not isinstance(value[slot], str) or not value[slot]:
                        self.problem(her_id, f"certificates.{slot}", "must be a file path")
                        continue
                    paths[slot] = Path(value[slot])
            for slot in ("sign", "enc"):
                if slot not in value:
                    self.problem(
                        her_id, f"certificates.{slot}", "missing (the current certificate is required)"
                    )
        files: dict[str, CertificateFile | None] = {}
        for slot, path in paths.items():
            files[slot] = self.certificate_file(her_id, slot, path, optional=slot in optional)
        if "sign" not in files or "enc" not in files or files["sign"] is None or files["enc"] is None:
            return None
        return CertificateSet(files["sign"], files["enc"], files.get("next_sign"), files.get("next_enc"))

    def certificate_file(
        self, her_id: int, slot: str, path: Path, *, optional: bool
    ) -> CertificateFile | None:
        if self.cert_dir is None:
            # Named but not read: without a certificate directory there is nothing to read.
            return None if optional else CertificateFile(path)
        full = path if path.is_absolute() else self.cert_dir / path
        self.files.append(full)
        if self.cert_dir_missing and not path.is_absolute():
            return None if optional else CertificateFile(full)
        if optional and not full.exists():
            return None
        try:
            return CertificateFile(full, self.read_cert(full))
        except CertificateReadError as exc:
            self.problem(her_id, f"certificates.{slot}", str(exc))
            # Named but unusable; the file is refused anyway. Keeping the slot avoids a second,
            # misleading "has no certificates" problem for the same mistake.
            return CertificateFile(full)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _choices(enum: type) -> str:
    return ", ".join(member.value for member in enum)
