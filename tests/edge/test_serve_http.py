"""The real server (uvicorn on 127.0.0.1, port 0, in a thread) at the socket level, with fake models.

Each defect of the old http.server is a test here: idle and short-body clients, malformed HTTP, bad bodies,
a full queue, timeouts, worker errors, 50 concurrent clients, graceful shutdown.
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest

from gloss.edge.catalog import Catalog, load_catalog
from gloss.edge.generation.generate import GeneratedQuery
from gloss.edge.prompt import render_item
from gloss.edge.recommend import Recommender
from gloss.edge.server.app import ServeConfig
from gloss.edge.server.transport import Server, make_server
from tests.conftest import FIXTURES
from tests.edge.test_serve import parse_prometheus
from tests.fakes import BruteForceIndex, HashEmbedder

pytestmark = pytest.mark.allow_hosts(["127.0.0.1"])
HOST = "127.0.0.1"


class GatedGenerator:
    """An LLM stand-in that holds the worker until ``gate`` is set; raises on a history ending in ``poison``."""

    def __init__(self, poison: str | None = None) -> None:
        self.gate, self.entered, self.poison = threading.Event(), threading.Event(), poison
        self.gate.set()

    def generate(self, history: Sequence[str]) -> list[GeneratedQuery]:
        self.entered.set()
        if not self.gate.wait(10):
            raise RuntimeError("test gate never opened")
        if history[-1] == self.poison:
            raise RuntimeError("generator blew up")
        return [GeneratedQuery(title=history[-1], score=0.0, text=f"Title: {history[-1]}")]


def hold(generator: GatedGenerator) -> None:
    """From now on the worker blocks in the generator until the gate opens (after the server's warm-up)."""
    generator.gate.clear()
    generator.entered.clear()


@pytest.fixture
def recommender(catalog: Catalog, item_vectors: np.ndarray) -> Recommender:
    return Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), GatedGenerator())


@contextmanager
def running(recommender: Recommender, **config) -> Iterator[Server]:
    server = make_server(recommender, HOST, 0, ServeConfig(**config))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    try:
        yield server
    finally:
        gate = getattr(recommender.generator, "gate", None)
        if gate is not None:
            gate.set()  # a failed test must not leave the worker waiting
        server.shutdown(timeout_s=10)
        server.server_close()
        thread.join(10)


