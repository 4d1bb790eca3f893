"""The playground page of ``gloss-edge serve``: ``GET /`` (one HTML page), ``GET /static/NAME`` (its script, style
and icon, read from the package: no CDN, no build step), ``GET /search?q=&k=`` and ``GET /bundle`` (JSON).

The page only talks to this server (``POST /recommend`` with ``explain``, ``/search``, ``/bundle``) and builds
its DOM with ``textContent``, never ``innerHTML``: catalogue titles are data. Its Content-Security-Policy allows
nothing but files of this origin (no inline script or style), so a title that holds markup cannot run.

Searches run in a thread, one at a time (see gloss.edge.server.search for why that is safe), so typing stays
fast while the worker is busy; at most :data:`SEARCH_PENDING` wait, more get 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gloss.edge.errors import GlossError, InputError
from gloss.edge.server.search import CatalogSearch, parse_search

if TYPE_CHECKING:
    from gloss.edge.recommend import Recommender
    from gloss.edge.server.app import RecommendService

__all__ = ["CSP", "PATHS", "ServerTiming", "bundle_facts", "playground_routes"]

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
ASSETS = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
          "icon.svg": "image/svg+xml"}  # fmt: skip
PAGE = "index.html"
# Paths counted under their own label in /metrics (the app counts every answer by path; others count as "other").
PATHS = ("/", "/search", "/bundle", *(f"/static/{name}" for name in ASSETS))
SEARCH_PENDING = 8  # searches that may wait for the search thread; typing sends one per pause, so more is a flood
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "object-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}  # fmt: skip


def read_assets(static_dir: Path = STATIC_DIR) -> dict[str, tuple[bytes, str]]:
    """The page and its assets: name -> (bytes, content type), read once.

    Raises:
        GlossError: If a packaged file is missing (a broken install).
    """
    assets = {}
    for name, media_type in {PAGE: "text/html; charset=utf-8", **ASSETS}.items():
        try:
            assets[name] = ((static_dir / name).read_bytes(), media_type)
        except OSError as exc:
            raise GlossError(f"{static_dir / name}: playground file missing ({exc.strerror}); reinstall gloss") from exc
    return assets


def bundle_facts(recommender: Recommender, bundle_dir: Path | None = None) -> dict[str, Any]:
    """What the playground shows about the served bundle: the loaded parts, and ``gloss-edge inspect``'s facts
    (catalogue version, embedder, generator) when the bundle folder is known.

    Args:
        recommender: The served recommender.
        bundle_dir: Its bundle folder (None: facts from the loaded parts only).
    """
    fusion = recommender.fusion
    facts: dict[str, Any] = {
        "name": None, "items": len(recommender.catalog), "catalog_version": None,
        "rule": "fusion" if fusion is not None else "paper", "exclude_seen": recommender.exclude_seen,
        "fusion_weights": None if fusion is None else {
            name.removesuffix("_weight"): value for name, value in fusion.config.to_dict().items()
            if name.endswith("_weight")},
        "embedder": {"dim": recommender.embedder.dim}, "index": {"items": len(recommender.index)},
        "generator": {"present": recommender.generator is not None},
        "llm": {"loaded": recommender.generator is not None,
                "uses_llm": None if fusion is None else fusion.config.uses_llm},
        "inspect": None,
    }  # fmt: skip
    if bundle_dir is None:
        return facts
    from gloss.edge.inspect import inspect_bundle

    report = inspect_bundle(Path(bundle_dir), verify=False).to_dict()
    embedder, generator = report["embedder"], report["generator"]
    facts.update(name=report["catalog"].get("name"), catalog_version=report["bundle"].get("catalog_version"),
                 inspect=report)
    facts["embedder"].update(source=embedder.get("source"), int8=embedder.get("int8"))
    facts["index"].update(dtype=report["index"].get("scalar") or report["index"].get("dtype"))
    gguf = generator.get("gguf", {})
    facts["generator"] = {"present": bool(generator.get("present")), "name": gguf.get("general.name"),
                          "file_type": gguf.get("general.file_type"), "bytes": generator.get("bytes")}
    return facts


class ServerTiming:
    """ASGI middleware: a ``Server-Timing: app;dur=MS`` header on every HTTP reply (the page shows the server's
    own time for a recommendation, queue wait included, beside the round trip it measures)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                took = f"app;dur={(time.perf_counter() - start) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", took)]}
            await send(message)

        await self.app(scope, receive, timed)


