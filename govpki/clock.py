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
