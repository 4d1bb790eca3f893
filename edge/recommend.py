"""From generated titles to ranked catalogue items (the paper's retrieval rule), and the Recommender."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gloss.edge.catalog import Catalog
from gloss.edge.embed import Embedder
from gloss.edge.errors import InputError
from gloss.edge.generate import GenerationConfig, QueryGenerator
from gloss.edge.prompt import ITEM_PREFIX, parse_generated, render_item
from gloss.edge.types import ScoredItem, SearchIndex

if TYPE_CHECKING:
    from gloss.edge.fusion import FusionRanker

logger = logging.getLogger(__name__)


TIE_SCALE = 1e5  # similarities within ~1e-5 of each other count as tied


@dataclass(frozen=True)
class RetrievalConfig:
    """How query titles become a ranked list.

    Attributes:
        k: Length of the returned list.
        per_query: Nearest items taken per query (the paper: 1 per generated title).
        exclude_seen: Drop items already in the user's history (the paper keeps them).
    """

    k: int = 10
    per_query: int = 1
    exclude_seen: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"--k must be >= 1, got {self.k}")
        if self.per_query < 1:
            raise InputError(f"--per-query must be >= 1, got {self.per_query}")


def query_text(generated: str) -> str:
    """Normalise a generated title to the text embedded for search (``Title: <title>``, like the items)."""
    return ITEM_PREFIX + parse_generated(generated)


def embed_queries(
    texts: Sequence[str], embedder: Embedder, index: SearchIndex, known: dict[str, int] | None = None
) -> np.ndarray:
    """Embed query texts, reusing the index's vector for a text that is exactly a catalogue item's text.

    Exact title matches are common (fine-tuned models often write a catalogue title verbatim; the
    last-item baseline always does) and the index already holds their vectors from the same embedder.

    Args:
        texts: Query texts (``Title: ...``).
        embedder: Embeds the texts not in ``known``.
        index: Catalogue index.
        known: Item text -> catalogue position.
    """
    known = known or {}
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    hits = [(i, known[t]) for i, t in enumerate(texts) if t in known]
    if hits:
        rows, positions = zip(*hits, strict=True)
        out[list(rows)] = index.vectors()[list(positions)]
    missing = [i for i, t in enumerate(texts) if t not in known]
    if missing:
        out[missing] = embedder.embed([texts[i] for i in missing], show_progress=False)
    return out


def item_texts(catalog: Catalog) -> dict[str, int]:
    """Catalogue item text (as embedded in the index) -> position."""
    texts: dict[str, int] = {}
    for position, title in enumerate(catalog.titles):
        texts.setdefault(render_item(title), position)
    return texts


def search_depth(config: RetrievalConfig, num_seen: int) -> int:
    """Neighbours to fetch per query so that ``per_query`` unseen items remain after filtering."""
    return config.per_query + (num_seen if config.exclude_seen else 0)


def rank_items(
    positions: np.ndarray, similarities: np.ndarray, seen: Sequence[int], config: RetrievalConfig
) -> list[ScoredItem]:
    """Merge per-query neighbour lists into one ranking.

    Each query contributes its ``per_query`` nearest items (after dropping seen items when asked);
    an item's score is its highest similarity over the queries; items are ranked by that score, as the
    paper ranks by similarity rather than beam order; scores within 1e-5 are ties and keep query (beam)
    order, so float noise in the embedder cannot reorder exact title matches.

    Args:
        positions: (num_queries, depth) catalogue positions, nearest first; -1 pads.
        similarities: Matching cosine similarities.
        seen: Catalogue positions of the user's history.
        config: Retrieval settings.

    Returns:
        Up to ``config.k`` items, best first.
    """
    seen_set = set(seen) if config.exclude_seen else set()
    best: dict[int, float] = {}
    for row_pos, row_sim in zip(positions, similarities, strict=True):
        taken = 0
        for pos, sim in zip(row_pos.tolist(), row_sim.tolist(), strict=True):
            if taken == config.per_query:
                break
            if pos < 0 or pos in seen_set:
                continue
            taken += 1
            if sim > best.get(pos, -np.inf):
                best[pos] = sim
    # Similarities equal up to float noise (e.g. several exact catalogue titles, all ~1.0) are ties, and
    # ties keep first-seen order, i.e. beam order: the more likely title ranks first, deterministically.
    ranked = sorted(best.items(), key=lambda item: -round(item[1] * TIE_SCALE))
    return [ScoredItem(pos, float(sim)) for pos, sim in ranked[: config.k]]


def fill_ranking(
    ranked: list[ScoredItem], positions: np.ndarray, similarities: np.ndarray, seen: Sequence[int],
    config: RetrievalConfig,
) -> list[ScoredItem]:
    """Extend a paper-rule ranking to ``config.k`` items with the queries' next neighbours.

    The paper's rule gives one item per distinct generated title, so at most 5 items, and fewer when beams
    retrieve the same item. A caller that asks for ``k`` items gets the paper's items first, then the best
    remaining neighbours of all queries (``rank_items`` with ``per_query = k``) in similarity order.
    ``positions`` must hold at least ``search_depth(replace(config, per_query=config.k), ...)`` columns.
    """
    if len(ranked) >= config.k:
        return ranked
    taken = {item.position for item in ranked}
    more = rank_items(positions, similarities, seen, replace(config, per_query=config.k))
    return ranked + [item for item in more if item.position not in taken][: config.k - len(ranked)]


@dataclass(frozen=True)
class RecommendedItem:
    """One recommendation: catalogue id, title and similarity to the best-matching query."""

    asin: str
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """Ranked items and the query titles that produced them."""

    items: list[RecommendedItem]
    queries: list[str]


class Recommender:
    """History in, ranked catalogue items out: generator -> embedder -> index (the GLoSS pipeline).

    Without a generator, the last history item's title is the query (the paper's zero-training baseline).
    """

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        index: SearchIndex,
        generator: QueryGenerator | None = None,
        fusion: FusionRanker | None = None,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.index = index
        self.generator = generator
        self.fusion = fusion
        self._known = item_texts(catalog)

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        use_generator: bool = True,
        generation: GenerationConfig | None = None,
        verify: bool = True,
        use_fusion: bool | None = None,
    ) -> Recommender:
        """Open a bundle (checked against its manifest) and its generator if it has one.

        Args:
            bundle_dir: Output of ``gloss-export bundle``.
            use_generator: Generate queries with the bundle's LLM (else: last-item search).
            generation: Beam-search settings.
            verify: Check every file's SHA-256.
            use_fusion: Rank with the fusion re-ranker; None uses it when the bundle has one.

        Raises:
            InputError: If the bundle is invalid, or a part that is asked for is missing.
        """
        from gloss.edge.bundle import load_bundle
        from gloss.edge.generate import LlamaCppGenerator

        bundle = load_bundle(bundle_dir, verify=verify)
        generator = None
        if use_generator:
            if bundle.paths.generator is None:
                raise InputError(
                    f"{bundle_dir}: bundle has no generator; add one with gloss-export bundle --gguf, "
                    "or use --last-item"
                )
            generator = LlamaCppGenerator.load(bundle.paths.generator, generation or GenerationConfig())
        index = bundle.open_index()
        if use_fusion is None:
            use_fusion = bundle.fusion_meta is not None
        fusion = bundle.open_fusion(index) if use_fusion else None
        return cls(bundle.catalog, bundle.open_embedder(), index, generator, fusion)

    def queries_for(self, history: Sequence[str]) -> tuple[list[str], int]:
        """Query texts for a history of catalogue ids, and how many neighbours each query contributes.

        Without a generator the last item is the query (fusion needs none: it scores recent items itself).
        """
        titles = self.catalog.titles_of(history)
        if self.generator is None:
            return ([] if self.fusion else [render_item(titles[-1])]), 0
        queries = [query_text(g.title) for g in self.generator.generate(titles)]
        kept = getattr(self.generator, "last_items_kept", len(titles))
        if kept < len(titles):
            logger.warning("history of %d items: the prompt keeps the newest %d (the model's context is full)",
                           len(titles), kept)
        return queries, 1

    def recommend(self, history: Sequence[str], k: int = 10, exclude_seen: bool = False) -> Recommendation:
        """Recommend ``k`` items for a history given as catalogue ids or titles, oldest first.

        Raises:
            InputError: On an empty history or an item not in the catalogue.
        """
        asins = self.catalog.resolve_history(history)
        queries, per_query = self.queries_for(asins)
        seen = [self.catalog.position(a) for a in asins]
        if self.fusion is not None:
            vectors = embed_queries(queries, self.embedder, self.index, self._known) if queries else None
            return self._items(self.fusion.rank(seen, vectors, k=k), queries)
        config = RetrievalConfig(k=k, per_query=per_query or k, exclude_seen=exclude_seen)
        depth = min(len(self.index), search_depth(replace(config, per_query=k), len(set(seen))))
        positions, sims = self.index.search(embed_queries(queries, self.embedder, self.index, self._known), depth)
        ranked = rank_items(positions, sims, seen, config)
        return self._items(fill_ranking(ranked, positions, sims, seen, config), queries)

    def _items(self, ranked: Sequence[ScoredItem], queries: list[str]) -> Recommendation:
        items = [RecommendedItem(self.catalog.asins[i.position], self.catalog.titles[i.position], i.score)
                 for i in ranked]
        return Recommendation(items, queries)