def post(server: Server, payload: object, timeout: float = 10) -> tuple[int, http.client.HTTPMessage, dict]:
    conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=timeout)
    try:
        conn.request("POST", "/recommend", body=json.dumps(payload).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.headers, json.loads(response.read())
    finally:
        conn.close()


def get(server: Server, path: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read().decode()
    finally:
        conn.close()


def send_raw(sock: socket.socket, data: bytes) -> tuple[int, dict]:
    """Send raw bytes on a connected socket and parse the HTTP reply as JSON."""
    sock.sendall(data)
    response = http.client.HTTPResponse(sock)
    response.begin()
    assert response.getheader("Content-Type", "").startswith("application/json")
    return response.status, json.loads(response.read())


def raw(server: Server, data: bytes) -> tuple[int, dict]:
    with socket.create_connection((HOST, server.server_address[1]), timeout=10) as sock:
        return send_raw(sock, data)


def head(content_length: str, path: str = "/recommend") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {content_length}\r\n\r\n".encode()


def test_round_trip_health_recommend_metrics(recommender: Recommender):
    history = list(recommender.catalog.asins[:4])
    with running(recommender) as server:
        assert server.service.queue.service_s is not None  # the warm-up request measured the worker
        status, _, reply = post(server, {"history": history, "k": 3})
        assert status == 200 and len(reply["items"]) == 3
        assert reply["items"] == [{"asin": i.asin, "title": i.title, "score": pytest.approx(i.score)}
                                  for i in recommender.recommend(history, k=3).items]
        status, _, text = get(server, "/health")
        assert status == 200 and json.loads(text)["status"] == "ok"
        status, content_type, text = get(server, "/metrics")
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
        samples = parse_prometheus(text)
        assert samples['gloss_requests_total{path="/recommend",status="200"}'] == 1
        assert samples["gloss_request_duration_seconds_count"] == 1
        assert samples["gloss_queue_depth"] == 0


def test_wrong_path_and_method_get_json_errors(recommender: Recommender):
    with running(recommender) as server:
        status, content_type, text = get(server, "/nope")
        assert status == 404 and content_type == "application/json"
        assert "use POST /recommend" in json.loads(text)["error"]
        conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=10)
        conn.request("GET", "/recommend")
        response = conn.getresponse()
        assert response.status == 405 and response.getheader("Allow") == "POST"
        assert "error" in json.loads(response.read())
        conn.close()


def test_idle_and_short_body_clients_do_not_stall_others(recommender: Recommender):
    read_timeout_s = 1.5
    with running(recommender, read_timeout_s=read_timeout_s) as server:
        port = server.server_address[1]
        idle = socket.create_connection((HOST, port), timeout=10)  # connects, sends nothing
        slow_head = socket.create_connection((HOST, port), timeout=10)
        slow_head.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")  # never finishes its head
        short = socket.create_connection((HOST, port), timeout=10)
        short.sendall(head("100") + b'{"history"')  # Content-Length longer than the body
        try:
            start = time.monotonic()
            status, _, _ = post(server, {"history": [recommender.catalog.asins[0]]})
            assert status == 200 and time.monotonic() - start < read_timeout_s
            status, reply = send_raw(short, b"")  # the reply comes once the read timeout passes
            assert status == 408 and "100 bytes" in reply["error"]
            assert idle.recv(1) == b"" and slow_head.recv(1) == b""  # closed by the server
            assert time.monotonic() - start < read_timeout_s + 5
        finally:
            for sock in (idle, slow_head, short):
                sock.close()


@pytest.mark.parametrize("content_length", ["abc", "-5", "1e3", "10, 20"])
def test_malformed_content_length_gets_a_json_400(recommender: Recommender, content_length: str):
    with running(recommender) as server:
        status, reply = raw(server, head(content_length) + b'{"history": []}')
        assert status == 400 and "invalid HTTP request" in reply["error"]
        assert post(server, {"history": [recommender.catalog.asins[0]]})[0] == 200


@pytest.mark.parametrize(
    "data, message",
    [
        (b'{"history": ["\xff"]}', "not UTF-8"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"history": ["B000052YM7"], "k": true}', "'k'"),
        (b"", "not JSON"),
        (b'{"history": []}', "empty history"),
        (b'{"history": ["nope"]}', "unknown item"),
    ],
    ids=["utf8", "nested", "k-bool", "empty-body", "empty-history", "unknown-item"],
)
def test_bad_bodies_get_a_json_400(recommender: Recommender, data: bytes, message: str):
    with running(recommender) as server:
        status, reply = raw(server, head(str(len(data))) + data)
        assert status == 400 and message in reply["error"]


def test_bodies_over_the_limit_get_413(recommender: Recommender):
    with running(recommender, max_body_bytes=1000) as server:
        status, reply = raw(server, head("5000"))  # refused on the header alone
        assert status == 413 and "5000 bytes" in reply["error"]
        chunked = b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunk = b"x" * 800
        status, reply = raw(server, chunked + (b"320\r\n" + chunk + b"\r\n") * 2 + b"0\r\n\r\n")
        assert status == 413 and "1000-byte limit" in reply["error"]


def test_full_queue_answers_503_with_retry_after_and_every_accepted_request(recommender: Recommender):
    generator = recommender.generator
    asins = recommender.catalog.asins
    results: dict[str, tuple] = {}

    def client(name: str, asin: str) -> None:
        results[name] = post(server, {"history": [asin], "k": 2})

    with running(recommender, queue_size=1) as server:
        hold(generator)
        first = threading.Thread(target=client, args=("running", asins[0]))
        first.start()
        assert generator.entered.wait(10)  # the worker holds the first request
        second = threading.Thread(target=client, args=("queued", asins[1]))
        second.start()
        deadline = time.monotonic() + 10
        while server.service.queue.depth < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        status, headers, reply = post(server, {"history": [asins[2]]})
        assert status == 503 and int(headers["Retry-After"]) >= 1 and "busy" in reply["error"]
        assert headers["Connection"] == "close"
        generator.gate.set()
        first.join(10)
        second.join(10)
        assert results["running"][0] == 200 and results["queued"][0] == 200
        assert results["queued"][2]["queries"] == [render_item(recommender.catalog.titles[1])]


def test_request_timeout_gives_504_and_the_worker_moves_on(recommender: Recommender):
    generator = recommender.generator
    with running(recommender, request_timeout_s=0.5) as server:
        hold(generator)
        status, _, reply = post(server, {"history": [recommender.catalog.asins[0]]})
        assert status == 504 and "0.5 s request timeout" in reply["error"]
        generator.gate.set()
        assert post(server, {"history": [recommender.catalog.asins[1]]})[0] == 200


def test_a_failing_generator_gives_json_500_and_the_worker_survives(catalog: Catalog, item_vectors: np.ndarray):
    poison = catalog.titles[3]
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), GatedGenerator(poison))
    with running(recommender) as server:
        status, _, reply = post(server, {"history": [catalog.asins[3]]})
        assert status == 500 and "generator blew up" in reply["error"]
        assert post(server, {"history": [catalog.asins[4]]})[0] == 200
        assert server.service.worker.is_alive()


