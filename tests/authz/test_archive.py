"""Retention and archival: old segments go to signed files (checked offline and with
plain openssl), then leave the log by the only path the delete trigger allows; the
rest of the chain verifies from the archive's anchor, and tampering is still found."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from authz.archive import MIN_RETENTION_DAYS, RetentionSettings, verify_archive_file
from govpki import audit
from govpki.audit import AuditArchive, AuditEntry, verify_chain
from govpki.config import Config
from govpki.errors import ConfigError, ConflictError, ForbiddenError, InvalidError
from govpki.principal import SYSTEM, Principal, PrincipalKind, Role
from tests.helpers import make_config
from web.container import Services, build_services

AUDITOR = Principal(PrincipalKind.ACCOUNT, "7", "auditor", frozenset({Role.SECURITY_AUDITOR}))
SECADMIN = Principal(PrincipalKind.ACCOUNT, "8", "secadmin", frozenset({Role.SECURITY_ADMIN}))
START = dt.datetime(2026, 1, 1, 8, 0, tzinfo=dt.UTC)


class MovableClock:
    def __init__(self, now: dt.datetime) -> None:
        self.at = now

    def now(self) -> dt.datetime:
        return self.at

    def advance(self, **kw: float) -> None:
        self.at += dt.timedelta(**kw)


@pytest.fixture
def clock() -> MovableClock:
    return MovableClock(START)


@pytest.fixture
def svc(config: Config, clock: MovableClock) -> Iterator[Services]:
    services = build_services(config, clock=clock)
    try:
        yield services
    finally:
        services.dispose()


def _append(services: Services, clock: MovableClock, n: int) -> None:
    with services.sessions() as s:
        for i in range(n):
            audit.record(
                s, SYSTEM, "test:thing:touch", object_type="thing", object_id=str(i), details={"i": i}, clock=clock
            )
        s.commit()


def _checkpoint(services: Services) -> int:
    with services.sessions() as s:
        made = services.auditing.checkpoint(s, SYSTEM)
        assert made is not None
        s.commit()
        services.auditing.export(made)
        return made.seq


def _archive(services: Services, principal: Principal = AUDITOR):
    with services.sessions() as s:
        made = services.archive.archive(s, principal)
        s.commit()
        return made


def _verify(services: Services, checkpoints_file: Path | None = None):
    with services.sessions() as s:
        report = services.auditing.verify(s, AUDITOR, checkpoints_file)
        s.commit()
    return report


def _seqs(services: Services) -> list[int]:
    with services.sessions() as s:
        return list(s.scalars(select(AuditEntry.seq).order_by(AuditEntry.seq)))


def _old_log(svc: Services, clock: MovableClock) -> tuple[int, int]:
    """Entries 1..a (checkpointed at a), then half a year and more later b more and a checkpoint."""
    _append(svc, clock, 5)
    first_cp = _checkpoint(svc)
    clock.advance(days=MIN_RETENTION_DAYS + 200)
    _append(svc, clock, 3)
    second_cp = _checkpoint(svc)
    return first_cp, second_cp


def test_old_segment_is_archived_signed_and_removed(svc: Services, clock: MovableClock) -> None:
    first_cp, second_cp = _old_log(svc, clock)
    made = _archive(svc)
    assert made is not None
    assert (made.row.first_seq, made.row.last_seq, made.row.entries) == (1, first_cp, first_cp)
    # gone from the log, and the rest still verifies from the archive's anchor
    seqs = _seqs(svc)
    assert seqs[0] == first_cp + 1
    with svc.sessions() as s:
        chain = verify_chain(s)
    assert chain.ok and chain.head_seq == seqs[-1] and chain.entries == len(seqs)
    report = _verify(svc, svc.config.checkpoint_file)
    assert report.ok, report.summary
    # archival and removal are audited, after the segment
    with svc.sessions() as s:
        actions = {e.action: e for e in s.scalars(select(AuditEntry).where(AuditEntry.seq > second_cp))}
    assert json.loads(actions["authz:audit:archive"].details)["file_sha256"] == made.row.file_sha256
    assert json.loads(actions["authz:audit:remove"].details)["removed"] == first_cp
    # files are private
    for path in (made.path, made.signature_path, made.public_key_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    # offline check, and plain openssl
    offline = verify_archive_file(made.path)
    assert offline.ok, offline.summary
    assert (offline.first_seq, offline.last_seq, offline.entries, offline.checkpoints) == (1, first_cp, first_cp, 1)
    run = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", made.public_key_path, "-signature", made.signature_path, made.path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0 and "Verified OK" in run.stdout
    # the entries are in the file as they were
    lines = [json.loads(line) for line in made.path.read_text().splitlines()]
    assert lines[0]["format"] == "govpki-audit-archive/1"
    assert [line["entry"]["seq"] for line in lines[1:] if "entry" in line] == list(range(1, first_cp + 1))


def test_nothing_younger_than_retention_is_archived(svc: Services, clock: MovableClock) -> None:
    _append(svc, clock, 4)
    _checkpoint(svc)
    clock.advance(days=MIN_RETENTION_DAYS - 1)
    assert _archive(svc) is None
    assert _seqs(svc)[0] == 1


def test_segment_ends_at_a_checkpoint(svc: Services, clock: MovableClock) -> None:
    _append(svc, clock, 4)  # old, but no checkpoint covers it yet
    clock.advance(days=400)
    assert _archive(svc) is None
    _append(svc, clock, 1)  # a young entry, then a checkpoint covering it: still nothing
    cp = _checkpoint(svc)
    assert _archive(svc) is None
    clock.advance(days=400)
    made = _archive(svc)
    assert made is not None and made.row.last_seq == cp


def test_second_archive_follows_the_first(svc: Services, clock: MovableClock) -> None:
    first_cp, second_cp = _old_log(svc, clock)
    assert _archive(svc) is not None
    clock.advance(days=400)
    second = _archive(svc)
    assert second is not None
    assert second.row.first_seq == first_cp + 1 and second.row.last_seq >= second_cp
    assert verify_archive_file(second.path).ok
    report = _verify(svc, svc.config.checkpoint_file)
    assert report.ok, report.summary


def test_retention_cannot_go_below_the_floor(tmp_path: Path, database_url: str) -> None:
    with pytest.raises(ConfigError, match="AUDIT_RETENTION_DAYS"):
        make_config(tmp_path / "i", database_url, GOVPKI_AUDIT_RETENTION_DAYS="179")
    assert make_config(tmp_path / "j", database_url, GOVPKI_AUDIT_RETENTION_DAYS="180").audit_retention_days == 180
    with pytest.raises(InvalidError):
        RetentionSettings(dt.timedelta(days=90), tmp_path)


def test_only_the_auditor_or_system_archives(svc: Services, clock: MovableClock) -> None:
    _old_log(svc, clock)
    with pytest.raises(ForbiddenError):
        _archive(svc, SECADMIN)
    assert _seqs(svc)[0] == 1


def test_a_broken_log_is_not_archived(svc: Services, clock: MovableClock) -> None:
    _old_log(svc, clock)
    with svc.engine.begin() as conn:
        _unguard_update(conn)
        conn.execute(text("UPDATE audit_log SET details = 'tampered' WHERE seq = 2"))
    with pytest.raises(ConflictError, match="does not verify"):
        _archive(svc)
    assert _seqs(svc)[0] == 1
    assert not list(svc.config.archive_dir.glob("*.jsonl")) if svc.config.archive_dir.exists() else True


def test_database_refuses_deleting_unarchived_entries(svc: Services, clock: MovableClock) -> None:
    first_cp, _ = _old_log(svc, clock)
    with svc.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": first_cp + 1})
    assert _archive(svc) is not None
    with svc.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("DELETE FROM audit_log WHERE seq = :s"), {"s": first_cp + 1})
    with svc.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("DELETE FROM audit_archives"))
    with svc.engine.connect() as conn, pytest.raises(DBAPIError, match="append-only"):
        conn.execute(text("UPDATE audit_archives SET last_hash = 'x'"))


def _unguard_update(conn) -> None:
    if conn.dialect.name == "sqlite":
        conn.execute(text("DROP TRIGGER IF EXISTS audit_log_no_update"))
    else:
        conn.execute(text("ALTER TABLE audit_log DISABLE TRIGGER USER"))


def _unguard_all(conn) -> None:
    if conn.dialect.name == "sqlite":
        for trigger in (
            "audit_log_no_update",
            "audit_log_no_delete",
            "audit_archives_no_delete",
            "audit_archives_no_update",
        ):
            conn.execute(text(f"DROP TRIGGER IF EXISTS {trigger}"))
    else:
        for table in ("audit_log", "audit_archives"):
            conn.execute(text(f"ALTER TABLE {table} DISABLE TRIGGER USER"))


def test_deleting_the_archive_row_is_detected(svc: Services, clock: MovableClock) -> None:
    _old_log(svc, clock)
    assert _archive(svc) is not None
    with svc.engine.begin() as conn:
        _unguard_all(conn)
        conn.execute(text("DELETE FROM audit_archives"))
    report = _verify(svc)
    assert not report.ok and report.first_bad_seq == 1


def test_forged_archive_row_is_detected(svc: Services, clock: MovableClock) -> None:
    """An attacker deletes old entries and writes an archive row to cover them: no signature."""
    first_cp, _ = _old_log(svc, clock)
    with svc.engine.begin() as conn:
        _unguard_all(conn)
        last_hash = conn.execute(text("SELECT hash FROM audit_log WHERE seq = :s"), {"s": first_cp}).scalar_one()
        conn.execute(
            text(
                "INSERT INTO audit_archives (first_seq, last_seq, first_prev_hash, last_hash, entries, created_at, "
                "file_name, file_sha256, key_store, key_handle, public_key_der, signed_data, signature) VALUES "
                "(1, :l, :g, :h, :l, :t, 'x.jsonl', :z, 'online', 'nope', :b, :b, :b)"
            ),
            {"l": first_cp, "g": audit.GENESIS_HASH, "h": last_hash, "t": clock.now(), "z": "0" * 64, "b": b"x"},
        )
        conn.execute(text("DELETE FROM audit_log WHERE seq <= :s"), {"s": first_cp})
    report = _verify(svc)
    assert not report.ok and "archive of entries 1.." in (report.reason or "")


def test_rewriting_after_the_anchor_is_detected(svc: Services, clock: MovableClock) -> None:
    first_cp, _ = _old_log(svc, clock)
    assert _archive(svc) is not None
    with svc.engine.begin() as conn:
        _unguard_update(conn)
        conn.execute(text("UPDATE audit_log SET actor = 'account:mallory' WHERE seq = :s"), {"s": first_cp + 1})
    report = _verify(svc)
    assert not report.ok and report.first_bad_seq == first_cp + 1


@pytest.mark.parametrize("how", ["entry", "signature", "header", "truncate", "key"])
def test_tampered_archive_file_is_detected(svc: Services, clock: MovableClock, how: str, tmp_path: Path) -> None:
    _old_log(svc, clock)
    made = _archive(svc)
    assert made is not None
    lines = made.path.read_text().splitlines()
    if how == "entry":
        item = json.loads(lines[2])
        item["entry"]["actor"] = "account:mallory"
        lines[2] = audit.canonical_json(item)
        made.path.write_text("\n".join(lines) + "\n")
    elif how == "signature":
        sig = bytearray(made.signature_path.read_bytes())
        sig[-1] ^= 1
        made.signature_path.write_bytes(bytes(sig))
    elif how == "header":
        header = json.loads(lines[0])
        header["last_seq"] += 1
        lines[0] = audit.canonical_json(header)
        made.path.write_text("\n".join(lines) + "\n")
    elif how == "truncate":
        made.path.write_text("\n".join(lines[:-2]) + "\n")
    else:  # someone else's key beside the file
        subprocess.run(
            ["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", tmp_path / "k.pem"], check=True
        )
        subprocess.run(
            ["openssl", "ec", "-in", tmp_path / "k.pem", "-pubout", "-out", made.public_key_path],
            check=True,
            capture_output=True,
        )
    report = verify_archive_file(made.path)
    assert not report.ok and report.problems
    run = subprocess.run(
        ["openssl", "dgst", "-sha256", "-verify", made.public_key_path, "-signature", made.signature_path, made.path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode != 0  # openssl agrees


def test_cli_archive_and_verify_archive(config: Config, clock: MovableClock, monkeypatch: pytest.MonkeyPatch) -> None:
    from web import cli

    svc = build_services(config, clock=clock)
    try:
        first_cp, _ = _old_log(svc, clock)
    finally:
        svc.dispose()
    monkeypatch.setattr(cli, "load_services", lambda: build_services(config, clock=clock))
    runner = CliRunner()
    result = runner.invoke(cli.main, ["audit", "archive"])
    assert result.exit_code == 0, result.output
    assert f"1..{first_cp}" in result.output and "openssl dgst" in result.output
    path = config.archive_dir / f"audit-{1:012d}-{first_cp:012d}.jsonl"
    result = runner.invoke(cli.main, ["audit", "verify-archive", str(path)])
    assert result.exit_code == 0, result.output
    assert "archive OK" in result.output and "the file this instance recorded" in result.output
    result = runner.invoke(cli.main, ["audit", "archive"])
    assert result.exit_code == 0 and "nothing to archive" in result.output
    result = runner.invoke(cli.main, ["audit", "verify"])
    assert result.exit_code == 0, result.output
    path.write_text(path.read_text().replace("test:thing:touch", "test:thing:tickle", 1))
    result = runner.invoke(cli.main, ["audit", "verify-archive", str(path)])
    assert result.exit_code == 1 and "BROKEN" in result.output


def test_job_archives_at_most_daily(svc: Services, clock: MovableClock) -> None:
    from web.jobs import Job, default_jobs, run_due

    _old_log(svc, clock)
    archive_job = [j for j in default_jobs() if j.name == "audit-archive"]
    assert [j.name for j in default_jobs()][-1] == "audit-checkpoint"
    (result,) = run_due(svc, archive_job)
    assert result.ok and "archived audit entries 1.." in result.lines[0]
    clock.advance(days=300)
    _checkpoint(svc)
    clock.advance(days=300)
    with svc.sessions() as s:
        assert svc.archive.due(s)
    (result,) = run_due(svc, [Job("audit-archive", archive_job[0].run)])
    assert result.ok and result.lines
    with svc.sessions() as s:
        assert not svc.archive.due(s)
        assert s.scalar(select(func.count()).select_from(AuditArchive)) == 2
    assert dataclasses.is_dataclass(svc.archive.settings)
