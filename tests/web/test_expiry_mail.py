"""Expiry notices through a real SMTP server (aiosmtpd on 127.0.0.1, started by the test):
recipients, subjects and bodies; once per certificate and threshold; a server that is
down or refuses a recipient is retried next run; and the CLI and REST surfaces of
expiring certificates and renewal."""

from __future__ import annotations

import datetime as dt
import email
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from cryptography import x509
from flask.testing import FlaskClient
from sqlalchemy import func, select

from ca.models import CertificateRecord
from govpki.audit import AuditEntry
from govpki.clock import UTC
from govpki.principal import SYSTEM
from ra.models import ExpiryNotice
from tests.ca.test_expiry import OPERATOR, MovableClock
from tests.helpers import csr_pem, make_config
from tests.web.test_api import auth
from web.bootstrap import initialize
from web.cli import main
from web.container import Services, build_services
from web.jobs import JobResult, default_jobs, run_due

URUMQI, KARAMAY = "650100", "650200"
DAY = dt.timedelta(days=1)


@dataclass
class Mailbox:
    """An aiosmtpd handler that keeps every message and refuses the addresses in ``refuse``."""

    messages: list[tuple[list[str], EmailMessage]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, options: Any) -> str:
        if address in self.refuse:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = email.message_from_bytes(envelope.content, policy=default_policy)
        assert isinstance(parsed, EmailMessage)
        self.messages.append((list(envelope.rcpt_tos), parsed))
        return "250 OK"

    def by_recipient(self) -> dict[str, EmailMessage]:
        return {to[0]: msg for to, msg in self.messages}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class SmtpServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.mailbox = Mailbox()
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.mailbox, hostname="127.0.0.1", port=self.port)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer(free_port())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailing(tmp_path: Path, database_url: str, smtp: SmtpServer) -> Iterator[tuple[Services, MovableClock]]:
    config = make_config(
        tmp_path / "instance",
        database_url,
        GOVPKI_SMTP_HOST="127.0.0.1",
        GOVPKI_SMTP_PORT=str(smtp.port),
        GOVPKI_SMTP_FROM="pki@example.gov.cn",
        GOVPKI_EXPIRY_NOTICE_DAYS="30,7",
        GOVPKI_EXPIRY_NOTICE_RA_MAILBOX="ra-{prefecture}@example.gov.cn",
    )
    clock = MovableClock(dt.datetime.now(UTC).replace(microsecond=0))
    services = build_services(config, clock=clock)
    try:
        initialize(services, SYSTEM, first_admin=False)
        yield services, clock
    finally:
        services.dispose()


def issue(services: Services, cn: str, prefecture: str | None, contact: str | None) -> CertificateRecord:
    with services.sessions() as session:
        record = services.ca.issue(
            session,
            OPERATOR,
            profile="service-tls-server",
            csr=csr_pem(cn=cn),
            prefecture=prefecture,
            contact_email=contact,
        )
        session.commit()
    return record


def notices_job(services: Services) -> JobResult:
    (result,) = run_due(services, [j for j in default_jobs() if j.name == "expiry-notices"])
    assert result.ok, result.lines
    return result


def notice_audits(services: Services, outcome: str) -> int:
    with services.sessions() as session:
        query = select(func.count()).where(
            AuditEntry.action == "ca:certificate:expiry_notice", AuditEntry.outcome == outcome
        )
        return session.scalar(query) or 0


def notice_states(services: Services) -> list[tuple[str, int, str, int]]:
    with services.sessions() as session:
        rows = session.scalars(select(ExpiryNotice).order_by(ExpiryNotice.id))
        return [(r.channel, r.threshold_days, r.state, r.attempts) for r in rows]


