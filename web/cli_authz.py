"""``govpki authz serve``: the dedicated access decision server (web/authz_server.py).

Registered at the end of web.cli with one ``main.add_command(authz_group)``; ``govpki
serve`` starts it beside gunicorn (:func:`start_beside`) when ``GOVPKI_AUTHZ_LISTEN`` is
set."""

from __future__ import annotations

import sys

import click

from govpki.config import Config
from govpki.errors import ConfigError


@click.group("authz")
def authz_group() -> None:
    """Access decisions: the dedicated decision server."""


@authz_group.command("serve")
@click.option("--listen", metavar="HOST:PORT", help="Default GOVPKI_AUTHZ_LISTEN (off unless set); port 0 picks one.")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="Processes (default GOVPKI_AUTHZ_WORKERS, 2)."
)
def authz_serve(listen: str | None, workers: int | None) -> None:
    """Serve POST /api/v1/authz/decide and /decide/batch only, without gunicorn.

    Does not initialise or migrate: run `govpki init` (or `serve`) first."""
    import logging
    import os

    from web.authz_server import serve
    from web.cli_common import fail

    env = dict(os.environ)
    if listen is not None:
        env["GOVPKI_AUTHZ_LISTEN"] = listen
    try:
        config = Config.from_env(env)
    except ConfigError as exc:
        fail(f"configuration error: {exc}")
    if config.authz_listen is None:
        fail("GOVPKI_AUTHZ_LISTEN is not set (or 'off'); give --listen HOST:PORT")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s [authz %(process)d] %(levelname)s %(message)s")
    parent = os.environ.get("GOVPKI_AUTHZ_PARENT_PID")
    host, port = config.authz_listen
    try:
        code = serve(config, host, port, workers or config.authz_workers, parent_pid=int(parent) if parent else None)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    sys.exit(code)


def start_beside(config: Config) -> None:
    """``govpki serve``: run the decision server in a child process beside gunicorn when
    ``GOVPKI_AUTHZ_LISTEN`` is set; it exits when we do."""
    import atexit
    import os
    import subprocess

    if config.authz_listen is None:
        return
    child = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "authz", "serve"],
        env={**os.environ, "GOVPKI_AUTHZ_PARENT_PID": str(os.getpid())},
    )
    atexit.register(child.terminate)
    host, port = config.authz_listen
    click.echo(f"the access decision server (GOVPKI_AUTHZ_LISTEN, http://{host}:{port}) runs in process {child.pid}")
