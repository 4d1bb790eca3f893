"""Write benchmarks/results/gpu_beauty.{json,md} from the GPU run and its CPU follow-up.

Reads the follow-up's work folder (``follow_up.sh``; default benchmarks/.work/gpu-beauty): the run's
manifest and metrics.jsonl, the eval reports, compare.json, and the two validation queries files (the
device's transformers beams and the edge path's llama.cpp beams, ``gloss-edge eval --save-queries``). Both
queries files are ranked on the same bundle, user by user, to say how closely the two paths agree on the
recommended items, not only on the averages.

Usage::

    python benchmarks/gpu/report.py --work benchmarks/.work/gpu-beauty --hf-queries DEVICE/queries_validation.jsonl.gz \
        --edge-queries benchmarks/.work/gpu-beauty/eval/bundle_queries_validation.jsonl.gz --run-log DEVICE/run.log \
        [--hf-test-queries DEVICE/queries_test.jsonl.gz --edge-test-queries .../bundle_queries_test_first.jsonl.gz]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare_queries import query_overlap  # the same agreement measure as the n_ctx-512 comparison

from gloss.edge.bundle import load_bundle
from gloss.edge.evaluate import cases_from_queries_file, rank_cases
from gloss.edge.files import read_jsonl, write_json_atomic, write_text_atomic
from gloss.edge.recommend import RetrievalConfig

RESULTS = Path(__file__).resolve().parents[1] / "results"
ROWS = [  # eval report file stem, label
    ("hf_validation", "transformers beams (device, bf16), paper rule"),
    ("hf_validation_exclude_seen", "transformers beams (device, bf16), seen items removed"),
    ("bundle_validation", "llama.cpp beams (CPU edge path, Q8_0), paper rule"),
    ("bundle_validation_exclude_seen", "llama.cpp beams (CPU edge path, Q8_0), seen items removed"),
    ("last_item_validation", "last-item search (no LLM), paper rule"),
    ("last_item_validation_exclude_seen", "last-item search (no LLM), seen items removed"),
    ("paper_validation", "paper authors' Llama-3.2-1B queries (their validation users), paper rule"),
    ("hf_test_first", "transformers beams, first 200 test users, paper rule"),
    ("bundle_test_first", "llama.cpp beams (CPU edge path), first 200 test users, paper rule"),
    ("hf_test", "transformers beams, test subsample, paper rule"),
    ("hf_test_exclude_seen", "transformers beams, test subsample, seen items removed"),
]


def item_agreement(bundle_dir: Path, hf_path: Path, edge_path: Path, exclude_seen: bool) -> dict:
    """Per-user agreement of the items the two query sets recommend (top 1 and top 5)."""
    bundle = load_bundle(bundle_dir)
    index, embedder = bundle.open_index(), bundle.open_embedder()
    config = RetrievalConfig(k=5, per_query=1, exclude_seen=exclude_seen)
    ranked = {}
    for name, path in (("hf", hf_path), ("edge", edge_path)):
        cases = cases_from_queries_file(path, bundle.catalog)
        ranked[name] = {c.user: r for c, r in rank_cases(cases, bundle.catalog, embedder, index, config, False)}
    users = sorted(set(ranked["hf"]) & set(ranked["edge"]))
    same_top1 = sum(bool(ranked["hf"][u]) and ranked["hf"][u][:1] == ranked["edge"][u][:1] for u in users)
    overlap = sum(jaccard(ranked["hf"][u][:5], ranked["edge"][u][:5]) for u in users)
    return {"users": len(users), "same_top1_item": same_top1 / len(users), "mean_top5_jaccard": overlap / len(users)}


def jaccard(a: list[int], b: list[int]) -> float:
    """|A & B| / |A | B| of two item lists (1.0 when both are empty)."""
    union = set(a) | set(b)
    return len(set(a) & set(b)) / len(union) if union else 1.0


def query_agreement(hf_path: Path, edge_path: Path) -> dict:
    """Share of users whose best query is the same text, and mean share of the 5 queries in common."""
    hf = {r["user"]: r["queries"] for r in read_jsonl(hf_path)}
    edge = {r["user"]: r["queries"] for r in read_jsonl(edge_path)}
    users = sorted(set(hf) & set(edge))
    overlaps = [query_overlap(edge[u], hf[u]) for u in users]
    same, shared = sum(o[0] for o in overlaps), sum(o[1] for o in overlaps)
    return {"users": len(users), "same_best_query": same / len(users), "mean_shared_queries": shared / len(users)}


def title_shares(path: Path, catalog) -> dict:
    """Share of generated titles that are exact catalogue titles, and that copy a title of the user's history."""
    titles, exact, copied, total = set(catalog.titles), 0, 0, 0
    for row in read_jsonl(path):
        history = set(catalog.titles_of(row["history"]))
        for query in row["queries"]:
            title = query.removeprefix("Title: ")
            exact += title in titles
            copied += title in history
            total += 1
    return {"queries": total, "exact_catalogue_title": exact / total, "history_title": copied / total}


