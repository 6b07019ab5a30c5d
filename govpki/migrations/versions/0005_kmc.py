"""key-management centre: storage keys, escrowed keys, recoveries; key_recovery_officer role

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 14:50:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OLD_ROLES = "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator')"
NEW_ROLES = "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator', 'key_recovery_officer')"


def _roles(check: str) -> None:
    """Batch mode: SQLite rebuilds ``accounts`` with the new CHECK; PostgreSQL alters in place.
    SQLite drops the old table while ``api_tokens.owner_id`` points at it, so foreign keys are
    off for the rebuild (pysqlite runs these statements outside a transaction, where the
    pragma takes effect) and checked afterwards."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys = OFF")
    try:
        with op.batch_alter_table("accounts", schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f("ck_accounts_role"), type_="check")
            batch_op.create_check_constraint(batch_op.f("ck_accounts_role"), check)
    finally:
        if sqlite:
            op.execute("PRAGMA foreign_keys = ON")
    if sqlite and op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
        raise RuntimeError("rebuilding accounts broke a foreign key (PRAGMA foreign_key_check)")


def upgrade() -> None:
    _roles(NEW_ROLES)
    op.create_table(
        "kmc_storage_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kmc_storage_keys")),
        sa.UniqueConstraint("key_handle", name=op.f("uq_kmc_storage_keys_key_handle")),
    )
    op.create_table(
        "escrowed_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_ref", sa.String(length=32), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.String(length=20), nullable=False),
        sa.Column("spki_sha256", sa.String(length=64), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("storage_key_id", sa.Integer(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("cert_serial", sa.String(length=42), nullable=False),
        sa.ForeignKeyConstraint(
            ["storage_key_id"], ["kmc_storage_keys.id"], name=op.f("fk_escrowed_keys_storage_key_id_kmc_storage_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_escrowed_keys")),
        sa.UniqueConstraint("key_ref", name=op.f("uq_escrowed_keys_key_ref")),
    )
    with op.batch_alter_table("escrowed_keys", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_escrowed_keys_cert_serial"), ["cert_serial"], unique=False)
        batch_op.create_index(batch_op.f("ix_escrowed_keys_spki_sha256"), ["spki_sha256"], unique=False)
    op.create_table(
        "kmc_recovery_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("escrow_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=20), nullable=False),
        sa.Column("case_reference", sa.String(length=200), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("required_approvals", sa.Integer(), nullable=False),
        sa.Column("requester", sa.String(length=100), nullable=False),
        sa.Column("requested_by", sa.String(length=200), nullable=False),
        sa.Column("requested_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("released_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("released_by", sa.String(length=200), nullable=True),
        sa.CheckConstraint("kind IN ('subscriber', 'judicial')", name=op.f("ck_kmc_recovery_requests_kind")),
        sa.CheckConstraint(
            "state IN ('pending', 'approved', 'rejected', 'released')", name=op.f("ck_kmc_recovery_requests_state")
        ),
        sa.CheckConstraint(
            "kind <> 'judicial' OR case_reference IS NOT NULL", name=op.f("ck_kmc_recovery_requests_judicial_case")
        ),
        sa.ForeignKeyConstraint(
            ["escrow_id"], ["escrowed_keys.id"], name=op.f("fk_kmc_recovery_requests_escrow_id_escrowed_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kmc_recovery_requests")),
    )
    with op.batch_alter_table("kmc_recovery_requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_kmc_recovery_requests_escrow_id"), ["escrow_id"], unique=False)
    op.create_table(
        "kmc_recovery_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("officer", sa.String(length=100), nullable=False),
        sa.Column("officer_name", sa.String(length=200), nullable=False),
        sa.Column("decision", sa.String(length=10), nullable=False),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("decided_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("decision IN ('approve', 'reject')", name=op.f("ck_kmc_recovery_decisions_decision")),
        sa.ForeignKeyConstraint(
            ["request_id"],
            ["kmc_recovery_requests.id"],
            name=op.f("fk_kmc_recovery_decisions_request_id_kmc_recovery_requests"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_kmc_recovery_decisions")),
        sa.UniqueConstraint("request_id", "officer", name="uq_kmc_recovery_decisions_request_officer"),
    )


def downgrade() -> None:
    op.drop_table("kmc_recovery_decisions")
    with op.batch_alter_table("kmc_recovery_requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_kmc_recovery_requests_escrow_id"))
    op.drop_table("kmc_recovery_requests")
    with op.batch_alter_table("escrowed_keys", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_escrowed_keys_spki_sha256"))
        batch_op.drop_index(batch_op.f("ix_escrowed_keys_cert_serial"))
    op.drop_table("escrowed_keys")
    op.drop_table("kmc_storage_keys")
    _roles(OLD_ROLES)