def _json(status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse(payload, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


class _Playground:
    """State of the playground routes: the assets, the search and its admission count, the cached facts."""

    def __init__(self, service: RecommendService, bundle_dir: Path | None) -> None:
        recommender = service.recommender
        self.service, self.bundle_dir = service, bundle_dir
        self.assets = read_assets()
        self.searcher = CatalogSearch(recommender.catalog, recommender.embedder, recommender.index)
        self.search_slot = asyncio.Semaphore(1)
        self.pending = 0
        self.facts: dict[str, Any] | None = None
        self.facts_lock = asyncio.Lock()

    def asset(self, name: str) -> Any:
        from starlette.responses import Response

        if name not in self.assets:
            return _json(404, {"error": f"no file {name[:60]!r}: the page is GET /, its files /static/"
                                        f"{{{','.join(ASSETS)}}}"})
        content, media_type = self.assets[name]
        return Response(content, media_type=media_type, headers=SECURITY_HEADERS)

    async def search(self, params: list[tuple[str, str]]) -> Any:
        try:
            request = parse_search(params)
        except InputError as exc:
            return _json(400, {"error": str(exc)})
        if self.pending >= SEARCH_PENDING:
            return _json(503, {"error": f"{self.pending} searches waiting; retry after 1 s"}, {"Retry-After": "1"})
        self.pending += 1
        try:
            async with self.search_slot:
                found = await asyncio.wait_for(asyncio.to_thread(self.searcher.search, request),
                                               self.service.config.request_timeout_s)
        except asyncio.TimeoutError:
            return _json(504, {"error": "search took longer than the request timeout"})
        except GlossError as exc:
            return _json(400 if isinstance(exc, InputError) else 500, {"error": str(exc)})
        except Exception as exc:  # the server survives it; the client gets a JSON 500
            logger.warning("search %r failed", request.q, exc_info=True)
            return _json(500, {"error": f"internal error: {type(exc).__name__}: {exc}"})
        finally:
            self.pending -= 1
        return _json(200, found)

    async def bundle(self) -> Any:
        async with self.facts_lock:  # inspect reads the bundle's files: once, off the event loop
            if self.facts is None:
                try:
                    self.facts = await asyncio.to_thread(bundle_facts, self.service.recommender, self.bundle_dir)
                except GlossError as exc:
                    return _json(500, {"error": str(exc)})
        return _json(200, self.facts)


def playground_routes(service: RecommendService, bundle_dir: Path | None = None) -> list[Any]:
    """The playground's starlette routes, counted in the service's ``/metrics`` under :data:`PATHS`.

    Args:
        service: The server's service (recommender, limits, metrics).
        bundle_dir: The served bundle's folder, for ``GET /bundle`` (None: facts from the loaded parts only).

    Raises:
        GlossError: If the packaged page files are missing.
    """
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    state = _Playground(service, bundle_dir)
    service.metrics.paths = service.metrics.paths | frozenset(PATHS)

    async def page(request: Request) -> Response:
        return state.asset(PAGE)

    async def static(request: Request) -> Response:
        name = request.path_params["name"]
        return state.asset(name if name != PAGE else "")

    async def search(request: Request) -> Response:
        return await state.search(list(request.query_params.multi_items()))

    async def bundle(request: Request) -> Response:
        return await state.bundle()

    return [Route("/", page, methods=["GET"]), Route("/static/{name}", static, methods=["GET"]),
            Route("/search", search, methods=["GET"]), Route("/bundle", bundle, methods=["GET"])]
