"""The server's pure parts: request checks (handle_request), the bounded queue and worker, Prometheus metrics."""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pytest

from gloss.edge.catalog import Catalog
from gloss.edge.errors import InputError
from gloss.edge.generation.generate import GeneratedQuery
from gloss.edge.recommend import Recommender
from gloss.edge.server.metrics import ServerMetrics
from gloss.edge.server.queue import (
    SERVICE_TIME_WEIGHT,
    WAIT_SPREADS,
    QueueClosedError,
    QueueFullError,
    RequestQueue,
    Worker,
)
from gloss.edge.server.request import MAX_K, handle_request, parse_request, run_batch, run_request
from tests.conftest import FIXTURES
from tests.fakes import BruteForceIndex, HashEmbedder


class EchoGenerator:
    """Generates the last three history titles, newest first; records every history it was given."""

    def __init__(self) -> None:
        self.histories: list[list[str]] = []

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        self.histories.append(list(history))
        return [GeneratedQuery(title=t, score=-float(i), text=f"Title: {t}")
                for i, t in enumerate(reversed(history[-3:]))]


@pytest.fixture
def make_recommender(item_vectors: np.ndarray):
    def make(catalog: Catalog, generator=None) -> Recommender:
        return Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), generator)

    return make


def body(**fields) -> bytes:
    return json.dumps(fields).encode()


def test_handle_request_matches_the_recommender(catalog: Catalog, make_recommender):
    recommender = make_recommender(catalog, EchoGenerator())
    history = list(catalog.asins[10:16])
    for include_seen in (False, True):
        status, reply = handle_request(recommender, body(history=history, k=7, include_seen=include_seen))
        expected = recommender.recommend(history, k=7, exclude_seen=not include_seen)
        assert status == 200
        assert [i["asin"] for i in reply["items"]] == [i.asin for i in expected.items]
        assert reply["queries"] == expected.queries
    status, reply = handle_request(recommender, body(history=history, k=7))
    assert not {i["asin"] for i in reply["items"]} & set(history)  # seen items are removed by default


def test_explain_adds_each_items_parts_as_the_recommender_does(catalog: Catalog, make_recommender):
    recommender = make_recommender(catalog, EchoGenerator())
    history = list(catalog.asins[20:24])
    status, reply = handle_request(recommender, body(history=history, k=4, explain=True))
    assert status == 200
    query_items = reply.pop("query_items")  # explain also says which queries are catalogue titles
    assert reply == json.loads(json.dumps(recommender.recommend(history, k=4, explain=True).to_dict()))
    assert query_items == [catalog.resolve_history([q])[0] for q in reply["queries"]]  # EchoGenerator: exact titles
    assert all(sum(i["explanation"]["parts"].values()) == pytest.approx(i["score"]) for i in reply["items"])


def test_handle_request_accepts_titles_and_the_old_exclude_seen_field(catalog: Catalog, make_recommender):
    recommender = make_recommender(catalog)
    by_id = handle_request(recommender, body(history=list(catalog.asins[:3]), exclude_seen=False))
    by_title = handle_request(recommender, body(history=list(catalog.titles[:3]), include_seen=True))
    assert by_id == by_title and by_id[0] == 200


DEEP = b"[" * 100_000 + b"]" * 100_000


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"{", "not JSON"),
        (b'{"history": ["\xff\xfe"]}', "not UTF-8"),
        (DEEP, "nested too deeply"),
        (b'{"history": "B000052YM7"}', "'history'"),
        (b'["B000052YM7"]', "'history'"),
        (b'{"history": []}', "empty history"),
        (b'{"history": ["B000NOTREAL"]}', "unknown item"),
        (b'{"history": [1, 2]}', "must hold strings"),
        (b'{"history": ["B000052YM7"], "k": true}', "'k'"),
        (b'{"history": ["B000052YM7"], "k": 0}', "'k'"),
        (b'{"history": ["B000052YM7"], "k": 1001}', "'k'"),
        (b'{"history": ["B000052YM7"], "k": "5"}', "'k'"),
        (b'{"history": ["B000052YM7"], "k": 2.0}', "'k'"),
        (b'{"history": ["B000052YM7"], "k": ' + b"[" * 900 + b"]" * 900 + b"}", "got an array"),
        (b'{"history": ["B000052YM7"], "include_seen": "yes"}', "'include_seen' must be true or false"),
        (b'{"history": ["B000052YM7"], "include_seen": true, "exclude_seen": true}', "contradict"),
        (b'{"history": ["B000052YM7"], "kk": 3}', "unknown field 'kk'"),
        (b'{"history": ["B000052YM7"], "explain": 1}', "'explain' must be true or false"),
        (b'{"history": ["B000052YM7"], "k": ' + b"7" * 5000 + b"}", "more digits than"),  # int-digits limit
    ],
    ids=lambda value: value[:40].decode(errors="replace") if isinstance(value, bytes) else None,
)
def test_handle_request_rejects_bad_bodies_with_400(catalog: Catalog, make_recommender, raw: bytes, message: str):
    status, reply = handle_request(make_recommender(catalog), raw)
    assert status == 400
    assert message in reply["error"], reply
    assert set(reply) == {"error"}


