"""access-decision policy: application roles, permissions with attribute conditions,
assignments with a scope, subjects and the policy version counter

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-26 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import govpki.db

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "policy_subjects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("prefecture", sa.String(length=32), nullable=True),
        sa.Column("department", sa.String(length=128), nullable=True),
        sa.Column("title", sa.String(length=128), nullable=True),
        sa.Column("updated_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_subjects")),
        sa.UniqueConstraint("subject_id", name=op.f("uq_policy_subjects_subject_id")),
    )
    op.create_table(
        "policy_roles",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("application", sa.String(length=48), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=500), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_roles")),
        sa.UniqueConstraint("application", "name", name="uq_policy_roles_application_name"),
    )
    op.create_index(op.f("ix_policy_roles_application"), "policy_roles", ["application"], unique=False)
    op.create_table(
        "policy_permissions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("conditions", sa.Text(), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["policy_roles.id"],
            name=op.f("fk_policy_permissions_role_id_policy_roles"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_permissions")),
    )
    op.create_index(op.f("ix_policy_permissions_role_id"), "policy_permissions", ["role_id"], unique=False)
    op.create_table(
        "policy_assignments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("role_id", sa.Integer(), nullable=False),
        sa.Column("scope_prefecture", sa.String(length=32), nullable=True),
        sa.Column("scope_department", sa.String(length=128), nullable=True),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("created_at", govpki.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["role_id"],
            ["policy_roles.id"],
            name=op.f("fk_policy_assignments_role_id_policy_roles"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["subject_id"],
            ["policy_subjects.id"],
            name=op.f("fk_policy_assignments_subject_id_policy_subjects"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_assignments")),
    )
    op.create_index(op.f("ix_policy_assignments_role_id"), "policy_assignments", ["role_id"], unique=False)
    op.create_index(op.f("ix_policy_assignments_subject_id"), "policy_assignments", ["subject_id"], unique=False)
    op.create_table(
        "policy_version",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("version", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("updated_at", govpki.db.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_policy_version")),
    )
    op.execute(sa.text("INSERT INTO policy_version (id, version) VALUES (1, 0)"))


def downgrade() -> None:
    op.drop_table("policy_version")
    op.drop_index(op.f("ix_policy_assignments_subject_id"), table_name="policy_assignments")
    op.drop_index(op.f("ix_policy_assignments_role_id"), table_name="policy_assignments")
    op.drop_table("policy_assignments")
    op.drop_index(op.f("ix_policy_permissions_role_id"), table_name="policy_permissions")
    op.drop_table("policy_permissions")
    op.drop_index(op.f("ix_policy_roles_application"), table_name="policy_roles")
    op.drop_table("policy_roles")
    op.drop_table("policy_subjects")
