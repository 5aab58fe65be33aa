"""Our side of message protection: which key signs, whose certificate we encrypt for, which
signers we expect, and each partner's policy, looked up in the address registry.

The CMS work itself is `gateway.protection` (pure); this module only picks its inputs.
"""

from __future__ import annotations

import datetime as dt
import threading
from dataclasses import dataclass

from gateway.config import Config
from gateway.protection import (
    CertificateChecker,
    Credential,
    FileCrlSource,
    ProtectionPolicy,
    UnknownRevocation,
    Unprotected,
    load_certificates,
    protect,
    unprotect,
)
from gateway.protection.errors import FailureKind, ProtectionError
from gateway.registry import ProtectionPolicy as PartnerPolicy
from gateway.registry import Registry

CMS_CONTENT_TYPE = "application/pkcs7-mime; smime-type=signed-and-enveloped-data"


@dataclass(frozen=True)
class OrgCredentials:
    her_id: int
    signing: Credential
    decryption: tuple[Credential, ...]  # current first, then those kept for rollover


class Security:
    def __init__(self, config: Config):
        self.config = config
        self._keys = dict(config.keys)
        # Loading an RSA key checks it, which costs tens of milliseconds; a municipal gateway
        # serving dozens of organisations loads each one the first time it is needed.
        self._orgs: dict[int, OrgCredentials] = {}
        self._lock = threading.Lock()
        anchors = [c for path in config.trust_anchors for c in load_certificates(path)]
        self.checker = CertificateChecker(anchors, crl_source=FileCrlSource(config.crls))
        self._unknown = UnknownRevocation(
            "accept" if config.unknown_revocation in ("accept", "accept-and-flag") else "retry"
        )
        self._policies: dict[tuple, ProtectionPolicy] = {}

    def org(self, her_id: int) -> OrgCredentials:
        org = self._orgs.get(her_id)
        if org is None:
            with self._lock:
                org = self._orgs.get(her_id)
                if org is None:
                    keys = self._keys[her_id]
                    previous = tuple(Credential.load(k, c) for k, c in keys.previous_enc)
                    org = OrgCredentials(
                        her_id,
                        Credential.load(keys.sign_key, keys.sign_cert),
                        (Credential.load(keys.enc_key, keys.enc_cert), *previous),
                    )
                    self._orgs[her_id] = org
        return org

    def decryption_credentials(self, registry: Registry, to_her: int | None) -> tuple[Credential, ...]:
        """The addressed organisation's keys (current, then those kept for rollover); all of ours
        only when the transport did not say whom the message is for."""
        first = self.org_for(registry, to_her)
        orgs = [first] if first else [self.org(h) for h in self._keys]
        return tuple(o.decryption[0] for o in orgs) + tuple(c for o in orgs for c in o.decryption[1:])

    def policy(self, partner: PartnerPolicy | None) -> ProtectionPolicy:
        if partner is None:
            return ProtectionPolicy(unknown_revocation=self._unknown)
        key = (partner.send_cipher, partner.accept_ciphers, partner.accept_sha1)
        policy = self._policies.get(key)
        if policy is None:
            policy = ProtectionPolicy(
                send_cipher=str(partner.send_cipher),
                accepted_ciphers=frozenset(str(c) for c in partner.accept_ciphers),
                accept_sha1=partner.accept_sha1,
                unknown_revocation=self._unknown,
            )
            self._policies[key] = policy
        return policy

    def org_for(self, registry: Registry, her_id: int | None) -> OrgCredentials | None:
        if her_id is None or her_id not in registry:
            return None
        for party in registry.lineage(her_id):
            if party.her_id in self._keys:
                return self.org(party.her_id)
        return None

    def protect(self, registry: Registry, payload: bytes, sender_her: int | None, receiver_her: int) -> bytes:
        """Sign as the sender's organisation, encrypt for the receiver's encryption certificate."""
        org = self.org_for(registry, sender_her) or (self.org(next(iter(self._keys))) if self._keys else None)
        if org is None:
            raise ProtectionError(FailureKind.OTHER, "this gateway has no signing key configured")
        certs = registry.certificates(receiver_her)
        recipient = certs.encryption_certificate() if certs else None
        if recipient is None:
            raise ProtectionError(
                FailureKind.OTHER,
                f"the address registry has no valid encryption certificate for HER-id {receiver_her}",
            )
        return protect(
            payload,
            signer=org.signing,
            recipient=recipient,
            policy=self.policy(registry.protection(receiver_her)),
        )

    def unprotect(
        self, registry: Registry, body: bytes, from_her: int | None, to_her: int | None = None
    ) -> Unprotected:
        """Decrypt with our keys, verify, and require a signer the registry holds for `from_her`."""
        if from_her is None or from_her not in registry:
            raise ProtectionError(
                FailureKind.NOT_REGISTERED, f"sender HER-id {from_her} is not in the address registry"
            )
        certs = registry.certificates(from_her)
        expected = list(certs.signing_certificates()) if certs else []
        return unprotect(
            body,
            credentials=self.decryption_credentials(registry, to_her),
            checker=self.checker,
            expected_signers=expected,
            policy=self.policy(registry.protection(from_her)),
            at=dt.datetime.now(dt.UTC),
        )
