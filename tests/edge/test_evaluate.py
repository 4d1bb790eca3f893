import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from gloss.edge.catalog import load_catalog
from gloss.edge.errors import InputError
from gloss.edge.evaluate import (
    EvalCase,
    cases_from_generator,
    cases_from_queries_file,
    cases_last_item,
    evaluate,
    format_report,
)
from gloss.edge.prompt import render_item
from gloss.edge.recommend import RetrievalConfig
from gloss.edge.splits import Split, load_sequences, make_examples
from tests.conftest import FIXTURES
from tests.fakes import BruteForceIndex, HashEmbedder, ScriptedGenerator


@pytest.fixture(scope="module")
def world():
    catalog = load_catalog(FIXTURES / "beauty_items.jsonl")
    embedder = HashEmbedder()
    index = BruteForceIndex(embedder.embed([render_item(t) for t in catalog.titles]))
    sequences = load_sequences(FIXTURES / "beauty_sequences.jsonl")
    examples = list(make_examples(sequences, Split.test, frozenset()))
    return catalog, embedder, index, examples


def write_queries(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_queries_equal_to_the_target_title_hit_at_rank_one(world, tmp_path):
    catalog, embedder, index, examples = world
    rows = [{"user": e.user, "history": list(e.history), "target": e.target,
             "queries": [f"Title: {catalog.title(e.target)}", "Title: something else"]} for e in examples]
    cases = cases_from_queries_file(write_queries(tmp_path / "q.jsonl", rows), catalog)
    report = evaluate(cases, catalog, embedder, index, RetrievalConfig(), source="file")
    assert report.metrics["all"]["users"] == len(examples)
    assert report.metrics["all"]["recall@5"] == 1.0
    assert report.metrics["all"]["mrr"] == 1.0


def test_metrics_match_a_direct_reference(world, tmp_path):
    catalog, embedder, index, examples = world
    rng = random.Random(0)
    rows = [{"user": e.user, "history": list(e.history), "target": e.target,
             "queries": [f"Title: {t}" for t in rng.sample(catalog.titles, 3)]
             + [f"Title: {catalog.title(e.target).split()[0]} {catalog.title(e.history[-1])}"]}
            for e in examples]
    config = RetrievalConfig(k=10, exclude_seen=True)
    details = tmp_path / "details.jsonl"
    cases = cases_from_queries_file(write_queries(tmp_path / "q.jsonl", rows), catalog)
    report = evaluate(cases, catalog, embedder, index, config, source="file", details_path=details)
    # Reference: full similarity matrix, nearest unseen item per query, rank by best similarity.
    items = index.vectors()
    recall = ndcg = 0.0
    for row in rows:
        seen = {catalog.position(a) for a in row["history"]}
        best = {}
        for q in embedder.embed(row["queries"]):
            sims = items @ q
            pos = next(int(p) for p in np.argsort(-sims, kind="stable") if p not in seen)
            best[pos] = max(best.get(pos, -1.0), float(sims[pos]))
        ranked = [catalog.asins[p] for p in sorted(best, key=lambda p: -best[p])]
        if row["target"] in ranked[:5]:
            recall += 1
            ndcg += 1 / math.log2(ranked.index(row["target"]) + 2)
    assert report.metrics["all"]["recall@5"] == pytest.approx(recall / len(rows))
    assert report.metrics["all"]["ndcg@5"] == pytest.approx(ndcg / len(rows))
    lines = [json.loads(line) for line in details.read_text().splitlines()]
    assert len(lines) == len(rows) and all(len(line["ranked"]) <= 4 for line in lines)


def test_last_item_baseline_ranks_the_last_item_first_unless_seen_items_are_dropped(world):
    catalog, embedder, index, examples = world
    cases = cases_last_item(examples, catalog)
    assert cases[0].queries == (render_item(catalog.title(examples[0].history[-1])),)
    from gloss.edge.evaluate import rank_cases

    kept = dict((c.user, r) for c, r in rank_cases(cases, catalog, embedder, index, RetrievalConfig(per_query=10)))
    dropped = dict(
        (c.user, r)
        for c, r in rank_cases(cases, catalog, embedder, index, RetrievalConfig(per_query=10, exclude_seen=True))
    )
    for ex in examples:
        assert catalog.asins[kept[ex.user][0]] == ex.history[-1]
        assert not {catalog.asins[p] for p in dropped[ex.user]} & set(ex.history)


def test_generator_source_passes_history_titles(world):
    catalog, embedder, index, examples = world
    gen = ScriptedGenerator(*[[catalog.title(e.target)] for e in examples[:3]])
    cases = list(cases_from_generator(examples[:3], catalog, gen))
    assert gen.histories[0] == catalog.titles_of(examples[0].history)
    report = evaluate(cases, catalog, embedder, index, RetrievalConfig(), source="fake")
    assert report.metrics["all"]["recall@5"] == 1.0
    assert "recall@5" in format_report(report)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"user": "u", "history": ["B000NOPE"], "target": "X", "queries": ["a"]}, "unknown item 'B000NOPE'"),
        ({"user": "u", "history": [], "target": "X", "queries": ["a"]}, "empty history"),
        ({"user": "u", "history": ["X"], "target": "X"}, "lacks field 'queries'"),
        ({"user": "u", "history": ["X"], "target": "X", "queries": []}, "non-empty list"),
    ],
)
def test_bad_queries_file_rows_are_named(world, tmp_path, row, message):
    catalog = world[0]
    real = catalog.asins[0]
    row = json.loads(json.dumps(row).replace('"X"', json.dumps(real)))
    with pytest.raises(InputError, match=message):
        cases_from_queries_file(write_queries(tmp_path / "q.jsonl", [row]), catalog)


