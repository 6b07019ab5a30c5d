"""The dedicated servers (`govpki ocsp serve`, `govpki authz serve`) run for real in tests:
a subprocess with its own session on the test's instance, on a port it picks."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from govpki.config import Config

REPO = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def served(
    config: Config,
    tmp_path: Path,
    command: list[str],
    env: dict[str, str],
    url_path: str,
    answers: Callable[[int], bool],
) -> Iterator[int]:
    """``govpki COMMAND --listen 127.0.0.1:0`` on ``config``'s instance with ``env`` added;
    yields its port once ``answers(port)`` holds (``OSError`` means not yet). The server
    must still be running at the end; it is stopped in any case."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}
    full_env.update(
        {
            "GOVPKI_INSTANCE_DIR": str(config.instance_dir),
            "GOVPKI_DATABASE_URL": config.database_url,
            "GOVPKI_TESTING": "1",
            **env,
        }
    )
    log_path = tmp_path / f"{command[0]}-server.log"
    log = log_path.open("w+b")
    proc = subprocess.Popen(
        [sys.executable, "-m", "web.cli", *command, "--listen", "127.0.0.1:0"],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=log,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r"http://127\.0\.0\.1:(\d+)" + re.escape(url_path), line)
        assert match, line + log_path.read_text()
        port = int(match.group(1))
        deadline = time.monotonic() + 30
        while True:  # the workers are up when one answers
            try:
                assert answers(port)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        yield port
        assert proc.poll() is None, f"the {command[0]} server died"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
