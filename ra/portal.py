"""What the RA clerk portal reads and does beyond the subscriber and request services:
certificate pages (scoped to the prefecture), the prefecture's dashboard figures, and the
hand-over of an official's encryption key (PKCS#12) after approval.

The hand-over. Approving a new official certificate returns the escrowed encryption key
as PKCS#12 under a one-time password (``ra.requests.Approval``). Neither is put in the
database. The portal keeps the bundle, for at most :data:`PICKUP_TTL`, in a file of the
instance folder (``ra-pickup/``) sealed under the subscriber data key (AES-GCM in the key
store, bound to the request id): the database alone or the folder alone opens nothing.
RA staff of the request's prefecture then open the hand-over once: the first opening
shows the password (the printable PIN slip) and removes it from the file; the PKCS#12
can be downloaded once, after which the file is deleted. Each step is audited. After
that (or after the time limit) the key is only in escrow (key recovery).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from ca.models import CertificateAuthority, CertificateRecord, CertState
from ca.services import normalize_serial
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import Principal
from ra.events import RaEvent
from ra.requests import Approval, RequestService
from ra.subscriber_models import RaRequest, RaRequestEvent, RequestKind, RequestState, SubscriberDataKey
from ra.subscribers import RA_ROLES, SubscriberService, check_reader

PICKUP_TTL = _dt.timedelta(hours=1)
EXPIRING_DAYS = 30
_PICKUP_AAD = b"govpki-ra-pkcs12-pickup-v1:"


@dataclass(frozen=True)
class CertificateView:
    record: CertificateRecord
    chain: list[bytes]  # the certificate, its issuing CA, that CA's issuer ... (DER)
    requests: list[RaRequest]  # every request that produced or acted on it, oldest first


@dataclass(frozen=True)
class Activity:
    event: RaRequestEvent
    request: RaRequest


@dataclass(frozen=True)
class Handover:
    request: RaRequest
    password: str | None  # shown now, for the first and only time
    downloadable: bool


class RaPortalService:
    def __init__(
        self,
        *,
        subscribers: SubscriberService,
        requests: RequestService,
        clock: Clock,
        pickup_dir: Path,
    ) -> None:
        self._subscribers = subscribers
        self._requests = requests
        self._clock = clock
        self._dir = pickup_dir

    # ----- certificates ----------------------------------------------------

    def certificate(self, session: Session, principal: Principal, serial: str) -> CertificateView:
        """A certificate that an RA got issued, for its prefecture's staff (and the central
        roles); anything else is "not found"."""
        scope = check_reader(principal)
        record: CertificateRecord | None = None
        requests: list[RaRequest] = []
        try:
            normalized = normalize_serial(serial)
        except InvalidError:
            pass  # what is no serial number names no certificate: "not found", like any other
        else:
            requests = self._requests.requests_for_certificate(session, principal, normalized)
            record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == normalized)).first()
        if (
            record is None
            or record.cert_der is None
            or not requests
            or (scope is not None and record.prefecture_code != scope)
        ):
            raise NotFoundError(
                f"no certificate with serial {serial}" + (f" in prefecture {scope}" if scope else ""),
                field="serial",
                code="ra.certificate_not_found",
                params={"id": serial},
            )
        chain = [record.cert_der]
        ca = session.get(CertificateAuthority, record.ca_id)
        while ca is not None and len(chain) < 5:
            chain.append(ca.cert_der)
            ca = session.get(CertificateAuthority, ca.parent_id) if ca.parent_id is not None else None
        return CertificateView(record, chain, requests)

    def certificates_of(
        self, session: Session, principal: Principal, *, official_id: int | None = None, service_id: int | None = None
    ) -> list[CertificateRecord]:
        """The certificates issued through the RA for one subscriber, newest first."""
        if official_id is not None:
            self._subscribers.get_official(session, principal, official_id)
            subscriber = RaRequest.official_id == official_id
        else:
            assert service_id is not None
            self._subscribers.get_service(session, principal, service_id)
            subscriber = RaRequest.service_id == service_id
        made = select(RaRequest.certificate_serial, RaRequest.encryption_serial).where(
            subscriber, RaRequest.state == RequestState.COMPLETED.value
        )
        serials = {s for row in session.execute(made) for s in row if s is not None}
        if not serials:
            return []
        return list(
            session.scalars(
                select(CertificateRecord)
                .where(CertificateRecord.serial.in_(serials))
                .order_by(CertificateRecord.id.desc())
            )
        )

    def requests_of(
        self, session: Session, principal: Principal, *, official_id: int | None = None, service_id: int | None = None
    ) -> list[RaRequest]:
        """Every request for one subscriber, newest first."""
        if official_id is not None:
            self._subscribers.get_official(session, principal, official_id)
            subscriber = RaRequest.official_id == official_id
        else:
            assert service_id is not None
            self._subscribers.get_service(session, principal, service_id)
            subscriber = RaRequest.service_id == service_id
        return list(session.scalars(select(RaRequest).where(subscriber).order_by(RaRequest.id.desc())))

    # ----- the dashboard ---------------------------------------------------

    def expiring(
        self, session: Session, principal: Principal, *, days: int = EXPIRING_DAYS, limit: int = 50
    ) -> list[CertificateRecord]:
        """The prefecture's valid certificates whose validity ends within ``days``."""
        scope = check_reader(principal)
        now = self._clock.now()
        query = (
            select(CertificateRecord)
            .where(
                CertificateRecord.state == CertState.ISSUED.value,
                CertificateRecord.revocation_reason.is_(None),
                and_(
                    CertificateRecord.not_after > now,
                    CertificateRecord.not_after <= now + _dt.timedelta(days=days),
                ),
            )
            .order_by(CertificateRecord.not_after)
            .limit(limit)
        )
        if scope is not None:
            query = query.where(CertificateRecord.prefecture_code == scope)
        else:
            query = query.where(CertificateRecord.prefecture_code.is_not(None))
        return list(session.scalars(query))

    def recent_activity(self, session: Session, principal: Principal, *, limit: int = 15) -> list[Activity]:
        """Who did what when with the prefecture's requests, newest first."""
        scope = check_reader(principal)
        query = (
            select(RaRequestEvent, RaRequest)
            .join(RaRequest, RaRequest.id == RaRequestEvent.request_id)
            .order_by(RaRequestEvent.id.desc())
            .limit(limit)
        )
        if scope is not None:
            query = query.where(RaRequest.prefecture_code == scope)
        return [Activity(event, request) for event, request in session.execute(query)]

    # ----- approval and the key hand-over ----------------------------------

    def approve(self, session: Session, principal: Principal, request_id: int, *, comment: str | None) -> Approval:
        """Approve (``RequestService.approve``); an official's PKCS#12 is kept for hand-over."""
        approval = self._requests.approve(session, principal, request_id, comment=comment)
        if approval.pkcs12 is not None:
            key = self._subscribers.active_data_key(session)
            inner = json.dumps(
                {
                    "password": approval.pkcs12.password,
                    "pkcs12": base64.b64encode(approval.pkcs12.data).decode("ascii"),
                }
            ).encode()
            self._write(
                approval.request.id,
                {
                    "data_key": key.id,
                    "expires": (self._clock.now() + PICKUP_TTL).isoformat(),
                    "sealed": base64.b64encode(
                        self._subscribers.seal(key, inner, self._aad(approval.request.id))
                    ).decode("ascii"),
                },
            )
        return approval

    def handover_state(self, session: Session, principal: Principal, request_id: int) -> str | None:
        """ "password" (the PIN slip has not been shown), "download" (only the file is
        left), or None (nothing to hand over, or not for this principal)."""
        request = self._requests.get_request(session, principal, request_id)
        if not principal.roles & RA_ROLES:
            return None
        held = self._read(request.id)
        if held is None:
            return None
        return "password" if held.get("has_password") else "download"

    def show_pin(self, session: Session, principal: Principal, request_id: int) -> Handover:
        """The one-time password, shown now and never again (audited)."""
        request = self._check_handover(session, principal, request_id)
        claimed = self._claim(request.id)
        if claimed is None:
            raise ConflictError(
                "the one-time password of this key was already shown (or its time ran out); "
                "the key is kept in escrow: ask for key recovery",
                field="request_id",
                code="ra.pin_already_shown",
            )
        held, path = claimed
        inner = self._open(session, request.id, held)
        if not held.get("has_password"):
            self._restore(path, request.id)
            raise ConflictError(
                "the one-time password of this key was already shown; the key is kept in escrow: ask for key recovery",
                field="request_id",
                code="ra.pin_already_shown",
            )
        key = session.get_one(SubscriberDataKey, int(str(held["data_key"])))
        rest = json.dumps({"password": None, "pkcs12": inner["pkcs12"]}).encode()
        held = held | {
            "has_password": False,
            "sealed": base64.b64encode(self._subscribers.seal(key, rest, self._aad(request.id))).decode("ascii"),
        }
        self._write(request.id, held, replace_claimed=path)
        self._audit(session, principal, request, RaEvent.PKCS12_SHOW)
        return Handover(request, inner["password"], True)

    def take_pkcs12(self, session: Session, principal: Principal, request_id: int) -> tuple[RaRequest, bytes]:
        """The PKCS#12 file, once, after the PIN slip has been shown (else its password would
        be lost with it); the hand-over file is deleted (audited)."""
        request = self._check_handover(session, principal, request_id)
        claimed = self._claim(request.id)
        if claimed is None:
            raise ConflictError(
                "the encryption key was already handed over (or its time ran out); "
                "the key is kept in escrow: ask for key recovery",
                field="request_id",
                code="ra.pkcs12_taken",
            )
        held, path = claimed
        if held.get("has_password"):
            self._restore(path, request.id)  # nothing changed: the PIN slip can still be shown
            raise ConflictError(
                "the PIN slip with the one-time password of this key has not been shown yet; show it first",
                field="request_id",
                code="ra.pin_first",
                params={"id": request.id},
            )
        inner = self._open(session, request.id, held)
        path.unlink(missing_ok=True)
        self._audit(session, principal, request, RaEvent.PKCS12_DOWNLOAD)
        return request, base64.b64decode(inner["pkcs12"])

    def _check_handover(self, session: Session, principal: Principal, request_id: int) -> RaRequest:
        request = self._requests.get_request(session, principal, request_id)
        if not principal.roles & RA_ROLES:
            raise ForbiddenError(
                "only RA staff of the official's prefecture hand over the encryption key",
                field="principal",
                code="ra.not_ra_staff",
            )
        if (
            request.kind != RequestKind.NEW.value
            or request.official_id is None
            or request.state != RequestState.COMPLETED.value
        ):
            raise NotFoundError(
                f"request {request.id} has no encryption key to hand over",
                field="request_id",
                code="ra.no_pkcs12",
                params={"id": request.id},
            )
        return request

    def _audit(self, session: Session, principal: Principal, request: RaRequest, event: RaEvent) -> None:
        audit.record(
            session,
            principal,
            event.value,
            object_type="ra_request",
            object_id=str(request.id),
            details={
                "prefecture_code": request.prefecture_code,
                "official_id": request.official_id,
                "encryption_serial": request.encryption_serial,
                "escrow_id": request.escrow_id,
            },
            clock=self._clock,
        )

    # ----- the sealed files --------------------------------------------------

    @staticmethod
    def _aad(request_id: int) -> bytes:
        return _PICKUP_AAD + str(request_id).encode()

    def _path(self, request_id: int) -> Path:
        return self._dir / f"request-{request_id}.sealed"

    def _write(self, request_id: int, held: dict[str, object], *, replace_claimed: Path | None = None) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        held = {"has_password": True} | held
        tmp = self._dir / f".tmp-{request_id}-{secrets.token_hex(6)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as out:
            json.dump(held, out)
        os.replace(tmp, self._path(request_id))
        if replace_claimed is not None:
            replace_claimed.unlink(missing_ok=True)

    def _read(self, request_id: int) -> dict[str, object] | None:
        path = self._path(request_id)
        try:
            held: dict[str, object] = json.loads(path.read_text(encoding="ascii"))
        except (OSError, ValueError):
            return None
        if self._expired(held):
            path.unlink(missing_ok=True)
            return None
        return held

    def _expired(self, held: dict[str, object]) -> bool:
        try:
            expires = _dt.datetime.fromisoformat(str(held.get("expires")))
        except ValueError:
            return True
        return expires.tzinfo is None or expires <= self._clock.now()

    def _claim(self, request_id: int) -> tuple[dict[str, object], Path] | None:
        """Take the file for this request (a rename: of two at once, one gets it)."""
        claimed = self._dir / f".claimed-{request_id}-{secrets.token_hex(6)}"
        try:
            os.rename(self._path(request_id), claimed)
        except OSError:
            return None
        try:
            held: dict[str, object] = json.loads(claimed.read_text(encoding="ascii"))
        except (OSError, ValueError):
            claimed.unlink(missing_ok=True)
            return None
        if self._expired(held):
            claimed.unlink(missing_ok=True)
            return None
        return held, claimed

    def _restore(self, claimed: Path, request_id: int) -> None:
        os.replace(claimed, self._path(request_id))

    def _open(self, session: Session, request_id: int, held: dict[str, object]) -> dict[str, str]:
        key = session.get_one(SubscriberDataKey, int(str(held["data_key"])))
        inner: dict[str, str] = json.loads(
            self._subscribers.unseal(key, base64.b64decode(str(held["sealed"])), self._aad(request_id))
        )
        return inner