def test_evaluate_rejects_no_users(world):
    catalog, embedder, index, _ = world
    with pytest.raises(InputError, match="no users"):
        evaluate(iter([]), catalog, embedder, index, RetrievalConfig(), source="none")


def test_cases_are_embedded_once_per_distinct_query(world):
    catalog, _, index, examples = world
    embedder = HashEmbedder()
    cases = [EvalCase(e.user, e.history, e.target, ("Title: same", "Title: same")) for e in examples]
    evaluate(cases, catalog, embedder, index, RetrievalConfig(), source="dup")
    assert embedder.calls == [1]


def test_catalogue_titles_reuse_index_vectors_instead_of_embedding(world):
    catalog, _, index, examples = world
    embedder = HashEmbedder()
    cases = cases_last_item(examples, catalog)
    report = evaluate(cases, catalog, embedder, index, RetrievalConfig(per_query=10), source="last")
    assert embedder.calls == []
    assert report.metrics["all"]["users"] == len(examples)


def test_recommender_warns_when_the_prompt_drops_old_items(world, caplog):
    from gloss.edge.recommend import Recommender

    catalog, embedder, index, _ = world
    history = list(catalog.asins[:40])
    generator = ScriptedGenerator([catalog.titles[50]] * 5, [catalog.titles[51]] * 5)
    recommender = Recommender(catalog, embedder, index, generator=generator)
    generator.last_items_kept = 12  # what LlamaCppGenerator records after fitting the context
    with caplog.at_level("WARNING", logger="gloss.edge.recommend"):
        items = recommender.recommend(history, k=10).items
    assert "history of 40 items: the prompt keeps the newest 12" in caplog.text
    assert len(items) == 10 and items[0].asin == catalog.asins[50]
    caplog.clear()
    generator.last_items_kept = 40
    recommender.recommend(history, k=3)
    assert "keeps the newest" not in caplog.text


def test_saved_queries_keep_beam_scores_and_positions(world, tmp_path):
    catalog, embedder, index, examples = world
    cases = [EvalCase(e.user, e.history, e.target, (f"Title: {catalog.title(e.target)}", "Title: x"), (-0.5, -1.5),
                      (catalog.position(e.target), -1)) for e in examples[:5]]
    saved = tmp_path / "saved.jsonl"
    evaluate(cases, catalog, embedder, index, RetrievalConfig(), source="s", queries_path=saved)
    assert cases_from_queries_file(saved, catalog) == cases
    rows = [dict(json.loads(line), scores=[0.1]) for line in saved.read_text().splitlines()]
    with pytest.raises(InputError, match="'scores' must be a list of 2 numbers, one per query"):
        cases_from_queries_file(write_queries(tmp_path / "bad.jsonl", rows), catalog)