def test_fifty_concurrent_clients_are_all_answered(catalog: Catalog, item_vectors: np.ndarray):
    """The old server's listen backlog of 5 reset connections under 50 clients; now each gets 200 or 503."""
    recommender = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors))  # no LLM: batches of 8
    statuses: list[int] = []
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            statuses.append(post(server, {"history": [recommender.catalog.asins[i % 20]]})[0])
        except BaseException as exc:  # noqa: BLE001 (collected and asserted on below)
            errors.append(exc)

    with running(recommender, queue_size=8) as server:
        threads = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == [] and len(statuses) == 50
    assert set(statuses) <= {200, 503} and 200 in statuses


def test_graceful_shutdown_answers_in_flight_requests_then_stops(recommender: Recommender):
    generator = recommender.generator
    results: list[int] = []
    server = make_server(recommender, HOST, 0, ServeConfig())
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    while not server.started:
        time.sleep(0.01)
    hold(generator)
    clients = [threading.Thread(target=lambda a=a: results.append(post(server, {"history": [a]})[0]))
               for a in recommender.catalog.asins[:2]]
    clients[0].start()
    assert generator.entered.wait(10)
    clients[1].start()
    while server.service.queue.depth < 1:
        time.sleep(0.01)
    stopper = threading.Thread(target=server.shutdown, kwargs={"timeout_s": 20})
    stopper.start()
    time.sleep(0.3)
    with pytest.raises(OSError):  # no new connections while draining
        socket.create_connection((HOST, server.server_address[1]), timeout=2)
    generator.gate.set()
    for thread in (*clients, stopper):
        thread.join(20)
    server.server_close()
    assert results == [200, 200]
    assert not serving.is_alive() and not server.service.worker.is_alive()


