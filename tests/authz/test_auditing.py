"""Signed audit checkpoints and the full verification: tampering done directly in
the database (after removing the append-only triggers, as an attacker with
database access could) is detected and the first bad entry is named."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import Connection, func, select, text

from authz.auditing import CHECKPOINT_ACTION, AuditCheckpointService, signed_bytes
from ca.models import CertificateRecord
from govpki import audit
from govpki.audit import AuditCheckpoint, AuditEntry, AuditVerification, entry_hash, verify_chain
from govpki.errors import ForbiddenError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import csr_pem
from web.container import Services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "7", "auditor", frozenset({Role.SECURITY_AUDITOR}))
OPERATOR = Principal(PrincipalKind.ACCOUNT, "8", "operator", frozenset({Role.CA_OPERATOR}))


def _append(services: Services, n: int) -> None:
    with services.sessions() as s:
        for i in range(n):
            audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id=str(i), details={"i": i})
        s.commit()


def _checkpoint(services: Services) -> AuditCheckpoint:
    with services.sessions() as s:
        made = services.auditing.checkpoint(s, SYSTEM)
        assert made is not None
        s.commit()
        services.auditing.export(made)
        s.expunge(made)
        return made


def _verify(services: Services, checkpoints_file: Path | None = None):
    with services.sessions() as s:
        report = services.auditing.verify(s, AUDITOR, checkpoints_file)
        s.commit()
    return report


def _unguard(conn: Connection) -> None:
    """What an administrator with database access could do first."""
    if conn.dialect.name == "sqlite":
        for trigger in (
            "audit_log_no_update",
            "audit_log_no_delete",
            "audit_head_no_delete",
            "audit_checkpoints_no_update",
            "audit_checkpoints_no_delete",
        ):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
    else:  # the tests connect as the tables' owner
        for table in ("audit_log", "audit_head", "audit_checkpoints"):
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))


def _rows(conn: Connection) -> list[dict[str, object]]:
    return [dict(r._mapping) for r in conn.execute(select(AuditEntry.__table__).order_by(AuditEntry.seq))]


def _rechain(conn: Connection, from_seq: int) -> None:
    """Recompute every hash from ``from_seq`` on and the head: a careful attacker."""
    rows = _rows(conn)
    prev = audit.GENESIS_HASH
    for row in rows:
        if row["seq"] >= from_seq:
            digest = entry_hash(
                prev,
                seq=row["seq"],  # type: ignore[arg-type]
                at=row["at"],  # type: ignore[arg-type]
                actor=row["actor"],  # type: ignore[arg-type]
                action=row["action"],  # type: ignore[arg-type]
                object_type=row["object_type"],  # type: ignore[arg-type]
                object_id=row["object_id"],  # type: ignore[arg-type]
                outcome=row["outcome"],  # type: ignore[arg-type]
                details=row["details"],  # type: ignore[arg-type]
            )
            conn.execute(
                text("UPDATE audit_log SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": digest, "s": row["seq"]},
            )
            prev = digest
        else:
            prev = row["hash"]  # type: ignore[assignment]
    last = rows[-1]["seq"] if rows else 0
    conn.execute(text("UPDATE audit_head SET seq = :s, hash = :h WHERE id = 1"), {"s": last, "h": prev})


def _tamper(services: Services, how: str, at: int = 3) -> None:
    """Tamper around entry ``at`` (edit/delete/insert/reorder at ``at`` and ``at + 1``)."""
    with services.engine.begin() as conn:
        _unguard(conn)
    with services.engine.begin() as conn:
        if how == "edit":
            conn.execute(text("UPDATE audit_log SET details = 'tampered' WHERE seq = :s"), {"s": at})
        elif how == "edit-actor":
            conn.execute(text("UPDATE audit_log SET actor = 'account:mallory' WHERE seq = 2"))
        elif how == "delete":
            conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": at})
        elif how == "delete-renumber":  # and close the gap, as a careful attacker would
            last = conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one()
            conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": at})
            for seq in range(at + 1, last + 1):
                conn.execute(text("UPDATE audit_log SET seq = :n WHERE seq = :o"), {"n": seq - 1, "o": seq})
        elif how == "insert":  # a forged entry at `at`, the later ones moved up, hashes right for the forgery
            last = conn.execute(text("SELECT max(seq) FROM audit_log")).scalar_one()
            for seq in range(last, at - 1, -1):
                conn.execute(text("UPDATE audit_log SET seq = :n WHERE seq = :o"), {"n": seq + 1, "o": seq})
            prev = conn.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": at - 1}).scalar_one()
            fields = {
                "seq": at,
                "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "actor": "account:mallory",
                "action": "ca:cert:revoke",
                "object_type": "certificate",
                "object_id": "abcdef",
                "outcome": "success",
                "details": "{}",
            }
            digest = entry_hash(prev, **fields)  # type: ignore[arg-type]
            conn.execute(
                AuditEntry.__table__.insert(),  # type: ignore[attr-defined]
                {**fields, "prev_hash": prev, "hash": digest},
            )
            conn.execute(text("UPDATE audit_head SET seq = :s WHERE id = 1"), {"s": last + 1})
        elif how == "reorder":
            conn.execute(text("UPDATE audit_log SET seq = -1 WHERE seq = :s"), {"s": at})
            conn.execute(text("UPDATE audit_log SET seq = :s WHERE seq = :n"), {"s": at, "n": at + 1})
            conn.execute(text("UPDATE audit_log SET seq = :n WHERE seq = -1"), {"n": at + 1})
        elif how == "append-behind-head":
            prev = conn.execute(text("SELECT hash FROM audit_log WHERE seq = 6")).scalar_one()
            fields = {
                "seq": 7,
                "at": dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
                "actor": "account:mallory",
                "action": "ca:cert:issue",
                "object_type": "certificate",
                "object_id": "abcdef",
                "outcome": "success",
                "details": "{}",
            }
            conn.execute(
                AuditEntry.__table__.insert(),  # type: ignore[attr-defined]
                {**fields, "prev_hash": prev, "hash": entry_hash(prev, **fields)},  # type: ignore[arg-type]
            )
        else:
            raise AssertionError(how)


@pytest.mark.parametrize(
    ("how", "first_bad"),
    [
        ("edit", 3),
        ("edit-actor", 2),
        ("delete", 4),
        ("delete-renumber", 4),  # the entry now at 4 was 5: it names 5 and chains onto the deleted 4
        ("insert", 5),  # the forgery at 4 chains onto 3; the moved entry after it no longer fits
        ("reorder", 4),
        ("append-behind-head", 7),
    ],
)
def test_naive_tampering_is_detected(bare_services: Services, how: str, first_bad: int) -> None:
    _append(bare_services, 6)
    assert _verify(bare_services).ok
    _tamper(bare_services, how, at=3 if how == "edit" else 2 if how == "edit-actor" else 4)
    report = _verify(bare_services)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report
    assert f"entry {first_bad}" in report.summary


@pytest.mark.parametrize("how", ["edit", "delete-renumber", "insert", "reorder"])
def test_recomputed_chain_before_a_checkpoint_is_detected(bare_services: Services, how: str) -> None:
    """The attacker rewrites the history and recomputes every hash and the head: the chain
    itself is consistent again, but the signed checkpoint no longer matches."""
    _append(bare_services, 2)
    _checkpoint(bare_services)  # covers 1..3 (3: its new key's registration); its own entry is 4
    _append(bare_services, 3)  # 5..7
    _checkpoint(bare_services)  # covers 1..7
    _tamper(bare_services, how, at=5)
    with bare_services.engine.begin() as conn:
        _rechain(conn, 1)
    with bare_services.sessions() as s:
        assert verify_chain(s).ok  # the chain alone cannot tell
    report = _verify(bare_services)
    assert not report.ok
    assert report.first_bad_checkpoint == 7 and report.first_bad_seq == 4, report  # after the good checkpoint at 3
    assert "rewritten between entries 4 and 7" in (report.reason or "")


def test_truncated_tail_is_detected_by_the_checkpoint(bare_services: Services) -> None:
    _append(bare_services, 6)
    _checkpoint(bare_services)  # covers 1..7 (7: its new key's registration), its entry is 8
    _append(bare_services, 2)  # 9, 10
    with bare_services.engine.begin() as conn:
        _unguard(conn)
    with bare_services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_log WHERE seq > 3"))
        _rechain(conn, 1)  # the head now says 3 with entry 3's hash
    with bare_services.sessions() as s:
        assert verify_chain(s).ok
    report = _verify(bare_services)
    assert not report.ok and report.first_bad_seq == 4 and report.first_bad_checkpoint == 7, report
    assert "the log was cut after 3" in (report.reason or "")


def test_tail_cut_with_the_checkpoints_is_caught_by_the_exported_file(bare_services: Services) -> None:
    """Deleting the checkpoint rows too leaves a consistent database; the exported copy remains."""
    _append(bare_services, 6)
    _checkpoint(bare_services)
    exported = bare_services.config.checkpoint_file
    with bare_services.engine.begin() as conn:
        _unguard(conn)
    with bare_services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints"))
        conn.execute(text("DELETE FROM audit_log WHERE seq > 4"))
        _rechain(conn, 1)
    assert _verify(bare_services).ok  # nothing inside the database shows it
    report = _verify(bare_services, exported)
    assert not report.ok and report.first_bad_seq == 5 and report.first_bad_checkpoint == 7, report
    assert "exported checkpoint" in (report.reason or "")


def test_checkpoint_file_mismatch_is_detected(bare_services: Services, tmp_path: Path) -> None:
    _append(bare_services, 3)
    _checkpoint(bare_services)
    _append(bare_services, 1)
    _checkpoint(bare_services)
    exported = bare_services.config.checkpoint_file
    ok = _verify(bare_services, exported)
    assert ok.ok and ok.exported == 2 and ok.checkpoints == 2, ok
    lines = exported.read_text().splitlines()
    # an edited line: its signature no longer covers it
    edited = json.loads(lines[1])
    edited["head_hash"] = "f" * 64
    bad_file = tmp_path / "edited.jsonl"
    bad_file.write_text(lines[0] + "\n" + json.dumps(edited) + "\n")
    report = _verify(bare_services, bad_file)
    assert not report.ok and report.first_bad_checkpoint == edited["seq"], report
    assert "signature is not valid" in (report.reason or "")
    # a line the database does not have (signed, but its row is gone)
    with bare_services.engine.begin() as conn:
        _unguard(conn)
    with bare_services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_checkpoints WHERE seq = :s"), {"s": edited["seq"]})
    report = _verify(bare_services, exported)
    assert not report.ok and report.first_bad_checkpoint == edited["seq"], report
    assert "missing from the database" in (report.reason or "")


def test_forged_checkpoints_are_detected(bare_services: Services) -> None:
    _append(bare_services, 3)
    real = _checkpoint(bare_services)
    _append(bare_services, 2)  # 5, 6
    with bare_services.sessions() as s:
        head_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.seq == 6))
    assert head_hash is not None
    # 1. the real key's public key, but a signature made by someone else
    mallory = ec.generate_private_key(ec.SECP256R1())
    created = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    key_id = json.loads(real.signed_data)["key_id"]
    data = signed_bytes(6, head_hash, created, key_id)
    forged = AuditCheckpoint(
        seq=6,
        head_hash=head_hash,
        created_at=created,
        key_store="online",
        key_handle=real.key_handle,
        algorithm=real.algorithm,
        public_key_der=real.public_key_der,
        signed_data=data,
        signature=mallory.sign(data, ec.ECDSA(serialization_hash())),
    )
    with bare_services.sessions() as s:
        s.add(forged)
        s.commit()
    report = _verify(bare_services)
    assert not report.ok and report.first_bad_checkpoint == 6 and "signature is not valid" in (report.reason or "")


def test_checkpoint_signed_by_a_key_not_ours_is_detected(bare_services: Services) -> None:
    _append(bare_services, 3)
    real = _checkpoint(bare_services)
    _append(bare_services, 1)
    mallory = ec.generate_private_key(ec.SECP256R1())
    public_der = mallory.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with bare_services.sessions() as s:
        head_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.seq == 5))
        assert head_hash is not None
        created = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
        data = signed_bytes(5, head_hash, created, hashlib.sha256(public_der).hexdigest())
        s.add(
            AuditCheckpoint(
                seq=5,
                head_hash=head_hash,
                created_at=created,
                key_store="online",
                key_handle=real.key_handle,
                algorithm=real.algorithm,
                public_key_der=public_der,
                signed_data=data,
                signature=mallory.sign(data, ec.ECDSA(serialization_hash())),
            )
        )
        s.commit()
    report = _verify(bare_services)
    assert not report.ok and report.first_bad_checkpoint == 5, report
    assert "not the key store's audit-signing key" in (report.reason or "")


def serialization_hash():
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


def test_checkpoint_signs_the_head_and_skips_when_nothing_is_new(bare_services: Services) -> None:
    auditing: AuditCheckpointService = bare_services.auditing
    with bare_services.sessions() as s:
        assert auditing.checkpoint(s, SYSTEM) is None  # an empty log: nothing to sign
    _append(bare_services, 2)
    first = _checkpoint(bare_services)
    # it covers the registration of its new key (entry 3) too
    assert first.seq == 3 and "audit-signing-" in first.key_handle
    with bare_services.sessions() as s:
        assert auditing.checkpoint(s, SYSTEM) is None  # only its own entry since
        entry = s.scalars(select(AuditEntry).where(AuditEntry.seq == 4)).one()
        assert entry.action == CHECKPOINT_ACTION and entry.object_id == "3"
        with pytest.raises(ForbiddenError):
            auditing.checkpoint(s, OPERATOR)
    _append(bare_services, 1)
    second = _checkpoint(bare_services)
    assert second.seq == 5 and second.key_handle == first.key_handle  # the current key is reused
    public = serialization.load_der_public_key(second.public_key_der)
    assert isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1"
    exported = bare_services.config.checkpoint_file
    assert stat.S_IMODE(exported.stat().st_mode) == 0o600
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["seq"] for line in lines] == [3, 5]
    assert {"seq", "head_hash", "created_at", "public_key", "signature"} <= set(lines[0])
    report = _verify(bare_services)
    assert report.ok and report.checkpoints == 2 and report.entries == 6, report
    with bare_services.sessions() as s:
        runs = s.scalars(select(AuditVerification).order_by(AuditVerification.id)).all()
        assert runs[-1].ok and runs[-1].entries == 6 and runs[-1].actor == AUDITOR.audit_name


def test_a_broken_run_is_recorded(bare_services: Services) -> None:
    _append(bare_services, 3)
    _tamper(bare_services, "edit")
    assert not _verify(bare_services).ok
    with bare_services.sessions() as s:
        run = s.scalars(select(AuditVerification).order_by(AuditVerification.id.desc())).first()
        assert run is not None and not run.ok and run.first_bad_seq == 3 and "entry 3" in (run.reason or "")


def test_syslog_that_cannot_be_reached_is_a_warning(
    bare_services: Services, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _append(bare_services, 1)
    made = _checkpoint(bare_services)
    service = AuditCheckpointService(
        bare_services.keystores,
        bare_services.clock,
        type(bare_services.auditing.settings)(
            checkpoint_interval=dt.timedelta(minutes=60),
            checkpoint_file=tmp_path / "cp.jsonl",
            syslog=True,
            syslog_address=str(tmp_path / "no-such-socket"),
        ),
    )
    with caplog.at_level(logging.WARNING, logger="govpki.audit"):
        where = service.export(made)
    assert where == [str(tmp_path / "cp.jsonl")]
    assert "not sent to syslog" in caplog.text


def test_checkpoint_is_due_by_the_interval(bare_services: Services) -> None:
    _append(bare_services, 1)
    with bare_services.sessions() as s:
        assert bare_services.auditing.due(s)
    _checkpoint(bare_services)
    with bare_services.sessions() as s:
        assert not bare_services.auditing.due(s)


def test_failed_audit_write_blocks_a_revocation(services: Services) -> None:
    """Fail closed: the revocation's audit entry cannot be written, so it does not happen."""
    with services.sessions() as s:
        record = services.ca.issue(s, SYSTEM, profile="service-tls-server", csr=csr_pem(cn="fc.example.gov.cn"))
        s.commit()
        serial = record.serial
    with services.engine.begin() as conn:
        _unguard(conn)
    with services.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_head"))
    with services.sessions() as s:
        entries = s.scalar(select(func.count()).select_from(AuditEntry))
        with pytest.raises(RuntimeError, match="audit"):
            services.revocation.revoke(s, SYSTEM, serial, reason="keyCompromise")
        s.rollback()
    with services.sessions() as s:
        cert = s.scalars(select(CertificateRecord).where(CertificateRecord.serial == serial)).one()
        assert cert.revoked_at is None
        assert cert.revocation_reason is None
        assert s.scalar(select(func.count()).select_from(AuditEntry)) == entries
        # and no checkpoint can be signed either
        with pytest.raises(RuntimeError, match="audit"):
            services.auditing.checkpoint(s, SYSTEM)


