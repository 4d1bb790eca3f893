"""From generated titles to ranked catalogue items (the paper's retrieval rule), and the Recommender."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gloss.edge.catalog import Catalog, ItemTexts
from gloss.edge.embed import Embedder
from gloss.edge.errors import InputError
from gloss.edge.explain import Explanation, explain_fusion, explain_paper
from gloss.edge.generation.generate import GeneratedQuery, GenerationConfig, QueryGenerator
from gloss.edge.prompt import ITEM_PREFIX, parse_generated, render_item
from gloss.edge.types import ScoredItem, SearchIndex

if TYPE_CHECKING:
    from gloss.edge.bundle import Bundle
    from gloss.edge.fusion import FusionRanker, QuerySignals

logger = logging.getLogger(__name__)


TIE_SCALE = 1e5  # the "beam-order" rule: similarities within ~1e-5 of each other count as tied
TIES = ("raw", "beam-order")


@dataclass(frozen=True)
class RetrievalConfig:
    """How query titles become a ranked list.

    Attributes:
        k: Length of the returned list.
        per_query: Nearest items taken per query (the paper: 1 per generated title).
        exclude_seen: Drop items already in the user's history (the paper keeps them).
        ties: ``raw``: rank by the raw float similarity, as the paper's code does (retriv + ranx);
            only bit-identical similarities tie and keep first-seen (beam) order. ``beam-order``:
            similarities within 1e-5 tie and keep beam order, so float noise cannot reorder exact titles.
    """

    k: int = 10
    per_query: int = 1
    exclude_seen: bool = False
    ties: str = "raw"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise InputError(f"--k must be >= 1, got {self.k}")
        if self.per_query < 1:
            raise InputError(f"--per-query must be >= 1, got {self.per_query}")
        if self.ties not in TIES:
            raise InputError(f"--ties must be one of {', '.join(TIES)}, got {self.ties!r}")

    def describe(self) -> str:
        """The rule in words, as reports print it."""
        order = "raw similarity" if self.ties == "raw" else "similarity, ties within 1e-5 in beam order"
        return f"paper rule ({order}, {self.per_query} item(s) per query), exclude_seen: {self.exclude_seen}"


def query_text(generated: str) -> str:
    """Normalise a generated title to the text embedded for search (``Title: <title>``, like the items)."""
    return ITEM_PREFIX + parse_generated(generated)


def embed_queries(
    texts: Sequence[str], embedder: Embedder, index: SearchIndex, known: Mapping[str, int] | None = None
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
    known = {} if known is None else known  # not `or`: truth-testing a catalogue view would count it
    out = np.empty((len(texts), embedder.dim), dtype=np.float32)
    hits = [(i, known[t]) for i, t in enumerate(texts) if t in known]
    if hits:
        rows, positions = zip(*hits, strict=True)
        out[list(rows)] = index.vectors()[list(positions)]
    missing = [i for i, t in enumerate(texts) if t not in known]
    if missing:
        out[missing] = embedder.embed([texts[i] for i in missing], show_progress=False)
    return out


def item_texts(catalog: Catalog) -> Mapping[str, int]:
    """Catalogue item text (as embedded in the index) -> position (first item of a title): a view over the
    catalogue's title lookup, so nothing is built per item at start-up."""
    return ItemTexts(catalog, ITEM_PREFIX)


def search_depth(config: RetrievalConfig, num_seen: int) -> int:
    """Neighbours to fetch per query so that ``per_query`` unseen items remain after filtering."""
    return config.per_query + (num_seen if config.exclude_seen else 0)


