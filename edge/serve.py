"""A small JSON-over-HTTP server around a Recommender (one request at a time: llama.cpp contexts are not
thread-safe)."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

from gloss.edge.errors import GlossError
from gloss.edge.recommend import Recommender

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20


def handle_request(recommender: Recommender, body: bytes) -> tuple[int, dict[str, Any]]:
    """Answer one ``POST /recommend`` body: ``{"history": [...], "k": 10, "exclude_seen": false}``.

    Returns:
        HTTP status and the JSON reply (``{"items", "queries"}`` or ``{"error"}``).
    """
    try:
        request = json.loads(body or b"{}")
    except json.JSONDecodeError as exc:
        return 400, {"error": f"body is not JSON: {exc.msg}"}
    if not isinstance(request, dict) or not isinstance(request.get("history"), list):
        return 400, {"error": "expected a JSON object with 'history': a list of item ids or titles"}
    k = request.get("k", 10)
    if not isinstance(k, int) or not 1 <= k <= 1000:
        return 400, {"error": f"'k' must be an integer in [1, 1000], got {k!r}"}
    try:
        result = recommender.recommend(request["history"], k=k, exclude_seen=bool(request.get("exclude_seen")))
    except GlossError as exc:
        return 400, {"error": str(exc)}
    return 200, {"items": [asdict(item) for item in result.items], "queries": result.queries}


def make_handler(recommender: Recommender) -> type[BaseHTTPRequestHandler]:
    """A request handler class bound to ``recommender``."""

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload, ensure_ascii=False).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server naming)
            if self.path == "/health":
                self._reply(200, {"status": "ok", "items": len(recommender.catalog)})
            else:
                self._reply(404, {"error": "use POST /recommend or GET /health"})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/recommend":
                self._reply(404, {"error": "use POST /recommend"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self._reply(413, {"error": f"body over {MAX_BODY_BYTES} bytes"})
                return
            self._reply(*handle_request(recommender, self.rfile.read(length)))

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            logger.info("%s %s", self.address_string(), format % args)

    return Handler


def make_server(recommender: Recommender, host: str = "127.0.0.1", port: int = 8080) -> HTTPServer:
    """Bind the server (port 0 picks a free port); call ``serve_forever()`` on it."""
    return HTTPServer((host, port), make_handler(recommender))
