"""An initialised instance with the subscriber data key and the KMC storage key made,
and principals of prefecture RA staff (built directly; accounts come with the staff piece)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from web.container import Services

URUMQI = "650100"
KARAMAY = "650200"


def staff(account_id: str, name: str, role: Role, prefecture: str) -> Principal:
    return Principal(PrincipalKind.ACCOUNT, account_id, name, frozenset({role}), prefecture=prefecture)


CLERK = staff("11", "clerk1", Role.RA_CLERK, URUMQI)
OFFICER = staff("12", "officer1", Role.RA_OFFICER, URUMQI)
OFFICER2 = staff("13", "officer2", Role.RA_OFFICER, URUMQI)
OTHER_CLERK = staff("21", "clerk-k", Role.RA_CLERK, KARAMAY)
OTHER_OFFICER = staff("22", "officer-k", Role.RA_OFFICER, KARAMAY)


@pytest.fixture
def ra(services: Services) -> Iterator[Services]:
    with services.sessions() as session:
        services.subscribers.ensure_data_key(session, SYSTEM)
        services.kmc.ensure_storage_key(session, SYSTEM)
        session.commit()
    yield services
