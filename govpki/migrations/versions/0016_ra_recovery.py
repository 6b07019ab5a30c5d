"""RA import jobs get a heartbeat (``heartbeat_at``), written with each chunk's progress,
so that a job left running or queued by a crash is found and resumed

Revision ID: 0016
Revises: 0015
Create Date: 2026-11-22 21:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # adding a nullable column: ALTER TABLE … ADD COLUMN on both SQLite and PostgreSQL (no rebuild)
    with op.batch_alter_table("ra_import_jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", govpki.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("ra_import_jobs", schema=None) as batch_op:
        batch_op.drop_column("heartbeat_at")
