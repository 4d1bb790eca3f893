"""Footprint benchmark (issue 10): bundle size and RSS against quality, on Beauty validation users.

One run measures, and writes benchmarks/results/footprint.{json,md}:
  1. retrieval: embedder fp32 vs int8 (ONNX Runtime dynamic quantization) x index vectors f32 / f16 / i8
     (usearch dtype, exact search): Recall@5 / NDCG@5 on the paper's validation users for last-item search,
     fusion on the history alone, the GLoSS authors' Llama-3.2-1B validation queries (paper rule) and those
     queries with fusion (co-purchase statistics with holdout 2, so no validation target leaks in);
  2. generator: the fine-tuned SmolLM2-135M as F16 / Q8_0 / Q6_K / Q5_K_M / Q4_0 / IQ4_NL GGUF, with an f16 or
     f32 KV cache: size, teacher-forced top-1 next-token agreement with F16 (f32 KV) on validation prompts and
     the negative log-likelihood of the true next title, and Recall@5 of its 5-beam queries on a fixed sample
     of validation users (paper rule and fusion);
  3. footprint: the default bundle of `gloss-export bundle` against the previous default (Q8_0, fp32, f32):
     size on disk, peak RSS of one `gloss-edge recommend` and of the server while serving
     (benchmarks/footprint_rss.py).

Noise: every variant is compared with its reference on the same users: the difference in mean per-user
Recall@5 / NDCG@5 with a 95% paired-bootstrap interval, and the number of users hit only by the reference /
only by the variant. A default is switched where the interval contains 0.

Usage:
    nice -n 10 python benchmarks/footprint.py [--work-dir /tmp/footprint] [--parts retrieval,generator,footprint]
Artifacts (embedder exports, GGUFs, generated queries) are cached in --work-dir; results are recomputed.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gloss.edge.bundle import ITEM_TEXT
from gloss.edge.catalog import Catalog, load_catalog
from gloss.edge.embed import MODEL_NAME, OnnxEmbedder
from gloss.edge.evaluate import EvalCase, cases_from_queries_file, cases_last_item, rank_cases
from gloss.edge.files import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic
from gloss.edge.fusion import CoPurchase, FusionConfig, FusionRanker
from gloss.edge.index import INDEX_DTYPES, ItemIndex
from gloss.edge.logs import setup_logging
from gloss.edge.metrics import ndcg_at_k, rank_of
from gloss.edge.recommend import RetrievalConfig
from gloss.edge.splits import Example, Split, load_sequences, make_examples, validation_users
from gloss.edge.vectors import VectorStore, open_vectors
from gloss.export.copurchase import DEFAULT_DECAY, DEFAULT_WINDOW, build_copurchase_file

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
logger = logging.getLogger("benchmarks.footprint")
K = 5
MB = 2**20  # MiB: the unit of the issue's "247 MB" bundle (138 + 86 + 21 MiB of parts)
BOOTSTRAP = 2000
METHODS = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_0", "IQ4_NL")
BEAM_REFERENCE = "Q8_0"  # the default
REFERENCE = "F16, f32 KV"  # teacher-forced reference: the exported weights before quantization, exact KV cache
ADAPTER = "smollm2-135m-beauty"


# --- statistics ------------------------------------------------------------------------------------------


def per_user(ranks: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """Per-user hit@K and NDCG@K."""
    hits = np.array([r is not None and r <= K for r in ranks], dtype=np.float64)
    return hits, np.array([ndcg_at_k(r, K) for r in ranks])


def paired(ref: np.ndarray, var: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Mean difference var - ref with a 95% paired-bootstrap interval over users."""
    diff = var - ref
    idx = np.random.default_rng(seed).integers(0, len(diff), size=(BOOTSTRAP, len(diff)))
    low, high = np.percentile(diff[idx].mean(axis=1), [2.5, 97.5])
    return {"delta": float(diff.mean()), "ci95": [float(low), float(high)], "within_noise": bool(low <= 0 <= high)}


