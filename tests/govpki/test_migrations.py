"""The migrations build exactly the schema the models describe, on this backend."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from govpki.db import Base
from web.container import Services


def test_models_match_migrations(bare_services: Services):
    with bare_services.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_migrate_twice_is_a_no_op(bare_services: Services):
    from govpki.db import migrate

    migrate(bare_services.engine)
    migrate(bare_services.engine)
