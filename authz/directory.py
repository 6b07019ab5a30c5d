"""Who holds a role now: the answers other domains need about accounts without
reading the accounts table themselves (the key-management centre asks how many
key-recovery officers exist and whether the acting principal is one)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from authz.models import Account
from govpki.principal import Principal, PrincipalKind, Role


class RoleDirectory:
    """Enabled accounts holding ``role``."""

    def __init__(self, role: Role) -> None:
        self.role = role

    def count(self, session: Session) -> int:
        query = select(func.count()).select_from(Account).where(Account.role == self.role.value, ~Account.disabled)
        return int(session.scalar(query) or 0)

    def holds(self, session: Session, principal: Principal) -> bool:
        """True if ``principal`` is an enabled account that holds the role now (a role taken
        away or an account disabled since sign-in counts at once)."""
        if principal.kind is not PrincipalKind.ACCOUNT or not principal.id.isdigit():
            return False
        account = session.get(Account, int(principal.id))
        return account is not None and not account.disabled and account.role == self.role.value
