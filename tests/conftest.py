"""Shared fixtures: paths to the repo, the sample messages and the public reference data."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLES = REPO / "sample_messages"
REFERENCE = REPO.parent / "shared" / "reference"
OFFICIAL_XSD = REFERENCE / "official-xsd"


def need_reference() -> Path:
    if not (REFERENCE / "oracle.py").is_file():
        pytest.skip(
            "public reference data not found: expected ../shared/reference beside the checkout "
            "(the project's shared/ folder with oracle.py and official-xsd/)"
        )
    return REFERENCE


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return need_reference()


@pytest.fixture(scope="session")
def oracle_schema(reference_dir):
    sys.path.insert(0, str(reference_dir))
    try:
        import oracle
    finally:
        sys.path.remove(str(reference_dir))
    return oracle.build()


@pytest.fixture(scope="session")
def manifest() -> list[dict]:
    return tomllib.loads((SAMPLES / "manifest.toml").read_text(encoding="utf-8"))["message"]


@pytest.fixture(scope="session")
def validator():
    from gateway.validation import Validator

    return Validator()


@pytest.fixture(scope="session")
def demo_pki(tmp_path_factory) -> Path:
    """One demo PKI per test session (RSA key generation takes seconds); tests copy it."""
    from e2e import make_pki

    return make_pki(tmp_path_factory.mktemp("demo-pki"))


@pytest.fixture
def net(tmp_path, demo_pki):
    """Two real gateways (hospital, municipal) on 127.0.0.1, stopped after the test."""
    from e2e import Net

    network = Net(tmp_path / "net", demo_pki)
    yield network
    network.stop_all()
