"""The acting principal, passed explicitly to every domain service."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Role(enum.StrEnum):
    # 三员分立: mutually exclusive administrative roles
    SYSTEM_ADMIN = "system_admin"
    SECURITY_ADMIN = "security_admin"
    SECURITY_AUDITOR = "security_auditor"
    # operational roles
    CA_OPERATOR = "ca_operator"
    KEY_RECOVERY_OFFICER = "key_recovery_officer"  # approves recoveries of escrowed keys (M of N)
    # prefecture registration authority staff: each in exactly one prefecture (Principal.prefecture)
    RA_CLERK = "ra_clerk"  # 受理/录入: registers subscribers, submits requests
    RA_OFFICER = "ra_officer"  # 审核: approves or rejects requests of others


class PrincipalKind(enum.StrEnum):
    ACCOUNT = "account"
    API_TOKEN = "api_token"
    SYSTEM = "system"
    APPLICATION = "application"  # a registered application (client credentials)
    OFFICIAL = "official"  # a registered official (ra subscriber), signed in with their certificate


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    id: str
    name: str
    roles: frozenset[Role] = field(default_factory=frozenset)
    prefecture: str | None = None
    scopes: frozenset[str] = field(default_factory=frozenset)  # what an application may do, e.g. "audit:write"
    # an official's attributes (PrincipalKind.OFFICIAL): department and title as registered by the RA
    department: str | None = None
    title: str | None = None

    @property
    def audit_name(self) -> str:
        return f"{self.kind.value}:{self.name}"

    def has(self, role: Role) -> bool:
        return role in self.roles


SYSTEM = Principal(PrincipalKind.SYSTEM, "system", "system", frozenset(Role))
"""The service itself (start-up ceremony, schedulers). Used only by CLI/startup code."""