def compare(ref: Sequence[int | None], var: Sequence[int | None]) -> dict[str, Any]:
    """Recall@K and NDCG@K of a variant against its reference on the same users."""
    (ref_hits, ref_ndcg), (hits, ndcg) = per_user(ref), per_user(var)
    return {
        "users": len(var), "recall@5": float(hits.mean()), "ndcg@5": float(ndcg.mean()),
        "recall_vs_ref": paired(ref_hits, hits), "ndcg_vs_ref": paired(ref_ndcg, ndcg, seed=1),
        "hit_only_ref": int(((ref_hits == 1) & (hits == 0)).sum()),
        "hit_only_variant": int(((ref_hits == 0) & (hits == 1)).sum()),
    }  # fmt: skip


# --- part 1: embedder x index dtype -------------------------------------------------------------------------


def cached_embed(embedder: OnnxEmbedder, texts: Sequence[str], path: Path) -> np.ndarray:
    """``embedder.embed(texts)``, cached at ``path`` (.npy) together with the texts it embedded."""
    texts_path = path.with_suffix(".json")
    if path.is_file() and texts_path.is_file() and json.loads(texts_path.read_text(encoding="utf-8")) == list(texts):
        return np.load(path)
    vectors = embedder.embed(list(texts), show_progress=False)
    np.save(path, vectors)
    texts_path.write_text(json.dumps(list(texts)), encoding="utf-8")
    return vectors


class MemoEmbedder:
    """An embedder that answers from precomputed vectors (the same texts are embedded once per embedder)."""

    def __init__(self, embedder: OnnxEmbedder, texts: Sequence[str], cache_path: Path) -> None:
        self.dim = embedder.dim
        self._rows = {text: i for i, text in enumerate(texts)}
        self._vectors = cached_embed(embedder, texts, cache_path)

    def embed(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool | None = None) -> np.ndarray:
        return self._vectors[[self._rows[t] for t in texts]]


def export_embedders(work: Path) -> dict[str, Path]:
    """all-MiniLM-L6-v2 exported as fp32 and as int8 (cached in ``work``)."""
    from gloss.export.embedder import export_embedder

    out = {}
    for name in ("fp32", "int8"):
        folder = work / f"embedder-{name}"
        if not (folder / MODEL_NAME).is_file():
            export_embedder(folder, int8=name == "int8")
        out[name] = folder
    return out


def cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """Row cosines of two L2-normalised matrices: min, 1st percentile, mean."""
    cos = np.sum(a * b, axis=1)
    return {"min": float(cos.min()), "p01": float(np.percentile(cos, 1)), "mean": float(cos.mean())}


def rank_all(cases: list[EvalCase], catalog: Catalog, embedder: Any, index: ItemIndex,
             config: RetrievalConfig, fusion: FusionRanker | None) -> list[int | None]:
    """Rank of each case's target (None if not in the list)."""
    ranked = rank_cases(cases, catalog, embedder, index, config, show_progress=False, fusion=fusion)
    return [rank_of([catalog.asins[p] for p in positions], case.target) for case, positions in ranked]


def validation_examples(data_dir: Path) -> list[Example]:
    """The paper's validation examples (seeded 5% of users, history = all but the last two items)."""
    sequences = load_sequences(data_dir / "sequences.jsonl.gz")
    held = validation_users([s.user for s in sequences])
    return list(make_examples(sequences, Split.validation, held))


def copurchase_holdout2(data_dir: Path, catalog: Catalog, work: Path) -> CoPurchase:
    """Co-purchase statistics without the validation and test items (holdout 2)."""
    path = work / "copurchase-holdout2.npz"
    if not path.is_file():
        build_copurchase_file(data_dir / "sequences.jsonl.gz", catalog, path, 2, DEFAULT_WINDOW, DEFAULT_DECAY)
    return CoPurchase.load(path)


