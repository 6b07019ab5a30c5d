#!/usr/bin/env python3
"""bench/crl: time to generate a full CRL with N revoked entries, ours against
``openssl ca -gencrl`` over the same entries and the same CA key.

* ours    - ``CrlService.generate(session, SYSTEM, ca_id, "full")`` on a throw-away
  instance (SQLite unless ``--database-url``): read the revoked records, encode,
  sign with the issuing CA's signer handle, parse back and check the signature,
  store the CRL and its audit entry; the commit is timed separately.
* openssl - ``openssl ca -gencrl`` with an ``index.txt`` holding the same N revoked
  entries (serial, revocation time, reason), the same issuing CA certificate and
  the same key file (the instance's encrypted PKCS#8 file, opened with
  ``-passin file:`` — the key is never written out in clear), SHA-384, and
  CRL number and AKI extensions.

The N certificate rows are synthetic: bulk-inserted into ``certificates`` with
unique random 127-bit serials, ``state='issued'``, a placeholder one-byte
``cert_der``/``tbs_der`` and a revocation reason (unspecified, keyCompromise,
superseded, affiliationChanged, cessationOfOperation; no holds, because openssl's
index wants a hold instruction, and no invalidity dates). No certificate was
signed for them.

Run:  .venv/bin/python bench/crl.py [--sizes 100000,1000000] [--repeat 3] [--repeat-large 1]

Each "ours" run is its own process (its peak RSS is reported); everything lives in
a temporary folder that is removed at the end. Results: a table on stdout and
bench/results/crl-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import multiprocessing as mp
import os
import random
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _stats  # noqa: E402

REASONS = ["unspecified", "keyCompromise", "superseded", "affiliationChanged", "cessationOfOperation"]
LARGE = 200_000  # sizes from here on use --repeat-large


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _env(folder: Path, database_url: str | None) -> dict[str, str]:
    return {
        "GOVPKI_INSTANCE_DIR": str(folder / "instance"),
        "GOVPKI_DATABASE_URL": database_url or f"sqlite:///{folder / 'instance' / 'govpki.sqlite3'}",
        "GOVPKI_ISSUING_KEY_ALGORITHM": "ec-p384",
        "GOVPKI_ROOT_KEY_ALGORITHM": "ec-p384",
    }


def _services(env: dict[str, str]) -> Any:
    from govpki.config import Config
    from web.container import build_services

    return build_services(Config.from_env(env))


def set_up(folder: Path, database_url: str | None) -> dict[str, Any]:
    from ca.models import CaKind
    from govpki.principal import SYSTEM
    from web.bootstrap import initialize

    services = _services(_env(folder, database_url))
    try:
        initialize(services, SYSTEM, first_admin=False)
        with services.sessions() as session:
            ca = services.ca.active_ca(session, CaKind.ISSUING)
            label = ca.key_handle.removeprefix("file:")
            settings = services.config.online_keystore
            assert settings.path is not None and settings.passphrase_file is not None
            return {
                "ca_id": ca.id,
                "cert_der": ca.cert_der,
                "key_file": str(settings.path / f"{label}.key.pem"),
                "passphrase_file": str(settings.passphrase_file),
            }
    finally:
        services.dispose()


def insert_rows(
    folder: Path, database_url: str | None, ca_id: int, count: int, start: int
) -> list[tuple[str, str, _dt.datetime]]:
    """Add ``count`` synthetic revoked rows; return (serial, reason, time) of each for openssl."""
    from sqlalchemy import insert

    from ca.models import CertificateRecord

    services = _services(_env(folder, database_url))
    rng = random.Random(start)
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    not_after = now + _dt.timedelta(days=365)
    made: list[tuple[str, str, _dt.datetime]] = []
    try:
        batch = 50_000
        for offset in range(0, count, batch):
            rows = []
            for i in range(offset, min(count, offset + batch)):
                serial = format(secrets.randbits(127) | (1 << 126), "x")
                reason = REASONS[rng.randrange(len(REASONS))]
                revoked_at = now - _dt.timedelta(seconds=rng.randrange(86400 * 300))
                made.append((serial, reason, revoked_at))
                rows.append(
                    {
                        "serial": serial,
                        "ca_id": ca_id,
                        "profile": "bench",
                        "profile_version": 1,
                        "state": "issued",
                        "requester": "bench",
                        "subject": f"CN=bench-{start + i}",
                        "sans": "",
                        "key_type": "ec-p256",
                        "spki_sha256": "0" * 64,
                        "tbs_der": b"\x00",
                        "cert_der": b"\x00",
                        "not_before": now,
                        "not_after": not_after,
                        "created_at": now,
                        "updated_at": now,
                        "issued_at": now,
                        "revocation_reason": reason,
                        "revoked_at": revoked_at,
                        "status_seq": 0,
                    }
                )
            with services.engine.begin() as conn:
                conn.execute(insert(CertificateRecord), rows)
    finally:
        services.dispose()
    return made


def _ours_child(folder: str, database_url: str | None, ca_id: int, queue: Any) -> None:
    from govpki.principal import SYSTEM

    services = _services(_env(Path(folder), database_url))
    try:
        services.keystores["online"]  # opened (and the key decrypted) before timing
        with services.sessions() as session:
            t0 = time.perf_counter()
            record = services.crl.generate(session, SYSTEM, ca_id, "full")
            t1 = time.perf_counter()
            session.commit()
            t2 = time.perf_counter()
            size = len(record.der)
            entries = record.entries
    finally:
        services.dispose()
    peak = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) // 1024
    queue.put({"generate_s": t1 - t0, "commit_s": t2 - t1, "bytes": size, "entries": entries, "peak_rss_mb": peak})


def run_ours(folder: Path, database_url: str | None, ca_id: int) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_ours_child, args=(str(folder), database_url, ca_id, queue))
    proc.start()
    result: dict[str, Any] = queue.get()
    proc.join()
    return result


def write_index(
    folder: Path, entries: list[tuple[str, str, _dt.datetime]], cert_der: bytes, setup: dict[str, Any]
) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    ossl = folder / "openssl"
    ossl.mkdir(exist_ok=True)
    (ossl / "ca.pem").write_bytes(x509.load_der_x509_certificate(cert_der).public_bytes(Encoding.PEM))
    expiry = (_dt.datetime.now(_dt.UTC) + _dt.timedelta(days=365)).strftime("%y%m%d%H%M%SZ")
    with (ossl / "index.txt").open("w", encoding="ascii") as out:
        for i, (serial, reason, revoked_at) in enumerate(entries):
            when = revoked_at.strftime("%y%m%d%H%M%SZ")
            revinfo = when if reason == "unspecified" else f"{when},{reason}"
            out.write(f"R\t{expiry}\t{revinfo}\t{serial.upper().zfill(32)}\tunknown\t/CN=bench-{i}\n")
    (ossl / "index.txt.attr").write_text("unique_subject = no\n")
    (ossl / "ca.cnf").write_text(
        "[ca]\ndefault_ca = CA_default\n[CA_default]\n"
        f"dir = {ossl}\ndatabase = {ossl}/index.txt\ncrlnumber = {ossl}/crlnumber\n"
        f"certificate = {ossl}/ca.pem\nprivate_key = {setup['key_file']}\n"
        "default_md = sha384\ndefault_crl_hours = 24\nunique_subject = no\ncrl_extensions = crl_ext\n"
        "[crl_ext]\nauthorityKeyIdentifier = keyid:always\n"
    )
    return ossl


def run_openssl(ossl: Path, setup: dict[str, Any]) -> dict[str, Any]:
    (ossl / "crlnumber").write_text("1000\n")
    out = ossl / "crl.pem"
    cmd = [
        "openssl", "ca", "-gencrl", "-batch", "-config", str(ossl / "ca.cnf"),
        "-passin", f"file:{setup['passphrase_file']}", "-out", str(out),
    ]  # fmt: skip
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _pid, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - t0
    stderr = proc.stderr.read() if proc.stderr else ""
    if status != 0:
        raise RuntimeError(f"openssl ca -gencrl failed: {stderr.strip()}")
    der = subprocess.run(["openssl", "crl", "-in", str(out), "-outform", "DER"], capture_output=True, check=True).stdout
    return {"generate_s": elapsed, "bytes": len(der), "peak_rss_mb": usage.ru_maxrss // 1024}


def check_same(folder: Path, database_url: str | None, ca_id: int, ossl: Path) -> dict[str, Any]:
    """Both CRLs list the same serials, and ``openssl crl -verify`` accepts ours."""
    from cryptography import x509

    from ca.models import CrlKind

    services = _services(_env(folder, database_url))
    try:
        with services.sessions() as session:
            ours = services.crl.latest(session, ca_id, CrlKind.FULL)
            assert ours is not None
            der = ours.der
    finally:
        services.dispose()
    ours_crl = x509.load_der_x509_crl(der)
    theirs = x509.load_pem_x509_crl((ossl / "crl.pem").read_bytes())
    same = {r.serial_number for r in ours_crl} == {r.serial_number for r in theirs}
    (ossl / "ours.crl").write_bytes(der)
    verify = subprocess.run(
        ["openssl", "crl", "-inform", "DER", "-in", str(ossl / "ours.crl"), "-noout", "-verify", "-CAfile",
         str(ossl / "ca.pem")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return {"same_serials": same, "openssl_verifies_ours": "verify OK" in verify.stdout + verify.stderr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,1000000", help="comma-separated entry counts")
    parser.add_argument("--repeat", type=int, default=3, help="runs per size below 200,000 entries")
    parser.add_argument("--repeat-large", type=int, default=1, help="runs per size from 200,000 entries")
    parser.add_argument("--database-url", help="instead of a SQLite file in the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(",") if s.strip())

    folder = Path(tempfile.mkdtemp(prefix="govpki-bench-crl-"))
    results: dict[str, Any] = {
        "bench": "crl",
        "started": _dt.datetime.now(_dt.UTC).isoformat(),
        "machine": _stats.machine_facts(),
        "git": _stats.git_facts(REPO),
        "openssl": subprocess.run(["openssl", "version"], capture_output=True, text=True, check=False).stdout.strip(),
        "sizes": [],
    }
    rows = []
    try:
        setup = set_up(folder, args.database_url)
        entries: list[tuple[str, str, _dt.datetime]] = []
        for size in sizes:
            log(f"inserting {size - len(entries)} synthetic revoked rows (total {size})")
            t0 = time.perf_counter()
            entries += insert_rows(folder, args.database_url, setup["ca_id"], size - len(entries), len(entries))
            log(f"  inserted in {time.perf_counter() - t0:.1f} s; writing index.txt")
            ossl = write_index(folder, entries, setup["cert_der"], setup)
            repeat = args.repeat_large if size >= LARGE else args.repeat
            ours_runs, openssl_runs = [], []
            for i in range(repeat):
                load = os.getloadavg()[0]
                ours_runs.append(run_ours(folder, args.database_url, setup["ca_id"]))
                log(f"  ours    #{i + 1}: {ours_runs[-1]['generate_s']:.2f} s (load {load:.2f})")
                openssl_runs.append(run_openssl(ossl, setup))
                log(f"  openssl #{i + 1}: {openssl_runs[-1]['generate_s']:.2f} s")
            check = check_same(folder, args.database_url, setup["ca_id"], ossl)
            ours_t = sorted(r["generate_s"] for r in ours_runs)
            theirs_t = sorted(r["generate_s"] for r in openssl_runs)
            row = {
                "entries": size,
                "runs": repeat,
                "ours_best_s": ours_t[0],
                "ours_median_s": statistics.median(ours_t),
                "ours_commit_s": statistics.median(r["commit_s"] for r in ours_runs),
                "ours_peak_rss_mb": max(r["peak_rss_mb"] for r in ours_runs),
                "ours_bytes": ours_runs[-1]["bytes"],
                "openssl_best_s": theirs_t[0],
                "openssl_median_s": statistics.median(theirs_t),
                "openssl_peak_rss_mb": max(r["peak_rss_mb"] for r in openssl_runs),
                "openssl_bytes": openssl_runs[-1]["bytes"],
                "ratio_best": ours_t[0] / theirs_t[0],
                "ratio_median": statistics.median(ours_t) / statistics.median(theirs_t),
                **check,
                "ours_runs": ours_runs,
                "openssl_runs": openssl_runs,
            }
            results["sizes"].append(row)
            rows.append(row)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            log(f"kept {folder}")

    print()
    print(f"{'entries':>9} {'runs':>4} {'ours best':>10} {'ours med':>9} {'openssl best':>13} {'openssl med':>12}"
          f" {'ratio':>6} {'RSS ours/openssl MB':>20}  checks")  # fmt: skip
    for r in rows:
        checks = "same serials" if r["same_serials"] else "SERIALS DIFFER"
        checks += ", openssl verifies ours" if r["openssl_verifies_ours"] else ", OPENSSL REFUSES OURS"
        print(
            f"{r['entries']:>9} {r['runs']:>4} {r['ours_best_s']:>9.2f}s {r['ours_median_s']:>8.2f}s"
            f" {r['openssl_best_s']:>12.2f}s {r['openssl_median_s']:>11.2f}s {r['ratio_median']:>6.2f}"
            f" {r['ours_peak_rss_mb']:>9} / {r['openssl_peak_rss_mb']:<8}  {checks}"
        )
    print("\nratio = ours median / openssl median (goal: <= 1.0). Ours includes reading the rows from the")
    print("database, the signature check after signing and storing the CRL with its audit entry; the commit")
    print("(median below) is extra. openssl reads a text index and writes PEM.")
    for r in rows:
        print(
            f"  {r['entries']}: commit {r['ours_commit_s']:.2f} s;"
            f" CRL {r['ours_bytes']} bytes (openssl {r['openssl_bytes']})"
        )
    out_dir = BENCH_DIR / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (out_dir / f"crl-{stamp}.json").write_text(json.dumps(results, indent=2, default=str))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    log(f"results in bench/results/crl-{stamp}.json; peak RSS of this (driver) process {peak} MB")
    ok = all(r["same_serials"] and r["openssl_verifies_ours"] for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
