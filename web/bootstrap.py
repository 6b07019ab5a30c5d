"""First start: the demo ceremony on an empty instance. Each step is its own unit of work."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select

from authz.models import Account
from authz.services import one_time_password
from ca.models import CaKind, CertificateAuthority, CrlKind
from govpki.errors import NotFoundError
from govpki.principal import SYSTEM, Principal, Role
from web.container import Services

FIRST_ADMIN = "secadmin"
# 三员分立: the three administrators of a new instance, each with its own one-time password
FIRST_ACCOUNTS = (
    ("sysadmin", "系统管理员 (system administrator)", Role.SYSTEM_ADMIN),
    (FIRST_ADMIN, "安全管理员 (security administrator)", Role.SECURITY_ADMIN),
    ("auditor", "安全审计员 (security auditor)", Role.SECURITY_AUDITOR),
)


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    root: CertificateAuthority | None = None
    issuing: CertificateAuthority | None = None
    admin_password: str | None = None  # the security administrator's (``secadmin``)
    # user name -> one-time password of each first account made by this run (shown once)
    passwords: dict[str, str] = field(default_factory=dict)


def initialize(
    services: Services, principal: Principal = SYSTEM, *, first_admin: bool = True, kmc: bool = False
) -> InitReport:
    """Make what an instance needs and does not have yet (idempotent). ``kmc``: also the
    key-management centre's storage key, which officials' dual certificates need
    (``govpki init`` and ``govpki serve`` make it; tests make it where they need it)."""
    report = InitReport()
    ca = services.ca
    root_key_at_hand = False  # only a run that made a CA has used the root key
    with services.sessions() as session:
        try:
            report.root = ca.active_ca(session, CaKind.ROOT)
        except NotFoundError:
            report.root = ca.create_root(session, principal)
            session.commit()
            report.created.append(f"root CA {report.root.name}")
            root_key_at_hand = True
    with services.sessions() as session:
        try:
            report.issuing = ca.active_ca(session, CaKind.ISSUING)
        except NotFoundError:
            report.issuing = ca.create_issuing(session, principal)
            session.commit()
            report.created.append(f"issuing CA {report.issuing.name}")
            root_key_at_hand = True
    _first_crls(services, principal, report, root_key_at_hand)
    with services.sessions() as session:
        # the issuing CA's delegated OCSP responder (rotated later by `govpki ocsp refresh`)
        issuing = ca.active_ca(session, CaKind.ISSUING)
        if services.ocsp.active_responder(session, issuing.id) is None:
            responder = services.ocsp.ensure_responder(session, principal, issuing)
            session.commit()
            report.created.append(
                f"OCSP responder certificate for {issuing.name} (until {responder.not_after:%Y-%m-%d})"
            )
    with services.sessions() as session:
        added = services.regions.seed(session, principal, services.region)
        session.commit()
        if added:
            report.created.append(f"{added} prefecture RAs of {services.region.region}")
    with services.sessions() as session:
        # the RA's key for subscribers' ID numbers (AES-256 in the online store; HMAC key sealed under it)
        _key, made = services.subscribers.ensure_data_key(session, principal)
        session.commit()
        if made:
            report.created.append("subscriber data key (ID numbers encrypted at rest)")
    if kmc:
        with services.sessions() as session:
            storage, made = services.kmc.ensure_storage_key(session, principal)
            session.commit()
            if made:
                report.created.append(f"KMC storage key {storage.key_handle} (wraps escrowed encryption keys)")
    _record_secret_keys(services, principal, report)
    if first_admin:
        # each of the three 三员 roles that nobody holds (a new instance: all three; an instance
        # from before the three were made: the missing ones), under its user name if free
        with services.sessions() as session:
            new_accounts: list[tuple[str, Role]] = []
            for username, display_name, role in FIRST_ACCOUNTS:
                held = session.scalar(select(Account.id).where(Account.role == role.value).limit(1))
                taken = session.scalar(select(Account.id).where(Account.username == username))
                if held is not None or taken is not None:
                    continue
                password = one_time_password()
                services.accounts.create(
                    session, principal, username=username, display_name=display_name, role=role, password=password
                )
                report.passwords[username] = password
                new_accounts.append((username, role))
            session.commit()
        report.admin_password = report.passwords.get(FIRST_ADMIN)
        for username, role in new_accounts:
            report.created.append(f"{role.value.replace('_', ' ')} account '{username}'")
    return report


def _record_secret_keys(services: Services, principal: Principal, report: InitReport) -> None:
    """Key records for secret keys made before they were recorded (an older instance): the
    subscriber data keys, the TOTP keys and the KMC storage keys. Idempotent."""
    with services.sessions() as session:
        counts = [
            ("subscriber data key", services.subscribers.record_data_keys(session, principal)),
            ("TOTP key", services.accounts.record_totp_keys(session, principal)),
            ("KMC storage key", services.kmc.record_storage_keys(session, principal)),
        ]
        session.commit()
    for what, n in counts:
        if n:
            report.created.append(f"key record(s) for {n} {what}(s) made before keys were recorded")


def _first_crls(services: Services, principal: Principal, report: InitReport, root_key_at_hand: bool) -> None:
    """The root's ARL while its key is at hand (later ones: ``govpki crl generate --root``
    at a ceremony) and the issuing CA's first full CRL."""
    assert report.root is not None and report.issuing is not None
    wanted = [(report.issuing, "CRL")]
    if root_key_at_hand:
        wanted.insert(0, (report.root, "ARL"))
    for authority, what in wanted:
        with services.sessions() as session:
            if services.crl.latest(session, authority.id, CrlKind.FULL, with_der=False) is None:
                crl = services.crl.generate(session, principal, authority.id, CrlKind.FULL)
                session.commit()
                report.created.append(f"{what} number {crl.number} of {authority.name}")
