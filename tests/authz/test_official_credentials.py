"""Officials' password + TOTP sign-in at the service level: who may set it up, change,
turn off and reset it; the sealed secret is bound to its official; the official's record
gone or the set-up unfinished reads as a wrong password; a session ends when the sign-in is
reset or set up anew."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import delete, select

from authz import totp
from authz.official_models import OfficialCredential
from authz.official_signin import OfficialSignInService
from authz.services import WRONG_CREDENTIALS
from govpki.audit import AuditEntry
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnauthenticatedError
from govpki.principal import Principal
from ra.subscriber_models import Official
from ra.subscribers import OfficialInput
from tests.authz.certlogin_helpers import IssuedOfficial, issue_official, prepare_ra
from tests.ra.conftest import CLERK, OFFICER, OTHER_OFFICER
from tests.ra.idnumbers import id_number
from web.container import Services

PASSWORD = "Sayram-Lake-2071m"


@pytest.fixture
def issued(services: Services) -> IssuedOfficial:
    prepare_ra(services)
    return issue_official(services)


def principal_of(services: Services, issued: IssuedOfficial) -> Principal:
    with services.sessions() as session:
        found = services.certlogin.official(session, issued.official_id)
    assert found is not None
    return found.principal


def set_up(services: Services, issued: IssuedOfficial, name: str = "zhang.san") -> str:
    """Set up and turn on; the TOTP secret."""
    svc: OfficialSignInService = services.official_signin
    me = principal_of(services, issued)
    with services.sessions() as session:
        svc.set_up(session, me, certificate_serial=issued.serial, login_name=name, password=PASSWORD)
        secret, uri = svc.totp_enrolment(session, me)
        assert uri.startswith("otpauth://totp/") and name in uri
        svc.confirm(session, me, certificate_serial=issued.serial, code=totp.code_at(secret, _step()))
        session.commit()
    return secret


def _step(ahead: int = 0) -> int:
    return totp.time_step(dt.datetime.now(dt.UTC)) + ahead


def test_set_up_needs_the_official_in_a_certificate_session(services: Services, issued: IssuedOfficial) -> None:
    svc = services.official_signin
    me = principal_of(services, issued)
    with services.sessions() as session:
        with pytest.raises(ForbiddenError):  # staff are not officials
            svc.set_up(session, CLERK, certificate_serial=issued.serial, login_name="abc.d", password=PASSWORD)
        with pytest.raises(ForbiddenError):  # a password session does not vouch for a new way in
            svc.set_up(session, me, certificate_serial=None, login_name="abc.d", password=PASSWORD)
        with pytest.raises(ForbiddenError):  # nor does a certificate that is not ours and valid
            svc.set_up(session, me, certificate_serial="abcdef", login_name="abc.d", password=PASSWORD)
        with pytest.raises(InvalidError) as bad_name:
            svc.set_up(session, me, certificate_serial=issued.serial, login_name="Bad Name", password=PASSWORD)
        assert bad_name.value.field == "username"
        with pytest.raises(InvalidError) as weak:
            svc.set_up(session, me, certificate_serial=issued.serial, login_name="abc.d", password="abc.d-1234567")
        assert weak.value.field == "new_password"
        assert session.scalar(select(OfficialCredential)) is None
    secret = set_up(services, issued)
    with services.sessions() as session:
        with pytest.raises(ConflictError):  # on already: turn it off first
            svc.set_up(session, me, certificate_serial=issued.serial, login_name="zhang.san2", password=PASSWORD)
        stored = session.scalar(select(OfficialCredential))
        assert stored is not None
        # the sealed secret is bound to its official: it does not open as another official's
        with pytest.raises(Exception):
            services.accounts._require_sealer().open_official(
                session, issued.official_id + 1, stored.totp_key_id, stored.totp_secret
            )
        assert (
            services.accounts._require_sealer().open_official(
                session, issued.official_id, stored.totp_key_id, stored.totp_secret
            )
            == secret
        )


def test_sign_in_unfinished_set_up_and_a_gone_official_read_as_wrong_passwords(
    services: Services, issued: IssuedOfficial
) -> None:
    svc = services.official_signin
    me = principal_of(services, issued)
    with services.sessions() as session:
        svc.set_up(session, me, certificate_serial=issued.serial, login_name="li.si", password=PASSWORD)
        session.commit()
    with services.sessions() as session:
        with pytest.raises(UnauthenticatedError) as pending:
            svc.sign_in_password(session, username="li.si", password=PASSWORD, source="test")
        assert pending.value.code == WRONG_CREDENTIALS
        session.commit()
    with services.sessions() as session:
        svc.disable(session, me)
        session.commit()
    secret = set_up(services, issued, "li.si")
    with services.sessions() as session:
        credential_id = svc.sign_in_password(session, username="li.si", password=PASSWORD, source="test")
        signed_in = svc.sign_in_totp(session, credential_id, code=totp.code_at(secret, _step(1)), source="test")
        assert signed_in.principal == me
        session.commit()
        at = services.clock.now()
        assert svc.session_problem(session, official_id=issued.official_id, signed_in_at=at) is None
    # an official whose record is removed (one with no requests: registered, never issued):
    # the sign-in goes with it and the name reads as a wrong password
    with services.sessions() as session:
        other = services.subscribers.register_official(
            session, CLERK, OfficialInput(name="王五", id_number=id_number(sequence="777"), department="财政局")
        )
        model = session.scalar(select(OfficialCredential).where(OfficialCredential.login_name == "li.si"))
        assert model is not None
        session.add(
            OfficialCredential(
                official_id=other.id,
                login_name="gone.one",
                password_hash=model.password_hash,
                totp_key_id=model.totp_key_id,
                totp_secret=model.totp_secret,
                set_up_with=model.set_up_with,
                created_at=at,
                updated_at=at,
                enabled_at=at,
            )
        )
        session.commit()
        other_id = other.id
    with services.sessions() as session:
        session.execute(delete(Official).where(Official.id == other_id))
        session.commit()
    with services.sessions() as session:
        assert session.scalar(select(OfficialCredential).where(OfficialCredential.official_id == other_id)) is None
        with pytest.raises(UnauthenticatedError) as gone:
            svc.sign_in_password(session, username="gone.one", password=PASSWORD, source="test")
        assert gone.value.code == WRONG_CREDENTIALS
        assert svc.session_problem(session, official_id=other_id, signed_in_at=at) == "reset"


def test_reset_by_an_ra_officer_of_the_prefecture_only(services: Services, issued: IssuedOfficial) -> None:
    svc = services.official_signin
    set_up(services, issued, "wang.wu")
    at = services.clock.now()
    with services.sessions() as session:
        with pytest.raises(ForbiddenError):
            svc.reset(session, CLERK, issued.official_id)
        with pytest.raises(NotFoundError):
            svc.reset(session, OTHER_OFFICER, issued.official_id)
        assert svc.reset(session, OFFICER, issued.official_id) == "wang.wu"
        with pytest.raises(ConflictError):
            svc.reset(session, OFFICER, issued.official_id)
        assert svc.session_problem(session, official_id=issued.official_id, signed_in_at=at) == "reset"
        entry = session.scalar(
            select(AuditEntry).where(AuditEntry.action == "authz:official:signin_reset").order_by(AuditEntry.seq.desc())
        )
        assert entry is not None and entry.actor == OFFICER.audit_name and entry.object_id == str(issued.official_id)
        session.commit()
    # set up anew: a session that began before the new set-up ends
    set_up(services, issued, "wang.wu")
    with services.sessions() as session:
        assert svc.session_problem(session, official_id=issued.official_id, signed_in_at=at) == "reset"
        assert svc.session_problem(session, official_id=issued.official_id, signed_in_at=services.clock.now()) is None


def test_change_password_checks_the_current_one(services: Services, issued: IssuedOfficial) -> None:
    svc = services.official_signin
    me = principal_of(services, issued)
    set_up(services, issued, "zhao.liu")
    with services.sessions() as session:
        with pytest.raises(InvalidError) as wrong:
            svc.change_password(session, me, current="not-it-at-all", new="Ili-River-1236km")
        assert wrong.value.field == "current_password"
        with pytest.raises(InvalidError) as same:
            svc.change_password(session, me, current=PASSWORD, new=PASSWORD)
        assert same.value.field == "new_password"
        svc.change_password(session, me, current=PASSWORD, new="Ili-River-1236km")
        session.commit()
    with services.sessions() as session:
        assert svc.sign_in_password(session, username="zhao.liu", password="Ili-River-1236km", source="t") > 0
