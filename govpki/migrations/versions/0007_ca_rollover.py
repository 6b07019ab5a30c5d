"""CA key rollover: superseded/retired CA states and the roots' cross-certificates

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22 14:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "certificate_authorities", sa.Column("superseded_at", govpki.db.UTCDateTime(timezone=True), nullable=True)
    )
    op.add_column(
        "certificate_authorities", sa.Column("retired_at", govpki.db.UTCDateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "cross_certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("direction", sa.String(length=20), nullable=False),
        sa.Column("subject_ca_id", sa.Integer(), nullable=False),
        sa.Column("issuer_ca_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("issuer", sa.Text(), nullable=False),
        sa.Column("fingerprint_sha256", sa.String(length=64), nullable=False),
        sa.Column("cert_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("not_after", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "direction IN ('new_with_old', 'old_with_new')", name=op.f("ck_cross_certificates_direction")
        ),
        sa.ForeignKeyConstraint(
            ["issuer_ca_id"],
            ["certificate_authorities.id"],
            name=op.f("fk_cross_certificates_issuer_ca_id_certificate_authorities"),
        ),
        sa.ForeignKeyConstraint(
            ["subject_ca_id"],
            ["certificate_authorities.id"],
            name=op.f("fk_cross_certificates_subject_ca_id_certificate_authorities"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cross_certificates")),
        sa.UniqueConstraint("fingerprint_sha256", name=op.f("uq_cross_certificates_fingerprint_sha256")),
    )
    op.create_index(op.f("ix_cross_certificates_issuer_ca_id"), "cross_certificates", ["issuer_ca_id"], unique=False)
    op.create_index(op.f("ix_cross_certificates_subject_ca_id"), "cross_certificates", ["subject_ca_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_cross_certificates_subject_ca_id"), table_name="cross_certificates")
    op.drop_index(op.f("ix_cross_certificates_issuer_ca_id"), table_name="cross_certificates")
    op.drop_table("cross_certificates")
    with op.batch_alter_table("certificate_authorities") as batch:
        batch.drop_column("retired_at")
        batch.drop_column("superseded_at")
