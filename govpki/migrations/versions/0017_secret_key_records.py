"""key records for the subscriber data key and the TOTP sealing key: two more purposes in
the CHECK of ``key_records.purpose`` (the records of existing keys are written at start-up,
``govpki init``/``serve``, audited, by the services that own the keys)

Revision ID: 0017
Revises: 0016
Create Date: 2026-11-22 22:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

OLD_PURPOSES = (
    "root",
    "issuing_ca",
    "ocsp_signing",
    "audit_signing",
    "tlog_signing",
    "token_signing",
    "kmc_storage",
    "escrowed_encryption",
)
NEW_PURPOSES = (*OLD_PURPOSES, "subscriber_data", "totp_sealing")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _purposes(values: tuple[str, ...]) -> None:
    # batch mode: SQLite rebuilds key_records (no foreign keys point at it), PostgreSQL alters in place
    with op.batch_alter_table("key_records", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("ck_key_records_purpose"), type_="check")
        batch_op.create_check_constraint(batch_op.f("ck_key_records_purpose"), _in("purpose", values))


def upgrade() -> None:
    _purposes(NEW_PURPOSES)


def downgrade() -> None:
    op.execute(f"DELETE FROM key_records WHERE purpose IN {('subscriber_data', 'totp_sealing')!r}")
    _purposes(OLD_PURPOSES)
