"""What ``GET /search?q=&k=`` does, without HTTP: check the query, search the catalogue (pure functions).

The playground's search-as-you-type box calls it on every pause in typing, so it must stay cheap and never wait
behind the worker (which may be in a multi-second LLM beam search): the server runs :meth:`CatalogSearch.search`
in a thread of its own, one search at a time (gloss.edge.server.playground). That is safe because a search only
reads: the title list, the embedder (an ONNX Runtime session, whose ``run`` may be called from several threads)
and the index's item vectors (loaded by the server's warm-up before any client).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from gloss.edge.catalog import Catalog
from gloss.edge.embed import Embedder
from gloss.edge.errors import InputError
from gloss.edge.prompt import render_item
from gloss.edge.types import SearchIndex

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
MAX_SEARCH_K = 50
DEFAULT_SEARCH_K = 10
SEARCH_PARAMS = ("q", "k")


@dataclass(frozen=True)
class SearchRequest:
    """A checked ``/search`` query.

    Attributes:
        q: The text typed, stripped, 1 to :data:`MAX_QUERY_CHARS` characters.
        k: Items to return per list (substring matches, similar titles).
    """

    q: str
    k: int = DEFAULT_SEARCH_K


def parse_search(params: Sequence[tuple[str, str]]) -> SearchRequest:
    """Check the query parameters of ``GET /search`` (``q`` required, ``k`` optional, nothing else).

    Args:
        params: The (name, value) pairs of the query string, repeated names included.

    Raises:
        InputError: On an unknown or repeated parameter, an empty or too long ``q``, or ``k`` that is not an
            integer in [1, :data:`MAX_SEARCH_K`].
    """
    seen: dict[str, str] = {}
    for name, value in params:
        if name not in SEARCH_PARAMS:
            raise InputError(f"unknown parameter {name[:40]!r}: expected q (text) and k (1..{MAX_SEARCH_K})")
        if name in seen:
            raise InputError(f"parameter {name!r} given twice")
        seen[name] = value
    q = seen.get("q", "").strip()
    if not q:
        raise InputError("'q' is missing or empty: give the text to search for, e.g. /search?q=shellac")
    if len(q) > MAX_QUERY_CHARS:
        raise InputError(f"'q' has {len(q)} characters; at most {MAX_QUERY_CHARS}")
    k_text = seen.get("k", str(DEFAULT_SEARCH_K))
    if not k_text.isascii() or not k_text.isdigit() or not 1 <= int(k_text) <= MAX_SEARCH_K:
        raise InputError(f"'k' must be an integer in [1, {MAX_SEARCH_K}], got {k_text[:20]!r}")
    return SearchRequest(q, int(k_text))


class CatalogSearch:
    """Find catalogue items by id, by title substring (case-insensitive) and by meaning (the bundle's embedder).

    Args:
        catalog: The items.
        embedder: The embedder the index was built with.
        index: The catalogue index (row ``i`` = catalogue position ``i``).
    """

    def __init__(self, catalog: Catalog, embedder: Embedder, index: SearchIndex) -> None:
        self.catalog, self.embedder, self.index = catalog, embedder, index

    @functools.cached_property
    def _folded(self) -> tuple[str, ...]:
        """Every title casefolded: built at the first search, so a server nobody searches never holds them
        (one string per title: O(N) memory the page needs, a plain API server does not)."""
        return tuple(title.casefold() for title in self.catalog.titles)

    def substring(self, q: str, k: int) -> tuple[list[int], int]:
        """Positions of the items whose id is ``q`` or whose title contains it (titles that start with it first,
        then catalogue order), at most ``k``, and how many items match in all."""
        needle = q.casefold()
        starts, contains = [], []
        for position, title in enumerate(self._folded):
            if needle in title:
                (starts if title.startswith(needle) else contains).append(position)
        found = starts + contains
        if q in self.catalog:
            exact = self.catalog.position(q)
            found = [exact] + [p for p in found if p != exact]
        return found[:k], len(found)

    def similar(self, q: str, k: int, skip: Sequence[int] = ()) -> list[tuple[int, float]]:
        """The ``k`` items whose title embeddings are nearest to ``q``'s, leaving out ``skip``: (position, cosine)."""
        vector = self.embedder.embed([render_item(q)], show_progress=False)
        depth = min(len(self.index), k + len(skip))
        positions, sims = self.index.search(np.asarray(vector, dtype=np.float32), depth)
        skipped = set(skip)
        pairs = [(int(p), float(s)) for p, s in zip(positions[0], sims[0], strict=True)
                 if p >= 0 and int(p) not in skipped]
        return pairs[:k]

    def search(self, request: SearchRequest) -> dict[str, Any]:
        """Answer a checked request.

        Returns:
            ``{"q", "matches": [{"asin", "title"}], "num_matches", "similar": [{"asin", "title", "score"}]}``:
            the id / substring matches, their total count, and the nearest other titles by meaning.
        """
        matched, total = self.substring(request.q, request.k)
        similar = self.similar(request.q, request.k, skip=matched)
        return {
            "q": request.q,
            "matches": [self._item(p) for p in matched],
            "num_matches": total,
            "similar": [{**self._item(p), "score": score} for p, score in similar],
        }

    def _item(self, position: int) -> dict[str, Any]:
        return {"asin": self.catalog.asins[position], "title": self.catalog.titles[position]}