def retrieval_tasks(
    catalog: Catalog, data_dir: Path, queries_path: Path
) -> dict[str, tuple[list[EvalCase], Any, bool]]:
    """Task name -> (cases, retrieval config, with fusion)."""
    examples = validation_examples(data_dir)
    llama = cases_from_queries_file(queries_path, catalog)
    last = RetrievalConfig(k=10, per_query=10)  # gloss-edge eval's last-item rule
    paper = RetrievalConfig(k=10, per_query=1)
    return {
        "last-item": (cases_last_item(examples, catalog), last, False),
        "fusion, history only": (cases_last_item(examples, catalog, with_query=False), paper, True),
        "Llama-3.2-1B queries, paper rule": (llama, paper, False),
        "Llama-3.2-1B queries + fusion": (llama, paper, True),
    }


def retrieval_part(data_dir: Path, queries_path: Path, work: Path) -> dict[str, Any]:
    """Part 1: every embedder x index dtype on every task, compared with fp32 x f32."""
    catalog = load_catalog(data_dir / "items.jsonl.gz")
    copurchase = copurchase_holdout2(data_dir, catalog, work)
    tasks = retrieval_tasks(catalog, data_dir, queries_path)
    query_texts = sorted({q for cases, _, _ in tasks.values() for case in cases for q in case.queries})
    rows, ranks, sizes, vectors_of, queries_of = [], {}, {}, {}, {}
    for emb_name, folder in export_embedders(work).items():
        embedder = OnnxEmbedder.load(folder)
        item_texts = [ITEM_TEXT.format(title=title) for title in catalog.titles]  # as embed_catalog embeds them
        vectors_of[emb_name] = cached_embed(embedder, item_texts, work / f"vectors-{emb_name}.npy")
        memo = MemoEmbedder(embedder, query_texts, work / f"queries-vectors-{emb_name}.npy")
        queries_of[emb_name] = memo._vectors
        sizes[f"embedder {emb_name}"] = (folder / MODEL_NAME).stat().st_size
        for dtype in INDEX_DTYPES:
            section = ItemIndex.build(vectors_of[emb_name], show_progress=False, dtype=dtype).save(
                work, f"index-{emb_name}-{dtype}")
            sizes[f"index {emb_name} {dtype}"] = (work / section["file"]).stat().st_size
            index = ItemIndex.open(work, section)
            fusion = FusionRanker(catalog, index, copurchase, FusionConfig())
            for task, (cases, config, use_fusion) in tasks.items():
                ranks[(emb_name, dtype, task)] = rank_all(cases, catalog, memo, index, config,
                                                          fusion if use_fusion else None)
                ref = ranks[("fp32", "f32", task)]
                rows.append({"embedder": emb_name, "index": dtype, "task": task,
                             **compare(ref, ranks[(emb_name, dtype, task)])})
                logger.info("%s", rows[-1])
    return {
        "rows": rows, "file_bytes": sizes, "catalog_titles": len(catalog), "query_titles": len(query_texts),
        "int8_vs_fp32_cosine": {"catalogue titles": cosines(vectors_of["fp32"], vectors_of["int8"]),
                                "Llama-3.2-1B queries": cosines(queries_of["fp32"], queries_of["int8"])},
    }  # fmt: skip


# --- part 2: GGUF quantization ------------------------------------------------------------------------------


def build_ggufs(work: Path, methods: Sequence[str]) -> dict[str, Path]:
    """The shipped adapter merged and written as F16 GGUF, then quantized (all cached in ``work``)."""
    from gloss.export.generator import resolve_adapter
    from gloss.export.gguf import write_gguf
    from gloss.export.merge import merge_adapter
    from gloss.export.quantize import quantize_gguf

    folder = work / "gguf"
    paths = {"F16": folder / "model-F16.gguf"}
    if not paths["F16"].is_file():
        source = resolve_adapter(ADAPTER)
        merged = merge_adapter(source.adapter_dir, folder / "merged", base_model=source.base_model)
        write_gguf(merged, paths["F16"], dtype="f16")
    for method in methods:
        paths[method] = folder / f"model-{method}.gguf"
        if not paths[method].is_file():
            quantize_gguf(paths["F16"], paths[method], method=method)  # type: ignore[arg-type]
    return paths


