#!/usr/bin/env python3
"""bench/authz: access decisions per second, and their latency, in-process and over HTTP.

Policy set (generated, deterministic): 14 prefectures x 50 applications x 10 roles — 500
application roles with 3 rules each (every condition kind occurs), 1,400 subjects (100 per
prefecture, 5 departments, 4 titles) and 14,000 assignments: one for every (prefecture,
application, role), scoped to that prefecture, and 7,000 more at random (a third
unscoped). Requests are a fixed mix over all of it (about half permit), so every decision
is a real evaluation: rule look-up, assignment scope and conditions.

(a) In-process: ``DecisionService.decide`` on one thread (the snapshot check included),
    per call timed with perf_counter.
(b) HTTP: ``govpki policy load`` and ``govpki app register`` on a throw-away instance, then
    ``govpki serve --no-init`` (gunicorn, the service's worker/thread defaults unless
    ``--workers``/``--threads``; no job loop, no OCSP front) driven by ``wrk`` (C, so the
    load generator takes little of the 2 cores; bench/authz_wrk.lua checks each answer)
    with ``--connections`` open at a time: ``POST /api/v1/authz/decide`` (one decision a
    request) and ``POST /api/v1/authz/decide/batch`` with ``--batch`` items. As the
    service runs gunicorn with keep-alive off, each request is a new TCP connection.
(c) The dedicated decision server: ``govpki authz serve`` (``--pdp-workers`` processes,
    default 2) on the same instance, driven by the same wrk script over kept-alive
    connections (wrk's default): one decision a request, batches of ``--pdp-batch``
    (default 10: the latency of a small batch) and of ``--batch``.

Goal (issue 6): at least 5,000 decisions/s over HTTP, p99 under 10 ms.

Run:  .venv/bin/python bench/authz.py [--seconds 5] [--connections 8] [--batch 100]
          [--skip-gunicorn] [--skip-pdp] [--pdp-workers 2] [--pdp-batch 10]
Prints a table; writes bench/results/authz-<UTC>.json.
"""

from __future__ import annotations

import argparse
import base64
import datetime as _dt
import json
import os
import random
import shutil
import signal
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
from bench.issue import log, start_server, stop_process  # noqa: E402

# this file's folder (bench/issue puts it on the path) must not shadow the ``authz`` package
sys.path[:] = [str(REPO)] + [p for p in sys.path if Path(p or ".").resolve() not in (BENCH_DIR, REPO)]

PREFECTURES = [f"65{n:02d}" for n in range(1, 15)]
APPLICATIONS = [f"app-{n:02d}" for n in range(50)]
ROLES = [f"role-{n}" for n in range(10)]
DEPARTMENTS = ["finance", "health", "education", "transport", "civil-affairs"]
TITLES = ["科员", "副科长", "科长", "处长"]
SUBJECTS_PER_PREFECTURE = 100
GOAL_PER_S = 5000.0
GOAL_P99_MS = 10.0


