"""RA bulk enrollment jobs (CSV of officials, processed in the background) and their rows not registered

Revision ID: 0013
Revises: 0012
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ra_import_jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefecture_code", sa.String(length=12), nullable=False),
        sa.Column("filename", sa.String(length=200), nullable=False),
        sa.Column("encoding", sa.String(length=20), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("total_rows", sa.Integer(), nullable=False),
        sa.Column("processed_rows", sa.Integer(), nullable=False),
        sa.Column("registered", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("invalid", sa.Integer(), nullable=False),
        sa.Column("data_key_id", sa.Integer(), nullable=False),
        sa.Column("payload_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("state IN ('queued', 'running', 'done', 'failed')", name=op.f("ck_ra_import_jobs_state")),
        sa.ForeignKeyConstraint(
            ["data_key_id"],
            ["subscriber_data_keys.id"],
            name=op.f("fk_ra_import_jobs_data_key_id_subscriber_data_keys"),
        ),
        sa.ForeignKeyConstraint(
            ["prefecture_code"], ["prefectures.code"], name=op.f("fk_ra_import_jobs_prefecture_code_prefectures")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ra_import_jobs")),
    )
    op.create_index(op.f("ix_ra_import_jobs_prefecture_code"), "ra_import_jobs", ["prefecture_code"], unique=False)
    op.create_table(
        "ra_import_rows",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("line", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("id_number", sa.String(length=18), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint("status IN ('duplicate', 'invalid')", name=op.f("ck_ra_import_rows_status")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["ra_import_jobs.id"], name=op.f("fk_ra_import_rows_job_id_ra_import_jobs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ra_import_rows")),
    )
    op.create_index(op.f("ix_ra_import_rows_job_id"), "ra_import_rows", ["job_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_ra_import_rows_job_id"), table_name="ra_import_rows")
    op.drop_table("ra_import_rows")
    op.drop_index(op.f("ix_ra_import_jobs_prefecture_code"), table_name="ra_import_jobs")
    op.drop_table("ra_import_jobs")
