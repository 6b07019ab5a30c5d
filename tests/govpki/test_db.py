"""govpki.db: the engine's transaction behaviour, on SQLite and PostgreSQL."""

from __future__ import annotations

from sqlalchemy import text

from govpki.db import make_engine


def test_a_savepoint_before_any_write_commits_nothing_on_its_own(database_url: str):
    """Python's sqlite3 begins a transaction only at the first write; a SAVEPOINT outside
    one would start its own, and its RELEASE would commit what it wrote even when the
    session then rolls back (a record committed without its audit entry)."""
    engine = make_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE savepoint_probe (x INTEGER)"))
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))  # reads only: no transaction in sqlite3 yet
            with conn.begin_nested():
                conn.execute(text("INSERT INTO savepoint_probe VALUES (1)"))
            conn.execute(text("INSERT INTO savepoint_probe VALUES (2)"))
            conn.rollback()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT x FROM savepoint_probe")).all() == []
        with engine.begin() as conn:
            with conn.begin_nested():
                conn.execute(text("INSERT INTO savepoint_probe VALUES (3)"))
            nested = conn.begin_nested()
            conn.execute(text("INSERT INTO savepoint_probe VALUES (4)"))
            nested.rollback()  # back to the savepoint, the transaction goes on
        with engine.connect() as conn:
            assert conn.execute(text("SELECT x FROM savepoint_probe")).all() == [(3,)]
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE savepoint_probe"))
        engine.dispose()