def generation_summary(run_log: Path) -> dict:
    """The last JSON line of the device's run.log (users and seconds per split)."""
    for line in reversed(run_log.read_text(encoding="utf-8").splitlines()):
        if line.startswith("{") and "validation_users" in line:
            return json.loads(line)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("benchmarks/.work/gpu-beauty"))
    parser.add_argument("--hf-queries", type=Path, required=True)
    parser.add_argument("--edge-queries", type=Path, required=True)
    parser.add_argument("--run-log", type=Path, required=True)
    parser.add_argument("--hf-test-queries", type=Path, help="the device's test queries (optional)")
    parser.add_argument("--edge-test-queries", type=Path, help="llama.cpp beams of (some of) those test users")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_beauty")
    parser.add_argument("--paper-queries", type=Path,
                        default=Path("/work/shared/data/gloss_queries/beauty_validation_llama-3.2-1b.jsonl.gz"))
    args = parser.parse_args()

    manifest = json.loads((args.work / "run" / "gloss_manifest.json").read_text())
    metrics = list(read_jsonl(args.work / "run" / "metrics.jsonl"))
    reports = {}
    for stem, _ in ROWS:
        path = args.work / "eval" / f"{stem}.json"
        if path.is_file():
            reports[stem] = json.loads(path.read_text())["metrics"]
    compare = json.loads((args.work / "eval" / "compare.json").read_text())
    agreement = {
        "queries": query_agreement(args.hf_queries, args.edge_queries),
        "items_paper_rule": item_agreement(args.work / "bundle", args.hf_queries, args.edge_queries, False),
        "items_seen_removed": item_agreement(args.work / "bundle", args.hf_queries, args.edge_queries, True),
        "test_queries": (query_agreement(args.hf_test_queries, args.edge_test_queries)
                         if args.hf_test_queries and args.edge_test_queries else None),
        "same_context_512": [{k: r[k] for k in ("gguf", "users", "same_best_query", "mean_shared_queries")}
                             for r in compare["reports"]],
    }
    result = {
        "train": {"config": manifest["config"], "versions": manifest["versions"], "result": manifest["result"],
                  "eval_loss": list({m["step"]: m for m in metrics if "eval_loss" in m}.values()),
                  "train_log": metrics},
        "generation": generation_summary(args.run_log),
        "metrics": reports,
        "titles": {name: title_shares(path, load_bundle(args.work / "bundle").catalog)
                   for name, path in (("transformers", args.hf_queries), ("llama.cpp", args.edge_queries),
                                      ("paper Llama-3.2-1B", args.paper_queries)) if path.is_file()},
        "agreement": agreement,
    }
    write_json_atomic(args.out.with_suffix(".json"), result)
    write_text_atomic(args.out.with_suffix(".md"), render(result))
    print(render(result))


HEADER = """# SmolLM2-135M QLoRA on Beauty: the lent-GPU run and its CPU edge path

Made by `benchmarks/gpu/` (README there): `device_run.sh call1`/`call2` on one NVIDIA H200 (2026-11-27), then
`follow_up.sh`, `gloss-edge eval --source bundle --save-queries` and `report.py` on the 2-core CPU VM.
Retrieval: all-MiniLM-L6-v2 (ONNX) + exact search over the 12,094 Beauty titles; the paper's rule unless a row
says seen items were removed. Validation = the paper's protocol (seeded 5% of users, second-to-last item).
"""