def make_policy(seed: int = 6) -> dict[str, Any]:
    rnd = random.Random(seed)
    subjects = [
        {
            "id": f"u{p}-{i:03d}",
            "prefecture": p,
            "department": DEPARTMENTS[i % len(DEPARTMENTS)],
            "title": TITLES[i % len(TITLES)],
        }
        for p in PREFECTURES
        for i in range(SUBJECTS_PER_PREFECTURE)
    ]
    applications = []
    for a, app in enumerate(APPLICATIONS):
        roles = []
        for r, role in enumerate(ROLES):
            rtype = f"res-{r % 4}"
            roles.append(
                {
                    "name": role,
                    "description": f"role {r} of {app}",
                    "permissions": [
                        {
                            "name": "read",
                            "action": "read",
                            "resource_type": rtype,
                            "conditions": [{"kind": "same_prefecture_as_resource"}],
                        },
                        {
                            "name": "edit",
                            "action": "edit",
                            "resource_type": rtype,
                            "conditions": [
                                {"kind": "same_department_as_resource"},
                                {"kind": "title_in", "titles": TITLES[(a + r) % 2 :]},
                            ],
                        },
                        {
                            "name": "approve",
                            "action": "approve",
                            "resource_type": rtype,
                            "conditions": [
                                {"kind": "resource_attribute_equals", "attribute": "state", "value": "submitted"},
                                {"kind": "time_window", "from": "00:00", "to": "23:59", "tz": "Asia/Shanghai"},
                            ],
                        },
                    ],
                }
            )
        applications.append({"name": app, "roles": roles})
    assignments = []
    by_prefecture = {p: [s for s in subjects if s["prefecture"] == p] for p in PREFECTURES}
    k = 0
    for p in PREFECTURES:
        for app in APPLICATIONS:
            for role in ROLES:
                subject = by_prefecture[p][k % SUBJECTS_PER_PREFECTURE]
                k += 1
                assignments.append({"subject": subject["id"], "application": app, "role": role, "prefecture": p})
    seen: set[tuple[str, str, str, str | None]] = {
        (x["subject"], x["application"], x["role"], x["prefecture"]) for x in assignments
    }
    while len(assignments) < 14_000:
        s = rnd.choice(subjects)
        app, role = rnd.choice(APPLICATIONS), rnd.choice(ROLES)
        scope = None if rnd.random() < 1 / 3 else s["prefecture"]
        key = (s["id"], app, role, scope)
        if key in seen:
            continue
        seen.add(key)
        item = {"subject": s["id"], "application": app, "role": role}
        if scope:
            item["prefecture"] = scope
        assignments.append(item)
    return {"subjects": subjects, "applications": applications, "assignments": assignments}


def make_requests(policy: dict[str, Any], count: int, seed: int = 7) -> list[dict[str, Any]]:
    """A mix: mostly (subject, role) pairs that exist, with resources in or out of scope."""
    rnd = random.Random(seed)
    subjects = {s["id"]: s for s in policy["subjects"]}
    out = []
    for _ in range(count):
        a = rnd.choice(policy["assignments"])
        s = subjects[a["subject"]] if rnd.random() < 0.9 else rnd.choice(policy["subjects"])
        r = int(a["role"].split("-")[1])
        action = rnd.choice(["read", "read", "edit", "approve", "delete"])
        attrs: dict[str, Any] = {
            "prefecture": s["prefecture"] if rnd.random() < 0.8 else rnd.choice(PREFECTURES),
            "department": s["department"] if rnd.random() < 0.7 else rnd.choice(DEPARTMENTS),
            "state": rnd.choice(["submitted", "draft"]),
        }
        out.append(
            {
                "subject": s["id"],
                "application": a["application"],
                "action": action,
                "resource": {"type": f"res-{r % 4}", "id": f"R-{rnd.randrange(10**6)}", "attributes": attrs},
            }
        )
    return out


