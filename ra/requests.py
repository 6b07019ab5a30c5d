"""Certificate requests of a prefecture RA and their approval (受理 → 审核).

A clerk (``ra_clerk``) of the prefecture submits: a new certificate, a renewal (same
key, or a new key with a CSR), a suspension, a resumption or a revocation (with an RFC
5280 reason). An officer (``ra_officer``) of the same prefecture who is not the
submitter approves or rejects it with a comment. Approval carries the request out
through the CA's service interface with the officer as the acting principal (the CA
repeats the checks: the officer's prefecture, the profiles its RA may request):

* new, official: the dual pair — the signing certificate from the official's CSR, whose
  subject and subjectAltNames are *not* used (the registered name, department and
  prefecture, and the registered e-mail address, are), and the encryption certificate
  whose key the KMC makes and escrows (``ra.encryption``); the official gets that key
  once, as PKCS#12 under a one-time password that is returned and stored nowhere;
* new, service: one certificate (``service-tls-server`` or ``-client``) with the
  registered host names and IP addresses as subjectAltNames;
* renewal through ``CaService.renew``; suspension, resumption and revocation through
  ``RevocationService.hold|release|revoke``.

Order and concurrency. The CA's issuance ledger commits each of its steps on its own
connection (see ``ca.ledger``), so the approval cannot share the caller's transaction
with issuance. Like the ledger, :class:`RequestLedger` writes the approval itself in its
own short transaction with its audit entry: ``UPDATE … SET state='approved' WHERE
id=… AND state='submitted'`` — one of two simultaneous approvals changes the row, the
other finds it changed (``ra.already_decided``) and issues nothing. Then the CA is asked,
and the request is marked ``completed`` (with the serials) in the caller's transaction,
which the caller commits. If the CA refuses, the request is marked ``failed`` (its own
transaction) with the reason. Submissions and rejections are ordinary writes in the
caller's transaction. Every step is audited (``ra:request:submit|approve|reject|
complete|fail``) and written to the request's history (``ra_request_events``).

Crash recovery. A process that dies after the claim leaves the request ``approved``.
:meth:`RequestService.sweep_approved` (the scheduled jobs, ``govpki ra sweep-requests``)
settles every request ``approved`` longer than a grace period from what the CA's
records show, never issuing anything itself. The link is exact: the certificate a
``new`` request asked for carries the request's CSR key (the key was checked free at
submission and again at approval, and the CA refuses a key in use), a renewal's
certificate is the one renewed from the request's target by the deciding officer
after the decision; a status change (hold, release, revoke) is written in the same
transaction as the completion, so it cannot outlive a crash. A service certificate or
renewal the CA issued → ``completed`` with its serial; an official's new pair whose
signing certificate was issued → ``failed`` naming it (the KMC's encryption key is
escrowed in the completion's transaction, so it was lost: revoke and submit again);
a certificate stopped at ``approved`` (possibly signed, never delivered) → ``failed``
naming it; nothing issued → ``failed`` ("submit it again"). Audited as
``ra:request:complete|fail`` with ``"recovered": true``.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
from dataclasses import dataclass
from typing import Any, cast

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import Engine, Table, and_, insert, or_, select, update
from sqlalchemy.orm import Session

from ca.csr import check_csr, check_sans
from ca.models import POSSIBLY_ISSUED, CertificateRecord, CertState, RevocationReason
from ca.profiles import Profile, SubjectField
from ca.revocation import HOLD, RevocationService, parse_reason
from ca.services import CaService, normalize_serial
from govpki import audit
from govpki.clock import Clock
from govpki.db import WriteGate
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError
from govpki.principal import Principal, PrincipalKind, Role
from keymgmt.kmc import Pkcs12Bundle
from ra.encryption import ENCRYPTION_PROFILE, EncryptionCertificateService
from ra.events import RaEvent
from ra.models import Prefecture, RegistrationAuthority
from ra.subscriber_models import (
    Official,
    RaRequest,
    RaRequestEvent,
    RequestKind,
    RequestState,
    ServiceSubscriber,
)
from ra.subscribers import SubscriberService, check_clerk, check_reader, clean_text

SIGNING_PROFILE = "official-signing"
SERVICE_PROFILES = ("service-tls-server", "service-tls-client")
OPEN_STATES = (RequestState.SUBMITTED.value, RequestState.APPROVED.value)
MAX_NOTE = 2000
RECOVERY_GRACE = _dt.timedelta(minutes=10)  # an approval still ``approved`` after this was interrupted
SWEEP_BATCH = 200


def principal_key(principal: Principal) -> str:
    return f"{principal.kind.value}:{principal.id}"


@dataclass(frozen=True)
class RequestInput:
    """What a clerk submits. ``kind`` new: ``official_id`` or ``service_id``, ``csr`` and,
    for a service, ``profile``. renew: ``serial`` and, for a new key, ``csr``. suspend,
    resume: ``serial``. revoke: ``serial`` and ``reason``. ``note``: free text."""

    kind: str
    official_id: int | None = None
    service_id: int | None = None
    csr: str | bytes | None = None
    profile: str | None = None
    serial: str | None = None
    reason: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Approval:
    """An approved and carried-out request. ``pkcs12``: the official's escrowed encryption
    key with its certificate, under a one-time password — shown once, stored nowhere."""

    request: RaRequest
    pkcs12: Pkcs12Bundle | None = None


@dataclass(frozen=True)
class Settled:
    """A request left ``approved`` by an interruption, settled by the sweep."""

    request_id: int
    state: str  # completed | failed
    detail: str


_T = cast(Table, RaRequest.__table__)
_EVENTS = cast(Table, RaRequestEvent.__table__)


class RequestLedger:
    """The approval and failure of a request, each one short transaction of its own
    with its history row and audit entry (see the module note)."""

    def __init__(self, engine: Engine, clock: Clock, gate: WriteGate) -> None:
        self._engine = engine
        self._clock = clock
        self._gate = gate

    def claim(self, principal: Principal, request: RaRequest, comment: str | None) -> bool:
        """``submitted`` → ``approved``; False when the request was no longer submitted."""
        with self._gate, self._engine.begin() as conn:
            now = self._clock.now()
            changed = conn.execute(
                update(_T)
                .where(_T.c.id == request.id, _T.c.state == RequestState.SUBMITTED.value)
                .values(
                    state=RequestState.APPROVED.value,
                    decided_by=principal.audit_name,
                    decided_at=now,
                    comment=comment,
                )
            )
            if changed.rowcount != 1:
                return False
            conn.execute(
                insert(_EVENTS).values(
                    request_id=request.id, at=now, actor=principal.audit_name, action="approve", detail=comment
                )
            )
            audit.record(
                conn,
                principal,
                RaEvent.REQUEST_APPROVE.value,
                object_type="ra_request",
                object_id=str(request.id),
                details=_request_details(request) | {"comment": comment},
                clock=self._clock,
            )
        return True

    def fail(
        self,
        principal: Principal,
        request: RaRequest,
        failed: _CarryOutError,
    ) -> None:
        """``approved`` → ``failed`` with the reason (and any certificate already issued)."""
        reason, serials = failed.reason, failed.serials
        code, params = failed.error.code, failed.params
        with self._gate, self._engine.begin() as conn:
            now = self._clock.now()
            conn.execute(
                update(_T)
                .where(_T.c.id == request.id, _T.c.state == RequestState.APPROVED.value)
                .values(
                    state=RequestState.FAILED.value,
                    failure=reason,
                    failure_code=code,
                    failure_params=params,
                    completed_at=now,
                    **serials,
                )
            )
            conn.execute(
                insert(_EVENTS).values(
                    request_id=request.id,
                    at=now,
                    actor=principal.audit_name,
                    action="fail",
                    detail=reason,
                    code=code,
                    params=params,
                )
            )
            audit.record(
                conn,
                principal,
                RaEvent.REQUEST_FAIL.value,
                object_type="ra_request",
                object_id=str(request.id),
                details=_request_details(request) | {"reason": reason, **serials},
                outcome="failure",
                clock=self._clock,
            )


class _CarryOutError(Exception):
    """Carrying out an approved request failed; ``serials`` were issued before it did.
    ``params``: the error's values, plus ``issued_serial`` when a signing certificate was
    issued first (the portal then adds "revoke it and submit again")."""

    def __init__(self, error: GovpkiError, serials: dict[str, str | None], reason: str, issued: str | None) -> None:
        super().__init__(reason)
        self.error = error
        self.serials = serials
        self.reason = reason
        self.params: dict[str, Any] = dict(error.params) | ({"issued_serial": issued} if issued else {})


class RequestService:
    def __init__(
        self,
        *,
        subscribers: SubscriberService,
        ca: CaService,
        revocation: RevocationService,
        encryption: EncryptionCertificateService,
        ledger: RequestLedger,
        clock: Clock,
    ) -> None:
        self._subscribers = subscribers
        self._ca = ca
        self._revocation = revocation
        self._encryption = encryption
        self._ledger = ledger
        self._clock = clock

    # ----- submitting ------------------------------------------------------

    def submit(self, session: Session, principal: Principal, data: RequestInput) -> RaRequest:
        """A clerk's request for the clerk's prefecture; checked now, so that a bad request
        is refused here with a message naming the field, and nothing is written."""
        prefecture = check_clerk(principal)
        kind = next((k for k in RequestKind if k.value == (data.kind or "").strip().lower()), None)
        if kind is None:
            raise InvalidError(
                f"unknown request kind {data.kind!r}; one of {', '.join(k.value for k in RequestKind)}",
                field="kind",
                code="ra.unknown_kind",
                params={"kind": data.kind},
            )
        note = clean_text(data.note, "note", required=False, max_length=MAX_NOTE)
        request = RaRequest(
            kind=kind.value,
            state=RequestState.SUBMITTED.value,
            prefecture_code=prefecture,
            note=note,
            submitted_by=principal.audit_name,
            submitter_key=principal_key(principal),
            submitted_at=self._clock.now(),
        )
        if kind is RequestKind.NEW:
            self._prepare_new(session, principal, prefecture, data, request)
        else:
            self._prepare_change(session, principal, prefecture, kind, data, request)
        session.add(request)
        session.flush()
        self._event(session, principal, request, "submit", note)
        audit.record(
            session,
            principal,
            RaEvent.REQUEST_SUBMIT.value,
            object_type="ra_request",
            object_id=str(request.id),
            details=_request_details(request) | {"note": note},
            clock=self._clock,
        )
        return request

    def _prepare_new(
        self, session: Session, principal: Principal, prefecture: str, data: RequestInput, request: RaRequest
    ) -> None:
        if (data.official_id is None) == (data.service_id is None):
            raise InvalidError("name either an official or a service", field="official_id", code="ra.one_subscriber")
        if data.official_id is not None:
            official = self._subscribers.get_official(session, principal, data.official_id)
            if data.profile not in (None, "", SIGNING_PROFILE):
                raise InvalidError(
                    f"an official gets the dual pair ({SIGNING_PROFILE} and {ENCRYPTION_PROFILE}); "
                    "no other profile can be chosen",
                    field="profile",
                    code="ra.dual_pair_profile",
                )
            profile = self._ca.profiles.get(SIGNING_PROFILE)
            self._check_allowed(session, prefecture, (SIGNING_PROFILE, ENCRYPTION_PROFILE))
            request.official_id = official.id
            sans = self._official_sans(official)
        else:
            assert data.service_id is not None
            service = self._subscribers.get_service(session, principal, data.service_id)
            name = (data.profile or "").strip()
            if name not in SERVICE_PROFILES:
                raise InvalidError(
                    f"choose the service's profile: one of {', '.join(SERVICE_PROFILES)}",
                    field="profile",
                    code="ra.unknown_profile",
                )
            profile = self._ca.profiles.get(name)
            self._check_allowed(session, prefecture, (name,))
            request.service_id = service.id
            sans = self._service_sans(service, profile)
        if data.csr is None or not str(data.csr).strip():
            raise InvalidError(
                "the subscriber's certificate request (CSR) is required", field="csr", code="ra.csr_required"
            )
        checked = check_csr(data.csr, profile, names=False)
        check_sans(sans, profile, "sans")
        self._check_key_free(session, checked.spki_sha256)
        request.profile = profile.name
        request.csr_pem = _pem(checked.csr_der)
        request.csr_spki_sha256 = checked.spki_sha256

    def _prepare_change(
        self,
        session: Session,
        principal: Principal,
        prefecture: str,
        kind: RequestKind,
        data: RequestInput,
        request: RaRequest,
    ) -> None:
        if data.serial is None or not data.serial.strip():
            raise InvalidError("name the certificate (its serial number)", field="serial", code="ra.serial_required")
        record, origin = self._certificate_of_prefecture(session, prefecture, data.serial)
        request.target_serial = record.serial
        request.official_id = origin.official_id
        request.service_id = origin.service_id
        request.profile = record.profile
        open_request = session.scalar(
            select(RaRequest.id).where(RaRequest.target_serial == record.serial, RaRequest.state.in_(OPEN_STATES))
        )
        if open_request is not None:
            raise ConflictError(
                f"request {open_request} for certificate {record.serial} is still open; decide it first",
                field="serial",
                code="ra.request_open",
                params={"id": open_request, "serial": record.serial},
            )
        now = self._clock.now()
        if record.not_after is not None and record.not_after <= now:
            raise ConflictError(
                f"certificate {record.serial} expired on {record.not_after:%Y-%m-%d}",
                field="serial",
                code="ra.certificate_expired",
                params={"serial": record.serial, "date": f"{record.not_after:%Y-%m-%d}"},
            )
        reason = record.revocation_reason
        if kind is RequestKind.RENEW:
            if record.profile == ENCRYPTION_PROFILE:
                raise InvalidError(
                    "an encryption certificate is not renewed: its key is made by the key-management centre; "
                    "submit a new certificate for the official",
                    field="serial",
                    code="ra.encryption_not_renewable",
                )
            if reason is not None:
                raise ConflictError(
                    f"certificate {record.serial} is {'on hold' if reason == HOLD else 'revoked'}; "
                    "it cannot be renewed",
                    field="serial",
                    code="ra.not_renewable",
                    params={"serial": record.serial},
                )
            if data.csr is not None and str(data.csr).strip():
                checked = check_csr(data.csr, self._ca.profiles.get(record.profile, field="serial"), names=False)
                if checked.spki_sha256 != record.spki_sha256:
                    self._check_key_free(session, checked.spki_sha256)
                request.csr_pem = _pem(checked.csr_der)
                request.csr_spki_sha256 = checked.spki_sha256
        elif kind is RequestKind.SUSPEND:
            if reason is not None:
                raise ConflictError(
                    f"certificate {record.serial} is already {'on hold' if reason == HOLD else 'revoked'}",
                    field="serial",
                    code="ra.not_suspendable",
                    params={"serial": record.serial},
                )
        elif kind is RequestKind.RESUME:
            if reason != HOLD:
                raise ConflictError(
                    f"certificate {record.serial} is not on hold",
                    field="serial",
                    code="ra.not_on_hold",
                    params={"serial": record.serial},
                )
        else:
            if reason is not None and reason != HOLD:
                raise ConflictError(
                    f"certificate {record.serial} is already revoked ({reason})",
                    field="serial",
                    code="ra.already_revoked",
                    params={"serial": record.serial},
                )
            if data.reason is None or not data.reason.strip():
                raise InvalidError("a revocation needs its reason", field="reason", code="ra.reason_required")
            request.reason = parse_reason(data.reason).value

    def _certificate_of_prefecture(
        self, session: Session, prefecture: str, serial: str
    ) -> tuple[CertificateRecord, RaRequest]:
        """The certificate, if this prefecture's RA got it issued (for a registered subscriber)."""
        normalized = normalize_serial(serial)
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == normalized)).first()
        origin = session.scalars(
            select(RaRequest)
            .where(
                RaRequest.prefecture_code == prefecture,
                RaRequest.state == RequestState.COMPLETED.value,
                or_(RaRequest.certificate_serial == normalized, RaRequest.encryption_serial == normalized),
                RaRequest.kind.in_((RequestKind.NEW.value, RequestKind.RENEW.value)),
            )
            .order_by(RaRequest.id)
        ).first()
        if (
            record is None
            or origin is None
            or record.prefecture_code != prefecture
            or record.state not in POSSIBLY_ISSUED
        ):
            raise NotFoundError(
                f"no certificate with serial {serial} issued through the RA of prefecture {prefecture}",
                field="serial",
                code="ra.certificate_not_found",
                params={"id": serial},
            )
        return record, origin

    def _check_allowed(self, session: Session, prefecture: str, profiles: tuple[str, ...]) -> None:
        ra = session.scalars(
            select(RegistrationAuthority).where(RegistrationAuthority.prefecture_code == prefecture)
        ).first()
        if ra is None or not ra.active:
            raise ForbiddenError(f"prefecture {prefecture} has no active RA", field="prefecture", code="ra.inactive")
        allowed = ra.allowed_profiles.split()
        for name in profiles:
            if name not in allowed:
                raise ForbiddenError(
                    f"the RA of prefecture {prefecture} may not request profile {name}",
                    field="profile",
                    code="ra.profile_not_allowed",
                    params={"profile": name},
                )

    @staticmethod
    def _check_key_free(session: Session, spki_sha256: str) -> None:
        used = session.scalar(
            select(CertificateRecord.serial)
            .where(CertificateRecord.spki_sha256 == spki_sha256, CertificateRecord.state.in_(POSSIBLY_ISSUED))
            .limit(1)
        )
        if used is not None:
            raise ConflictError(
                f"the CSR's public key is already in use by certificate {used}; "
                "the subscriber must make a new key pair",
                field="csr",
                code="ra.key_in_use",
                params={"serial": used},
            )
        pending = session.scalar(
            select(RaRequest.id)
            .where(RaRequest.csr_spki_sha256 == spki_sha256, RaRequest.state.in_(OPEN_STATES))
            .limit(1)
        )
        if pending is not None:
            raise ConflictError(
                f"the CSR's public key is already in request {pending}, which is still open",
                field="csr",
                code="ra.key_in_request",
                params={"id": pending},
            )

    @staticmethod
    def _official_sans(official: Official) -> list[x509.GeneralName]:
        return [x509.RFC822Name(official.email)] if official.email else []

    @staticmethod
    def _service_sans(service: ServiceSubscriber, profile: Profile) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        if "dns" in profile.san_types:
            names += [x509.DNSName(h) for h in service.host_name_list]
        if "ip" in profile.san_types:
            names += [x509.IPAddress(ipaddress.ip_address(a)) for a in service.ip_address_list]
        return names

    # ----- deciding --------------------------------------------------------

    def _check_officer(self, session: Session, principal: Principal, request_id: int) -> RaRequest:
        if not principal.has(Role.RA_OFFICER) or principal.prefecture is None:
            raise ForbiddenError(
                "only an RA officer (审核) of the request's prefecture approves or rejects it",
                field="principal",
                code="ra.not_an_officer",
            )
        request = self.get_request(session, principal, request_id)
        if request.submitter_key == principal_key(principal):
            raise ForbiddenError(
                "you submitted this request: another officer of the prefecture must decide it",
                field="principal",
                code="ra.self_approval",
            )
        if request.state != RequestState.SUBMITTED.value:
            raise ConflictError(
                f"request {request.id} was already decided ({request.state})",
                field="request_id",
                code="ra.already_decided",
                params={"id": request.id},
            )
        return request

    def approve(
        self, session: Session, principal: Principal, request_id: int, *, comment: str | None = None
    ) -> Approval:
        """Approve and carry out the request. Needs a session without uncommitted writes
        (the approval and the CA's issuance steps commit on their own); the caller commits
        the completion."""
        if audit.holds_audit_lock(session) or session.new or session.dirty or session.deleted:
            raise RuntimeError("RequestService.approve needs a session without uncommitted writes (see ca.ledger)")
        request = self._check_officer(session, principal, request_id)
        text = clean_text(comment, "comment", required=False, max_length=MAX_NOTE)
        if request.kind == RequestKind.NEW.value and request.csr_spki_sha256 is not None:
            self._recheck_key(session, request)
        if not self._ledger.claim(principal, request, text):
            raise ConflictError(
                f"request {request.id} was decided by someone else just now",
                field="request_id",
                code="ra.already_decided",
                params={"id": request.id},
            )
        session.refresh(request)
        # while this approval is being carried out, its row stays locked (PostgreSQL): the
        # crash sweep skips locked rows, so a slow approval is never settled under it (on
        # SQLite the CA's first write serialises the two; the sweep's update is conditional)
        session.execute(select(RaRequest.id).where(RaRequest.id == request.id).with_for_update())
        try:
            serials, bundle = self._carry_out(session, principal, request)
        except _CarryOutError as failed:
            session.rollback()
            self._ledger.fail(principal, request, failed)
            raise failed.error from None
        now = self._clock.now()
        request.state = RequestState.COMPLETED.value
        request.completed_at = now
        request.certificate_serial = serials.get("certificate_serial")
        request.encryption_serial = serials.get("encryption_serial")
        request.escrow_id = serials.get("escrow_id")
        session.flush()
        detail = ", ".join(f"{k} {v}" for k, v in serials.items() if v is not None)
        self._event(session, principal, request, "complete", detail or None)
        audit.record(
            session,
            principal,
            RaEvent.REQUEST_COMPLETE.value,
            object_type="ra_request",
            object_id=str(request.id),
            details=_request_details(request) | {k: v for k, v in serials.items() if v is not None},
            clock=self._clock,
        )
        return Approval(request=request, pkcs12=bundle)

    def _recheck_key(self, session: Session, request: RaRequest) -> None:
        assert request.csr_spki_sha256 is not None
        used = session.scalar(
            select(CertificateRecord.serial)
            .where(
                CertificateRecord.spki_sha256 == request.csr_spki_sha256,
                CertificateRecord.state.in_(POSSIBLY_ISSUED),
            )
            .limit(1)
        )
        if used is not None:
            raise ConflictError(
                f"the CSR's public key is now in use by certificate {used}; reject this request",
                field="csr",
                code="ra.key_in_use",
                params={"serial": used},
            )

    def _carry_out(
        self, session: Session, principal: Principal, request: RaRequest
    ) -> tuple[dict[str, Any], Pkcs12Bundle | None]:
        serials: dict[str, Any] = {}
        try:
            if request.kind == RequestKind.NEW.value:
                return self._issue_new(session, principal, request, serials)
            assert request.target_serial is not None
            if request.kind == RequestKind.RENEW.value:
                record = self._ca.renew(
                    session,
                    principal,
                    request.target_serial,
                    csr=request.csr_pem,
                    names_from_request=False,
                    unique_key=True,
                )
                serials["certificate_serial"] = record.serial
            elif request.kind == RequestKind.SUSPEND.value:
                self._revocation.hold(session, principal, request.target_serial)
            elif request.kind == RequestKind.RESUME.value:
                self._revocation.release(session, principal, request.target_serial)
            else:
                assert request.reason is not None
                self._revocation.revoke(
                    session, principal, request.target_serial, reason=RevocationReason(request.reason)
                )
            return serials, None
        except GovpkiError as exc:
            reason = exc.reason
            issued = serials.get("certificate_serial") if request.kind == RequestKind.NEW.value else None
            if issued:
                reason += (
                    f" (the signing certificate {issued} was issued: "
                    "revoke it (superseded) and submit the request again)"
                )
            serials = {k: v for k, v in serials.items() if k != "escrow_id"}
            raise _CarryOutError(exc, serials, reason, issued) from exc

    def _issue_new(
        self, session: Session, principal: Principal, request: RaRequest, serials: dict[str, Any]
    ) -> tuple[dict[str, Any], Pkcs12Bundle | None]:
        assert request.csr_pem is not None and request.profile is not None
        prefecture = session.get_one(Prefecture, request.prefecture_code)
        if request.official is not None:
            official = request.official
            identity: dict[SubjectField, str] = {"L": prefecture.name, "OU": official.department, "CN": official.name}
            record = self._ca.issue(
                session,
                principal,
                profile=SIGNING_PROFILE,
                csr=request.csr_pem,
                identity=identity,
                prefecture=request.prefecture_code,
                contact_email=official.email,
                registered_sans=self._official_sans(official),
                unique_key=True,
            )
            serials["certificate_serial"] = record.serial
            issued = self._encryption.issue(
                session,
                principal,
                common_name=official.name,
                organizational_unit=official.department,
                locality=prefecture.name,
                email=official.email,
            )
            serials["encryption_serial"] = issued.record.serial
            serials["escrow_id"] = issued.escrow.id
            return serials, issued.pkcs12
        service = request.service
        assert service is not None
        profile = self._ca.profiles.get(request.profile)
        record = self._ca.issue(
            session,
            principal,
            profile=profile.name,
            csr=request.csr_pem,
            identity={"L": prefecture.name, "OU": service.department, "CN": service.name},
            prefecture=request.prefecture_code,
            contact_email=service.responsible.email,
            registered_sans=self._service_sans(service, profile),
            unique_key=True,
        )
        serials["certificate_serial"] = record.serial
        return serials, None

    def reject(self, session: Session, principal: Principal, request_id: int, *, comment: str) -> RaRequest:
        """Reject with a comment saying why (required). In the caller's transaction."""
        request = self._check_officer(session, principal, request_id)
        text = clean_text(comment, "comment", required=True, max_length=MAX_NOTE)
        now = self._clock.now()
        changed = session.execute(
            update(_T)
            .where(and_(_T.c.id == request.id, _T.c.state == RequestState.SUBMITTED.value))
            .values(state=RequestState.REJECTED.value, decided_by=principal.audit_name, decided_at=now, comment=text)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise ConflictError(
                f"request {request.id} was decided by someone else just now",
                field="request_id",
                code="ra.already_decided",
                params={"id": request.id},
            )
        session.refresh(request)
        self._event(session, principal, request, "reject", text)
        audit.record(
            session,
            principal,
            RaEvent.REQUEST_REJECT.value,
            object_type="ra_request",
            object_id=str(request.id),
            details=_request_details(request) | {"comment": text},
            clock=self._clock,
        )
        return request

    # ----- crash recovery ----------------------------------------------------

    def sweep_approved(
        self, session: Session, principal: Principal, *, grace: _dt.timedelta = RECOVERY_GRACE
    ) -> list[Settled]:
        """Settle the requests left ``approved`` for longer than ``grace`` by an interruption
        (see the module note), each audited, in the caller's transaction; issues nothing."""
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SYSTEM_ADMIN):
            raise ForbiddenError(
                "only the system (the scheduled jobs, the local CLI) or a system administrator "
                "settles interrupted requests",
                field="principal",
                code="ra.sweep_forbidden",
            )
        if grace < _dt.timedelta(0):
            raise InvalidError("the grace period cannot be negative", field="grace")
        cutoff = self._clock.now() - grace
        stuck = list(
            session.scalars(
                select(RaRequest)
                .where(RaRequest.state == RequestState.APPROVED.value, RaRequest.decided_at <= cutoff)
                .order_by(RaRequest.id)
                .limit(SWEEP_BATCH)
                .with_for_update(skip_locked=True)  # an approval still being carried out holds its row
            )
        )
        settled = []
        for request in stuck:
            outcome = self._settle(session, principal, request)
            if outcome is not None:
                settled.append(outcome)
        return settled

    def _settle(self, session: Session, principal: Principal, request: RaRequest) -> Settled | None:
        record = self._issued_for(session, request)
        serial = record.serial if record is not None else None
        state, text, code = RequestState.FAILED, "", ""
        if request.kind not in (RequestKind.NEW.value, RequestKind.RENEW.value):
            code = "ra.interrupted_status"
            text = (
                "interrupted before the CA changed the certificate's status (the change is written with the "
                "completion, so nothing was changed); submit the request again"
            )
        elif record is None:
            code = "ra.interrupted_before_issue"
            text = "interrupted before the CA issued anything; submit the request again"
        elif record.state == CertState.APPROVED.value:
            code = "ra.interrupted_signing"
            text = (
                f"interrupted while the CA was signing certificate {serial} (its record stopped at 'approved': "
                "possibly signed, never delivered); revoke it (superseded) and submit the request again "
                "with a new key pair"
            )
        elif request.official_id is not None and request.kind == RequestKind.NEW.value:
            code = "ra.interrupted_before_escrow"
            text = (
                f"interrupted after the CA issued the signing certificate {serial}, before the official's "
                "encryption key was escrowed (the key made by the key-management centre was lost, so there "
                f"is nothing to recover through the KMC): revoke {serial} (superseded) and submit the request "
                "again with a new key pair; an encryption certificate issued then has no key anywhere"
            )
        else:
            state = RequestState.COMPLETED
            code = "ra.recovered_completed"
            text = (
                f"completed after an interruption: the CA had issued certificate {serial}; "
                "fetch it from the certificate's page"
            )
        now = self._clock.now()
        values: dict[str, Any] = {"state": state.value, "completed_at": now, "certificate_serial": serial}
        params: dict[str, Any] = {"serial": serial} if serial else {}
        if state is RequestState.FAILED:
            values |= {"failure": text, "failure_code": code, "failure_params": params}
        changed = session.execute(
            update(_T).where(_T.c.id == request.id, _T.c.state == RequestState.APPROVED.value).values(**values)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return None  # settled meanwhile by its own approval or another sweep
        session.refresh(request)
        action = "complete" if state is RequestState.COMPLETED else "fail"
        self._event(session, principal, request, action, text, code, params)
        audit.record(
            session,
            principal,
            (RaEvent.REQUEST_COMPLETE if state is RequestState.COMPLETED else RaEvent.REQUEST_FAIL).value,
            object_type="ra_request",
            object_id=str(request.id),
            details=_request_details(request)
            | {"recovered": True, "reason": text, "decided_by": request.decided_by}
            | ({"certificate_serial": serial} if serial else {}),
            outcome="success" if state is RequestState.COMPLETED else "failure",
            clock=self._clock,
        )
        return Settled(request.id, state.value, text)

    @staticmethod
    def _issued_for(session: Session, request: RaRequest) -> CertificateRecord | None:
        """The certificate the CA made for this request before an interruption: issued if
        any, else one stopped at ``approved`` (possibly signed), else None. Exact links only."""
        if request.decided_at is None or request.decided_by is None:
            return None
        query = select(CertificateRecord).where(
            CertificateRecord.requester == request.decided_by,
            CertificateRecord.created_at >= request.decided_at,
            CertificateRecord.state.in_(POSSIBLY_ISSUED),
        )
        if request.kind == RequestKind.NEW.value:
            if request.csr_spki_sha256 is None or request.profile is None:
                return None
            query = query.where(
                CertificateRecord.spki_sha256 == request.csr_spki_sha256,
                CertificateRecord.profile == request.profile,
            )
        elif request.kind == RequestKind.RENEW.value:
            target = session.scalars(
                select(CertificateRecord).where(CertificateRecord.serial == request.target_serial)
            ).first()
            if target is None:
                return None
            query = query.where(
                CertificateRecord.renewed_from_id == target.id,
                CertificateRecord.spki_sha256 == (request.csr_spki_sha256 or target.spki_sha256),
            )
        else:
            return None
        found = list(session.scalars(query.order_by(CertificateRecord.id)))
        issued = [r for r in found if r.state == CertState.ISSUED.value]
        return (issued or found)[0] if found else None

    # ----- reading ---------------------------------------------------------

    def get_request(self, session: Session, principal: Principal, request_id: int) -> RaRequest:
        scope = check_reader(principal)
        request = session.get(RaRequest, request_id)
        if request is None or (scope is not None and request.prefecture_code != scope):
            raise NotFoundError(
                f"no request with id {request_id}" + (f" in prefecture {scope}" if scope else ""),
                field="request_id",
                code="ra.request_not_found",
                params={"id": request_id},
            )
        return request

    def list_requests(
        self, session: Session, principal: Principal, *, state: str | None = None, limit: int = 50, offset: int = 0
    ) -> list[RaRequest]:
        scope = check_reader(principal)
        if state is not None and state not in {s.value for s in RequestState}:
            raise InvalidError(
                f"unknown state {state!r}; one of {', '.join(s.value for s in RequestState)}",
                field="state",
                code="ra.unknown_state",
            )
        if not 1 <= limit <= 1000:
            raise InvalidError("must be between 1 and 1000", field="limit", code="ra.limit")
        query = select(RaRequest).order_by(RaRequest.id.desc()).limit(limit).offset(max(offset, 0))
        if scope is not None:
            query = query.where(RaRequest.prefecture_code == scope)
        if state is not None:
            query = query.where(RaRequest.state == state)
        return list(session.scalars(query))

    def history(self, session: Session, principal: Principal, request_id: int) -> list[RaRequestEvent]:
        """Who did what when, oldest first."""
        request = self.get_request(session, principal, request_id)
        return list(
            session.scalars(
                select(RaRequestEvent).where(RaRequestEvent.request_id == request.id).order_by(RaRequestEvent.id)
            )
        )

    def requests_for_certificate(self, session: Session, principal: Principal, serial: str) -> list[RaRequest]:
        """Every request that produced or acted on the certificate, oldest first (a
        certificate page's request history; each request's ``events`` say who did what when)."""
        scope = check_reader(principal)
        normalized = normalize_serial(serial)
        query = (
            select(RaRequest)
            .where(
                or_(
                    RaRequest.target_serial == normalized,
                    RaRequest.certificate_serial == normalized,
                    RaRequest.encryption_serial == normalized,
                )
            )
            .order_by(RaRequest.id)
        )
        if scope is not None:
            query = query.where(RaRequest.prefecture_code == scope)
        return list(session.scalars(query))

    # ----- helpers ---------------------------------------------------------

    def _event(
        self,
        session: Session,
        principal: Principal,
        request: RaRequest,
        action: str,
        detail: str | None,
        code: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        session.add(
            RaRequestEvent(
                request_id=request.id,
                at=self._clock.now(),
                actor=principal.audit_name,
                action=action,
                detail=detail,
                code=code,
                params=params,
            )
        )
        session.flush()


def _pem(der: bytes) -> str:
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM).decode("ascii")


def _request_details(request: RaRequest) -> dict[str, Any]:
    """What the audit entry says about a request (no personal identifiers beyond ids)."""
    details: dict[str, Any] = {
        "kind": request.kind,
        "prefecture_code": request.prefecture_code,
        "official_id": request.official_id,
        "service_id": request.service_id,
        "profile": request.profile,
        "target_serial": request.target_serial,
        "reason": request.reason,
        "csr_spki_sha256": request.csr_spki_sha256,
        "submitted_by": request.submitted_by,
    }
    return {k: v for k, v in details.items() if v is not None}
