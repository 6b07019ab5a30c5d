"""`govpki serve` for real: first start on an empty instance, then curl and openssl as clients."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import csr_pem

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_initialises_prints_login_and_issues_over_http(tmp_path: Path, database_url: str):
    port, ocsp_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")},
        "GOVPKI_INSTANCE_DIR": str(tmp_path / "instance"),
        "GOVPKI_DATABASE_URL": database_url,
        "GOVPKI_LISTEN": f"127.0.0.1:{port}",
        "GOVPKI_OCSP_LISTEN": f"127.0.0.1:{ocsp_port}",
    }
    base = f"http://127.0.0.1:{port}"
    log = (tmp_path / "serve.log").open("w+")
    server = subprocess.Popen(
        [sys.executable, "-m", "web.cli", "serve"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ca/chain.pem", timeout=2) as response:
                    chain = response.read()
                break
            except OSError:
                assert server.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "server did not come up"
                time.sleep(0.3)
        output = (tmp_path / "serve.log").read_text()
        assert f"sign in at {base}/login" in output
        assert "user name: secadmin" in output and "password:" in output
        assert "created 14 prefecture RAs" in output
        assert chain.count(b"BEGIN CERTIFICATE") == 2
        # the dedicated OCSP responder runs beside gunicorn: garbage gets malformedRequest
        assert "the dedicated OCSP responder" in output
        while True:
            try:
                garbage = urllib.request.Request(f"http://127.0.0.1:{ocsp_port}/ocsp", data=b"x", method="POST")
                with urllib.request.urlopen(garbage, timeout=2) as response:
                    assert response.status == 200 and response.read() == b"\x30\x03\x0a\x01\x01"
                break
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(0.3)

        token = subprocess.run(
            [sys.executable, "-m", "web.cli", "token", "create", "--name", "curl"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        (tmp_path / "req.json").write_text(
            json.dumps({"profile": "service-tls-server", "csr": csr_pem(cn="curl.example.gov.cn").decode()})
        )
        curl = subprocess.run(
            [
                "curl",
                "-sS",
                "-o",
                str(tmp_path / "out.json"),
                "-w",
                "%{http_code}",
                "-H",
                f"Authorization: Bearer {token}",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                f"@{tmp_path / 'req.json'}",
                f"{base}/api/v1/certificates",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert curl.stdout == "201", (tmp_path / "out.json").read_text()
        issued = json.loads((tmp_path / "out.json").read_text())
        (tmp_path / "leaf.pem").write_text(issued["certificate_pem"])
        subprocess.run(["curl", "-sS", "-o", str(tmp_path / "root.pem"), f"{base}/ca/root.pem"], check=True)
        subprocess.run(["curl", "-sS", "-o", str(tmp_path / "issuing.pem"), f"{base}/ca/issuing.pem"], check=True)
        verify = subprocess.run(
            [
                "openssl",
                "verify",
                "-CAfile",
                str(tmp_path / "root.pem"),
                "-untrusted",
                str(tmp_path / "issuing.pem"),
                "-purpose",
                "sslserver",
                str(tmp_path / "leaf.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr

        denied = subprocess.run(
            [
                "curl",
                "-sS",
                "-w",
                "\n%{http_code}",
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                f"@{tmp_path / 'req.json'}",
                f"{base}/api/v1/certificates",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        body, status = denied.stdout.rsplit("\n", 1)
        assert status == "401" and json.loads(body)["errors"][0]["field"] == "authorization"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()
