"""The audit primitive: gap-free, hash-chained, append-only at the database level."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from govpki import audit
from govpki.audit import AuditEntry, verify_chain
from govpki.principal import SYSTEM
from web.container import Services


def _append(services: Services, n: int) -> None:
    with services.sessions() as s:
        for i in range(n):
            audit.record(
                s, SYSTEM, "test:thing:touch", object_type="thing", object_id=str(i), details={"i": i, "名": "值"}
            )
        s.commit()


def test_chain_is_gap_free_and_verifies(bare_services: Services):
    _append(bare_services, 5)
    with bare_services.sessions() as s:
        audit.record(s, SYSTEM, "test:thing:touch", object_type="thing", object_id="rolled-back")
        s.rollback()
    _append(bare_services, 2)
    with bare_services.sessions() as s:
        seqs = s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)).all()
        assert seqs == list(range(1, 8))
        report = verify_chain(s)
        assert report.ok and report.entries == 7 and report.head_seq == 7


def test_bad_action_tag_refused(bare_services: Services):
    with bare_services.sessions() as s, pytest.raises(ValueError, match="domain:object:verb"):
        audit.record(s, SYSTEM, "not a tag", object_type="x", object_id="1")


@pytest.mark.parametrize("statement", ["UPDATE audit_log SET actor = 'mallory'", "DELETE FROM audit_log"])
def test_database_refuses_changes(bare_services: Services, statement: str):
    _append(bare_services, 2)
    with bare_services.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text(statement))
    with bare_services.sessions() as s:
        assert verify_chain(s).ok


def _drop_guards(services: Services) -> None:
    """What an administrator with database access could do first."""
    with services.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_log_no_update"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_log_append_only ON audit_log"))
            conn.execute(text("DROP TRIGGER audit_log_no_delete ON audit_log"))


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("UPDATE audit_log SET details = 'tampered' WHERE seq = 3", 3),
        ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 2", 2),
        ("DELETE FROM audit_log WHERE seq = 4", 4),
        ("DELETE FROM audit_log WHERE seq = 6", 6),  # the tail: the head row says 6
    ],
)
def test_tampering_is_detected(bare_services: Services, tamper: str, first_bad: int):
    _append(bare_services, 6)
    _drop_guards(bare_services)
    with bare_services.engine.begin() as conn:
        conn.execute(text(tamper))
    with bare_services.sessions() as s:
        report = verify_chain(s)
    assert not report.ok
    assert report.first_bad_seq == first_bad, report


def test_failed_audit_write_blocks_the_change(bare_services: Services):
    """Fail closed: without the chain head no entry can be written, and the change rolls back with it."""
    from ra.models import Prefecture

    with bare_services.engine.begin() as conn:
        if conn.dialect.name == "sqlite":
            conn.execute(text("DROP TRIGGER audit_head_no_delete"))
        else:
            conn.execute(text("DROP TRIGGER audit_head_no_delete ON audit_head"))
        conn.execute(text("DELETE FROM audit_head"))
    with bare_services.sessions() as s:
        with pytest.raises(RuntimeError, match="audit"):
            bare_services.regions.seed(s, SYSTEM, bare_services.region)
        s.rollback()
    with bare_services.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Prefecture)) == 0


AWKWARD = [
    "",
    "plain",
    'quo"te\\back/slash',
    "控制\x00\x01\x1f\x7f tab\t nl\n cr\r",
    "\u2028\u2029 emoji 😀 surrogate-free",
    "名:值,{}[]",
]


@pytest.mark.parametrize("text_value", AWKWARD)
@pytest.mark.parametrize(
    "at",
    [
        dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC),  # no microseconds: still printed
        dt.datetime(2026, 11, 22, 23, 59, 59, 999999, tzinfo=dt.UTC),
        dt.datetime(2026, 6, 1, 8, 0, 0, 123, tzinfo=dt.timezone(dt.timedelta(hours=8))),  # Beijing time
    ],
)
def test_fast_entry_hash_equals_entry_hash(text_value: str, at: dt.datetime):
    for seq in (1, 7, 10**12):
        fields = {
            "seq": seq,
            "at": at,
            "actor": f"account:{text_value}",
            "action": "ca:cert:issue",
            "object_type": text_value,
            "object_id": text_value + "1",
            "outcome": "success",
            "details": audit.canonical_json({"k": text_value, "n": [1, 2.5, None, True]}),
        }
        slow = audit.entry_hash("ab" * 32, **fields)  # type: ignore[arg-type]
        fast = audit.fast_entry_hash(
            "ab" * 32,
            seq,
            at,
            str(fields["actor"]),
            str(fields["action"]),
            str(fields["object_type"]),
            str(fields["object_id"]),
            str(fields["outcome"]),
            str(fields["details"]),
        )
        assert fast == slow


def test_verify_chain_recomputes_with_the_recorded_hashes(bare_services: Services):
    """The fast verifier agrees with what ``record`` wrote (real rows, real types)."""
    _append(bare_services, 3)
    with bare_services.sessions() as s:
        for row in s.scalars(select(AuditEntry).order_by(AuditEntry.seq)):
            assert (
                audit.fast_entry_hash(
                    row.prev_hash,
                    row.seq,
                    row.at,
                    row.actor,
                    row.action,
                    row.object_type,
                    row.object_id,
                    row.outcome,
                    row.details,
                )
                == row.hash
            )
