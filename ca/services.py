"""The certificate authority: hierarchy set-up and the issuance pipeline.

Pipeline (boulder's order): check the CSR → reserve a serial and store the
request (ledger, committed) → build the to-be-signed certificate → sign a copy
with a throw-away key and lint it (refuse on ERROR/FATAL) → store the exact TBS
(ledger, committed) → sign with the CA key → check the TBS is unchanged →
store the certificate (ledger, committed). Every ledger write carries its audit
entry in its own transaction; see ca.ledger for what that asks of callers.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import select
from sqlalchemy.orm import Session

from ca import lint
from ca.builder import IssuerUrls, build_name, certificate_builder, validity
from ca.csr import CheckedRequest, check_csr, check_subject_value
from ca.events import CaEvent
from ca.ledger import IssuanceLedger, new_serial, serial_hex
from ca.models import CaKind, CaStatus, CertificateAuthority, CertificateRecord, CertState
from ca.profiles import Profile, ProfileSet, SubjectField
from govpki import audit
from govpki.clock import Clock
from govpki.config import KeyAlgorithm
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.faults import crash_point
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
        query = select(CertificateRecord).order_by(CertificateRecord.id.desc()).limit(limit).offset(max(offset, 0))
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
        settings = self.settings
        self._keys.check_algorithm(KeyPurpose.ROOT, settings.root_key_algorithm, "root_key_algorithm")
        store_name, store = self._store(CaKind.ROOT)
        now = self._clock.now()
        handle = store.generate(_key_label("root", now), settings.root_key_algorithm)
        signer = store.signer(handle)
        public_key = signer.public_key()
        profile = self.profiles.get("subordinate-ca").model_copy(
            update={"name": "root", "path_length": None, "validity_days": settings.root_validity_days}
        )
        subject = build_name([*settings.identity.fields().items(), ("CN", settings.root_name)])
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
            settings.root_name,
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
        settings = self.settings
        root = self.active_ca(session, CaKind.ROOT)
        # the root key must be at hand before a new issuing key is made for it
        self._keystores[root.key_store].signer(root.key_handle)
        self._keys.check_algorithm(KeyPurpose.ISSUING_CA, settings.issuing_key_algorithm, "issuing_key_algorithm")
        store_name, store = self._store(CaKind.ISSUING)
        now = self._clock.now()
        handle = store.generate(_key_label("issuing", now), settings.issuing_key_algorithm)
        signer = store.signer(handle)
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, settings.issuing_name)]))
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
            settings.issuing_name,
            root.id,
            store_name,
            handle,
            settings.issuing_key_algorithm,
            cert,
        )

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
    ) -> CertificateRecord:
        """Issue one certificate. ``identity`` holds subject fields from the registered
        identity (the RA's); they override the CSR's. C, ST and O always come from the CA.
        ``issuer_id`` names the issuing CA (default: the active CA the profile names);
        ``validity_days`` may shorten the profile's validity, never lengthen it."""
        if not can_issue(principal):
            raise ForbiddenError("your role may not request certificates", field="profile")
        chosen = self.profiles.get(profile)
        if chosen.ca:
            raise ForbiddenError(
                f"profile {chosen.name} is for CA certificates and is used only by 'govpki init'", field="profile"
            )
        if audit.holds_audit_lock(session) or session.new or session.dirty or session.deleted:
            raise RuntimeError("CaService.issue needs a session without uncommitted writes (see ca.ledger)")
        if validity_days is not None:
            if not 1 <= validity_days <= chosen.validity_days:
                raise InvalidError(
                    f"must be between 1 and {chosen.validity_days} (profile {chosen.name})", field="validity_days"
                )
            chosen = chosen.model_copy(update={"validity_days": validity_days})
        checked = check_csr(csr, chosen)
        kind = CaKind.ROOT if chosen.issuer == "root" else CaKind.ISSUING
        if issuer_id is None:
            issuer = self.active_ca(session, kind)
        else:
            issuer = self.find_ca(session, issuer_id)
            if issuer.kind != kind.value:
                raise InvalidError(f"CA {issuer.id} is not a {kind.value} CA", field="issuer_id")
        return self._issue(session, principal, profile=chosen, checked=checked, identity=identity or {}, issuer=issuer)

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
    ) -> CertificateRecord:
        now = self._clock.now()
        issuer_cert = x509.load_der_x509_certificate(issuer.cert_der)
        if not issuer.active or issuer_cert.not_valid_after_utc <= now:
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


def _key_label(purpose: str, now: _dt.datetime) -> str:
    return f"{purpose}-{now:%Y%m%d%H%M%S}-{secrets.token_hex(3)}"


def normalize_serial(serial: str) -> str:
    text = serial.strip().lower().replace(":", "")
    text = text.removeprefix("0x")
    if not text or len(text) > 42 or any(c not in "0123456789abcdef" for c in text):
        raise InvalidError("must be a hexadecimal serial number (colons allowed)", field="serial")
    return text.lstrip("0") or "0"


def _public_of(cert: x509.Certificate) -> PublicKey:
    key = cert.public_key()
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise UnavailableError("the CA certificate has an unsupported key type")
    return key


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
