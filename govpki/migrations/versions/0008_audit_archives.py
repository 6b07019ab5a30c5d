"""audit archives: signed segments of the audit log, and the only way entries leave it

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22 15:20:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_BIG = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

# An entry may be deleted only once an archive row covers it (and archive rows
# themselves are append-only), so the one way out of audit_log is the archival path.
_SQLITE_GUARD = (
    "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
    "WHEN NOT EXISTS (SELECT 1 FROM audit_archives WHERE OLD.seq BETWEEN first_seq AND last_seq) "
    "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused (entry not archived)'); END"
)
_PG_GUARD_FUNCTION = (
    "CREATE FUNCTION govpki_audit_delete_guard() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN "
    "IF NOT EXISTS (SELECT 1 FROM audit_archives WHERE OLD.seq BETWEEN first_seq AND last_seq) THEN "
    "RAISE EXCEPTION 'audit_log is append-only: DELETE refused (entry % not archived)', OLD.seq; "
    "END IF; RETURN OLD; END $$"
)


def upgrade() -> None:
    op.create_table(
        "audit_archives",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("first_seq", _BIG, nullable=False),
        sa.Column("last_seq", _BIG, nullable=False),
        sa.Column("first_prev_hash", sa.String(length=64), nullable=False),
        sa.Column("last_hash", sa.String(length=64), nullable=False),
        sa.Column("entries", _BIG, nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("file_name", sa.String(length=200), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("public_key_der", sa.LargeBinary(), nullable=False),
        sa.Column("signed_data", sa.LargeBinary(), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_archives")),
        sa.UniqueConstraint("first_seq", name=op.f("uq_audit_archives_first_seq")),
        sa.UniqueConstraint("last_seq", name=op.f("uq_audit_archives_last_seq")),
    )
    if op.get_bind().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER audit_archives_no_{verb.lower()} BEFORE {verb} ON audit_archives "
                f"BEGIN SELECT RAISE(ABORT, 'audit_archives is append-only: {verb} refused'); END"
            )
        op.execute("DROP TRIGGER audit_log_no_delete")
        op.execute(_SQLITE_GUARD)
    else:  # govpki_refuse_change() comes from migration 0001
        op.execute(
            "CREATE TRIGGER audit_archives_append_only BEFORE UPDATE OR DELETE ON audit_archives "
            "FOR EACH ROW EXECUTE FUNCTION govpki_refuse_change()"
        )
        op.execute(
            "CREATE TRIGGER audit_archives_no_truncate BEFORE TRUNCATE ON audit_archives "
            "FOR EACH STATEMENT EXECUTE FUNCTION govpki_refuse_change()"
        )
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION govpki_refuse_change()"
        )
        op.execute(_PG_GUARD_FUNCTION)
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION govpki_audit_delete_guard()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TRIGGER audit_log_no_delete")
        op.execute(
            "CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only: DELETE refused'); END"
        )
    else:
        op.execute("DROP TRIGGER audit_log_no_delete ON audit_log")
        op.execute("DROP FUNCTION govpki_audit_delete_guard()")
        op.execute("DROP TRIGGER audit_log_append_only ON audit_log")
        op.execute(
            "CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log "
            "FOR EACH ROW EXECUTE FUNCTION govpki_refuse_change()"
        )
        op.execute("DROP TRIGGER IF EXISTS audit_archives_append_only ON audit_archives")
        op.execute("DROP TRIGGER IF EXISTS audit_archives_no_truncate ON audit_archives")
    op.drop_table("audit_archives")