def test_notices_go_to_contacts_and_prefecture_ras_once_per_threshold(
    mailing: tuple[Services, MovableClock], smtp: SmtpServer
) -> None:
    services, clock = mailing
    smtp.start()
    start = clock.at
    a = issue(services, "a.example.gov.cn", URUMQI, "a@example.gov.cn")
    b = issue(services, "b.example.gov.cn", URUMQI, "b@example.gov.cn")
    k = issue(services, "k.example.gov.cn", KARAMAY, None)
    loose = issue(services, "loose.example.gov.cn", None, "d@example.gov.cn")

    clock.at = start + 300 * DAY  # 97 days left: nothing due
    assert notices_job(services).lines == ()
    assert smtp.mailbox.messages == []

    clock.at = start + 380 * DAY  # 17 days left: the 30-day notices
    result = notices_job(services)
    assert result.lines == ("sent 6 expiry notices, 0 failed (retried next run)",)
    got = smtp.mailbox.by_recipient()
    assert sorted(got) == sorted(
        [
            "a@example.gov.cn",
            "b@example.gov.cn",
            "d@example.gov.cn",
            "ra-650100@example.gov.cn",
            "ra-650200@example.gov.cn",
        ]
    )
    mail_a = got["a@example.gov.cn"]
    assert mail_a["From"] == "pki@example.gov.cn"
    assert mail_a["Subject"] == f"证书即将到期 / Certificate expiring {a.not_after:%Y-%m-%d}: a.example.gov.cn"
    body = mail_a.get_content()
    assert a.serial in body and "剩余 17 天" in body and "17 days from now" in body
    assert "乌鲁木齐市注册审核中心" in body and "registration authority of Urumqi" in body
    summary = got["ra-650100@example.gov.cn"]
    assert summary["Subject"] == "乌鲁木齐市：2 张证书即将到期 / 2 certificates expiring in Urumqi"
    text = summary.get_content()
    assert a.serial in text and b.serial in text and "a@example.gov.cn" in text and k.serial not in text
    assert k.serial in got["ra-650200@example.gov.cn"].get_content()
    assert loose.serial in got["d@example.gov.cn"].get_content()
    assert notice_audits(services, "success") == 6

    # again, and after a restart (new services on the same database): nothing is sent twice
    assert notices_job(services).lines == ()
    again = build_services(services.config, clock=clock)
    try:
        assert notices_job(again).lines == ()
    finally:
        again.dispose()
    assert len(smtp.mailbox.messages) == 5

    clock.at = start + 392 * DAY  # 5 days left: the 7-day notices, once
    assert notices_job(services).lines == ("sent 6 expiry notices, 0 failed (retried next run)",)
    assert notices_job(services).lines == ()
    assert len(smtp.mailbox.messages) == 10
    assert {t for _c, t, state, _n in notice_states(services) if state == "sent"} == {30, 7}


def test_smtp_down_is_recorded_and_retried_next_run_without_stopping_other_jobs(
    mailing: tuple[Services, MovableClock], smtp: SmtpServer
) -> None:
    services, clock = mailing
    issue(services, "a.example.gov.cn", URUMQI, "a@example.gov.cn")
    clock.at += 380 * DAY

    results = run_due(services)  # the server is not started: connection refused
    assert all(r.ok for r in results), results
    names = [r.name for r in results]
    assert names[-1] == "audit-checkpoint" and "expiry-notices" in names  # the checkpoint stays last
    lines = next(r.lines for r in results if r.name == "expiry-notices")
    assert any("failed" in line and "retried next run" in line for line in lines), lines
    assert notice_states(services) == [("contact", 30, "failed", 1), ("ra", 30, "failed", 1)]
    notices_job(services)  # still down: one more attempt each, no second failure audit entry
    assert notice_states(services) == [("contact", 30, "failed", 2), ("ra", 30, "failed", 2)]
    assert notice_audits(services, "failure") == 2

    smtp.start()
    assert notices_job(services).lines == ("sent 2 expiry notices, 0 failed (retried next run)",)
    assert sorted(smtp.mailbox.by_recipient()) == ["a@example.gov.cn", "ra-650100@example.gov.cn"]
    assert [state for _c, _t, state, _n in notice_states(services)] == ["sent", "sent"]
    assert notices_job(services).lines == ()