def teacher_forced(
    gguf: Path, texts: Sequence[tuple[str, str]], cache_dir: Path, kv_type: str = "f32"
) -> list[np.ndarray]:
    """Per (history JSON, target title): ``(2, positions)`` rows of the model's argmax and the log-probability
    of the true token at every position of the target title, teacher-forced through the edge's own llama.cpp
    runtime (``kv_type`` as in GenerationConfig; histories cut to fit as ``recommend`` cuts them). Cached as
    ``cache_dir/<i>.npy``, so reruns only add what is missing."""
    from gloss.edge.generation.generate import GenerationConfig, LlamaCppGenerator
    from gloss.edge.prompt import build_prompt

    cache_dir.mkdir(parents=True, exist_ok=True)
    todo = [i for i in range(len(texts)) if not (cache_dir / f"{i}.npy").is_file()]
    if todo:
        with LlamaCppGenerator.load(gguf, GenerationConfig(kv_type=kv_type)) as gen:
            for i in tqdm(todo, desc=f"teacher-forced {gguf.name}", disable=None):
                history_json, target = texts[i]
                history = json.loads(history_json)
                prompt = gen.prompt_tokens(history)
                kept = history[-gen.last_items_kept :]
                full = gen.tokenize(build_prompt(kept, target))
                if full[: len(prompt)] != prompt:
                    raise ValueError(f"prompt {i} is not a token prefix of prompt + target title")
                truth = np.asarray(full[len(prompt) :])
                log_probs = gen.completion_log_probs(prompt, truth.tolist())
                rows = np.stack([log_probs.argmax(axis=1), log_probs[np.arange(truth.size), truth]])
                np.save(cache_dir / f".{i}.tmp.npy", rows)
                (cache_dir / f".{i}.tmp.npy").rename(cache_dir / f"{i}.npy")
    return [np.load(cache_dir / f"{i}.npy") for i in range(len(texts))]


def generate_round_robin(paths: dict[str, Path], examples: Sequence[Example], catalog: Catalog,
                         work: Path) -> dict[str, list[EvalCase]]:
    """5-beam queries of every GGUF for each example, one user at a time across the models so that an
    interrupted run leaves the same users done for all; rows are appended to ``queries-<model>.jsonl`` and a
    rerun resumes after the users already there."""
    from gloss.edge.generation.generate import LlamaCppGenerator

    files = {name: work / f"queries-{name}.jsonl" for name in paths}
    done = min(sum(1 for _ in read_jsonl(f)) if f.is_file() else 0 for f in files.values())
    if done < len(examples):
        generators = {name: LlamaCppGenerator.load(path) for name, path in paths.items()}
        for number, ex in enumerate(examples[done:], start=done):
            for name, generator in generators.items():
                rows = list(read_jsonl(files[name]))[:number] if files[name].is_file() else []
                generated = generator.generate(catalog.titles_of(ex.history))
                rows.append({"user": ex.user, "history": list(ex.history), "target": ex.target,
                             "queries": [g.title for g in generated]})  # fmt: skip
                write_jsonl_atomic(files[name], rows)
            logger.info("generated queries for user %d/%d", number + 1, len(examples))
        for generator in generators.values():
            generator.close()
    return {name: cases_from_queries_file(f, catalog)[: len(examples)] for name, f in files.items()}


def query_overlap(ref: list[EvalCase], var: list[EvalCase]) -> dict[str, float]:
    """Share of users with the same best query as the reference, and mean share of queries in common."""
    same = [a.queries[:1] == b.queries[:1] for a, b in zip(ref, var, strict=True)]
    common = [len(set(a.queries) & set(b.queries)) / max(1, len(set(a.queries))) for a, b in zip(ref, var, strict=True)]
    return {"same_best_query": float(np.mean(same)), "queries_in_common": float(np.mean(common))}