@pytest.mark.slow
def test_cli_serve_answers_then_drains_and_exits_0_on_sigterm(tmp_path):
    """`gloss-edge serve` as a user runs it: a real bundle, a request, SIGTERM, a clean exit."""
    from gloss.export.bundle import build_bundle
    from tests.fakes import write_tiny_embedder

    catalog_path = FIXTURES / "beauty_items.jsonl"
    texts = [render_item(t) for t in load_catalog(catalog_path).titles]
    bundle = build_bundle(catalog_path, tmp_path / "bundle", name="beauty",
                          embedder_dir=write_tiny_embedder(tmp_path / "embedder", texts=texts))
    proc = subprocess.Popen([sys.executable, "-m", "gloss.edge.cli", "serve", str(bundle), "--last-item",
                             "--port", "0"], stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if found := re.search(r"serving .* on http://127\.0\.0\.1:(\d+) ", line):
                break
        assert found, "the server did not say where it listens"
        port = int(found.group(1))
        conn = http.client.HTTPConnection(HOST, port, timeout=30)
        conn.request("POST", "/recommend", body=json.dumps({"history": [load_catalog(catalog_path).asins[0]]}))
        assert conn.getresponse().status == 200
        conn.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_bundle_that_cannot_recommend_does_not_start_serving(catalog: Catalog, item_vectors: np.ndarray):
    """The warm-up request runs before the socket is served: a broken model fails at startup, not per request."""
    from gloss.edge.errors import GlossError

    broken = Recommender(catalog, HashEmbedder(), BruteForceIndex(item_vectors), GatedGenerator(catalog.titles[0]))
    server = make_server(broken, HOST, 0, ServeConfig())
    try:
        with pytest.raises(GlossError, match="did not start"):
            server.serve_forever()
        assert not server.service.worker.is_alive()
    finally:
        server.server_close()


# --- every answer is JSON and counted in /metrics (issue 17: defects 3, 7, 8, 9, 10) ---


def counted(server: Server) -> dict[tuple[str, int], int]:
    return server.service.metrics.requests()


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that carry a traceback (exc_info)."""
    return [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.exc_info]


def test_a_5000_digit_integer_gets_a_json_400_without_a_traceback(recommender: Recommender, caplog):
    data = b'{"history": ["B000052YM7"], "k": ' + b"7" * 5000 + b"}"  # past python's int-digits limit
    with running(recommender) as server:
        status, reply = raw(server, head(str(len(data))) + data)
        assert status == 400 and "digits" in reply["error"]
        assert counted(server)[("/recommend", 400)] == 1
    assert tracebacks(caplog) == []


def test_a_trailing_slash_gets_a_json_404_never_a_redirect(recommender: Recommender):
    with running(recommender) as server:
        conn = http.client.HTTPConnection(HOST, server.server_address[1], timeout=10)
        conn.request("POST", "/recommend/", body=b'{"history": ["B000052YM7"]}', headers={"Host": "evil.example"})
        response = conn.getresponse()
        assert response.status == 404 and response.getheader("Location") is None
        assert response.getheader("Content-Type") == "application/json"
        assert "use POST /recommend" in json.loads(response.read())["error"]
        conn.close()
        assert counted(server)[("other", 404)] == 1


def test_past_the_connection_limit_new_clients_get_a_counted_json_503(recommender: Recommender):
    with running(recommender, max_connections=2) as server:
        idle = socket.create_connection((HOST, server.server_address[1]), timeout=10)  # holds one of the two
        try:
            deadline = time.monotonic() + 10
            while len(server._uvicorn.server_state.connections) < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            status, headers, reply = post(server, {"history": [recommender.catalog.asins[0]]})
            assert status == 503 and headers["Content-Type"] == "application/json"
            assert headers["Connection"] == "close" and "connections" in reply["error"]
            assert counted(server)[("/recommend", 503)] == 1
        finally:
            idle.close()
        deadline = time.monotonic() + 10
        while server._uvicorn.server_state.connections and time.monotonic() < deadline:
            time.sleep(0.01)
        assert post(server, {"history": [recommender.catalog.asins[0]]})[0] == 200


def test_an_unexpected_error_gets_a_counted_json_500_and_one_logged_traceback(recommender: Recommender, caplog):
    with running(recommender) as server:
        async def broken(body: bytes):
            raise RuntimeError("bug in the app")

        server.service.answer = broken
        status, headers, reply = post(server, {"history": [recommender.catalog.asins[0]]})
        assert status == 500 and headers["Content-Type"] == "application/json" and "error" in reply
        assert counted(server)[("/recommend", 500)] == 1
    assert len(tracebacks(caplog)) == 1  # logged once, by the app (not again by uvicorn)


def test_a_bad_chunk_size_gets_a_400_without_a_client_disconnect_traceback(recommender: Recommender, caplog):
    chunked = b"POST /recommend HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with running(recommender) as server:
        status, reply = raw(server, chunked + b"zz\r\n{}\r\n0\r\n\r\n")
        assert status == 400 and "invalid HTTP request" in reply["error"]
        deadline = time.monotonic() + 10
        while server._uvicorn.server_state.tasks and time.monotonic() < deadline:
            time.sleep(0.01)  # the app, reading the body, sees the disconnect after the 400 went out
        assert counted(server) == {("/recommend", 400): 1}  # counted once, by the transport that answered
    assert tracebacks(caplog) == []


def test_every_answer_is_counted_in_metrics(recommender: Recommender):
    with running(recommender) as server:
        assert raw(server, head("abc") + b"{}")[0] == 400  # h11 refuses it: no app call
        assert get(server, "/nope")[0] == 404
        assert get(server, "/recommend")[0] == 405
        assert post(server, {"history": ["nope"]})[0] == 400
        assert post(server, {"history": [recommender.catalog.asins[0]]})[0] == 200
        assert get(server, "/health")[0] == 200
        status, _, text = get(server, "/metrics")
        samples = parse_prometheus(text)
        expected = {("other", 400): 1, ("other", 404): 1, ("/recommend", 405): 1, ("/recommend", 400): 1,
                    ("/recommend", 200): 1, ("/health", 200): 1}
        for (path, code), count in expected.items():
            assert samples[f'gloss_requests_total{{path="{path}",status="{code}"}}'] == count
        assert counted(server)[("/metrics", 200)] == 1  # the scrape itself, counted once answered


def test_accepted_connections_turn_off_nagle_so_a_reply_is_not_held_for_a_delayed_ack():
    """uvicorn writes a reply's head and body separately: with Nagle on, the body waited ~40 ms for the client's
    delayed ACK on every kept-alive request."""
    from gloss.edge.server.transport import _no_delay

    with socket.create_server((HOST, 0)) as listener, socket.create_connection(listener.getsockname()[:2]):
        conn, _ = listener.accept()
        with conn:
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

            class Transport:
                def get_extra_info(self, name: str):
                    return conn if name == "socket" else None

            _no_delay(Transport())
            assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
