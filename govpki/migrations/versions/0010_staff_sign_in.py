"""RA staff accounts (ra_clerk, ra_officer in one prefecture), TOTP second factor, sign-in lock-out

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-25 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

OLD_ROLES = "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator', 'key_recovery_officer')"
NEW_ROLES = (
    "role IN ('system_admin', 'security_admin', 'security_auditor', 'ca_operator', 'key_recovery_officer', "
    "'ra_clerk', 'ra_officer')"
)
RA_ROLES = "role IN ('ra_clerk', 'ra_officer')"
RA_PREFECTURE = f"({RA_ROLES} AND prefecture_code IS NOT NULL) OR (NOT {RA_ROLES} AND prefecture_code IS NULL)"
TOTP_ENROLLED = "totp_enrolled_at IS NULL OR (totp_secret IS NOT NULL AND totp_key_id IS NOT NULL)"
When = govpki.db.UTCDateTime(timezone=True)


def _rebuild_accounts(upgrade: bool) -> None:
    """Batch mode: SQLite rebuilds ``accounts``; PostgreSQL alters in place. As in 0005,
    foreign keys are off on SQLite while the table is rebuilt and checked afterwards."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys = OFF")
    try:
        with op.batch_alter_table("accounts", schema=None) as batch_op:
            batch_op.drop_constraint(batch_op.f("ck_accounts_role"), type_="check")
            if upgrade:
                batch_op.add_column(sa.Column("prefecture_code", sa.String(length=12), nullable=True))
                batch_op.add_column(sa.Column("totp_key_id", sa.Integer(), nullable=True))
                batch_op.add_column(sa.Column("totp_secret", sa.LargeBinary(), nullable=True))
                batch_op.add_column(sa.Column("totp_enrolled_at", When, nullable=True))
                batch_op.add_column(sa.Column("totp_last_step", sa.BigInteger(), nullable=True))
                batch_op.create_foreign_key(
                    batch_op.f("fk_accounts_prefecture_code_prefectures"), "prefectures", ["prefecture_code"], ["code"]
                )
                batch_op.create_foreign_key(
                    batch_op.f("fk_accounts_totp_key_id_totp_keys"), "totp_keys", ["totp_key_id"], ["id"]
                )
                batch_op.create_check_constraint(batch_op.f("ck_accounts_role"), NEW_ROLES)
                batch_op.create_check_constraint(batch_op.f("ck_accounts_ra_prefecture"), RA_PREFECTURE)
                batch_op.create_check_constraint(batch_op.f("ck_accounts_totp_enrolled"), TOTP_ENROLLED)
            else:
                batch_op.drop_constraint(batch_op.f("ck_accounts_totp_enrolled"), type_="check")
                batch_op.drop_constraint(batch_op.f("ck_accounts_ra_prefecture"), type_="check")
                batch_op.drop_constraint(batch_op.f("fk_accounts_totp_key_id_totp_keys"), type_="foreignkey")
                batch_op.drop_constraint(batch_op.f("fk_accounts_prefecture_code_prefectures"), type_="foreignkey")
                batch_op.drop_column("totp_last_step")
                batch_op.drop_column("totp_enrolled_at")
                batch_op.drop_column("totp_secret")
                batch_op.drop_column("totp_key_id")
                batch_op.drop_column("prefecture_code")
                batch_op.create_check_constraint(batch_op.f("ck_accounts_role"), OLD_ROLES)
    finally:
        if sqlite:
            op.execute("PRAGMA foreign_keys = ON")
    if sqlite and op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
        raise RuntimeError("rebuilding accounts broke a foreign key (PRAGMA foreign_key_check)")


def upgrade() -> None:
    op.create_table(
        "totp_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_totp_keys")),
        sa.UniqueConstraint("key_handle", name=op.f("uq_totp_keys_key_handle")),
    )
    op.create_table(
        "sign_in_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("failed_at", When, nullable=False),
        sa.Column("factor", sa.String(length=10), nullable=False),
        sa.Column("source", sa.String(length=100), nullable=False),
        sa.CheckConstraint("factor IN ('password', 'totp')", name=op.f("ck_sign_in_failures_factor")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_failures")),
    )
    with op.batch_alter_table("sign_in_failures", schema=None) as batch_op:
        batch_op.create_index("ix_sign_in_failures_username_failed_at", ["username", "failed_at"], unique=False)
    op.create_table(
        "sign_in_locks",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("locked_at", When, nullable=False),
        sa.Column("locked_until", When, nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sign_in_locks")),
    )
    with op.batch_alter_table("sign_in_locks", schema=None) as batch_op:
        batch_op.create_index("ix_sign_in_locks_username_locked_until", ["username", "locked_until"], unique=False)
    _rebuild_accounts(upgrade=True)


def downgrade() -> None:
    _rebuild_accounts(upgrade=False)
    with op.batch_alter_table("sign_in_locks", schema=None) as batch_op:
        batch_op.drop_index("ix_sign_in_locks_username_locked_until")
    op.drop_table("sign_in_locks")
    with op.batch_alter_table("sign_in_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_sign_in_failures_username_failed_at")
    op.drop_table("sign_in_failures")
    op.drop_table("totp_keys")
