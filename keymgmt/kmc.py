"""The key-management centre (KMC) for dual certificates.

For an official's *encryption* certificate the KMC makes the key pair, seals the PKCS#8
private key under its storage key (an AES-256 key in a key store — an HSM key where
configured — through :class:`~keymgmt.interfaces.SecretKeyStore`) and hands out only the
public key, with a CSR the new key signed. The sealed key is bound by AES-GCM associated
data to its escrow record (random reference, algorithm, public key hash, storage key), so
ciphertext moved to another row does not open.

Signing keys are never escrowed: :func:`check_encryption_usage` refuses a profile whose
key usage allows signatures. keymgmt cannot read the CA's profiles, so callers pass the
profile's key-usage names in (the orchestration in ``ra.encryption`` does).

Recovery (subscriber, or judicial with a case reference) is requested by a named person
(a security administrator or CA operator account) and needs approvals from ``M`` distinct
key-recovery officers other than the requester; at least ``N`` officers must exist when it
is requested. With fewer than ``M`` approvals nothing is released; one rejection closes
the request. The release makes a new PKCS#12 with a new one-time password, once.

Like every domain service this never commits; every step writes its audit entry in the
caller's transaction. Private key bytes exist only in memory, briefly, inside this module.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select
from sqlalchemy.orm import Session

from govpki import audit
from govpki.audit import canonical_json
from govpki.clock import Clock
from govpki.config import KMC_KEY_ALGORITHMS, KeyAlgorithm
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.events import KmcEvent
from keymgmt.filestore import new_private_key
from keymgmt.interfaces import KeyStoreError, PublicKey, SecretKeyStore
from keymgmt.kmc_models import (
    Decision,
    EscrowedKey,
    KmcStorageKey,
    RecoveryDecision,
    RecoveryKind,
    RecoveryRequest,
    RecoveryState,
)
from keymgmt.policy import KeyPurpose
from keymgmt.services import KeyService

ENCRYPTION_USAGES = frozenset(
    {"key_encipherment", "key_agreement", "key_encipherment_or_agreement", "data_encipherment"}
)
SIGNING_USAGES = frozenset({"digital_signature", "non_repudiation", "key_cert_sign", "crl_sign"})

# who may have keys made and escrowed (as for issuance: an RA officer approving an official's request)
ESCROW_ROLES = frozenset({Role.CA_OPERATOR, Role.RA_OFFICER})
REQUEST_ROLES = frozenset({Role.SECURITY_ADMIN, Role.CA_OPERATOR})  # who may ask for a recovery
READ_ROLES = frozenset({Role.SECURITY_ADMIN, Role.CA_OPERATOR, Role.SECURITY_AUDITOR, Role.KEY_RECOVERY_OFFICER})

MAX_REASON = 2000
MAX_CASE_REFERENCE = 200
_AAD_PURPOSE = "govpki-kmc-escrow-v1"


class OfficerDirectory(Protocol):
    """Who the key-recovery officers are (answered from the accounts, in ``authz``)."""

    def count(self, session: Session) -> int:
        """Enabled accounts holding the key-recovery officer role."""
        ...

    def holds(self, session: Session, principal: Principal) -> bool:
        """``principal`` is such an account now."""
        ...


@dataclass(frozen=True)
class KmcSettings:
    store_name: str  # the key store (by name) that holds the storage key
    key_algorithm: KeyAlgorithm  # default for new escrowed key pairs
    recovery_m: int  # approvals needed
    recovery_n: int  # officers that must exist for a request to be accepted


@dataclass(frozen=True)
class GeneratedKey:
    """A new escrowable key pair, sealed but not yet recorded (see :meth:`KmcService.record_escrow`)."""

    key_ref: str
    profile: str
    algorithm: KeyAlgorithm
    public_key: PublicKey
    public_key_der: bytes
    spki_sha256: str
    csr_der: bytes  # signed by the new key: proof of possession for the CA
    storage_key_id: int
    wrapped_key: bytes


@dataclass(frozen=True)
class Pkcs12Bundle:
    """A PKCS#12 file and its one-time password (shown once; never stored)."""

    data: bytes
    password: str


