"""What ``POST /recommend`` does, without HTTP: check a body, run it, shape the JSON reply (pure functions).

The server (gloss.edge.server.app) runs :func:`parse_request` on its event loop, so bad input never takes a queue
slot, and :func:`run_batch` on the worker thread; :func:`handle_request` is both in one call, for tests.
"""

from __future__ import annotations

import json
import logging
import sys
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from gloss.edge.catalog import Catalog
from gloss.edge.errors import GlossError, InputError

if TYPE_CHECKING:
    from gloss.edge.recommend import Recommender

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 1 << 20
MAX_K = 1000
# Items of a history kept (the newest) before any work. A 1024-token context holds far fewer rendered titles
# (each costs several tokens) and fusion reads only the last few items, so longer histories only cost time.
MAX_HISTORY_ITEMS = 256
FIELDS = ("history", "k", "include_seen", "explain", "llm", "exclude_seen")  # exclude_seen: the old name, still read
Reply = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class RecommendRequest:
    """A checked ``/recommend`` body.

    Attributes:
        history: Catalogue ids, oldest first, at most ``max_history_items``.
        k: Items to return.
        include_seen: Keep items of the history in the answer.
        explain: Add each item's score split into named parts (gloss.edge.explain), and for each query the
            catalogue item whose title it is (``query_items``: an id, or null for a title not in the catalogue).
        dropped: Oldest items dropped by the history cap.
        llm: False answers without the server's LLM (faster: fusion from the history, or last-item search);
            True asks for it (400 if the server runs without one); None: the server's setting.
    """

    history: tuple[str, ...]
    k: int = 10
    include_seen: bool = False
    explain: bool = False
    dropped: int = 0
    llm: bool | None = None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is a Python int; not a k


def _show(value: Any) -> str:
    """A short JSON rendering of a scalar, the type of a container (which may nest too deeply to print)."""
    if isinstance(value, (list, dict)):
        return "an array" if isinstance(value, list) else "an object"
    return json.dumps(value)[:40]


def _flag(request: dict[str, Any], name: str) -> bool | None:
    value = request.get(name)
    if value is not None and not isinstance(value, bool):
        raise InputError(f"'{name}' must be true or false, got {_show(value)}")
    return value


