"""revocation, CRLs and OCSP

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 12:33:04.465219
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ca_status",
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("status_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("crl_number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["certificate_authorities.id"], name=op.f("fk_ca_status_ca_id_certificate_authorities")
        ),
        sa.PrimaryKeyConstraint("ca_id", name=op.f("pk_ca_status")),
    )
    op.create_table(
        "crls",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("base_number", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=True),
        sa.Column("status_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("this_update", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_update", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("entries", sa.Integer(), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind = 'full' OR base_number IS NOT NULL", name=op.f("ck_crls_delta_has_base")),
        sa.CheckConstraint("kind IN ('full', 'delta')", name=op.f("ck_crls_kind")),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["certificate_authorities.id"], name=op.f("fk_crls_ca_id_certificate_authorities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_crls")),
        sa.UniqueConstraint("ca_id", "number", name="uq_crls_ca_id_number"),
    )
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.create_index("ix_crls_ca_kind_number", ["ca_id", "kind", "number"], unique=False)

    op.create_table(
        "ocsp_responders",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("certificate_id", sa.Integer(), nullable=False),
        sa.Column("cert_der", sa.LargeBinary(), nullable=False),
        sa.Column("not_before", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("not_after", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["certificate_authorities.id"], name=op.f("fk_ocsp_responders_ca_id_certificate_authorities")
        ),
        sa.ForeignKeyConstraint(
            ["certificate_id"], ["certificates.id"], name=op.f("fk_ocsp_responders_certificate_id_certificates")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ocsp_responders")),
    )
    with op.batch_alter_table("ocsp_responders", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ocsp_responders_ca_id"), ["ca_id"], unique=False)

    op.create_table(
        "ocsp_responses",
        sa.Column("ca_id", sa.Integer(), nullable=False),
        sa.Column("serial", sa.String(length=42), nullable=False),
        sa.Column("hash_algorithm", sa.String(length=10), nullable=False),
        sa.Column("status_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("responder_id", sa.Integer(), nullable=False),
        sa.Column("this_update", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("next_update", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("der", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ca_id"], ["certificate_authorities.id"], name=op.f("fk_ocsp_responses_ca_id_certificate_authorities")
        ),
        sa.ForeignKeyConstraint(
            ["responder_id"], ["ocsp_responders.id"], name=op.f("fk_ocsp_responses_responder_id_ocsp_responders")
        ),
        sa.PrimaryKeyConstraint("ca_id", "serial", "hash_algorithm", name=op.f("pk_ocsp_responses")),
    )
    with op.batch_alter_table("ocsp_responses", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_ocsp_responses_next_update"), ["next_update"], unique=False)

    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.add_column(sa.Column("revocation_reason", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("revoked_at", govpki.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("invalidity_date", govpki.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("released_at", govpki.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("released_hold_at", govpki.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column(
                "status_seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False, server_default="0"
            )
        )
        batch_op.create_check_constraint(
            op.f("ck_certificates_revoked_has_time"), "(revocation_reason IS NULL) = (revoked_at IS NULL)"
        )
        batch_op.create_index("ix_certificates_ca_revoked", ["ca_id", "revocation_reason"], unique=False)
        batch_op.create_index("ix_certificates_ca_status_seq", ["ca_id", "status_seq"], unique=False)

    # every existing CA gets its counters row
    op.execute(
        sa.text(
            "INSERT INTO ca_status (ca_id, status_seq, crl_number, updated_at) "
            "SELECT id, 0, 0, created_at FROM certificate_authorities"
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index("ix_certificates_ca_status_seq")
        batch_op.drop_index("ix_certificates_ca_revoked")
        batch_op.drop_constraint(op.f("ck_certificates_revoked_has_time"), type_="check")
        batch_op.drop_column("status_seq")
        batch_op.drop_column("released_hold_at")
        batch_op.drop_column("released_at")
        batch_op.drop_column("invalidity_date")
        batch_op.drop_column("revoked_at")
        batch_op.drop_column("revocation_reason")

    with op.batch_alter_table("ocsp_responses", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ocsp_responses_next_update"))

    op.drop_table("ocsp_responses")
    with op.batch_alter_table("ocsp_responders", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ocsp_responders_ca_id"))

    op.drop_table("ocsp_responders")
    with op.batch_alter_table("crls", schema=None) as batch_op:
        batch_op.drop_index("ix_crls_ca_kind_number")

    op.drop_table("crls")
    op.drop_table("ca_status")
