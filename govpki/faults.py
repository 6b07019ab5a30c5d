"""Crash points: let a test kill the process for real at a named step.

Set ``GOVPKI_CRASH_AT=<point>`` and the process is killed with SIGKILL when it
reaches that point — no cleanup, no exception handlers, as in a power cut.
Unset (the normal case) this is a dictionary lookup.
"""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("GOVPKI_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
