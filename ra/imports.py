"""Bulk enrollment of officials from a CSV file (批量录入).

The file is UTF-8 (with or without a byte-order mark) or GB18030: it is decoded as
UTF-8 strictly first, then as GB18030 strictly; anything else is refused. The header
row names the columns, in Chinese or English (any order, case and surrounding blanks
ignored):

* required: 姓名 / name, 身份证号 (公民身份号码, 身份证号码) / id_number, 部门 (单位) / department
* optional: 职务 / title, 电话 (手机) / phone, 邮箱 (电子邮件) / email

A missing required column, a broken encoding, an empty file or more than
:data:`MAX_ROWS` rows is refused at upload with nothing stored. Otherwise a job is made
(``ra_import_jobs``); its rows — they hold clear ID numbers — are kept only sealed under
the subscriber data key (AES-GCM in the key store) until the job is done. :meth:`run`
then registers row after row through :meth:`SubscriberService.register_official`, each
row in a savepoint, committing every :data:`CHUNK` rows with the progress. Every row is
validated by the service; a number registered already (in this import, an earlier one,
or by hand) is reported as "already registered", not as an error. Re-importing the same
file therefore registers nothing twice. The outcome per row (line number, status, name,
masked number, field, reason) of every row not registered is kept (``ra_import_rows``)
for the downloadable report; it never holds a clear number.

Crash recovery. The claim and each chunk's commit write a heartbeat (``heartbeat_at``); a
worker writes progress only while the job still carries its own last heartbeat (a lease).
A job ``running`` without a heartbeat for :data:`IMPORT_GRACE`, or ``queued`` that long,
was left by a crash: :meth:`ImportService.resume_stale` (the scheduled jobs, which also run
at start-up of ``govpki serve``) claims it again, audited (``ra:import:resume``), and goes
on from the first row not committed — a chunk's registrations commit with its progress,
and a number already registered is reported as a duplicate, so nothing is registered twice.
"""

from __future__ import annotations

import builtins
import csv
import datetime as _dt
import io
import json
import logging
import unicodedata
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, GovpkiError, InvalidError, NotFoundError
from govpki.principal import Principal, PrincipalKind
from ra.events import RaEvent
from ra.idnumber import mask
from ra.import_models import ImportJob, ImportRow, ImportState
from ra.subscriber_models import SubscriberDataKey
from ra.subscribers import OfficialInput, SubscriberService, check_clerk, check_reader

log = logging.getLogger("govpki.ra.imports")

MAX_ROWS = 20000
CHUNK = 50
MAX_FILENAME = 200
IMPORT_GRACE = _dt.timedelta(minutes=5)  # no heartbeat for this long: the worker died (a chunk takes seconds)
_PAYLOAD_AAD = b"govpki-ra-import-rows-v1:"

REQUIRED = ("name", "id_number", "department")
OPTIONAL = ("title", "phone", "email")
HEADERS: dict[str, str] = {
    "name": "name",
    "姓名": "name",
    "id_number": "id_number",
    "id number": "id_number",
    "idnumber": "id_number",
    "身份证号": "id_number",
    "身份证号码": "id_number",
    "公民身份号码": "id_number",
    "department": "department",
    "部门": "department",
    "单位": "department",
    "title": "title",
    "职务": "title",
    "phone": "phone",
    "电话": "phone",
    "手机": "phone",
    "联系电话": "phone",
    "email": "email",
    "e-mail": "email",
    "邮箱": "email",
    "电子邮件": "email",
    "电子邮箱": "email",
}


class _Lease:
    """The heartbeat a worker wrote last: it writes on only while the job still carries it."""

    def __init__(self, at: _dt.datetime) -> None:
        self.at = at


class _LeaseLostError(Exception):
    """Another worker resumed the job (this one stalled past the grace period)."""


def _stale(cutoff: _dt.datetime) -> ColumnElement[bool]:
    """A job left behind: running without a heartbeat since ``cutoff``, or queued since then."""
    return or_(
        and_(
            ImportJob.state == ImportState.RUNNING.value,
            func.coalesce(ImportJob.heartbeat_at, ImportJob.started_at, ImportJob.created_at) <= cutoff,
        ),
        and_(ImportJob.state == ImportState.QUEUED.value, ImportJob.created_at <= cutoff),
    )


class RowStatus:
    REGISTERED = "registered"
    DUPLICATE = "duplicate"
    INVALID = "invalid"


@dataclass(frozen=True)
class CsvRow:
    line: int
    values: dict[str, str]

    def official(self) -> OfficialInput:
        v = self.values
        return OfficialInput(
            name=v.get("name", ""),
            id_number=v.get("id_number", ""),
            department=v.get("department", ""),
            title=v.get("title") or None,
            phone=v.get("phone") or None,
            email=v.get("email") or None,
        )


