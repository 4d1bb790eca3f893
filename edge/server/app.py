"""``gloss-edge serve``: a thin ASGI app (starlette on uvicorn) over one worker that owns the Recommender.

``POST /recommend`` ``{"history": [...], "k": 10, "include_seen": false, "explain": false}`` ->
``{"items": [...], "queries": [...]}``;
``GET /health``; ``GET /metrics`` (Prometheus text). Every error is JSON ``{"error": ...}``, and every answer is
counted in ``/metrics`` (:func:`counted_app` wraps the app; the transport counts what uvicorn answers itself).

A request goes: uvicorn's h11 protocol parses HTTP (:func:`guarded_h11_protocol` adds a deadline for the
request head, since uvicorn waits forever for a silent client, and JSON 400s for requests h11 rejects, such
as a non-numeric or negative Content-Length); the app reads the body under a size and a time limit, checks
it on the event loop (gloss.edge.server.request: bad input never takes a queue slot), queues it
(gloss.edge.server.queue: full -> 503 with Retry-After) and waits up to the request timeout (-> 504) for the
worker thread, the only thread that touches the Recommender (llama.cpp contexts are not thread-safe).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.generation.generate import GenerationConfig, batched_config
from gloss.edge.recommend import Recommender
from gloss.edge.server.metrics import CONTENT_TYPE, ServerMetrics
from gloss.edge.server.playground import ServerTiming, playground_routes
from gloss.edge.server.queue import QueueClosedError, QueueFullError, RequestQueue, Worker
from gloss.edge.server.request import (
    MAX_BODY_BYTES,
    MAX_HISTORY_ITEMS,
    RecommendRequest,
    handle_request,
    parse_request,
    run_batch,
)

__all__ = ["ServeConfig", "RecommendService", "counted_app", "handle_request", "llm_generation", "make_app",
           "send_json"]

logger = logging.getLogger(__name__)

# Without an LLM, a batch turns per-request index scans into one matrix product (benchmarks/results/load.md:
# rows no-llm vs no-llm-batch1). With the LLM, batching runs several beam searches together (generate_batch);
# it stays opt-in (--max-batch) until benchmarks/load.py shows a gain for it on a quiet machine.
NO_LLM_BATCH = 8
# A request is admitted only if the queue ahead is expected to answer it within this share of the request
# timeout: LLM service times vary (prompt length, searches that run to the token cap), and a queue filled up
# to the full timeout turns that variance into 504s. Throughput is the same while the queue never drains.
ADMISSION_SHARE = 0.5


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None


def release_free_memory(result: Any) -> Any:
    """Return ``result`` after handing the C heap's free pages back to the OS (glibc ``malloc_trim``; a no-op
    elsewhere). Each request frees numpy and llama.cpp temporaries; without it the server's RSS kept the
    high-water mark of every request shape it had seen."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
    return result


def llm_generation(max_batch: int | None) -> GenerationConfig | None:
    """Generation settings for a worker that runs ``max_batch`` requests at once: a KV context with room for that
    many beam searches (at most what llama.cpp's sequence limit allows; the rest of a batch waits inside
    ``generate_batch`` for a free slot). None (the defaults) for one request at a time."""
    if not max_batch or max_batch == 1:
        return None
    return batched_config(min(max_batch, GenerationConfig().users_limit))


