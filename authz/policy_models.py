"""The access-decision policy: application roles, what each role grants, who holds
which role (with a scope), and the attributes of the subjects decisions are about.

* ``policy_roles``: a role of one application (``application`` is the application's
  registered name; the policy may be written before the application registers).
* ``policy_permissions``: a rule — the role grants ``action`` on ``resource_type`` when
  every one of its ``conditions`` holds (a JSON list of a closed set of condition kinds,
  validated by :mod:`authz.policy_schema` before it is stored).
* ``policy_assignments``: a subject holds a role, optionally only for resources of one
  prefecture and/or department (the resource's ``prefecture`` / ``department`` attribute).
* ``policy_subjects``: the people decisions are about (a stable subject id: an account
  user name or an official's id; later the OIDC ``sub``) and their attributes.
* ``policy_version``: one row, bumped in the same transaction as every policy change;
  deciders reload their compiled snapshot when it moved.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import BigInteger, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from govpki.db import Base, UTCDateTime


class PolicySubject(Base):
    __tablename__ = "policy_subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[str] = mapped_column(String(128), unique=True)
    prefecture: Mapped[str | None] = mapped_column(String(32))
    department: Mapped[str | None] = mapped_column(String(128))
    title: Mapped[str | None] = mapped_column(String(128))
    updated_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class PolicyRole(Base):
    __tablename__ = "policy_roles"
    __table_args__ = (UniqueConstraint("application", "name", name="uq_policy_roles_application_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    application: Mapped[str] = mapped_column(String(48), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class PolicyPermission(Base):
    __tablename__ = "policy_permissions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("policy_roles.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str] = mapped_column(String(64))
    conditions: Mapped[str] = mapped_column(Text())  # canonical JSON list, validated before storing
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class PolicyAssignment(Base):
    __tablename__ = "policy_assignments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("policy_subjects.id", ondelete="CASCADE"), index=True)
    role_id: Mapped[int] = mapped_column(ForeignKey("policy_roles.id", ondelete="CASCADE"), index=True)
    scope_prefecture: Mapped[str | None] = mapped_column(String(32))
    scope_department: Mapped[str | None] = mapped_column(String(128))
    created_by: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[_dt.datetime] = mapped_column(UTCDateTime())


class PolicyVersion(Base):
    __tablename__ = "policy_version"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    version: Mapped[int] = mapped_column(BigInteger().with_variant(Integer(), "sqlite"))
    updated_at: Mapped[_dt.datetime | None] = mapped_column(UTCDateTime())