def test_a_refused_recipient_fails_alone_and_is_retried(
    mailing: tuple[Services, MovableClock], smtp: SmtpServer
) -> None:
    services, clock = mailing
    smtp.mailbox.refuse.add("gone@example.gov.cn")
    smtp.start()
    issue(services, "gone.example.gov.cn", None, "gone@example.gov.cn")
    issue(services, "here.example.gov.cn", None, "here@example.gov.cn")
    clock.at += 380 * DAY
    assert notices_job(services).lines == ("sent 1 expiry notices, 1 failed (retried next run)",)
    assert list(smtp.mailbox.by_recipient()) == ["here@example.gov.cn"]
    with services.sessions() as session:
        failed = session.scalars(select(ExpiryNotice).where(ExpiryNotice.state == "failed")).one()
        assert failed.recipient == "gone@example.gov.cn" and "550" in (failed.last_error or "")
    smtp.mailbox.refuse.clear()
    assert notices_job(services).lines == ("sent 1 expiry notices, 0 failed (retried next run)",)
    assert sorted(smtp.mailbox.by_recipient()) == ["gone@example.gov.cn", "here@example.gov.cn"]


def test_without_smtp_the_job_only_lists(services: Services) -> None:
    with services.sessions() as session:
        services.ca.issue(
            session, OPERATOR, profile="service-tls-server", csr=csr_pem(cn="soon.example.gov.cn"), validity_days=10
        )
        session.commit()
    lines = notices_job(services).lines
    assert lines == (
        "1 certificates expire within 30 days in 1 prefecture groups; SMTP is not configured "
        "(GOVPKI_SMTP_HOST), no mail sent",
    )
    assert notice_states(services) == []


def cli(services: Services, *args: str) -> Any:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_cli_issue_expiring_and_renew(services: Services, tmp_path: Path) -> None:
    request = tmp_path / "r.csr"
    request.write_bytes(csr_pem(cn="cli.example.gov.cn"))
    issued = cli(
        services, "issue", "-p", "service-tls-server", "--csr", str(request), "--prefecture", URUMQI,
        "--contact-email", "ops@example.gov.cn", "--out", str(tmp_path / "c.pem"),
    )  # fmt: skip
    assert issued.exit_code == 0, issued.output
    bad = cli(services, "issue", "-p", "service-tls-server", "--csr", str(request), "--contact-email", "nope")
    assert bad.exit_code == 2 and "contact_email: is not an e-mail address" in bad.output
    with services.sessions() as session:
        soon = services.ca.issue(
            session,
            OPERATOR,
            profile="service-tls-server",
            csr=csr_pem(cn="soon.example.gov.cn"),
            validity_days=5,
            prefecture=KARAMAY,
            contact_email="soon@example.gov.cn",
        )
        session.commit()

    listed = cli(services, "expiring", "--json")
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines()]
    assert [(r["serial"], r["prefecture"], r["contact_email"], r["days_left"]) for r in rows] == [
        (soon.serial, KARAMAY, "soon@example.gov.cn", 4)
    ]
    text = cli(services, "expiring", "--prefecture", KARAMAY)
    assert "650200 克拉玛依市 (Karamay): 1" in text.output and soon.serial in text.output
    assert "no certificates expire" in cli(services, "expiring", "--prefecture", URUMQI).output
    unknown = cli(services, "expiring", "--prefecture", "123456")
    assert unknown.exit_code == 2 and "prefecture: unknown prefecture code" in unknown.output

    out = tmp_path / "renewed.pem"
    renewed = cli(services, "renew", soon.serial, "--out", str(out))
    assert renewed.exit_code == 0, renewed.output
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days == 397
    new_key = tmp_path / "new.csr"
    new_key.write_bytes(csr_pem(cn="soon.example.gov.cn"))
    twice = cli(services, "renew", soon.serial, "--csr", str(new_key))
    assert twice.exit_code == 2 and "already renewed" in twice.output
    assert cli(services, "expiring", "--json").output == ""  # renewed: no longer listed


