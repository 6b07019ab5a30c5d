"""applications: a bound client certificate (mutual TLS through the trusted front)

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-27 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # plain nullable columns and a unique index: no table copy on SQLite
    op.add_column("applications", sa.Column("cert_sha256", sa.String(length=64), nullable=True))
    op.add_column("applications", sa.Column("cert_issuer", sa.Text(), nullable=True))
    op.add_column("applications", sa.Column("cert_serial", sa.String(length=42), nullable=True))
    op.add_column("applications", sa.Column("cert_bound_at", govpki.db.UTCDateTime(timezone=True), nullable=True))
    op.create_index(op.f("ix_applications_cert_sha256"), "applications", ["cert_sha256"], unique=True)


def downgrade() -> None:
    op.drop_index(op.f("ix_applications_cert_sha256"), table_name="applications")
    with op.batch_alter_table("applications", schema=None) as batch_op:
        batch_op.drop_column("cert_bound_at")
        batch_op.drop_column("cert_serial")
        batch_op.drop_column("cert_issuer")
        batch_op.drop_column("cert_sha256")