def rank_items(
    positions: np.ndarray, similarities: np.ndarray, seen: Sequence[int], config: RetrievalConfig
) -> list[ScoredItem]:
    """Merge per-query neighbour lists into one ranking.

    Each query contributes its ``per_query`` nearest items (after dropping seen items when asked);
    an item's score is its highest similarity over the queries; items are ranked by that score, as the
    paper ranks by similarity rather than beam order. ``config.ties`` says how near-equal scores order:
    ``raw`` compares the floats themselves (the paper's code; exact float ties keep first-seen, i.e. beam,
    order), ``beam-order`` treats scores within 1e-5 as ties kept in beam order.

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
    # sorted() is stable: equal keys keep first-seen order, i.e. beam order. With "beam-order" ties,
    # similarities equal up to float noise (several exact catalogue titles, all ~1.0) share one key.
    if config.ties == "raw":
        ranked = sorted(best.items(), key=lambda item: -item[1])
    else:
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


def beam_positions(generated: Sequence[GeneratedQuery]) -> np.ndarray | None:
    """Catalogue positions of constrained beams, or None when no beam is constrained.

    A constrained beam names its item (the first, for a title several items share); a free beam, or a
    constrained one the length limit cut before its title ended, gets -1.
    """
    items = [getattr(g, "items", None) for g in generated]
    if all(i is None for i in items):
        return None
    return np.array([i[0] if i else -1 for i in items], dtype=np.int64)


@dataclass(frozen=True)
class RecommendedItem:
    """One recommendation: catalogue id, title and similarity to the best-matching query."""

    asin: str
    title: str
    score: float


@dataclass(frozen=True)
class Recommendation:
    """Ranked items, the query titles that produced them and, when asked for, why each item is there."""

    items: list[RecommendedItem]
    queries: list[str]
    explanations: list[Explanation] | None = None  # one per item (``recommend(..., explain=True)``)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"items": [...], "queries": [...]}``; with explanations each item has an
        ``explanation`` (``{"parts", "sources", "source_ids"}``, parts adding up to its ``score``)."""
        items = [asdict(item) for item in self.items]
        for item, explanation in zip(items, self.explanations or [], strict=False):
            item["explanation"] = explanation.to_dict()
        return {"items": items, "queries": list(self.queries)}


