#!/usr/bin/env python3
"""bench/issue: certificate issuance throughput and latency, three ways, in one run.

* service - ``govpki serve`` (gunicorn) on a throw-away instance, N concurrent
  keep-alive clients POSTing CSRs to /api/v1/certificates. Every certificate is
  checked, reserved, linted, approved, signed, recorded and audited.
* bare    - the same pipeline steps in one process per core, no HTTP, no database:
  check_csr -> subject + certificate_builder -> sign a copy with the throw-away
  key -> pkilint -> sign with the CA key. The ceiling for this design.
* cfssl   - Debian's ``cfssl serve`` signing the same CSRs (/api/v1/cfssl/sign)
  with a P-384 CA; no database, no lint. A peer.

Run:  .venv/bin/python bench/issue.py [--seconds S | --requests N] [--clients 8]

Everything listens on 127.0.0.1 only, lives in a temporary folder, and is
stopped at the end, also on errors and Ctrl-C. Results: a table on stdout and
bench/results/issue-<UTC timestamp>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import http.client
import itertools
import json
import math
import multiprocessing as mp
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import _stats  # noqa: E402

PROFILE = "service-tls-server"
ISSUE_PATH = "/api/v1/certificates"
CFSSL_SIGN_PATH = "/api/v1/cfssl/sign"
GOAL_RATIO = 0.80
GOAL_P99_MS = 100.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----- CSRs -------------------------------------------------------------------


@dataclass(frozen=True)
class Csr:
    pem: str
    dns: str


def make_csr_pool(count: int) -> list[Csr]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    pool = []
    for i in range(count):
        name = f"svc-{i}.bench.gov.cn"
        key = ec.generate_private_key(ec.SECP256R1())
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256())
        )
        pool.append(Csr(csr.public_bytes(serialization.Encoding.PEM).decode("ascii"), name))
    return pool


def check_issued(pem: str, ca_pem: bytes, expected_dns: str) -> str | None:
    """None if ``pem`` is a certificate for ``expected_dns`` directly issued by ``ca_pem``; else the problem."""
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(pem.encode("ascii"))
        ca = x509.load_pem_x509_certificate(ca_pem)
        cert.verify_directly_issued_by(ca)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        if expected_dns not in sans.get_values_for_type(x509.DNSName):
            return f"SAN {sans} does not name {expected_dns}"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


# ----- HTTP load driver ---------------------------------------------------------

# check(body) -> (problem or None, certificate PEM or None)
BodyCheck = Callable[[bytes], tuple[str | None, str | None]]


@dataclass
class HttpTarget:
    name: str
    port: int
    path: str
    headers: dict[str, str]
    bodies: list[bytes]
    expect_status: int
    check: BodyCheck


@dataclass
class _ClientResult:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    warmup_errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    samples: list[tuple[int, str]] = field(default_factory=list)  # (CSR index, certificate PEM)
    end: float = 0.0
    crashed: str | None = None

    def note(self, detail: str) -> None:
        if len(self.error_samples) < 5:
            self.error_samples.append(detail)


def drive_http(
    target: HttpTarget,
    *,
    clients: int,
    warmup: int,
    seconds: float,
    requests: int | None,
    time_limit: float,
    server_pid: int | None,
    stop: threading.Event,
) -> dict[str, Any]:
    """``clients`` threads, one keep-alive connection each. ``warmup`` requests (not counted),
    then a timed window of ``seconds`` (or ``requests`` requests, within ``time_limit``)."""
    n_bodies = len(target.bodies)
    next_body = itertools.count()
    warm_claims = itertools.count()
    timed_claims = itertools.count()
    results = [_ClientResult() for _ in range(clients)]
    window: dict[str, Any] = {}
    server_cpu = _stats.TreeCpu(server_pid) if server_pid else None

    def open_window() -> None:  # runs once, when every client has finished its warm-up
        window["t0"] = time.perf_counter()
        window["deadline"] = window["t0"] + (time_limit if requests is not None else seconds)
        window["client_cpu0"] = time.process_time()
        window["sys0"] = _stats.system_cpu_times()
        if server_cpu:
            server_cpu.start()

    barrier = threading.Barrier(clients, action=open_window)

    def one(conn: http.client.HTTPConnection, i: int) -> tuple[float, str | None, str | None]:
        body = target.bodies[i]
        t = time.perf_counter()
        try:
            conn.request("POST", target.path, body=body, headers=target.headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()  # the next request reconnects
            return time.perf_counter() - t, f"{type(exc).__name__}: {exc}", None
        dt = time.perf_counter() - t
        if resp.status != target.expect_status:
            return dt, f"HTTP {resp.status}: {data[:300].decode('utf-8', 'replace')}", None
        problem, pem = target.check(data)
        return dt, problem, pem

    def client(k: int) -> None:
        res = results[k]
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        try:
            while not stop.is_set() and next(warm_claims) < warmup:
                _latency, problem, _pem = one(conn, next(next_body) % n_bodies)
                if problem:
                    res.warmup_errors += 1
                    res.note(f"warm-up: {problem}")
            barrier.wait(timeout=time_limit)
            deadline = window["deadline"]
            while not stop.is_set() and time.perf_counter() < deadline:
                if requests is not None and next(timed_claims) >= requests:
                    break
                i = next(next_body) % n_bodies
                latency, problem, pem = one(conn, i)
                if problem:
                    res.errors += 1
                    res.note(problem)
                else:
                    res.latencies.append(latency)
                    if pem is not None and len(res.samples) < 3:
                        res.samples.append((i, pem))
        except threading.BrokenBarrierError:
            res.crashed = "barrier broken (another client failed or the warm-up took too long)"
        except BaseException as exc:
            res.crashed = f"{type(exc).__name__}: {exc}"
            barrier.abort()
        finally:
            res.end = time.perf_counter()
            conn.close()

    threads = [
        threading.Thread(target=client, args=(k,), name=f"{target.name}-client-{k}", daemon=True)
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    hard_stop = time.monotonic() + time_limit + warmup_budget(warmup) + 60
    try:
        for t in threads:
            while t.is_alive():
                t.join(timeout=0.5)
                if time.monotonic() > hard_stop:
                    stop.set()
    finally:
        stop.set()  # on Ctrl-C too: the clients finish their current request and stop
        for t in threads:
            t.join(timeout=35)
    server_cpu_s = server_cpu.stop() if server_cpu and "t0" in window else None
    client_cpu_s = time.process_time() - window["client_cpu0"] if "t0" in window else None
    sys1 = _stats.system_cpu_times()

    crashed = [r.crashed for r in results if r.crashed]
    if "t0" not in window:
        raise RuntimeError(f"{target.name}: the timed window never opened: {crashed or 'interrupted'}")
    elapsed = max(r.end for r in results) - window["t0"]
    latencies = [x for r in results for x in r.latencies]
    count = len(latencies)
    errors = sum(r.errors for r in results)
    out: dict[str, Any] = {
        "clients": clients,
        "elapsed_s": elapsed,
        "count": count,
        "errors": errors,
        "warmup_requests": warmup,
        "warmup_errors": sum(r.warmup_errors for r in results),
        "certs_per_s": count / elapsed if elapsed > 0 else 0.0,
        "latency": _stats.latency_summary(latencies),
        "server_cpu_s": server_cpu_s,
        "server_cpu_ms_per_cert": (server_cpu_s * 1000 / count) if server_cpu_s is not None and count else None,
        "client_cpu_s": client_cpu_s,
        "steal_share": _stats.steal_share(window["sys0"], sys1),
        "error_samples": [s for r in results for s in r.error_samples][:10],
        "client_crashes": crashed,
    }
    out["_samples"] = [s for r in results for s in r.samples]
    return out


def warmup_budget(warmup: int) -> float:
    return 30 + warmup * 1.0


def wait_http(port: int, path: str, timeout: float, proc: subprocess.Popen[bytes], want_200: bool) -> bytes:
    """Poll until ``GET path`` answers (200 if want_200, else any status); return the body."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before it answered")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            if resp.status == 200 or not want_200:
                return body
            last = f"HTTP {resp.status}"
        except (OSError, http.client.HTTPException) as exc:
            last = f"{type(exc).__name__}: {exc}"
        finally:
            conn.close()
        time.sleep(0.2)
    raise RuntimeError(f"GET http://127.0.0.1:{port}{path} did not answer within {timeout:.0f} s ({last})")


