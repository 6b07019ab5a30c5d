"""Timezone-aware UTC time, injectable for tests."""

from __future__ import annotations

import datetime as _dt
from typing import Protocol

UTC = _dt.UTC


class Clock(Protocol):
    def now(self) -> _dt.datetime: ...


class SystemClock:
    def now(self) -> _dt.datetime:
        return _dt.datetime.now(UTC)


class FixedClock:
    """A clock that only moves when told to (tests)."""

    def __init__(self, at: _dt.datetime) -> None:
        if at.tzinfo is None:
            raise ValueError("FixedClock needs a timezone-aware datetime")
        self._at = at

    def now(self) -> _dt.datetime:
        return self._at

    def advance(self, delta: _dt.timedelta) -> None:
        self._at = self._at + delta


def utcnow() -> _dt.datetime:
    return _dt.datetime.now(UTC)


def as_utc(value: _dt.datetime) -> _dt.datetime:
    """Return ``value`` as aware UTC; naive values (SQLite round-trips) are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
