"""OpenID Connect provider: applications become OIDC clients (client type, exact
redirect URIs, post-logout redirect URIs; public clients have no secret), authorization
codes and tokens stored as SHA-256 digests

Revision ID: 0015
Revises: 0014
Create Date: 2026-11-28 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

When = govpki.db.UTCDateTime(timezone=True)


def _alter_applications(upgrade: bool) -> None:
    """Batch mode: SQLite rebuilds ``applications`` (foreign keys off meanwhile, checked
    afterwards, as in 0010); PostgreSQL alters in place."""
    sqlite = op.get_bind().dialect.name == "sqlite"
    if sqlite:
        op.execute("PRAGMA foreign_keys = OFF")
    try:
        with op.batch_alter_table("applications", schema=None) as batch_op:
            if upgrade:
                batch_op.add_column(
                    sa.Column(
                        "client_type", sa.String(length=12), server_default=sa.text("'confidential'"), nullable=False
                    )
                )
                batch_op.add_column(
                    sa.Column("redirect_uris", sa.Text(), server_default=sa.text("'[]'"), nullable=False)
                )
                batch_op.add_column(
                    sa.Column("post_logout_redirect_uris", sa.Text(), server_default=sa.text("'[]'"), nullable=False)
                )
                batch_op.alter_column("secret_sha256", existing_type=sa.String(length=64), nullable=True)
                batch_op.create_check_constraint(
                    batch_op.f("ck_applications_client_type"), "client_type IN ('confidential', 'public')"
                )
                batch_op.create_check_constraint(
                    batch_op.f("ck_applications_confidential_secret"),
                    "client_type = 'public' OR secret_sha256 IS NOT NULL",
                )
            else:
                batch_op.drop_constraint(batch_op.f("ck_applications_confidential_secret"), type_="check")
                batch_op.drop_constraint(batch_op.f("ck_applications_client_type"), type_="check")
                batch_op.alter_column("secret_sha256", existing_type=sa.String(length=64), nullable=False)
                batch_op.drop_column("post_logout_redirect_uris")
                batch_op.drop_column("redirect_uris")
                batch_op.drop_column("client_type")
    finally:
        if sqlite:
            op.execute("PRAGMA foreign_keys = ON")
    if sqlite and op.get_bind().exec_driver_sql("PRAGMA foreign_key_check").first() is not None:
        raise RuntimeError("rebuilding applications broke a foreign key (PRAGMA foreign_key_check)")


def upgrade() -> None:
    _alter_applications(True)
    op.create_table(
        "oidc_codes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("code_sha256", sa.String(length=64), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("claims", sa.Text(), nullable=False),
        sa.Column("redirect_uri", sa.String(length=2000), nullable=False),
        sa.Column("scope", sa.String(length=500), nullable=False),
        sa.Column("nonce", sa.String(length=255), nullable=True),
        sa.Column("code_challenge", sa.String(length=128), nullable=True),
        sa.Column("code_challenge_method", sa.String(length=10), nullable=True),
        sa.Column("created_at", When, nullable=False),
        sa.Column("expires_at", When, nullable=False),
        sa.Column("used_at", When, nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name=op.f("fk_oidc_codes_application_id_applications")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_codes")),
        sa.UniqueConstraint("code_sha256", name=op.f("uq_oidc_codes_code_sha256")),
    )
    op.create_index(op.f("ix_oidc_codes_application_id"), "oidc_codes", ["application_id"], unique=False)
    op.create_table(
        "oidc_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application_id", sa.Integer(), nullable=False),
        sa.Column("subject", sa.String(length=128), nullable=False),
        sa.Column("claims", sa.Text(), nullable=False),
        sa.Column("scope", sa.String(length=500), nullable=False),
        sa.Column("access_sha256", sa.String(length=64), nullable=False),
        sa.Column("refresh_sha256", sa.String(length=64), nullable=True),
        sa.Column("code_id", sa.Integer(), nullable=True),
        sa.Column("family_id", sa.Integer(), nullable=True),
        sa.Column("issued_at", When, nullable=False),
        sa.Column("access_expires_at", When, nullable=False),
        sa.Column("refresh_expires_at", When, nullable=True),
        sa.Column("refreshed_at", When, nullable=True),
        sa.Column("revoked_at", When, nullable=True),
        sa.Column("revoked_reason", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["application_id"], ["applications.id"], name=op.f("fk_oidc_tokens_application_id_applications")
        ),
        sa.ForeignKeyConstraint(["code_id"], ["oidc_codes.id"], name=op.f("fk_oidc_tokens_code_id_oidc_codes")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_oidc_tokens")),
        sa.UniqueConstraint("access_sha256", name=op.f("uq_oidc_tokens_access_sha256")),
        sa.UniqueConstraint("refresh_sha256", name=op.f("uq_oidc_tokens_refresh_sha256")),
    )
    op.create_index(op.f("ix_oidc_tokens_application_id"), "oidc_tokens", ["application_id"], unique=False)
    op.create_index(op.f("ix_oidc_tokens_code_id"), "oidc_tokens", ["code_id"], unique=False)
    op.create_index(op.f("ix_oidc_tokens_family_id"), "oidc_tokens", ["family_id"], unique=False)
    op.create_index(op.f("ix_oidc_tokens_subject"), "oidc_tokens", ["subject"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_oidc_tokens_subject"), table_name="oidc_tokens")
    op.drop_index(op.f("ix_oidc_tokens_family_id"), table_name="oidc_tokens")
    op.drop_index(op.f("ix_oidc_tokens_code_id"), table_name="oidc_tokens")
    op.drop_index(op.f("ix_oidc_tokens_application_id"), table_name="oidc_tokens")
    op.drop_table("oidc_tokens")
    op.drop_index(op.f("ix_oidc_codes_application_id"), table_name="oidc_codes")
    op.drop_table("oidc_codes")
    _alter_applications(False)
