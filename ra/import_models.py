"""Bulk enrollment jobs: a CSV of officials uploaded by a clerk, worked through in the
background with its progress and its per-row outcome kept here."""

from __future__ import annotations

import datetime as _dt
import enum
from typing import Any

from sqlalchemy import JSON, CheckConstraint, ForeignKey, Integer, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from govpki.db import Base, UTCDateTime


class ImportState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class ImportJob(Base):
    """One uploaded CSV. The rows (they hold clear ID numbers) are kept only sealed under
    the subscriber data key (``payload_sealed``) until the job is done, then dropped. The
    rows not registered are kept in ``ra_import_rows`` (:class:`ImportRow`) for the report."""

    __tablename__ = "ra_import_jobs"
    __table_args__ = (CheckConstraint("state IN ('queued', 'running', 'done', 'failed')", name="state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefecture_code: Mapped[str] = mapped_column(ForeignKey("prefectures.code"), index=True)
    filename: Mapped[str] = mapped_column(String(200))
    encoding: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(10))
    total_rows: Mapped[int] = mapped_column(Integer)
    processed_rows: Mapped[int] = mapped_column(Integer, default=0)
    registered: Mapped[int] = mapped_column(Integer, default=0)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    invalid: Mapped[int] = mapped_column(Integer, default=0)
    data_key_id: Mapped[int] = mapped_column(ForeignKey("subscriber_data_keys.id"))
    payload_sealed: Mapped[bytes | None] = mapped_column(LargeBinary())
    failure: Mapped[str | None] = mapped_column(Text())
    failure_code: Mapped[str | None] = mapped_column(String(64))  # the error's code and values
    failure_params: Mapped[dict[str, Any] | None] = mapped_column(JSON())
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
    # written with the claim and each chunk's progress: a running job whose heartbeat is old was
    # left by a crash and is resumed (ra.imports.ImportService.resume_stale)
    heartbeat_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())


class ImportRow(Base):
    """A row of an import that was not registered: a duplicate ("already registered") or
    invalid, with the field and reason. The ID number only masked (never the clear number)."""

    __tablename__ = "ra_import_rows"
    __table_args__ = (CheckConstraint("status IN ('duplicate', 'invalid')", name="status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("ra_import_jobs.id"), index=True)
    line: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(10))
    name: Mapped[str] = mapped_column(String(200))
    id_number: Mapped[str] = mapped_column(String(18))
    field: Mapped[str | None] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(Text())  # English
    code: Mapped[str | None] = mapped_column(String(64))  # the refusal's code and values, to translate
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON())
