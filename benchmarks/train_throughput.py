"""Training throughput on this machine: the old `gloss-train fit` path vs the new default, side by side.

Paths (the same batches of real Beauty examples, the same model, LoRA on all projections, AdamW steps):
- ``old``: today's default before issue 8: NF4 (if bitsandbytes runs 4-bit here, else none; recorded), gradient
  checkpointing as ``prepare_model_for_kbit_training`` turns it on for NF4, right-padded batches, full logits;
- ``new``: the new default: NF4 as well, packed batches, logits only at label positions (chunked);
- ``new_none``: ``--quant none`` with packing and chunked loss (what the GPU slot trains SmolLM2-135M with).

Tokens/s counts non-padding tokens (the examples' own lengths) over the timed steps; the first step of each
path is an untimed warm-up. The model is a random LLaMA with SmolLM2's real tokenizer (vocabulary 49,152) and
the width/depth given on the command line: the real SmolLM2-135M takes ~1 min per step on 2 busy cores. With a
small body the LM head is a larger share of the work than in SmolLM2-135M, so this CPU ratio is not the GPU ratio.

Writes ``benchmarks/results/train_slot.{json,md}``: the GPU keys of issue 8 stay null with the reason unless
``--gpu-json`` gives the slot's own results (``benchmarks/gpu/slot_report.py``).

Usage::

    nice -n 10 python benchmarks/train_throughput.py --beauty-dir /work/shared/data/amazon2014/beauty
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import random
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gloss.edge.files import read_jsonl, write_json_atomic, write_jsonl_atomic, write_text_atomic

logger = logging.getLogger("benchmarks.train_throughput")
RESULTS = Path(__file__).parent / "results"
PATHS = {
    "old": {"quant": "nf4", "packing": False, "chunked_loss": False},
    "new": {"quant": "nf4", "packing": True, "chunked_loss": True},
    "new_none": {"quant": "none", "packing": True, "chunked_loss": True},
}
GPU_KEYS = ("device", "baseline_tokens_per_s", "tokens_per_s", "epochs", "converged", "validation_loss_curve")
NO_GPU = ("no GPU in this session: the slot scripts (benchmarks/gpu/stage.sh, device_run.sh call1|stash|call2) "
          "were built and dry-run on CPU only (benchmarks/gpu/dry_run.sh); these figures need one 15-minute GPU slot")


def nf4_works() -> bool:
    """Whether bitsandbytes quantizes and multiplies in 4-bit on this machine's CPU."""
    try:
        import bitsandbytes as bnb
        import torch

        w, x = torch.randn(64, 64), torch.randn(2, 64)
        q, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
        return bool(torch.isfinite(bnb.matmul_4bit(x, q.t(), quant_state=state)).all())
    except (ImportError, RuntimeError, NotImplementedError, AttributeError) as exc:
        logger.warning("bitsandbytes 4-bit does not run here (%s): old/new paths use --quant none", exc)
        return False


