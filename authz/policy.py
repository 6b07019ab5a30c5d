"""Administration of the access-decision policy (security administrators only).

Every change writes its audit entry (``authz:policy:*``) and bumps the ``policy_version``
row in the caller's transaction, so deciders (:mod:`authz.decisions`) reload their
snapshot once it is committed. Services never commit.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from authz.events import AuthzEvent
from authz.policy_models import PolicyAssignment, PolicyPermission, PolicyRole, PolicySubject, PolicyVersion
from authz.policy_schema import (
    ApplicationIn,
    AssignmentIn,
    PermissionIn,
    PolicyDocument,
    RoleIn,
    SubjectIn,
    parse,
)
from govpki import audit
from govpki.clock import Clock
from govpki.errors import ConflictError, ForbiddenError, InvalidError, NotFoundError
from govpki.principal import Principal, PrincipalKind, Role

_CHUNK = 500


def conditions_json(conditions: Sequence[Any]) -> str:
    """The canonical stored form of a validated condition list."""
    return audit.canonical_json([c.model_dump(by_alias=True, mode="json") for c in conditions])


@dataclass(frozen=True)
class LoadReport:
    applications: int
    roles: int
    permissions: int
    subjects: int
    assignments: int
    version: int
    sha256: str


class PolicyService:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock

    @staticmethod
    def _require_security_admin(principal: Principal, what: str) -> None:
        if principal.kind is not PrincipalKind.SYSTEM and not principal.has(Role.SECURITY_ADMIN):
            raise ForbiddenError(f"only a security administrator may {what}")

    def _changed(
        self, session: Session, principal: Principal, action: AuthzEvent, object_id: str, details: dict[str, Any]
    ) -> int:
        version = session.execute(
            update(PolicyVersion)
            .where(PolicyVersion.id == 1)
            .values(version=PolicyVersion.version + 1, updated_at=self._clock.now())
            .returning(PolicyVersion.version)
        ).scalar_one()
        audit.record(
            session,
            principal,
            action.value,
            object_type="access_policy",
            object_id=object_id,
            details={**details, "policy_version": version},
            clock=self._clock,
        )
        return version

    def version(self, session: Session) -> int:
        return session.scalar(select(PolicyVersion.version).where(PolicyVersion.id == 1)) or 0

    # -- subjects --------------------------------------------------------------------

    def set_subject(
        self,
        session: Session,
        principal: Principal,
        subject_id: str,
        *,
        prefecture: str | None = None,
        department: str | None = None,
        title: str | None = None,
    ) -> PolicySubject:
        """Create or replace a subject's attributes (prefecture, department, title)."""
        self._require_security_admin(principal, "change the access policy")
        data = parse(SubjectIn, {"id": subject_id, "prefecture": prefecture, "department": department, "title": title})
        row = session.scalar(select(PolicySubject).where(PolicySubject.subject_id == data.id))
        if row is None:
            row = PolicySubject(subject_id=data.id)
            session.add(row)
        row.prefecture, row.department, row.title = data.prefecture, data.department, data.title
        row.updated_at = self._clock.now()
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_SUBJECT_SET,
            f"subject:{data.id}",
            {"prefecture": data.prefecture, "department": data.department, "title": data.title},
        )
        return row

    def subjects(self, session: Session) -> list[PolicySubject]:
        return list(session.scalars(select(PolicySubject).order_by(PolicySubject.subject_id)))

    # -- roles and permissions -------------------------------------------------------

    def _role(self, session: Session, application: str, name: str, field: str = "role") -> PolicyRole:
        role = session.scalar(select(PolicyRole).where(PolicyRole.application == application, PolicyRole.name == name))
        if role is None:
            raise NotFoundError(f"application {application!r} has no role {name!r}", field=field)
        return role

    def create_role(
        self, session: Session, principal: Principal, application: str, name: str, description: str = ""
    ) -> PolicyRole:
        self._require_security_admin(principal, "change the access policy")
        parse(RoleIn, {"name": name, "description": description}, prefix="")
        parse(ApplicationIn, {"name": application})
        if (
            session.scalar(select(PolicyRole.id).where(PolicyRole.application == application, PolicyRole.name == name))
            is not None
        ):
            raise ConflictError(f"application {application!r} already has a role {name!r}", field="name")
        role = PolicyRole(application=application, name=name, description=description, created_at=self._clock.now())
        session.add(role)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_ROLE_CREATE,
            f"role:{role.id}",
            {"application": application, "role": name},
        )
        return role

    def delete_role(self, session: Session, principal: Principal, application: str, name: str) -> None:
        """Delete a role with its permissions and assignments."""
        self._require_security_admin(principal, "change the access policy")
        role = self._role(session, application, name)
        session.execute(delete(PolicyAssignment).where(PolicyAssignment.role_id == role.id))
        session.execute(delete(PolicyPermission).where(PolicyPermission.role_id == role.id))
        session.delete(role)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_ROLE_DELETE,
            f"role:{role.id}",
            {"application": application, "role": name},
        )

    def roles(self, session: Session, application: str | None = None) -> list[PolicyRole]:
        query = select(PolicyRole).order_by(PolicyRole.application, PolicyRole.name)
        if application is not None:
            query = query.where(PolicyRole.application == application)
        return list(session.scalars(query))

    def add_permission(
        self,
        session: Session,
        principal: Principal,
        application: str,
        role: str,
        *,
        name: str,
        action: str,
        resource_type: str,
        conditions: Sequence[Any] = (),
    ) -> PolicyPermission:
        """A rule: ``role`` grants ``action`` on ``resource_type`` when every condition holds.
        ``conditions`` are JSON objects (``{"kind": "title_in", "titles": [...]}``, …)."""
        self._require_security_admin(principal, "change the access policy")
        data = parse(
            PermissionIn,
            {"name": name, "action": action, "resource_type": resource_type, "conditions": list(conditions)},
        )
        row = self._role(session, application, role)
        if (
            session.scalar(
                select(PolicyPermission.id).where(
                    PolicyPermission.role_id == row.id, PolicyPermission.name == data.name
                )
            )
            is not None
        ):
            raise ConflictError(f"role {role!r} already has a rule named {data.name!r}", field="name")
        perm = PolicyPermission(
            role_id=row.id,
            name=data.name,
            action=data.action,
            resource_type=data.resource_type,
            conditions=conditions_json(data.conditions),
            created_at=self._clock.now(),
        )
        session.add(perm)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_PERMISSION_ADD,
            f"rule:{perm.id}",
            {
                "application": application,
                "role": role,
                "rule": data.name,
                "action": data.action,
                "resource_type": data.resource_type,
                "conditions": json.loads(perm.conditions),
            },
        )
        return perm

    def remove_permission(self, session: Session, principal: Principal, rule_id: int) -> None:
        self._require_security_admin(principal, "change the access policy")
        perm = session.get(PolicyPermission, rule_id)
        if perm is None:
            raise NotFoundError(f"no rule #{rule_id}", field="rule")
        role = session.get(PolicyRole, perm.role_id)
        session.delete(perm)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_PERMISSION_REMOVE,
            f"rule:{rule_id}",
            {"application": role.application if role else None, "role": role.name if role else None, "rule": perm.name},
        )

    def permissions(self, session: Session, role_id: int) -> list[PolicyPermission]:
        return list(
            session.scalars(
                select(PolicyPermission).where(PolicyPermission.role_id == role_id).order_by(PolicyPermission.id)
            )
        )

    # -- assignments -----------------------------------------------------------------

    def assign(
        self,
        session: Session,
        principal: Principal,
        subject_id: str,
        application: str,
        role: str,
        *,
        prefecture: str | None = None,
        department: str | None = None,
    ) -> PolicyAssignment:
        """Give a subject a role, for resources of one prefecture and/or department or for all."""
        self._require_security_admin(principal, "change the access policy")
        data = parse(
            AssignmentIn,
            {
                "subject": subject_id,
                "application": application,
                "role": role,
                "prefecture": prefecture,
                "department": department,
            },
        )
        subject = session.scalar(select(PolicySubject).where(PolicySubject.subject_id == data.subject))
        if subject is None:
            raise NotFoundError(f"subject {data.subject!r} is not known; set its attributes first", field="subject")
        row = self._role(session, application, role)
        same = session.scalar(
            select(PolicyAssignment.id).where(
                PolicyAssignment.subject_id == subject.id,
                PolicyAssignment.role_id == row.id,
                PolicyAssignment.scope_prefecture.is_(None)
                if data.prefecture is None
                else PolicyAssignment.scope_prefecture == data.prefecture,
                PolicyAssignment.scope_department.is_(None)
                if data.department is None
                else PolicyAssignment.scope_department == data.department,
            )
        )
        if same is not None:
            raise ConflictError(
                f"subject {data.subject!r} already holds this role with this scope (#{same})", field="role"
            )
        assignment = PolicyAssignment(
            subject_id=subject.id,
            role_id=row.id,
            scope_prefecture=data.prefecture,
            scope_department=data.department,
            created_by=principal.audit_name,
            created_at=self._clock.now(),
        )
        session.add(assignment)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_ASSIGNMENT_CREATE,
            f"assignment:{assignment.id}",
            {
                "subject": data.subject,
                "application": application,
                "role": role,
                "prefecture": data.prefecture,
                "department": data.department,
            },
        )
        return assignment

    def unassign(self, session: Session, principal: Principal, assignment_id: int) -> None:
        self._require_security_admin(principal, "change the access policy")
        row = session.get(PolicyAssignment, assignment_id)
        if row is None:
            raise NotFoundError(f"no assignment #{assignment_id}", field="assignment")
        subject = session.get(PolicySubject, row.subject_id)
        role = session.get(PolicyRole, row.role_id)
        session.delete(row)
        session.flush()
        self._changed(
            session,
            principal,
            AuthzEvent.POLICY_ASSIGNMENT_DELETE,
            f"assignment:{assignment_id}",
            {
                "subject": subject.subject_id if subject else None,
                "application": role.application if role else None,
                "role": role.name if role else None,
            },
        )

    # -- a whole policy file ---------------------------------------------------------

    def load(self, session: Session, principal: Principal, data: Any, *, source: str = "policy") -> LoadReport:
        """Validate a policy document (decoded TOML or JSON) and apply it: every role of each
        application it names is replaced (with their permissions and assignments) by the
        file's, and the subjects it lists are created or updated. One audit entry
        (``authz:policy:load``) with the counts and the document's SHA-256."""
        self._require_security_admin(principal, "change the access policy")
        doc = parse(PolicyDocument, data)
        apps = [a.name for a in doc.applications]
        dup = next((a for i, a in enumerate(apps) if a in apps[:i]), None)
        if dup is not None:
            raise InvalidError(
                f"application {dup!r} is given twice",
                field=f"applications[{apps.index(dup, apps.index(dup) + 1)}].name",
            )
        file_roles = {(a.name, r.name) for a in doc.applications for r in a.roles}
        file_subjects = {s.id for s in doc.subjects}
        seen_subjects: set[str] = set()
        for i, s in enumerate(doc.subjects):
            if s.id in seen_subjects:
                raise InvalidError(f"subject {s.id!r} is given twice", field=f"subjects[{i}].id")
            seen_subjects.add(s.id)
        known_subjects = set(file_subjects)
        missing = {a.subject for a in doc.assignments} - known_subjects
        if missing:
            for chunk in _chunks(sorted(missing)):
                known_subjects.update(
                    session.scalars(select(PolicySubject.subject_id).where(PolicySubject.subject_id.in_(chunk)))
                )
        for i, a in enumerate(doc.assignments):
            if a.application not in apps:
                raise InvalidError(
                    f"application {a.application!r} is not in this file (a file assigns only roles it defines)",
                    field=f"assignments[{i}].application",
                )
            if (a.application, a.role) not in file_roles:
                raise InvalidError(
                    f"application {a.application!r} has no role {a.role!r} in this file", field=f"assignments[{i}].role"
                )
            if a.subject not in known_subjects:
                raise InvalidError(
                    f"subject {a.subject!r} is neither in this file nor known", field=f"assignments[{i}].subject"
                )
        now = self._clock.now()
        # replace the named applications' roles (their permissions and assignments go with them)
        for chunk in _chunks(apps):
            old = select(PolicyRole.id).where(PolicyRole.application.in_(chunk)).scalar_subquery()
            session.execute(delete(PolicyAssignment).where(PolicyAssignment.role_id.in_(old)))
            session.execute(delete(PolicyPermission).where(PolicyPermission.role_id.in_(old)))
            session.execute(delete(PolicyRole).where(PolicyRole.application.in_(chunk)))
        # subjects: update the known, insert the new
        existing: dict[str, PolicySubject] = {}
        for chunk in _chunks(sorted(file_subjects)):
            existing.update(
                (s.subject_id, s)
                for s in session.scalars(select(PolicySubject).where(PolicySubject.subject_id.in_(chunk)))
            )
        for s in doc.subjects:
            row = existing.get(s.id)
            if row is None:
                row = PolicySubject(subject_id=s.id)
                session.add(row)
                existing[s.id] = row
            row.prefecture, row.department, row.title, row.updated_at = s.prefecture, s.department, s.title, now
        roles: dict[tuple[str, str], PolicyRole] = {}
        for app in doc.applications:
            for r in app.roles:
                roles[(app.name, r.name)] = PolicyRole(
                    application=app.name, name=r.name, description=r.description, created_at=now
                )
        session.add_all(roles.values())
        session.flush()
        permissions = [
            PolicyPermission(
                role_id=roles[(a.name, r.name)].id,
                name=p.name,
                action=p.action,
                resource_type=p.resource_type,
                conditions=conditions_json(p.conditions),
                created_at=now,
            )
            for a in doc.applications
            for r in a.roles
            for p in r.permissions
        ]
        session.add_all(permissions)
        subject_ids = {sid: row.id for sid, row in existing.items()}
        unknown = sorted({a.subject for a in doc.assignments} - set(subject_ids))
        for chunk in _chunks(unknown):
            query = select(PolicySubject.subject_id, PolicySubject.id).where(PolicySubject.subject_id.in_(chunk))
            subject_ids.update((sid, pk) for sid, pk in session.execute(query))
        session.add_all(
            PolicyAssignment(
                subject_id=subject_ids[a.subject],
                role_id=roles[(a.application, a.role)].id,
                scope_prefecture=a.prefecture,
                scope_department=a.department,
                created_by=principal.audit_name,
                created_at=now,
            )
            for a in doc.assignments
        )
        session.flush()
        digest = hashlib.sha256(audit.canonical_json(doc.model_dump(by_alias=True, mode="json")).encode()).hexdigest()
        report = {
            "source": source[:200],
            "sha256": digest,
            "applications": apps[:100],
            "counts": {
                "applications": len(apps),
                "roles": len(roles),
                "permissions": len(permissions),
                "subjects": len(doc.subjects),
                "assignments": len(doc.assignments),
            },
        }
        version = self._changed(session, principal, AuthzEvent.POLICY_LOAD, f"load:{digest[:16]}", report)
        return LoadReport(
            len(apps), len(roles), len(permissions), len(doc.subjects), len(doc.assignments), version, digest
        )


def _chunks(items: Sequence[str]) -> list[Sequence[str]]:
    return [items[i : i + _CHUNK] for i in range(0, len(items), _CHUNK)]
