"""RA staff accounts and the hardened sign-in (service layer): prefectures, 三员分立 in the
database, TOTP enrolment and codes (window, replay), lock-out and its audit records.
Time is a movable clock, so TOTP steps and lock-out windows are exact."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import IntegrityError

from authz import totp
from authz.models import Account, SignInLock, TotpKey
from authz.services import LOCKED, WRONG_CREDENTIALS, WRONG_TOTP, account_principal
from govpki.audit import AuditEntry
from govpki.config import Config
from govpki.errors import ConfigError, ConflictError, ForbiddenError, InvalidError, UnauthenticatedError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import make_config
from web.container import Services, build_services

START = dt.datetime(2026, 3, 2, 9, 0, 7, tzinfo=dt.UTC)
PASSWORD = "one-time-password-Xq7"
SECADMIN = Principal(PrincipalKind.ACCOUNT, "900", "secadmin", frozenset({Role.SECURITY_ADMIN}))
SYSADMIN = Principal(PrincipalKind.ACCOUNT, "902", "sysadmin", frozenset({Role.SYSTEM_ADMIN}))
RA_ROLES = (Role.RA_CLERK, Role.RA_OFFICER)


class MovableClock:
    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at += dt.timedelta(**kw)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(START)


@pytest.fixture
def svc(config: Config, clock: MovableClock) -> Iterator[Services]:
    services = build_services(config, clock=clock)
    with services.sessions() as s:
        services.regions.seed(s, SYSTEM, services.region)
        s.commit()
    try:
        yield services
    finally:
        services.dispose()


def _create(svc: Services, username: str, role: Role = Role.RA_CLERK, prefecture: str | None = "650100") -> Account:
    """As 三员分立 has it: a security administrator creates RA staff, a system administrator the others."""
    admin = SECADMIN if role in RA_ROLES else SYSADMIN
    with svc.sessions() as s:
        account = svc.accounts.create(
            s, admin, username=username, display_name=f"Name {username}", role=role, password=PASSWORD,
            prefecture=prefecture,
        )  # fmt: skip
        s.commit()
        s.expunge(account)
    return account


def _audit(svc: Services, action: str, object_id: str) -> list[AuditEntry]:
    with svc.sessions() as s:
        return list(
            s.scalars(
                select(AuditEntry)
                .where(AuditEntry.action == action, AuditEntry.object_id == object_id)
                .order_by(AuditEntry.seq)
            )
        )


def _enrol(svc: Services, clock: MovableClock, account: Account) -> str:
    """Enrol TOTP as the account would at its first sign-in; returns the secret."""
    principal = account_principal(account)
    with svc.sessions() as s:
        secret, uri = svc.accounts.totp_enrolment(s, principal)
        assert uri.startswith("otpauth://totp/") and f"secret={secret}" in uri
        svc.accounts.confirm_totp(s, principal, code=totp.code_at(secret, totp.time_step(clock.now())))
        s.commit()
    return secret


def _password(svc: Services, username: str, password: str = PASSWORD) -> Account:
    with svc.sessions() as s:
        try:
            return svc.accounts.sign_in_password(s, username=username, password=password, source="10.0.0.9")
        finally:
            s.commit()  # failures and their audit entries are committed, as the portal does


def _code(svc: Services, account_id: int, code: str) -> Account:
    with svc.sessions() as s:
        try:
            return svc.accounts.sign_in_totp(s, account_id, code=code, source="10.0.0.9")
        finally:
            s.commit()


# ----- creating RA staff ------------------------------------------------------------------


def test_a_security_admin_creates_ra_staff_in_one_prefecture_and_it_is_audited(svc: Services) -> None:
    clerk = _create(svc, "clerk.urumqi", Role.RA_CLERK, "650100")
    officer = _create(svc, "officer.karamay", Role.RA_OFFICER, "650200")
    assert (clerk.role, clerk.prefecture_code, clerk.must_change_password) == ("ra_clerk", "650100", True)
    assert account_principal(officer).prefecture == "650200"
    assert account_principal(officer).roles == frozenset({Role.RA_OFFICER})
    [entry] = _audit(svc, "authz:account:create", "clerk.urumqi")
    assert entry.actor == "account:secadmin"
    assert json.loads(entry.details) == {
        "role": "ra_clerk",
        "prefecture": "650100",
        "display_name": "Name clerk.urumqi",
    }


@pytest.mark.parametrize(
    ("role", "prefecture", "reason"),
    [
        (Role.RA_CLERK, None, "is required for RA staff (ra_clerk, ra_officer)"),
        (Role.RA_OFFICER, "", "is required for RA staff (ra_clerk, ra_officer)"),
        (Role.RA_CLERK, "659999", "there is no prefecture with area code '659999'"),
        (Role.CA_OPERATOR, "650100", "only RA staff (ra_clerk, ra_officer) belong to a prefecture"),
        (Role.SECURITY_AUDITOR, "650100", "only RA staff (ra_clerk, ra_officer) belong to a prefecture"),
    ],
)
def test_the_prefecture_is_checked_and_nothing_is_written(
    svc: Services, role: Role, prefecture: str | None, reason: str
) -> None:
    with pytest.raises(InvalidError) as caught:
        _create(svc, "someone", role, prefecture)
    assert (caught.value.field, caught.value.reason) == ("prefecture", reason)
    with svc.sessions() as s:
        assert s.scalar(select(Account).where(Account.username == "someone")) is None
    assert _audit(svc, "authz:account:create", "someone") == []


@pytest.mark.parametrize("role", [Role.CA_OPERATOR, Role.SECURITY_AUDITOR, Role.RA_OFFICER, Role.SYSTEM_ADMIN])
def test_only_a_security_admin_creates_staff(svc: Services, role: Role) -> None:
    other = Principal(PrincipalKind.ACCOUNT, "901", "someone-else", frozenset({role}), prefecture=None)
    with svc.sessions() as s, pytest.raises(ForbiddenError) as caught:
        svc.accounts.create(
            s, other, username="newclerk", display_name="N", role=Role.RA_CLERK, password=PASSWORD, prefecture="650100"
        )
    assert caught.value.code == "authz.not_account_admin"
    assert caught.value.reason == "only a security administrator may create RA staff accounts"
    assert _audit(svc, "authz:account:create", "newclerk") == []


# ----- 三员分立: who administers which accounts ----------------------------------------------


def test_a_system_admin_creates_an_auditor_and_it_is_audited(svc: Services) -> None:
    auditor = _create(svc, "auditor.two", Role.SECURITY_AUDITOR, None)
    assert (auditor.role, auditor.prefecture_code, auditor.must_change_password) == ("security_auditor", None, True)
    [entry] = _audit(svc, "authz:account:create", "auditor.two")
    assert entry.actor == "account:sysadmin"
    assert json.loads(entry.details) == {"role": "security_auditor", "display_name": "Name auditor.two"}


@pytest.mark.parametrize(
    "role",
    [Role.SECURITY_AUDITOR, Role.SYSTEM_ADMIN, Role.SECURITY_ADMIN, Role.CA_OPERATOR, Role.KEY_RECOVERY_OFFICER],
)
def test_a_security_admin_creates_no_account_but_ra_staff(svc: Services, role: Role) -> None:
    with svc.sessions() as s:
        with pytest.raises(ForbiddenError) as caught:
            svc.accounts.create(s, SECADMIN, username="not.made", display_name="N", role=role, password=PASSWORD)
        s.commit()
    assert caught.value.code == "authz.not_account_admin" and caught.value.field == "username"
    assert caught.value.reason == f"only a system administrator may create {role.value} accounts"
    with svc.sessions() as s:
        assert s.scalar(select(Account).where(Account.username == "not.made")) is None
    assert _audit(svc, "authz:account:create", "not.made") == []


def test_a_system_admin_creates_no_ra_staff(svc: Services) -> None:
    with svc.sessions() as s, pytest.raises(ForbiddenError) as caught:
        svc.accounts.create(
            s,
            SYSADMIN,
            username="clerk.x",
            display_name="N",
            role=Role.RA_CLERK,
            password=PASSWORD,
            prefecture="650100",
        )
    assert caught.value.code == "authz.not_account_admin"


def _lock(svc: Services, username: str) -> None:
    for _ in range(5):
        with pytest.raises(UnauthenticatedError):
            _password(svc, username, "wrong-password")
    with svc.sessions() as s:
        assert svc.accounts.locked_until(s, username) is not None


def test_a_system_admin_unlocks_a_security_admin_and_a_security_admin_not_the_auditor(svc: Services) -> None:
    _create(svc, "secadmin.locked", Role.SECURITY_ADMIN, None)
    _create(svc, "auditor.locked", Role.SECURITY_AUDITOR, None)
    _lock(svc, "secadmin.locked")
    _lock(svc, "auditor.locked")
    with svc.sessions() as s:
        with pytest.raises(ForbiddenError) as caught:
            svc.accounts.unlock(s, SECADMIN, "auditor.locked")
        assert caught.value.code == "authz.not_account_admin"
        assert caught.value.reason == "only a system administrator may unlock security_auditor accounts"
        with pytest.raises(ForbiddenError):
            svc.accounts.reset_totp(s, SECADMIN, "auditor.locked")
        assert svc.accounts.unlock(s, SYSADMIN, "secadmin.locked") == 1
        s.commit()
    with svc.sessions() as s:
        assert svc.accounts.locked_until(s, "secadmin.locked") is None
        assert svc.accounts.locked_until(s, "auditor.locked") is not None
        assert set(svc.accounts.locks(s)) == {"auditor.locked"}
    [entry] = _audit(svc, "authz:account:unlock", "secadmin.locked")
    assert entry.actor == "account:sysadmin"
    assert _audit(svc, "authz:account:unlock", "auditor.locked") == []
    assert _audit(svc, "authz:account:totp_reset", "auditor.locked") == []


def test_nobody_unlocks_resets_or_changes_their_own_account(svc: Services, clock: MovableClock) -> None:
    admin = _create(svc, "sysadmin.self", Role.SYSTEM_ADMIN, None)
    _enrol(svc, clock, admin)
    operator = _create(svc, "operator.other", Role.CA_OPERATOR, None)
    _lock(svc, "sysadmin.self")
    me = account_principal(admin)
    with svc.sessions() as s:
        for act in (
            lambda: svc.accounts.reset_totp(s, me, "sysadmin.self"),
            lambda: svc.accounts.unlock(s, me, "sysadmin.self"),
            lambda: svc.accounts.change_role(s, me, username="sysadmin.self", role=Role.CA_OPERATOR),
        ):
            with pytest.raises(ForbiddenError) as caught:
                act()
            assert caught.value.code == "authz.own_account" and caught.value.field == "username"
        # another account of the same kind is theirs to administer
        svc.accounts.reset_totp(s, me, operator.username)
        s.commit()
    with svc.sessions() as s:
        stored = s.get(Account, admin.id)
        assert stored is not None and stored.totp_enrolled and stored.role == "system_admin"
        assert svc.accounts.locked_until(s, "sysadmin.self") is not None
    assert _audit(svc, "authz:account:totp_reset", "sysadmin.self") == []
    assert len(_audit(svc, "authz:account:totp_reset", "operator.other")) == 1


def test_the_role_hop_through_an_operator_is_refused(svc: Services) -> None:
    """secadmin → ca_operator → security_auditor would let one person audit their own
    administration: an account of the three never changes role."""
    hopper = _create(svc, "hopper", Role.SECURITY_ADMIN, None)
    for principal in (SYSADMIN, SYSTEM):
        with svc.sessions() as s:
            with pytest.raises(ConflictError) as caught:
                svc.accounts.change_role(s, principal, username="hopper", role=Role.CA_OPERATOR)
            s.commit()
        assert (caught.value.code, caught.value.field) == ("authz.separated_roles", "role")
        assert "create another account" in caught.value.reason
    with svc.sessions() as s:
        stored = s.get(Account, hopper.id)
        assert stored is not None and stored.role == "security_admin"
    assert _audit(svc, "authz:account:role_change", "hopper") == []


def test_an_account_that_was_one_of_the_three_never_becomes_one_again(svc: Services) -> None:
    """A role change made before the rule (security admin → operator) is in the audit
    trail: the second step of the hop is refused all the same."""
    from govpki import audit

    _create(svc, "old.hopper", Role.CA_OPERATOR, None)
    with svc.sessions() as s:
        audit.record(
            s,
            SYSTEM,
            "authz:account:role_change",
            object_type="account",
            object_id="old.hopper",
            details={"role": {"before": "security_admin", "after": "ca_operator"}},
        )
        s.commit()
    with svc.sessions() as s:
        with pytest.raises(ConflictError) as caught:
            svc.accounts.change_role(s, SYSTEM, username="old.hopper", role=Role.SECURITY_AUDITOR)
        s.commit()
    assert caught.value.code == "authz.separated_roles"
    assert caught.value.reason.startswith("old.hopper was security_admin; 三员分立")
    assert len(_audit(svc, "authz:account:role_change", "old.hopper")) == 1  # only the old one
    # an operator that never was one of the three may become one (by its administrator)
    _create(svc, "new.auditor", Role.CA_OPERATOR, None)
    with svc.sessions() as s:
        with pytest.raises(ForbiddenError):  # not by a security administrator
            svc.accounts.change_role(s, SECADMIN, username="new.auditor", role=Role.SECURITY_AUDITOR)
        svc.accounts.change_role(s, SYSADMIN, username="new.auditor", role=Role.SECURITY_AUDITOR)
        s.commit()
    [entry] = _audit(svc, "authz:account:role_change", "new.auditor")
    assert entry.actor == "account:sysadmin"


def test_a_security_admin_moves_ra_staff_between_roles_and_prefectures_only(svc: Services) -> None:
    _create(svc, "clerk.moves", Role.RA_CLERK, "650100")
    with svc.sessions() as s:
        svc.accounts.change_role(s, SECADMIN, username="clerk.moves", role=Role.RA_OFFICER, prefecture="650200")
        for target in (Role.CA_OPERATOR, Role.SECURITY_AUDITOR):
            with pytest.raises(ForbiddenError) as caught:
                svc.accounts.change_role(s, SECADMIN, username="clerk.moves", role=target)
            assert caught.value.reason == f"only a system administrator may change the role of {target.value} accounts"
        with pytest.raises(ForbiddenError):  # RA staff are not the system administrator's
            svc.accounts.change_role(s, SYSADMIN, username="clerk.moves", role=Role.RA_CLERK, prefecture="650100")
        s.commit()
    [entry] = _audit(svc, "authz:account:role_change", "clerk.moves")
    assert entry.actor == "account:secadmin"
    assert json.loads(entry.details)["prefecture"] == {"before": "650100", "after": "650200"}


def test_the_database_keeps_one_role_and_the_prefecture_rule(svc: Services) -> None:
    clerk = _create(svc, "clerk.db")
    for statement in (
        "UPDATE accounts SET role = 'ra_clerk,security_admin' WHERE id = :id",  # 三员分立: one role only
        "UPDATE accounts SET role = 'security_admin' WHERE id = :id",  # an admin with a prefecture
        "UPDATE accounts SET prefecture_code = NULL WHERE id = :id",  # RA staff without one
        "UPDATE accounts SET prefecture_code = '659999' WHERE id = :id",  # no such prefecture
        "UPDATE accounts SET totp_enrolled_at = CURRENT_TIMESTAMP WHERE id = :id",  # enrolled without a secret
    ):
        with svc.sessions() as s, pytest.raises(IntegrityError):
            s.execute(text(statement), {"id": clerk.id})
            s.flush()


# ----- TOTP -------------------------------------------------------------------------------


def test_enrolment_stores_the_secret_only_sealed_and_is_audited(svc: Services, clock: MovableClock) -> None:
    clerk = _create(svc, "clerk.totp")
    principal = account_principal(clerk)
    with svc.sessions() as s:
        secret, _uri = svc.accounts.totp_enrolment(s, principal)
        again, _ = svc.accounts.totp_enrolment(s, principal)
        assert again == secret  # the same until confirmed (the page and its QR code agree)
        s.commit()
    with svc.sessions() as s:
        stored = s.get(Account, clerk.id)
        assert stored is not None
        assert stored.totp_secret is not None and secret.encode() not in stored.totp_secret
        assert stored.totp_enrolled_at is None
        key = s.get(TotpKey, stored.totp_key_id)
        assert key.key_store == "online" and svc.keystores["online"].has_secret(key.key_handle)  # type: ignore[attr-defined]
        # bound to the account: the sealed secret does not open for another row
        stored.id = stored.id + 1000
        with pytest.raises(Exception, match="authenticate"):
            svc.accounts._require_sealer().open(s, stored)
        s.rollback()
    wrong = totp.code_at(secret, totp.time_step(clock.now()) + 5)
    with svc.sessions() as s:
        with pytest.raises(InvalidError) as caught:
            svc.accounts.confirm_totp(s, principal, code=wrong)
        assert caught.value.field == "code"
        s.commit()
    with svc.sessions() as s:
        svc.accounts.confirm_totp(s, principal, code=totp.code_at(secret, totp.time_step(clock.now())))
        s.commit()
    outcomes = [e.outcome for e in _audit(svc, "authz:account:totp_enrol", "clerk.totp")]
    assert outcomes == ["failure", "success"]
    with svc.sessions() as s, pytest.raises(ConflictError):
        svc.accounts.totp_enrolment(s, principal)


def test_codes_within_one_step_are_accepted_once_each(svc: Services, clock: MovableClock) -> None:
    officer = _create(svc, "officer.codes", Role.RA_OFFICER, "650400")
    secret = _enrol(svc, clock, officer)  # uses the code of the current step
    step = totp.time_step(clock.now())

    assert _password(svc, "officer.codes").totp_enrolled  # first factor only: the caller must ask for a code
    assert _audit(svc, "authz:session:sign_in", "officer.codes") == []
    with pytest.raises(UnauthenticatedError) as caught:  # replay of the enrolment code (same step)
        _code(svc, officer.id, totp.code_at(secret, step))
    assert caught.value.code == WRONG_TOTP
    with pytest.raises(UnauthenticatedError):  # two steps ahead: outside the window
        _code(svc, officer.id, totp.code_at(secret, step + 2))
    assert _code(svc, officer.id, totp.code_at(secret, step + 1)).username == "officer.codes"  # next step: drift
    with pytest.raises(UnauthenticatedError):  # the step just used
        _code(svc, officer.id, totp.code_at(secret, step + 1))
    clock.advance(seconds=90)  # now step + 3: step + 2 is the previous step, still in the window
    assert _code(svc, officer.id, f"{totp.code_at(secret, step + 2)[:3]} {totp.code_at(secret, step + 2)[3:]}")
    with pytest.raises(UnauthenticatedError):  # an earlier step than the one used is refused too
        _code(svc, officer.id, totp.code_at(secret, step + 1))
    with pytest.raises(InvalidError) as bad:
        _code(svc, officer.id, "12ab56")
    assert bad.value.field == "code"

    [first, second] = _audit(svc, "authz:session:sign_in", "officer.codes")
    assert json.loads(first.details)["factors"] == ["password", "totp"]
    assert first.actor == second.actor == "account:officer.codes"
    failures = _audit(svc, "authz:session:sign_in_fail", "officer.codes")
    assert [json.loads(e.details)["factor"] for e in failures] == ["totp"] * 4


def test_a_reset_makes_the_account_enrol_again(svc: Services, clock: MovableClock) -> None:
    clerk = _create(svc, "clerk.lost-phone")
    _enrol(svc, clock, clerk)
    with svc.sessions() as s:
        with pytest.raises(ForbiddenError):
            svc.accounts.reset_totp(s, account_principal(clerk), "clerk.lost-phone")
        svc.accounts.reset_totp(s, SECADMIN, "clerk.lost-phone")
        s.commit()
    assert not _password(svc, "clerk.lost-phone").totp_enrolled
    assert len(_audit(svc, "authz:account:totp_reset", "clerk.lost-phone")) == 1


# ----- lock-out ---------------------------------------------------------------------------


def test_five_failures_in_the_window_lock_and_a_lock_does_not_check_the_password(
    svc: Services, clock: MovableClock
) -> None:
    _create(svc, "clerk.locked")
    for _ in range(4):
        with pytest.raises(UnauthenticatedError) as caught:
            _password(svc, "clerk.locked", "wrong-password")
        assert caught.value.code == WRONG_CREDENTIALS
        clock.advance(minutes=3)
    with pytest.raises(UnauthenticatedError) as caught:  # the 5th, 12 minutes after the first
        _password(svc, "clerk.locked", "wrong-password")
    assert caught.value.code == LOCKED
    assert "locked for 15 minutes" in caught.value.reason
    [lock] = _audit(svc, "authz:account:lock", "clerk.locked")
    assert json.loads(lock.details)["failures"] == 5
    assert lock.actor == "anonymous:10.0.0.9"

    # locked: even the right password is refused, and it is not looked at
    clock.advance(minutes=14)
    with pytest.raises(UnauthenticatedError) as caught:
        _password(svc, "clerk.locked")
    assert caught.value.code == LOCKED
    last = _audit(svc, "authz:session:sign_in_fail", "clerk.locked")[-1]
    assert json.loads(last.details)["reason"] == "locked"

    clock.advance(minutes=1, seconds=1)  # the lock (15 minutes) is over
    assert _password(svc, "clerk.locked").username == "clerk.locked"
    assert len(_audit(svc, "authz:session:sign_in", "clerk.locked")) == 1


def test_failures_spread_beyond_the_window_do_not_lock(svc: Services, clock: MovableClock) -> None:
    _create(svc, "clerk.slow")
    for _ in range(8):
        with pytest.raises(UnauthenticatedError) as caught:
            _password(svc, "clerk.slow", "wrong-password")
        assert caught.value.code == WRONG_CREDENTIALS
        clock.advance(minutes=4)  # never five within 15 minutes
    assert _audit(svc, "authz:account:lock", "clerk.slow") == []
    assert _password(svc, "clerk.slow").username == "clerk.slow"


def test_unknown_user_names_lock_the_same_way(svc: Services) -> None:
    errors = []
    for _ in range(6):
        with pytest.raises(UnauthenticatedError) as caught:
            _password(svc, "nobody-here", "whatever-it-is")
        errors.append((caught.value.code, caught.value.reason, caught.value.field))
    assert [e[0] for e in errors] == [WRONG_CREDENTIALS] * 4 + [LOCKED] * 2
    _create(svc, "clerk.known")
    known = []
    for _ in range(6):
        with pytest.raises(UnauthenticatedError) as caught:
            _password(svc, "clerk.known", "whatever-it-is")
        known.append((caught.value.code, caught.value.reason, caught.value.field))
    assert known == errors  # nothing tells a locked known name from an unknown one


def test_totp_failures_count_towards_the_lock(svc: Services, clock: MovableClock) -> None:
    officer = _create(svc, "officer.lock", Role.RA_OFFICER, "650200")
    secret = _enrol(svc, clock, officer)
    step = totp.time_step(clock.now())
    for _ in range(2):
        with pytest.raises(UnauthenticatedError):
            _password(svc, "officer.lock", "wrong-password")
    _password(svc, "officer.lock")
    for expected in (WRONG_TOTP, WRONG_TOTP, LOCKED):
        with pytest.raises(UnauthenticatedError) as caught:
            _code(svc, officer.id, "000000" if totp.code_at(secret, step + 1) != "000000" else "111111")
        assert caught.value.code == expected
    with pytest.raises(UnauthenticatedError) as caught:  # the right code while locked
        _code(svc, officer.id, totp.code_at(secret, step + 1))
    assert caught.value.code == LOCKED
    assert len(_audit(svc, "authz:account:lock", "officer.lock")) == 1


def test_a_security_admin_can_end_a_lock(svc: Services) -> None:
    _create(svc, "clerk.unlock")
    for _ in range(5):
        with pytest.raises(UnauthenticatedError):
            _password(svc, "clerk.unlock", "wrong-password")
    with svc.sessions() as s:
        assert svc.accounts.locked_until(s, "clerk.unlock") is not None
        assert svc.accounts.unlock(s, SECADMIN, "clerk.unlock") == 1
        with pytest.raises(ConflictError):
            svc.accounts.unlock(s, SECADMIN, "clerk.unlock")
        s.commit()
        assert s.scalars(select(SignInLock)).all()
    assert _password(svc, "clerk.unlock").username == "clerk.unlock"
    assert len(_audit(svc, "authz:account:unlock", "clerk.unlock")) == 1


def test_the_lock_out_settings_come_from_the_configuration(tmp_path, database_url) -> None:
    config = make_config(
        tmp_path / "inst",
        database_url,
        GOVPKI_SIGNIN_MAX_FAILURES="3",
        GOVPKI_SIGNIN_FAILURE_WINDOW_MINUTES="30",
        GOVPKI_SIGNIN_LOCKOUT_MINUTES="60",
    )
    services = build_services(config)
    try:
        settings = services.accounts.settings
        assert settings.max_failures == 3
        assert settings.failure_window == dt.timedelta(minutes=30)
        assert settings.lockout == dt.timedelta(minutes=60)
    finally:
        services.dispose()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("GOVPKI_SIGNIN_MAX_FAILURES", "0", "GOVPKI_SIGNIN_MAX_FAILURES: must be at least 1, got 0"),
        ("GOVPKI_SIGNIN_LOCKOUT_MINUTES", "soon", "GOVPKI_SIGNIN_LOCKOUT_MINUTES: 'soon' is not a whole number"),
        ("GOVPKI_COOKIE_SECURE", "yes", "GOVPKI_COOKIE_SECURE: 'yes' is not auto, 0 or 1"),
    ],
)
def test_bad_sign_in_settings_stop_start_up(tmp_path, name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(tmp_path / "inst", "sqlite://", **{name: value})
    assert str(caught.value) == message