def make_model(out: Path, hidden: int, layers: int) -> Path:
    """A random LLaMA of the given width/depth with SmolLM2's tokenizer, saved as a HF folder."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from gloss.export.hf_models import default_base_gguf

    gguf = default_base_gguf()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                      num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                      num_key_value_heads=max(hidden // 192, 1), max_position_embeddings=2048,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def prepare_subset(beauty_dir: Path, num_users: int, out: Path) -> Path:
    """`prepare_data` on the first ``num_users`` Beauty users."""
    from gloss.train.data import prepare_data

    rows = [r for _, r in zip(range(num_users), read_jsonl(beauty_dir / "sequences.jsonl.gz"), strict=False)]
    write_jsonl_atomic(out / "seq.jsonl.gz", rows)
    return prepare_data(out / "data", items_path=beauty_dir / "items.jsonl.gz", sequences_path=out / "seq.jsonl.gz")


def measure_path(name: str, flags: dict[str, Any], ns: argparse.Namespace, data_dir: Path, model_dir: Path,
                 work: Path) -> dict[str, Any]:
    """Tokens/s of ``ns.steps`` timed AdamW steps of one path on the same seeded batches."""
    import torch

    from gloss.edge.splits import Split
    from gloss.train.config import TrainConfig
    from gloss.train.loop import encode_example, load_split_titles, make_collator
    from gloss.train.loss import install_completion_loss
    from gloss.train.model import add_lora, load_base_model, token_policy, use_bf16

    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = TrainConfig(data_dir=data_dir, out_dir=work / name, base_model=str(model_dir),
                         per_device_batch_size=ns.batch_size, max_seq_length=ns.max_seq_length, **flags)
    torch.manual_seed(0)
    model, tokenizer = load_base_model(config, str(model_dir))
    policy = token_policy(tokenizer)
    rows = load_split_titles(data_dir, Split.train)[:ns.num_examples]  # tokenising all 22k users costs ~30 s
    train_set = [encode_example(tokenizer, policy, h, t, config.max_seq_length) for _, h, t in rows]
    collate = make_collator(config, policy.pad_token_id, train_set)
    model = add_lora(model, config)
    if config.chunked_loss:
        install_completion_loss(model, config.loss_chunk_size)
    if not getattr(model, "is_loaded_in_4bit", False):
        model.to(device)
    model.config.use_cache = False
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate)
    rng = random.Random(0)
    batches = [rng.sample(train_set, ns.batch_size) for _ in range(ns.steps + 1)]
    seconds, tokens = 0.0, 0
    for step, examples in enumerate(batches):
        inputs = {k: v.to(device) for k, v in collate(examples).items()}
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16(config)):  # as Trainer does
            loss = model(**inputs, num_items_in_batch=(inputs["labels"] != -100).sum()).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step:  # step 0 warms up
            seconds += time.perf_counter() - start
            tokens += sum(len(e["input_ids"]) for e in examples)
    padded = sum(ns.batch_size * max(len(e["input_ids"]) for e in b) for b in batches[1:])
    width = sum(collate(b)["input_ids"].numel() for b in batches[1:])
    result = {**flags, "tokens_per_s": round(tokens / seconds, 1), "seconds": round(seconds, 2),
              "tokens": tokens, "tensor_tokens": width, "padded_tokens": padded}
    logger.info("%s: %s", name, result)
    return result


def write_results(cpu: dict[str, Any], gpu: dict[str, Any] | None, out_dir: Path = RESULTS) -> None:
    """``train_slot.json`` + ``.md`` in ``out_dir``: GPU keys from the slot (or null + why), the CPU block."""
    out: dict[str, Any] = {key: None for key in GPU_KEYS}
    out["validation"] = {"recall@5": None, "ndcg@5": None}
    out["validation_seen_removed"] = {"recall@5": None, "ndcg@5": None}
    out["missing"] = {"reason": NO_GPU, "keys": [*GPU_KEYS, "validation", "validation_seen_removed"]}
    out["goals"] = {"throughput_5x_nf4_on_gpu": "unmeasured", "converged_in_one_slot": "unmeasured",
                    "beauty_validation_recall@5_ge_.0286": "unmeasured",
                    "whole_history_objective_helps": "unmeasured"}
    if gpu is not None:
        out.update(gpu)
    out["cpu"] = cpu
    write_json_atomic(out_dir / "train_slot.json", out)
    rows = [f"| {name} | {r['quant']} | {r['packing']} | {r['chunked_loss']} | {r['tokens_per_s']:.0f} | "
            f"{r['tokens_per_s'] / cpu['paths']['old']['tokens_per_s']:.2f}x |" for name, r in cpu["paths"].items()]
    gpu_lines = [f"- `{k}`: {json.dumps(out[k])}" for k in (*GPU_KEYS, "validation", "validation_seen_removed")]
    md = [
        "# Training throughput and the GPU slot (issue 8)", "",
        f"Command: `{cpu['command']}`", "",
        f"Machine: {cpu['machine']}. Model: {cpu['model']}. {cpu['steps']} timed steps of {cpu['batch_size']} "
        f"Beauty examples per path (max length {cpu['max_seq_length']}), after one warm-up step.", "",
        "## CPU: old path vs new default (measured here)", "",
        "| path | quant | packing | chunked loss | tokens/s | vs old |", "|---|---|---|---|---|---|", *rows, "",
        f"NF4 on this CPU: {cpu['nf4_on_cpu']}. Padding share of the old path's batches: "
        f"{cpu['old_padding_share']:.0%}. The LM head is a larger share of this small model's work than of "
        "SmolLM2-135M's, so the CPU ratio is not a prediction of the GPU ratio.", "",
        "## GPU slot", "", *gpu_lines, "",
        f"Missing: {out['missing']['reason'] if gpu is None else 'see the slot report'}.",
        "Goals (>= 5x the NF4 baseline on the GPU, converged in one slot, Beauty Recall@5 >= .0286, whether the "
        "whole-history objective helps): **unmeasured, not met** until the slot runs.", "",
    ]
    write_text_atomic(out_dir / "train_slot.md", "\n".join(md))


def measure_device(ns: argparse.Namespace) -> None:
    """Device mode (GPU slot): the three paths on the real base model and a prepared data set."""
    import torch

    from gloss.train.model import gguf_as_hf_dir

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        model_dir = Path(ns.base_model)
        if model_dir.suffix == ".gguf":  # convert once for all paths (bitsandbytes quantizes HF weights)
            model_dir = gguf_as_hf_dir(str(model_dir), work / "base-hf", torch.bfloat16)
        results = {}
        for name, flags in PATHS.items():
            results[name] = measure_path(name, flags, ns, ns.data_dir, model_dir, work)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    out = {"device": device, "batch_size": ns.batch_size, "steps": ns.steps, "max_seq_length": ns.max_seq_length,
           "paths": results, "command": "python " + shlex.join(sys.argv)}
    write_json_atomic(ns.json_out, out)
    print(json.dumps(out, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--beauty-dir", type=Path, default=Path("/work/shared/data/amazon2014/beauty"))
    parser.add_argument("--num-users", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--num-examples", type=int, default=2000, help="Training examples the batches come from.")
    parser.add_argument("--max-seq-length", type=int, default=512)
    parser.add_argument("--gpu-json", type=Path, default=None, help="Slot results from benchmarks/gpu/slot_report.py.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Device mode: a prepared data dir; with --base-model, writes only --json-out.")
    parser.add_argument("--base-model", default=None, help="Device mode: the real base (HF dir or .gguf).")
    parser.add_argument("--json-out", type=Path, default=None, help="Device mode: where the paths' results go.")
    ns = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if ns.data_dir is not None:
        measure_device(ns)
        return
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        data_dir = prepare_subset(ns.beauty_dir, ns.num_users, work)
        model_dir = make_model(work / "model", ns.hidden, ns.layers)
        nf4 = nf4_works()
        paths = {name: {**flags, "quant": flags["quant"] if nf4 else "none"} for name, flags in PATHS.items()}
        results = {name: measure_path(name, flags, ns, data_dir, model_dir, work) for name, flags in paths.items()}
    old = results["old"]
    cpu = {
        "machine": f"2-core x86_64 VM, no GPU, shared with other jobs ({platform.processor() or platform.machine()})",
        "command": "nice -n 10 python " + shlex.join(sys.argv),
        "model": f"random LLaMA, hidden {ns.hidden}, {ns.layers} layers, SmolLM2 tokenizer (vocab 49,152)",
        "steps": ns.steps, "batch_size": ns.batch_size, "max_seq_length": ns.max_seq_length,
        "nf4_on_cpu": nf4, "paths": results,
        "ratio_new_vs_old": round(results["new"]["tokens_per_s"] / old["tokens_per_s"], 2),
        "ratio_new_none_vs_old": round(results["new_none"]["tokens_per_s"] / old["tokens_per_s"], 2),
        "old_padding_share": round(1 - old["tokens"] / old["padded_tokens"], 3),
    }
    gpu = json.loads(ns.gpu_json.read_text()) if ns.gpu_json else None
    write_results(cpu, gpu)
    print(json.dumps(cpu, indent=2))


if __name__ == "__main__":
    main()