class Recommender:
    """History in, ranked catalogue items out: generator -> embedder -> index (the GLoSS pipeline).

    Without a generator, the last history item's title is the query (the paper's zero-training baseline).
    With a fusion re-ranker the generator's beams (titles, scores, constrained items) are fusion signals.
    Items already in the history are removed unless ``exclude_seen`` is False.
    """

    def __init__(
        self,
        catalog: Catalog,
        embedder: Embedder,
        index: SearchIndex,
        generator: QueryGenerator | None = None,
        fusion: FusionRanker | None = None,
        exclude_seen: bool = True,
    ) -> None:
        self.catalog = catalog
        self.embedder = embedder
        self.index = index
        self.generator = generator
        self.fusion = fusion
        self.exclude_seen = exclude_seen
        self._known = item_texts(catalog)
        self._rankers: dict[bool, FusionRanker] = {}

    @classmethod
    def load(
        cls,
        bundle_dir: Path,
        use_generator: bool | None = True,
        generation: GenerationConfig | None = None,
        verify: bool = True,
        use_fusion: bool | None = None,
        exclude_seen: bool = True,
        constrained: bool = False,
        exact: bool | None = None,
    ) -> Recommender:
        """Open a bundle (checked against its manifest) and its generator if it has one.

        Args:
            bundle_dir: Output of ``gloss-export bundle``.
            use_generator: Generate queries with the bundle's LLM (else: last-item search). None decides by
                the evidence: the LLM runs unless fusion ranks and its weights give the LLM no say
                (:attr:`FusionConfig.uses_llm`), since then beams cost seconds and change nothing.
            generation: Beam-search settings.
            verify: Check every file's SHA-256.
            use_fusion: Rank with the fusion re-ranker; None uses it when the bundle has one.
            exclude_seen: Remove items already in the history (default; False keeps them).
            constrained: Constrain the generator's beams to catalogue titles (the bundle's trie).
            exact: True searches every item even where the bundle's index has an HNSW graph (``--exact``);
                None follows the index's kind.

        Raises:
            InputError: If the bundle is invalid, or a part that is asked for is missing.
        """
        from gloss.edge.bundle import load_bundle

        bundle = load_bundle(bundle_dir, verify=verify)
        return cls.from_bundle(bundle, use_generator, generation, use_fusion, exclude_seen, constrained, exact)

    @classmethod
    def from_bundle(
        cls,
        bundle: Bundle,
        use_generator: bool | None = True,
        generation: GenerationConfig | None = None,
        use_fusion: bool | None = None,
        exclude_seen: bool = True,
        constrained: bool = False,
        exact: bool | None = None,
    ) -> Recommender:
        """A recommender over an already loaded bundle (arguments as in :meth:`load`).

        Raises:
            InputError: If a part that is asked for is missing.
        """
        from gloss.edge.generation.generate import LlamaCppGenerator

        index = bundle.open_index(exact=exact)
        if use_fusion is None:
            use_fusion = bundle.fusion_meta is not None
        fusion = bundle.open_fusion(index) if use_fusion else None
        if use_generator is None:
            use_generator = bundle.paths.generator is not None and (fusion is None or fusion.config.uses_llm)
            if bundle.paths.generator is not None and not use_generator:
                logger.info("fusion gives the LLM's beams no weight (query_weight = beam_weight = 0): "
                            "recommending without running it (--llm forces it)")
        generator = None
        if use_generator:
            if bundle.paths.generator is None:
                raise InputError(
                    f"{bundle.dir}: bundle has no generator; add one with gloss-export bundle --gguf, "
                    "or use --last-item"
                )
            generator = LlamaCppGenerator.load(bundle.paths.generator, generation or GenerationConfig(),
                                               constraint=bundle.open_trie() if constrained else None)
        return cls(bundle.catalog, bundle.open_embedder(), index, generator, fusion, exclude_seen=exclude_seen)

    def generate_for(self, history: Sequence[str]) -> list[GeneratedQuery]:
        """The generator's beams for a history of catalogue ids (empty without a generator)."""
        if self.generator is None:
            return []
        titles = self.catalog.titles_of(history)
        generated = self.generator.generate(titles)
        kept = getattr(self.generator, "last_items_kept", len(titles))
        if kept < len(titles):
            logger.warning("history of %d items: the prompt keeps the newest %d (the model's context is full)",
                           len(titles), kept)
        return generated

    def queries_for(self, history: Sequence[str]) -> tuple[list[str], int]:
        """Query texts for a history of catalogue ids, and how many neighbours each query contributes.

        Without a generator the last item is the query (fusion needs none: it scores recent items itself).
        """
        if self.generator is None:
            return ([] if self.fusion else [render_item(self.catalog.title(history[-1]))]), 0
        return [query_text(g.title) for g in self.generate_for(history)], 1

    def signals(self, generated: Sequence[GeneratedQuery]) -> QuerySignals | None:
        """Fusion signals of generated beams: title embeddings, beam scores, constrained items."""
        from gloss.edge.fusion import QuerySignals

        if not generated:
            return None
        vectors = embed_queries([query_text(g.title) for g in generated], self.embedder, self.index, self._known)
        return QuerySignals(vectors, np.array([g.score for g in generated]), beam_positions(generated))

    def ranker(self, exclude_seen: bool) -> FusionRanker:
        """The fusion ranker with the given seen-item rule (built once per rule)."""
        if self.fusion is None:
            raise InputError("this recommender has no fusion re-ranker")
        if exclude_seen not in self._rankers:
            self._rankers[exclude_seen] = self.fusion.with_config(exclude_seen=exclude_seen)
        return self._rankers[exclude_seen]

    def recommend(
        self, history: Sequence[str], k: int = 10, exclude_seen: bool | None = None, explain: bool = False
    ) -> Recommendation:
        """Recommend ``k`` items for a history given as catalogue ids or titles, oldest first.

        Args:
            history: Catalogue ids or titles, oldest first.
            k: Length of the list.
            exclude_seen: Remove history items; None uses the recommender's setting (default: remove).
            explain: Also split each item's score into named parts (:mod:`gloss.edge.explain`).

        Raises:
            InputError: On an empty history or an item not in the catalogue.
        """
        asins = self.catalog.resolve_history(history)
        exclude = self.exclude_seen if exclude_seen is None else exclude_seen
        seen = [self.catalog.position(a) for a in asins]
        if self.fusion is not None:
            generated = self.generate_for(asins)
            ranker, signals = self.ranker(exclude), self.signals(generated)
            queries = [query_text(g.title) for g in generated]
            ranked = ranker.rank(seen, signals, k=k)
            notes = explain_fusion(ranker, seen, signals, queries, ranked, self.catalog) if explain else None
            return self._items(ranked, queries, notes)
        queries, per_query = self.queries_for(asins)
        config = RetrievalConfig(k=k, per_query=per_query or k, exclude_seen=exclude)
        depth = min(len(self.index), search_depth(replace(config, per_query=k), len(set(seen))))
        positions, sims = self.index.search(embed_queries(queries, self.embedder, self.index, self._known), depth)
        ranked = fill_ranking(rank_items(positions, sims, seen, config), positions, sims, seen, config)
        return self._items(ranked, queries, explain_paper(ranked, positions, sims, queries) if explain else None)

    def _items(
        self, ranked: Sequence[ScoredItem], queries: list[str], explanations: list[Explanation] | None = None
    ) -> Recommendation:
        items = [RecommendedItem(self.catalog.asins[i.position], self.catalog.titles[i.position], i.score)
                 for i in ranked]
        return Recommendation(items, queries, explanations)
