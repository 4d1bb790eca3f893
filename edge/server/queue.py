"""A bounded request queue and the one worker thread that owns the Recommender (stdlib only, testable alone).

llama.cpp contexts are not thread-safe, so a single thread runs every recommendation; the event loop only
parses requests, queues them and waits for their futures. Admission is decided when a request arrives: it is
refused at once (the server answers 503 with Retry-After) when the queue is full, or when the work already
queued would keep it waiting longer than the request may wait (an idle worker always admits, so one slow
request cannot lock the queue). So an accepted request is expected to be answered in time, and a refused one
costs nothing. Work is taken in batches of up to ``max_batch`` requests,
so a runtime that decodes several users at once can serve them together.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gloss.edge.errors import GlossError, InputError

logger = logging.getLogger(__name__)

# Weight of the newest request in the running mean (and mean deviation) of seconds per request.
SERVICE_TIME_WEIGHT = 0.2
# The wait for n requests ahead is estimated as n * mean + WAIT_SPREADS * sqrt(n) * mean deviation: a sum of n
# service times spreads like sqrt(n), and LLM searches vary (some run to the token cap).
WAIT_SPREADS = 2.0


class QueueFullError(GlossError):
    """The server is at capacity; ``retry_after_s`` says when a slot is expected to free up."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueClosedError(GlossError):
    """The server is shutting down and takes no more work."""


@dataclass
class Job:
    """One queued request: what the worker runs, and the future its caller waits on."""

    payload: Any
    future: Future = field(default_factory=Future)
    enqueued_at: float = 0.0


