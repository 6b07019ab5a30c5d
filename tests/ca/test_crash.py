"""Kill the issuing process for real (SIGKILL) at each step and look at what it left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select

from ca.models import CertificateRecord
from govpki.audit import verify_chain
from tests.helpers import csr_pem
from web.container import Services


def _govpki(services: Services, *args: str, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
        "GOVPKI_ROOT_KEY_ALGORITHM": "ec-p384",
        "GOVPKI_ISSUING_KEY_ALGORITHM": "ec-p384",
    }
    env.pop("GOVPKI_CRASH_AT", None)
    if crash_at:
        env["GOVPKI_CRASH_AT"] = crash_at
    return subprocess.run(
        [sys.executable, "-m", "web.cli", *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("point", "state"),
    [("after_reserve", "reserved"), ("after_approve", "approved"), ("after_sign", "approved")],
)
def test_kill_between_reservation_and_record(services: Services, tmp_path: Path, point: str, state: str):
    csr = tmp_path / "req.csr"
    csr.write_bytes(csr_pem(cn="crash.example.gov.cn"))
    killed = _govpki(services, "issue", "--profile", "service-tls-server", "--csr", str(csr), crash_at=point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    with services.sessions() as session:
        records = session.scalars(
            select(CertificateRecord).where(CertificateRecord.subject.contains("crash.example"))
        ).all()
        assert len(records) == 1
        record = records[0]
        assert record.state == state
        assert record.cert_der is None and record.csr_der is not None
        assert int(record.serial, 16) >= 1 << 64
        if state == "approved":
            # the exact content of any certificate that may have been signed is on record
            tbs = x509.load_der_x509_certificate(record.tbs_der or b"")
            assert tbs.serial_number == int(record.serial, 16)
            assert "crash.example.gov.cn" in tbs.subject.rfc4514_string()
        else:
            assert record.tbs_der is None
        report = verify_chain(session)
        assert report.ok, report

    # after the restart: the record is shown for what it is, and issuance carries on
    shown = _govpki(services, "show", record.serial)
    assert shown.returncode == 0 and state in shown.stdout
    again = _govpki(services, "issue", "--profile", "service-tls-server", "--csr", str(csr))
    assert again.returncode == 0, again.stderr
    assert "BEGIN CERTIFICATE" in again.stdout
    with services.sessions() as session:
        states = sorted(
            r.state
            for r in session.scalars(
                select(CertificateRecord).where(CertificateRecord.subject.contains("crash.example"))
            )
        )
        assert states == sorted(["issued", state])
        assert verify_chain(session).ok
