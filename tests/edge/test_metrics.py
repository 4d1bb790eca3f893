import math

import pytest

from gloss.edge.metrics import MetricSums, ndcg_at_k, rank_of, recall_at_k, segment_of, summarize


def test_rank_based_metrics_follow_their_definitions():
    assert rank_of(["a", "b", "c"], "c") == 3
    assert rank_of(["a"], "z") is None
    assert recall_at_k(5, 5) == 1.0 and recall_at_k(6, 5) == 0.0 and recall_at_k(None, 5) == 0.0
    assert ndcg_at_k(1, 5) == 1.0
    assert ndcg_at_k(3, 5) == pytest.approx(1 / math.log2(4))
    assert ndcg_at_k(6, 5) == 0.0


@pytest.mark.parametrize("n, power_min, segment", [(3, 14, "cold"), (5, 14, "cold"), (6, 14, "regular"),
                                                    (14, 14, "regular"), (15, 14, "power"), (14, 13, "power")])
def test_segments_follow_the_paper_thresholds(n, power_min, segment):
    assert segment_of(n, power_min) == segment


def test_summarize_averages_per_segment_and_overall():
    ranks = [1, None, 2, 7]
    lengths = [3, 8, 20, 20]
    out = summarize(ranks, lengths, power_min=14)
    assert out["all"]["users"] == 4
    assert out["all"]["recall@5"] == pytest.approx(2 / 4)
    assert out["all"]["recall@10"] == pytest.approx(3 / 4)
    assert out["power"]["users"] == 2
    assert out["power"]["mrr"] == pytest.approx((1 / 2 + 1 / 7) / 2)
    assert out["cold"]["ndcg@5"] == 1.0 and out["regular"]["ndcg@5"] == 0.0


def test_empty_segment_reports_zero_users():
    sums = MetricSums()
    assert sums.summary() == {"users": 0, "recall@5": 0.0, "recall@10": 0.0, "ndcg@5": 0.0, "ndcg@10": 0.0,
                              "mrr": 0.0}