def start_server(
    argv: list[str],
    name: str,
    *,
    env: dict[str, str],
    work: Path,
    port: int,
    ready_path: str,
    log_name: str = "govpki-serve.log",
    want_200: bool = True,
) -> tuple[subprocess.Popen[bytes], bytes]:
    """Start ``argv`` (the server called ``name`` in logs) in a session of its own, its output in
    ``work/log_name``, and wait until ``GET ready_path`` answers (200 if ``want_200``).
    Returns the process and that answer. If it does not come up, the process is stopped
    and the error carries the end of its log."""
    server_log = work / log_name
    with server_log.open("wb") as logf:
        proc = subprocess.Popen(
            argv,
            env=env,
            cwd=work,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    log(f"{name} (pid {proc.pid}) on http://127.0.0.1:{port}/")
    try:
        return proc, wait_http(port, ready_path, 90, proc, want_200=want_200)
    except RuntimeError as exc:
        stop_process(proc, name)
        raise RuntimeError(f"{exc}\n--- server log ---\n{_tail(server_log)}") from None
    except BaseException:
        stop_process(proc, name)
        raise


def stop_process(proc: subprocess.Popen[bytes] | None, name: str, grace: float = 20) -> None:
    """SIGTERM the process we started (its own session), wait, then SIGKILL its group."""
    if proc is None or proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        log(f"{name} did not stop within {grace:.0f} s; killing its process group")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ----- phase: service --------------------------------------------------------------


def govpki_command() -> list[str]:
    script = Path(sys.executable).with_name("govpki")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from web.cli import main; sys.exit(main())"]


def run_service(args: argparse.Namespace, work: Path, pool: list[Csr], stop: threading.Event) -> dict[str, Any]:
    inst = work / "instance"
    port = _stats.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}  # never touch a configured instance
    env.update({"GOVPKI_INSTANCE_DIR": str(inst), "GOVPKI_LISTEN": f"127.0.0.1:{port}"})
    if args.workers:
        env["GOVPKI_WORKERS"] = str(args.workers)
    if args.threads:
        env["GOVPKI_THREADS"] = str(args.threads)
    if args.database_url:
        env["GOVPKI_DATABASE_URL"] = args.database_url
    database_url = args.database_url or f"sqlite:///{inst / 'govpki.sqlite3'}"
    cmd = govpki_command()

    log("service: govpki init")
    done = subprocess.run([*cmd, "init"], env=env, cwd=work, capture_output=True, text=True, check=False, timeout=180)
    if done.returncode != 0:
        raise RuntimeError(f"govpki init failed ({done.returncode}):\n{done.stderr}{done.stdout}")
    done = subprocess.run(
        [*cmd, "token", "create", "--name", "bench"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise RuntimeError(f"govpki token create failed ({done.returncode}):\n{done.stderr}")
    token = done.stdout.strip().splitlines()[-1].strip()
    ledger_before = ledger_counts(database_url)

    proc, chain = start_server(
        [*cmd, "serve", "--no-init"], "service: govpki serve", env=env, work=work, port=port, ready_path="/ca/chain.pem"
    )
    try:
        issuing_pem = chain.split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"

        def check(data: bytes) -> tuple[str | None, str | None]:
            try:
                doc = json.loads(data)
            except ValueError:
                return f"not JSON: {data[:200]!r}", None
            if doc.get("state") != "issued" or not doc.get("certificate_pem"):
                return f"state {doc.get('state')!r}, failure {doc.get('failure')!r}", None
            return None, doc["certificate_pem"]

        target = HttpTarget(
            name="service",
            port=port,
            path=ISSUE_PATH,
            headers={
                "Content-Type": "application/json",
                "Accept": "application/json",
                "Authorization": f"Bearer {token}",
            },
            bodies=[json.dumps({"profile": PROFILE, "csr": c.pem}).encode() for c in pool],
            expect_status=201,
            check=check,
        )
        log(
            f"service: {args.warmup} warm-up requests, then the timed window ({_window_text(args)}) "
            f"with {args.clients} clients"
        )
        result = drive_http(
            target,
            clients=args.clients,
            warmup=args.warmup,
            seconds=args.seconds,
            requests=args.requests,
            time_limit=args.time_limit,
            server_pid=proc.pid,
            stop=stop,
        )
        result["server"] = {
            "workers": env.get("GOVPKI_WORKERS", "default (2)"),
            "threads": env.get("GOVPKI_THREADS", "default (2)"),
            "processes": len(_stats.process_tree(proc.pid)),
            "database": database_url.split(":", 1)[0],
        }
        result["sample_problems"] = [
            p for i, pem in result.pop("_samples") if (p := check_issued(pem, issuing_pem, pool[i].dns))
        ]
    finally:
        stop_process(proc, "govpki serve")
    result["server"]["exit_code"] = proc.returncode
    if proc.returncode not in (0, -signal.SIGTERM):
        log(f"govpki serve exited with {proc.returncode}")
    result["ledger"] = check_ledger(database_url, ledger_before, result, cmd, env, work)
    return result


def ledger_counts(database_url: str) -> dict[str, dict[str, int]]:
    """Certificate records by state and CA audit entries by action (read only)."""
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url)
    try:
        with engine.connect() as con:
            states = {
                str(k): int(v) for k, v in con.execute(text("SELECT state, count(*) FROM certificates GROUP BY state"))
            }
            actions = {
                str(k): int(v)
                for k, v in con.execute(text("SELECT action, count(*) FROM audit_log GROUP BY action"))
                if str(k).startswith("ca:certificate:")
            }
    finally:
        engine.dispose()
    return {"states": states, "actions": actions}


def check_ledger(
    database_url: str,
    before: dict[str, dict[str, int]],
    result: dict[str, Any],
    cmd: list[str],
    env: dict[str, str],
    work: Path,
) -> dict[str, Any]:
    """After the run: every successful 201 must be a new 'issued' record with reserve, approve and
    issue audit entries, nothing may be left half-way, and the audit hash chain must verify."""
    after = ledger_counts(database_url)
    expected = result["count"] + (result["warmup_requests"] - result["warmup_errors"])

    def delta(kind: str, key: str) -> int:
        return after[kind].get(key, 0) - before[kind].get(key, 0)

    states = {k: delta("states", k) for k in after["states"]}
    actions = {k: delta("actions", k) for k in after["actions"]}
    verify = subprocess.run(
        [*cmd, "audit", "verify"], env=env, cwd=work, capture_output=True, text=True, check=False, timeout=300
    )
    ok = (
        states.get("issued", 0) == expected
        and actions.get("ca:certificate:issue", 0) == expected
        and actions.get("ca:certificate:reserve", 0) >= expected
        and actions.get("ca:certificate:approve", 0) >= expected
        and not any(v for k, v in states.items() if k != "issued")
        and verify.returncode == 0
    )
    return {
        "ok": ok,
        "expected_issued": expected,
        "issued_records": states.get("issued", 0),
        "new_records_by_state": states,
        "new_audit_entries": actions,
        "audit_verify": (verify.stdout or verify.stderr).strip(),
    }


# ----- phase: cfssl ---------------------------------------------------------------------


def make_cfssl_ca(folder: Path) -> tuple[Path, Path, Path, bytes]:
    """A P-384 CA (like govpki's default issuing key) and a signing config for TLS servers."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"), x509.NameAttribute(NameOID.COMMON_NAME, "bench cfssl CA")]
    )
    now = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _dt.timedelta(minutes=5))
        .not_valid_after(now + _dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    ca_pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_path, key_path, config_path = folder / "ca.pem", folder / "ca-key.pem", folder / "cfssl.json"
    cert_path.write_bytes(ca_pem)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    # 9528h = 397 days, like the service-tls-server profile
    config = {"signing": {"default": {"expiry": "9528h", "usages": ["digital signature", "server auth"]}}}
    config_path.write_text(json.dumps(config, indent=2))
    return cert_path, key_path, config_path, ca_pem


def run_cfssl(args: argparse.Namespace, work: Path, pool: list[Csr], stop: threading.Event) -> dict[str, Any]:
    cfssl = shutil.which(args.cfssl) or args.cfssl
    if not Path(cfssl).exists():
        raise RuntimeError(f"cfssl not found ({args.cfssl}); install Debian's golang-cfssl")
    folder = work / "cfssl"
    folder.mkdir()
    cert_path, key_path, config_path, ca_pem = make_cfssl_ca(folder)
    port = _stats.free_port()
    server_log = work / "cfssl-serve.log"
    proc: subprocess.Popen[bytes] | None = None
    version = subprocess.run([cfssl, "version"], capture_output=True, text=True, check=False, timeout=30).stdout.split()
    try:
        with server_log.open("wb") as logf:
            proc = subprocess.Popen(
                [
                    cfssl,
                    "serve",
                    "-address",
                    "127.0.0.1",
                    "-port",
                    str(port),
                    "-ca",
                    str(cert_path),
                    "-ca-key",
                    str(key_path),
                    "-config",
                    str(config_path),
                ],
                cwd=folder,
                stdout=logf,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        log(f"cfssl: cfssl serve (pid {proc.pid}) on http://127.0.0.1:{port}/")
        try:
            wait_http(port, CFSSL_SIGN_PATH, 60, proc, want_200=False)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- cfssl log ---\n{_tail(server_log)}") from None

        def check(data: bytes) -> tuple[str | None, str | None]:
            try:
                doc = json.loads(data)
            except ValueError:
                return f"not JSON: {data[:200]!r}", None
            pem = (doc.get("result") or {}).get("certificate") if isinstance(doc.get("result"), dict) else None
            if not doc.get("success") or not pem:
                return f"cfssl: {doc.get('errors')!r}", None
            return None, pem

        target = HttpTarget(
            name="cfssl",
            port=port,
            path=CFSSL_SIGN_PATH,
            headers={"Content-Type": "application/json"},
            bodies=[json.dumps({"certificate_request": c.pem}).encode() for c in pool],
            expect_status=200,
            check=check,
        )
        log(
            f"cfssl: {args.warmup} warm-up requests, then the timed window ({_window_text(args)}) "
            f"with {args.clients} clients"
        )
        result = drive_http(
            target,
            clients=args.clients,
            warmup=args.warmup,
            seconds=args.seconds,
            requests=args.requests,
            time_limit=args.time_limit,
            server_pid=proc.pid,
            stop=stop,
        )
        result["sample_problems"] = [
            p for i, pem in result.pop("_samples") if (p := check_issued(pem, ca_pem, pool[i].dns))
        ]
        result["cfssl_version"] = " ".join(version[:2])
    finally:
        stop_process(proc, "cfssl serve")
    return result


# ----- phase: bare pipeline -----------------------------------------------------------------

STAGES = ("csr_check", "build", "lint_sign", "lint", "sign")


def _bare_worker(
    k: int,
    csr_pems: list[str],
    seconds: float,
    requests: int | None,
    warmup: int,
    time_limit: float,
    barrier: Any,
    results: Any,
) -> None:
    """One process: the pipeline steps of CaService._issue without the ledger, the HTTP layer or a key store."""
    try:
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        from ca import lint
        from ca.builder import IssuerUrls, build_name, certificate_builder, validity
        from ca.csr import check_csr
        from ca.ledger import new_serial
        from ca.profiles import load_profiles
        from ca.services import _LINT_KEYS, CaIdentity, CaService, CaSettings, fingerprint
        from govpki.config import Config
        from keymgmt.interfaces import signature_hash

        config = Config.from_env({})  # the defaults: profiles file, province, organisation, key algorithms
        profiles = load_profiles(config.profiles_file)
        profile = profiles.get(PROFILE)
        identity = CaIdentity(country="CN", province=config.province, organization=config.organization)
        settings = CaSettings(
            identity=identity,
            base_url="http://127.0.0.1:8000",
            root_name="bench root",
            issuing_name="bench CA",
            root_key_algorithm="ec-p384",
            issuing_key_algorithm="ec-p384",
            root_validity_days=7300,
            issuing_validity_days=3650,
        )
        # only _subject() is used: the same subject rules as the service, no ledger, no key stores
        service = CaService(settings=settings, profiles=profiles, keystores={}, ledger=None, clock=None)  # type: ignore[arg-type]

        # The CA: a P-384 key in memory, wrapped like the file key store wraps its keys
        # (software hash + digest signature), and a self-signed CA certificate.
        raw_key = ec.generate_private_key(ec.SECP384R1())
        try:
            from keymgmt.signers import wrap_private_key

            ca_signer: Any = wrap_private_key("file:bench", raw_key)
            signer_kind = "keymgmt.signers.wrap_private_key (as the file key store)"
        except ImportError:
            ca_signer = raw_key
            signer_kind = "raw cryptography key"
        ca_public = raw_key.public_key()
        now = _dt.datetime.now(_dt.UTC)
        ca_profile = profiles.get("subordinate-ca")
        ca_name = build_name([*identity.fields().items(), ("CN", "bench CA")])
        nb, na = validity(ca_profile, now, None)
        ca_cert = certificate_builder(
            profile=ca_profile,
            subject=ca_name,
            public_key=ca_public,
            serial=new_serial(),
            not_before=nb,
            not_after=na,
            issuer=None,
            urls=None,
        ).sign(raw_key, hashes.SHA384())
        urls = IssuerUrls(
            ca_issuers="http://127.0.0.1:8000/ca/2.der",
            ocsp="http://127.0.0.1:8000/ocsp",
            crl="http://127.0.0.1:8000/crl/2.crl",
        )
        sig_hash = signature_hash(ca_public)
        der_enc = serialization.Encoding.DER
        csrs = [p.encode("ascii") for p in csr_pems]
        n = len(csrs)
        stage_sums = dict.fromkeys(STAGES, 0.0)

        def once(i: int, timed: bool) -> None:
            pc = time.perf_counter
            t0 = pc()
            checked = check_csr(csrs[i % n], profile)
            t1 = pc()
            subject = service._subject(profile, checked, {})
            not_before, not_after = validity(profile, _dt.datetime.now(_dt.UTC), ca_cert.not_valid_after_utc)
            builder = certificate_builder(
                profile=profile,
                subject=subject,
                public_key=checked.public_key,
                serial=new_serial(),
                not_before=not_before,
                not_after=not_after,
                issuer=ca_cert,
                urls=urls,
                sans=checked.sans,
            )
            t2 = pc()
            copy = builder.sign(_LINT_KEYS.like(ca_public), sig_hash)
            copy_der = copy.public_bytes(der_enc)
            t3 = pc()
            lint.check(copy_der)
            t4 = pc()
            cert = builder.sign(ca_signer, sig_hash)
            if cert.tbs_certificate_bytes != copy.tbs_certificate_bytes:
                raise RuntimeError("signed TBS differs from the linted TBS")
            fingerprint(cert.public_bytes(der_enc))
            t5 = pc()
            if timed:
                stage_sums["csr_check"] += t1 - t0
                stage_sums["build"] += t2 - t1
                stage_sums["lint_sign"] += t3 - t2
                stage_sums["lint"] += t4 - t3
                stage_sums["sign"] += t5 - t4
                latencies.append(t5 - t0)

        latencies: list[float] = []
        for i in range(warmup):
            once(i + k, timed=False)
        barrier.wait(timeout=time_limit)
        start_wall = time.monotonic()
        cpu0 = time.process_time()
        deadline = time.perf_counter() + (time_limit if requests is not None else seconds)
        errors: list[str] = []
        i = k * 7919
        while time.perf_counter() < deadline and (requests is None or len(latencies) + len(errors) < requests):
            i += 1
            try:
                once(i, timed=True)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        results.put(
            {
                "k": k,
                "latencies": latencies,
                "errors": len(errors),
                "error_samples": errors[:5],
                "stage_s": stage_sums,
                "cpu_s": time.process_time() - cpu0,
                "start": start_wall,
                "end": time.monotonic(),
                "signer": signer_kind,
            }
        )
    except BaseException as exc:
        with contextlib.suppress(Exception):
            barrier.abort()
        results.put({"k": k, "crash": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"})


def run_bare(args: argparse.Namespace, pool: list[Csr]) -> dict[str, Any]:
    procs = args.procs or os.cpu_count() or 1
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    per_proc = math.ceil(args.requests / procs) if args.requests is not None else None
    workers = [
        ctx.Process(
            target=_bare_worker,
            name=f"bare-{k}",
            daemon=True,
            args=(
                k,
                [c.pem for c in pool],
                args.seconds,
                per_proc,
                args.bare_warmup,
                args.time_limit,
                barrier,
                results,
            ),
        )
        for k in range(procs)
    ]
    log(
        f"bare: {procs} processes, {args.bare_warmup} warm-up operations each, "
        f"then the timed window ({_window_text(args)})"
    )
    got: list[dict[str, Any]] = []
    try:
        for w in workers:
            w.start()
        deadline = time.monotonic() + args.time_limit + 120  # + start-up (spawn, imports, pkilint)
        while len(got) < procs:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RuntimeError("bare: the worker processes did not report in time")
            try:
                got.append(results.get(timeout=min(remaining, 1.0)))
            except Exception:  # queue.Empty
                if not any(w.is_alive() for w in workers) and results.empty():
                    raise RuntimeError("bare: a worker process died without reporting") from None
    finally:
        for w in workers:
            w.join(timeout=10)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
    crashes = [g["crash"] for g in got if "crash" in g]
    if crashes:
        raise RuntimeError("bare: a worker failed:\n" + crashes[0])
    latencies = [x for g in got for x in g["latencies"]]
    count = len(latencies)
    elapsed = max(g["end"] for g in got) - min(g["start"] for g in got)
    stage_total = {s: sum(g["stage_s"][s] for g in got) for s in STAGES}
    cpu_s = sum(g["cpu_s"] for g in got)
    return {
        "processes": procs,
        "elapsed_s": elapsed,
        "count": count,
        "errors": sum(g["errors"] for g in got),
        "error_samples": [s for g in got for s in g["error_samples"]][:10],
        "certs_per_s": count / elapsed if elapsed > 0 else 0.0,
        "per_process_certs_per_s": [
            len(g["latencies"]) / (g["end"] - g["start"]) for g in sorted(got, key=lambda g: g["k"])
        ],
        "latency": _stats.latency_summary(latencies),
        "cpu_s": cpu_s,
        "cpu_ms_per_cert": cpu_s * 1000 / count if count else None,
        "stage_mean_ms": {s: (stage_total[s] / count * 1000 if count else None) for s in STAGES},
        "ca_signer": got[0]["signer"],
    }


# ----- report ----------------------------------------------------------------------------------


def _window_text(args: argparse.Namespace) -> str:
    return (
        f"{args.requests} requests, at most {args.time_limit:.0f} s"
        if args.requests is not None
        else f"{args.seconds:g} s"
    )


def _fmt(value: Any, spec: str = ".1f") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def report(results: dict[str, Any]) -> dict[str, Any]:
    phases = results["phases"]
    lines = []
    header = f"{'':9} {'certs/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'count':>7} {'errors':>6} {'CPU ms/cert':>11}"
    lines.append(header)
    lines.append("-" * len(header))
    for name in ("service", "bare", "cfssl"):
        r = phases.get(name)
        if r is None:
            continue
        if "failed" in r:
            lines.append(f"{name:9} FAILED: {r['failed'].splitlines()[0]}")
            continue
        cpu = r.get("server_cpu_ms_per_cert", r.get("cpu_ms_per_cert"))
        lat = r["latency"]
        lines.append(
            f"{name:9} {r['certs_per_s']:9.1f} {_fmt(lat['p50_ms']):>8} {_fmt(lat['p99_ms']):>8} "
            f"{r['count']:7d} {r['errors']:6d} {_fmt(cpu):>11}"
        )
    ratios: dict[str, Any] = {}
    svc, bare, cfssl = (phases.get(n) for n in ("service", "bare", "cfssl"))

    def ok(r: dict[str, Any] | None) -> bool:
        return r is not None and "failed" not in r and r["count"] > 0

    if ok(svc) and ok(bare):
        ratios["service_over_bare"] = svc["certs_per_s"] / bare["certs_per_s"]
        if svc.get("server_cpu_ms_per_cert") and bare.get("cpu_ms_per_cert"):
            ratios["bare_cpu_over_service_cpu_per_cert"] = bare["cpu_ms_per_cert"] / svc["server_cpu_ms_per_cert"]
    if ok(svc) and ok(cfssl):
        ratios["service_over_cfssl"] = svc["certs_per_s"] / cfssl["certs_per_s"]
    goals: dict[str, Any] = {}
    if "service_over_bare" in ratios:
        goals["throughput_ge_80pct_of_bare"] = ratios["service_over_bare"] >= GOAL_RATIO
    if ok(svc):
        goals["p99_lt_100ms"] = svc["latency"]["p99_ms"] < GOAL_P99_MS
        goals["no_errors"] = svc["errors"] == 0 and svc["warmup_errors"] == 0
        goals["all_recorded_and_audited"] = svc.get("ledger", {}).get("ok", False)
    lines.append("")
    if "service_over_bare" in ratios:
        met = "MET" if goals["throughput_ge_80pct_of_bare"] else "NOT MET"
        lines.append(
            f"service / bare  throughput: {ratios['service_over_bare']:.2f}   (goal >= {GOAL_RATIO:.2f}: {met})"
        )
    if ok(svc):
        met = "MET" if goals["p99_lt_100ms"] else "NOT MET"
        lines.append(
            f"service p99 latency:        {svc['latency']['p99_ms']:.1f} ms   (goal < {GOAL_P99_MS:.0f} ms: {met})"
        )
    if "service_over_cfssl" in ratios:
        lines.append(f"service / cfssl throughput: {ratios['service_over_cfssl']:.2f}")
    if "bare_cpu_over_service_cpu_per_cert" in ratios:
        lines.append(
            f"bare / service CPU per cert: {ratios['bare_cpu_over_service_cpu_per_cert']:.2f}   "
            f"(server processes only; 1.00 = the service adds no CPU per certificate)"
        )
    if ok(bare):
        stages = ", ".join(f"{s} {bare['stage_mean_ms'][s]:.2f}" for s in STAGES)
        lines.append(f"bare stage means (ms):      {stages}")
    for name in ("service", "cfssl"):
        r = phases.get(name)
        if ok(r) and r.get("client_cpu_s") is not None:
            share = r["client_cpu_s"] / r["elapsed_s"]
            lines.append(
                f"{name} load clients used {share:.2f} CPU (of {results['machine']['cpu_count']}) during the window"
            )
    if ok(svc):
        led = svc["ledger"]
        lines.append(
            f"service ledger check: {'OK' if led['ok'] else 'MISMATCH'} - {led['issued_records']} issued records for "
            f"{led['expected_issued']} 201s; {led['audit_verify']}"
        )
    for name in ("service", "cfssl"):
        r = phases.get(name)
        if ok(r) and r.get("sample_problems"):
            lines.append(f"{name} sample certificate problems: {r['sample_problems'][:3]}")
        if r is not None and "failed" not in r and r.get("error_samples"):
            lines.append(f"{name} error samples: {r['error_samples'][:3]}")
    steals = {
        n: r.get("steal_share")
        for n, r in phases.items()
        if r and "failed" not in r and r.get("steal_share") is not None
    }
    if steals:
        lines.append(
            "CPU steal during the window: "
            + ", ".join(f"{n} {v:.1%}" for n, v in steals.items())
            + "  (a shared machine: compare ratios, not absolute numbers)"
        )
    print("\n".join(lines), flush=True)
    results["ratios"] = ratios
    results["goals"] = goals
    return results


# ----- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=15.0, help="timed window per phase (default 15)")
    p.add_argument(
        "--requests", type=int, default=None, help="instead of --seconds: this many timed operations per phase"
    )
    p.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients for service and cfssl (default 8)")
    p.add_argument("--warmup", type=int, default=50, help="uncounted HTTP requests before the window (default 50)")
    p.add_argument("--bare-warmup", type=int, default=20, help="uncounted operations per bare process (default 20)")
    p.add_argument("--procs", type=int, default=None, help="bare processes (default os.cpu_count())")
    p.add_argument("--csrs", type=int, default=300, help="distinct CSRs, reused round-robin (default 300)")
    p.add_argument(
        "--phases", default="bare,service,cfssl", help="comma-separated subset and order of bare,service,cfssl"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="GOVPKI_WORKERS for the server (default: the service's default)"
    )
    p.add_argument(
        "--threads", type=int, default=None, help="GOVPKI_THREADS for the server (default: the service's default)"
    )
    p.add_argument(
        "--database-url",
        default=None,
        help="GOVPKI_DATABASE_URL for the service (default: SQLite in the temporary instance). Use a throw-away "
        "database: the run writes certificates and audit entries to it",
    )
    p.add_argument("--time-limit", type=float, default=300.0, help="hard cap per phase in seconds (default 300)")
    p.add_argument("--cfssl", default="cfssl", help="the cfssl binary (default: cfssl on PATH)")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (instance, logs) and print its path")
    args = p.parse_args(argv)
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    unknown = set(args.phases) - {"bare", "service", "cfssl"}
    if unknown:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    if args.requests is not None and args.requests < 1:
        p.error("--requests must be at least 1")
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients must be at least 1 and --seconds positive")
    return args


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = _dt.datetime.now(_dt.UTC)
    stop = threading.Event()
    work = Path(tempfile.mkdtemp(prefix="govpki-bench-"))
    results: dict[str, Any] = {
        "benchmark": "issue",
        "started_at": started.isoformat(),
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": _stats.machine_facts(),
        "git": _stats.git_facts(REPO),
        "goals": {},
        "phases": {},
    }
    interrupted = False
    try:
        import cryptography

        results["machine"]["cryptography"] = cryptography.__version__
        log(f"generating {args.csrs} P-256 CSRs ({PROFILE}, svc-N.bench.gov.cn)")
        pool = make_csr_pool(args.csrs)
        for phase in args.phases:
            results["phases"][phase] = {"loadavg_before": os.getloadavg()}
            try:
                if phase == "bare":
                    out = run_bare(args, pool)
                elif phase == "service":
                    out = run_service(args, work, pool, stop)
                else:
                    out = run_cfssl(args, work, pool, stop)
                results["phases"][phase].update(out)
            except KeyboardInterrupt:
                results["phases"][phase]["failed"] = "interrupted"
                raise
            except Exception as exc:
                log(f"{phase}: FAILED: {exc}")
                results["phases"][phase]["failed"] = f"{type(exc).__name__}: {exc}"
            stop.clear()
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        log("interrupted; stopping everything")
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["finished_at"] = _dt.datetime.now(_dt.UTC).isoformat()
    results["interrupted"] = interrupted
    print()
    report(results)
    out_file = _stats.write_results(args.results_dir, "issue", started, results)
    print(f"\nresults: {out_file}")
    if interrupted:
        return 130
    if any("failed" in r for r in results["phases"].values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
