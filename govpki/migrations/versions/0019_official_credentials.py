"""Officials' second way in (password + TOTP): ``official_credentials`` — one per official,
a sign-in name unique among officials (and, checked by the services, staff user names),
an argon2id password hash, a sealed TOTP secret and the serial of the certificate the
set-up session was signed in with

Revision ID: 0019
Revises: 0018
Create Date: 2026-11-22 23:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

When = govpki.db.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "official_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("official_id", sa.Integer(), nullable=False),
        sa.Column("login_name", sa.String(length=64), nullable=False),
        sa.Column("password_hash", sa.Text(), nullable=False),
        sa.Column("totp_key_id", sa.Integer(), nullable=False),
        sa.Column("totp_secret", sa.LargeBinary(), nullable=False),
        sa.Column("totp_last_step", sa.BigInteger(), nullable=True),
        sa.Column("set_up_with", sa.String(length=42), nullable=False),
        sa.Column("created_at", When, nullable=False),
        sa.Column("updated_at", When, nullable=False),
        sa.Column("enabled_at", When, nullable=True),
        sa.CheckConstraint(
            "enabled_at IS NULL OR totp_secret IS NOT NULL", name=op.f("ck_official_credentials_enabled_totp")
        ),
        sa.ForeignKeyConstraint(
            ["official_id"],
            ["officials.id"],
            name=op.f("fk_official_credentials_official_id_officials"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["totp_key_id"], ["totp_keys.id"], name=op.f("fk_official_credentials_totp_key_id_totp_keys")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_official_credentials")),
        sa.UniqueConstraint("login_name", name=op.f("uq_official_credentials_login_name")),
        sa.UniqueConstraint("official_id", name=op.f("uq_official_credentials_official_id")),
    )


def downgrade() -> None:
    op.drop_table("official_credentials")
