"""Calendar buckets of a UTC timestamp column in SQL, per dialect (for counts per hour or
per day grouped in the database rather than in Python).

SQLite stores a ``UTCDateTime`` as the text ``YYYY-MM-DD HH:MM:SS.ffffff`` (UTC), so a
prefix of it is the bucket; PostgreSQL formats the ``timestamptz`` in UTC on the server."""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import String, func, type_coerce

Unit = Literal["hour", "day"]
_SQLITE = {"hour": 13, "day": 10}
_POSTGRES = {"hour": "YYYY-MM-DD HH24", "day": "YYYY-MM-DD"}


def bucket(column: Any, unit: Unit, dialect: str) -> Any:
    """An expression giving ``YYYY-MM-DD`` (day) or ``YYYY-MM-DD HH`` (hour) in UTC."""
    if dialect == "postgresql":
        return func.to_char(func.timezone("UTC", column), _POSTGRES[unit])
    # SQLite (and anything storing the same text): the stored text's prefix
    return func.substr(type_coerce(column, String()), 1, _SQLITE[unit])
