"""Server metrics in the Prometheus text exposition format (version 0.0.4), stdlib only.

Counters of answered requests by path and status, a latency histogram of ``POST /recommend``, and gauges the
server reads at scrape time (queue depth, running requests). Thread-safe: the event loop records, any thread
may render.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections import Counter
from collections.abc import Mapping, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "gloss_"
# Seconds; spans a no-LLM answer (milliseconds) to a queued LLM request near the timeout (tens of seconds).
DEFAULT_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class ServerMetrics:
    """Request counters and a latency histogram.

    Args:
        buckets_s: Upper bounds of the latency histogram in seconds, increasing (``+Inf`` is added).
        paths: Paths counted under their own label; any other path counts as ``other`` (bounded cardinality).
    """

    def __init__(self, buckets_s: Sequence[float] = DEFAULT_BUCKETS_S, paths: Sequence[str] = ()) -> None:
        if list(buckets_s) != sorted(set(buckets_s)) or not buckets_s:
            raise ValueError(f"histogram buckets must be distinct and increasing, got {buckets_s}")
        self.buckets_s = tuple(float(b) for b in buckets_s)
        self.paths = frozenset(paths)
        self._lock = threading.Lock()
        self._requests: Counter[tuple[str, int]] = Counter()
        self._bucket_counts = [0] * (len(self.buckets_s) + 1)  # last one: +Inf
        self._sum_s = 0.0
        self._count = 0

    def count_request(self, path: str, status: int) -> None:
        """Count one answered request."""
        key = (path if path in self.paths else "other", int(status))
        with self._lock:
            self._requests[key] += 1

    def observe_latency(self, seconds: float) -> None:
        """Add one ``/recommend`` latency to the histogram."""
        slot = bisect.bisect_left(self.buckets_s, seconds)  # first bucket with seconds <= bound
        with self._lock:
            self._bucket_counts[slot] += 1
            self._sum_s += seconds
            self._count += 1

    def requests(self) -> dict[tuple[str, int], int]:
        """Snapshot of the request counters: (path, status) -> count."""
        with self._lock:
            return dict(self._requests)

    def render(self, gauges: Mapping[str, tuple[str, float]] = {}) -> str:  # noqa: B006 (read-only default)
        """The metrics as Prometheus text.

        Args:
            gauges: name (without the ``gloss_`` prefix) -> (help text, value), read by the caller at scrape time.
        """
        with self._lock:
            requests = sorted(self._requests.items())
            counts, total_s, count = list(self._bucket_counts), self._sum_s, self._count
        lines = [
            f"# HELP {PREFIX}requests_total HTTP requests answered, by path and status.",
            f"# TYPE {PREFIX}requests_total counter",
        ]
        lines += [f'{PREFIX}requests_total{{path="{_label(p)}",status="{s}"}} {n}' for (p, s), n in requests]
        name = f"{PREFIX}request_duration_seconds"
        lines += [f"# HELP {name} Latency of POST /recommend from the request head to the reply, seconds.",
                  f"# TYPE {name} histogram"]
        cumulative = 0
        for bound, bucket in zip((*self.buckets_s, math.inf), counts, strict=True):
            cumulative += bucket
            lines.append(f'{name}_bucket{{le="{_value(bound)}"}} {cumulative}')
        lines += [f"{name}_sum {_value(total_s)}", f"{name}_count {count}"]
        for gauge, (help_text, value) in gauges.items():
            lines += [f"# HELP {PREFIX}{gauge} {help_text}", f"# TYPE {PREFIX}{gauge} gauge",
                      f"{PREFIX}{gauge} {_value(value)}"]
        return "\n".join(lines) + "\n"