def test_fusion_report_states_the_seen_rule_in_effect(world):
    from gloss.edge.fusion import FusionConfig, FusionRanker
    from gloss.export.copurchase import build_copurchase

    catalog, embedder, index, examples = world
    copurchase = build_copurchase([[catalog.position(a) for a in e.history] for e in examples], len(catalog))
    for exclude in (True, False):
        ranker = FusionRanker(catalog, index, copurchase, FusionConfig(exclude_seen=exclude))
        report = evaluate(cases_last_item(examples, catalog, with_query=False), catalog, embedder, index,
                          RetrievalConfig(), source="last-item", fusion=ranker)
        assert report.config["rule"] == "fusion" and report.config["exclude_seen"] is exclude
        assert f"exclude_seen: {exclude}" in format_report(report).splitlines()[0]


def test_recommender_removes_seen_items_unless_asked_to_keep_them(world):
    from gloss.edge.recommend import Recommender

    catalog, embedder, index, _ = world
    history = list(catalog.asins[:3])
    generator = ScriptedGenerator([catalog.titles[2]] * 5)  # the model copies the last history item
    recommender = Recommender(catalog, embedder, index, generator=generator)
    assert not {i.asin for i in recommender.recommend(history, k=5).items} & set(history)
    generator = ScriptedGenerator([catalog.titles[2]] * 5)
    kept = Recommender(catalog, embedder, index, generator=generator, exclude_seen=False)
    assert kept.recommend(history, k=5).items[0].asin == catalog.asins[2]


def test_holdout_guard_checks_the_sequences_file_hash(tmp_path):
    from types import SimpleNamespace

    from gloss.edge.evaluate import check_fusion_holdout
    from gloss.edge.files import sha256_file

    sequences = FIXTURES / "beauty_sequences.jsonl"
    other = tmp_path / "other.jsonl"
    other.write_bytes(sequences.read_bytes() + b"\n")
    meta = {"holdout": 1, "sequences": sequences.name, "sequences_sha256": sha256_file(sequences)}
    bundle = SimpleNamespace(dir=tmp_path, fusion_meta=meta)
    check_fusion_holdout(bundle, Split.test, sequences)
    with pytest.raises(InputError, match="differs from the file the co-purchase statistics were built from"):
        check_fusion_holdout(bundle, Split.test, other)
    with pytest.raises(InputError, match="--holdout 1, so they include the validation targets"):
        check_fusion_holdout(bundle, Split.validation, sequences)


def test_recommender_passes_beam_scores_and_constrained_items_to_fusion(world):
    from gloss.edge.fusion import FusionConfig, FusionRanker, QuerySignals
    from gloss.edge.generation.generate import GeneratedQuery
    from gloss.edge.recommend import Recommender, embed_queries, item_texts, query_text
    from gloss.export.copurchase import build_copurchase

    catalog, embedder, index, examples = world
    copurchase = build_copurchase([[catalog.position(a) for a in e.history] for e in examples], len(catalog))
    config = FusionConfig(beam_weight=5.0, copurchase_weight=0.0, num_neighbors=3)
    ranker = FusionRanker(catalog, index, copurchase, config)
    beams = [GeneratedQuery(catalog.titles[40], -0.1, "", items=(40,)), GeneratedQuery("free text", -2.0, "")]

    class Beams:
        def generate(self, history):
            return beams

    history = list(catalog.asins[:3])
    got = Recommender(catalog, embedder, index, generator=Beams(), fusion=ranker).recommend(history, k=5)
    vectors = embed_queries([query_text(b.title) for b in beams], embedder, index, item_texts(catalog))
    signals = QuerySignals(vectors, np.array([-0.1, -2.0]), np.array([40, -1]))
    want = ranker.rank([catalog.position(a) for a in history], signals, k=5)
    assert [i.asin for i in got.items] == [catalog.asins[i.position] for i in want]
    assert got.items[0].asin == catalog.asins[40]  # the likelier constrained beam's item leads