def in_process(work: Path, policy: dict[str, Any], requests: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    from authz.policy_schema import DecisionRequest
    from govpki.config import Config
    from govpki.principal import SYSTEM
    from web.container import build_services

    config = Config.from_env(
        {"GOVPKI_INSTANCE_DIR": str(work / "inproc"), "GOVPKI_TESTING": "1", "GOVPKI_JOBS_INTERVAL_SECONDS": "0"}
    )
    services = build_services(config)
    try:
        with services.sessions() as s:
            t0 = time.perf_counter()
            services.policy.load(s, SYSTEM, policy, source="bench")
            s.commit()
            load_s = time.perf_counter() - t0
        parsed = [DecisionRequest.model_validate(r) for r in requests]
        with services.sessions() as s:
            t0 = time.perf_counter()
            snap = services.decisions.snapshot(s)
            compile_s = time.perf_counter() - t0
            latencies: list[float] = []
            permits = 0
            decide = services.decisions.decide
            end = time.perf_counter() + seconds
            i = 0
            n = len(parsed)
            start = time.perf_counter()
            while True:
                t = time.perf_counter()
                if t >= end:
                    break
                d = decide(s, SYSTEM, parsed[i % n])
                latencies.append(time.perf_counter() - t)
                permits += d.permitted
                i += 1
            window = time.perf_counter() - start
            # parse + decide, as a request body would be (pydantic from JSON bytes)
            raw = [json.dumps(r).encode() for r in requests[:5000]]
            t0 = time.perf_counter()
            for body in raw:
                decide(s, SYSTEM, DecisionRequest.model_validate_json(body))
            parse_decide_us = (time.perf_counter() - t0) / len(raw) * 1e6
        return {
            "policy_load_s": load_s,
            "snapshot_compile_s": compile_s,
            "snapshot": snap.size,
            "decisions": i,
            "decisions_per_s": i / window,
            "permit_share": permits / i if i else None,
            "latency": _stats.latency_summary(latencies),
            "parse_and_decide_us": parse_decide_us,
        }
    finally:
        services.dispose()


def run_wrk(
    work: Path, port: int, auth: str, path: str, bodies: list[str], items: int, args: argparse.Namespace
) -> dict[str, Any]:
    blob = work / f"wrk-{items}.jsonl"
    blob.write_text("\n".join(bodies) + "\n", encoding="utf-8")
    env = {
        **os.environ,
        "AUTHZ_BODIES": str(blob),
        "AUTHZ_AUTH": auth,
        "AUTHZ_PATH": path,
        "AUTHZ_ITEMS": str(items),
    }
    cmd = ["wrk", f"-t{args.wrk_threads}", f"-c{args.connections}", "-s", str(BENCH_DIR / "authz_wrk.lua")]
    url = f"http://127.0.0.1:{port}{path}"
    subprocess.run([*cmd, "-d1s", url], env=env, capture_output=True, text=True, check=True)  # warm-up
    steal0 = _stats.system_cpu_times()
    before = os.times()
    done = subprocess.run(
        [*cmd, f"-d{max(1, round(args.seconds))}s", url], env=env, capture_output=True, text=True, check=True
    )
    after = os.times()
    facts = dict(line.split(" ", 1) for line in done.stdout.splitlines() if line[:1].isupper() and " " in line)
    count = int(facts["COUNT"])
    duration = int(facts["DURATION_US"]) / 1e6

    def ms(key: str) -> float:
        return int(facts[key]) / 1000

    return {
        "path": path,
        "items_per_request": items,
        "connections": args.connections,
        "requests": count,
        "requests_per_s": count / duration,
        "decisions_per_s": count * items / duration,
        "permit_share": int(facts["PERMITS"]) / (count * items) if count else None,
        "errors": int(facts["BAD"]) + int(facts["ERRORS"]),
        "latency_per_request": {
            "p50_ms": ms("P50_US"),
            "p90_ms": ms("P90_US"),
            "p99_ms": ms("P99_US"),
            "max_ms": ms("MAX_US"),
            "mean_ms": ms("MEAN_US"),
        },
        "client_cpu_s": (after.children_user + after.children_system) - (before.children_user + before.children_system),
        "cpu_steal": _stats.steal_share(steal0, _stats.system_cpu_times()),
    }


def over_http(
    work: Path,
    policy: dict[str, Any],
    requests: list[dict[str, Any]],
    args: argparse.Namespace,
    results: dict[str, Any],
) -> None:
    inst = work / "instance"
    port = _stats.free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GOVPKI_")}  # never touch a configured instance
    env.update(
        {
            "GOVPKI_INSTANCE_DIR": str(inst),
            "GOVPKI_LISTEN": f"127.0.0.1:{port}",
            "GOVPKI_JOBS_INTERVAL_SECONDS": "0",
            "GOVPKI_OCSP_LISTEN": "off",
        }
    )
    if args.workers:
        env["GOVPKI_WORKERS"] = str(args.workers)
    if args.threads:
        env["GOVPKI_THREADS"] = str(args.threads)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-c", "import sys; from web.cli import main; sys.exit(main())"]

    def govpki(*argv: str) -> str:
        done = subprocess.run(
            [*cmd, *argv], env=env, cwd=work, capture_output=True, text=True, check=False, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"govpki {' '.join(argv)} failed ({done.returncode}):\n{done.stderr}{done.stdout}")
        return done.stdout

    policy_file = work / "policy.json"
    policy_file.write_text(json.dumps(policy, ensure_ascii=False), encoding="utf-8")
    log("govpki policy load (14 x 50 x 10)")
    results["policy_load_cli"] = govpki("policy", "load", str(policy_file)).strip()
    values = dict(
        line.split("=", 1)
        for line in govpki("app", "register", "bench-gateway", "--scope", "authz:decide:any").splitlines()
        if "=" in line
    )
    auth = "Basic " + base64.b64encode(f"{values['client_id']}:{values['client_secret']}".encode()).decode()
    singles = [json.dumps(r, ensure_ascii=False, separators=(",", ":")) for r in requests[:2000]]

    def batches_of(b: int) -> list[str]:
        return [
            json.dumps({"items": requests[i : i + b]}, ensure_ascii=False, separators=(",", ":"))
            for i in range(0, min(len(requests), 200 * b), b)
            if len(requests[i : i + b]) == b
        ]

    def run_cases(proc: subprocess.Popen[bytes], at: int, cases: list[tuple[str, str, list[str], int]]) -> None:
        for name, path, bodies, items in cases:
            log(f"{name}: wrk {args.connections} connections, {args.seconds:.0f} s")
            cpu = _stats.TreeCpu(proc.pid)
            cpu.start()
            out = run_wrk(work, at, auth, path, bodies, items, args)
            out["server_cpu_s"] = cpu.stop()
            out["load_average"] = os.getloadavg()
            results["phases"][name] = out
            lat = out["latency_per_request"]
            line = f"{name}: {out['decisions_per_s']:.0f} decisions/s, p50 {lat['p50_ms']:.1f} ms, "
            log(line + f"p99 {lat['p99_ms']:.1f} ms, errors {out['errors']}")

    b = args.batch
    if not args.skip_gunicorn:
        proc, _ = start_server(
            [*cmd, "serve", "--no-init"],
            "govpki serve",
            env=env,
            work=work,
            port=port,
            ready_path="/api/v1/openapi.json",
        )
        try:
            results["server"] = {
                "workers": env.get("GOVPKI_WORKERS", "default (2)"),
                "threads": env.get("GOVPKI_THREADS", "default (2)"),
                "processes": len(_stats.process_tree(proc.pid)),
            }
            run_cases(
                proc,
                port,
                [
                    ("http-single", "/api/v1/authz/decide", singles, 1),
                    (f"http-batch-{b}", "/api/v1/authz/decide/batch", batches_of(b), b),
                ],
            )
        finally:
            stop_process(proc, "govpki serve")
    if not args.skip_pdp:
        pdp_port = _stats.free_port()
        # a GET is a 405 problem: the workers are up (and have compiled the policy)
        pdp, _ = start_server(
            [*cmd, "authz", "serve", "--listen", f"127.0.0.1:{pdp_port}", "--workers", str(args.pdp_workers)],
            "govpki authz serve",
            env=env,
            work=work,
            port=pdp_port,
            ready_path="/api/v1/authz/decide",
            log_name="govpki-authz-serve.log",
            want_200=False,
        )
        try:
            results["pdp_server"] = {"workers": args.pdp_workers, "processes": len(_stats.process_tree(pdp.pid))}
            pb = args.pdp_batch
            run_cases(
                pdp,
                pdp_port,
                [
                    ("pdp-single", "/api/v1/authz/decide", singles, 1),
                    (f"pdp-batch-{pb}", "/api/v1/authz/decide/batch", batches_of(pb), pb),
                    (f"pdp-batch-{b}", "/api/v1/authz/decide/batch", batches_of(b), b),
                ],
            )
        finally:
            stop_process(pdp, "govpki authz serve")


def report(results: dict[str, Any]) -> None:
    ip = results.get("in_process")
    if ip:
        lat = ip["latency"]
        print(
            f"in-process: {ip['decisions_per_s']:.0f} decisions/s on one thread, p50 {lat['p50_ms'] * 1000:.1f} us, "
            f"p99 {lat['p99_ms'] * 1000:.1f} us (permit share {ip['permit_share']:.0%}); "
            f"parse+decide {ip['parse_and_decide_us']:.1f} us; snapshot {ip['snapshot']} compiled in "
            f"{ip['snapshot_compile_s']:.2f} s; policy load {ip['policy_load_s']:.1f} s"
        )
    print(
        f"{'phase':16} {'decisions/s':>11} {'req/s':>8} {'p50 ms':>7} {'p90 ms':>7} {'p99 ms':>7} "
        f"{'errors':>6} {'permit':>6} {'goal':>4}"
    )
    for name, r in results["phases"].items():
        lat = r["latency_per_request"]
        met = r["decisions_per_s"] >= GOAL_PER_S and lat["p99_ms"] < GOAL_P99_MS
        r["goal_met"] = met
        print(
            f"{name:16} {r['decisions_per_s']:>11.0f} {r['requests_per_s']:>8.0f} {lat['p50_ms']:>7.1f} "
            f"{lat['p90_ms']:>7.1f} {lat['p99_ms']:>7.1f} {r['errors']:>6} {r['permit_share'] or 0:>6.0%} "
            f"{'met' if met else 'no':>4}"
        )
    print(f"goal: >= {GOAL_PER_S:.0f} decisions/s over HTTP with p99 < {GOAL_P99_MS:.0f} ms (per request)")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=5.0, help="timed window per case (default 5)")
    p.add_argument("--connections", type=int, default=8, help="wrk: connections open at a time (default 8)")
    p.add_argument("--wrk-threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=100, help="items per batch request (default 100, at most 1000)")
    p.add_argument("--workers", type=int, default=None, help="GOVPKI_WORKERS for the server")
    p.add_argument("--threads", type=int, default=None, help="GOVPKI_THREADS for the server")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--skip-gunicorn", action="store_true", help="HTTP: only the dedicated decision server")
    p.add_argument("--skip-pdp", action="store_true", help="HTTP: only gunicorn")
    p.add_argument("--pdp-workers", type=int, default=2, help="processes of govpki authz serve (default 2)")
    p.add_argument("--pdp-batch", type=int, default=10, help="items per small batch on the decision server")
    p.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args(argv)
    if not 1 <= args.batch <= 1000 or not 1 <= args.pdp_batch <= 1000:
        p.error("--batch, --pdp-batch: between 1 and 1000")
    return args


def _sigterm(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    started = _dt.datetime.now(_dt.UTC)
    work = Path(tempfile.mkdtemp(prefix="govpki-bench-"))
    results: dict[str, Any] = {
        "benchmark": "authz",
        "started_at": started.isoformat(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": _stats.machine_facts(),
        "git": _stats.git_facts(REPO),
        "phases": {},
    }
    failed = False
    try:
        policy = make_policy()
        requests = make_requests(policy, 20_000)
        results["policy_size"] = {
            "prefectures": len(PREFECTURES),
            "applications": len(APPLICATIONS),
            "roles": len(APPLICATIONS) * len(ROLES),
            "rules": sum(len(r["permissions"]) for a in policy["applications"] for r in a["roles"]),
            "subjects": len(policy["subjects"]),
            "assignments": len(policy["assignments"]),
        }
        log("in-process")
        results["in_process"] = in_process(work, policy, requests, args.seconds)
        if not args.skip_http:
            over_http(work, policy, requests, args, results)
    except KeyboardInterrupt:
        failed = True
        log("interrupted")
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
    print()
    report(results)
    out_file = _stats.write_results(args.results_dir, "authz", started, results)
    print(f"\nresults: {out_file}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