def test_only_auditors_verify(bare_services: Services) -> None:
    with bare_services.sessions() as s, pytest.raises(ForbiddenError):
        bare_services.auditing.verify(s, OPERATOR)


def test_checkpoint_naming_another_key_store_is_refused(bare_services: Services) -> None:
    _append(bare_services, 2)
    real = _checkpoint(bare_services)
    _append(bare_services, 1)
    with bare_services.sessions() as s:
        head_hash = s.scalar(select(AuditEntry.hash).where(AuditEntry.seq == 4))
        assert head_hash is not None
        s.add(
            AuditCheckpoint(
                seq=4,
                head_hash=head_hash,
                created_at=real.created_at,
                key_store="root",
                key_handle=real.key_handle,
                algorithm=real.algorithm,
                public_key_der=real.public_key_der,
                signed_data=real.signed_data,
                signature=real.signature,
            )
        )
        s.commit()
    report = _verify(bare_services)
    assert not report.ok and report.first_bad_checkpoint == 4, report  # the signature does not cover seq 4 either


def test_sqlite_time_in_another_shape_is_parsed(bare_services: Services) -> None:
    """verify_chain slices SQLite's usual stored time; another shape of the same time is parsed."""
    _append(bare_services, 2)
    with bare_services.engine.begin() as conn:
        if conn.dialect.name != "sqlite":
            pytest.skip("SQLite's stored text only")
        _unguard(conn)
        stored = conn.execute(text("SELECT at FROM audit_log WHERE seq = 2")).scalar_one()
        assert len(stored) == 26 and stored[10] == " "
        conn.execute(text("UPDATE audit_log SET at = :t WHERE seq = 2"), {"t": stored.replace(" ", "T") + "+00:00"})
    with bare_services.sessions() as s:
        assert verify_chain(s).ok  # the same instant
    with bare_services.engine.begin() as conn:
        other = stored[:-1] + ("8" if stored[-1] == "9" else "9")  # one microsecond off, never the same text
        conn.execute(text("UPDATE audit_log SET at = :t WHERE seq = 2"), {"t": other})
    with bare_services.sessions() as s:
        report = verify_chain(s)
    assert not report.ok and report.first_bad_seq == 2
