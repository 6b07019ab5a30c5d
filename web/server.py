"""Run the app under gunicorn (threaded workers; one app, and one set of key
store handles, per worker process)."""

from __future__ import annotations

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
            "graceful_timeout": 10,
        }
        for key, value in options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from web.app import create_app

        return create_app(self._govpki_config)


def run(config: Config) -> None:
    _Server(config).run()