def test_k_bounds_are_inclusive(catalog: Catalog, make_recommender):
    recommender = make_recommender(catalog)
    for k in (1, MAX_K):
        status, reply = handle_request(recommender, body(history=[catalog.asins[0]], k=k))
        assert status == 200 and len(reply["items"]) == min(k, len(catalog) - 1)


def test_a_huge_history_is_capped_before_any_work(catalog: Catalog, make_recommender):
    """74,000 items: only the newest `max_history_items` are resolved (older unknown ids are never looked at)."""
    generator = EchoGenerator()
    recommender = make_recommender(catalog, generator)
    cap = 32
    newest = [catalog.asins[i % len(catalog)] for i in range(cap)]
    history = ["B000NOTREAL"] * (74_000 - cap) + newest
    status, reply = handle_request(recommender, body(history=history, k=5), max_history_items=cap)
    assert status == 200, reply
    assert reply["history_dropped"] == 74_000 - cap
    assert generator.histories == [catalog.titles_of(newest)]
    assert parse_request(body(history=history), catalog, cap).history == tuple(newest)


def test_unknown_item_inside_the_kept_window_is_still_an_error(catalog: Catalog, make_recommender):
    history = [catalog.asins[0]] * 5 + ["B000NOTREAL"]
    with pytest.raises(InputError, match="unknown item 'B000NOTREAL'"):
        parse_request(body(history=history), catalog, max_history_items=3)


# --- queue and worker ---


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_queue_refuses_past_capacity_and_takes_fifo_batches():
    queue = RequestQueue(capacity=3, max_batch=2)
    futures = [queue.submit(i) for i in range(3)]
    with pytest.raises(QueueFullError, match="3 requests queued") as info:
        queue.submit(99)
    assert info.value.retry_after_s >= 1
    futures[1].cancel()  # its caller gave up: skipped, not run
    batch = queue.take()
    assert [job.payload for job in batch] == [0, 2]
    assert queue.depth == 0 and queue.running == 2
    queue.finish(batch, 4.0)
    assert queue.service_s == pytest.approx(2.0) and queue.running == 0


def reference_wait_s(times: list[float], ahead: int) -> float:
    """Expected wait for ``ahead`` requests: n * mean + 2 * sqrt(n) * mean deviation, both moving averages."""
    mean, spread = times[0], times[0]
    for t in times[1:]:
        spread += SERVICE_TIME_WEIGHT * (abs(t - mean) - spread)
        mean += SERVICE_TIME_WEIGHT * (t - mean)
    return ahead * mean + WAIT_SPREADS * math.sqrt(ahead) * spread


def test_queue_refuses_work_that_would_outwait_the_timeout():
    max_wait_s = 30.0
    queue = RequestQueue(capacity=100, max_batch=1, max_wait_s=max_wait_s, clock=FakeClock())
    queue.submit("first")  # no service time known yet: one waiting request is admitted...
    with pytest.raises(QueueFullError, match="warming up"):
        queue.submit("burst")  # ...not a burst that may all time out
    times = [2.0, 3.0, 2.5, 1.5, 2.0, 2.2, 1.8]
    for t in times:
        queue.finish(queue.take(), t)
        queue.submit("next")
    queue.finish(queue.take(), 2.0)
    times.append(2.0)
    assert queue.expected_wait_s() == pytest.approx(reference_wait_s(times, 1))
    admitted = 0
    while reference_wait_s(times, admitted + 1) <= max_wait_s:
        queue.submit(admitted)
        admitted += 1
    assert admitted > 1
    with pytest.raises(QueueFullError, match=f"exceeds the {max_wait_s:g} s admission limit") as info:
        queue.submit("one too many")
    assert info.value.retry_after_s == math.ceil(queue.service_s)
    while queue.depth:
        queue.finish(queue.take(), 600.0)  # a mean far over the timeout...
    assert queue.submit("idle") is not None  # ...still admits work when the worker is idle