def generator_part(data_dir: Path, work: Path, num_prompts: int, num_users: int) -> dict[str, Any]:
    """Part 2: size, top-1 agreement and true-title NLL against F16, validation Recall@5 of each GGUF type."""
    catalog = load_catalog(data_dir / "items.jsonl.gz")
    examples = validation_examples(data_dir)
    paths = build_ggufs(work, METHODS)  # F16 first: the reference
    texts = [(json.dumps(catalog.titles_of(ex.history)), catalog.title(ex.target)) for ex in examples[:num_prompts]]
    # Teacher-forced variants: (GGUF, KV cache type); the reference is F16 weights with an f32 KV cache.
    variants = {REFERENCE: ("F16", "f32"), "F16, f16 KV": ("F16", "f16"), "Q8_0, f16 KV": ("Q8_0", "f16"),
                **{name: (name, "f32") for name in METHODS}}  # fmt: skip
    forced = {name: teacher_forced(paths[gguf], texts, work / "teacher" / name.replace(", ", "-").replace(" ", "-"),
                                   kv_type)
              for name, (gguf, kv_type) in variants.items()}  # fmt: skip
    sample = examples[:num_users]
    # Beams only for the quantized files (F16 decodes slowest on CPU); their reference is Q8_0, the default.
    cases = generate_round_robin({name: paths[name] for name in METHODS}, sample, catalog, work)
    embedder = OnnxEmbedder.load(export_embedders(work)["fp32"])
    index = ItemIndex.create(VectorStore([open_vectors(work / "index-fp32-f32" / "vectors.npy")]))  # retrieval part
    fusion = FusionRanker(catalog, index, copurchase_holdout2(data_dir, catalog, work), FusionConfig())
    paper = RetrievalConfig(k=10, per_query=1)
    ranks = {(name, rule): rank_all(cases[name], catalog, embedder, index, paper, fusion if rule == "fusion" else None)
             for name in METHODS for rule in ("paper rule", "fusion")}  # fmt: skip
    rows = []
    ref_nll = np.array([-f[1].mean() for f in forced[REFERENCE]])
    for name, (gguf, kv_type) in variants.items():
        same = np.concatenate([a[0] == b[0] for a, b in zip(forced[REFERENCE], forced[name], strict=True)])
        nll = np.array([-f[1].mean() for f in forced[name]])  # per prompt: mean NLL of the true title's tokens
        row = {"gguf": name, "bytes": paths[gguf].stat().st_size, "kv_type": kv_type,
               "top1_agreement": float(same.mean()), "positions": int(same.size), "target_nll": float(nll.mean()),
               "target_nll_vs_f16": paired(ref_nll, nll)}  # fmt: skip
        if name in cases:
            row.update(query_overlap(cases[BEAM_REFERENCE], cases[name]))
            for rule in ("paper rule", "fusion"):
                row[rule] = compare(ranks[(BEAM_REFERENCE, rule)], ranks[(name, rule)])
        rows.append(row)
        logger.info("%s", row)
    return {"rows": rows, "num_prompts": len(texts), "num_users": len(sample),
            "agreement_reference": REFERENCE, "beam_reference": BEAM_REFERENCE}  # fmt: skip


# --- report ----------------------------------------------------------------------------------------------


def _delta(stats: dict[str, Any]) -> str:
    low, high = stats["ci95"]
    return f"{stats['delta']:+.4f} [{low:+.4f}, {high:+.4f}]"


