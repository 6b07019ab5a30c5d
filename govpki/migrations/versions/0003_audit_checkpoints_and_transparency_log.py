"""audit checkpoints and the transparency log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 13:54:12.699426
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("algorithm", sa.String(length=40), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("signed_data", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_checkpoints")),
        sa.UniqueConstraint("seq", name=op.f("uq_audit_checkpoints_seq")),
    )
    op.create_table(
        "audit_verifications",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("entries", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("checkpoints", sa.Integer(), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("first_bad_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_verifications")),
    )
    op.create_table(
        "tlog_tree_heads",
        sa.Column(
            "tree_size", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False
        ),
        sa.Column("root_hash", sa.String(length=64), nullable=False),
        sa.Column("timestamp", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("algorithm", sa.String(length=40), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("signed_data", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("tree_size", name=op.f("pk_tlog_tree_heads")),
    )
    op.create_table(
        "tlog_entries",
        sa.Column("idx", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("leaf", sa.LargeBinary(), nullable=False),
        sa.Column("leaf_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["certificate_authorities.id"], name=op.f("fk_tlog_entries_ca_id_certificate_authorities")
        ),
        sa.PrimaryKeyConstraint("idx", name=op.f("pk_tlog_entries")),
    )
    with op.batch_alter_table("tlog_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tlog_entries_leaf_hash"), ["leaf_hash"], unique=False)
        batch_op.create_index(batch_op.f("ix_tlog_entries_serial"), ["serial"], unique=False)

    append_only_triggers()


# Checkpoints, tree heads and log leaves are evidence: append-only like audit_log.
APPEND_ONLY = ("audit_checkpoints", "tlog_entries", "tlog_tree_heads")


def append_only_triggers() -> None:
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table in APPEND_ONLY:
        if sqlite:
            for verb in ("UPDATE", "DELETE"):
                op.execute(
                    f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                    f"BEGIN SELECT RAISE(ABORT, '{table} is append-only: {verb} refused'); END"
                )
        else:  # govpki_refuse_change() comes from migration 0001
            op.execute(
                f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION govpki_refuse_change()"
            )
            op.execute(
                f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
                "FOR EACH STATEMENT EXECUTE FUNCTION govpki_refuse_change()"
            )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        for table in APPEND_ONLY:
            op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
            op.execute(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {table}")
    with op.batch_alter_table("tlog_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tlog_entries_serial"))
        batch_op.drop_index(batch_op.f("ix_tlog_entries_leaf_hash"))

    op.drop_table("tlog_entries")
    op.drop_table("tlog_tree_heads")
    op.drop_table("audit_verifications")
    op.drop_table("audit_checkpoints")
