"""`recommend --explain`: named score parts that add up to the score, checked against hand-computed features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.bundle import load_bundle
from gloss.edge.catalog import load_catalog
from gloss.edge.cli import app
from gloss.edge.explain import Explanation
from gloss.edge.fusion import FEATURES, FusionConfig
from gloss.edge.prompt import render_item
from gloss.edge.recommend import Recommender
from gloss.edge.splits import Split, load_sequences, make_examples
from gloss.export.bundle import add_fusion
from tests.conftest import FIXTURES, copy_bundle
from tests.fakes import ScriptedGenerator

CATALOG_PATH = FIXTURES / "beauty_items.jsonl"
SEQUENCES_PATH = FIXTURES / "beauty_sequences.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def explain_root(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("explain")
    copy_bundle(tiny_bundle, root / "plain")
    copy_bundle(tiny_bundle, root / "fusion")
    add_fusion(root / "fusion", SEQUENCES_PATH, holdout=1, config=FusionConfig(query_weight=1.0))  # a query part
    return root


@pytest.fixture(scope="module")
def examples():
    return list(make_examples(load_sequences(SEQUENCES_PATH), Split.test, frozenset()))[:6]


def recommender(explain_root: Path, fusion: bool, generated: list[list[str]] | None = None) -> Recommender:
    bundle = load_bundle(explain_root / ("fusion" if fusion else "plain"))
    index = bundle.open_index()
    generator = ScriptedGenerator(*generated) if generated else None
    return Recommender(bundle.catalog, bundle.open_embedder(), index, generator,
                       bundle.open_fusion(index) if fusion else None)


def generated_titles(explain_root: Path, user: int) -> list[str]:
    titles = load_catalog(CATALOG_PATH).titles
    return [titles[(user * 11 + j * 37) % len(titles)] + " Set" for j in range(3)]


@pytest.mark.parametrize("with_llm", [False, True])
def test_fusion_parts_add_up_to_the_score_and_match_the_features(explain_root, examples, with_llm):
    for user, example in enumerate(examples):
        queries = [generated_titles(explain_root, user)] if with_llm else None
        rec = recommender(explain_root, fusion=True, generated=queries)
        result = rec.recommend(list(example.history), k=10, explain=True)
        assert result.explanations is not None and len(result.explanations) == len(result.items)
        ranker, catalog = rec.fusion, rec.catalog
        cfg, vectors = ranker.config, ranker.vectors.astype(np.float64)
        recent = [catalog.position(a) for a in example.history][::-1][: cfg.history_len]
        weights = np.array([cfg.history_decay**j for j in range(len(recent))])
        weights /= weights.sum()
        query_vectors = rec.embedder.embed([render_item(t) for t in queries[0]]).astype(np.float64) if queries else None
        for item, explanation in zip(result.items, result.explanations, strict=True):
            assert set(explanation.parts) == set(FEATURES)
            assert explanation.total == pytest.approx(item.score, abs=1e-9)
            vec = vectors[catalog.position(item.asin)]
            text = float(weights @ (vectors[recent] @ vec))  # the documented feature, computed by hand
            assert explanation.parts["text"] == pytest.approx(cfg.text_weight * text, abs=1e-9)
            strongest = recent[int(np.argmax(weights * (vectors[recent] @ vec)))]
            assert explanation.source_ids["text"] == catalog.asins[strongest]
            if query_vectors is not None:
                sims = query_vectors @ vec
                assert explanation.parts["query"] == pytest.approx(cfg.query_weight * sims.max(), abs=1e-3)
                assert explanation.sources["query"] == queries[0][int(np.argmax(sims))]
            else:
                assert explanation.parts["query"] == 0 and "query" not in explanation.sources
            if explanation.parts["copurchase"] > 0:
                assert explanation.source_ids["copurchase"] in example.history
            assert set(explanation.source_ids.values()) <= set(example.history)


@pytest.mark.parametrize("with_llm", [False, True])
def test_paper_rule_part_is_the_similarity_to_one_query(explain_root, examples, with_llm):
    example = examples[0]
    queries = [generated_titles(explain_root, 0)] if with_llm else None
    rec = recommender(explain_root, fusion=False, generated=queries)
    result = rec.recommend(list(example.history), k=8, explain=True)
    titles = queries[0] if queries else [rec.catalog.title(example.history[-1])]
    query_vectors = rec.embedder.embed([render_item(t) for t in titles])
    for item, explanation in zip(result.items, result.explanations, strict=True):
        assert list(explanation.parts) == ["query"] and explanation.total == item.score
        source = explanation.sources["query"]
        assert source in titles
        vec = rec.index.vectors()[rec.catalog.position(item.asin)]
        # 1e-3: the index may store f16 vectors, and an exact catalogue title reuses its stored vector
        assert float(query_vectors[titles.index(source)] @ vec) == pytest.approx(item.score, abs=1e-3)


def test_describe_lists_nonzero_parts_largest_first_with_sources():
    explanation = Explanation({"query": 0.5, "copurchase": 1.25, "popularity": 0.0, "text": 0.2},
                              {"query": "Shampoo 2 Pack", "copurchase": "Conditioner", "text": "Conditioner"})
    assert explanation.describe() == (
        "copurchase 1.250 (after 'Conditioner') + query 0.500 (~ 'Shampoo 2 Pack') + text 0.200 (like 'Conditioner')"
    )
    assert Explanation({"query": 0.0}).describe() == "no signal"


def test_cli_explain_json_and_lines(explain_root, examples):
    args = [x for asin in examples[0].history for x in ("--item", asin)]
    result = runner.invoke(app, ["recommend", str(explain_root / "fusion"), "--last-item", "--json", "--explain",
                                 *args])
    assert result.exit_code == 0, result.output
    items = json.loads(result.stdout)["items"]
    assert items and all(sum(i["explanation"]["parts"].values()) == pytest.approx(i["score"]) for i in items)
    assert set(items[0]["explanation"]) == {"parts", "sources", "source_ids"}
    plain = runner.invoke(app, ["recommend", str(explain_root / "fusion"), "--last-item", "--json", *args])
    assert "explanation" not in json.loads(plain.stdout)["items"][0]
    lines = runner.invoke(app, ["recommend", str(explain_root / "fusion"), "--last-item", "--explain", *args])
    assert lines.exit_code == 0 and lines.stdout.count("\n     = ") == len(items)
    assert "text " in lines.stdout
