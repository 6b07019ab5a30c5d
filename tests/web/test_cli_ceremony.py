"""`govpki ceremony …` and `govpki ca …`: the steps run through the services, the record
(what, when, key and certificate fingerprints, algorithm, key store, who was present) is
printed, audited and filed; refusals change nothing."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import Result
from cryptography import x509
from sqlalchemy import func, select

from ca.models import CaKind, CertificateAuthority
from ca.services import spki_fingerprint
from govpki.audit import AuditEntry
from tests.web.test_cli import run
from web.container import Services

WITNESSES = ("--witness", "王伟", "--witness", "Li Na")


def audit_entries(services: Services, action: str | None = None) -> list[AuditEntry]:
    with services.sessions() as session:
        query = select(AuditEntry).order_by(AuditEntry.seq)
        if action is not None:
            query = query.where(AuditEntry.action == action)
        return list(session.scalars(query))


def ca_rows(services: Services) -> list[tuple[int, str, bool]]:
    with services.sessions() as session:
        return [(ca.id, ca.name, ca.active) for ca in services.ca.list_cas(session)]


def ok(result: Result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_sign_issuing_ceremony_prints_files_and_audits_the_record(services: Services, tmp_path: Path):
    record_file = tmp_path / "ceremony.json"
    output = ok(run(services, "ceremony", "sign-issuing", *WITNESSES, "--record", str(record_file)))
    with services.sessions() as session:
        new = services.ca.active_ca(session, CaKind.ISSUING)
    cert = x509.load_der_x509_certificate(new.cert_der)
    assert "KEY CEREMONY RECORD: sign-issuing (success)" in output
    assert "witnesses: 王伟, Li Na" in output and "operator:  system:cli:" in output
    assert spki_fingerprint(cert) in output and new.fingerprint_sha256 in output
    assert f"{new.key_algorithm} in the online key store" in output and "encrypted files in" in output
    assert "issuing CA rollover" in output and f"{new.name}" in output and new.name.endswith(" G2")

    document = json.loads(record_file.read_text(encoding="utf-8"))
    assert record_file.stat().st_mode & 0o777 == 0o600
    assert document["ceremony"] == "sign-issuing" and document["outcome"] == "success"
    assert document["witnesses"] == ["王伟", "Li Na"]
    (key,) = document["keys"]
    assert key["spki_sha256"] == spki_fingerprint(cert) and key["certificate_sha256"] == new.fingerprint_sha256
    assert key["key_store"] == "online" and key["key_algorithm"] == "ec-p384" and key["key_handle"] == new.key_handle
    assert [c["kind"] for c in document["crls"]] == ["full"]
    assert document["started_at"] <= document["finished_at"]

    (entry,) = audit_entries(services, "ca:ceremony:sign_issuing")
    audited = json.loads(entry.details)
    assert entry.seq == document["audit_seq"] and entry.outcome == "success"
    assert audited == {k: v for k, v in document.items() if k != "audit_seq"}
    assert len(audit_entries(services, "ca:issuing:rollover")) == 1


def test_a_ceremony_needs_two_different_witnesses_and_changes_nothing_without(services: Services, tmp_path: Path):
    cas_before = ca_rows(services)
    audit_before = len(audit_entries(services))
    for args, reason in (
        ((), "at least 2 different witnesses"),
        (("--witness", "王伟"), "at least 2 different witnesses"),
        (("--witness", "Li  Na", "--witness", " li na "), "named twice"),
        (("--witness", "王伟", "--witness", "  "), "must not be empty"),
    ):
        for kind in ("root-key", "sign-issuing", "root-rollover"):
            result = run(services, "ceremony", kind, *args, "--record", str(tmp_path / "r.json"))
            assert result.exit_code == 2, result.output
            assert "witness" in result.output and reason in result.output, result.output
            assert "Traceback" not in result.output
    assert ca_rows(services) == cas_before
    assert len(audit_entries(services)) == audit_before
    assert not (tmp_path / "r.json").exists()


def test_an_existing_record_file_is_never_overwritten(services: Services, tmp_path: Path):
    record_file = tmp_path / "kept.json"
    record_file.write_text("evidence", encoding="utf-8")
    cas_before = ca_rows(services)
    result = run(services, "ceremony", "sign-issuing", *WITNESSES, "--record", str(record_file))
    assert result.exit_code == 2 and "never overwritten" in result.output
    assert record_file.read_text(encoding="utf-8") == "evidence"
    assert ca_rows(services) == cas_before


def test_root_key_then_sign_issuing_on_an_empty_instance(bare_services: Services, tmp_path: Path):
    services = bare_services
    output = ok(run(services, "ceremony", "root-key", *WITNESSES, "--record", str(tmp_path / "root.json")))
    with services.sessions() as session:
        root = services.ca.active_ca(session, CaKind.ROOT)
    assert "KEY CEREMONY RECORD: root-key (success)" in output
    assert spki_fingerprint(x509.load_der_x509_certificate(root.cert_der)) in output
    document = json.loads((tmp_path / "root.json").read_text(encoding="utf-8"))
    assert document["keys"][0]["kind"] == "root" and document["keys"][0]["key_store"] == "root"
    assert document["crls"][0]["ca_id"] == root.id  # the first ARL
    output = ok(run(services, "ceremony", "sign-issuing", *WITNESSES))
    with services.sessions() as session:
        issuing = services.ca.active_ca(session, CaKind.ISSUING)
        assert services.ocsp.active_responder(session, issuing.id) is not None
    assert issuing.parent_id == root.id and "rollover" not in output
    assert len(audit_entries(services, "ca:ceremony:root_key")) == 1
    assert len(audit_entries(services, "ca:ceremony:sign_issuing")) == 1


def test_a_failed_ceremony_is_recorded_as_a_failure(services: Services):
    result = run(services, "ceremony", "root-key", *WITNESSES)
    assert result.exit_code == 2 and "a root CA already exists" in result.output
    assert "KEY CEREMONY RECORD: root-key (failure)" in result.output
    (entry,) = audit_entries(services, "ca:ceremony:root_key")
    assert entry.outcome == "failure" and "already exists" in json.loads(entry.details)["failure"]


def test_root_rollover_ceremony_and_ca_list(services: Services, tmp_path: Path):
    output = ok(run(services, "ceremony", "root-rollover", *WITNESSES, "--record", str(tmp_path / "r.json")))
    document = json.loads((tmp_path / "r.json").read_text(encoding="utf-8"))
    assert [k["kind"] for k in document["keys"]] == ["root", "issuing"]
    assert [c["direction"] for c in document["cross_certificates"]] == ["new_with_old", "old_with_new"]
    assert "cross-certificate" in output and "root rollover" in output
    (entry,) = audit_entries(services, "ca:ceremony:root_rollover")
    assert json.loads(entry.details)["cross_certificates"] == document["cross_certificates"]

    listing = ok(run(services, "ca", "list"))
    lines = listing.splitlines()
    assert sum(" serving " in line for line in lines) == 2  # the old root and the old issuing CA
    assert sum(" issuing " in line and "G2" in line for line in lines) == 2
    assert sum(line.startswith("cross") for line in lines) == 2


def test_ca_rollover_command(services: Services):
    output = ok(run(services, "ca", "rollover"))
    assert "issuing CA rollover" in output and "G2" in output
    with services.sessions() as session:
        count = session.scalar(
            select(func.count()).select_from(CertificateAuthority).where(CertificateAuthority.kind == "issuing")
        )
    assert count == 2
    output = ok(run(services, "ca", "rollover", "--root"))
    assert "root rollover" in output and "new_with_old" in output and "old_with_new" in output