def _retrieval_md(part: dict[str, Any]) -> list[str]:
    lines = ["## Embedder x index dtype (reference: fp32 embedder, f32 index)", ""]
    if "command" in part:
        lines += [f"Measured by `{part['command']}`.", ""]
    lines += ["| task | embedder | index | users | Recall@5 | NDCG@5 | dRecall@5 [95% CI] | dNDCG@5 [95% CI] | "
              "hit only ref / only variant |", "|---|---|---|---|---|---|---|---|---|"]
    for row in part["rows"]:
        lines.append(f"| {row['task']} | {row['embedder']} | {row['index']} | {row['users']} | {row['recall@5']:.4f} "
                     f"| {row['ndcg@5']:.4f} | {_delta(row['recall_vs_ref'])} | {_delta(row['ndcg_vs_ref'])} | "
                     f"{row['hit_only_ref']} / {row['hit_only_variant']} |")
    lines += ["", "| file | MB |", "|---|---|"]
    lines += [f"| {name} | {size / MB:.1f} |" for name, size in part["file_bytes"].items()]
    lines += ["", "int8 vs fp32 embedder, cosine of the same text's vectors:", ""]
    lines += [f"- {name}: min {c['min']:.4f}, 1st percentile {c['p01']:.4f}, mean {c['mean']:.4f}"
              for name, c in part["int8_vs_fp32_cosine"].items()]
    return lines


def _generator_md(part: dict[str, Any]) -> list[str]:
    ref = part["beam_reference"]
    lines = [f"## Generator GGUF ({part['num_prompts']} validation prompts teacher-forced against {REFERENCE}; 5-beam "
             f"queries of the first {part['num_users']} validation users against {ref})", "",
             f"| GGUF | MB | top-1 agreement with {REFERENCE} | true-title NLL/token (d vs {REFERENCE} [95% CI]) | "
             f"same best query as {ref} | queries in common with {ref} | "
             f"Recall@5 paper rule (d vs {ref} [95% CI]) | Recall@5 fusion (d vs {ref} [95% CI]) |",
             "|---|---|---|---|---|---|---|---|"]
    for row in part["rows"]:
        line = (f"| {row['gguf']} | {row['bytes'] / MB:.1f} | {row['top1_agreement']:.3f} "
                f"({row['positions']} tokens) | "
                f"{row['target_nll']:.3f} ({_delta(row['target_nll_vs_f16'])}) | ")
        if "paper rule" not in row:
            lines.append(line + "- | - | - | - |")
            continue
        paper, fusion = row["paper rule"], row["fusion"]
        lines.append(line + f"{row['same_best_query']:.2f} | {row['queries_in_common']:.2f} | "
                     f"{paper['recall@5']:.3f} ({_delta(paper['recall_vs_ref'])}) | "
                     f"{fusion['recall@5']:.3f} ({_delta(fusion['recall_vs_ref'])}) |")
    return lines


def _footprint_md(result: dict[str, Any]) -> list[str]:
    lines = ["## Bundle size and peak RSS", "",
             "| bundle | MB on disk | recommend peak RSS MB (LLM) | recommend --last-item | "
             "serve peak RSS MB | serve requests ok |", "|---|---|---|---|---|---|"]
    for name, b in result["bundles"].items():
        lines.append(f"| {name} | {b['bundle_mb']:.1f} | {b['recommend_rss_mb']:.0f} | "
                     f"{b['recommend_last_item']['peak_rss_mb']:.0f} | {b['serve_rss_mb']:.0f} | "
                     f"{b['serve']['ok']}/{b['serve']['requests']} |")
    for name, b in result["bundles"].items():
        parts = ", ".join(f"{k} {v:.1f}" for k, v in b["parts_mb"].items())
        mapping = ", ".join(f"{k} {v:.0f}" for k, v in b["serve"]["rss_by_mapping_mb"].items())
        steps = ", ".join(f"{k} {v['VmRSS']:.0f}" for k, v in b["rss_steps_mb"].items())
        lines += ["", f"- {name}: files (MB): {parts}", f"- {name}: server RSS by mapping (MB): {mapping}",
                  f"- {name}: RSS after each load step of one process (MB): {steps}"]
    return lines


