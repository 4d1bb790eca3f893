"""The server's transport: a listening socket, uvicorn's h11 protocol guarded with a head deadline, a connection
limit and counted JSON answers of its own (400, 503), and :class:`Server`, which runs the app of
:mod:`gloss.edge.server.app` until shutdown or SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import signal
import socket
import threading
from typing import Any

from gloss.edge.errors import GlossError, InputError, require
from gloss.edge.recommend import Recommender
from gloss.edge.server.app import RecommendService, ServeConfig, make_app, send_json
from gloss.edge.server.metrics import ServerMetrics

__all__ = ["Server", "bind_socket", "guarded_h11_protocol", "is_loopback", "make_server"]

logger = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False



def guarded_h11_protocol(
    read_timeout_s: float, max_connections: int | None = None, metrics: ServerMetrics | None = None
) -> type:
    """uvicorn's h11 protocol with a deadline for each request head, and JSON answers for what it refuses itself:
    400 for a request h11 rejects, 503 for a request past ``max_connections`` open connections (uvicorn's own
    ``limit_concurrency`` answers text/plain, so the limit is applied here). Both are counted in ``metrics``."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    def count(path: str, status: int) -> None:
        if metrics is not None:
            metrics.count_request(path, status)

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.limit_concurrency = None  # replaced by _admit
            self._app, self.app = self.app, self._admit

        async def _admit(self, scope: Any, receive: Any, send: Any) -> None:
            # uvicorn's rule: this connection counts among the open ones, this request's task among the tasks
            if max_connections is not None and (len(self.connections) >= max_connections
                                                or len(self.tasks) > max_connections):
                logger.warning("over the limit of %d open connections: 503", max_connections)
                count(scope["path"], 503)
                await send_json(send, 503, {"error": f"the server has {max_connections} open connections, its "
                                            "limit; retry later"}, {"Connection": "close", "Retry-After": "1"})
                return
            await self._app(scope, receive, send)

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(read_timeout_s, self._head_timeout)

        def _disarm_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _waiting_for_head(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _head_timeout(self) -> None:
            self._head_timer = None
            if self._waiting_for_head() and not self.transport.is_closing():
                logger.debug("closing a connection that sent no request head within %.0f s", read_timeout_s)
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            _no_delay(transport)
            self._arm_head_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._waiting_for_head():
                self._disarm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self._waiting_for_head():
                self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_head_timer()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:
            answering = self.cycle is not None and not self.cycle.response_complete  # a head was parsed
            if answering and self.cycle.response_started:  # the app already answers; h11 sends no second reply
                self.transport.close()
                return
            count(self.scope["path"] if answering else "other", 400)
            body = json.dumps({"error": "invalid HTTP request (request line, header or Content-Length); "
                                        "send POST /recommend with a JSON body"}).encode()
            headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
            for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                          h11.Data(data=body), h11.EndOfMessage()):
                self.transport.write(self.conn.send(event))
            self.transport.close()

    return GuardedH11Protocol


def _no_delay(transport: asyncio.BaseTransport) -> None:
    """Send each write at once (TCP_NODELAY). uvicorn writes a response's head and body separately; with Nagle's
    algorithm the body waited for the client's delayed ACK of the head: ~40 ms per request on a kept-alive
    connection (benchmarks/results/scale.md), against ~2 ms of work."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def bind_socket(host: str, port: int, backlog: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port)."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    try:
        return socket.create_server((host, port), family=family, backlog=backlog)
    except OSError as exc:
        raise InputError(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port") from None


class Server:
    """A bound server: run it with :meth:`serve_forever` (in this thread or another), stop it with :meth:`shutdown`.

    Args:
        recommender: Used only by the worker thread.
        host: Address to bind; anything but loopback is logged as a warning (the server has no auth).
        port: Port; 0 picks a free one (see ``server_address``).
        config: Limits.
    """

    def __init__(self, recommender: Recommender, host: str, port: int, config: ServeConfig) -> None:
        uvicorn = require("uvicorn", "edge")
        if not is_loopback(host):
            logger.warning("binding %s: the server is reachable from other machines and has no authentication",
                           host)
        self.service = RecommendService(recommender, config)
        self.socket = bind_socket(host, port, config.backlog)
        self.server_address: tuple[str, int] = self.socket.getsockname()[:2]
        self._uvicorn = uvicorn.Server(uvicorn.Config(
            make_app(self.service), loop="asyncio",
            http=guarded_h11_protocol(config.read_timeout_s, config.max_connections, self.service.metrics),
            lifespan="on", timeout_keep_alive=config.keep_alive_s, backlog=config.backlog,
            timeout_graceful_shutdown=config.request_timeout_s,
            access_log=False, log_config=None, log_level="warning",
        ))
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8080``."""
        host, port = self.server_address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}"

    @property
    def started(self) -> bool:
        """True once the worker runs and the socket accepts connections."""
        return bool(self._uvicorn.started)

    def serve_forever(self) -> None:
        """Serve until :meth:`shutdown` or SIGINT/SIGTERM; then finish in-flight requests and reject queued ones.

        After a graceful shutdown on SIGTERM it raises ``SystemExit(0)`` (uvicorn re-raises the signal it
        handled, and the default action would end the process with -15 before the caller's cleanup).
        """
        main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _exit_cleanly) if main else None
        try:
            self._uvicorn.run(sockets=[self.socket])
        except SystemExit as exc:  # uvicorn exits (code 3) when the app's startup fails
            if self._uvicorn.started:
                raise
            raise GlossError("the server did not start (see the error logged above)") from exc
        finally:
            if main:
                signal.signal(signal.SIGTERM, previous)
            self._stopped.set()
        if not self._uvicorn.started:
            raise GlossError("the server did not start (see the error logged above)")

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Ask :meth:`serve_forever` (running in another thread) to stop, and wait until it has."""
        self._uvicorn.should_exit = True
        self._stopped.wait(timeout_s)

    def server_close(self) -> None:
        """Close the listening socket."""
        self.socket.close()


def make_server(
    recommender: Recommender, host: str = "127.0.0.1", port: int = 8080, config: ServeConfig | None = None
) -> Server:
    """Bind a server (port 0 picks a free port); call ``serve_forever()`` on it."""
    return Server(recommender, host, port, config or ServeConfig())
