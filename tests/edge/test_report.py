"""``gloss-edge eval --report / --compare``: the report's numbers against references (edge/metrics.py, brute force,
bootstrap cases with a known answer), the HTML, and the CLI's errors."""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gloss.edge.cli import app
from gloss.edge.metrics import MetricSums, summarize
from gloss.edge.report.html import render_report
from gloss.edge.report.runs import (
    REPORT_K,
    Run,
    UserRanks,
    bootstrap_mean,
    compare_runs,
    load_run,
    metric_values,
    rank_counts,
    recall_curve,
    run_from_dict,
    segment_summary,
)
from tests.conftest import SEQUENCES_PATH
from tests.fakes import error_line

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def random_run(label: str, n: int = 300, seed: int = 0, users: list[str] | None = None) -> Run:
    rng = np.random.default_rng(seed)
    ranks = np.where(rng.random(n) < 0.3, 0, rng.integers(1, REPORT_K + 1, n))
    users = users or [f"u{i}" for i in range(n)]
    per_user = UserRanks(tuple(users), tuple(f"t-{u}" for u in users), ranks, rng.integers(3, 30, n), REPORT_K)
    return Run(label, "last-item", {"rule": "paper", "exclude_seen": True, "power_min": 14}, {}, per_user)


# --- the numbers ---


def test_recall_curve_equals_edge_metrics_at_every_k():
    ranks = random_run("a").per_user.ranks
    curve = recall_curve(ranks, REPORT_K)
    for k in range(1, REPORT_K + 1):
        sums = MetricSums(ks=(k,))
        for rank in ranks.tolist():
            sums.add(rank or None)
        assert curve[k - 1] == pytest.approx(sums.summary()[f"recall@{k}"]), k


def test_rank_counts_and_metric_values_match_brute_force():
    ranks = random_run("a", seed=3).per_user.ranks
    counts, missing = rank_counts(ranks, 20)
    assert counts.tolist() == [int((ranks == r).sum()) for r in range(1, 21)]
    assert missing == int(((ranks == 0) | (ranks > 20)).sum())
    assert metric_values(ranks, "ndcg@10") == pytest.approx(
        [1 / np.log2(r + 1) if 0 < r <= 10 else 0 for r in ranks.tolist()])
    assert metric_values(ranks, "mrr") == pytest.approx([1 / r if 0 < r <= 10 else 0 for r in ranks.tolist()])


def test_segment_summary_is_edge_metrics_summarize():
    per_user = random_run("a", seed=5).per_user
    expected = summarize([r or None for r in per_user.ranks.tolist()], per_user.interactions.tolist(), 14,
                         ks=(1, 5, 10, 20, 50))
    assert segment_summary(per_user, 14) == expected


def test_bootstrap_of_a_constant_is_that_constant():
    mean, low, high = bootstrap_mean(np.full(50, 0.25), num_resamples=200)
    assert mean == low == high == pytest.approx(0.25)


def test_bootstrap_of_two_values_spans_both():
    # Means of resamples of {0, 1} are 0, 1/2, 1 with probabilities 1/4, 1/2, 1/4: the 95% interval is [0, 1].
    mean, low, high = bootstrap_mean(np.array([0.0, 1.0]), num_resamples=2000)
    assert (mean, low, high) == (0.5, 0.0, 1.0)


def test_bootstrap_interval_of_a_mean_is_its_normal_interval():
    rng = np.random.default_rng(1)
    diffs = (rng.random(4000) < 0.3).astype(float) - (rng.random(4000) < 0.2).astype(float)
    mean, low, high = bootstrap_mean(diffs, num_resamples=2000, seed=2)
    half = 1.959964 * diffs.std() / np.sqrt(len(diffs))  # the bootstrap's plug-in variance, normal quantile
    assert mean == pytest.approx(diffs.mean())
    assert high - mean == pytest.approx(half, rel=0.1) and mean - low == pytest.approx(half, rel=0.1)


def test_bootstrap_resamples_columns_together():
    values = np.random.default_rng(0).random((500, 1))
    mean, low, high = bootstrap_mean(np.hstack([values, values]), num_resamples=300)
    assert low[0] == low[1] and high[0] == high[1]  # the same users drawn for every column


def test_compare_runs_pairs_users_by_id_whatever_their_order():
    this = random_run("this", seed=0)
    order = np.random.default_rng(9).permutation(300)[:250]  # the other run: 250 of the users, shuffled
    base = random_run("other", seed=1)
    other_users = [this.per_user.users[i] for i in order]
    other = Run("other", "x", base.config, {}, UserRanks(
        tuple(other_users), tuple(f"t-{u}" for u in other_users), base.per_user.ranks[order],
        this.per_user.interactions[order], REPORT_K))
    comparison = compare_runs(this, other, num_resamples=200)
    a, b = this.per_user.ranks[np.sort(order)], base.per_user.ranks[order][np.argsort(order)]
    row = next(r for r in comparison.rows if r.metric == "recall@10" and r.segment == "all")
    expected = metric_values(a, "recall@10") - metric_values(b, "recall@10")
    assert row.users == 250 and row.diff == pytest.approx(expected.mean()) and row.low <= row.diff <= row.high
    key_a, key_b = np.where(a > 0, a, 99), np.where(b > 0, b, 99)
    assert (comparison.wins, comparison.losses, comparison.ties) == (
        int((key_a < key_b).sum()), int((key_a > key_b).sum()), int((key_a == key_b).sum()))
    assert (comparison.shared, comparison.only_this, comparison.only_other) == (250, 50, 0)
    curve_10 = comparison.curve[9]
    assert curve_10[0] == pytest.approx(row.diff)