@dataclass(frozen=True)
class ServeConfig:
    """Limits of the server (defaults: one laptop CPU, one recommendation at a time).

    Attributes:
        queue_size: Requests that may wait for the worker; more get 503 with Retry-After.
        max_batch: Requests the worker takes at once; None: :data:`NO_LLM_BATCH` without a generator, 1 with one.
        request_timeout_s: Longest wait for an answer once queued (504 after it). A request that the queue
            ahead is expected to keep waiting longer than half of this is refused at once (503) instead.
        read_timeout_s: Time to receive a request head, and then its body (408 after it: e.g. a
            Content-Length longer than the body); a connection that sends nothing is closed after it.
        max_body_bytes: Largest body (413 above it).
        max_history_items: Newest history items kept; older ones are dropped before any work.
        keep_alive_s: An idle keep-alive connection is closed after this.
        backlog: Listen backlog of the socket.
        max_connections: Open connections at most; a new request above it gets a JSON 503 (and its connection
            is closed).
        bundle_dir: The served bundle's folder, for the playground's ``GET /bundle`` facts (None: what the loaded
            parts tell).
    """

    queue_size: int = 64
    max_batch: int | None = None
    request_timeout_s: float = 30.0
    read_timeout_s: float = 10.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_history_items: int = MAX_HISTORY_ITEMS
    keep_alive_s: float = 5.0
    backlog: int = 2048
    max_connections: int = 1000
    bundle_dir: Path | None = None

    def __post_init__(self) -> None:
        for name in ("queue_size", "max_batch", "max_body_bytes", "max_history_items", "backlog", "max_connections"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        for name in ("request_timeout_s", "read_timeout_s", "keep_alive_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"--{name.removesuffix('_s').replace('_', '-')} must be > 0, "
                                 f"got {getattr(self, name)}")


class RecommendService:
    """The server's state: the queue, the worker that owns the Recommender, the metrics.

    Args:
        recommender: Used only from the worker thread (and its catalogue, read-only, to check requests).
        config: Limits.
    """

    def __init__(self, recommender: Recommender, config: ServeConfig) -> None:
        self.recommender, self.config = recommender, config
        max_batch = config.max_batch or (1 if recommender.generator is not None else NO_LLM_BATCH)
        self.queue = RequestQueue(config.queue_size, max_batch, max_wait_s=config.request_timeout_s * ADMISSION_SHARE)
        self.worker = Worker(self.queue, lambda requests: release_free_memory(run_batch(recommender, requests)))
        self.metrics = ServerMetrics(paths=("/recommend", "/health", "/metrics"))

    def start(self) -> None:
        """Start the worker and send one recommendation through it before any client.

        The warm-up pages the model in (the first search is the slowest) and gives the admission rule its
        first service time, so a burst of clients at startup is admitted by measurement, not by hope.

        Raises:
            GlossError: If the warm-up recommendation fails (a broken bundle should not start serving).
        """
        self.worker.start()
        start = time.perf_counter()
        status, reply = self.queue.submit(RecommendRequest((self.recommender.catalog.asins[0],))).result()
        if status != 200:
            raise GlossError(f"warm-up recommendation failed ({status}): {reply.get('error')}")
        logger.info("warm-up recommendation: %.0f ms", (time.perf_counter() - start) * 1000)

    def stop(self) -> None:
        """Reject queued requests (503), let the running one finish, stop the worker."""
        if not self.worker.stop(self.config.request_timeout_s):
            logger.warning("worker still busy after %.0f s; exiting anyway", self.config.request_timeout_s)
        logger.info("worker stopped")

    def gauges(self) -> dict[str, tuple[str, float]]:
        """Values read at scrape time for ``/metrics``."""
        return {
            "queue_depth": ("Requests waiting for the worker.", self.queue.depth),
            "queue_capacity": ("Requests that may wait for the worker.", self.config.queue_size),
            "requests_running": ("Requests the worker is running.", self.queue.running),
            "service_seconds": ("Running mean of worker seconds per request.", self.queue.service_s or 0.0),
        }

    async def answer(self, body: bytes) -> tuple[int, dict[str, Any], dict[str, str]]:
        """Check, queue and await one body: (status, JSON reply, extra headers)."""
        try:
            request = parse_request(body, self.recommender.catalog, self.config.max_history_items)
        except InputError as exc:
            return 400, {"error": str(exc)}, {}
        try:
            future = self.queue.submit(request)
        except QueueFullError as exc:  # close too: a client backing off should not hold an idle connection
            return 503, {"error": f"{exc}; retry after {exc.retry_after_s} s"}, {
                "Retry-After": str(exc.retry_after_s), "Connection": "close"}
        except QueueClosedError as exc:
            return 503, {"error": str(exc)}, {"Connection": "close"}
        try:
            status, reply = await asyncio.wait_for(asyncio.wrap_future(future), self.config.request_timeout_s)
        except asyncio.TimeoutError:  # wait_for cancelled the job: the worker skips it unless it has started
            return 504, {"error": f"no answer within the {self.config.request_timeout_s:g} s request timeout"}, {}
        except QueueClosedError as exc:
            return 503, {"error": str(exc)}, {"Connection": "close"}
        except Exception as exc:  # the worker survived it; the client gets a JSON 500
            return 500, {"error": f"internal error: {type(exc).__name__}: {exc}"}, {}
        return status, reply, {}


class BodyTooLargeError(Exception):
    """The body grew past the limit while it was read."""


ASGIApp = Callable[[MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]


async def send_json(send: Callable[[Any], Awaitable[None]], status: int, payload: dict[str, Any],
                    headers: dict[str, str] | None = None) -> None:
    """Send one JSON answer through a raw ASGI ``send`` (for answers made outside the starlette routes)."""
    body = json.dumps(payload).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def counted_app(app: ASGIApp, metrics: ServerMetrics) -> ASGIApp:
    """``app`` with every HTTP answer counted in ``metrics`` (path, status) and a JSON 500 for an escaped error.

    An answer to a client that has already disconnected is not counted (uvicorn drops it): e.g. after h11
    refused a body mid-stream, whose 400 the transport sent and counted. An unexpected exception is logged
    once here, with its traceback (uvicorn would log it again and answer a text/plain 500).
    """

    async def counted(scope: MutableMapping[str, Any], receive: Callable[[], Awaitable[Any]],
                      send: Callable[[Any], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        status: int | None = None
        gone = False

        async def watched_receive() -> Any:
            nonlocal gone
            message = await receive()
            gone = gone or message["type"] == "http.disconnect"
            return message

        async def counted_send(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if not gone:
                    metrics.count_request(scope["path"], status)
            await send(message)

        try:
            await app(scope, watched_receive, counted_send)
        except Exception:
            if gone:
                logger.debug("%s %s: client gone", scope["method"], scope["path"], exc_info=True)
                return
            logger.exception("internal error answering %s %s", scope["method"], scope["path"])
            if status is None:
                await send_json(counted_send, 500, {"error": "internal error; see the server log"},
                                {"Connection": "close"})

    return counted


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(payload, status_code=status, headers=headers)


async def _read_body(request: Any, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLargeError
        chunks.append(chunk)
    return b"".join(chunks)


async def _recommend(service: RecommendService, request: Any) -> Any:
    """POST /recommend: size and time limits on the body, then the service."""
    config = service.config
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > config.max_body_bytes:
        return _json(413, {"error": f"body of {declared} bytes is over the {config.max_body_bytes}-byte limit"},
                     {"Connection": "close"})
    from starlette.requests import ClientDisconnect

    try:
        body = await asyncio.wait_for(_read_body(request, config.max_body_bytes), config.read_timeout_s)
    except ClientDisconnect:  # the client left, or h11 refused the body (the transport sent and counted a 400)
        return _json(400, {"error": "client disconnected before the body was complete"})
    except BodyTooLargeError:
        return _json(413, {"error": f"body is over the {config.max_body_bytes}-byte limit"}, {"Connection": "close"})
    except asyncio.TimeoutError:
        expected = f" of the {declared} bytes announced" if declared else ""
        return _json(408, {"error": f"body{expected} not received within {config.read_timeout_s:g} s"},
                     {"Connection": "close"})
    status, payload, headers = await service.answer(body)
    return _json(status, payload, headers)


def make_app(service: RecommendService) -> Any:
    """The starlette app: ``POST /recommend``, ``GET /health``, ``GET /metrics``; JSON errors everywhere, every
    answer counted (:func:`counted_app`).

    Its lifespan starts the worker and stops it (rejecting what is still queued) on shutdown.
    """
    require("starlette", "edge")
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def recommend(request: Request) -> Response:
        start = time.perf_counter()
        response = await _recommend(service, request)
        service.metrics.observe_latency(time.perf_counter() - start)
        return response

    async def health(request: Request) -> Response:
        stopping = service.queue.closed
        return _json(503 if stopping else 200, {
            "status": "stopping" if stopping else "ok", "items": len(service.recommender.catalog),
            "generator": service.recommender.generator is not None, "queue_depth": service.queue.depth,
        })

    async def metrics(request: Request) -> Response:
        return Response(service.metrics.render(service.gauges()), media_type=CONTENT_TYPE)

    async def http_error(request: Request, exc: Exception) -> Response:
        status = getattr(exc, "status_code", 500)
        return _json(status, {"error": f"{request.method} {request.url.path}: {getattr(exc, 'detail', exc)}; "
                              "use POST /recommend, GET /health or GET /metrics"}, getattr(exc, "headers", None))

    async def internal_error(request: Request, exc: Exception) -> Response:  # starlette re-raises it: logged above
        return _json(500, {"error": "internal error; see the server log"}, {"Connection": "close"})

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        try:
            await asyncio.to_thread(service.start)
            yield
        finally:
            await asyncio.to_thread(service.stop)

    routes = [Route("/recommend", recommend, methods=["POST"]), Route("/health", health, methods=["GET"]),
              Route("/metrics", metrics, methods=["GET"])]
    routes += playground_routes(service, service.config.bundle_dir)  # GET /, /static/*, /search, /bundle
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: internal_error},
                    lifespan=lifespan)
    app.router.redirect_slashes = False  # POST /recommend/ is a 404, never a redirect built from the Host header
    app.add_middleware(ServerTiming)
    return counted_app(app, service.metrics)
