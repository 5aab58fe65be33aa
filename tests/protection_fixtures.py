"""The session's demo PKI, as a pytest plugin: test modules say
``pytest_plugins = ("protection_fixtures",)`` and import helpers from ``protection_helpers``."""

from __future__ import annotations

import pytest
from protection_helpers import Pki, komut_process

from gateway.protection import load_crls
from gateway.protection.pki import DemoCa


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    """Made once per session by the real `komut pki init` (38 parties, about 5 s)."""
    directory = tmp_path_factory.mktemp("pki") / "demo"
    proc = komut_process("pki", "init", directory)
    assert proc.returncode == 0, proc.stderr
    crl = load_crls((directory / "crl.pem").read_bytes())[0]
    return Pki(directory, DemoCa.load(directory), crl)
