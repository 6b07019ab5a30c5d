"""Run the app under gunicorn (threaded workers; one app, and one set of key
store handles, per worker process)."""

from __future__ import annotations

import sys
from typing import Any

from gunicorn.app.base import BaseApplication

from govpki.config import Config


class _Server(BaseApplication):  # type: ignore[misc]
    def __init__(self, config: Config) -> None:
        self._govpki_config = config
        super().__init__()

    def load_config(self) -> None:
        config = self._govpki_config
        options: dict[str, Any] = {
            "bind": f"{config.listen_host}:{config.listen_port}",
            "workers": config.workers,
            "threads": config.threads,
            "worker_class": "gthread",
            "accesslog": "-",
            "timeout": 60,
            # No keep-alive: a kept-alive connection sticks to the worker that accepted
            # it, and with CPU-bound requests one worker then serves most clients while
            # the other idles (bench/issue swung between ~50 and ~120/s run to run).
            # Closing after each response lets the kernel spread requests over workers.
            # A TLS front (nginx) keeps client connections alive in production.
            "keepalive": 0,
            "graceful_timeout": 10,
            # gunicorn ≥ 23 opens a control socket in ~/.gunicorn shared by every
            # server of the user; govpki does not use it
            "control_socket_disable": True,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Runs in each worker after the fork. Issuance mixes CPU-bound Python (the
        # pkilint run) with short database critical sections behind the write gate;
        # with the default 5 ms GIL switch interval a thread inside the gate waits
        # up to 5 ms for the GIL after every database call, and the other threads
        # queue behind it (bench/issue: 50 → ~100 certificates/s with 1 ms).
        sys.setswitchinterval(0.001)
        from web.app import create_app
        from web.container import build_services

        # `govpki serve` migrated the schema before forking; workers only connect
        config = self._govpki_config
        return create_app(config, services=build_services(config, run_migrations=False))


def run(config: Config) -> None:
    _Server(config).run()