def parse_request(body: bytes, catalog: Catalog, max_history_items: int = MAX_HISTORY_ITEMS) -> RecommendRequest:
    """Check a ``/recommend`` body and resolve its newest ``max_history_items`` items against the catalogue.

    Raises:
        InputError: On a body that is not UTF-8 JSON (or nests too deeply, or has an integer of thousands of
            digits), an unknown field, a wrong type, ``k`` outside [1, 1000], an empty history or an item not in
            the catalogue.
    """
    try:
        request = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"body is not UTF-8 JSON: invalid byte at position {exc.start}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"body is not JSON: {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise InputError("body is not JSON this server accepts: nested too deeply") from None
    except ValueError:  # after its subclasses above: python's int-digits limit (sys.get_int_max_str_digits)
        raise InputError(f"body is not JSON this server accepts: a number has more digits than "
                         f"{sys.get_int_max_str_digits()}") from None
    if not isinstance(request, dict) or not isinstance(request.get("history"), list):
        raise InputError("expected a JSON object with 'history': a list of item ids or titles, oldest first")
    unknown = sorted(set(request) - set(FIELDS))
    if unknown:
        raise InputError(f"unknown field {unknown[0]!r}: expected {', '.join(FIELDS[:5])}")
    k = request.get("k", 10)
    if not _is_int(k) or not 1 <= k <= MAX_K:
        raise InputError(f"'k' must be an integer in [1, {MAX_K}], got {_show(k)}")
    include, exclude = _flag(request, "include_seen"), _flag(request, "exclude_seen")
    if include is not None and exclude is not None and include == exclude:
        raise InputError("'include_seen' and 'exclude_seen' contradict each other; send only 'include_seen'")
    history = request["history"]
    kept = history[-max_history_items:]
    if not all(isinstance(item, str) for item in kept):
        raise InputError("'history' must hold strings (item ids or titles)")
    asins = catalog.resolve_history(kept)
    if len(history) > len(kept):
        logger.info("history of %d items: kept the newest %d", len(history), len(kept))
    return RecommendRequest(tuple(asins), k, include if include is not None else exclude is False,
                            bool(_flag(request, "explain")), len(history) - len(kept), _flag(request, "llm"))


_WITHOUT_LLM: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()  # recommender -> its twin


def without_llm(recommender: Recommender) -> Recommender:
    """The recommender without its generator (the same catalogue, embedder, index and fusion), made once."""
    from gloss.edge.recommend import Recommender

    twin = _WITHOUT_LLM.get(recommender)
    if twin is None:
        twin = Recommender(recommender.catalog, recommender.embedder, recommender.index, None, recommender.fusion,
                           recommender.exclude_seen)
        _WITHOUT_LLM[recommender] = twin
    return twin


def exact_item(catalog: Catalog, query: str) -> str | None:
    """The id of the catalogue item whose title is the query (``Title: ...``) exactly, or None."""
    try:
        return catalog.resolve_history([query])[0]
    except InputError:
        return None


def run_request(recommender: Recommender, request: RecommendRequest) -> Reply:
    """Answer a checked request: 200 with items and queries, 400 on bad input, 500 on a failed run."""
    if request.llm and recommender.generator is None:
        return 400, {"error": "'llm': true, but this server runs without the LLM; start gloss-edge serve with --llm"}
    if request.llm is False and recommender.generator is not None:
        recommender = without_llm(recommender)
    try:
        result = recommender.recommend(list(request.history), k=request.k, exclude_seen=not request.include_seen,
                                       explain=request.explain)
    except InputError as exc:
        return 400, {"error": str(exc)}
    except GlossError as exc:
        logger.warning("recommendation failed: %s", exc)
        return 500, {"error": str(exc)}
    reply = result.to_dict()
    if request.explain:
        reply["query_items"] = [exact_item(recommender.catalog, query) for query in reply["queries"]]
    if request.dropped:
        reply["history_dropped"] = request.dropped
    return 200, reply


def run_batch(recommender: Recommender, requests: Sequence[RecommendRequest]) -> list[Reply]:
    """Answer several checked requests (the worker's unit of work); the replies equal :func:`run_request`'s.

    With a fusion re-ranker, the requests without ``explain`` or ``llm`` share one generation call (``generate_batch``,
    several users' beams per ``llama_decode``, when the generator has it) and one batched index search. If
    that fails (one bad request), each request is answered alone, so one failure never fails the others.
    """
    batched = [i for i, request in enumerate(requests) if not request.explain and request.llm is None]
    replies: dict[int, Reply] = {}
    if len(batched) > 1 and recommender.fusion is not None:
        try:
            replies = dict(zip(batched, _run_fused_batch(recommender, [requests[i] for i in batched]), strict=True))
        except Exception:  # one bad request must not fail the batch: each is answered (or fails) alone
            logger.warning("batch of %d failed; answering its requests one by one", len(batched), exc_info=True)
    return [replies[i] if i in replies else run_request(recommender, request) for i, request in enumerate(requests)]


def _run_fused_batch(recommender: Recommender, requests: Sequence[RecommendRequest]) -> list[Reply]:
    """The fusion branch of ``Recommender.recommend`` for several requests at once."""
    from gloss.edge.recommend import query_text

    catalog, generator = recommender.catalog, recommender.generator
    histories = [list(request.history) for request in requests]
    if generator is None:
        generated: list[list[Any]] = [[] for _ in requests]
    elif hasattr(generator, "generate_batch"):
        generated = generator.generate_batch([catalog.titles_of(history) for history in histories])
    else:
        generated = [recommender.generate_for(history) for history in histories]
    replies: list[Reply | None] = [None] * len(requests)
    for include_seen in sorted({request.include_seen for request in requests}):
        group = [i for i, request in enumerate(requests) if request.include_seen == include_seen]
        ranked = recommender.ranker(not include_seen).rank_batch(
            [[catalog.position(a) for a in histories[i]] for i in group],
            [recommender.signals(generated[i]) for i in group],
            k=max(requests[i].k for i in group),  # top-k lists are prefixes of longer ones
        )
        for i, items in zip(group, ranked, strict=True):
            reply: dict[str, Any] = {
                "items": [{"asin": catalog.asins[item.position], "title": catalog.titles[item.position],
                           "score": item.score} for item in items[: requests[i].k]],
                "queries": [query_text(g.title) for g in generated[i]],
            }
            if requests[i].dropped:
                reply["history_dropped"] = requests[i].dropped
            replies[i] = (200, reply)
    return [reply for reply in replies if reply is not None]


def handle_request(recommender: Recommender, body: bytes, max_history_items: int = MAX_HISTORY_ITEMS) -> Reply:
    """Answer one ``POST /recommend`` body: ``{"history": [...], "k": 10, "include_seen": false}``.

    Returns:
        HTTP status and the JSON reply (``{"items", "queries"}`` or ``{"error"}``).
    """
    try:
        request = parse_request(body, recommender.catalog, max_history_items)
    except InputError as exc:
        return 400, {"error": str(exc)}
    return run_request(recommender, request)
