"""First start: the demo ceremony on an empty instance. Each step is its own unit of work."""

from __future__ import annotations

from dataclasses import dataclass, field

from authz.services import one_time_password
from ca.models import CaKind, CertificateAuthority
from govpki.errors import NotFoundError
from govpki.principal import SYSTEM, Principal, Role
from web.container import Services

FIRST_ADMIN = "secadmin"


@dataclass
class InitReport:
    created: list[str] = field(default_factory=list)
    root: CertificateAuthority | None = None
    issuing: CertificateAuthority | None = None
    admin_password: str | None = None


def initialize(services: Services, principal: Principal = SYSTEM, *, first_admin: bool = True) -> InitReport:
    report = InitReport()
    ca = services.ca
    with services.sessions() as session:
        try:
            report.root = ca.active_ca(session, CaKind.ROOT)
        except NotFoundError:
            report.root = ca.create_root(session, principal)
            session.commit()
            report.created.append(f"root CA {report.root.name}")
    with services.sessions() as session:
        try:
            report.issuing = ca.active_ca(session, CaKind.ISSUING)
        except NotFoundError:
            report.issuing = ca.create_issuing(session, principal)
            session.commit()
            report.created.append(f"issuing CA {report.issuing.name}")
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
    if first_admin:
        with services.sessions() as session:
            if services.accounts.count(session) == 0:
                password = one_time_password()
                services.accounts.create(
                    session,
                    principal,
                    username=FIRST_ADMIN,
                    display_name="安全管理员 (security administrator)",
                    role=Role.SECURITY_ADMIN,
                    password=password,
                )
                session.commit()
                report.admin_password = password
                report.created.append(f"security administrator account '{FIRST_ADMIN}'")
    return report
