"""subscribers (officials with encrypted ID numbers, services) and RA requests with their history

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-25 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subscriber_data_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key_store", sa.String(length=20), nullable=False),
        sa.Column("key_handle", sa.String(length=200), nullable=False),
        sa.Column("wrapped_hmac_key", sa.LargeBinary(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_data_keys")),
    )
    op.create_table(
        "officials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefecture_code", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("id_number_hash", sa.String(length=64), nullable=False),
        sa.Column("id_number_encrypted", sa.LargeBinary(), nullable=False),
        sa.Column("id_number_masked", sa.String(length=18), nullable=False),
        sa.Column("data_key_id", sa.Integer(), nullable=False),
        sa.Column("gender", sa.String(length=6), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("title", sa.String(length=64), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("email", sa.String(length=254), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("gender IN ('male', 'female')", name=op.f("ck_officials_gender")),
        sa.ForeignKeyConstraint(
            ["data_key_id"], ["subscriber_data_keys.id"], name=op.f("fk_officials_data_key_id_subscriber_data_keys")
        ),
        sa.ForeignKeyConstraint(
            ["prefecture_code"], ["prefectures.code"], name=op.f("fk_officials_prefecture_code_prefectures")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_officials")),
        sa.UniqueConstraint("id_number_hash", name=op.f("uq_officials_id_number_hash")),
    )
    op.create_index(op.f("ix_officials_prefecture_code"), "officials", ["prefecture_code"], unique=False)

    op.create_table(
        "subscriber_services",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("prefecture_code", sa.String(length=12), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("department", sa.String(length=64), nullable=False),
        sa.Column("host_names", sa.Text(), nullable=False),
        sa.Column("ip_addresses", sa.Text(), nullable=False),
        sa.Column("responsible_official_id", sa.Integer(), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["prefecture_code"], ["prefectures.code"], name=op.f("fk_subscriber_services_prefecture_code_prefectures")
        ),
        sa.ForeignKeyConstraint(
            ["responsible_official_id"],
            ["officials.id"],
            name=op.f("fk_subscriber_services_responsible_official_id_officials"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subscriber_services")),
        sa.UniqueConstraint("prefecture_code", "name", name="uq_subscriber_services_name"),
    )
    op.create_index(
        op.f("ix_subscriber_services_prefecture_code"), "subscriber_services", ["prefecture_code"], unique=False
    )
    op.create_index(
        op.f("ix_subscriber_services_responsible_official_id"),
        "subscriber_services",
        ["responsible_official_id"],
        unique=False,
    )

    op.create_table(
        "ra_requests",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("state", sa.String(length=10), nullable=False),
        sa.Column("prefecture_code", sa.String(length=12), nullable=False),
        sa.Column("official_id", sa.Integer(), nullable=True),
        sa.Column("service_id", sa.Integer(), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("csr_pem", sa.Text(), nullable=True),
        sa.Column("csr_spki_sha256", sa.String(length=64), nullable=True),
        sa.Column("target_serial", sa.String(length=42), nullable=True),
        sa.Column("reason", sa.String(length=40), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("submitted_by", sa.String(length=200), nullable=False),
        sa.Column("submitter_key", sa.String(length=200), nullable=False),
        sa.Column("submitted_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_by", sa.String(length=200), nullable=True),
        sa.Column("decided_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("completed_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("failure", sa.Text(), nullable=True),
        sa.Column("certificate_serial", sa.String(length=42), nullable=True),
        sa.Column("encryption_serial", sa.String(length=42), nullable=True),
        sa.Column("escrow_id", sa.Integer(), nullable=True),
        sa.CheckConstraint("kind != 'revoke' OR reason IS NOT NULL", name=op.f("ck_ra_requests_reason_needed")),
        sa.CheckConstraint("kind = 'new' OR target_serial IS NOT NULL", name=op.f("ck_ra_requests_target_needed")),
        sa.CheckConstraint("kind IN ('new', 'renew', 'suspend', 'resume', 'revoke')", name=op.f("ck_ra_requests_kind")),
        sa.CheckConstraint(
            "state IN ('submitted', 'approved', 'rejected', 'completed', 'failed')", name=op.f("ck_ra_requests_state")
        ),
        sa.CheckConstraint("(official_id IS NULL) != (service_id IS NULL)", name=op.f("ck_ra_requests_one_subscriber")),
        sa.ForeignKeyConstraint(["official_id"], ["officials.id"], name=op.f("fk_ra_requests_official_id_officials")),
        sa.ForeignKeyConstraint(
            ["prefecture_code"], ["prefectures.code"], name=op.f("fk_ra_requests_prefecture_code_prefectures")
        ),
        sa.ForeignKeyConstraint(
            ["service_id"], ["subscriber_services.id"], name=op.f("fk_ra_requests_service_id_subscriber_services")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ra_requests")),
    )
    op.create_index(op.f("ix_ra_requests_certificate_serial"), "ra_requests", ["certificate_serial"], unique=False)
    op.create_index(op.f("ix_ra_requests_csr_spki_sha256"), "ra_requests", ["csr_spki_sha256"], unique=False)
    op.create_index(op.f("ix_ra_requests_encryption_serial"), "ra_requests", ["encryption_serial"], unique=False)
    op.create_index(op.f("ix_ra_requests_official_id"), "ra_requests", ["official_id"], unique=False)
    op.create_index("ix_ra_requests_prefecture_state", "ra_requests", ["prefecture_code", "state"], unique=False)
    op.create_index(op.f("ix_ra_requests_service_id"), "ra_requests", ["service_id"], unique=False)

    op.create_table(
        "ra_request_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.Integer(), nullable=False),
        sa.Column("at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=10), nullable=False),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "action IN ('submit', 'approve', 'reject', 'complete', 'fail')", name=op.f("ck_ra_request_events_action")
        ),
        sa.ForeignKeyConstraint(
            ["request_id"], ["ra_requests.id"], name=op.f("fk_ra_request_events_request_id_ra_requests")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ra_request_events")),
    )
    op.create_index(op.f("ix_ra_request_events_request_id"), "ra_request_events", ["request_id"], unique=False)


def downgrade() -> None:
    op.drop_table("ra_request_events")
    op.drop_table("ra_requests")
    op.drop_table("subscriber_services")
    op.drop_table("officials")
    op.drop_table("subscriber_data_keys")