def test_close_rejects_waiting_jobs_and_ends_the_worker_loop():
    queue = RequestQueue(capacity=4)
    futures = [queue.submit(i) for i in range(3)]
    assert queue.close() == 3
    for future in futures:
        with pytest.raises(QueueClosedError):
            future.result(timeout=1)
    with pytest.raises(QueueClosedError):
        queue.submit(4)
    assert queue.take() is None


def test_worker_survives_a_failing_batch_and_answers_the_next():
    def run_batch(payloads: list[int]) -> list[int]:
        if 13 in payloads:
            raise RuntimeError("unlucky")
        return [p * 2 for p in payloads]

    queue = RequestQueue(capacity=8)
    worker = Worker(queue, run_batch)
    worker.start()
    bad, good = queue.submit(13), queue.submit(21)
    with pytest.raises(RuntimeError, match="unlucky"):
        bad.result(timeout=5)
    assert good.result(timeout=5) == 42
    assert worker.is_alive()
    assert worker.stop(timeout_s=5) and not worker.is_alive()


def test_worker_finishes_the_running_batch_on_stop():
    gate, started = threading.Event(), threading.Event()

    def run_batch(payloads: list[str]) -> list[str]:
        started.set()
        gate.wait(5)
        return [p.upper() for p in payloads]

    queue = RequestQueue(capacity=8)
    worker = Worker(queue, run_batch)
    worker.start()
    running = queue.submit("a")
    started.wait(5)
    waiting = queue.submit("b")
    stopper = threading.Thread(target=worker.stop, kwargs={"timeout_s": 5})
    stopper.start()
    with pytest.raises(QueueClosedError):
        waiting.result(timeout=5)
    gate.set()
    stopper.join(5)
    assert running.result(timeout=5) == "A" and not worker.is_alive()


# --- metrics ---


def parse_prometheus(text: str) -> dict[str, float]:
    """Sample lines as {'name{labels}': value}; checks every line is a comment or a sample."""
    samples = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            continue
        match = re.fullmatch(r'([a-z_]+(?:\{[a-z_]+="[^"]*"(?:,[a-z_]+="[^"]*")*\})?) (\S+)', line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[match.group(1)] = float(match.group(2))
    return samples


def test_latency_histogram_matches_a_brute_force_count():
    rng = np.random.default_rng(0)
    latencies = np.concatenate([rng.exponential(0.5, 500), [0.005, 1.0, 100.0]])  # bounds and past the last one
    metrics = ServerMetrics(paths=("/recommend",))
    for seconds in latencies:
        metrics.observe_latency(float(seconds))
    for status in (200, 200, 503, 400):
        metrics.count_request("/recommend", status)
    metrics.count_request("/wp-admin", 404)
    samples = parse_prometheus(metrics.render({"queue_depth": ("Requests waiting.", 3)}))
    for bound in metrics.buckets_s:
        key = f'gloss_request_duration_seconds_bucket{{le="{bound:g}"}}'
        assert samples[key] == np.sum(latencies <= bound), key
    assert samples['gloss_request_duration_seconds_bucket{le="+Inf"}'] == len(latencies)
    assert samples["gloss_request_duration_seconds_count"] == len(latencies)
    assert samples["gloss_request_duration_seconds_sum"] == pytest.approx(latencies.sum())
    assert samples['gloss_requests_total{path="/recommend",status="200"}'] == 2
    assert samples['gloss_requests_total{path="/recommend",status="503"}'] == 1
    assert samples['gloss_requests_total{path="other",status="404"}'] == 1
    assert samples["gloss_queue_depth"] == 3


# --- batches ---


class BatchEchoGenerator(EchoGenerator):
    """EchoGenerator with ``generate_batch``; refuses (InputError) any history whose newest title is ``poison``."""

    def __init__(self, poison: str | None = None) -> None:
        super().__init__()
        self.poison, self.batch_sizes = poison, []

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        if history[-1] == self.poison:
            raise InputError("the newest item alone does not fit the context")
        return super().generate(history)

    def generate_batch(self, histories: Sequence[Sequence[str]]) -> list[list[GeneratedQuery]]:
        self.batch_sizes.append(len(histories))
        return [self.generate(history) for history in histories]


@pytest.fixture(scope="module")
def fusion_ranker(catalog: Catalog, item_vectors: np.ndarray):
    from gloss.edge.fusion import FusionConfig, FusionRanker
    from gloss.edge.splits import load_sequences
    from gloss.export.copurchase import build_copurchase, training_prefixes

    sequences = training_prefixes(load_sequences(FIXTURES / "beauty_sequences.jsonl"), catalog, 0)
    copurchase = build_copurchase([s[:-1] for s in sequences], len(catalog), window=3, decay=0.5)
    return FusionRanker(catalog, BruteForceIndex(item_vectors), copurchase, FusionConfig(query_weight=1.0))


@pytest.mark.parametrize("generator_kind", ["none", "batch", "single"])
def test_a_fused_batch_answers_exactly_as_one_at_a_time(catalog, item_vectors, fusion_ranker, generator_kind):
    generator = {"none": None, "batch": BatchEchoGenerator(), "single": EchoGenerator()}[generator_kind]
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), generator, fusion_ranker)
    requests = [parse_request(body(history=list(catalog.asins[i : i + 1 + i % 4]), k=3 + i % 5,
                                   include_seen=i % 3 == 0, explain=i == 4), catalog) for i in range(7)]
    one_by_one = [run_request(recommender, request) for request in requests]
    assert run_batch(recommender, requests) == one_by_one
    assert "explanation" in one_by_one[4][1]["items"][0]
    if generator_kind == "batch":
        assert generator.batch_sizes == [len(requests) - 1]  # the explained request runs alone