def test_compare_runs_refuses_other_targets_or_no_shared_user():
    this = random_run("this")
    other = random_run("other", users=[f"v{i}" for i in range(300)])
    with pytest.raises(ValueError, match="share no user"):
        compare_runs(this, other)
    moved = Run("x", "x", {}, {}, UserRanks(this.per_user.users, ("zzz",) + this.per_user.targets[1:],
                                             this.per_user.ranks, this.per_user.interactions, REPORT_K))
    with pytest.raises(ValueError, match="same split"):
        compare_runs(this, moved)


def test_an_eval_json_without_ranks_names_how_to_write_one():
    with pytest.raises(ValueError, match="--report"):
        run_from_dict({"metrics": {}, "config": {}, "source": "x", "extra": {}}, "x", "old.json")


# --- the HTML ---


def images(html: str) -> list[str]:
    return [base64.b64decode(data).decode() for data in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', html)]


def test_report_is_self_contained_and_escapes_labels():
    this = random_run("<script>alert(1)</script>")
    html = render_report(this, None, title="<b>bundle</b>")
    assert "<script>" not in html and "&lt;script&gt;" in html and "&lt;b&gt;bundle" in html
    assert len(images(html)) == 3 and all(svg.lstrip().startswith("<?xml") and "<svg" in svg for svg in images(html))
    assert "http://" not in html.replace("http://www.w3.org", "")  # nothing loaded from elsewhere
    compared = render_report(this, random_run("other", seed=1))
    assert len(images(compared)) == 4 and "Paired comparison" in compared


# --- the CLI ---


@pytest.fixture(scope="module")
def saved_run(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    out = tmp_path_factory.mktemp("report")
    result = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--exclude-seen",
                    "--report", out / "a.html", "--out", out / "a.json", "--details", out / "a.jsonl")
    assert result.exit_code == 0, result.output
    return out / "a.html", out / "a.json", out / "a.jsonl"


def test_eval_report_keeps_each_users_rank_and_the_same_metrics(tiny_bundle: Path, saved_run):
    html_path, json_path, details_path = saved_run
    data = json.loads(json_path.read_text())
    rows = [json.loads(line) for line in details_path.read_text().splitlines()]
    per_user = data["extra"]["per_user"]
    assert per_user["user"] == [r["user"] for r in rows] and per_user["rank"] == [r["rank"] for r in rows]
    assert data["config"]["k"] == REPORT_K == per_user["depth"]
    plain = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--exclude-seen",
                   "--json")
    assert json.loads(plain.stdout)["metrics"] == data["metrics"]  # 50 ranked items: the top 10 are the same
    run = load_run(json_path)
    summary = segment_summary(run.per_user, run.power_min)
    for segment, values in data["metrics"].items():
        for name, value in values.items():
            assert summary[segment][name] == pytest.approx(value), (segment, name)
    assert len(images(html_path.read_text())) == 3


def test_eval_compare_puts_both_runs_in_one_report(tiny_bundle: Path, saved_run, tmp_path: Path):
    _, json_path, _ = saved_run
    result = invoke("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--include-seen",
                    "--report", tmp_path / "b.html", "--compare", json_path)
    assert result.exit_code == 0, result.output
    html = (tmp_path / "b.html").read_text()
    assert "Paired comparison" in html and "a.json (last-item, paper)" in html and len(images(html)) == 4


def test_eval_report_errors(tiny_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    base = ("eval", tiny_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH)
    result = invoke(*base, "--compare", tmp_path / "x.json")
    assert result.exit_code == 2 and "--compare needs --report" in error_line(result)
    plain = tmp_path / "plain.json"
    assert invoke(*base, "--out", plain).exit_code == 0
    result = invoke(*base, "--report", tmp_path / "r.html", "--compare", plain)
    assert result.exit_code == 2 and "no per-user ranks" in error_line(result)
    assert not (tmp_path / "r.html").exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if the plot extra were not installed
    result = invoke(*base, "--report", tmp_path / "r.html")
    assert result.exit_code == 1 and "pip install 'gloss[plot]'" in error_line(result)


def test_fusion_metrics_are_the_same_with_a_report(fusion_bundle: Path, tmp_path: Path):
    base = ("eval", fusion_bundle, "--source", "last-item", "--sequences", SEQUENCES_PATH, "--fusion", "--json")
    plain = invoke(*base)
    reported = invoke(*base, "--report", tmp_path / "r.html")
    assert plain.exit_code == reported.exit_code == 0, reported.output
    assert json.loads(reported.stdout)["metrics"] == json.loads(plain.stdout)["metrics"]
