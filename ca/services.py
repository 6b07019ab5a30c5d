"""The certificate authority: hierarchy set-up and the issuance pipeline.

Pipeline (boulder's order): check the CSR → reserve a serial and store the
request (ledger, committed) → build the to-be-signed certificate → sign a copy
with a throw-away key and lint it (refuse on ERROR/FATAL) → store the exact TBS
(ledger, committed) → sign with the CA key → check the TBS is unchanged →
store the certificate (ledger, committed). Every ledger write carries its audit
entry in its own transaction; see ca.ledger for what that asks of callers.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import column, exists, func, select, table
from sqlalchemy.orm import Session

from ca import lint
from ca.builder import IssuerUrls, build_name, certificate_builder, validity
from ca.csr import OID_FIELDS, CheckedRequest, check_csr, check_sans, check_subject_value
from ca.events import CaEvent
from ca.ledger import IssuanceLedger, new_serial, serial_hex
from ca.models import (
    POSSIBLY_ISSUED,
    CaKind,
    CaStatus,
    CertificateAuthority,
    CertificateRecord,
    CertState,
    CrossCertificate,
    CrossDirection,
    OcspResponder,
    RevocationReason,
)
from ca.profiles import Profile, ProfileSet, SubjectField
from govpki import audit
from govpki.clock import Clock
from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.faults import crash_point
from govpki.mailaddr import check_address
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.interfaces import KeyStore, PublicKey, signature_hash
from keymgmt.policy import KeyPurpose, load_key_policy
from keymgmt.services import KeyService

READ_ROLES = frozenset({Role.CA_OPERATOR, Role.SECURITY_ADMIN, Role.SECURITY_AUDITOR})
ISSUE_ROLES = frozenset({Role.CA_OPERATOR})
SETUP_ROLES = frozenset({Role.SECURITY_ADMIN})


def can_read(principal: Principal) -> bool:
    return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles & READ_ROLES)


def can_issue(principal: Principal) -> bool:
    return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles & ISSUE_ROLES)


def can_request(principal: Principal) -> bool:
    """May ask the CA to issue, renew or change the status of subscriber certificates: a CA
    operator (or the service), or a prefecture RA officer for its own prefecture, whose
    approval of a request is carried out with the officer as the acting principal."""
    return can_issue(principal) or (principal.has(Role.RA_OFFICER) and principal.prefecture is not None)


def can_set_up(principal: Principal) -> bool:
    return principal.kind is PrincipalKind.SYSTEM or bool(principal.roles & SETUP_ROLES)


@dataclass(frozen=True)
class CaIdentity:
    """Fixed parts of every name this CA writes: C=CN, ST=<province>, O=<organisation>."""

    country: str
    province: str
    organization: str

    def fields(self) -> dict[SubjectField, str]:
        return {"C": self.country, "ST": self.province, "O": self.organization}


@dataclass(frozen=True)
class CaSettings:
    identity: CaIdentity
    base_url: str
    root_name: str
    issuing_name: str
    root_key_algorithm: KeyAlgorithm
    issuing_key_algorithm: KeyAlgorithm
    root_validity_days: int
    issuing_validity_days: int


class _LintKeys:
    """One throw-away key per key shape, made once per process (like boulder's lint issuer)."""

    def __init__(self) -> None:
        self._keys: dict[tuple[str, int], ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {}
        self._lock = threading.Lock()

    def like(self, public_key: PublicKey) -> ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey:
        shape = (
            ("ec", public_key.curve.key_size)
            if isinstance(public_key, ec.EllipticCurvePublicKey)
            else ("rsa", public_key.key_size)
        )
        with self._lock:
            key = self._keys.get(shape)
            if key is None:
                if isinstance(public_key, ec.EllipticCurvePublicKey):
                    key = ec.generate_private_key(public_key.curve)
                else:
                    key = rsa.generate_private_key(65537, public_key.key_size)
                self._keys[shape] = key
            return key


_LINT_KEYS = _LintKeys()


def fingerprint(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


def spki_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate's SubjectPublicKeyInfo (the key's fingerprint)."""
    return fingerprint(
        cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


@dataclass(frozen=True)
class Rollover:
    """What a rollover made: the CA that stopped issuing, its successor and (a root
    rollover) the two cross-certificates, NewWithOld first."""

    old: CertificateAuthority
    new: CertificateAuthority
    crosses: tuple[CrossCertificate, ...] = ()


MAX_CN = 64  # ub-common-name
MAX_OFFSET = 2**62  # a list's offset: well within a 64-bit LIMIT/OFFSET (SQLite, PostgreSQL)


def _san_text(sans: Sequence[x509.GeneralName]) -> str:
    kinds = {x509.DNSName: "DNS", x509.IPAddress: "IP", x509.RFC822Name: "email", x509.UniformResourceIdentifier: "URI"}
    return ", ".join(f"{kinds.get(type(gn), type(gn).__name__)}:{gn.value}" for gn in sans)


class CaService:
    def __init__(
        self,
        *,
        settings: CaSettings,
        profiles: ProfileSet,
        keystores: Mapping[str, KeyStore],
        ledger: IssuanceLedger,
        clock: Clock,
        keys: KeyService | None = None,
    ) -> None:
        self.settings = settings
        self.profiles = profiles
        self._keystores = keystores
        self._ledger = ledger
        self._clock = clock
        self._keys = keys or KeyService(keystores, clock, load_key_policy())

    # ----- reading ---------------------------------------------------------

    def active_ca(self, session: Session, kind: CaKind) -> CertificateAuthority:
        ca = session.scalars(
            select(CertificateAuthority)
            .where(CertificateAuthority.kind == kind.value, CertificateAuthority.active.is_(True))
            .order_by(CertificateAuthority.id.desc())
        ).first()
        if ca is None:
            raise NotFoundError(f"there is no active {kind.value} CA; run 'govpki init' first", field="ca")
        return ca

    def find_ca(self, session: Session, ca_id: int) -> CertificateAuthority:
        ca = session.get(CertificateAuthority, ca_id)
        if ca is None:
            raise NotFoundError(f"no CA with id {ca_id}", field="ca")
        return ca

    def list_cas(self, session: Session) -> list[CertificateAuthority]:
        return list(session.scalars(select(CertificateAuthority).order_by(CertificateAuthority.id)))

    def get_certificate(self, session: Session, principal: Principal, serial: str) -> CertificateRecord:
        if not can_read(principal):
            raise ForbiddenError("your role may not read certificate records", field="serial")
        normalized = normalize_serial(serial)
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == normalized)).first()
        if record is None:
            raise NotFoundError(f"no certificate with serial {serial}", field="serial")
        return record

    def list_certificates(
        self, session: Session, principal: Principal, *, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[CertificateRecord]:
        if not can_read(principal):
            raise ForbiddenError("your role may not read certificate records")
        if state is not None and state not in {s.value for s in CertState}:
            raise InvalidError(
                f"unknown state {state!r}; one of {', '.join(s.value for s in CertState)}", field="state"
            )
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit")
        if not 0 <= offset <= MAX_OFFSET:
            raise InvalidError(f"must be between 0 and {MAX_OFFSET}", field="offset", code="ca.bad_offset")
        query = select(CertificateRecord).order_by(CertificateRecord.id.desc()).limit(limit).offset(offset)
        if state is not None:
            query = query.where(CertificateRecord.state == state)
        return list(session.scalars(query))

    # ----- set-up ----------------------------------------------------------

    def urls_for(self, ca: CertificateAuthority) -> IssuerUrls:
        base = self.settings.base_url
        return IssuerUrls(ca_issuers=f"{base}/ca/{ca.id}.der", ocsp=f"{base}/ocsp", crl=f"{base}/crl/{ca.id}.crl")

    def _store(self, kind: CaKind) -> tuple[str, KeyStore]:
        name = "root" if kind is CaKind.ROOT else "online"
        return name, self._keystores[name]

    def create_root(self, session: Session, principal: Principal) -> CertificateAuthority:
        """The root key ceremony: a new key in the root key store and a self-signed certificate."""
        if not can_set_up(principal):
            raise ForbiddenError("only a security administrator may create a CA")
        existing = session.scalars(
            select(CertificateAuthority).where(CertificateAuthority.kind == CaKind.ROOT.value)
        ).first()
        if existing is not None:
            raise ConflictError(f"a root CA already exists ({existing.name})", field="ca")
        return self._new_root(session, principal, self.settings.root_name)

    def _new_root(self, session: Session, principal: Principal, name: str) -> CertificateAuthority:
        settings = self.settings
        if len(name) > MAX_CN:
            raise InvalidError(f"the CA name {name!r} is longer than {MAX_CN} characters", field="name")
        self._keys.check_algorithm(KeyPurpose.ROOT, settings.root_key_algorithm, "root_key_algorithm")
        store_name, store = self._store(CaKind.ROOT)
        now = self._clock.now()
        handle = store.generate(_key_label("root", now), settings.root_key_algorithm)
        signer = store.signer(handle)
        public_key = signer.public_key()
        profile = self.profiles.get("subordinate-ca").model_copy(
            update={"name": "root", "path_length": None, "validity_days": settings.root_validity_days}
        )
        subject = build_name([*settings.identity.fields().items(), ("CN", name)])
        not_before, not_after = validity(profile, now, None)
        builder = certificate_builder(
            profile=profile,
            subject=subject,
            public_key=public_key,
            serial=new_serial(),
            not_before=not_before,
            not_after=not_after,
            issuer=None,
            urls=None,
        )
        self._lint_copy(builder, public_key)
        cert = builder.sign(signer, signature_hash(public_key))
        return self._add_ca(
            session,
            principal,
            CaKind.ROOT,
            name,
            None,
            store_name,
            handle,
            settings.root_key_algorithm,
            cert,
        )

    def create_issuing(self, session: Session, principal: Principal) -> CertificateAuthority:
        """A new online issuing CA key and its certificate from the root (pathLen 0), through the pipeline."""
        if not can_set_up(principal):
            raise ForbiddenError("only a security administrator may create a CA")
        root = self.active_ca(session, CaKind.ROOT)
        return self._new_issuing(session, principal, root, self.settings.issuing_name)

    def _new_issuing(
        self, session: Session, principal: Principal, root: CertificateAuthority, name: str
    ) -> CertificateAuthority:
        settings = self.settings
        # the root key must be at hand before a new issuing key is made for it
        self._keystores[root.key_store].signer(root.key_handle)
        self._keys.check_algorithm(KeyPurpose.ISSUING_CA, settings.issuing_key_algorithm, "issuing_key_algorithm")
        store_name, store = self._store(CaKind.ISSUING)
        now = self._clock.now()
        handle = store.generate(_key_label("issuing", now), settings.issuing_key_algorithm)
        signer = store.signer(handle)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, name)]))
            .sign(signer, signature_hash(signer.public_key()))
        )
        profile = self.profiles.get("subordinate-ca")
        profile = profile.model_copy(update={"validity_days": settings.issuing_validity_days})
        record = self._issue(
            session,
            principal,
            profile=profile,
            checked=check_csr(csr.public_bytes(serialization.Encoding.DER), profile),
            identity={},
            issuer=root,
        )
        assert record.cert_der is not None
        cert = x509.load_der_x509_certificate(record.cert_der)
        return self._add_ca(
            session,
            principal,
            CaKind.ISSUING,
            name,
            root.id,
            store_name,
            handle,
            settings.issuing_key_algorithm,
            cert,
        )

    # ----- rollover and retirement ----------------------------------------

    def _generation_name(self, session: Session, kind: CaKind, base: str) -> str:
        """``<base> G<n>``: n is one more than the CAs of this kind so far (unique)."""
        n = session.scalar(
            select(func.count()).select_from(CertificateAuthority).where(CertificateAuthority.kind == kind.value)
        )
        generation = int(n or 0) + 1
        while True:
            name = f"{base} G{generation}"
            taken = session.scalar(select(exists().where(CertificateAuthority.name == name)))
            if not taken:
                return name
            generation += 1

    def _supersede_others(self, session: Session, kind: CaKind, new: CertificateAuthority) -> None:
        """Every other active CA of ``kind`` stops issuing (it keeps serving until retired)."""
        now = self._clock.now()
        for previous in session.scalars(
            select(CertificateAuthority).where(
                CertificateAuthority.kind == kind.value,
                CertificateAuthority.active.is_(True),
                CertificateAuthority.id != new.id,
            )
        ).all():
            previous.active = False
            previous.superseded_at = now
        session.flush()

    def rollover_issuing(self, session: Session, principal: Principal) -> Rollover:
        """A new issuing CA key and certificate under the active root (same pipeline as
        ``create_issuing``), named ``<issuing name> G<n>``. New certificates come from it
        at once; the old CA stops issuing but keeps signing its CRLs and OCSP responses
        (its delegated responder is still renewed) until :meth:`retire_due` retires it.

        Issues through the ledger: call with a session holding no uncommitted writes
        (e.g. after committing a root rollover). The caller commits."""
        if not can_set_up(principal):
            raise ForbiddenError("only a security administrator may roll over a CA key", field="ca")
        if audit.holds_audit_lock(session) or session.new or session.dirty or session.deleted:
            raise RuntimeError("CaService.rollover_issuing needs a session without uncommitted writes (see ca.ledger)")
        old = self.active_ca(session, CaKind.ISSUING)
        root = self.active_ca(session, CaKind.ROOT)
        name = self._generation_name(session, CaKind.ISSUING, self.settings.issuing_name)
        new = self._new_issuing(session, principal, root, name)
        self._supersede_others(session, CaKind.ISSUING, new)
        audit.record(
            session,
            principal,
            CaEvent.ISSUING_ROLLOVER.value,
            object_type="ca",
            object_id=str(new.id),
            details={**_rollover_details(old, new), "root_ca_id": root.id},
            clock=self._clock,
        )
        return Rollover(old=old, new=new)

    def rollover_root(self, session: Session, principal: Principal) -> Rollover:
        """RFC 4210 section 4.4 root key update: a new root key in the root key store, a new
        self-signed root ``<root name> G<n>`` and the cross-certificates NewWithOld (the new
        root's name and key signed by the old root key) and OldWithNew (the old root's
        name and key signed by the new root key). The old root stops certifying CAs but
        stays a trust anchor and signs its ARL until it is retired. Needs both root
        keys (a ceremony). The caller commits, then rolls the issuing CA over
        (:meth:`rollover_issuing`) so that a new issuing CA exists under the new root."""
        if not can_set_up(principal):
            raise ForbiddenError("only a security administrator may roll over a CA key", field="ca")
        old = self.active_ca(session, CaKind.ROOT)
        old_signer = self._keystores[old.key_store].signer(old.key_handle)  # the old key must be at hand first
        new = self._new_root(session, principal, self._generation_name(session, CaKind.ROOT, self.settings.root_name))
        new_signer = self._keystores[new.key_store].signer(new.key_handle)
        old_cert = x509.load_der_x509_certificate(old.cert_der)
        new_cert = x509.load_der_x509_certificate(new.cert_der)
        crosses = (
            self._cross(session, principal, CrossDirection.NEW_WITH_OLD, new, new_cert, old, old_cert, old_signer),
            self._cross(session, principal, CrossDirection.OLD_WITH_NEW, old, old_cert, new, new_cert, new_signer),
        )
        self._supersede_others(session, CaKind.ROOT, new)
        audit.record(
            session,
            principal,
            CaEvent.ROOT_ROLLOVER.value,
            object_type="ca",
            object_id=str(new.id),
            details={
                **_rollover_details(old, new),
                "cross_certificates": {c.direction: c.fingerprint_sha256 for c in crosses},
            },
            clock=self._clock,
        )
        return Rollover(old=old, new=new, crosses=crosses)

    def _cross(
        self,
        session: Session,
        principal: Principal,
        direction: CrossDirection,
        subject_ca: CertificateAuthority,
        subject_cert: x509.Certificate,
        issuer_ca: CertificateAuthority,
        issuer_cert: x509.Certificate,
        issuer_signer: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey,
    ) -> CrossCertificate:
        """The subject root's exact name and key (so its SKI) under the issuer root's name,
        key and SKI (as AKI): path builders match it like any CA certificate. Valid from
        now until the earlier of the two roots' ends; no path length constraint."""
        profile = self.profiles.get("subordinate-ca").model_copy(update={"name": "cross", "path_length": None})
        now = self._clock.now().replace(microsecond=0)
        not_after = min(subject_cert.not_valid_after_utc, issuer_cert.not_valid_after_utc)
        issuer_key = _public_of(issuer_cert)
        builder = certificate_builder(
            profile=profile,
            subject=subject_cert.subject,
            public_key=_public_of(subject_cert),
            serial=new_serial(),
            not_before=now,
            not_after=not_after,
            issuer=issuer_cert,
            urls=None,
        )
        self._lint_copy(builder, issuer_key)
        cert = builder.sign(issuer_signer, signature_hash(issuer_key))
        der = cert.public_bytes(serialization.Encoding.DER)
        cross = CrossCertificate(
            direction=direction.value,
            subject_ca_id=subject_ca.id,
            issuer_ca_id=issuer_ca.id,
            serial=serial_hex(cert.serial_number),
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            fingerprint_sha256=fingerprint(der),
            cert_der=der,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            created_at=self._clock.now(),
        )
        session.add(cross)
        session.flush()
        audit.record(
            session,
            principal,
            CaEvent.CROSS_CREATE.value,
            object_type="cross_certificate",
            object_id=str(cross.id),
            details={
                "direction": direction.value,
                "subject_ca_id": subject_ca.id,
                "issuer_ca_id": issuer_ca.id,
                "serial": cross.serial,
                "subject": cross.subject,
                "issuer": cross.issuer,
                "fingerprint_sha256": cross.fingerprint_sha256,
                "spki_sha256": spki_fingerprint(cert),
                "not_after": cross.not_after.isoformat(),
            },
            clock=self._clock,
        )
        return cross

    def retire_due(self, session: Session, principal: Principal) -> list[CertificateAuthority]:
        """Retire the superseded CAs that have nothing left to serve: an issuing CA once
        every certificate it issued has expired (its own delegated OCSP responder
        certificates aside), a root once every CA under it is retired. A retired CA signs
        no more CRLs or OCSP responses, its responders are retired and it is no longer a
        trust anchor or intermediate of the validation service. The caller commits."""
        if not (can_issue(principal) or can_set_up(principal)):
            raise ForbiddenError("your role may not retire CAs", field="ca")
        now = self._clock.now()
        retired: list[CertificateAuthority] = []
        candidates = session.scalars(
            select(CertificateAuthority)
            .where(CertificateAuthority.active.is_(False), CertificateAuthority.retired_at.is_(None))
            .order_by(CertificateAuthority.kind, CertificateAuthority.id)  # "issuing" before "root"
        ).all()
        for ca in candidates:
            if ca.kind == CaKind.ISSUING.value:
                last = session.scalar(
                    select(func.max(CertificateRecord.not_after)).where(
                        CertificateRecord.ca_id == ca.id,
                        CertificateRecord.state.in_(POSSIBLY_ISSUED),
                        CertificateRecord.id.not_in(select(OcspResponder.certificate_id)),
                    )
                )
                if last is not None and last > now:
                    continue
            else:
                serving_child = session.scalar(
                    select(
                        exists().where(
                            CertificateAuthority.parent_id == ca.id, CertificateAuthority.retired_at.is_(None)
                        )
                    )
                )
                if serving_child:
                    continue
                last = None
            self.retire(session, principal, ca, last_certificate_expired=last)
            retired.append(ca)
        return retired

    def retire(
        self,
        session: Session,
        principal: Principal,
        ca: CertificateAuthority,
        *,
        last_certificate_expired: _dt.datetime | None = None,
    ) -> None:
        """Mark ``ca`` retired (audited) and retire its OCSP responders. This is where a
        CA key stops being used for good (key records: retire the key here)."""
        now = self._clock.now()
        ca.active = False
        ca.retired_at = now
        responders = session.scalars(
            select(OcspResponder).where(OcspResponder.ca_id == ca.id, OcspResponder.active.is_(True))
        ).all()
        for responder in responders:
            responder.active = False
        session.flush()
        for responder in responders:
            audit.record(
                session,
                principal,
                CaEvent.OCSP_RESPONDER_RETIRE.value,
                object_type="ocsp_responder",
                object_id=str(responder.id),
                details={"ca_id": ca.id, "replaced_by": None, "not_after": responder.not_after.isoformat()},
                clock=self._clock,
            )
        # the CA key (and its responders' keys) stop being used for good
        self._keys.retire_used_key(session, principal, ca.key_store, ca.key_handle, f"CA {ca.id} retired")
        for responder in responders:
            self._keys.retire_used_key(
                session, principal, responder.key_store, responder.key_handle, f"CA {ca.id} retired"
            )
        audit.record(
            session,
            principal,
            CaEvent.CA_RETIRE.value,
            object_type="ca",
            object_id=str(ca.id),
            details={
                **_ca_details(ca),
                "superseded_at": ca.superseded_at.isoformat() if ca.superseded_at else None,
                "last_certificate_expired": last_certificate_expired.isoformat() if last_certificate_expired else None,
            },
            clock=self._clock,
        )

    # ----- cross-certificates and chains ----------------------------------

    def cross_certificates(self, session: Session) -> list[CrossCertificate]:
        return list(session.scalars(select(CrossCertificate).order_by(CrossCertificate.id)))

    def find_cross(self, session: Session, cross_id: int) -> CrossCertificate:
        cross = session.get(CrossCertificate, cross_id)
        if cross is None:
            raise NotFoundError(f"no cross-certificate with id {cross_id}", field="cross")
        return cross

    def chain_extras(self, session: Session, root: CertificateAuthority) -> list[CrossCertificate]:
        """Cross-certificates that let clients trusting an older (still serving) root reach
        ``root``: those with ``root``'s name and key, unexpired, signed by a root that is
        not retired. Offered after the root wherever a chain is offered."""
        now = self._clock.now()
        crosses = session.scalars(
            select(CrossCertificate)
            .where(CrossCertificate.subject_ca_id == root.id, CrossCertificate.not_after > now)
            .order_by(CrossCertificate.id)
        ).all()
        return [c for c in crosses if c.issuer_ca.retired_at is None]

    def _add_ca(
        self,
        session: Session,
        principal: Principal,
        kind: CaKind,
        name: str,
        parent_id: int | None,
        store: str,
        handle: str,
        algorithm: KeyAlgorithm,
        cert: x509.Certificate,
    ) -> CertificateAuthority:
        der = cert.public_bytes(serialization.Encoding.DER)
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex()
        ca = CertificateAuthority(
            name=name,
            kind=kind.value,
            parent_id=parent_id,
            key_store=store,
            key_handle=handle,
            key_algorithm=algorithm,
            serial=serial_hex(cert.serial_number),
            subject=cert.subject.rfc4514_string(),
            ski=ski,
            fingerprint_sha256=fingerprint(der),
            cert_der=der,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            active=True,
            created_at=self._clock.now(),
        )
        session.add(ca)
        session.flush()
        session.add(CaStatus(ca_id=ca.id, status_seq=0, crl_number=0, updated_at=self._clock.now()))
        audit.record(
            session,
            principal,
            (CaEvent.ROOT_CREATE if kind is CaKind.ROOT else CaEvent.ISSUING_CREATE).value,
            object_type="ca",
            object_id=str(ca.id),
            details=_ca_details(ca),
            clock=self._clock,
        )
        public_key = cert.public_key()
        assert isinstance(public_key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        self._keys.register(
            session,
            principal,
            purpose=KeyPurpose.ROOT if kind is CaKind.ROOT else KeyPurpose.ISSUING_CA,
            store=store,
            handle=handle,
            algorithm=algorithm,
            public_key=public_key,
            description=f"{kind.value} CA {ca.id} {name}",
        )
        if kind is CaKind.ROOT:
            self._keys.count_use(session, store, handle)  # its self-signed certificate
        return ca

    # ----- issuance --------------------------------------------------------

    def issue(
        self,
        session: Session,
        principal: Principal,
        *,
        profile: str,
        csr: bytes | str,
        identity: Mapping[SubjectField, str] | None = None,
        issuer_id: int | None = None,
        validity_days: int | None = None,
        prefecture: str | None = None,
        contact_email: str | None = None,
        registered_sans: Sequence[x509.GeneralName] | None = None,
        unique_key: bool = False,
    ) -> CertificateRecord:
        """Issue one certificate. ``identity`` holds subject fields from the registered
        identity (the RA's); they override the CSR's. C, ST and O always come from the CA.
        ``issuer_id`` names the issuing CA (default: the active CA the profile names);
        ``validity_days`` may shorten the profile's validity, never lengthen it.
        ``prefecture`` (area code; default the principal's) and ``contact_email`` say whom
        expiry notices go to (the prefecture's RA and the subscriber).
        ``registered_sans`` (an RA's registered names): the CSR's subject and
        subjectAltNames are ignored; the subject is ``identity`` alone and the
        subjectAltNames are these (checked against the profile).
        ``unique_key`` (an RA's requests): a key that a certificate already carries is
        refused (``ca.key_in_use``)."""
        if not can_request(principal):
            raise ForbiddenError("your role may not request certificates", field="profile")
        prefecture = self._check_prefecture(session, principal, prefecture)
        if contact_email is not None:
            contact_email = check_address(contact_email, "contact_email")
        chosen = self.profiles.get(profile)
        if chosen.ca:
            raise ForbiddenError(
                f"profile {chosen.name} is for CA certificates and is used only by 'govpki init'", field="profile"
            )
        self._check_ra_profile(session, principal, chosen.name)
        if audit.holds_audit_lock(session) or session.new or session.dirty or session.deleted:
            raise RuntimeError("CaService.issue needs a session without uncommitted writes (see ca.ledger)")
        if validity_days is not None:
            if not 1 <= validity_days <= chosen.validity_days:
                raise InvalidError(
                    f"must be between 1 and {chosen.validity_days} (profile {chosen.name})", field="validity_days"
                )
            chosen = chosen.model_copy(update={"validity_days": validity_days})
        if registered_sans is None:
            checked = check_csr(csr, chosen)
        else:
            checked = dataclasses.replace(
                check_csr(csr, chosen, names=False), sans=check_sans(registered_sans, chosen, "sans")
            )
        if unique_key:
            self._check_key_unused(session, checked.spki_sha256, "csr.key")
        kind = CaKind.ROOT if chosen.issuer == "root" else CaKind.ISSUING
        if issuer_id is None:
            issuer = self.active_ca(session, kind)
        else:
            issuer = self.find_ca(session, issuer_id)
            if issuer.kind != kind.value:
                raise InvalidError(f"CA {issuer.id} is not a {kind.value} CA", field="issuer_id")
        # A superseded CA still renews its own delegated OCSP responder (named by id).
        serving_ok = issuer_id is not None and chosen.ocsp_no_check
        return self._issue(
            session,
            principal,
            profile=chosen,
            checked=checked,
            identity=identity or {},
            issuer=issuer,
            prefecture_code=prefecture,
            contact_email=contact_email,
            serving_ok=serving_ok,
        )

    def _check_ra_profile(self, session: Session, principal: Principal, profile: str) -> None:
        """An RA officer may request only the profiles its prefecture's RA is allowed."""
        if can_issue(principal):
            return
        row = session.execute(
            select(_RAS.c.allowed_profiles, _RAS.c.active).where(_RAS.c.prefecture_code == principal.prefecture)
        ).first()
        if row is None or not row.active:
            raise ForbiddenError(
                f"prefecture {principal.prefecture} has no active RA", field="prefecture", code="ca.ra_inactive"
            )
        if profile not in str(row.allowed_profiles).split():
            raise ForbiddenError(
                f"the RA of prefecture {principal.prefecture} may not request profile {profile}",
                field="profile",
                code="ca.profile_not_allowed",
                params={"profile": profile},
            )

    def _check_key_unused(
        self, session: Session, spki_sha256: str, field: str, *, except_id: int | None = None
    ) -> None:
        """Refuse a key that a certificate (issued, or possibly signed) already carries."""
        query = select(CertificateRecord.serial).where(
            CertificateRecord.spki_sha256 == spki_sha256, CertificateRecord.state.in_(POSSIBLY_ISSUED)
        )
        if except_id is not None:
            query = query.where(CertificateRecord.id != except_id)
        used = session.scalar(query.limit(1))
        if used is not None:
            raise ConflictError(
                f"this public key is already in use by certificate {used}; make a new key pair for a new certificate",
                field=field,
                code="ca.key_in_use",
                params={"serial": used},
            )

    def _check_prefecture(self, session: Session, principal: Principal, code: str | None) -> str | None:
        """The prefecture a certificate is issued for: the principal's own when it has one
        (it may name no other), else the one given, which must exist."""
        if principal.prefecture is not None:
            if code is not None and code != principal.prefecture:
                raise ForbiddenError(f"you act for prefecture {principal.prefecture} only", field="prefecture")
            return principal.prefecture
        if code is None:
            return None
        if session.scalar(select(_PREFECTURES.c.code).where(_PREFECTURES.c.code == code)) is None:
            raise InvalidError(f"unknown prefecture code {code!r}", field="prefecture", code="ca.unknown_prefecture")
        return code

    # ----- renewal ---------------------------------------------------------

    def renew(
        self,
        session: Session,
        principal: Principal,
        serial: str,
        *,
        csr: bytes | str | None = None,
        names_from_request: bool = True,
        unique_key: bool = False,
    ) -> CertificateRecord:
        """A new certificate for the subscriber of ``serial``: same profile (its current
        version), subject, subjectAltNames, prefecture and contact; from the active issuing
        CA, through the same checks, lint and recorded pipeline as ``issue``.

        Without ``csr`` the key stays: the original request is used again (its signature
        proved possession of this key at first issuance) and re-checked against the
        profile's current key policy. With ``csr`` the request's own signature proves
        possession; it may carry the same key or a new one. A key that any certificate was
        revoked for with keyCompromise is refused. The certificate renewed stays valid
        until it expires or is revoked; the new record links to it (``renewed_from_id``).
        ``unique_key``: a new key that another certificate carries is refused (``ca.key_in_use``).
        ``names_from_request=False`` (an RA): the new CSR's subject and subjectAltNames are
        not read; the certificate keeps those of the one renewed."""
        if not can_request(principal):
            raise ForbiddenError("your role may not request certificates", field="serial")
        if audit.holds_audit_lock(session) or session.new or session.dirty or session.deleted:
            raise RuntimeError("CaService.renew needs a session without uncommitted writes (see ca.ledger)")
        normalized = normalize_serial(serial)
        old = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == normalized)).first()
        if old is None or (principal.prefecture is not None and old.prefecture_code != principal.prefecture):
            if old is not None and can_read(principal):
                raise ForbiddenError(f"you act for prefecture {principal.prefecture} only", field="serial")
            raise NotFoundError(f"no certificate with serial {serial}", field="serial")
        _check_renewable(session, old, self._clock.now())
        profile = self.profiles.get(old.profile, field="serial")
        if profile.ca or profile.ocsp_no_check:
            raise ForbiddenError(
                f"profile {profile.name} certificates are renewed by rotation, not here", field="serial"
            )
        self._check_ra_profile(session, principal, profile.name)
        request = old.csr_der if csr is None else csr
        if request is None:
            raise InvalidError("the original request was not kept: send a new CSR", field="csr")
        if names_from_request or old.cert_der is None:
            checked = check_csr(request, profile)
        else:
            checked = dataclasses.replace(
                check_csr(request, profile, names=False),
                sans=tuple(_sans_of(x509.load_der_x509_certificate(old.cert_der))),
            )
        if unique_key and checked.spki_sha256 != old.spki_sha256:
            self._check_key_unused(session, checked.spki_sha256, "csr.key")
        compromised = session.scalar(
            select(CertificateRecord.serial)
            .where(
                CertificateRecord.spki_sha256 == checked.spki_sha256,
                CertificateRecord.revocation_reason == RevocationReason.KEY_COMPROMISE.value,
            )
            .limit(1)
        )
        if compromised is not None:
            raise InvalidError(
                f"this key was revoked for keyCompromise (certificate {compromised}); renew with a new key",
                field="csr.key" if csr is not None else "csr",
                code="ca.key_compromised",
                params={"serial": compromised},
            )
        assert old.cert_der is not None
        old_cert = x509.load_der_x509_certificate(old.cert_der)
        identity = _identity_of(old_cert)
        if _identity_of_name(self._subject(profile, checked, identity)) != identity:
            raise InvalidError(
                f"a renewal keeps the subject {old.subject}; the request adds other fields", field="csr.subject"
            )
        if set(checked.sans) != set(_sans_of(old_cert)):
            raise InvalidError(
                f"a renewal keeps the subjectAltNames ({old.sans or 'none'}); the request has "
                f"{_san_text(checked.sans) or 'none'}",
                field="csr.san",
            )
        issuer = self.active_ca(session, CaKind.ROOT if profile.issuer == "root" else CaKind.ISSUING)
        record = self._issue(
            session,
            principal,
            profile=profile,
            checked=checked,
            identity=identity,
            issuer=issuer,
            prefecture_code=old.prefecture_code,
            contact_email=old.contact_email,
            renewed_from_id=old.id,
        )
        audit.record(
            session,
            principal,
            CaEvent.CERT_RENEW.value,
            object_type="certificate",
            object_id=record.serial,
            details={
                "renewed_from": old.serial,
                "key": "same" if checked.spki_sha256 == old.spki_sha256 else "new",
                "proof_of_possession": "original request" if csr is None else "new request",
                "profile": profile.name,
                "profile_version": profile.version,
            },
            clock=self._clock,
        )
        return record

    def _subject(self, profile: Profile, checked: CheckedRequest, identity: Mapping[SubjectField, str]) -> x509.Name:
        fields: dict[SubjectField, str] = {}
        for name, value in identity.items():
            if name not in profile.subject_from_request and name not in profile.subject_from_identity:
                raise InvalidError(f"is not allowed by profile {profile.name}", field=f"identity.{name}")
            fields[name] = check_subject_value(name, value, f"identity.{name}")
        for name, value in checked.subject:
            fields.setdefault(name, value)
        fields.update(self.settings.identity.fields())
        for name in profile.subject_required:
            if name not in fields:
                raise InvalidError(f"is required by profile {profile.name}", field=f"csr.subject.{name}")
        return build_name(list(fields.items()))

    def _lint_copy(
        self, builder: x509.CertificateBuilder, issuer_key: PublicKey
    ) -> tuple[x509.Certificate, list[lint.Finding]]:
        throwaway = _LINT_KEYS.like(issuer_key)
        copy = builder.sign(throwaway, signature_hash(issuer_key))
        return copy, lint.check(copy.public_bytes(serialization.Encoding.DER))

    def _issue(
        self,
        session: Session,
        principal: Principal,
        *,
        profile: Profile,
        checked: CheckedRequest,
        identity: Mapping[SubjectField, str],
        issuer: CertificateAuthority,
        prefecture_code: str | None = None,
        contact_email: str | None = None,
        renewed_from_id: int | None = None,
        serving_ok: bool = False,
    ) -> CertificateRecord:
        now = self._clock.now()
        issuer_cert = x509.load_der_x509_certificate(issuer.cert_der)
        usable = issuer.active or (serving_ok and issuer.retired_at is None)
        if not usable or issuer_cert.not_valid_after_utc <= now:
            raise UnavailableError(f"CA {issuer.name} is not active or has expired", field="ca")
        subject = self._subject(profile, checked, identity)
        store = self._keystores[issuer.key_store]
        issuer_key = _public_of(issuer_cert)
        sig_hash = signature_hash(issuer_key)

        reservation = self._ledger.reserve(
            principal,
            ca_id=issuer.id,
            profile=profile.name,
            profile_version=profile.version,
            csr_der=checked.csr_der,
            subject=subject.rfc4514_string(),
            sans=_san_text(checked.sans),
            key_type=checked.key_type,
            spki_sha256=checked.spki_sha256,
            prefecture_code=prefecture_code,
            contact_email=contact_email,
            renewed_from_id=renewed_from_id,
        )
        crash_point("after_reserve")
        not_before, not_after = validity(profile, now, issuer_cert.not_valid_after_utc)
        builder = certificate_builder(
            profile=profile,
            subject=subject,
            public_key=checked.public_key,
            serial=reservation.serial,
            not_before=not_before,
            not_after=not_after,
            issuer=issuer_cert,
            urls=self.urls_for(issuer),
            sans=checked.sans,
        )
        try:
            lint_copy, _findings = self._lint_copy(builder, issuer_key)
        except lint.LintRefusedError as exc:
            self._ledger.fail(principal, reservation, exc.reason)
            raise
        self._ledger.approve(
            principal,
            reservation,
            tbs_der=lint_copy.public_bytes(serialization.Encoding.DER),
            not_before=not_before,
            not_after=not_after,
        )
        crash_point("after_approve")
        cert = builder.sign(store.signer(issuer.key_handle), sig_hash)
        if cert.tbs_certificate_bytes != lint_copy.tbs_certificate_bytes:  # pragma: no cover - a builder bug
            self._ledger.fail(principal, reservation, "signed TBS differs from the linted TBS")
            raise UnavailableError("internal check failed: the signed certificate differs from the linted one")
        crash_point("after_sign")
        der = cert.public_bytes(serialization.Encoding.DER)
        self._ledger.issued(
            principal,
            reservation,
            cert_der=der,
            fingerprint=fingerprint(der),
            not_after=not_after,
            signed_with=(issuer.key_store, issuer.key_handle),
        )
        return session.get_one(CertificateRecord, reservation.record_id)


# The ``ra`` layer's prefectures, by table name only (as the certificates' foreign key names it)
_PREFECTURES = table("prefectures", column("code"))
_RAS = table("registration_authorities", column("prefecture_code"), column("allowed_profiles"), column("active"))
_CA_FIELDS = frozenset({"C", "ST", "O"})  # always the CA's own, so not part of a subscriber's identity


def _check_renewable(session: Session, old: CertificateRecord, now: _dt.datetime) -> None:
    if old.state != CertState.ISSUED.value or old.cert_der is None:
        raise ConflictError(
            f"certificate {old.serial} is in state {old.state}: only an issued certificate can be renewed",
            field="serial",
            code="ca.not_issued",
            params={"serial": old.serial},
        )
    if old.revocation_reason == RevocationReason.CERTIFICATE_HOLD.value:
        raise ConflictError(
            f"certificate {old.serial} is on hold: release it before renewing",
            field="serial",
            code="ca.on_hold",
            params={"serial": old.serial},
        )
    if old.revocation_reason is not None:
        raise ConflictError(
            f"certificate {old.serial} was revoked ({old.revocation_reason}): apply for a new certificate",
            field="serial",
            code="ca.revoked",
            params={"serial": old.serial},
        )
    if old.not_after is not None and old.not_after <= now:
        raise ConflictError(
            f"certificate {old.serial} expired on {old.not_after:%Y-%m-%d}: apply for a new certificate",
            field="serial",
            code="ca.expired",
            params={"serial": old.serial},
        )
    successor = session.scalar(
        select(CertificateRecord.serial)
        .where(
            CertificateRecord.renewed_from_id == old.id,
            CertificateRecord.state == CertState.ISSUED.value,
            CertificateRecord.revocation_reason.is_(None),
        )
        .limit(1)
    )
    if successor is not None:
        raise ConflictError(
            f"certificate {old.serial} was already renewed as {successor}",
            field="serial",
            code="ca.already_renewed",
            params={"serial": old.serial},
        )


def _identity_of_name(name: x509.Name) -> dict[SubjectField, str]:
    fields: dict[SubjectField, str] = {}
    for attr in name:
        field = OID_FIELDS.get(attr.oid)
        if field is not None and field not in _CA_FIELDS and isinstance(attr.value, str):
            fields[field] = attr.value
    return fields


def _identity_of(cert: x509.Certificate) -> dict[SubjectField, str]:
    """The subscriber's part of a certificate's subject (C, ST and O are the CA's)."""
    return _identity_of_name(cert.subject)


def _sans_of(cert: x509.Certificate) -> list[x509.GeneralName]:
    try:
        return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    except x509.ExtensionNotFound:
        return []


def _key_label(purpose: str, now: _dt.datetime) -> str:
    return f"{purpose}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def normalize_serial(serial: str) -> str:
    text = serial.strip().lower().replace(":", "")
    text = text.removeprefix("0x")
    if not text or len(text) > 42 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidError("must be a hexadecimal serial number (colons allowed)", field="serial", code="ca.bad_serial")
    return text.lstrip("0") or "0"


def _public_of(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise UnavailableError("the CA certificate has an unsupported key type")
    return key


def _rollover_details(old: CertificateAuthority, new: CertificateAuthority) -> dict[str, object]:
    return {
        "old_ca_id": old.id,
        "old_name": old.name,
        "old_fingerprint_sha256": old.fingerprint_sha256,
        "new_ca_id": new.id,
        "new_name": new.name,
        "new_fingerprint_sha256": new.fingerprint_sha256,
    }


def _ca_details(ca: CertificateAuthority) -> dict[str, object]:
    return {
        "name": ca.name,
        "kind": ca.kind,
        "subject": ca.subject,
        "serial": ca.serial,
        "key_store": ca.key_store,
        "key_handle": ca.key_handle,
        "key_algorithm": ca.key_algorithm,
        "fingerprint_sha256": ca.fingerprint_sha256,
        "not_after": ca.not_after.isoformat(),
    }
