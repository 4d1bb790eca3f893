"""Load test of ``gloss-edge serve``: N concurrent clients for T seconds on loopback, LLM and no-LLM paths.

Usage:
    python benchmarks/load.py BUNDLE_DIR [--data-dir /work/shared/data/amazon2014/beauty] [--clients 50]
        [--duration 60] [--modes llm,llm-batch4,no-llm,no-llm-batch1] [--max-batch N]
        [--out benchmarks/results/load.json]

For each mode it starts the real server in a subprocess (``gloss-edge serve BUNDLE_DIR --port 0``, plus
``--last-item`` for the no-LLM path: fusion when the bundle has co-purchase statistics, else last-item
search; ``no-llm-batch1`` is the same with ``--max-batch 1``, one request per worker step; ``llm-batch4`` runs
up to 4 requests' beam searches in one llama.cpp context (``--max-batch 4``); ``--max-batch``
is passed on to every mode that does not set it), waits until ``/health`` answers (after its warm-up request), then runs
``--clients`` threads for ``--duration`` seconds. Each client keeps one HTTP/1.1 connection and posts real
test-split histories (item ids) one after another; on a 503 it waits the Retry-After seconds (times a random
0.5-1.5 jitter) before its next request, as a well-behaved client does. A request started before the
deadline is waited for (up to the server's request timeout + 30 s), so "every accepted request answered" is
checked, not assumed. The server's RSS is sampled from /proc every
0.1 s. Then the server gets SIGTERM and must exit by itself (graceful shutdown).

Per mode in the JSON: ``sent``, ``ok``, ``rejected_503``, ``errors`` (anything else: other statuses, resets,
timeouts), ``p50_ms``, ``p95_ms`` (of the 200 answers), ``max_rss_mb``, and details. Loopback only: the
script refuses any other host. Bounded: at most 200 clients and 600 s per mode.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scale_measure import proc_mb as rss_mb  # benchmarks/scale_measure.py

from gloss.edge.files import write_json_atomic
from gloss.edge.server.app import ServeConfig
from gloss.edge.server.transport import is_loopback
from gloss.edge.splits import Split, load_sequences, make_examples

RESULTS = Path(__file__).parent / "results"
DEFAULT_DATA = Path("/work/shared/data/amazon2014/beauty")
MODES = {"llm": ["--llm"], "llm-batch4": ["--llm", "--max-batch", "4"], "no-llm": ["--last-item"],
         "no-llm-batch1": ["--last-item", "--max-batch", "1"]}
MAX_CLIENTS, MAX_DURATION_S = 200, 600
RSS_PERIOD_S = 0.1
ANSWER_MARGIN_S = 30.0  # past the server's request timeout, a missing answer counts as an error
STARTUP_TIMEOUT_S = 300.0


@dataclass
class ClientLog:
    """What one client saw."""

    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def test_histories(data_dir: Path) -> list[list[str]]:
    """Test-split histories (item ids, oldest first) of every user."""
    examples = make_examples(load_sequences(data_dir / "sequences.jsonl.gz"), Split.test, frozenset())
    return [list(ex.history) for ex in examples]


def start_server(bundle_dir: Path, host: str, extra: list[str], log_path: Path) -> tuple[subprocess.Popen, int]:
    """Start ``gloss-edge serve`` on a free port; return the process and its port once it listens."""
    command = [sys.executable, "-m", "gloss.edge.cli", "serve", str(bundle_dir), "--host", host, "--port", "0", *extra]
    log = log_path.open("w")
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=log, text=True)
    port: list[int] = []

    def pump() -> None:
        for line in proc.stderr:
            log.write(line)
            log.flush()
            found = re.search(r"serving .* on http://[^ ]+:(\d+) ", line)
            if found and not port:
                port.append(int(found.group(1)))

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not port:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"server did not start; see {log_path}")
        time.sleep(0.1)
    return proc, port[0]


def wait_healthy(host: str, port: int) -> None:
    """Block until ``GET /health`` answers 200 (the server listens before its warm-up request is done)."""
    conn = http.client.HTTPConnection(host, port, timeout=STARTUP_TIMEOUT_S)
    conn.request("GET", "/health")
    response = conn.getresponse()
    if response.status != 200:
        raise SystemExit(f"server unhealthy: {response.status} {response.read()[:200]!r}")
    conn.close()


def request(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, float, str | None]:
    """One POST /recommend: status, latency in ms, and the Retry-After header."""
    start = time.perf_counter()
    conn.request("POST", "/recommend", body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status, (time.perf_counter() - start) * 1000, response.getheader("Retry-After")


def client(host: str, port: int, histories: list[list[str]], deadline: float, timeout_s: float, seed: int,
           log: ClientLog) -> None:
    """Post histories until the deadline; on 503 wait Retry-After with jitter."""
    rng = random.Random(seed)
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    while time.monotonic() < deadline:
        body = json.dumps({"history": rng.choice(histories), "k": 10}).encode()
        try:
            status, ms, retry_after = request(conn, body)
        except (OSError, http.client.HTTPException) as exc:
            log.errors.append(f"{type(exc).__name__}: {exc}")
            conn.close()
            conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
            continue
        log.statuses[status] = log.statuses.get(status, 0) + 1
        if status == 200:
            log.latencies_ms.append(ms)
        elif status == 503 and retry_after is not None:
            conn.close()  # the server closes it too; never reuse a connection idle past the keep-alive
            time.sleep(min(float(retry_after) * rng.uniform(0.5, 1.5), max(0.0, deadline - time.monotonic())))
    conn.close()


def server_counts(host: str, port: int) -> dict[str, int]:
    """The server's own ``gloss_requests_total`` for /recommend, by status, from /metrics."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    return {m.group(1): int(float(m.group(2))) for m in
            re.finditer(r'gloss_requests_total\{path="/recommend",status="(\d+)"\} (\S+)', text)}