def check_encryption_usage(profile: str, key_usage: Collection[str]) -> None:
    """Refuse to escrow for a profile that allows signatures, or that is not for encryption."""
    usages = set(key_usage)
    signing = sorted(usages & SIGNING_USAGES)
    if signing:
        raise ForbiddenError(
            f"profile {profile} is a signing profile (key usage {', '.join(signing)}); signing keys are never escrowed",
            field="profile",
            code="kmc.signing_key_not_escrowed",
        )
    if not usages & ENCRYPTION_USAGES:
        raise ForbiddenError(
            f"profile {profile} allows no encryption key usage; the KMC escrows only encryption keys",
            field="profile",
            code="kmc.not_an_encryption_profile",
        )


def one_time_password() -> str:
    """24 URL-safe characters (144 random bits)."""
    return secrets.token_urlsafe(18)


def principal_key(principal: Principal) -> str:
    return f"{principal.kind.value}:{principal.id}"


def _spki(public_key: PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


ESCROW_STORE = "escrow"  # the key record's store for escrowed keys: sealed rows, not a key store


class KmcService:
    def __init__(
        self,
        *,
        settings: KmcSettings,
        keystores: Mapping[str, object],
        officers: OfficerDirectory,
        clock: Clock,
        keys: KeyService | None = None,
    ) -> None:
        if not 2 <= settings.recovery_m <= settings.recovery_n:
            raise InvalidError("recovery needs 2 <= M <= N", field="recovery_m")
        self.settings = settings
        self._keystores = keystores
        self._officers = officers
        self._clock = clock
        self._keys = keys  # records the storage key and each escrowed key (key_records)

    # ----- the storage key -------------------------------------------------

    def _store(self, name: str) -> SecretKeyStore:
        store = self._keystores[name]
        if not isinstance(store, SecretKeyStore):
            raise KeyStoreError(f"key store {name!r} cannot hold secret keys", field="kmc_keystore")
        return store

    def storage_key(self, session: Session) -> KmcStorageKey:
        key = session.scalars(
            select(KmcStorageKey).where(KmcStorageKey.active.is_(True)).order_by(KmcStorageKey.id.desc())
        ).first()
        if key is None:
            raise UnavailableError(
                "the key-management centre has no storage key yet; run 'govpki kmc init'",
                field="storage_key",
                code="kmc.no_storage_key",
            )
        return key

    def ensure_storage_key(self, session: Session, principal: Principal) -> tuple[KmcStorageKey, bool]:
        """The active storage key, made now (AES-256 in the configured store) if there is none.
        Returns ``(key, created)``. Callers commit it before escrowing (issuance commits on its own)."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may set up the key-management centre")
        existing = session.scalars(select(KmcStorageKey).where(KmcStorageKey.active.is_(True))).first()
        if existing is not None:
            return existing, False
        now = self._clock.now()
        name = self.settings.store_name
        handle = self._store(name).generate_secret(f"kmc-storage-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}")
        key = KmcStorageKey(
            key_store=name, key_handle=handle, active=True, created_at=now, created_by=principal.audit_name
        )
        session.add(key)
        session.flush()
        if self._keys is not None:
            self._keys.register(
                session,
                principal,
                purpose=KeyPurpose.KMC_STORAGE,
                store=name,
                handle=handle,
                algorithm="aes-256",
                description="KMC storage key (wraps escrowed encryption keys)",
            )
        audit.record(
            session,
            principal,
            KmcEvent.STORAGE_KEY_CREATE.value,
            object_type="kmc_storage_key",
            object_id=str(key.id),
            details={"key_store": name, "key_handle": handle, "algorithm": "aes-256-gcm"},
            clock=self._clock,
        )
        return key, True

    def record_storage_keys(self, session: Session, principal: Principal) -> int:
        """Give every storage key without a key record one (start-up; idempotent, audited).
        Returns how many were recorded."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError("only a security administrator may record the KMC storage keys")
        if self._keys is None:
            return 0
        return self._keys.register_missing(
            session,
            principal,
            session.scalars(select(KmcStorageKey).order_by(KmcStorageKey.id)),
            purpose=KeyPurpose.KMC_STORAGE,
            algorithm="aes-256",
            description="KMC storage key (wraps escrowed encryption keys)",
        )

    def _aad(self, *, key_ref: str, algorithm: str, spki_sha256: str, storage: KmcStorageKey) -> bytes:
        return canonical_json(
            {
                "purpose": _AAD_PURPOSE,
                "key_ref": key_ref,
                "algorithm": algorithm,
                "spki_sha256": spki_sha256,
                "storage_key": f"{storage.key_store}/{storage.key_handle}",
            }
        ).encode()

    # ----- escrow ----------------------------------------------------------

    def generate(
        self,
        session: Session,
        principal: Principal,
        *,
        profile: str,
        key_usage: Collection[str],
        subject: x509.Name,
        sans: Sequence[x509.GeneralName] = (),
        algorithm: KeyAlgorithm | None = None,
    ) -> GeneratedKey:
        """Make a key pair for an encryption profile, seal its private key under the storage
        key and return the public half with a CSR. Writes nothing: the caller gets the
        certificate issued, then calls :meth:`record_escrow`."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.roles & ESCROW_ROLES:
            raise ForbiddenError("your role may not have encryption keys made", field="profile")
        check_encryption_usage(profile, key_usage)
        chosen = algorithm or self.settings.key_algorithm
        if chosen not in KMC_KEY_ALGORITHMS:
            raise InvalidError(f"must be one of {', '.join(KMC_KEY_ALGORITHMS)}", field="algorithm")
        storage = self.storage_key(session)
        store = self._store(storage.key_store)
        key = new_private_key(chosen)
        public_key = key.public_key()
        spki = _spki(public_key)
        spki_sha256 = hashlib.sha256(spki).hexdigest()
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
        csr = builder.sign(key, hashes.SHA256())
        key_ref = secrets.token_hex(16)
        clear = key.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        wrapped = store.encrypt(
            storage.key_handle,
            clear,
            self._aad(key_ref=key_ref, algorithm=chosen, spki_sha256=spki_sha256, storage=storage),
        )
        del key, clear
        return GeneratedKey(
            key_ref=key_ref,
            profile=profile,
            algorithm=chosen,
            public_key=public_key,
            public_key_der=spki,
            spki_sha256=spki_sha256,
            csr_der=csr.public_bytes(serialization.Encoding.DER),
            storage_key_id=storage.id,
            wrapped_key=wrapped,
        )

    def record_escrow(
        self,
        session: Session,
        principal: Principal,
        generated: GeneratedKey,
        *,
        ca_id: int,
        cert_serial: str,
        subject: str,
    ) -> EscrowedKey:
        """Store the sealed key linked to the certificate issued for it, and audit it."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.roles & ESCROW_ROLES:
            raise ForbiddenError("your role may not escrow keys", field="profile")
        escrow = EscrowedKey(
            key_ref=generated.key_ref,
            created_at=self._clock.now(),
            created_by=principal.audit_name,
            profile=generated.profile,
            subject=subject,
            algorithm=generated.algorithm,
            spki_sha256=generated.spki_sha256,
            public_key_der=generated.public_key_der,
            storage_key_id=generated.storage_key_id,
            wrapped_key=generated.wrapped_key,
            ca_id=ca_id,
            cert_serial=cert_serial,
        )
        session.add(escrow)
        session.flush()
        if self._keys is not None:
            # not in a key store: sealed in escrowed_keys under the storage key ("escrow" names that)
            self._keys.register(
                session,
                principal,
                purpose=KeyPurpose.ESCROWED_ENCRYPTION,
                store=ESCROW_STORE,
                handle=generated.key_ref,
                algorithm=generated.algorithm,
                public_key=generated.public_key,
                description=f"escrowed encryption key of certificate {cert_serial}",
            )
        audit.record(
            session,
            principal,
            KmcEvent.ESCROW_CREATE.value,
            object_type="escrowed_key",
            object_id=str(escrow.id),
            details={
                "key_ref": escrow.key_ref,
                "profile": escrow.profile,
                "subject": subject,
                "algorithm": escrow.algorithm,
                "spki_sha256": escrow.spki_sha256,
                "ca_id": ca_id,
                "serial": cert_serial,
                "storage_key_id": escrow.storage_key_id,
            },
            clock=self._clock,
        )
        return escrow

    def get_escrow(self, session: Session, principal: Principal, escrow_id: int) -> EscrowedKey:
        self._check_read(principal)
        escrow = session.get(EscrowedKey, escrow_id)
        if escrow is None:
            raise NotFoundError(f"no escrowed key with id {escrow_id}", field="escrow_id", code="kmc.escrow_not_found")
        return escrow

    def list_escrows(self, session: Session, principal: Principal, *, limit: int = 50) -> list[EscrowedKey]:
        self._check_read(principal)
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit")
        return list(session.scalars(select(EscrowedKey).order_by(EscrowedKey.id.desc()).limit(limit)))

    def pkcs12(
        self, escrow: EscrowedKey, *, certificate: x509.Certificate, chain: Sequence[x509.Certificate], name: str
    ) -> Pkcs12Bundle:
        """The escrowed key with its certificate and chain as PKCS#12 (PBES2, AES-256-CBC,
        PBKDF2-HMAC-SHA256, SHA-256 MAC) under a new one-time password."""
        if _spki(_public_of(certificate)) != escrow.public_key_der:
            raise InvalidError(
                f"the certificate is not for escrowed key {escrow.id}",
                field="certificate",
                code="kmc.wrong_certificate",
            )
        key = self._unwrap(escrow)
        password = one_time_password()
        encryption = (
            serialization.PrivateFormat.PKCS12.encryption_builder()
            .kdf_rounds(100_000)
            .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
            .hmac_hash(hashes.SHA256())
            .build(password.encode())
        )
        data = pkcs12.serialize_key_and_certificates(name.encode(), key, certificate, list(chain), encryption)
        return Pkcs12Bundle(data=data, password=password)

    def _unwrap(self, escrow: EscrowedKey) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
        storage = escrow.storage_key
        clear = self._store(storage.key_store).decrypt(
            storage.key_handle,
            escrow.wrapped_key,
            self._aad(
                key_ref=escrow.key_ref, algorithm=escrow.algorithm, spki_sha256=escrow.spki_sha256, storage=storage
            ),
        )
        key = serialization.load_der_private_key(clear, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) or _spki(key.public_key()) != (
            escrow.public_key_der
        ):
            raise KeyStoreError(f"escrowed key {escrow.id} does not match its recorded public key")
        return key

    # ----- recovery --------------------------------------------------------

    def _check_read(self, principal: Principal) -> None:
        if principal.kind is not PrincipalKind.SYSTEM and not principal.roles & READ_ROLES:
            raise ForbiddenError("your role may not read the key-management centre's records")

    def _request(self, session: Session, request_id: int, *, lock: bool = False) -> RecoveryRequest:
        query = select(RecoveryRequest).where(RecoveryRequest.id == request_id)
        if lock:  # serialise decisions and the release per request; read its decisions afresh
            query = query.with_for_update().execution_options(populate_existing=True)
        found = session.scalars(query).first()
        if found is None:
            raise NotFoundError(
                f"no recovery request with id {request_id}", field="request_id", code="kmc.recovery_not_found"
            )
        return found

    def request_recovery(
        self,
        session: Session,
        principal: Principal,
        *,
        escrow_id: int,
        kind: str,
        reason: str,
        case_reference: str | None = None,
    ) -> RecoveryRequest:
        """Ask for an escrowed key back. The requester is a named person (an account)."""
        if principal.kind is not PrincipalKind.ACCOUNT or not principal.roles & REQUEST_ROLES:
            raise ForbiddenError(
                "a recovery is requested by a signed-in security administrator or CA operator",
                field="principal",
                code="kmc.may_not_request",
            )
        if kind not in {k.value for k in RecoveryKind}:
            raise InvalidError(
                f"unknown recovery kind {kind!r}; one of {', '.join(k.value for k in RecoveryKind)}",
                field="kind",
                code="kmc.unknown_recovery_kind",
            )
        case = (case_reference or "").strip() or None
        if kind == RecoveryKind.JUDICIAL and case is None:
            raise InvalidError(
                "a judicial recovery needs the case reference of the legal request",
                field="case_reference",
                code="kmc.case_reference_required",
            )
        if case is not None and len(case) > MAX_CASE_REFERENCE:
            raise InvalidError(f"must be at most {MAX_CASE_REFERENCE} characters", field="case_reference")
        reason = (reason or "").strip()
        if not reason:
            raise InvalidError("say why the key is to be recovered", field="reason", code="kmc.reason_required")
        if len(reason) > MAX_REASON:
            raise InvalidError(f"must be at most {MAX_REASON} characters", field="reason")
        escrow = session.get(EscrowedKey, escrow_id)
        if escrow is None:
            raise NotFoundError(f"no escrowed key with id {escrow_id}", field="escrow_id", code="kmc.escrow_not_found")
        officers = self._officers.count(session)
        if officers < self.settings.recovery_n:
            raise UnavailableError(
                f"recovery needs {self.settings.recovery_n} key-recovery officers to exist; there are {officers}",
                field="escrow_id",
                code="kmc.not_enough_officers",
            )
        request = RecoveryRequest(
            escrow_id=escrow.id,
            kind=kind,
            case_reference=case,
            reason=reason,
            state=RecoveryState.PENDING.value,
            required_approvals=self.settings.recovery_m,
            requester=principal_key(principal),
            requested_by=principal.audit_name,
            requested_at=self._clock.now(),
        )
        session.add(request)
        session.flush()
        audit.record(
            session,
            principal,
            KmcEvent.RECOVERY_REQUEST.value,
            object_type="recovery_request",
            object_id=str(request.id),
            details={
                "escrow_id": escrow.id,
                "serial": escrow.cert_serial,
                "kind": kind,
                "case_reference": case,
                "reason": reason,
                "required_approvals": request.required_approvals,
                "officers": officers,
            },
            clock=self._clock,
        )
        return request

    def _decide(
        self, session: Session, principal: Principal, request_id: int, decision: Decision, comment: str | None
    ) -> RecoveryRequest:
        if not principal.has(Role.KEY_RECOVERY_OFFICER) or not self._officers.holds(session, principal):
            raise ForbiddenError(
                "only a signed-in key-recovery officer may approve or reject a recovery",
                field="principal",
                code="kmc.not_an_officer",
            )
        request = self._request(session, request_id, lock=True)
        if request.requester == principal_key(principal):
            raise ForbiddenError(
                "the requester of a recovery may not decide it", field="principal", code="kmc.requester_cannot_decide"
            )
        if any(d.officer == principal_key(principal) for d in request.decisions):
            raise ConflictError(
                f"you have already decided recovery request {request.id}",
                field="request_id",
                code="kmc.already_decided",
            )
        if request.state != RecoveryState.PENDING:
            raise ConflictError(
                f"recovery request {request.id} is {request.state}, not pending",
                field="request_id",
                code="kmc.not_pending",
            )
        comment = (comment or "").strip() or None
        if decision is Decision.REJECT and comment is None:
            raise InvalidError("say why the recovery is rejected", field="reason", code="kmc.reason_required")
        if comment is not None and len(comment) > MAX_REASON:
            raise InvalidError(f"must be at most {MAX_REASON} characters", field="reason")
        now = self._clock.now()
        request.decisions.append(
            RecoveryDecision(
                officer=principal_key(principal),
                officer_name=principal.audit_name,
                decision=decision.value,
                comment=comment,
                decided_at=now,
            )
        )
        if decision is Decision.REJECT:
            request.state = RecoveryState.REJECTED.value
            request.decided_at = now
        elif request.approvals >= request.required_approvals:
            request.state = RecoveryState.APPROVED.value
            request.decided_at = now
        session.flush()
        audit.record(
            session,
            principal,
            (KmcEvent.RECOVERY_APPROVE if decision is Decision.APPROVE else KmcEvent.RECOVERY_REJECT).value,
            object_type="recovery_request",
            object_id=str(request.id),
            details={
                "escrow_id": request.escrow_id,
                "approvals": request.approvals,
                "required_approvals": request.required_approvals,
                "state": request.state,
                "comment": comment,
            },
            clock=self._clock,
        )
        return request

    def approve(
        self, session: Session, principal: Principal, request_id: int, *, comment: str | None = None
    ) -> RecoveryRequest:
        """One officer's approval; the M-th makes the request ``approved``."""
        return self._decide(session, principal, request_id, Decision.APPROVE, comment)

    def reject(self, session: Session, principal: Principal, request_id: int, *, reason: str) -> RecoveryRequest:
        """One officer's rejection closes the request: nothing will be released for it."""
        return self._decide(session, principal, request_id, Decision.REJECT, reason)

    def check_releasable(self, session: Session, principal: Principal, request_id: int) -> RecoveryRequest:
        """The request, if ``principal`` (its requester) may release it now; locked for the release."""
        request = self._request(session, request_id, lock=True)
        if principal.kind is not PrincipalKind.ACCOUNT or request.requester != principal_key(principal):
            raise ForbiddenError(
                "only the requester of a recovery may release it", field="principal", code="kmc.not_the_requester"
            )
        if request.state == RecoveryState.RELEASED:
            raise ConflictError(
                f"recovery request {request.id} was released already; make a new request",
                field="request_id",
                code="kmc.already_released",
            )
        if request.state == RecoveryState.REJECTED:
            raise ConflictError(
                f"recovery request {request.id} was rejected", field="request_id", code="kmc.recovery_rejected"
            )
        # counted from the decisions themselves, not only from the state
        if request.state != RecoveryState.APPROVED or request.approvals < request.required_approvals:
            raise ConflictError(
                f"recovery request {request.id} has {request.approvals} of the {request.required_approvals} "
                "approvals it needs",
                field="request_id",
                code="kmc.not_enough_approvals",
            )
        return request

    def release(
        self,
        session: Session,
        principal: Principal,
        request_id: int,
        *,
        certificate: x509.Certificate,
        chain: Sequence[x509.Certificate],
        name: str,
    ) -> tuple[RecoveryRequest, Pkcs12Bundle]:
        """Hand the approved key out once, as a new PKCS#12 under a new one-time password."""
        request = self.check_releasable(session, principal, request_id)
        bundle = self.pkcs12(request.escrow, certificate=certificate, chain=chain, name=name)
        now = self._clock.now()
        request.state = RecoveryState.RELEASED.value
        request.released_at = now
        request.released_by = principal.audit_name
        session.flush()
        audit.record(
            session,
            principal,
            KmcEvent.RECOVERY_RELEASE.value,
            object_type="recovery_request",
            object_id=str(request.id),
            details={
                "escrow_id": request.escrow_id,
                "serial": request.escrow.cert_serial,
                "kind": request.kind,
                "case_reference": request.case_reference,
                "approvals": request.approvals,
                "approved_by": [d.officer_name for d in request.decisions if d.decision == Decision.APPROVE.value],
                "pkcs12_sha256": hashlib.sha256(bundle.data).hexdigest(),
            },
            clock=self._clock,
        )
        return request, bundle

    def list_requests(
        self, session: Session, principal: Principal, *, state: str | None = None, limit: int = 50
    ) -> list[RecoveryRequest]:
        self._check_read(principal)
        if state is not None and state not in {s.value for s in RecoveryState}:
            raise InvalidError(
                f"unknown state {state!r}; one of {', '.join(s.value for s in RecoveryState)}", field="state"
            )
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit")
        query = select(RecoveryRequest).order_by(RecoveryRequest.id.desc()).limit(limit)
        if state is not None:
            query = query.where(RecoveryRequest.state == state)
        return list(session.scalars(query))

    def get_request(self, session: Session, principal: Principal, request_id: int) -> RecoveryRequest:
        self._check_read(principal)
        return self._request(session, request_id)


def _public_of(certificate: x509.Certificate) -> PublicKey:
    key = certificate.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise InvalidError("the certificate has an unsupported key type", field="certificate")
    return key