def test_one_bad_request_does_not_fail_its_batch(catalog, item_vectors, fusion_ranker):
    generator = BatchEchoGenerator(poison=catalog.titles[5])
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), generator, fusion_ranker)
    requests = [parse_request(body(history=[catalog.asins[i]]), catalog) for i in (3, 5, 7)]
    replies = run_batch(recommender, requests)
    assert [status for status, _ in replies] == [200, 400, 200]
    assert "does not fit" in replies[1][1]["error"]
    assert replies[0] == run_request(recommender, requests[0])


def test_the_worker_batches_by_default_only_without_an_llm(catalog, make_recommender):
    from gloss.edge.server.app import NO_LLM_BATCH, RecommendService, ServeConfig

    assert RecommendService(make_recommender(catalog), ServeConfig()).queue.max_batch == NO_LLM_BATCH
    assert RecommendService(make_recommender(catalog, EchoGenerator()), ServeConfig()).queue.max_batch == 1
    assert RecommendService(make_recommender(catalog, EchoGenerator()), ServeConfig(max_batch=4)).queue.max_batch == 4


def test_llm_generation_sizes_the_kv_context_for_the_worker_batch(smollm2_gguf_path):
    """--max-batch N with the LLM must give generate_batch room for N searches at once (else it runs them one
    after another); beyond llama.cpp's sequence limit the extra requests wait for a slot."""
    from gloss.edge.generation.generate import MAX_SEQUENCES, GenerationConfig, LlamaCppGenerator
    from gloss.edge.server.app import llm_generation

    assert llm_generation(None) is None and llm_generation(1) is None
    assert llm_generation(500).max_batch_users == MAX_SEQUENCES // (2 * GenerationConfig().num_beams)
    config = llm_generation(3)
    assert config.max_batch_users == 3
    histories = [["CeraVe Moisturizing Cream 16 oz"], ["Neutrogena Oil-Free Acne Wash, 6 Ounce"],
                 ["Maybelline New York Great Lash Washable Mascara, Blackest Black"]]
    with LlamaCppGenerator.load(smollm2_gguf_path, replace(config, max_new_tokens=4)) as gen:
        gen.generate_batch(histories)
        assert 3 * gen.config.num_beams in gen.stats.batch_sizes  # every user's beams in one decode


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True), ("::1", True),
                                            ("localhost", True), ("0.0.0.0", False), ("192.168.1.2", False),
                                            ("example.com", False)])
def test_is_loopback(host: str, loopback: bool):
    from gloss.edge.server.transport import is_loopback

    assert is_loopback(host) is loopback


def test_release_free_memory_passes_the_result_through_and_finds_malloc_trim():
    import platform

    from gloss.edge.server import app as serve

    replies = [(200, {"items": []})]
    assert serve.release_free_memory(replies) is replies
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert callable(serve._malloc_trim())  # else the server would silently keep every request's peak