def test_rest_issue_with_contact_renew_and_expiring(client: FlaskClient, operator_token: str) -> None:
    body = {
        "profile": "service-tls-server",
        "csr": csr_pem(cn="rest.example.gov.cn").decode(),
        "prefecture": URUMQI,
        "contact_email": "rest@example.gov.cn",
    }
    issued = client.post("/api/v1/certificates", json=body, headers=auth(operator_token))
    assert issued.status_code == 201, issued.json
    assert (issued.json["prefecture"], issued.json["contact_email"]) == (URUMQI, "rest@example.gov.cn")
    serial = issued.json["serial"]
    bad = client.post(
        "/api/v1/certificates", json={**body, "contact_email": "x@localhost"}, headers=auth(operator_token)
    )
    assert bad.status_code == 422 and bad.json["errors"][0]["field"] == "contact_email"
    unknown = client.post("/api/v1/certificates", json={**body, "prefecture": "999999"}, headers=auth(operator_token))
    assert unknown.status_code == 422 and unknown.json["code"] == "ca.unknown_prefecture"

    same = client.post(f"/api/v1/certificates/{serial}/renew", headers=auth(operator_token))
    assert same.status_code == 201, same.json
    assert same.json["renewed_from"] == serial and same.json["prefecture"] == URUMQI
    assert same.headers["Location"] == f"/api/v1/certificates/{same.json['serial']}"
    renewed_twice = client.post(f"/api/v1/certificates/{serial}/renew", json={}, headers=auth(operator_token))
    assert renewed_twice.status_code == 409 and renewed_twice.json["code"] == "ca.already_renewed"

    newer = client.post(
        f"/api/v1/certificates/{same.json['serial']}/renew",
        json={"csr": csr_pem(cn="rest.example.gov.cn").decode()},
        headers=auth(operator_token),
    )
    assert newer.status_code == 201, newer.json
    assert newer.json["renewed_from"] == same.json["serial"]
    revoked = newer.json["serial"]
    client.post(f"/api/v1/certificates/{revoked}/revoke", headers=auth(operator_token))
    gone = client.post(f"/api/v1/certificates/{revoked}/renew", headers=auth(operator_token))
    assert gone.status_code == 409 and gone.json["code"] == "ca.revoked"
    nothing = client.post("/api/v1/certificates/abcdef/renew", headers=auth(operator_token))
    assert nothing.status_code == 404 and nothing.json["errors"][0]["field"] == "serial"

    other = client.post(
        "/api/v1/certificates",
        json={**body, "prefecture": KARAMAY, "csr": csr_pem(cn="k.example.gov.cn").decode()},
        headers=auth(operator_token),
    )
    assert other.status_code == 201, other.json
    # the first is renewed; the second's renewal was revoked, so it is the one in use again;
    # the third is revoked; the OCSP responder is never listed
    listed = client.get("/api/v1/expiring?days=400", headers=auth(operator_token))
    assert listed.status_code == 200, listed.json
    assert listed.json["days"] == 400
    groups = listed.json["groups"]
    assert [(g["prefecture"], g["name_en"], [c["serial"] for c in g["certificates"]]) for g in groups] == [
        (URUMQI, "Urumqi", [same.json["serial"]]),
        (KARAMAY, "Karamay", [other.json["serial"]]),
    ]
    assert groups[1]["certificates"][0]["days_left"] == 396
    assert client.get("/api/v1/expiring?days=30", headers=auth(operator_token)).json["groups"] == []
    too_long = client.get("/api/v1/expiring?days=5000", headers=auth(operator_token))
    assert too_long.status_code == 422 and too_long.json["errors"][0]["field"] == "days"
    assert client.get("/api/v1/expiring").status_code == 401
