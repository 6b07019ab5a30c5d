"""Lock-out counting is serialized: N wrong passwords (or TOTP codes) of one user name sent
in parallel, each in its own transaction as the portal's requests are, get at most
``max_failures`` of them looked at before the lock applies — the rest are refused as
locked without being evaluated. Real threads, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select

from authz import totp
from authz.models import SignInLock
from authz.services import LOCKED, WRONG_CREDENTIALS, WRONG_TOTP, account_principal
from govpki.audit import AuditEntry
from govpki.config import Config
from govpki.errors import UnauthenticatedError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from web.container import Services, build_services

PASSWORD = "one-time-password-Xq7"
SECADMIN = Principal(PrincipalKind.ACCOUNT, "900", "secadmin", frozenset({Role.SECURITY_ADMIN}))
PARALLEL = 8


@pytest.fixture
def svc(config: Config) -> Iterator[Services]:
    services = build_services(config)
    with services.sessions() as s:
        services.regions.seed(s, SYSTEM, services.region)
        s.commit()
    try:
        yield services
    finally:
        services.dispose()


def _create(svc: Services, username: str) -> int:
    with svc.sessions() as s:
        account = svc.accounts.create(
            s, SECADMIN, username=username, display_name=f"Name {username}", role=Role.RA_CLERK,
            password=PASSWORD, prefecture="650100",
        )  # fmt: skip
        s.commit()
        return account.id


def _in_parallel(svc: Services, attempt: Callable[[int], object]) -> list[str]:
    """PARALLEL threads start ``attempt`` at once, each in its own session committed after
    (as the portal commits a refused sign-in); the refusal codes, one per thread."""
    start = threading.Barrier(PARALLEL)
    codes: list[str] = []
    problems: list[BaseException] = []
    guard = threading.Lock()

    def run(number: int) -> None:
        start.wait()
        try:
            attempt(number)
        except UnauthenticatedError as exc:
            with guard:
                codes.append(exc.code)
        except BaseException as exc:
            with guard:
                problems.append(exc)

    threads = [threading.Thread(target=run, args=(n,)) for n in range(PARALLEL)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not problems, problems
    assert len(codes) == PARALLEL  # every attempt refused
    return codes


def _evaluated_and_refused(svc: Services, username: str, factor: str) -> tuple[int, int]:
    """Failures of ``factor`` whose password or code was looked at, and refusals as locked."""
    with svc.sessions() as s:
        entries = s.scalars(
            select(AuditEntry).where(
                AuditEntry.action == "authz:session:sign_in_fail", AuditEntry.object_id == username
            )
        ).all()
    details = [json.loads(e.details or "{}") for e in entries]
    evaluated = sum(1 for d in details if d.get("factor") == factor and "reason" not in d)
    refused = sum(1 for d in details if d.get("reason") == "locked")
    return evaluated, refused


def _locks(svc: Services, username: str) -> list[SignInLock]:
    with svc.sessions() as s:
        return list(s.scalars(select(SignInLock).where(SignInLock.username == username)))


def test_parallel_wrong_passwords_evaluate_at_most_the_limit(svc: Services) -> None:
    limit = svc.accounts.settings.max_failures
    assert limit < PARALLEL
    _create(svc, "clerk.race")

    def wrong_password(number: int) -> object:
        with svc.sessions() as s:
            try:
                return svc.accounts.sign_in_password(
                    s, username="clerk.race", password=f"wrong-{number}", source=f"10.0.0.{number}"
                )
            finally:
                s.commit()

    codes = _in_parallel(svc, wrong_password)
    assert sorted(codes) == sorted([WRONG_CREDENTIALS] * (limit - 1) + [LOCKED] * (PARALLEL - limit + 1))
    assert _evaluated_and_refused(svc, "clerk.race", "password") == (limit, PARALLEL - limit)
    [lock] = _locks(svc, "clerk.race")
    assert lock.failures == limit
    with svc.sessions() as s, pytest.raises(UnauthenticatedError) as caught:  # even the right password now
        svc.accounts.sign_in_password(s, username="clerk.race", password=PASSWORD, source="10.0.0.1")
    assert caught.value.code == LOCKED


def test_parallel_attempts_on_an_unknown_name_are_counted_alike(svc: Services) -> None:
    limit = svc.accounts.settings.max_failures

    def unknown(number: int) -> object:
        with svc.sessions() as s:
            try:
                return svc.accounts.sign_in_password(s, username="nobody.here", password="x", source="10.0.0.7")
            finally:
                s.commit()

    _in_parallel(svc, unknown)
    assert _evaluated_and_refused(svc, "nobody.here", "password") == (limit, PARALLEL - limit)
    assert len(_locks(svc, "nobody.here")) == 1


def test_parallel_wrong_totp_codes_evaluate_at_most_the_limit(svc: Services) -> None:
    limit = svc.accounts.settings.max_failures
    account_id = _create(svc, "clerk.totprace")
    with svc.sessions() as s:
        account = svc.accounts.get(s, account_id)
        assert account is not None
        principal = account_principal(account)
        secret, _uri = svc.accounts.totp_enrolment(s, principal)
        now = dt.datetime.now(dt.UTC)
        svc.accounts.confirm_totp(s, principal, code=totp.code_at(secret, totp.time_step(now)))
        s.commit()
    step = totp.time_step(dt.datetime.now(dt.UTC))
    good = {totp.code_at(secret, step + d) for d in range(-2, 3)}
    wrong = next(c for c in (f"{n:06d}" for n in range(1000)) if c not in good)

    def wrong_code(number: int) -> object:
        with svc.sessions() as s:
            try:
                return svc.accounts.sign_in_totp(s, account_id, code=wrong, source=f"10.0.1.{number}")
            finally:
                s.commit()

    codes = _in_parallel(svc, wrong_code)
    assert sorted(codes) == sorted([WRONG_TOTP] * (limit - 1) + [LOCKED] * (PARALLEL - limit + 1))
    assert _evaluated_and_refused(svc, "clerk.totprace", "totp") == (limit, PARALLEL - limit)
    assert len(_locks(svc, "clerk.totprace")) == 1
