#!/usr/bin/env python3
"""bench/audit_append: application audit events appended through the HTTP API, per second.

On a throw-away instance (``govpki init``, SQLite unless ``--database-url``) register an
application (``govpki app register``), start ``govpki serve --no-init`` (gunicorn, the
service's own worker/thread defaults unless ``--workers``/``--threads``), then one phase per
batch size (``--batches``, default ``1,100,500``): ``--clients`` threads, each with its own
HTTP/1.1 connection (re-opened when the server closes it), POST ``/api/v1/audit/events``
with client_secret_basic; batch 1 sends one event object, larger batches ``{"events": [...]}``.
Each client first sends ``--warmup`` requests that are not counted, then the window of
``--seconds`` is timed. A request counts when it answers 201 with ``count`` equal to the batch.

After the server has stopped, ``govpki audit verify`` must pass over the whole chain
(every appended entry recomputed and linked).

Goal (issue 7): at least 5,000 events/s appended through the HTTP API with batching.

Run:  .venv/bin/python bench/audit_append.py [--seconds 10] [--clients 4] [--batches 1,100,500]
      [--database-url postgresql+psycopg://user@host/empty-db]

Prints a table; writes bench/results/audit_append-<UTC>.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import http.client
import json
import os
import shutil
import signal
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
from bench.issue import log, start_server, stop_process  # noqa: E402

PATH = "/api/v1/audit/events"
GOAL_EVENTS_PER_S = 5000.0


def make_body(batch: int, variant: int) -> bytes:
    def event(i: int) -> dict[str, Any]:
        return {
            "actor": f"user:clerk{(variant * 7 + i) % 97}",
            "action": "document:sign",
            "object_type": "document",
            "object_id": f"DOC-{variant:04d}-{i:05d}",
            "outcome": "success" if i % 10 else "failure",
            "time": "2026-03-01T08:00:00.123+08:00",
            "details": {"pages": i % 13 + 1, "department": "财政局", "channel": "web"},
        }

    payload: Any = event(0) if batch == 1 else {"events": [event(i) for i in range(batch)]}
    return json.dumps(payload, ensure_ascii=False).encode("utf-8")


def drive(
    port: int, auth: str, batch: int, clients: int, warmup: int, seconds: float, server_pid: int
) -> dict[str, Any]:
    bodies = [make_body(batch, v) for v in range(8)]
    headers = {"Content-Type": "application/json", "Authorization": auth}
    barrier = threading.Barrier(clients + 1)
    go = threading.Event()
    window: dict[str, float] = {}
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    ok_requests = [0] * clients
    reconnects = [0] * clients

    def once(conn: http.client.HTTPConnection, i: int) -> tuple[float, str | None]:
        t0 = time.perf_counter()
        try:
            conn.request("POST", PATH, body=bodies[i % len(bodies)], headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            return time.perf_counter() - t0, f"{type(exc).__name__}: {exc}"
        elapsed = time.perf_counter() - t0
        if resp.will_close:
            conn.close()  # the service closes after each response (gunicorn keepalive 0); reconnect
        if resp.status != 201:
            return elapsed, f"HTTP {resp.status}: {data[:200]!r}"
        if json.loads(data).get("count") != batch:
            return elapsed, f"count is not {batch}: {data[:200]!r}"
        return elapsed, None

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            for i in range(warmup):
                once(conn, k + i)
            barrier.wait()
            go.wait()
            i = 0
            while True:
                if time.perf_counter() >= window["end"]:
                    break
                if conn.sock is None:
                    reconnects[k] += 1
                elapsed, problem = once(conn, k + i)
                i += 1
                if time.perf_counter() > window["end"]:
                    break  # finished after the window: not counted
                if problem is None:
                    ok_requests[k] += 1
                    latencies[k].append(elapsed)
                elif len(errors[k]) < 1000:
                    errors[k].append(problem)
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    cpu = _stats.TreeCpu(server_pid)
    own_cpu0 = time.process_time()
    barrier.wait()
    steal0 = _stats.system_cpu_times()
    cpu.start()
    window["start"] = time.perf_counter()
    window["end"] = window["start"] + seconds
    go.set()
    for t in threads:
        t.join()
    length = time.perf_counter() - window["start"]
    server_cpu_s = cpu.stop()
    steal = _stats.steal_share(steal0, _stats.system_cpu_times())
    requests = sum(ok_requests)
    events = requests * batch
    summary = _stats.latency_summary(x for per in latencies for x in per)
    return {
        "batch": batch,
        "clients": clients,
        "window_s": length,
        "requests": requests,
        "events": events,
        "events_per_s": events / length,
        "requests_per_s": requests / length,
        "latency": summary,
        "errors": sum(len(e) for e in errors),
        "error_samples": sorted({e for per in errors for e in per})[:5],
        "reconnects": sum(reconnects),
        "server_cpu_s": server_cpu_s,
        "server_cpu_us_per_event": server_cpu_s * 1e6 / events if events else None,
        "client_cpu_s": time.process_time() - own_cpu0,
        "cpu_steal": steal,
    }


def run(args: argparse.Namespace, work: Path, results: dict[str, Any]) -> None:
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
    # this checkout's code (not whichever checkout the venv's ``govpki`` script was installed from)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", "import sys; from web.cli import main; sys.exit(main())"]

    def govpki(*argv: str) -> str:
        done = subprocess.run(
            [*cmd, *argv], env=env, cwd=work, capture_output=True, text=True, check=False, timeout=300
        )
        if done.returncode != 0:
            raise RuntimeError(f"govpki {' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done.stdout

    log("govpki init")
    govpki("init")
    values = dict(line.split("=", 1) for line in govpki("app", "register", "bench-app").splitlines() if "=" in line)
    auth = "Basic " + base64.b64encode(f"{values['client_id']}:{values['client_secret']}".encode()).decode()

    acknowledged = 0
    proc, _ = start_server(
        [*cmd, "serve", "--no-init"], "govpki serve", env=env, work=work, port=port, ready_path="/api/v1/openapi.json"
    )
    try:
        results["server"] = {
            "workers": env.get("GOVPKI_WORKERS", "default (2)"),
            "threads": env.get("GOVPKI_THREADS", "default (2)"),
            "processes": len(_stats.process_tree(proc.pid)),
            "database": (args.database_url or "sqlite").split(":", 1)[0],
        }
        for batch in args.batches:
            name = "single" if batch == 1 else f"batched-{batch}"
            log(f"{name}: {args.warmup} warm-up requests per client, then {args.seconds:.0f} s, {args.clients} clients")
            loadavg = os.getloadavg()
            out = drive(port, auth, batch, args.clients, args.warmup, args.seconds, proc.pid)
            out["loadavg_before"] = loadavg
            results["phases"][name] = out
            acknowledged += out["events"]
            log(
                f"{name}: {out['events_per_s']:.0f} events/s, p50 {out['latency']['p50_ms']:.1f} ms, "
                f"p99 {out['latency']['p99_ms']:.1f} ms, errors {out['errors']}"
            )
    finally:
        stop_process(proc, "govpki serve")
    log("govpki audit verify")
    done = subprocess.run(
        [*cmd, "audit", "verify"], env=env, cwd=work, capture_output=True, text=True, check=False, timeout=600
    )
    results["verify"] = {"exit_code": done.returncode, "output": (done.stdout + done.stderr).strip()[-2000:]}
    results["counted_events"] = acknowledged


def report(results: dict[str, Any]) -> None:
    print(
        f"{'phase':14} {'events/s':>9} {'req/s':>8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'events':>8} {'errors':>6} {'srv CPU us/event':>16}"
    )
    best = 0.0
    for name, r in results["phases"].items():
        if "events_per_s" not in r:
            print(f"{name:14} FAILED: {r.get('failed')}")
            continue
        lat = r["latency"]
        cpu = r["server_cpu_us_per_event"]
        print(
            f"{name:14} {r['events_per_s']:>9.0f} {r['requests_per_s']:>8.1f} {lat['p50_ms']:>8.1f} "
            f"{lat['p90_ms']:>8.1f} {lat['p99_ms']:>8.1f} {r['events']:>8} {r['errors']:>6} "
            f"{cpu if cpu is None else round(cpu, 1)!s:>16}"
        )
        if r["batch"] > 1:
            best = max(best, r["events_per_s"])
    results["goal"] = {"events_per_s": GOAL_EVENTS_PER_S, "best_batched": best, "ratio": best / GOAL_EVENTS_PER_S}
    met = "met" if best >= GOAL_EVENTS_PER_S else "not met"
    print(
        f"\nbest batched: {best:.0f} events/s = {best / GOAL_EVENTS_PER_S:.2f} x the goal of "
        f"{GOAL_EVENTS_PER_S:.0f} events/s ({met})"
    )
    steal = [r["cpu_steal"] for r in results["phases"].values() if r.get("cpu_steal") is not None]
    if steal:
        print(f"CPU steal during the windows: {', '.join(f'{s:.0%}' for s in steal)}")
    v = results.get("verify")
    if v:
        print(f"govpki audit verify: exit {v['exit_code']}: {v['output'].splitlines()[-1] if v['output'] else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="timed window per phase (default 10)")
    p.add_argument("--clients", type=int, default=4, help="concurrent client threads (default 4)")
    p.add_argument("--batches", default="1,100,500", help="events per request, one phase each (default 1,100,500)")
    p.add_argument("--warmup", type=int, default=5, help="uncounted requests per client before each window")
    p.add_argument("--workers", type=int, default=None, help="GOVPKI_WORKERS for the server")
    p.add_argument("--threads", type=int, default=None, help="GOVPKI_THREADS for the server")
    p.add_argument(
        "--database-url",
        default=None,
        help="GOVPKI_DATABASE_URL (default: SQLite in the temporary instance); an empty, throw-away database",
    )
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    if any(not 1 <= b <= 1000 for b in args.batches):
        p.error("--batches: each between 1 and 1000")
    return args


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = _dt.datetime.now(_dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="govpki-bench-"))
    results: dict[str, Any] = {
        "benchmark": "audit_append",
        "started_at": started.isoformat(),
        "argv": sys.argv[1:] if argv is None else argv,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": _stats.machine_facts(),
        "git": _stats.git_facts(REPO),
        "phases": {},
    }
    interrupted = failed = False
    try:
        run(args, work, results)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted; stopping everything")
    except Exception as exc:
        failed = True
        log(f"FAILED: {exc}")
        results["failed"] = f"{type(exc).__name__}: {exc}"
    finally:
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    results["finished_at"] = _dt.datetime.now(_dt.UTC).isoformat()
    results["interrupted"] = interrupted
    print()
    report(results)
    out_file = _stats.write_results(args.results_dir, "audit_append", started, results)
    print(f"\nresults: {out_file}")
    if interrupted:
        return 130
    if failed or results.get("verify", {}).get("exit_code") != 0:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
