"""Certificates about to expire, per prefecture, and the notices about them.

``ExpiryService.expiring`` lists issued, good, not yet expired subscriber certificates
whose notAfter falls within a window, grouped by prefecture and ordered by notAfter
(the RA dashboard shows it; ``govpki expiring`` prints it). Certificates already renewed
(an issued, unrevoked successor links to them) are left out, as are CA and OCSP
responder certificates (those rotate on their own).

``ExpiryService.send_due`` (the ``expiry-notices`` job) mails each certificate's contact
and sends one summary per prefecture to its RA mailbox, once per certificate and
threshold: GOVPKI_EXPIRY_NOTICE_DAYS lists the thresholds in days (default 30; e.g.
"30,7,1" warns three times), and a certificate's threshold is the smallest one its days
left are within. Every notice is a row of ``expiry_notices``, claimed (committed) before
the mail goes out and marked sent after, so a restart or a second runner does not send
it again; a failed one stays ``failed`` and is retried by the next run.
"""

from __future__ import annotations

import datetime as _dt
import logging
import smtplib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage

from sqlalchemy import and_, exists, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased

from ca.events import CaEvent
from ca.models import CertificateRecord, CertState
from ca.services import can_read
from govpki import audit, mail
from govpki.clock import Clock
from govpki.config import SmtpSettings
from govpki.errors import ForbiddenError, InvalidError
from govpki.principal import Principal
from ra.models import ExpiryNotice, Prefecture

log = logging.getLogger("govpki.expiry")

MAX_WINDOW_DAYS = 3650
CONTACT = "contact"
RA = "ra"
SENT = "sent"
FAILED = "failed"


@dataclass(frozen=True)
class ExpirySettings:
    thresholds: tuple[int, ...] = (30,)  # days, largest first; the largest is the listing window
    ra_mailbox: str | None = None  # an address, or a template with {prefecture} (the area code)
    smtp: SmtpSettings | None = None  # None: list only, send nothing
    excluded_profiles: frozenset[str] = frozenset()  # CA and OCSP responder profiles

    @property
    def window(self) -> _dt.timedelta:
        return _dt.timedelta(days=max(self.thresholds))

    def ra_address(self, prefecture: str) -> str | None:
        return None if self.ra_mailbox is None else self.ra_mailbox.format(prefecture=prefecture)


@dataclass(frozen=True)
class ExpiringCertificate:
    record_id: int
    serial: str
    ca_id: int
    profile: str
    subject: str
    sans: str
    not_after: _dt.datetime
    contact_email: str | None
    prefecture_code: str | None

    def days_left(self, now: _dt.datetime) -> int:
        return max((self.not_after - now).days, 0)


@dataclass(frozen=True)
class PrefectureExpiry:
    """The expiring certificates of one prefecture (``code`` None: issued without one)."""

    code: str | None
    name: str | None
    name_en: str | None
    certificates: tuple[ExpiringCertificate, ...]


@dataclass
class NoticeReport:
    expiring: int = 0
    mail: bool = False  # SMTP is configured
    sent: int = 0
    failed: int = 0
    lines: list[str] = field(default_factory=list)


def can_list_expiring(principal: Principal) -> bool:
    """Readers of certificate records; a principal with a prefecture sees only its own
    (the RA officers' role, from a later release, joins here)."""
    return can_read(principal)


@dataclass(frozen=True)
class _Due:
    cert: ExpiringCertificate
    threshold: int
    channel: str
    recipient: str


