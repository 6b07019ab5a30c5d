"""Officials and services registered by a prefecture RA: validation, duplicates across the
network, prefecture scoping, the ID number encrypted at rest and shown masked."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select, text

from govpki.audit import AuditEntry
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError, UnavailableError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from ra.subscriber_models import Official
from ra.subscribers import OfficialInput, ServiceInput
from tests.ra.conftest import CLERK, KARAMAY, OFFICER, OTHER_CLERK, OTHER_OFFICER, URUMQI
from tests.ra.idnumbers import id_number, wrong_check
from web.bootstrap import initialize
from web.container import Services

NUMBER = id_number(area="650102", birth="19800101", sequence="123")  # male


def register(services: Services, who: Principal = CLERK, number: str = NUMBER, **fields: str) -> Official:
    data = {"name": "张三", "department": "财政局", "title": "科长", "phone": "0991-1234567"}
    data["email"] = "zs@czj.example.gov.cn"
    data.update(fields)
    with services.sessions() as session:
        official = services.subscribers.register_official(session, who, OfficialInput(id_number=number, **data))
        session.commit()
        return official


def count_officials(services: Services) -> int:
    with services.sessions() as session:
        return len(session.scalars(select(Official.id)).all())


def test_register_official(ra: Services):
    official = register(ra)
    assert official.prefecture_code == URUMQI
    assert official.gender == "male"
    assert official.id_number_masked == "6501**********" + NUMBER[-4:]
    assert official.created_by == "account:clerk1"
    assert register(ra, number=id_number(sequence="124"), name="李四").gender == "female"
    with ra.sessions() as session:
        entry = session.scalars(
            select(AuditEntry).where(AuditEntry.action == "ra:official:create").order_by(AuditEntry.seq)
        ).first()
        assert entry is not None and entry.object_id == str(official.id)
        assert NUMBER not in entry.details and official.id_number_masked in entry.details


def test_id_number_is_encrypted_at_rest(ra: Services, database_url: str):
    official = register(ra, email="")
    with ra.sessions() as session:
        stored = session.get_one(Official, official.id)
        assert NUMBER.encode() not in stored.id_number_encrypted
        assert NUMBER not in stored.id_number_hash
        # every value of every row of every table
        dump = b""
        for table in ("officials", "audit_log", "subscriber_data_keys"):
            for row in session.execute(text(f"SELECT * FROM {table}")).all():
                dump += b"\0".join(v if isinstance(v, bytes) else str(v).encode() for v in row)
        assert NUMBER.encode() not in dump
    if database_url.startswith("sqlite:///"):
        ra.engine.dispose()  # checkpoint the WAL into the file
        files = [Path(database_url.removeprefix("sqlite:///"))]
        files += [Path(str(files[0]) + suffix) for suffix in ("-wal", "-shm")]
        for path in files:
            if path.exists():
                assert NUMBER.encode() not in path.read_bytes(), path


def test_officer_of_the_prefecture_may_see_the_clear_number(ra: Services):
    official = register(ra)
    with ra.sessions() as session:
        assert ra.subscribers.reveal_id_number(session, OFFICER, official.id) == NUMBER
        session.commit()
    for who in (CLERK, SYSTEM):
        with ra.sessions() as session, pytest.raises(ForbiddenError) as caught:
            ra.subscribers.reveal_id_number(session, who, official.id)
        assert caught.value.code == "ra.may_not_reveal"
    with ra.sessions() as session, pytest.raises(NotFoundError):
        ra.subscribers.reveal_id_number(session, OTHER_OFFICER, official.id)
    with ra.sessions() as session:
        actions = session.scalars(select(AuditEntry.action).where(AuditEntry.action == "ra:official:reveal")).all()
        assert actions == ["ra:official:reveal"]


def test_duplicate_across_the_network_names_the_prefecture(ra: Services):
    register(ra)
    with ra.sessions() as session, pytest.raises(ConflictError) as caught:
        ra.subscribers.register_official(
            session, OTHER_CLERK, OfficialInput(name="张三", id_number=NUMBER.lower(), department="税务局")
        )
    assert caught.value.code == "ra.duplicate_id_number" and caught.value.field == "id_number"
    assert "乌鲁木齐市" in caught.value.reason
    assert count_officials(ra) == 1


@pytest.mark.parametrize(
    ("fields", "field", "code"),
    [
        ({"id_number": wrong_check(NUMBER)}, "id_number", "ra.id_number_checksum"),
        ({"id_number": id_number(birth="19810230")}, "id_number", "ra.id_number_birth_date"),
        ({"id_number": id_number(birth="20991231")}, "id_number", "ra.id_number_birth_date"),
        ({"name": " "}, "name", None),
        ({"name": "张" * 22}, "name", None),  # 66 bytes in UTF-8: too long for a common name
        ({"department": ""}, "department", None),
        ({"email": "not an address"}, "email", None),
        ({"phone": "call me"}, "phone", None),
    ],
)
def test_bad_official_input(ra: Services, fields: dict[str, str], field: str, code: str | None):
    data = {"name": "王五", "id_number": NUMBER, "department": "财政局"} | fields
    with ra.sessions() as session, pytest.raises(InvalidError) as caught:
        ra.subscribers.register_official(session, CLERK, OfficialInput(**data))
    assert caught.value.field == field
    if code:
        assert caught.value.code == code
    assert count_officials(ra) == 0


def test_only_a_clerk_registers(ra: Services):
    nobody = Principal(PrincipalKind.ACCOUNT, "9", "clerk-nowhere", frozenset({Role.RA_CLERK}))
    for who, code in ((OFFICER, "ra.not_a_clerk"), (SYSTEM, "ra.no_prefecture"), (nobody, "ra.no_prefecture")):
        with ra.sessions() as session, pytest.raises(ForbiddenError) as caught:
            ra.subscribers.register_official(
                session, who, OfficialInput(name="王五", id_number=NUMBER, department="财政局")
            )
        assert caught.value.code == code
    assert count_officials(ra) == 0


def test_no_data_key_yet(bare_services: Services):
    services = bare_services  # migrated, before `govpki init` (which makes the data key)
    with services.sessions() as session:
        services.regions.seed(session, SYSTEM, services.region)
        session.commit()
    with services.sessions() as session, pytest.raises(UnavailableError) as caught:
        services.subscribers.register_official(
            session, CLERK, OfficialInput(name="王五", id_number=NUMBER, department="财政局")
        )
    assert caught.value.code == "ra.no_data_key"
    with services.sessions() as session, pytest.raises(ForbiddenError):
        services.subscribers.ensure_data_key(session, CLERK)


def test_init_makes_the_data_key_once(bare_services: Services):
    first = initialize(bare_services, SYSTEM)
    assert "subscriber data key (ID numbers encrypted at rest)" in first.created
    again = initialize(bare_services, SYSTEM)
    assert not any("data key" in line for line in again.created)


def test_prefecture_scoping_of_reads(ra: Services):
    official = register(ra)
    with ra.sessions() as session:
        assert ra.subscribers.get_official(session, OFFICER, official.id).name == "张三"
        assert [o.id for o in ra.subscribers.list_officials(session, CLERK)] == [official.id]
        assert ra.subscribers.list_officials(session, OTHER_CLERK) == []
        assert ra.subscribers.find_by_id_number(session, CLERK, NUMBER).id == official.id
        # central roles see every prefecture (masked)
        operator = Principal(PrincipalKind.ACCOUNT, "5", "op", frozenset({Role.CA_OPERATOR}))
        assert ra.subscribers.get_official(session, operator, official.id).id_number_masked.startswith("6501**")
        for read in (
            lambda: ra.subscribers.get_official(session, OTHER_CLERK, official.id),
            lambda: ra.subscribers.find_by_id_number(session, OTHER_OFFICER, NUMBER),
            lambda: ra.subscribers.get_official(session, CLERK, official.id + 100),
        ):
            with pytest.raises(NotFoundError) as caught:
                read()
            assert caught.value.code == "ra.official_not_found"
        recovery = Principal(PrincipalKind.ACCOUNT, "6", "kro", frozenset({Role.KEY_RECOVERY_OFFICER}))
        with pytest.raises(ForbiddenError):
            ra.subscribers.list_officials(session, recovery)


def service_input(official_id: int, **fields: object) -> ServiceInput:
    data: dict[str, object] = {
        "name": "预算管理系统",
        "department": "财政局",
        "responsible_official_id": official_id,
        "host_names": ["Budget.CZJ.example.gov.cn"],
        "ip_addresses": ["10.1.2.3", "2001:db8::1"],
    }
    data.update(fields)
    return ServiceInput(**data)  # type: ignore[arg-type]


def test_register_service(ra: Services):
    official = register(ra)
    with ra.sessions() as session:
        service = ra.subscribers.register_service(session, CLERK, service_input(official.id))
        session.commit()
        assert service.host_name_list == ["budget.czj.example.gov.cn"]
        assert service.ip_address_list == ["10.1.2.3", "2001:db8::1"]
        assert service.responsible.name == "张三"
    with ra.sessions() as session:
        assert ra.subscribers.get_service(session, OFFICER, service.id).name == "预算管理系统"
        with pytest.raises(NotFoundError):
            ra.subscribers.get_service(session, OTHER_OFFICER, service.id)
        action = session.scalar(select(AuditEntry.action).where(AuditEntry.action == "ra:service:create"))
        assert action == "ra:service:create"
    with ra.sessions() as session, pytest.raises(ConflictError) as caught:
        ra.subscribers.register_service(session, CLERK, service_input(official.id))
    assert caught.value.code == "ra.duplicate_service"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"host_names": ["*.example.gov.cn"]}, "host_names[0]"),
        ({"host_names": ["a.example.gov.cn", "A.example.gov.cn"]}, "host_names[1]"),
        ({"ip_addresses": ["10.0.0.0/8"]}, "ip_addresses[0]"),
        ({"host_names": [], "ip_addresses": []}, "host_names"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_service_input(ra: Services, fields: dict[str, object], field: str):
    official = register(ra)
    with ra.sessions() as session, pytest.raises(InvalidError) as caught:
        ra.subscribers.register_service(session, CLERK, service_input(official.id, **fields))
    assert caught.value.field == field


def test_responsible_official_from_another_prefecture(ra: Services):
    official = register(ra)
    with ra.sessions() as session, pytest.raises(NotFoundError) as caught:
        ra.subscribers.register_service(session, OTHER_CLERK, service_input(official.id))
    assert caught.value.field == "responsible_official_id"
    assert KARAMAY in caught.value.reason