def percentile(values: list[float], q: int) -> float | None:
    """The q-th percentile (inclusive method), None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def run_mode(mode: str, args: argparse.Namespace, histories: list[list[str]]) -> dict[str, Any]:
    """Start the server in ``mode``, load it, stop it; the mode's result row."""
    flags = list(MODES[mode])
    if args.max_batch and "--max-batch" not in flags:
        flags += ["--max-batch", str(args.max_batch)]
    proc, port = start_server(args.bundle_dir, args.host, flags, args.log_dir / f"load_{mode}.log")
    wait_healthy(args.host, port)
    rss = [rss_mb(proc.pid) or 0.0]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.wait(RSS_PERIOD_S):
            rss.append(rss_mb(proc.pid) or 0.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    idle_rss = rss[0]
    timeout_s = ServeConfig().request_timeout_s + ANSWER_MARGIN_S
    load_avg = os.getloadavg()[0]  # the machine may be shared: say how busy it was
    logs = [ClientLog() for _ in range(args.clients)]
    start = time.monotonic()
    deadline = start + args.duration
    threads = [threading.Thread(target=client, args=(args.host, port, histories, deadline, timeout_s, i, log))
               for i, log in enumerate(logs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    counted = server_counts(args.host, port)
    peak = rss_mb(proc.pid, "VmHWM")
    stop = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        exit_code = proc.wait(timeout=ServeConfig().request_timeout_s + ANSWER_MARGIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        exit_code = None
    sampling.set()
    statuses: dict[int, int] = {}
    for log in logs:
        for status, n in log.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
    latencies = [ms for log in logs for ms in log.latencies_ms]
    errors = [e for log in logs for e in log.errors]
    sent = sum(statuses.values()) + len(errors)
    other = sum(n for s, n in statuses.items() if s not in (200, 503))
    return {
        "sent": sent,
        "ok": statuses.get(200, 0),
        "rejected_503": statuses.get(503, 0),
        "errors": other + len(errors),
        "p50_ms": percentile(latencies, 50),
        "p95_ms": percentile(latencies, 95),
        "max_rss_mb": max(rss),
        "server_flags": flags,
        "clients": args.clients,
        "duration_s": round(elapsed, 2),
        "ok_per_s": round(statuses.get(200, 0) / elapsed, 3),
        "statuses": {str(s): n for s, n in sorted(statuses.items())},
        "error_examples": sorted(set(errors))[:5],
        "server_counts": counted,
        "idle_rss_mb": idle_rss,
        "load_avg_1min_at_start": round(load_avg, 2),
        "peak_rss_mb_vmhwm": peak,
        "shutdown_exit_code": exit_code,
        "shutdown_s": round(time.monotonic() - stop, 2),
    }


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown CPU' elsewhere)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.MULTILINE)
    except OSError:
        found = None
    return found.group(1).strip() if found else "unknown CPU"


def write_markdown(path: Path, report: dict[str, Any]) -> None:
    """The results as a Markdown table with the command and the machine."""
    lines = [
        "# Load test of `gloss-edge serve` (loopback)", "",
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Bundle: `{report['bundle_dir']}`; histories: test split of `{report['data_dir']}` "
        f"({report['num_histories']} users); {report['clients']} clients x {report['duration_s']} s per mode; "
        "clients honour Retry-After (x0.5-1.5 jitter).", "",
        "| mode | sent | ok | rejected_503 | errors | p50_ms | p95_ms | max_rss_mb | ok/s | load avg "
        "| exit on SIGTERM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, row in report["modes"].items():
        lines.append(f"| {mode} | {row['sent']} | {row['ok']} | {row['rejected_503']} | {row['errors']} | "
                     f"{_ms(row['p50_ms'])} | {_ms(row['p95_ms'])} | {row['max_rss_mb']:.0f} | {row['ok_per_s']} | "
                     f"{row['load_avg_1min_at_start']} | {row['shutdown_exit_code']} in {row['shutdown_s']} s |")
    lines += ["", "Server-side counts (`/metrics`, POST /recommend by status): " + "; ".join(
        f"{mode}: {row['server_counts']}" for mode, row in report["modes"].items()),
        "", "Latencies are client-side, of 200 answers, queueing included; `max_rss_mb` is the server's VmRSS "
        "sampled every 0.1 s; load avg is the machine's 1-minute load average when the mode started (2 cores)."]
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--modes", default="llm,llm-batch4,no-llm,no-llm-batch1")
    parser.add_argument("--max-batch", type=int, default=None,
                        help="The server's --max-batch (default: the server's own default).")
    parser.add_argument("--out", type=Path, default=RESULTS / "load.json")
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    if not is_loopback(args.host):
        parser.error(f"--host {args.host} is not a loopback address: this load test only runs on loopback")
    if not 1 <= args.clients <= MAX_CLIENTS or not 0 < args.duration <= MAX_DURATION_S:
        parser.error(f"--clients must be in [1, {MAX_CLIENTS}] and --duration in (0, {MAX_DURATION_S}]")
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s) {sorted(unknown)}: choose from {', '.join(MODES)}")
    histories = test_histories(args.data_dir)
    report: dict[str, Any] = {
        "command": "python " + " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "machine": f"VM {platform.machine()}, {os.cpu_count()} cores ({cpu_model()}), "
                   f"Python {platform.python_version()}",
        "bundle_dir": str(args.bundle_dir), "data_dir": str(args.data_dir), "num_histories": len(histories),
        "clients": args.clients, "duration_s": args.duration,
        "modes": {mode: run_mode(mode, args, histories) for mode in modes},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out, report)
    write_markdown(args.out.with_suffix(".md"), report)
    print(json.dumps(report["modes"], indent=2))


if __name__ == "__main__":
    main()
