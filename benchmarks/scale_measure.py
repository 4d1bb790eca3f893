"""Measuring one CLI run for benchmarks/scale.py: wall time, peak RSS of its process tree, timestamped stderr;
and the loopback latency of `gloss-edge serve`.

Peak RSS: every ``POLL_S`` the resident memory of the process and all its children is summed (psutil, or
/proc without it), and the main process's own kernel-kept peak (``VmHWM``) is read; the larger one is the peak
(the poll can miss a spike shorter than its period, ``VmHWM`` cannot, for the main process). ``wait4``'s
``ru_maxrss`` is not used: Linux counts the parent's memory at the fork into it. CPU seconds (user + system,
from ``wait4``) are recorded too: unlike wall time they hardly change when other jobs share the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import psutil
except ImportError:  # the /proc fallback reads the main process only
    psutil = None

# benchmarks/load.py (same folder) is imported inside the functions: it imports gloss, which must come from the
# code that scale.py --code-commit puts on PYTHONPATH, so nothing of gloss is imported before that.
MIB = 2**20
POLL_S = 0.05
SERVE_SHUTDOWN_S = 60


@dataclass
class Run:
    """One measured process run."""

    command: list[str]
    wall_s: float = 0.0
    peak_rss_mb: float = 0.0
    returncode: int | None = None
    cpu_s: float = 0.0  # user + system CPU seconds of the process and the children it waited for
    stdout: str = ""
    timeline: list[tuple[float, str]] = field(default_factory=list)  # stderr pieces, seconds since start

    def tail(self, chars: int = 3000) -> str:
        """The end of its stderr, for an error message."""
        return "\n".join(text for _, text in self.timeline)[-chars:]


def tool(name: str) -> list[str]:
    """The console script ``name`` (``gloss-export``, ``gloss-edge``), or ``python -m`` its module."""
    exe = shutil.which(name)
    return [exe] if exe else [sys.executable, "-m", f"gloss.{name.split('-')[1]}.cli"]


def proc_mb(pid: int, key: str = "VmRSS") -> float | None:
    """A process's ``VmRSS`` (or ``VmHWM``, its peak) in MiB from /proc; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(rf"^{key}:\s+(\d+) kB", text, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else None


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and its descendants in MiB (0 once it is gone)."""
    if psutil is None:
        return proc_mb(pid) or 0.0
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.Error:
            continue
    return total / MIB


def _read_stderr(stream: Any, start: float, timeline: list[tuple[float, str]]) -> None:
    """Split stderr at newlines and carriage returns (tqdm) and stamp each piece when it arrives."""
    pending = b""
    while chunk := stream.read1(65536):
        now = time.perf_counter() - start
        parts = re.split(rb"[\r\n]", pending + chunk)
        pending = parts.pop()
        timeline.extend((round(now, 3), p.decode(errors="replace")[:300]) for p in parts if p.strip())
    if pending.strip():
        timeline.append((round(time.perf_counter() - start, 3), pending.decode(errors="replace")[:300]))


def run_measured(command: list[str], env: dict[str, str] | None = None, timeout_s: float | None = None) -> Run:
    """Run ``command`` to its end; its wall time, peak RSS (process tree) and timestamped stderr."""
    run = Run(command=[str(c) for c in command])
    start = time.perf_counter()
    proc = subprocess.Popen(run.command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    reader = threading.Thread(target=_read_stderr, args=(proc.stderr, start, run.timeline), daemon=True)
    reader.start()
    out: list[bytes] = []
    writer = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
    writer.start()
    peak = 0.0
    while True:  # wait4, not poll: its rusage gives the CPU time of the child and its children
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        peak = max(peak, tree_rss_mb(proc.pid), proc_mb(proc.pid, "VmHWM") or 0.0)
        if timeout_s is not None and time.perf_counter() - start > timeout_s:
            proc.kill()
        time.sleep(POLL_S)
    run.wall_s = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join()
    writer.join()
    run.returncode, run.peak_rss_mb = proc.returncode, peak
    run.cpu_s = usage.ru_utime + usage.ru_stime
    run.stdout = b"".join(out).decode(errors="replace")
    return run


def check(run: Run) -> Run:
    """``run``, or SystemExit with its stderr if it failed."""
    if run.returncode != 0:
        raise SystemExit(f"{' '.join(run.command[:4])} ... exited {run.returncode}:\n{run.tail()}")
    return run


def cold_recommend(bundle_dir: Path, history: list[str], repeats: int = 3) -> dict[str, Any]:
    """``repeats`` fresh `gloss-edge recommend` processes (default settings, k=10): median wall and peak RSS."""
    command = [*tool("gloss-edge"), "recommend", str(bundle_dir), "-k", "10", "--json"]
    command += [arg for item in history for arg in ("-i", item)]
    runs = [check(run_measured(command)) for _ in range(repeats)]
    answer = json.loads(runs[-1].stdout)
    return {"cold_recommend_s": statistics.median(r.wall_s for r in runs),
            "cold_recommend_rss_mb": statistics.median(r.peak_rss_mb for r in runs),
            "cold_recommend_runs_s": [round(r.wall_s, 3) for r in runs],
            "cold_recommend_runs_rss_mb": [round(r.peak_rss_mb, 1) for r in runs],
            "cold_recommend_cpu_s": round(statistics.median(r.cpu_s for r in runs), 3),
            "recommend_answer_items": len(answer.get("items", [])) if isinstance(answer, dict) else len(answer)}


def _post(conn: Any, body: bytes) -> tuple[int, float, float | None]:
    """One POST /recommend: status, client latency in ms, and the app's own time from its Server-Timing header."""
    start = time.perf_counter()
    conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    ms = (time.perf_counter() - start) * 1000
    timing = re.search(r"app;dur=([\d.]+)", response.getheader("Server-Timing") or "")
    return response.status, ms, float(timing.group(1)) if timing else None


