"""The issuance transparency log end to end: leaves written with issuance and
revocation, a signed tree head that verifies with cryptography, proofs that verify,
and an audit that catches a deleted entry and a certificate with no leaf."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import delete, func, select, text

from ca import merkle
from ca.models import CertificateRecord, TlogEntry
from govpki.audit import AuditEntry, verify_chain
from govpki.principal import SYSTEM
from tests.helpers import csr_pem
from web.cli import main
from web.container import Services
from web.jobs import default_jobs, run_due


def _issue(services: Services, cn: str) -> CertificateRecord:
    with services.sessions() as session:
        record = services.ca.issue(session, SYSTEM, profile="service-tls-server", csr=csr_pem(cn=cn))
        session.commit()
        session.expunge(record)
        return record


def _entries(services: Services) -> list[TlogEntry]:
    with services.sessions() as session:
        return list(session.scalars(select(TlogEntry).order_by(TlogEntry.idx)))


def _cli(services: Services, *args: str) -> Result:
    env = {
        "GOVPKI_INSTANCE_DIR": str(services.config.instance_dir),
        "GOVPKI_DATABASE_URL": services.config.database_url,
    }
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_issue_and_revoke_append_leaves_and_the_head_verifies(services: Services) -> None:
    before = _entries(services)
    # the issuing CA and the OCSP responder certificate went through the ledger at init
    assert [e.kind for e in before] == ["issue", "issue"]
    a = _issue(services, "a.example.gov.cn")
    b = _issue(services, "b.example.gov.cn")
    with services.sessions() as session:
        services.revocation.revoke(session, SYSTEM, a.serial, reason="keyCompromise")
        session.commit()
    entries = _entries(services)[len(before) :]
    assert [(e.kind, e.serial) for e in entries] == [("issue", a.serial), ("issue", b.serial), ("revoke", a.serial)]
    leaf = json.loads(entries[0].leaf)
    assert leaf["cert_sha256"] == a.fingerprint_sha256 and leaf["ca_id"] == a.ca_id
    assert json.loads(entries[2].leaf)["reason"] == "keyCompromise"
    assert [e.idx for e in _entries(services)] == list(range(len(before) + 3))
    with services.sessions() as session:  # leaves after their audit entry, the chain intact
        assert verify_chain(session).ok
        assert session.scalar(select(func.count()).where(AuditEntry.action == "ca:certificate:revoke")) == 1

    with services.sessions() as session:
        head = services.tlog.sign_tree_head(session, SYSTEM)
        session.commit()
        assert head is not None and head.tree_size == len(before) + 3
        assert "tlog-signing-" in head.key_handle
        key = serialization.load_der_public_key(head.public_key_der)
        assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        key.verify(head.signature, head.signed_data, ec.ECDSA(hashes.SHA256()))
        signed = json.loads(head.signed_data)
        assert signed["tree_size"] == head.tree_size and signed["root_hash"] == head.root_hash
        hashes_ = [bytes.fromhex(e.leaf_hash) for e in _entries(services)]
        assert head.root_hash == merkle.root_from_leaf_hashes(hashes_).hex()
        # unchanged size: no new head; the same key signs the next one
        assert services.tlog.sign_tree_head(session, SYSTEM) is None
        handle = head.key_handle
    _issue(services, "c.example.gov.cn")
    with services.sessions() as session:
        newer = services.tlog.sign_tree_head(session, SYSTEM)
        session.commit()
        assert newer is not None and newer.key_handle == handle
        assert session.scalar(select(func.count()).where(AuditEntry.action == "ca:transparency:sign_head")) == 2

        proof = services.tlog.inclusion_proof(session, entries[1].leaf_hash, newer.tree_size)
        assert proof.leaf_index == entries[1].idx
        assert merkle.verify_inclusion(
            proof.leaf_index,
            proof.tree_size,
            bytes.fromhex(proof.leaf_hash),
            [bytes.fromhex(p) for p in proof.audit_path],
            bytes.fromhex(newer.root_hash),
        )
        consistency = services.tlog.consistency_proof(session, head.tree_size, newer.tree_size)
        assert merkle.verify_consistency(
            head.tree_size,
            newer.tree_size,
            bytes.fromhex(head.root_hash),
            bytes.fromhex(newer.root_hash),
            [bytes.fromhex(p) for p in consistency.consistency],
        )
        assert services.tlog.audit(session).ok


def test_hold_is_logged_as_a_revocation(services: Services) -> None:
    a = _issue(services, "h.example.gov.cn")
    with services.sessions() as session:
        services.revocation.hold(session, SYSTEM, a.serial)
        session.commit()
        services.revocation.release(session, SYSTEM, a.serial)
        session.commit()
        services.revocation.revoke(session, SYSTEM, a.serial, reason="superseded")
        session.commit()
    kinds = [(e.kind, json.loads(e.leaf).get("reason")) for e in _entries(services) if e.serial == a.serial]
    assert kinds == [("issue", None), ("revoke", "certificateHold"), ("revoke", "superseded")]
    with services.sessions() as session:
        assert services.tlog.audit(session).ok


def test_the_job_signs_a_head_only_when_the_log_grew(services: Services) -> None:
    jobs = [j for j in default_jobs() if j.name == "tlog"]
    first = run_due(services, jobs)
    assert first[0].ok and first[0].lines and "size 2" in first[0].lines[0]
    assert run_due(services, jobs)[0].lines == ()


def test_audit_cli_passes_then_finds_a_deleted_entry_and_a_missing_leaf(services: Services) -> None:
    a = _issue(services, "a.example.gov.cn")
    b = _issue(services, "b.example.gov.cn")
    result = _cli(services, "transparency", "sth")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["tree_size"] == 4
    result = _cli(services, "transparency", "audit")
    assert result.exit_code == 0, result.output
    assert "transparency log OK: 4 log entries" in result.output

    # an attacker with database access: drop the append-only trigger, delete b's leaf
    with services.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER tlog_entries_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER tlog_entries_append_only ON tlog_entries"))
        conn.execute(delete(TlogEntry).where(TlogEntry.serial == b.serial))
    result = _cli(services, "transparency", "audit")
    assert result.exit_code == 1
    assert f"certificate {b.serial} is issued but has no issue entry in the log" in result.output
    assert "tree head 4" in result.output  # the signed head no longer matches
    with services.sessions() as session:
        report = services.tlog.audit(session)
        assert any("log entry 3 is missing" in p or "only 3 entries" in p for p in report.problems), report.problems

    # a certificate record with no leaf at all (e.g. inserted behind the CA's back)
    with services.sessions() as session:
        record = session.scalars(select(CertificateRecord).where(CertificateRecord.serial == a.serial)).one()
        ghost = CertificateRecord(
            serial="1234abcd",
            ca_id=record.ca_id,
            profile=record.profile,
            profile_version=record.profile_version,
            state="issued",
            requester="intruder",
            subject=record.subject,
            sans=record.sans,
            key_type=record.key_type,
            spki_sha256=record.spki_sha256,
            tbs_der=record.tbs_der,
            cert_der=record.cert_der,
            fingerprint_sha256="ab" * 32,
            not_before=record.not_before,
            not_after=record.not_after,
            created_at=record.created_at,
            updated_at=record.updated_at,
        )
        session.add(ghost)
        session.commit()
    result = _cli(services, "transparency", "audit")
    assert result.exit_code == 1
    assert "certificate 1234abcd is issued but has no issue entry in the log" in result.output
    with services.sessions() as session:  # keep the teardown check away from the fake record
        session.execute(delete(CertificateRecord).where(CertificateRecord.serial == "1234abcd"))
        session.commit()


def test_audit_finds_a_leaf_without_a_certificate_and_a_bad_head(services: Services) -> None:
    with services.sessions() as session:
        services.tlog.sign_tree_head(session, SYSTEM)
        issuing = session.scalars(select(TlogEntry).order_by(TlogEntry.idx)).first()
        assert issuing is not None
        services.tlog.append_issue(session, ca_id=issuing.ca_id, serial="deadbeef", cert_sha256="00" * 32)
        session.commit()
        problems = services.tlog.audit(session).problems
    assert problems == ["log entry 2 (issue deadbeef): no such certificate"]


@pytest.mark.parametrize(("first", "second", "field"), [(3, 2, "first"), (0, 99, "second"), (-1, 2, "first")])
def test_bad_proof_requests_name_the_field(services: Services, first: int, second: int, field: str) -> None:
    from govpki.errors import InvalidError

    with services.sessions() as session, pytest.raises(InvalidError) as caught:
        services.tlog.consistency_proof(session, first, second)
    assert caught.value.field == field
