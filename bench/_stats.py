"""Small helpers shared by the benchmarks: percentiles, CPU accounting from /proc,
and machine facts for the result files. Standard library only."""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Linear-interpolated percentile (p in 0..100) of an already sorted sequence."""
    if not sorted_values:
        return float("nan")
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    frac = rank - low
    return float(sorted_values[low] + (sorted_values[high] - sorted_values[low]) * frac)


def latency_summary(latencies_s: Iterable[float]) -> dict[str, float | int]:
    """p50/p90/p99/max/mean in milliseconds of latencies given in seconds."""
    values = sorted(latencies_s)
    if not values:
        return {
            "n": 0,
            "p50_ms": float("nan"),
            "p90_ms": float("nan"),
            "p99_ms": float("nan"),
            "max_ms": float("nan"),
            "mean_ms": float("nan"),
        }
    return {
        "n": len(values),
        "p50_ms": percentile(values, 50) * 1000,
        "p90_ms": percentile(values, 90) * 1000,
        "p99_ms": percentile(values, 99) * 1000,
        "max_ms": values[-1] * 1000,
        "mean_ms": sum(values) / len(values) * 1000,
    }


def free_port() -> int:
    """A currently free TCP port on 127.0.0.1 (small race; fine for a benchmark)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ----- CPU accounting from /proc ---------------------------------------------


def _children(pid: int) -> list[int]:
    out: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        tasks = list(task_dir.iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out.extend(int(x) for x in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (as far as /proc shows them)."""
    seen: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo.extend(_children(p))
    return seen


def cpu_seconds(pids: Iterable[int]) -> float:
    """utime + stime of the given processes, in seconds (processes that are gone count 0)."""
    total = 0
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of stat)
    return total / _TICKS


class TreeCpu:
    """CPU seconds used by a process tree between start() and stop(); the tree is
    read at start() (gunicorn's workers are up by then)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.pids: list[int] = []
        self._start = 0.0

    def start(self) -> None:
        self.pids = process_tree(self.pid)
        self._start = cpu_seconds(self.pids)

    def stop(self) -> float:
        return cpu_seconds(self.pids) - self._start


def system_cpu_times() -> dict[str, int]:
    """The aggregate 'cpu' line of /proc/stat in ticks (user … steal)."""
    try:
        line = Path("/proc/stat").read_text().splitlines()[0].split()
    except OSError:
        return {}
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {n: int(v) for n, v in zip(names, line[1:9], strict=False)}


def steal_share(before: dict[str, int], after: dict[str, int]) -> float | None:
    """Fraction of CPU time stolen by the hypervisor between two readings (a noise hint)."""
    if not before or not after:
        return None
    total = sum(after.values()) - sum(before.values())
    if total <= 0:
        return None
    return (after.get("steal", 0) - before.get("steal", 0)) / total


# ----- facts for the result file ---------------------------------------------


def machine_facts() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = None
    return {
        "hostname": platform.node(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }


def git_facts(repo: Path) -> dict[str, Any]:
    def run(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], cwd=repo, capture_output=True, text=True, check=False, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def write_results(folder: Path, name: str, started: _dt.datetime, results: Mapping[str, Any]) -> Path:
    """``<folder>/<name>-<UTC start>.json`` (pretty JSON), and where it went."""
    folder.mkdir(parents=True, exist_ok=True)
    out_file = folder / f"{name}-{started:%Y%m%dT%H%M%SZ}.json"
    out_file.write_text(json.dumps(results, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
    return out_file