class RequestQueue:
    """A FIFO of jobs with a hard capacity, an admission rule on expected waiting time, and batch takes.

    Args:
        capacity: Jobs that may wait (not counting those running).
        max_batch: Jobs handed to the worker at once.
        max_wait_s: Refuse a job whose expected wait plus service time exceeds this (None: capacity only).
        clock: Monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, capacity: int, max_batch: int = 1, max_wait_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if capacity < 1:
            raise InputError(f"--queue-size must be >= 1, got {capacity}")
        if max_batch < 1:
            raise InputError(f"--max-batch must be >= 1, got {max_batch}")
        self.capacity, self.max_batch, self.max_wait_s, self._clock = capacity, max_batch, max_wait_s, clock
        self._jobs: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._running = 0
        self._service_s: float | None = None
        self._spread_s = 0.0

    @property
    def depth(self) -> int:
        """Jobs waiting (cancelled ones included until the worker skips them)."""
        with self._cond:
            return len(self._jobs)

    @property
    def running(self) -> int:
        """Jobs the worker is running now."""
        with self._cond:
            return self._running

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        with self._cond:
            return self._closed

    @property
    def service_s(self) -> float | None:
        """Running mean of seconds per job (None before the first job finished)."""
        with self._cond:
            return self._service_s

    def expected_wait_s(self) -> float:
        """Seconds a new job would wait before and while running, from the mean service time (0 when unknown)."""
        with self._cond:
            return self._expected_wait_locked()

    def _expected_wait_locked(self) -> float:
        if self._service_s is None:
            return 0.0
        ahead = len(self._jobs) + self._running + 1  # the service time is per request, batches included
        return ahead * self._service_s + WAIT_SPREADS * math.sqrt(ahead) * self._spread_s

    def retry_after_s(self) -> int:
        """Whole seconds until about one job finishes and frees a slot (at least 1)."""
        with self._cond:
            return max(1, math.ceil(self._service_s or 0.0))

    def submit(self, payload: Any) -> Future:
        """Queue a job and return the future the worker completes.

        Raises:
            QueueFullError: If the queue is full or the job would wait longer than ``max_wait_s``.
            QueueClosedError: If the queue is closed.
        """
        with self._cond:
            if self._closed:
                raise QueueClosedError("the server is shutting down")
            retry = max(1, math.ceil(self._service_s or 0.0))
            if len(self._jobs) >= self.capacity:
                raise QueueFullError(f"server busy: {len(self._jobs)} requests queued (the limit)", retry)
            wait = self._expected_wait_locked()
            if self.max_wait_s is not None and self._service_s is None and self._jobs:
                # Nothing measured yet: admit one waiting request at a time, not a burst that may all time out.
                raise QueueFullError("server busy: warming up (no request has finished yet)", retry)
            idle = not self._jobs and not self._running  # always admitted: else a slow mean could lock out all
            if self.max_wait_s is not None and wait > self.max_wait_s and not idle:
                raise QueueFullError(
                    f"server busy: expected wait {wait:.1f} s exceeds the {self.max_wait_s:g} s admission limit",
                    retry,
                )
            job = Job(payload, enqueued_at=self._clock())
            self._jobs.append(job)
            self._cond.notify()
            return job.future

    def take(self, timeout_s: float | None = None) -> list[Job] | None:
        """Block until jobs are waiting; return up to ``max_batch`` of them, oldest first, marked running.

        Cancelled jobs (their caller gave up) are dropped here. Returns None once the queue is closed and
        empty, and ``[]`` when ``timeout_s`` passes without work.
        """
        with self._cond:
            while True:
                batch = []
                while self._jobs and len(batch) < self.max_batch:
                    job = self._jobs.popleft()
                    if job.future.set_running_or_notify_cancel():
                        batch.append(job)
                if batch:
                    self._running += len(batch)
                    return batch
                if self._closed:
                    return None
                if not self._cond.wait(timeout_s):
                    return []

    def finish(self, jobs: Sequence[Job], seconds: float) -> None:
        """Record that the worker finished ``jobs`` in ``seconds`` (updates the mean service time)."""
        with self._cond:
            self._running -= len(jobs)
            per_job = seconds / max(1, len(jobs))
            if self._service_s is None:
                # One sample says nothing about the spread: start as unsure as the mean itself, then learn.
                self._service_s, self._spread_s = per_job, per_job
            else:
                self._spread_s += SERVICE_TIME_WEIGHT * (abs(per_job - self._service_s) - self._spread_s)
                self._service_s += SERVICE_TIME_WEIGHT * (per_job - self._service_s)

    def close(self) -> int:
        """Take no more jobs; fail the waiting ones with :class:`QueueClosedError`. Returns how many failed.

        Jobs already running are left to finish.
        """
        with self._cond:
            self._closed = True
            pending, self._jobs = list(self._jobs), deque()
            self._cond.notify_all()
        rejected = 0
        for job in pending:
            if job.future.set_running_or_notify_cancel():
                job.future.set_exception(QueueClosedError("the server is shutting down"))
                rejected += 1
        return rejected


class Worker:
    """The thread that owns the recommender: takes batches from the queue and completes their futures.

    ``run_batch`` gets the batch's payloads and returns one result per payload. If it raises, every job of
    the batch fails with that exception and the worker goes on with the next batch: nothing stops it but
    :meth:`stop`.

    Args:
        queue: Where the jobs come from.
        run_batch: Payloads in, results out (same length and order).
    """

    def __init__(self, queue: RequestQueue, run_batch: Callable[[list[Any]], Sequence[Any]]) -> None:
        self.queue, self._run_batch = queue, run_batch
        self._thread = threading.Thread(target=self._loop, name="gloss-worker", daemon=True)

    def start(self) -> None:
        """Start the worker thread."""
        self._thread.start()

    def is_alive(self) -> bool:
        """True while the worker thread runs."""
        return self._thread.is_alive()

    def stop(self, timeout_s: float | None = None) -> bool:
        """Close the queue (waiting jobs fail), let the running batch finish, join. True if the thread ended."""
        rejected = self.queue.close()
        if rejected:
            logger.info("shutdown: rejected %d queued requests", rejected)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def _loop(self) -> None:
        while (jobs := self.queue.take()) is not None:
            self._run(jobs)

    def _run(self, jobs: list[Job]) -> None:
        start = time.perf_counter()
        try:
            results = self._run_batch([job.payload for job in jobs])
            if len(results) != len(jobs):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(jobs)} requests")
        except Exception as exc:  # the worker must outlive any request; the caller gets the exception
            logger.exception("worker: a batch of %d requests failed", len(jobs))
            for job in jobs:
                job.future.set_exception(exc)
        else:
            for job, result in zip(jobs, results, strict=True):
                job.future.set_result(result)
        finally:
            self.queue.finish(jobs, time.perf_counter() - start)
