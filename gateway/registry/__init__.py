"""komut's address registry: who the communication parties are and how to reach them.

The registry plays the role Norsk helsenett's Adresseregisteret and CPP/CPA play nationally:
it maps HER-ids (service-based addressing: an organisation, under it a service or a person) to
names, endpoints, certificates, accepted message types and protection policies.
"""

from __future__ import annotations

import tomllib
from functools import cache
from importlib import resources

DEFAULT_NETWORK = "default_network.toml"


@cache
def _default_network_data() -> dict:
    return tomllib.loads(resources.files(__name__).joinpath(DEFAULT_NETWORK).read_text("utf-8"))


def default_certificate_holders() -> list[tuple[int, str, str]]:
    """(HER-id, name, organisation number) of every level-1 party of the embedded default network.

    These are the parties that own enterprise certificates (the certificate belongs to the
    organisation number); services and persons use their level-1 ancestor's. `komut pki init`
    issues one signing and one encryption certificate for each.
    """
    return [
        (party["her_id"], party["name"], party["org_no"])
        for party in _default_network_data()["party"]
        if "parent" not in party
    ]


__all__ = ["default_certificate_holders"]