def serve_latency(bundle_dir: Path, histories: list[list[str]], log_path: Path) -> dict[str, Any]:
    """Start `gloss-edge serve` (default settings), wait for /health, post every history twice from one loopback
    client, one request at a time: on one kept-alive connection (``serve_p50_ms``: what a client sees) and on a
    new connection each (``serve_fresh_conn_*``); also the app's own time (Server-Timing) and the server's RSS
    after the run. The two connection kinds differ by TCP's delayed ACK when the server writes an answer in two
    segments."""
    import http.client

    from load import percentile, start_server, wait_healthy

    proc, port = start_server(bundle_dir, "127.0.0.1", [], log_path)
    try:
        started = time.perf_counter()
        wait_healthy("127.0.0.1", port)
        ready_s = time.perf_counter() - started
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        kept, fresh, app, statuses = [], [], [], {}
        for history in histories:
            body = json.dumps({"history": history, "k": 10}).encode()
            other = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
            for log, connection in ((kept, conn), (fresh, other)):
                status, ms, app_ms = _post(connection, body)
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    log.append(ms)
                    if app_ms is not None:
                        app.append(app_ms)
            other.close()
        conn.close()
        rss_after, peak = proc_mb(proc.pid), proc_mb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=SERVE_SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            proc.kill()
    return {"serve_p50_ms": percentile(kept, 50), "serve_p95_ms": percentile(kept, 95),
            "serve_rss_mb": rss_after, "serve_peak_rss_mb": peak, "serve_requests": 2 * len(histories),
            "serve_fresh_conn_p50_ms": percentile(fresh, 50), "serve_fresh_conn_p95_ms": percentile(fresh, 95),
            "serve_app_p50_ms": percentile(app, 50), "serve_app_p95_ms": percentile(app, 95),
            "serve_statuses": {str(k): v for k, v in sorted(statuses.items())},
            "serve_ready_s": round(ready_s, 2)}


def dir_mb(path: Path) -> float:
    """Bytes of every file under ``path``, in MiB (hard-linked files counted once)."""
    seen, total = set(), 0
    for entry in Path(path).rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            stat = entry.stat()
            if (stat.st_dev, stat.st_ino) not in seen:
                seen.add((stat.st_dev, stat.st_ino))
                total += stat.st_size
    return total / MIB


def load_avg() -> float:
    """The machine's 1-minute load average (the machine may be shared)."""
    return round(os.getloadavg()[0], 2)
