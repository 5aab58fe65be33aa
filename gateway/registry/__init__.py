"""komut's address registry: who the communication parties are and how to reach them.

The registry plays the role Norsk helsenett's Adresseregisteret and CPP/CPA play nationally:
it maps HER-ids (service-based addressing: an organisation, under it a service or a person) to
names, endpoints, certificates, accepted message types and protection policies.

    registry = load_registry(Path("registry.toml"))        # or load_default_registry()
    holder = RegistryHolder(RegistrySource(path, cert_dir)) # reloadable; holder.current
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources
from pathlib import Path

from gateway.registry.load import (
    DEFAULT_NETWORK_RESOURCE,
    DEFAULT_NETWORK_SOURCE,
    RegistrySource,
    load_registry,
    parse_registry,
)
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
    UnknownParty,
)
from gateway.registry.problems import Problem, RegistryError, Severity
from gateway.registry.reload import RegistryHolder, install_sighup


def load_default_registry(cert_dir: Path | None = None) -> Registry:
    """The embedded demo network; certificates are read only if `cert_dir` is given."""
    return load_registry(None, cert_dir)


@cache
def _default_network_data() -> dict:
    return tomllib.loads(resources.files(__name__).joinpath(DEFAULT_NETWORK_RESOURCE).read_text("utf-8"))


def default_certificate_holders() -> list[tuple[int, str, str]]:
    """(HER-id, name, organisation number) of every level-1 party of the embedded default network.

    These are the parties that own enterprise certificates (the certificate belongs to the
    organisation number); services and persons use their level-1 ancestor's. `komut pki init`
    issues one signing and one encryption certificate for each. Read straight from the file so
    the PKI can be created before anything else (the loader would want the certificates).
    """
    return [
        (party["her_id"], party["name"], party["org_no"])
        for party in _default_network_data()["party"]
        if "parent" not in party
    ]


__all__ = [
    "DEFAULT_NETWORK_SOURCE",
    "Acceptance",
    "Area",
    "Category",
    "CertificateFile",
    "CertificateSet",
    "Cipher",
    "Endpoint",
    "Party",
    "PartyKind",
    "Problem",
    "ProtectionPolicy",
    "Registry",
    "RegistryError",
    "RegistryHolder",
    "RegistrySource",
    "Severity",
    "Transport",
    "UnknownParty",
    "default_certificate_holders",
    "install_sighup",
    "load_default_registry",
    "load_registry",
    "parse_registry",
]
