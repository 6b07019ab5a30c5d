"""``govpki kmc``: issue an escrowed encryption certificate and recover its key with
officers signing in at the console (``--as``), each with their own password."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from sqlalchemy import select

from authz.models import Account
from authz.services import account_principal
from govpki.audit import AuditEntry
from govpki.principal import SYSTEM, Role
from web.cli import main
from web.container import Services

NEW_PASSWORD = "a new and long password 42"


def run(services: Services, *args: str, stdin: str | None = None) -> Result:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, input=stdin, catch_exceptions=False)


def otp(output: str) -> str:
    found = re.search(r"password.*: (\S+)$", output, re.MULTILINE)
    assert found, output
    return found.group(1)


def ready_account(services: Services, username: str, one_time: str) -> None:
    """The person signs in at the portal once and replaces the one-time password."""
    with services.sessions() as session:
        account = session.scalars(select(Account).where(Account.username == username)).one()
        services.accounts.change_password(session, account_principal(account), current=one_time, new=NEW_PASSWORD)
        session.commit()


def openssl_opens(path: Path, password: str) -> bool:
    done = subprocess.run(
        ["openssl", "pkcs12", "-info", "-noout", "-in", str(path), "-passin", f"pass:{password}"],
        capture_output=True,
        text=True,
        check=False,
    )
    return done.returncode == 0


def test_issue_and_recover_from_the_cli(services: Services, tmp_path: Path):
    assert run(services, "kmc", "init").output.startswith("created KMC storage key file:kmc-storage-")
    assert "already present" in run(services, "kmc", "init").output

    for name in ("officer1", "officer2", "officer3"):
        added = run(services, "kmc", "add-officer", name, "--display-name", f"Officer {name[-1]}")
        assert added.exit_code == 0, added.output
        ready_account(services, name, otp(added.output))
    with services.sessions() as session:
        services.accounts.create(
            session, SYSTEM, username="secadmin2", display_name="S", role=Role.SECURITY_ADMIN, password="first-pass-1"
        )
        session.commit()

    p12 = tmp_path / "zhang.p12"
    issued = run(
        services, "kmc", "issue-encryption", "--cn", "张三", "--ou", "财政局", "--email", "z@czj.example.gov.cn",
        "--out", str(p12),
    )  # fmt: skip
    assert issued.exit_code == 0, issued.output
    first_otp = otp(issued.output)
    assert p12.stat().st_mode & 0o777 == 0o600 and openssl_opens(p12, first_otp)
    escrow_id = re.search(r"escrowed key id (\d+)", issued.output).group(1)
    assert escrow_id in run(services, "kmc", "escrows").output
    again = run(services, "kmc", "issue-encryption", "--cn", "张三", "--out", str(p12))
    assert again.exit_code == 2 and "exists" in again.output

    # the requester must replace the one-time password first
    early = run(
        services, "kmc", "recovery", "request", "--as", "secadmin2", "--escrow", escrow_id, "--kind", "subscriber",
        "--reason", "card lost", stdin="first-pass-1\n",
    )  # fmt: skip
    assert early.exit_code == 2 and "one-time password" in early.output
    ready_account(services, "secadmin2", "first-pass-1")

    judicial = run(
        services, "kmc", "recovery", "request", "--as", "secadmin2", "--escrow", escrow_id, "--kind", "judicial",
        "--reason", "court", stdin=NEW_PASSWORD + "\n",
    )  # fmt: skip
    assert judicial.exit_code == 2 and "case_reference: a judicial recovery needs the case reference" in judicial.output

    made = run(
        services, "kmc", "recovery", "request", "--as", "secadmin2", "--escrow", escrow_id, "--kind", "subscriber",
        "--reason", "card lost", stdin=NEW_PASSWORD + "\n",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    rid = re.search(r"recovery request (\d+)", made.output).group(1)

    wrong = run(services, "kmc", "recovery", "approve", rid, "--as", "officer1", stdin="not my password\n")
    assert wrong.exit_code == 2 and "wrong user name or password" in wrong.output
    one = run(services, "kmc", "recovery", "approve", rid, "--as", "officer1", stdin=NEW_PASSWORD + "\n")
    assert one.exit_code == 0 and "1 of 2 approvals; pending" in one.output
    twice = run(services, "kmc", "recovery", "approve", rid, "--as", "officer1", stdin=NEW_PASSWORD + "\n")
    assert twice.exit_code == 2 and "already decided" in twice.output

    out = tmp_path / "recovered.p12"
    short = run(
        services, "kmc", "recovery", "release", rid, "--as", "secadmin2", "--out", str(out), stdin=NEW_PASSWORD + "\n"
    )
    assert short.exit_code == 2 and "1 of the 2 approvals" in short.output and not out.exists()

    two = run(services, "kmc", "recovery", "approve", rid, "--as", "officer3", stdin=NEW_PASSWORD + "\n")
    assert two.exit_code == 0 and "2 of 2 approvals; approved" in two.output
    released = run(
        services, "kmc", "recovery", "release", rid, "--as", "secadmin2", "--out", str(out), stdin=NEW_PASSWORD + "\n"
    )
    assert released.exit_code == 0, released.output
    second_otp = otp(released.output)
    assert second_otp != first_otp and openssl_opens(out, second_otp) and not openssl_opens(out, first_otp)
    original = pkcs12.load_pkcs12(p12.read_bytes(), first_otp.encode()).key
    recovered = pkcs12.load_pkcs12(out.read_bytes(), second_otp.encode()).key
    assert original is not None and recovered is not None
    fmt = (serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    assert original.private_bytes(*fmt) == recovered.private_bytes(*fmt)

    listed = run(services, "kmc", "recovery", "list", "--state", "released")
    assert f"{rid}\treleased\tsubscriber" in listed.output and "2/2 approvals" in listed.output

    with services.sessions() as session:
        actors = session.execute(
            select(AuditEntry.action, AuditEntry.actor).where(AuditEntry.action.like("kmc:recovery:%"))
        ).all()
        failed = session.scalars(select(AuditEntry.object_id).where(AuditEntry.action == "authz:session:sign_in_fail"))
        assert list(failed) == ["officer1"]
    assert [tuple(a) for a in actors] == [
        ("kmc:recovery:request", "account:secadmin2"),
        ("kmc:recovery:approve", "account:officer1"),
        ("kmc:recovery:approve", "account:officer3"),
        ("kmc:recovery:release", "account:secadmin2"),
    ]
