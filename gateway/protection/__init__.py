"""Message protection: CMS sign-then-encrypt, certificate checks, revocation, demo PKI.

Pure: no network I/O. CRLs come in through a ``CrlSource`` (files here, http in
``adapters.crl_http``).
"""

from gateway.protection.algorithms import AlgorithmsSeen, Cipher
from gateway.protection.certs import (
    Credential,
    load_certificate,
    load_certificates,
    load_private_key,
    read_cms,
    to_pem,
)
from gateway.protection.checks import CertificateChecker, CheckedCertificate, Purpose
from gateway.protection.errors import AppRecCode, CertificateInfo, FailureKind, ProtectionError
from gateway.protection.policy import DEFAULT_POLICY, ProtectionPolicy, UnknownRevocation
from gateway.protection.protect import Unprotected, protect, unprotect
from gateway.protection.revocation import CrlSource, FileCrlSource, StaticCrlSource, crl_urls, load_crls

__all__ = [
    "DEFAULT_POLICY",
    "AlgorithmsSeen",
    "AppRecCode",
    "CertificateChecker",
    "CertificateInfo",
    "CheckedCertificate",
    "Cipher",
    "Credential",
    "CrlSource",
    "FailureKind",
    "FileCrlSource",
    "ProtectionError",
    "ProtectionPolicy",
    "Purpose",
    "StaticCrlSource",
    "UnknownRevocation",
    "Unprotected",
    "crl_urls",
    "load_certificate",
    "load_certificates",
    "load_crls",
    "load_private_key",
    "protect",
    "read_cms",
    "to_pem",
    "unprotect",
]