def render_train(result: dict) -> list[str]:
    """What the run did: steps, epochs, losses, speed."""
    train, gen = result["train"], result["generation"]
    res, cfg = train["result"], train["config"]
    speeds = [m["tokens_per_s"] for m in train["train_log"] if "tokens_per_s" in m]
    losses = [m["loss"] for m in train["train_log"] if "loss" in m]
    evals = ", ".join(f"{m['eval_loss']:.3f} (epoch {m['epoch']:.2f})" for m in train["eval_loss"])
    versions = ", ".join(f"{k} {v}" for k, v in train["versions"].items())
    lines = [
        "## Training (device)", "",
        f"NF4 QLoRA, r {cfg['lora_r']}, alpha {cfg['lora_alpha']}, all projections; lr {cfg['learning_rate']}, batch "
        f"{cfg['per_device_batch_size']} x {cfg['grad_accum']}, warmup {cfg['warmup_steps']}, max length "
        f"{cfg['max_seq_length']}, length-grouped batches; {versions}.",
        f"Stopped by the slot's deadline at step {res['global_step']} = epoch {res['epoch']:.2f} of "
        f"{cfg['epochs']} planned. Train loss {losses[0]:.2f} (first log) -> {losses[-1]:.2f} (last); "
        f"eval loss on all validation users: {evals}. "
        f"Mean {sum(speeds) / len(speeds):,.0f} tokens/s.",
    ]  # fmt: skip
    if gen:
        lines.append(f"5-beam generation (transformers, bf16, batch {gen['batch_size']}): {gen['validation_users']} "
                     f"validation users in {gen['validation_s']} s, {gen['test_users']} test users in "
                     f"{gen['test_s']} s.")
    return lines + [""]


def render(result: dict) -> str:
    """The Markdown report: the run, then the scores, then how closely the two generation paths agree."""
    lines = [HEADER, *render_train(result), "## Scores", ""]
    lines += ["| queries | users | Recall@5 | NDCG@5 | Recall@10 | MRR |", "|---|---|---|---|---|---|"]
    for stem, label in ROWS:
        m = result["metrics"].get(stem)
        if m:
            a = m["all"]
            lines.append(f"| {label} | {int(a['users'])} | {a['recall@5']:.4f} | {a['ndcg@5']:.4f} | "
                         f"{a['recall@10']:.4f} | {a['mrr']:.4f} |")
    lines += ["", "| generated titles (validation) | queries | exact catalogue title | copy of a history title |",
              "|---|---|---|---|"]
    for name, t in result["titles"].items():
        lines.append(f"| {name} | {t['queries']} | {t['exact_catalogue_title']:.3f} | {t['history_title']:.3f} |")
    ag = result["agreement"]
    lines += ["", "## transformers (device) vs llama.cpp (edge) on the same users", "",
              "| agreement | value |", "|---|---|"]
    lines.append(f"| same best query (n_ctx 1024 on the edge) | {ag['queries']['same_best_query']:.3f} |")
    lines.append(f"| share of the 5 queries in common | {ag['queries']['mean_shared_queries']:.3f} |")
    if ag.get("test_queries"):
        t = ag["test_queries"]
        lines.append(f"| test, first {t['users']} users: same best query / share of queries in common | "
                     f"{t['same_best_query']:.3f} / {t['mean_shared_queries']:.3f} |")
    for key, label in (("items_paper_rule", "paper rule"), ("items_seen_removed", "seen items removed")):
        lines.append(f"| same top-1 item, {label} | {ag[key]['same_top1_item']:.3f} |")
        lines.append(f"| top-5 items, Jaccard overlap, {label} | {ag[key]['mean_top5_jaccard']:.3f} |")
    for r in ag["same_context_512"]:
        lines.append(f"| same best query, n_ctx 512 as on the device, {Path(r['gguf']).name}, first {r['users']} "
                     f"users | {r['same_best_query']:.2f} (queries in common {r['mean_shared_queries']:.2f}) |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
