#!/usr/bin/env python3
"""bench/ocsp: OCSP responder throughput and latency, govpki against `openssl ocsp`, in one run.

For each size N (default 1,000 and 1,000,000 certificates in the database):

* a throw-away instance (SQLite) with ``govpki init``, then N **synthetic** issued
  certificate rows bulk-inserted with Core (unique random serials, state ``issued``,
  placeholder DER, realistic notAfter; 1 % revoked with keyCompromise);
* the answers for the queried serials pre-signed (``--sample`` serials, all of them at
  1,000) through the service's own path (sign once, store), and at 1,000 the whole set
  through ``refresh_due`` to time bulk pre-signing;
* ``govpki-gunicorn``: ``govpki serve --no-init`` (gunicorn; production defaults: 2
  workers × 2 threads, ``GOVPKI_WORKERS`` / ``GOVPKI_THREADS`` override; the dedicated
  responder off); ``govpki-dedicated``: ``govpki ocsp serve`` (the asyncio responder,
  ``GOVPKI_OCSP_WORKERS`` processes, default 2); ``govpki-dedicated-1w``: the same with
  one worker process (``--workers 1``: on this 2-core machine the load generator takes
  most of a core, and a second worker mostly competes with it); ``openssl``: ``openssl ocsp -index
  index.txt -multi 2 -nmin 60`` serving the same serials (an ``index.txt`` written from
  the same rows, a throw-away delegated OCSP signing certificate with a P-256 key like
  ours);
* the same load generator for all: ``--procs`` processes × ``--threads`` threads, each
  request a new TCP connection (openssl closes after every answer; gunicorn runs without
  keep-alive) sending a pre-built RFC 5019 request (SHA-1 CertID, one request, no nonce
  unless ``--nonce``) as ``POST /ocsp``; every answer must be HTTP 200 with a successful
  OCSP response. ``govpki-dedicated-keepalive`` (only with ``--servers``) is the same
  server driven over kept-alive HTTP/1.1 connections, one per client thread: not
  comparable with openssl, which closes every connection. ``null`` (only with
  ``--servers``): ``bench/_null_http.py``, a server that answers without parsing: the
  ceiling the load generator and the TCP connections leave on this machine.

Run:  .venv/bin/python bench/ocsp.py [--sizes 1000,1000000] [--seconds 10]
Results: a table on stdout and bench/results/ocsp-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import multiprocessing as mp
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _stats  # noqa: E402


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----- the load generator -----------------------------------------------------


def _ok(head: bytes, body: bytes) -> bool:
    # 200, and OCSPResponseStatus successful (ENUMERATED 0) near the start of the DER
    return head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")) and b"\x0a\x01\x00" in body[:8]


def _keepalive_exchange(sock: socket.socket, raw: bytes, pending: bytearray) -> bool:
    """One request and its answer on a kept-alive connection (answers carry Content-Length)."""
    sock.sendall(raw)
    while b"\r\n\r\n" not in pending:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        pending += chunk
    end = pending.index(b"\r\n\r\n") + 4
    head = bytes(pending[:end])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(pending) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise OSError("closed")
        pending += chunk
    body = bytes(pending[end : end + length])
    del pending[: end + length]
    return _ok(head, body)


def _client_proc(
    port: int, requests: list[bytes], threads: int, start_at: float, stop_at: float, keepalive: bool = False
) -> dict[str, Any]:
    """One client process: ``threads`` threads, a new connection per request (or one
    kept-alive connection per thread)."""
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def worker(offset: int) -> None:
        mine: list[float] = []
        bad = 0
        i = offset
        sock: socket.socket | None = None
        pending = bytearray()
        while time.time() < start_at:
            time.sleep(0.001)
        while True:
            now = time.perf_counter()
            if time.time() >= stop_at:
                break
            raw = requests[i % len(requests)]
            i += threads
            if keepalive:
                try:
                    if sock is None:
                        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                        pending.clear()
                    if not _keepalive_exchange(sock, raw, pending):
                        bad += 1
                        continue
                except OSError:
                    bad += 1
                    if sock is not None:
                        sock.close()
                    sock = None
                    continue
                mine.append(time.perf_counter() - now)
                continue
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                    sock.sendall(raw)
                    chunks = []
                    while True:
                        chunk = sock.recv(65536)
                        if not chunk:
                            break
                        chunks.append(chunk)
                data = b"".join(chunks)
                head, _, body = data.partition(b"\r\n\r\n")
                if not _ok(head, body):
                    bad += 1
                    continue
            except OSError:
                bad += 1
                continue
            mine.append(time.perf_counter() - now)
        if sock is not None:
            sock.close()
        with lock:
            latencies.extend(mine)
            errors[0] += bad

    pool = [threading.Thread(target=worker, args=(k,)) for k in range(threads)]
    cpu0 = time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return {"latencies": latencies, "errors": errors[0], "cpu": time.process_time() - cpu0}


def load(
    port: int, bodies: list[bytes], procs: int, threads: int, seconds: float, warmup: float, keepalive: bool = False
) -> dict[str, Any]:
    if keepalive:
        requests = [
            b"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
            + f"Content-Length: {len(b)}\r\n\r\n".encode()
            + b
            for b in bodies
        ]
    else:
        requests = [
            b"POST /ocsp HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Type: application/ocsp-request\r\n"
            + f"Content-Length: {len(b)}\r\nConnection: close\r\n\r\n".encode()
            + b
            for b in bodies
        ]
    ctx = mp.get_context("fork")
    # warm-up (not counted)
    with ctx.Pool(procs) as pool:
        t0 = time.time() + 0.3
        pool.starmap(_client_proc, [(port, requests, threads, t0, t0 + warmup, keepalive)] * procs)
    with ctx.Pool(procs) as pool:
        start = time.time() + 0.5
        stop = start + seconds
        results = pool.starmap(
            _client_proc,
            [(port, requests[k::procs] or requests, threads, start, stop, keepalive) for k in range(procs)],
        )
    latencies = [x for r in results for x in r["latencies"]]
    summary = _stats.latency_summary(latencies)
    return {
        "rps": len(latencies) / seconds,
        "count": len(latencies),
        "errors": sum(r["errors"] for r in results),
        "client_cpu_s": sum(r["cpu"] for r in results),
        **summary,
    }


def load_wrk(
    folder: Path,
    port: int,
    bodies: list[bytes],
    connections: int,
    threads: int,
    seconds: float,
    warmup: float,
    keepalive: bool = False,
) -> dict[str, Any]:
    """The same load from ``wrk`` (C, Debian's ``wrk``), which leaves the servers far more of
    the two cores than the Python clients: ``connections`` open at a time over ``threads``
    threads, the requests in turn (bench/ocsp_wrk.lua), each on a new connection unless
    ``keepalive``. Answers that are not HTTP 200 with a successful OCSP response count as errors."""
    blob = folder / "wrk-bodies.bin"
    blob.write_bytes(b"".join(len(b).to_bytes(4, "big") + b for b in bodies))
    env = {**os.environ, "OCSP_BODIES": str(blob), "OCSP_KEEPALIVE": "1" if keepalive else "0"}
    base = ["wrk", f"-t{threads}", f"-c{connections}", "-s", str(BENCH_DIR / "ocsp_wrk.lua")]
    url = f"http://127.0.0.1:{port}/ocsp"
    if warmup > 0:  # with the Python clients: a wrk run cut off at its end leaves openssl ocsp's workers stuck
        load(port, bodies, 1, 4, warmup, 0.2)
    before = os.times()
    timed = [*base, f"-d{max(1, round(seconds))}s", url]
    run = subprocess.run(timed, env=env, capture_output=True, text=True, check=True)
    after = os.times()
    facts = dict(line.split(" ", 1) for line in run.stdout.splitlines() if line[:1].isupper() and " " in line)
    count = int(facts["COUNT"])
    duration = int(facts["DURATION_US"]) / 1e6

    def us(key: str) -> float:  # wrk's microseconds, in ms
        return int(facts[key]) / 1000

    return {
        "rps": count / duration,
        "count": count,
        "errors": int(facts["BAD"]) + int(facts["ERRORS"]),
        "client_cpu_s": (after.children_user + after.children_system) - (before.children_user + before.children_system),
        "n": count,
        "p50_ms": us("P50_US"),
        "p90_ms": us("P90_US"),
        "p99_ms": us("P99_US"),
        "max_ms": us("MAX_US"),
        "mean_ms": us("MEAN_US"),
    }


# ----- set-up -----------------------------------------------------------------


def _env(folder: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}
    env.update(
        {
            "GOVPKI_INSTANCE_DIR": str(folder / "instance"),
            "GOVPKI_DATABASE_URL": f"sqlite:///{folder / 'govpki.sqlite3'}",
            "GOVPKI_LISTEN": f"127.0.0.1:{port}",
            "GOVPKI_WORKERS": os.environ.get("GOVPKI_WORKERS", "2"),
            "GOVPKI_THREADS": os.environ.get("GOVPKI_THREADS", "2"),
            "GOVPKI_OCSP_LISTEN": "off",  # `serve` alone; the dedicated responder is its own row
            "GOVPKI_OCSP_WORKERS": os.environ.get("GOVPKI_OCSP_WORKERS", "2"),
        }
    )
    return env


def prepare(folder: Path, env: dict[str, str], size: int, sample: int, nonce: bool) -> dict[str, Any]:
    from asn1crypto import core as acore
    from asn1crypto import ocsp as aocsp
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from sqlalchemy import insert

    from ca.models import CaKind, CertificateRecord
    from ca.ocsp import cert_id_hashes
    from govpki.config import Config
    from govpki.principal import SYSTEM
    from web.bootstrap import initialize
    from web.container import build_services

    services = build_services(Config.from_env(env))
    facts: dict[str, Any] = {}
    try:
        initialize(services, SYSTEM, first_admin=False)
        with services.sessions() as session:
            issuing = services.ca.active_ca(session, CaKind.ISSUING)
            ca_id, issuing_der = issuing.id, issuing.cert_der
            # a throw-away delegated responder for openssl (its key must be a file openssl can read)
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "bench openssl OCSP")]))
                .sign(key, hashes.SHA256())
            )
            record = services.ca.issue(
                session, SYSTEM, profile="ocsp-signing", csr=csr.public_bytes(serialization.Encoding.PEM)
            )
            session.commit()
        cert = x509.load_der_x509_certificate(record.cert_der or b"")
        (folder / "resp.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (folder / "resp.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        (folder / "issuing.pem").write_bytes(
            x509.load_der_x509_certificate(issuing_der).public_bytes(serialization.Encoding.PEM)
        )

        log(f"inserting {size:,} synthetic certificate rows")
        t0 = time.monotonic()
        now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
        serials: list[tuple[str, bool]] = []
        index_lines: list[str] = []
        chunk = 20_000
        with services.engine.begin() as conn:
            for start in range(0, size, chunk):
                rows = []
                for _ in range(min(chunk, size - start)):
                    serial = format(secrets.randbits(127) | (1 << 124), "x")
                    revoked = random.random() < 0.01
                    not_after = now + _dt.timedelta(days=random.randint(30, 397))
                    rows.append(
                        {
                            "serial": serial,
                            "ca_id": ca_id,
                            "profile": "service-tls-server",
                            "profile_version": 1,
                            "state": "issued",
                            "requester": "bench",
                            "subject": f"CN=synthetic-{serial[:8]}",
                            "sans": "",
                            "key_type": "ec-p256",
                            "spki_sha256": serial.rjust(64, "0"),
                            "tbs_der": b"synthetic",
                            "cert_der": b"synthetic",
                            "fingerprint_sha256": serial.rjust(64, "0"),
                            "not_before": now,
                            "not_after": not_after,
                            "created_at": now,
                            "updated_at": now,
                            "issued_at": now,
                            "revocation_reason": "keyCompromise" if revoked else None,
                            "revoked_at": now if revoked else None,
                            "status_seq": 0,
                        }
                    )
                    serials.append((serial, revoked))
                    exp = not_after.strftime("%y%m%d%H%M%SZ")
                    status = f"R\t{exp}\t{now:%y%m%d%H%M%SZ},keyCompromise" if revoked else f"V\t{exp}\t"
                    index_lines.append(f"{status}\t{serial.upper()}\tunknown\t/CN=synthetic-{serial[:8]}\n")
                conn.execute(insert(CertificateRecord), rows)
        facts["insert_s"] = time.monotonic() - t0
        (folder / "index.txt").write_text("".join(index_lines))
        (folder / "index.txt.attr").write_text("unique_subject = no\n")

        # the serials the clients ask for, and their requests (built once)
        chosen = serials if size <= sample else random.sample(serials, sample)
        names_hash, key_hash = cert_id_hashes(issuing_der)
        bodies = []
        for serial, _revoked in chosen:
            request: dict[str, Any] = {
                "tbs_request": {
                    "request_list": [
                        {
                            "req_cert": {
                                "hash_algorithm": {"algorithm": "sha1", "parameters": acore.Null()},
                                "issuer_name_hash": names_hash,
                                "issuer_key_hash": key_hash,
                                "serial_number": int(serial, 16),
                            }
                        }
                    ]
                }
            }
            if nonce:
                request["tbs_request"]["request_extensions"] = [
                    {"extn_id": "nonce", "extn_value": acore.OctetString(secrets.token_bytes(16))}
                ]
            bodies.append(aocsp.OCSPRequest(request).dump())
        t0 = time.monotonic()
        if size <= sample:
            with services.sessions() as session:
                report = services.ocsp.refresh_due(session, SYSTEM, checkpoint=session.commit, batch_size=1000)
                session.commit()
            facts["refresh_due_presigned"] = report.presigned
            facts["refresh_due_per_s"] = report.presigned / (time.monotonic() - t0)
            log(f"refresh_due pre-signed {report.presigned:,} at {facts['refresh_due_per_s']:.0f}/s")
        else:
            for body in bodies:  # sign once through the hot path, which stores the answer
                if not nonce:
                    services.ocsp.respond(body)
            facts["presigned_sample_per_s"] = len(bodies) / (time.monotonic() - t0)
        facts["queried_serials"] = len(bodies)
        facts["_bodies"] = bodies
    finally:
        services.dispose()
    return facts


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, body: bytes) -> None:
    """Wait until the server answers a real OCSP request (an empty connection makes an
    openssl 3.0 ocsp child spin on it)."""
    raw = (
        b"POST /ocsp HTTP/1.0\r\nContent-Type: application/ocsp-request\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(raw)
                if sock.recv(64).startswith(b"HTTP/1."):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError("server did not come up")


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """Stop the server and its children (its own process group: gunicorn via a new session,
    openssl -multi by its own setpgid)."""
    if proc is None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    except subprocess.TimeoutExpired:
        pass
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # children left behind (openssl's forked responders)
    proc.wait()


def run_size(size: int, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"size": size}
    with tempfile.TemporaryDirectory(prefix=f"bench-ocsp-{size}-") as tmp:
        folder = Path(tmp)
        port = _stats.free_port()
        env = _env(folder, port)
        facts = prepare(folder, env, size, args.sample, args.nonce)
        bodies = facts.pop("_bodies")
        out["setup"] = facts

        def command(name: str, port: int) -> list[str]:
            if name == "openssl":
                return [*servers[name], "-port", str(port)]
            if name == "govpki-dedicated-1w":
                return [*servers[name], "--listen", f"127.0.0.1:{port}", "--workers", "1"]
            if name.startswith("govpki-dedicated"):
                return [*servers[name], "--listen", f"127.0.0.1:{port}"]
            if name == "null":
                return [*servers[name], str(port)]
            return servers[name]

        dedicated = [sys.executable, "-m", "web.cli", "ocsp", "serve"]
        servers: dict[str, list[str]] = {
            "govpki-gunicorn": [sys.executable, "-m", "web.cli", "serve", "--no-init"],
            "govpki-dedicated": dedicated,
            "govpki-dedicated-keepalive": dedicated,
            "govpki-dedicated-1w": dedicated,
            "null": [sys.executable, str(BENCH_DIR / "_null_http.py")],
            "openssl": [
                "openssl",
                "ocsp",
                "-index",
                str(folder / "index.txt"),
                "-CA",
                str(folder / "issuing.pem"),
                "-rsigner",
                str(folder / "resp.pem"),
                "-rkey",
                str(folder / "resp.key"),
                "-multi",
                "2",
                "-nmin",
                "60",
            ],
        }
        for name in args.servers.split(","):
            proc = None
            logfile = (folder / f"{name}.log").open("wb")
            try:
                # openssl -multi puts itself in its own process group (setpgid fails for a
                # session leader, so it must not get a new session)
                proc = subprocess.Popen(
                    command(name, port),
                    cwd=REPO,
                    env=env,
                    stdout=logfile,
                    stderr=subprocess.STDOUT,
                    start_new_session=name != "openssl",
                )
                try:
                    wait_port(port, proc, 900, bodies[0])
                except RuntimeError:
                    logfile.flush()
                    log((folder / f"{name}.log").read_text(errors="replace")[-2000:])
                    raise
                time.sleep(1.0)
                cpu = _stats.TreeCpu(proc.pid)
                steal0 = _stats.system_cpu_times()
                cpu.start()
                keepalive = name.endswith("-keepalive")
                if args.client == "wrk":
                    clients = f"wrk {args.wrk_threads} thread(s), {args.connections} connections"
                    log(f"{name} N={size:,}: {args.seconds} s, {clients}")
                    result = load_wrk(
                        folder,
                        port,
                        bodies,
                        args.connections,
                        args.wrk_threads,
                        args.seconds,
                        args.warmup,
                        keepalive,
                    )
                else:
                    log(f"{name} N={size:,}: {args.seconds} s, {args.procs}×{args.threads} clients")
                    result = load(port, bodies, args.procs, args.threads, args.seconds, args.warmup, keepalive)
                result["server_cpu_ms_per_req"] = 1000 * cpu.stop() / max(result["count"], 1)
                result["steal"] = _stats.steal_share(steal0, _stats.system_cpu_times())
                out[name] = result
                log(
                    f"  {result['rps']:.0f} req/s p50 {result['p50_ms']:.2f} ms p99 {result['p99_ms']:.2f} ms "
                    f"errors {result['errors']}"
                )
            finally:
                stop(proc)
                logfile.close()
                port = _stats.free_port()
                env["GOVPKI_LISTEN"] = f"127.0.0.1:{port}"
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,1000000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument(
        "--client",
        choices=("wrk", "python"),
        default="wrk" if shutil.which("wrk") else "python",
        help="load generator: wrk (C; default when installed) or the Python clients",
    )
    parser.add_argument("--connections", type=int, default=16, help="wrk: connections open at a time")
    parser.add_argument("--wrk-threads", type=int, default=1, help="wrk: threads")
    parser.add_argument("--procs", type=int, default=2, help="python client processes")
    parser.add_argument("--threads", type=int, default=8, help="threads per client process")
    parser.add_argument("--sample", type=int, default=10_000, help="serials the clients ask for")
    parser.add_argument("--nonce", action="store_true", help="requests carry a nonce (signed per request)")
    parser.add_argument(
        "--servers",
        default="govpki-gunicorn,govpki-dedicated,govpki-dedicated-1w,openssl",
        help="govpki-dedicated-1w: the dedicated responder with one worker process (on a 2-core machine the load "
        "generator takes most of a core, and a second worker mostly competes with it); also: "
        "govpki-dedicated-keepalive (kept-alive connections; not comparable with openssl), "
        "null (a server that parses nothing: the ceiling of the load generator on this machine)",
    )
    args = parser.parse_args()
    os.chdir(REPO)
    facts = {"machine": _stats.machine_facts(), "git": _stats.git_facts(REPO), "args": vars(args)}
    rows = [run_size(int(s), args) for s in args.sizes.split(",")]
    print()
    print(f"{'server':26} {'N':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>10}")
    for row in rows:
        for name in args.servers.split(","):
            r = row.get(name)
            if r:
                print(
                    f"{name:26} {row['size']:>9,} {r['rps']:>8.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                    f"{r['errors']:>7} {r['server_cpu_ms_per_req']:>10.3f}"
                )
    print()
    for row in rows:
        for name in ("govpki-gunicorn", "govpki-dedicated", "govpki-dedicated-1w"):
            if name in row and "openssl" in row:
                print(f"N={row['size']:,}: {name}/openssl throughput {row[name]['rps'] / row['openssl']['rps']:.2f}")
    if len(rows) >= 2:
        for name in args.servers.split(","):
            if name in rows[0] and name in rows[-1]:
                print(
                    f"{name}: N={rows[-1]['size']:,} / N={rows[0]['size']:,} throughput "
                    f"{rows[-1][name]['rps'] / rows[0][name]['rps']:.2f}"
                )
    for row in rows:
        print(f"N={row['size']:,} set-up: {json.dumps(row['setup'])}")
    results = BENCH_DIR / "results"
    results.mkdir(exist_ok=True)
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    (results / f"ocsp-{stamp}.json").write_text(json.dumps({**facts, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
