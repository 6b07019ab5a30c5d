"""Reading an upload for bulk enrollment: encodings, header names, bad files; and a job
run through the service (no web): rows registered, duplicates and invalid rows kept."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from govpki.audit import AuditEntry, verify_chain
from govpki.errors import ForbiddenError, InvalidError, NotFoundError
from govpki.principal import SYSTEM
from ra import imports
from ra.import_models import ImportJob, ImportRow
from ra.imports import ImportService, parse_csv
from ra.subscriber_models import Official
from tests.ra.conftest import CLERK, OTHER_CLERK
from tests.ra.idnumbers import id_number, wrong_check
from web.cli import main
from web.container import Services
from web.jobs import run_due

TEXT = "姓名,身份证号,部门,电话\n张三,{n},财政局,0991-1234567\n\n李四 , {m} ,审计局,\n"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_utf8_with_or_without_bom_and_gb18030_are_read(encoding: str) -> None:
    parsed = parse_csv(TEXT.format(n="1", m="2").encode(encoding))
    assert parsed.encoding == ("gb18030" if encoding == "gb18030" else "utf-8")
    assert [(r.line, r.values) for r in parsed.rows] == [
        (2, {"name": "张三", "id_number": "1", "department": "财政局", "phone": "0991-1234567"}),
        (4, {"name": "李四", "id_number": "2", "department": "审计局", "phone": ""}),
    ]


def test_english_header_names_in_any_case_and_order() -> None:
    parsed = parse_csv(b" Department ,NAME,Id_Number,E-mail\nx,y,z,a@b.cn\n")
    assert parsed.rows[0].values == {"department": "x", "name": "y", "id_number": "z", "email": "a@b.cn"}


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "ra.import_empty"),
        ("姓名,部门\n张三,财政局\n".encode(), "ra.import_missing_column"),
        (b"name,id_number,department\n\xff\xfe\x80\n", "ra.import_encoding"),
        (b"name,id_number,department\n", "ra.import_no_rows"),
        (b"name,id_number,department\nx\x00,y,z\n", "ra.import_not_text"),
    ],
)
def test_bad_files_are_refused_naming_the_file(data: bytes, code: str) -> None:
    with pytest.raises(InvalidError) as caught:
        parse_csv(data)
    assert caught.value.code == code and caught.value.field == "file"


def test_a_job_registers_valid_rows_and_keeps_the_others_without_clear_numbers(ra: Services) -> None:
    good, dup = id_number(sequence="301"), id_number(sequence="303")
    bad = wrong_check(id_number(sequence="305"))
    data = f"name,id_number,department\n甲,{good},局\n乙,{dup},局\n丙,{dup},局\n丁,{bad},局\n".encode()
    with ra.sessions() as db:
        job_id = ra.ra_imports.create(db, CLERK, "../../a.csv", data).id
        db.commit()
    ra.ra_imports.run(ra.sessions, CLERK, job_id)
    ra.ra_imports.run(ra.sessions, CLERK, job_id)  # claimed already: nothing happens twice
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        assert (job.state, job.filename, job.registered, job.duplicates, job.invalid) == ("done", "a.csv", 2, 1, 1)
        assert job.payload_sealed is None
        rows = ra.ra_imports.rows_not_registered(db, CLERK, job_id)
        assert [(r.line, r.status, r.field) for r in rows] == [
            (4, "duplicate", "id_number"),
            (5, "invalid", "id_number"),
        ]
        assert all(r.id_number.count("*") == 10 for r in rows)
        assert not db.scalars(select(ImportRow).where(ImportRow.id_number.in_([good, dup, bad]))).first()
        with pytest.raises(NotFoundError, match="no import"):
            ra.ra_imports.get(db, OTHER_CLERK, job_id)


# ----- crash recovery ---------------------------------------------------------------


class Crash(BaseException):
    """The process dies here (not an Exception: the worker's error handling does not see it)."""


def _official_count(ra: Services) -> int:
    with ra.sessions() as db:
        return db.scalar(select(func.count()).select_from(Official)) or 0


def _age(ra: Services, job_id: int, minutes: int) -> None:
    """The job's last heartbeat (and creation) ``minutes`` earlier (there is no adjustable clock)."""
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        delta = _dt.timedelta(minutes=minutes)
        db.execute(
            update(ImportJob)
            .where(ImportJob.id == job_id)
            .values(
                created_at=job.created_at - delta,
                heartbeat_at=job.heartbeat_at - delta if job.heartbeat_at else None,
            )
        )
        db.commit()


def _crashing_job(ra: Services, monkeypatch: pytest.MonkeyPatch) -> tuple[int, list[str]]:
    """Seven rows (two already registered, one invalid) in chunks of two; the process dies
    in the middle of the second chunk, after its first row was registered (uncommitted)."""
    numbers = [id_number(sequence=str(400 + 2 * i)) for i in range(5)]
    bad = wrong_check(id_number(sequence="420"))
    lines = [f"甲{i},{n},局" for i, n in enumerate(numbers)] + [f"乙,{numbers[0]},局", f"丙,{bad},局"]
    data = ("name,id_number,department\n" + "\n".join(lines) + "\n").encode()
    with ra.sessions() as db:
        job_id = ra.ra_imports.create(db, CLERK, "staff.csv", data).id
        db.commit()
    monkeypatch.setattr(imports, "CHUNK", 2)
    real = ImportService._one
    calls = []

    def one(self: ImportService, *args: Any) -> str:
        calls.append(1)
        outcome = real(self, *args)
        if len(calls) == 4:
            raise Crash
        return outcome

    with monkeypatch.context() as patch:
        patch.setattr(ImportService, "_one", one)
        with pytest.raises(Crash):
            ra.ra_imports.run(ra.sessions, CLERK, job_id)
    return job_id, numbers


def test_an_import_left_running_by_a_crash_is_resumed_where_it_stopped(
    ra: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _official_count(ra)
    job_id, _numbers = _crashing_job(ra, monkeypatch)
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        assert (job.state, job.processed_rows, job.registered) == ("running", 2, 2)
    assert _official_count(ra) == before + 2  # the second chunk died with its transaction
    assert ra.ra_imports.resume_stale(ra.sessions, SYSTEM) == []  # a fresh heartbeat: its worker may be alive
    _age(ra, job_id, minutes=6)
    resumed = ra.ra_imports.resume_stale(ra.sessions, SYSTEM)
    assert [j.id for j in resumed] == [job_id]
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        assert (job.state, job.processed_rows, job.total_rows) == ("done", 7, 7)
        assert (job.registered, job.duplicates, job.invalid) == (5, 1, 1)
        assert job.payload_sealed is None and job.finished_at is not None
        rows = ra.ra_imports.rows_not_registered(db, CLERK, job_id)
        assert [(r.line, r.status) for r in rows] == [(7, "duplicate"), (8, "invalid")]
        resumes = db.scalars(select(AuditEntry).where(AuditEntry.action == "ra:import:resume")).all()
        assert len(resumes) == 1 and resumes[0].object_id == str(job_id)
        details = json.loads(resumes[0].details)
        assert (details["previous_state"], details["processed_rows"]) == ("running", 2)
        assert db.scalars(select(AuditEntry).where(AuditEntry.action == "ra:import:complete")).one()
        assert verify_chain(db).ok
        lease = job.heartbeat_at
    assert _official_count(ra) == before + 5  # nobody twice
    assert ra.ra_imports.resume_stale(ra.sessions, SYSTEM, grace=_dt.timedelta(0)) == []  # done: left alone
    # a worker that stalled past the grace period and wakes up after the takeover writes nothing
    assert lease is not None
    ra.ra_imports._run_claimed(ra.sessions, CLERK, job_id, lease - _dt.timedelta(minutes=6))
    with ra.sessions() as db:
        job = db.get_one(ImportJob, job_id)
        assert (job.state, job.registered, job.duplicates, job.invalid) == ("done", 5, 1, 1)


def test_imports_left_queued_are_started_by_the_scheduled_jobs_and_the_cli(
    ra: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = f"name,id_number,department\n甲,{id_number(sequence='431')},局\n".encode()
    with ra.sessions() as db:
        queued = ra.ra_imports.create(db, CLERK, "a.csv", data).id
        db.commit()
    results = {r.name: r for r in run_due(ra)}
    assert results["ra-imports"].ok and results["ra-imports"].lines == ()
    _age(ra, queued, minutes=6)
    results = {r.name: r for r in run_due(ra)}
    assert results["ra-imports"].ok and len(results["ra-imports"].lines) == 1, results["ra-imports"]
    assert f"RA import {queued}" in results["ra-imports"].lines[0] and "1 registered" in results["ra-imports"].lines[0]
    job_id, _numbers = _crashing_job(ra, monkeypatch)
    _age(ra, job_id, minutes=3)
    env = {"GOVPKI_INSTANCE_DIR": str(ra.config.instance_dir), "GOVPKI_DATABASE_URL": ra.config.database_url}
    out = CliRunner().invoke(main, ["ra", "resume-imports"], env=env, catch_exceptions=False)
    assert out.exit_code == 0 and "resumed 0 interrupted" in out.output
    out = CliRunner().invoke(main, ["ra", "resume-imports", "--grace-minutes", "2"], env=env, catch_exceptions=False)
    assert out.exit_code == 0, out.output
    assert f"import {job_id} (staff.csv): done, 5 registered, 1 already registered, 1 invalid of 7 rows" in out.output


def test_only_the_system_resumes_imports(ra: Services) -> None:
    with pytest.raises(ForbiddenError) as refused:
        ra.ra_imports.resume_stale(ra.sessions, CLERK)
    assert refused.value.code == "ra.resume_forbidden"
    with pytest.raises(InvalidError) as negative:
        ra.ra_imports.resume_stale(ra.sessions, SYSTEM, grace=_dt.timedelta(minutes=-1))
    assert negative.value.field == "grace"
