"""The govpki command: the same services, thin adapters, clear errors."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner
from cryptography import x509
from sqlalchemy import func, select

from authz.models import Account
from govpki.principal import SYSTEM, Role
from ra.models import RegistrationAuthority
from tests.helpers import csr_pem
from web.cli import main
from web.container import Services


def run(services: Services, *args: str, stdin: bytes | None = None):
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)


def test_init_is_idempotent_and_seeds_fourteen_ras(services: Services):
    result = run(services, "init")
    assert result.exit_code == 0, result.output
    assert "created KMC storage key" in result.output  # the fixture's instance had none
    assert "created root CA" not in result.output
    result = run(services, "init")
    assert result.exit_code == 0, result.output
    assert "already initialised" in result.output
    assert "password" not in result.output  # the first admin exists; no second password
    with services.sessions() as s:
        ras = s.scalars(select(RegistrationAuthority)).all()
        assert len(ras) == 14
        names = {ra.prefecture.name for ra in ras}
        assert {"乌鲁木齐市", "伊犁哈萨克自治州", "阿勒泰地区", "克孜勒苏柯尔克孜自治州"} <= names


def test_first_init_prints_the_one_time_password(bare_services: Services):
    result = run(bare_services, "init")
    assert result.exit_code == 0, result.output
    assert "created root CA" in result.output and "created issuing CA" in result.output
    assert "14 prefecture RAs" in result.output and "created KMC storage key" in result.output
    # 三员分立: the three administrators, each with its own one-time password, printed once
    passwords = {}
    for role, name in (("system_admin", "sysadmin"), ("security_admin", "secadmin"), ("security_auditor", "auditor")):
        found = re.search(rf"{role} +user name: {name} +password: (\S+)", result.output)
        assert found, result.output
        passwords[name] = found[1]
    assert len(set(passwords.values())) == 3
    with bare_services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(RegistrationAuthority)) == 14
        roles = {name: role for name, role in s.execute(select(Account.username, Account.role))}
        assert roles == {"sysadmin": "system_admin", "secadmin": "security_admin", "auditor": "security_auditor"}
        for name, password in passwords.items():
            assert bare_services.accounts.sign_in_password(s, username=name, password=password, source="t")


def test_issue_show_list(services: Services, tmp_path: Path):
    csr = tmp_path / "r.csr"
    csr.write_bytes(csr_pem(cn="cli.example.gov.cn"))
    out = tmp_path / "c.pem"
    issued = run(services, "issue", "--profile", "service-tls-server", "--csr", str(csr), "--out", str(out))
    assert issued.exit_code == 0, issued.output
    cert = x509.load_pem_x509_certificate(out.read_bytes())
    serial = format(cert.serial_number, "x")
    shown = run(services, "show", serial)
    assert shown.exit_code == 0 and "issued" in shown.output and "cli.example.gov.cn" in shown.output
    pem = run(services, "show", "--pem", serial)
    assert x509.load_pem_x509_certificate(pem.output.encode()) == cert
    listed = run(services, "list", "--state", "issued")
    assert serial in listed.output
    from_stdin = run(
        services, "issue", "-p", "service-tls-server", "--csr", "-", stdin=csr_pem(cn="stdin.example.gov.cn")
    )
    assert from_stdin.exit_code == 0 and "BEGIN CERTIFICATE" in from_stdin.output


def test_cli_errors_are_one_clear_line(services: Services, tmp_path: Path):
    csr = tmp_path / "r.csr"
    csr.write_bytes(csr_pem(names=[]))
    bad = run(services, "issue", "--profile", "service-tls-server", "--csr", str(csr))
    assert bad.exit_code == 2
    assert "csr.san" in bad.output and "Traceback" not in bad.output
    unknown = run(services, "show", "deadbeef")
    assert unknown.exit_code == 2 and "no certificate with serial" in unknown.output


def test_token_create_and_audit_verify(services: Services):
    created = run(services, "token", "create", "--name", "ops", "--days", "7")
    assert created.exit_code == 0, created.output
    assert "gpk_" in created.output
    again = run(services, "token", "create", "--name", "ops")
    assert again.exit_code == 2 and "exists" in again.output
    verified = run(services, "audit", "verify")
    assert verified.exit_code == 0 and "audit chain OK" in verified.output


def test_audit_checkpoint_and_verify_with_the_exported_file(services: Services, tmp_path: Path):
    from sqlalchemy import text

    from govpki.audit import AuditVerification

    made = run(services, "audit", "checkpoint")
    assert made.exit_code == 0, made.output
    assert "head hash" in made.output and "audit-signing-" in made.output
    again = run(services, "audit", "checkpoint")
    assert again.exit_code == 0 and "none signed" in again.output
    exported = services.config.checkpoint_file
    verified = run(services, "audit", "verify", "--checkpoints", str(exported))
    assert verified.exit_code == 0, verified.output
    assert "1 checkpoints verified" in verified.output and "1 exported checkpoints match" in verified.output
    with services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(AuditVerification)) == 1  # the CLI committed its run
    with services.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
        else:
            conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        conn.execute(text("UPDATE audit_log SET actor = 'account:mallory' WHERE seq = 5"))
    broken = run(services, "audit", "verify")
    assert broken.exit_code == 1
    assert "BROKEN at entry 5" in broken.output


def test_revoke_hold_release_from_the_cli(services: Services, tmp_path: Path):
    csr = tmp_path / "r.csr"
    csr.write_bytes(csr_pem(cn="revoke-cli.example.gov.cn"))
    out = tmp_path / "c.pem"
    assert run(services, "issue", "-p", "service-tls-server", "--csr", str(csr), "--out", str(out)).exit_code == 0
    serial = format(x509.load_pem_x509_certificate(out.read_bytes()).serial_number, "x")

    held = run(services, "hold", serial)
    assert held.exit_code == 0 and "certificateHold" in held.output, held.output
    released = run(services, "release", serial)
    assert released.exit_code == 0 and "good" in released.output
    not_held = run(services, "release", serial)
    assert not_held.exit_code == 2 and "not on hold" in not_held.output

    revoked = run(services, "revoke", serial, "--reason", "keycompromise", "--invalidity-date", "2026-01-01")
    assert revoked.exit_code == 0 and "keyCompromise" in revoked.output, revoked.output
    shown = run(services, "show", serial)
    assert "keyCompromise" in shown.output and "invalid since" in shown.output
    twice = run(services, "revoke", serial)
    assert twice.exit_code == 2 and "already revoked" in twice.output and "Traceback" not in twice.output
    bad_reason = run(services, "revoke", serial, "--reason", "because")
    assert bad_reason.exit_code == 2 and "reason" in bad_reason.output


def test_init_adds_the_missing_administrators_to_an_older_instance(bare_services: Services):
    """An instance from before the three 三员 accounts (only a security administrator): init
    adds a system administrator and an auditor, printing only their passwords."""
    with bare_services.sessions() as s:
        bare_services.accounts.create(
            s, SYSTEM, username="secadmin", display_name="安全管理员", role=Role.SECURITY_ADMIN, password="x" * 16
        )
        s.commit()
    result = run(bare_services, "init")
    assert result.exit_code == 0, result.output
    assert re.search(r"system_admin +user name: sysadmin +password: \S+", result.output)
    assert re.search(r"security_auditor +user name: auditor +password: \S+", result.output)
    assert "user name: secadmin" not in result.output
    with bare_services.sessions() as s:
        roles = {name: role for name, role in s.execute(select(Account.username, Account.role))}
    assert roles == {"secadmin": "security_admin", "sysadmin": "system_admin", "auditor": "security_auditor"}
    again = run(bare_services, "init")
    assert again.exit_code == 0 and "password" not in again.output