def _noise_summary(rows: list[dict[str, Any]], embedder: str, index: str) -> str:
    """Whether every task's Recall@5 and NDCG@5 difference to the reference has a 95% interval containing 0."""
    mine = [r for r in rows if r["embedder"] == embedder and r["index"] == index]
    inside = all(r["recall_vs_ref"]["within_noise"] and r["ndcg_vs_ref"]["within_noise"] for r in mine)
    moved = sum(r["hit_only_ref"] + r["hit_only_variant"] for r in mine)
    return (f"{embedder} embedder + {index} index: {'within' if inside else 'NOT within'} noise on all "
            f"{len(mine)} tasks ({moved} user hits changed in total)")


def render(result: dict[str, Any]) -> str:
    """The JSON result as Markdown."""
    lines = ["# Footprint: bundle size and RSS against quality (Beauty, validation users)", "",
             f"Command: `{result['command']}`  ", f"Machine: {result['machine']}", ""]
    if "bundle_mb" in result:
        default = result["bundles"]["default"]
        lines += [f"Default bundle: **{result['bundle_mb']:.1f} MB** ({default['bundle_bytes'] / 1e6:.1f} x 10^6 "
                  "bytes), "
                  f"recommend peak RSS **{result['recommend_rss_mb']:.0f} MB**, server peak RSS "
                  f"**{result['serve_rss_mb']:.0f} MB**. MB = MiB (2^20 bytes) throughout, the unit of the issue's "
                  "247 MB.", ""]
    if "retrieval" in result:
        rows = result["retrieval"]["rows"]
        lines += ["Noise: per variant and task, the paired difference to fp32 + f32 on the same users with a 95% "
                  "bootstrap interval (2000 resamples) and the users hit only by one side. "
                  + "; ".join(_noise_summary(rows, e, i) for e, i in
                              (("fp32", "f16"), ("fp32", "i8"), ("int8", "f32"), ("int8", "f16"), ("int8", "i8")))
                  + ".", ""]
        lines += _retrieval_md(result["retrieval"]) + [""]
    if "generator" in result:
        lines += _generator_md(result["generator"]) + [""]
    if "bundles" in result:
        lines += _footprint_md(result) + [""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--work-dir", type=Path, default=Path("/work/scratch/footprint/work"))
    parser.add_argument("--parts", default="retrieval,generator,footprint")
    parser.add_argument("--num-prompts", type=int, default=30)
    parser.add_argument("--num-users", type=int, default=100)
    parser.add_argument("--serve-requests", type=int, default=8)
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    parser.add_argument("--retrieval-from", type=Path, help="Take the retrieval part from an earlier result of "
                        "this script (e.g. a --parts retrieval run) instead of measuring it again.")
    args = parser.parse_args()
    setup_logging(False)
    logger.setLevel(logging.INFO)
    data_dir = args.data_root / "amazon2014" / "beauty"
    queries = args.data_root / "gloss_queries" / "beauty_validation_llama-3.2-1b.jsonl.gz"
    args.work_dir.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    result: dict[str, Any] = {
        "command": " ".join(["nice -n 10 python benchmarks/footprint.py", *sys.argv[1:]]),
        "machine": f"{platform.node() or 'vm'} {platform.machine()}, 2 cores, shared with other jobs",
        "dataset": "beauty", "split": "validation (paper: seeded 5% of users)",
    }  # fmt: skip
    start = time.perf_counter()
    if args.retrieval_from is not None:
        earlier = json.loads(args.retrieval_from.read_text(encoding="utf-8"))
        result["retrieval"] = {**earlier["retrieval"], "command": earlier["command"]}
    elif "retrieval" in parts:
        result["retrieval"] = retrieval_part(data_dir, queries, args.work_dir)
    if "generator" in parts:
        result["generator"] = generator_part(data_dir, args.work_dir, args.num_prompts, args.num_users)
    if "footprint" in parts:
        from footprint_rss import footprint_part  # benchmarks/footprint_rss.py

        result.update(footprint_part(data_dir, args.work_dir, validation_examples(data_dir), args.serve_requests))
    result["seconds"] = time.perf_counter() - start
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out_dir / "footprint.json", result)
    write_text_atomic(args.out_dir / "footprint.md", render(result))


if __name__ == "__main__":
    main()