class ExpiryService:
    def __init__(self, clock: Clock, settings: ExpirySettings) -> None:
        self._clock = clock
        self.settings = settings

    # ----- listing ---------------------------------------------------------

    def expiring(
        self,
        session: Session,
        principal: Principal,
        within: _dt.timedelta | None = None,
        prefecture: str | None = None,
    ) -> list[PrefectureExpiry]:
        """Issued, good, unexpired certificates with notAfter within ``within`` (default: the
        configured window), per prefecture (by code; those without one last), by notAfter."""
        if not can_list_expiring(principal):
            raise ForbiddenError("your role may not read certificate records", field="prefecture")
        window = self.settings.window if within is None else within
        if not _dt.timedelta(days=1) <= window <= _dt.timedelta(days=MAX_WINDOW_DAYS):
            raise InvalidError(f"must be between 1 and {MAX_WINDOW_DAYS} days", field="days")
        if principal.prefecture is not None:
            if prefecture is not None and prefecture != principal.prefecture:
                raise ForbiddenError(f"you act for prefecture {principal.prefecture} only", field="prefecture")
            prefecture = principal.prefecture
        elif prefecture is not None and session.get(Prefecture, prefecture) is None:
            raise InvalidError(f"unknown prefecture code {prefecture!r}", field="prefecture")
        now = self._clock.now()
        rec = CertificateRecord
        successor = aliased(CertificateRecord)
        renewed = exists().where(
            successor.renewed_from_id == rec.id,
            successor.state == CertState.ISSUED.value,
            successor.revocation_reason.is_(None),
        )
        query = (
            select(rec, Prefecture)
            .outerjoin(Prefecture, Prefecture.code == rec.prefecture_code)
            .where(
                rec.state == CertState.ISSUED.value,
                rec.revocation_reason.is_(None),
                rec.not_after > now,
                rec.not_after <= now + window,
                ~renewed,
            )
            .order_by(rec.not_after, rec.serial)
        )
        if self.settings.excluded_profiles:
            query = query.where(rec.profile.not_in(sorted(self.settings.excluded_profiles)))
        if prefecture is not None:
            query = query.where(rec.prefecture_code == prefecture)
        groups: dict[str | None, tuple[Prefecture | None, list[ExpiringCertificate]]] = {}
        for record, pref in session.execute(query):
            assert record.not_after is not None
            item = ExpiringCertificate(
                record_id=record.id,
                serial=record.serial,
                ca_id=record.ca_id,
                profile=record.profile,
                subject=record.subject,
                sans=record.sans,
                not_after=record.not_after,
                contact_email=record.contact_email,
                prefecture_code=record.prefecture_code,
            )
            groups.setdefault(record.prefecture_code, (pref, []))[1].append(item)
        ordered = sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))
        return [
            PrefectureExpiry(code, pref.name if pref else None, pref.name_en if pref else None, tuple(certs))
            for code, (pref, certs) in ordered
        ]

    # ----- notices ---------------------------------------------------------

    def threshold_for(self, cert: ExpiringCertificate, now: _dt.datetime) -> int | None:
        """The smallest threshold the certificate's time left is within (None: not yet due)."""
        left = cert.not_after - now
        within = [t for t in self.settings.thresholds if left <= _dt.timedelta(days=t)]
        return min(within) if within else None

    def send_due(self, session: Session, principal: Principal, checkpoint: Callable[[], None]) -> NoticeReport:
        """Send the notices that are due (or, without SMTP, only count what expires).
        ``checkpoint`` commits: it is called after each claim and each outcome, so a mail
        once sent is never sent again and a crash leaves at most one to retry."""
        groups = self.expiring(session, principal)
        report = NoticeReport(expiring=sum(len(g.certificates) for g in groups), mail=self.settings.smtp is not None)
        if self.settings.smtp is None:
            if report.expiring:
                report.lines.append(
                    f"{report.expiring} certificates expire within {max(self.settings.thresholds)} days in "
                    f"{len(groups)} prefecture groups; SMTP is not configured (GOVPKI_SMTP_HOST), no mail sent"
                )
            return report
        due = self._due(session, groups)
        if not due:
            return report
        names = {g.code: g for g in groups}
        try:
            with mail.connect(self.settings.smtp) as client:
                for item in (d for d in due if d.channel == CONTACT):
                    self._send(session, principal, client, [item], self._contact_mail(names), report, checkpoint)
                by_prefecture: dict[str | None, list[_Due]] = {}
                for item in (d for d in due if d.channel == RA):
                    by_prefecture.setdefault(item.cert.prefecture_code, []).append(item)
                for code, items in by_prefecture.items():
                    self._send(session, principal, client, items, self._ra_mail(names[code]), report, checkpoint)
        except (OSError, smtplib.SMTPException) as exc:
            # the server is unreachable or dropped us: what was not sent is retried next run
            log.warning("expiry notices: SMTP %s:%s failed: %s", self.settings.smtp.host, self.settings.smtp.port, exc)
            report.lines.append(
                f"SMTP {self.settings.smtp.host}:{self.settings.smtp.port} failed: {exc}; retried next run"
            )
            pending = [d for d in due if not self._is_sent(session, d)]
            self._record(session, principal, pending, ok=False, error=f"SMTP: {exc}", report=report, claimed=False)
            checkpoint()
        if report.sent or report.failed:
            report.lines.insert(0, f"sent {report.sent} expiry notices, {report.failed} failed (retried next run)")
        return report

    def _due(self, session: Session, groups: Iterable[PrefectureExpiry]) -> list[_Due]:
        now = self._clock.now()
        candidates: list[_Due] = []
        for group in groups:
            for cert in group.certificates:
                threshold = self.threshold_for(cert, now)
                if threshold is None:
                    continue
                if cert.contact_email:
                    candidates.append(_Due(cert, threshold, CONTACT, cert.contact_email))
                ra_address = self.settings.ra_address(cert.prefecture_code) if cert.prefecture_code else None
                if ra_address:
                    candidates.append(_Due(cert, threshold, RA, ra_address))
        if not candidates:
            return []
        sent = {
            (row.certificate_id, row.threshold_days, row.channel)
            for row in session.execute(
                select(ExpiryNotice.certificate_id, ExpiryNotice.threshold_days, ExpiryNotice.channel).where(
                    ExpiryNotice.certificate_id.in_({c.cert.record_id for c in candidates}),
                    ExpiryNotice.state == SENT,
                )
            )
        }
        return [c for c in candidates if (c.cert.record_id, c.threshold, c.channel) not in sent]

    def _row(self, session: Session, item: _Due) -> ExpiryNotice | None:
        return session.scalars(
            select(ExpiryNotice)
            .where(
                ExpiryNotice.certificate_id == item.cert.record_id,
                ExpiryNotice.threshold_days == item.threshold,
                ExpiryNotice.channel == item.channel,
            )
            .execution_options(populate_existing=True)
        ).first()

    def _is_sent(self, session: Session, item: _Due) -> bool:
        row = self._row(session, item)
        return row is not None and row.state == SENT

    def _claim(self, session: Session, item: _Due, checkpoint: Callable[[], None]) -> bool:
        """Take the notice for this run (committed), unless it was sent or another runner holds it."""
        now = self._clock.now()
        row = self._row(session, item)
        try:
            if row is None:
                session.add(
                    ExpiryNotice(
                        certificate_id=item.cert.record_id,
                        threshold_days=item.threshold,
                        channel=item.channel,
                        recipient=item.recipient,
                        state=FAILED,
                        attempts=1,
                        last_error="sending",
                        created_at=now,
                        updated_at=now,
                    )
                )
                session.flush()
            else:
                if row.state == SENT:
                    return False
                claimed = session.connection().execute(
                    update(ExpiryNotice)
                    .where(and_(ExpiryNotice.id == row.id, ExpiryNotice.attempts == row.attempts))
                    .values(attempts=row.attempts + 1, recipient=item.recipient, last_error="sending", updated_at=now)
                )
                if claimed.rowcount != 1:
                    return False
            checkpoint()
        except IntegrityError:  # another runner inserted it first
            session.rollback()
            return False
        return True

    def _send(
        self,
        session: Session,
        principal: Principal,
        client: smtplib.SMTP,
        items: Sequence[_Due],
        message: Callable[[Sequence[_Due]], EmailMessage],
        report: NoticeReport,
        checkpoint: Callable[[], None],
    ) -> None:
        mine = [item for item in items if self._claim(session, item, checkpoint)]
        if not mine:
            return
        try:
            client.send_message(message(mine))
        except mail.MESSAGE_ERRORS as exc:
            log.warning("expiry notice to %s refused: %s", mine[0].recipient, exc)
            self._record(session, principal, mine, ok=False, error=f"refused: {exc}", report=report, claimed=True)
            checkpoint()
            return
        self._record(session, principal, mine, ok=True, error=None, report=report, claimed=True)
        checkpoint()

    def _record(
        self,
        session: Session,
        principal: Principal,
        items: Sequence[_Due],
        *,
        ok: bool,
        error: str | None,
        report: NoticeReport,
        claimed: bool,
    ) -> None:
        """Mark the notices sent or failed (``claimed``: this run took them, counting the attempt).
        Audited: every sent notice, and the first failure of each (an SMTP server down for a day
        must not write an audit entry per notice per minute)."""
        now = self._clock.now()
        session.expire_all()  # claims were written in Core
        for item in items:
            row = self._row(session, item)
            first_failure = row is None or (claimed and row.attempts <= 1)
            if row is not None and not claimed:
                row.attempts += 1
            if row is None:
                row = ExpiryNotice(
                    certificate_id=item.cert.record_id,
                    threshold_days=item.threshold,
                    channel=item.channel,
                    recipient=item.recipient,
                    attempts=1,
                    created_at=now,
                )
                session.add(row)
            row.state = SENT if ok else FAILED
            row.recipient = item.recipient
            row.last_error = error
            row.updated_at = now
            row.sent_at = now if ok else None
            session.flush()
            if ok:
                report.sent += 1
            else:
                report.failed += 1
            if ok or first_failure:
                audit.record(
                    session,
                    principal,
                    CaEvent.CERT_EXPIRY_NOTICE.value,
                    object_type="certificate",
                    object_id=item.cert.serial,
                    details={
                        "channel": item.channel,
                        "recipient": item.recipient,
                        "threshold_days": item.threshold,
                        "not_after": item.cert.not_after.isoformat(),
                        **({"error": error} if error else {}),
                    },
                    outcome="success" if ok else "failure",
                    clock=self._clock,
                )

    # ----- the mails (Chinese first, then English) --------------------------

    def _contact_mail(self, names: dict[str | None, PrefectureExpiry]) -> Callable[[Sequence[_Due]], EmailMessage]:
        def build(items: Sequence[_Due]) -> EmailMessage:
            assert self.settings.smtp is not None
            cert = items[0].cert
            now = self._clock.now()
            group = names.get(cert.prefecture_code)
            ra_zh = f"{group.name}注册审核中心" if group and group.name else "所属注册审核中心"
            ra_en = f"the registration authority of {group.name_en}" if group and group.name_en else "your RA"
            when = f"{cert.not_after:%Y-%m-%d %H:%M} UTC"
            days = cert.days_left(now)
            body = (
                f"您好：\n\n"
                f"您的数字证书将于 {when} 到期（剩余 {days} 天）。请在到期前向{ra_zh}申请更新证书。\n\n"
                f"  主题 / Subject:       {cert.subject}\n"
                f"  序列号 / Serial:      {cert.serial}\n"
                f"  证书类型 / Profile:   {cert.profile}\n"
                f"  到期 / Not after:     {when}\n\n"
                f"Hello,\n\n"
                f"Your certificate expires on {when} ({days} days from now). "
                f"Please ask {ra_en} to renew it before then.\n\n"
                "此邮件由系统自动发送，请勿回复。 / This message was sent automatically; please do not reply.\n"
            )
            subject = f"证书即将到期 / Certificate expiring {cert.not_after:%Y-%m-%d}: {_cn(cert.subject)}"
            return mail.message(self.settings.smtp.sender, items[0].recipient, subject, body)

        return build

    def _ra_mail(self, group: PrefectureExpiry) -> Callable[[Sequence[_Due]], EmailMessage]:
        def build(items: Sequence[_Due]) -> EmailMessage:
            assert self.settings.smtp is not None
            now = self._clock.now()
            lines = [
                f"  {d.cert.not_after:%Y-%m-%d}  {d.cert.days_left(now):>4} 天/days  {d.cert.serial}  "
                f"{d.cert.profile}  {d.cert.subject}  {d.cert.contact_email or '-'}"
                for d in sorted(items, key=lambda d: (d.cert.not_after, d.cert.serial))
            ]
            count = len(items)
            body = (
                f"{group.name}注册审核中心：\n\n"
                f"以下 {count} 张证书即将到期，请提醒持有人及时办理更新。\n"
                f"The following {count} certificates of {group.name_en} expire soon; "
                "please remind their holders to renew them.\n\n"
                "  到期/Expires  剩余/Left  序列号/Serial  类型/Profile  主题/Subject  联系人/Contact\n"
                + "\n".join(lines)
                + "\n\n此邮件由系统自动发送，请勿回复。 / This message was sent automatically; please do not reply.\n"
            )
            subject = f"{group.name}：{count} 张证书即将到期 / {count} certificates expiring in {group.name_en}"
            return mail.message(self.settings.smtp.sender, items[0].recipient, subject, body)

        return build


def _cn(subject: str) -> str:
    for part in subject.split(","):
        if part.startswith("CN="):
            return part[3:]
    return subject