@dataclass(frozen=True)
class ParsedCsv:
    encoding: str
    rows: list[CsvRow]


def decode(data: bytes) -> tuple[str, str]:
    """The text and the encoding that fits: UTF-8 (BOM or not), else GB18030; both strictly."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030"), "gb18030"
    except UnicodeDecodeError as exc:
        raise InvalidError(
            f"is neither UTF-8 nor GB18030 text (byte {exc.start + 1} cannot be read); save it as CSV UTF-8",
            field="file",
            code="ra.import_encoding",
            params={"byte": exc.start + 1},
        ) from None


def _header(name: str) -> str | None:
    key = unicodedata.normalize("NFKC", name).strip().lower()
    return HEADERS.get(key)


def parse_csv(data: bytes) -> ParsedCsv:
    """The rows of an upload, or an :class:`InvalidError` (field ``file``) saying why not."""
    if not data.strip():
        raise InvalidError("is empty; choose a CSV file of officials", field="file", code="ra.import_empty")
    text, encoding = decode(data)
    if "\x00" in text:
        raise InvalidError("is not a text (CSV) file", field="file", code="ra.import_not_text")
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except (StopIteration, csv.Error):
        raise InvalidError("has no header row", field="file", code="ra.import_no_header") from None
    columns = [_header(h) for h in header]
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise InvalidError(
            f"lacks the required column(s) {', '.join(missing)}; the header row must name "
            "姓名/name, 身份证号/id_number and 部门/department",
            field="file",
            code="ra.import_missing_column",
            params={"columns": ", ".join(missing)},
        )
    rows: list[CsvRow] = []
    try:
        for record in reader:
            if not any(cell.strip() for cell in record):
                continue
            if len(rows) >= MAX_ROWS:
                raise InvalidError(
                    f"has more than {MAX_ROWS} rows; split it into smaller files",
                    field="file",
                    code="ra.import_too_many_rows",
                    params={"count": MAX_ROWS},
                )
            values: dict[str, str] = {}
            for column, cell in zip(columns, record, strict=False):
                if column is not None and column not in values:
                    values[column] = cell.strip()
            rows.append(CsvRow(reader.line_num, values))
    except csv.Error as exc:
        raise InvalidError(
            f"cannot be read as CSV at line {reader.line_num}: {exc}",
            field="file",
            code="ra.import_csv",
            params={"line": reader.line_num},
        ) from None
    if not rows:
        raise InvalidError("has a header row but no officials", field="file", code="ra.import_no_rows")
    return ParsedCsv(encoding, rows)


class ImportService:
    def __init__(self, subscribers: SubscriberService, clock: Clock) -> None:
        self._subscribers = subscribers
        self._clock = clock

    def create(self, session: Session, principal: Principal, filename: str, data: bytes) -> ImportJob:
        """Check the upload and make its job (queued); nothing is registered yet."""
        prefecture = check_clerk(principal)
        name = (filename or "upload.csv").replace("\\", "/").rsplit("/", 1)[-1][:MAX_FILENAME] or "upload.csv"
        parsed = parse_csv(data)
        key = self._subscribers.active_data_key(session)
        payload = json.dumps([[r.line, r.values] for r in parsed.rows], ensure_ascii=False).encode()
        now = self._clock.now()
        job = ImportJob(
            prefecture_code=prefecture,
            filename=name,
            encoding=parsed.encoding,
            state=ImportState.QUEUED.value,
            total_rows=len(parsed.rows),
            processed_rows=0,
            registered=0,
            duplicates=0,
            invalid=0,
            data_key_id=key.id,
            payload_sealed=b"",
            created_by=principal.audit_name,
            created_at=now,
        )
        session.add(job)
        session.flush()
        job.payload_sealed = self._subscribers.seal(key, payload, _PAYLOAD_AAD + str(job.id).encode())
        session.flush()
        audit.record(
            session,
            principal,
            RaEvent.IMPORT_CREATE.value,
            object_type="ra_import_job",
            object_id=str(job.id),
            details={
                "prefecture_code": prefecture,
                "filename": name,
                "encoding": parsed.encoding,
                "rows": len(parsed.rows),
            },
            clock=self._clock,
        )
        return job

    def get(self, session: Session, principal: Principal, job_id: int) -> ImportJob:
        scope = check_reader(principal)
        job = session.get(ImportJob, job_id)
        if job is None or (scope is not None and job.prefecture_code != scope):
            raise NotFoundError(
                f"no import with id {job_id}" + (f" in prefecture {scope}" if scope else ""),
                field="import_id",
                code="ra.import_not_found",
                params={"id": job_id},
            )
        return job

    def rows_not_registered(
        self, session: Session, principal: Principal, job_id: int, *, limit: int | None = None
    ) -> list[ImportRow]:
        """The job's duplicate and invalid rows, by line (the report)."""
        job = self.get(session, principal, job_id)
        query = select(ImportRow).where(ImportRow.job_id == job.id).order_by(ImportRow.line, ImportRow.id)
        if limit is not None:
            query = query.limit(limit)
        return list(session.scalars(query))

    def list(self, session: Session, principal: Principal, *, limit: int = 20) -> list[ImportJob]:
        scope = check_reader(principal)
        query = select(ImportJob).order_by(ImportJob.id.desc()).limit(limit)
        if scope is not None:
            query = query.where(ImportJob.prefecture_code == scope)
        return list(session.scalars(query))

    # ----- the background work ---------------------------------------------

    def run(self, sessions: sessionmaker[Session], principal: Principal, job_id: int) -> None:
        """Work through a queued job (in a background thread: each chunk of rows is its own
        transaction, with the progress). A job another worker has claimed is left alone."""
        with sessions() as session:
            now = self._clock.now()
            claimed = session.execute(
                update(ImportJob)
                .where(ImportJob.id == job_id, ImportJob.state == ImportState.QUEUED.value)
                .values(state=ImportState.RUNNING.value, started_at=now, heartbeat_at=now)
            )
            session.commit()
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return
        self._run_claimed(sessions, principal, job_id, now)

    def resume_stale(
        self, sessions: sessionmaker[Session], principal: Principal, *, grace: _dt.timedelta = IMPORT_GRACE
    ) -> builtins.list[ImportJob]:
        """Pick up the jobs a crash left behind and finish them: ``running`` with no heartbeat
        for ``grace`` (its worker died with its process), or ``queued`` for that long (the
        process died before its worker started). Each is claimed again (a new heartbeat, the
        lease) with its ``ra:import:resume`` audit entry, then worked on from the first row
        not committed: a chunk's registrations commit with its progress, so none is done
        twice. Runs the work here (the scheduled jobs' process); returns the jobs, finished."""
        if principal.kind is not PrincipalKind.SYSTEM:
            raise ForbiddenError(
                "only the system (the scheduled jobs, the local CLI) resumes interrupted imports",
                field="principal",
                code="ra.resume_forbidden",
            )
        if grace < _dt.timedelta(0):
            raise InvalidError("the grace period cannot be negative", field="grace")
        cutoff = self._clock.now() - grace
        with sessions() as session:
            ids = list(session.scalars(select(ImportJob.id).where(_stale(cutoff)).order_by(ImportJob.id)))
        finished: builtins.list[ImportJob] = []
        for job_id in ids:
            claimed = self._reclaim(sessions, principal, job_id, cutoff)
            if claimed is None:
                continue  # resumed by someone else meanwhile, or its worker is alive after all
            prefecture, lease = claimed
            self._run_claimed(sessions, replace(principal, prefecture=prefecture), job_id, lease)
            with sessions() as session:
                job = session.get_one(ImportJob, job_id)
                session.expunge(job)
            finished.append(job)
        return finished

    def _reclaim(
        self, sessions: sessionmaker[Session], principal: Principal, job_id: int, cutoff: _dt.datetime
    ) -> tuple[str, _dt.datetime] | None:
        with sessions() as session:
            job = session.get(ImportJob, job_id)
            if job is None:
                return None
            previous = job.state
            last = job.heartbeat_at or job.started_at
            now = self._clock.now()
            claimed = session.execute(
                update(ImportJob)
                .where(ImportJob.id == job_id, _stale(cutoff))
                .values(state=ImportState.RUNNING.value, heartbeat_at=now, started_at=job.started_at or now)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return None
            audit.record(
                session,
                principal,
                RaEvent.IMPORT_RESUME.value,
                object_type="ra_import_job",
                object_id=str(job_id),
                details={
                    "prefecture_code": job.prefecture_code,
                    "previous_state": previous,
                    "last_heartbeat": last.isoformat() if last else None,
                    "rows": job.total_rows,
                    "processed_rows": job.processed_rows,
                },
                clock=self._clock,
            )
            prefecture = job.prefecture_code
            session.commit()
        return prefecture, now

    def _run_claimed(
        self, sessions: sessionmaker[Session], principal: Principal, job_id: int, lease: _dt.datetime
    ) -> None:
        held = _Lease(lease)
        try:
            self._work(sessions, principal, job_id, held)
        except _LeaseLostError:
            log.warning("import %s was taken over by another worker; this one stops", job_id)
        except Exception as exc:
            log.exception("import %s failed", job_id)
            with sessions() as session:
                try:  # only while this worker still holds the job
                    self._advance(
                        session,
                        job_id,
                        held.at,
                        state=ImportState.FAILED.value,
                        failure=exc.reason
                        if isinstance(exc, GovpkiError)
                        else "an internal error occurred; it was logged",
                        failure_code=exc.code if isinstance(exc, GovpkiError) else "ra.import_internal",
                        failure_params=dict(exc.params) if isinstance(exc, GovpkiError) else {},
                        payload_sealed=None,
                        finished_at=self._clock.now(),
                        heartbeat_at=held.at,
                    )
                except _LeaseLostError:
                    return
                session.commit()

    def _work(self, sessions: sessionmaker[Session], principal: Principal, job_id: int, lease: _Lease) -> None:
        """``lease``: the heartbeat this worker wrote last; a chunk commits only while the job
        still carries it (a worker taken over after a long stall stops instead of counting twice)."""
        with sessions() as session:
            job = session.get_one(ImportJob, job_id)
            if job.state != ImportState.RUNNING.value or job.heartbeat_at != lease.at:
                raise _LeaseLostError
            key = session.get_one(SubscriberDataKey, job.data_key_id)
            assert job.payload_sealed is not None
            payload = self._subscribers.unseal(key, job.payload_sealed, _PAYLOAD_AAD + str(job.id).encode())
            rows = [CsvRow(int(line), dict(values)) for line, values in json.loads(payload)]
            start = job.processed_rows
        for begin in range(start, len(rows), CHUNK):
            chunk = rows[begin : begin + CHUNK]
            with sessions() as session:
                # write first: the heartbeat checks the lease before any row, and opens the chunk's
                # transaction (pysqlite begins one only at a write; a SAVEPOINT before it would be
                # committed by its RELEASE, and the rows would outlive a crash without their progress)
                lease.at = self._advance(session, job_id, lease.at, heartbeat_at=self._clock.now())
                outcomes = [self._one(session, principal, job_id, row) for row in chunk]
                now = self._clock.now()
                lease.at = self._advance(
                    session,
                    job_id,
                    lease.at,
                    processed_rows=begin + len(chunk),
                    registered=ImportJob.registered + outcomes.count(RowStatus.REGISTERED),
                    duplicates=ImportJob.duplicates + outcomes.count(RowStatus.DUPLICATE),
                    invalid=ImportJob.invalid + outcomes.count(RowStatus.INVALID),
                    heartbeat_at=now,
                )
                session.commit()
        with sessions() as session:
            now = self._clock.now()
            lease.at = self._advance(
                session,
                job_id,
                lease.at,
                state=ImportState.DONE.value,
                payload_sealed=None,
                finished_at=now,
                heartbeat_at=now,
            )
            job = session.get_one(ImportJob, job_id)
            session.refresh(job)
            audit.record(
                session,
                principal,
                RaEvent.IMPORT_COMPLETE.value,
                object_type="ra_import_job",
                object_id=str(job.id),
                details={
                    "prefecture_code": job.prefecture_code,
                    "rows": job.total_rows,
                    "registered": job.registered,
                    "duplicates": job.duplicates,
                    "invalid": job.invalid,
                },
                clock=self._clock,
            )
            session.commit()

    @staticmethod
    def _advance(session: Session, job_id: int, lease: _dt.datetime, **values: Any) -> _dt.datetime:
        """Write the progress if this worker still holds the job; the new lease."""
        changed = session.execute(
            update(ImportJob)
            .where(
                ImportJob.id == job_id,
                ImportJob.state == ImportState.RUNNING.value,
                ImportJob.heartbeat_at == lease,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            raise _LeaseLostError
        heartbeat: _dt.datetime = values["heartbeat_at"]
        return heartbeat

    def _one(self, session: Session, principal: Principal, job_id: int, row: CsvRow) -> str:
        """Register one row (in a savepoint); a row not registered is kept for the report."""
        try:
            with session.begin_nested():
                self._subscribers.register_official(session, principal, row.official())
        except GovpkiError as error:
            duplicate = isinstance(error, ConflictError) and error.code == "ra.duplicate_id_number"
            status = RowStatus.DUPLICATE if duplicate else RowStatus.INVALID
            problem = error.problems[0]
            number = row.values.get("id_number", "").strip().upper()
            session.add(
                ImportRow(
                    job_id=job_id,
                    line=row.line,
                    status=status,
                    name=row.values.get("name", "")[:200],
                    id_number=mask(number) if len(number) == 18 else "",
                    field=(problem.field or "")[:64] or None,
                    reason=problem.reason,
                    code=problem.code,
                    params=dict(problem.params),
                )
            )
            return status
        return RowStatus.REGISTERED
