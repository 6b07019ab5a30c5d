"""``govpki staff``: create RA staff (one-time password printed once), list, unlock, reset TOTP."""

from __future__ import annotations

import json
import re

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import select

from authz.models import Account
from authz.services import account_principal
from govpki.audit import AuditEntry
from govpki.errors import UnauthenticatedError
from govpki.principal import SYSTEM
from tests.helpers import totp_code
from web.cli import main
from web.container import Services


def run(services: Services, *args: str) -> Result:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def _account(services: Services, username: str) -> Account | None:
    with services.sessions() as db:
        found = db.scalar(select(Account).where(Account.username == username))
        if found is not None:
            db.expunge(found)
        return found


def test_staff_create_prints_the_one_time_password_once_and_is_audited(services: Services) -> None:
    made = run(services, "staff", "create", "clerk.hami", "--role", "ra_clerk", "--prefecture", "650500",
               "--display-name", "哈密受理员")  # fmt: skip
    assert made.exit_code == 0, made.output
    assert "account clerk.hami (ra_clerk in prefecture 650500) created" in made.output
    password = re.search(r"then set up an authenticator app\): (\S+)", made.output)
    assert password
    account = _account(services, "clerk.hami")
    assert account is not None and account.prefecture_code == "650500" and account.must_change_password
    with services.sessions() as db:
        signed = services.accounts.sign_in_password(db, username="clerk.hami", password=password[1], source="t")
        assert account_principal(signed).prefecture == "650500"
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "authz:account:create")).all()[-1]
    assert json.loads(entry.details)["prefecture"] == "650500"
    listed = run(services, "staff", "list")
    assert re.search(r"clerk\.hami\tra_clerk\t650500\tno totp yet\tone-time password\t哈密受理员", listed.output)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--role", "ra_officer"], "prefecture: is required for RA staff (ra_clerk, ra_officer)"),
        (["--role", "ra_clerk", "--prefecture", "659999"], "prefecture: there is no prefecture with area code"),
        (["--role", "ca_operator", "--prefecture", "650100"], "prefecture: only RA staff (ra_clerk, ra_officer)"),
    ],
)
def test_staff_create_refuses_bad_input_and_creates_nothing(services: Services, args: list[str], message: str) -> None:
    result = run(services, "staff", "create", "clerk.bad", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert _account(services, "clerk.bad") is None


def test_staff_unlock_and_reset_totp(services: Services) -> None:
    made = run(services, "staff", "create", "officer.turpan", "--role", "ra_officer", "--prefecture", "650400")
    password = made.output.rsplit(": ", 1)[1].strip()
    account = _account(services, "officer.turpan")
    assert account is not None
    with services.sessions() as db:
        secret, _uri = services.accounts.totp_enrolment(db, account_principal(account))
        services.accounts.confirm_totp(db, account_principal(account), code=totp_code(secret))
        db.commit()
    for _ in range(5):
        with services.sessions() as db:
            with pytest.raises(UnauthenticatedError):
                services.accounts.sign_in_password(db, username="officer.turpan", password="wrong-one-1", source="t")
            db.commit()
    assert "locked until" in run(services, "staff", "list").output
    unlocked = run(services, "staff", "unlock", "officer.turpan")
    assert unlocked.exit_code == 0 and "may sign in again" in unlocked.output
    again = run(services, "staff", "unlock", "officer.turpan")
    assert again.exit_code == 2 and "is not locked" in again.output
    with services.sessions() as db:
        assert services.accounts.sign_in_password(db, username="officer.turpan", password=password, source="t")

    reset = run(services, "staff", "reset-totp", "officer.turpan")
    assert reset.exit_code == 0, reset.output
    refreshed = _account(services, "officer.turpan")
    assert refreshed is not None and not refreshed.totp_enrolled and refreshed.totp_secret is None
    assert run(services, "staff", "reset-totp", "nobody.here").exit_code == 2


def test_the_cli_sign_in_asks_an_enrolled_account_for_its_code(services: Services) -> None:
    from web.cli_kmc import _sign_in

    made = run(services, "staff", "create", "ops.one", "--role", "key_recovery_officer")
    one_time = made.output.rsplit(": ", 1)[1].strip()
    account = _account(services, "ops.one")
    assert account is not None
    principal = account_principal(account)
    with services.sessions() as db:
        services.accounts.change_password(db, principal, current=one_time, new="Muztagh-Ata-7546")
        secret, _uri = services.accounts.totp_enrolment(db, principal)
        services.accounts.confirm_totp(db, principal, code=totp_code(secret))
        db.commit()
    runner = CliRunner()
    with runner.isolation(input=f"Muztagh-Ata-7546\n{totp_code(secret, 1)}\n") as (_out, err, _):
        assert _sign_in(services, "ops.one") == principal
    assert "TOTP code for ops.one" in err.getvalue().decode()
    with runner.isolation(input=f"Muztagh-Ata-7546\n{totp_code(secret, 1)}\n"), pytest.raises(SystemExit):
        _sign_in(services, "ops.one")  # the same code again: refused


def test_set_role_keeps_the_three_administrators_apart_and_is_audited(services: Services) -> None:
    from govpki.errors import ConflictError, ForbiddenError
    from govpki.principal import Role

    for name, role in (
        ("sec.admin2", "security_admin"),
        ("auditor2", "security_auditor"),
        ("sys.admin2", "system_admin"),
    ):
        assert run(services, "staff", "create", name, "--role", role).exit_code == 0  # the CLI (SYSTEM) makes any
    # 三员分立: none of the three changes role at all, by the CLI or the service; nothing changes
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    refused = CliRunner().invoke(main, ["staff", "set-role", "sec.admin2", "--role", "security_auditor"], env=env)
    assert refused.exit_code != 0 and "role: sec.admin2 is security_admin; 三员分立" in refused.output
    hop = CliRunner().invoke(main, ["staff", "set-role", "sec.admin2", "--role", "ca_operator"], env=env)
    assert hop.exit_code != 0 and "its role never changes (create another account)" in hop.output
    with services.sessions() as db:
        for name, role in (
            ("auditor2", Role.SYSTEM_ADMIN),
            ("sys.admin2", Role.SECURITY_ADMIN),
            ("auditor2", Role.CA_OPERATOR),
            ("sys.admin2", Role.KEY_RECOVERY_OFFICER),
        ):
            with pytest.raises(ConflictError) as caught:
                services.accounts.change_role(db, SYSTEM, username=name, role=role)
            assert caught.value.code == "authz.separated_roles" and caught.value.field == "role"
        admin = account_principal(db.scalars(select(Account).where(Account.username == "sys.admin2")).one())
        with pytest.raises(ForbiddenError) as own:  # nobody changes their own role
            services.accounts.change_role(db, admin, username="sys.admin2", role=Role.CA_OPERATOR)
        assert own.value.code == "authz.own_account"
        auditor = account_principal(db.scalars(select(Account).where(Account.username == "auditor2")).one())
        with pytest.raises(ForbiddenError):  # only the account's administrator changes roles
            services.accounts.change_role(db, auditor, username="sec.admin2", role=Role.CA_OPERATOR)
    assert {getattr(_account(services, n), "role", None) for n in ("sec.admin2", "auditor2", "sys.admin2")} == {
        "security_admin",
        "security_auditor",
        "system_admin",
    }
    with services.sessions() as db:
        assert db.scalars(select(AuditEntry).where(AuditEntry.action == "authz:account:role_change")).all() == []
    # other changes are allowed: an operator becomes an RA officer of one prefecture, and back
    assert run(services, "staff", "create", "op2", "--role", "ca_operator").exit_code == 0
    moved = run(services, "staff", "set-role", "op2", "--role", "ra_officer", "--prefecture", "650200")
    assert moved.exit_code == 0 and "account op2 is now ra_officer in prefecture 650200" in moved.output
    assert run(services, "staff", "set-role", "op2", "--role", "ra_clerk").exit_code != 0  # prefecture needed
    account = _account(services, "op2")
    assert account is not None and account.role == "ra_officer" and account.prefecture_code == "650200"
    with services.sessions() as db:
        entry = db.scalars(select(AuditEntry).where(AuditEntry.action == "authz:account:role_change")).all()[-1]
    assert json.loads(entry.details) == {
        "role": {"before": "ca_operator", "after": "ra_officer"},
        "prefecture": {"before": "", "after": "650200"},
    }
    assert entry.actor.startswith("system:")  # the operator at the machine
