"""certificate prefecture, contact and renewal link; expiry notices

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23 09:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# (column, type, referred table.column) added to certificates, each nullable with an index
NEW_COLUMNS = (
    ("prefecture_code", "VARCHAR(12)", "prefectures", "code"),
    ("contact_email", "VARCHAR(254)", None, None),
    ("renewed_from_id", "INTEGER", "certificates", "id"),
)


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a referencing column in place (ALTER TABLE ... REFERENCES); batch mode would
        # copy the whole certificates table, which other tables reference, on a live instance.
        for column, type_, table, ref in NEW_COLUMNS:
            references = f" REFERENCES {table} ({ref})" if table else ""
            op.execute(f"ALTER TABLE certificates ADD COLUMN {column} {type_}{references}")
    else:
        op.add_column("certificates", sa.Column("prefecture_code", sa.String(length=12), nullable=True))
        op.add_column("certificates", sa.Column("contact_email", sa.String(length=254), nullable=True))
        op.add_column("certificates", sa.Column("renewed_from_id", sa.Integer(), nullable=True))
        op.create_foreign_key(
            op.f("fk_certificates_prefecture_code_prefectures"),
            "certificates",
            "prefectures",
            ["prefecture_code"],
            ["code"],
        )
        op.create_foreign_key(
            op.f("fk_certificates_renewed_from_id_certificates"),
            "certificates",
            "certificates",
            ["renewed_from_id"],
            ["id"],
        )
    op.create_index(op.f("ix_certificates_prefecture_code"), "certificates", ["prefecture_code"], unique=False)
    op.create_index(op.f("ix_certificates_renewed_from_id"), "certificates", ["renewed_from_id"], unique=False)

    op.create_table(
        "expiry_notices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("threshold_days", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(length=10), nullable=False),
        sa.Column("recipient", sa.String(length=254), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("sent_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.CheckConstraint("channel IN ('contact', 'ra')", name=op.f("ck_expiry_notices_channel")),
        sa.CheckConstraint("state IN ('sent', 'failed')", name=op.f("ck_expiry_notices_state")),
        sa.CheckConstraint("state != 'sent' OR sent_at IS NOT NULL", name=op.f("ck_expiry_notices_sent_has_time")),
        sa.ForeignKeyConstraint(
            ["certificate_id"], ["certificates.id"], name=op.f("fk_expiry_notices_certificate_id_certificates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expiry_notices")),
        sa.UniqueConstraint("certificate_id", "threshold_days", "channel", name="uq_expiry_notices_once"),
    )
    op.create_index(op.f("ix_expiry_notices_certificate_id"), "expiry_notices", ["certificate_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_expiry_notices_certificate_id"), table_name="expiry_notices")
    op.drop_table("expiry_notices")
    op.drop_index(op.f("ix_certificates_renewed_from_id"), table_name="certificates")
    op.drop_index(op.f("ix_certificates_prefecture_code"), table_name="certificates")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        if op.get_bind().dialect.name != "sqlite":
            batch_op.drop_constraint(op.f("fk_certificates_renewed_from_id_certificates"), type_="foreignkey")
            batch_op.drop_constraint(op.f("fk_certificates_prefecture_code_prefectures"), type_="foreignkey")
        batch_op.drop_column("renewed_from_id")
        batch_op.drop_column("contact_email")
        batch_op.drop_column("prefecture_code")
