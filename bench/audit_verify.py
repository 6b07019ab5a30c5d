#!/usr/bin/env python3
"""bench/audit_verify: full verification time of the audit log (``govpki audit verify``).

On a throw-away instance (SQLite unless ``--database-url``): bulk-insert N valid,
chained entries (hashes computed with the real ``govpki.audit.entry_hash``; Core
``executemany`` in batches), set the chain head, sign one checkpoint with the
audit-signing key, then time what ``govpki audit verify`` runs:
``services.auditing.verify`` (the whole chain streamed and recomputed, every
checkpoint's signature, key and entry hash, and the ``AuditVerification`` row).

Run:  .venv/bin/python bench/audit_verify.py [--entries 1000000] [--repeat 3]
      [--database-url postgresql+psycopg://user@host/db-to-fill]   (an empty database)

Prints seconds and entries/s per run; writes bench/results/audit_verify-<UTC>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import Table, insert, update  # noqa: E402

from bench._stats import git_facts, machine_facts  # noqa: E402
from govpki import audit  # noqa: E402
from govpki.audit import AuditEntry, AuditHead, canonical_json, entry_hash  # noqa: E402
from govpki.config import Config  # noqa: E402
from govpki.principal import SYSTEM  # noqa: E402
from web.container import build_services  # noqa: E402

ACTIONS = ("ca:cert:issue", "ca:cert:revoke", "authz:account:login", "ra:request:approve")


def fill(services, entries: int, batch: int = 20000) -> float:  # type: ignore[no-untyped-def]
    """Insert ``entries`` valid chained entries; returns seconds taken."""
    table = AuditEntry.__table__
    start = time.perf_counter()
    prev = audit.GENESIS_HASH
    base = _dt.datetime(2026, 1, 1, tzinfo=_dt.UTC)
    rows: list[dict[str, object]] = []
    with services.engine.begin() as conn:
        for seq in range(1, entries + 1):
            at = base + _dt.timedelta(microseconds=seq * 1013)
            fields = {
                "seq": seq,
                "at": at,
                "actor": f"account:operator{seq % 37}",
                "action": ACTIONS[seq % len(ACTIONS)],
                "object_type": "certificate",
                "object_id": f"{seq * 2654435761 % (1 << 64):016x}",
                "outcome": "success",
                "details": canonical_json({"profile": "service-tls-server", "n": seq, "名": "值"}),
            }
            digest = entry_hash(prev, **fields)  # type: ignore[arg-type]
            rows.append({**fields, "prev_hash": prev, "hash": digest})
            prev = digest
            if len(rows) >= batch:
                conn.execute(insert(table), rows)  # type: ignore[arg-type]
                rows = []
        if rows:
            conn.execute(insert(table), rows)  # type: ignore[arg-type]
        head = cast(Table, AuditHead.__table__)
        conn.execute(update(head).where(head.c.id == 1).values(seq=entries, hash=prev))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--database-url", default=None, help="an EMPTY database (default: SQLite in a temp folder)")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="govpki-bench-audit-"))
    try:
        instance = folder / "instance"
        env = {"GOVPKI_INSTANCE_DIR": str(instance), "GOVPKI_TESTING": "1"}
        if args.database_url:
            env["GOVPKI_DATABASE_URL"] = args.database_url
        services = build_services(Config.from_env(env))
        backend = services.engine.dialect.name
        print(f"filling {args.entries} entries ({backend}) ...", flush=True)
        fill_s = fill(services, args.entries)
        print(f"filled in {fill_s:.1f} s", flush=True)
        with services.sessions() as session:
            made = services.auditing.checkpoint(session, SYSTEM)  # its own entry is N + 1
            session.commit()
            assert made is not None
        runs = []
        for i in range(args.repeat):
            with services.sessions() as session:
                start = time.perf_counter()
                report = services.auditing.verify(session, SYSTEM)
                session.commit()
                seconds = time.perf_counter() - start
            assert report.ok, report.summary
            runs.append(seconds)
            print(
                f"run {i + 1}: {report.entries} entries, {report.checkpoints} checkpoint(s) verified in "
                f"{seconds:.2f} s = {report.entries / seconds:,.0f} entries/s",
                flush=True,
            )
        services.dispose()
        best = min(runs)
        print(f"best {best:.2f} s ({args.entries / best:,.0f} entries/s); goal: under 10 s for 1,000,000")
        results = ROOT / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        (results / f"audit_verify-{stamp}.json").write_text(
            json.dumps(
                {
                    "backend": backend,
                    "entries": args.entries,
                    "fill_seconds": fill_s,
                    "verify_seconds": runs,
                    "machine": machine_facts(),
                    "git": git_facts(ROOT),
                },
                indent=2,
            )
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
