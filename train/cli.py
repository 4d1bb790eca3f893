"""`gloss-train`: prepare data, QLoRA fine-tune, generate queries for evaluation (GPU box)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from gloss.edge.cli_errors import OneLineErrors
from gloss.edge.errors import user_errors
from gloss.edge.logs import setup_logging
from gloss.edge.splits import Split

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, cls=OneLineErrors)


class Quant(str, Enum):
    """Base weights while fine-tuning (``fit --quant``)."""

    nf4 = "nf4"
    none = "none"


class Objective(str, Enum):
    """Training targets per user (``fit --objective``)."""

    last = "last"
    all = "all"
    dense = "dense"


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Prepare the paper's data and fine-tune a LLaMA-architecture model on it."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---


# --- gloss-train prepare | fit | generate (training stage) ---




@app.command()
def prepare(
    out_dir: Annotated[Path, typer.Argument(file_okay=False, help="Output folder.")],
    items_path: Annotated[Path | None, typer.Option("--items", help="JSONL(.gz) {asin, title}.")] = None,
    sequences_path: Annotated[
        Path | None, typer.Option("--sequences", help="Histories JSONL(.gz): {user, items} in time order.")
    ] = None,
    reviews_path: Annotated[Path | None, typer.Option("--reviews", help="reviews_<Cat>_5.json.gz")] = None,
    meta_path: Annotated[Path | None, typer.Option("--meta", help="Raw meta_<Cat>.json(.gz).")] = None,
    category: Annotated[
        str | None, typer.Option(help="2014 category (Beauty, Toys_and_Games, ... or beauty/toys/sports).")
    ] = None,
    download: Annotated[bool, typer.Option(help="Fetch the category's raw files into OUT_DIR/raw.")] = False,
    validation_fraction: Annotated[float, typer.Option(help="Validation user share.")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the validation user draw.")] = 42,
    max_title_words: Annotated[int, typer.Option(help="Cut titles to this many words.")] = 25,
    drop_unknown: Annotated[
        bool, typer.Option(help="Drop history items missing from --items instead of failing.")
    ] = False,
) -> None:
    """Build the catalogue, sequences and the paper's train/validation/test splits."""
    from gloss.train.data import prepare_data

    with user_errors():
        done = prepare_data(out_dir, items_path, sequences_path, reviews_path, meta_path, category, download,
                            validation_fraction, seed, max_title_words, drop_unknown)
    typer.echo(str(done))


@app.command()
def fit(
    config_path: Annotated[Path | None, typer.Option("--config", help="YAML of TrainConfig fields.")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="Output of `gloss-train prepare`.")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="Run folder.")] = None,
    base_model: Annotated[str | None, typer.Option(help="HF folder, .gguf file or hub id.")] = None,
    lora_r: Annotated[int | None, typer.Option(help="LoRA rank.")] = None,
    learning_rate: Annotated[float | None, typer.Option(help="Peak learning rate.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs.")] = None,
    max_steps: Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")] = None,
    per_device_batch_size: Annotated[int | None, typer.Option(help="Batch size per device.")] = None,
    max_seq_length: Annotated[
        int | None, typer.Option(help="Longest training text in tokens (oldest history items are cut).")
    ] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Gradient accumulation steps.")] = None,
    load_in_4bit: Annotated[
        bool | None, typer.Option("--load-in-4bit/--no-load-in-4bit", help="Legacy: = --quant nf4/none.")
    ] = None,
    quant: Annotated[
        Quant | None, typer.Option(help="nf4 = QLoRA (paper, default); none = LoRA on bf16/fp32 weights.")
    ] = None,
    max_minutes: Annotated[
        float | None, typer.Option(help="Time box: plan the steps from measured throughput to fit.")
    ] = None,
    packing: Annotated[
        bool | None, typer.Option("--packing/--no-packing", help="Padding-free packed batches (default on).")
    ] = None,
    pack_length: Annotated[
        int | None, typer.Option(help="Longest packed row in tokens (default: --max-seq-length).")
    ] = None,
    chunked_loss: Annotated[
        bool | None,
        typer.Option("--chunked-loss/--no-chunked-loss", help="Logits only at label positions (default on)."),
    ] = None,
    objective: Annotated[
        Objective | None,
        typer.Option(help="last = paper (one example per user); all = every history item, one example each; "
                     "dense = every history item, one text per user."),
    ] = None,
    init_adapter: Annotated[
        str | None,
        typer.Option(help="Continue this adapter (shipped name, PEFT folder or run folder) instead of fresh LoRA."),
    ] = None,
    resume: Annotated[bool, typer.Option(help="Continue from the last checkpoint in OUT_DIR.")] = False,
) -> None:
    """LoRA/QLoRA fine-tune a LLaMA-architecture model (flag > --config YAML > paper default)."""
    from gloss.train.config import load_config
    from gloss.train.data import read_manifest

    overrides = {
        "data_dir": data_dir, "out_dir": out_dir, "base_model": base_model, "lora_r": lora_r,
        "learning_rate": learning_rate, "epochs": epochs, "max_steps": max_steps,
        "per_device_batch_size": per_device_batch_size, "grad_accum": grad_accum, "max_seq_length": max_seq_length,
        "load_in_4bit": load_in_4bit, "quant": quant.value if quant else None, "max_minutes": max_minutes,
        "packing": packing, "pack_length": pack_length, "chunked_loss": chunked_loss,
        "objective": objective.value if objective else None, "init_adapter": init_adapter,
        "resume": True if resume else None,
    }
    with user_errors():
        config = load_config(config_path, overrides)
        read_manifest(config.data_dir)  # fail fast, before importing torch and loading the model
        from gloss.train.loop import train

        done = train(config)
    typer.echo(str(done))


@app.command()
def generate(
    run_dir: Annotated[Path, typer.Argument(help="A `gloss-train fit` run folder, or a HF/.gguf model.")],
    out_path: Annotated[Path, typer.Option("--out", help="Queries JSONL.")],
    data_dir: Annotated[Path | None, typer.Option(help="Default: the run's.")] = None,
    split: Annotated[Split, typer.Option(help="Which split's users.")] = Split.validation,
    num_beams: Annotated[int, typer.Option(min=1, help="Beams = queries per user.")] = 5,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Generated tokens per query.")] = 50,
    batch_size: Annotated[int, typer.Option(min=1, help="Users per generate call.")] = 8,
    max_users: Annotated[int | None, typer.Option(min=1, help="Only the first N users.")] = None,
    constrained: Annotated[bool, typer.Option("--constrained/--free", help="Constrain beams to the catalogue's "
                                              "titles (a token trie); --free: the paper's free beams.")] = False,
    trie_path: Annotated[Path | None, typer.Option("--trie", help="Constrain with this saved trie (e.g. a "
                                                   "bundle's generator/trie.bin) instead of building one.")] = None,
) -> None:
    """Write 5-beam queries per user in the format `gloss-edge eval --queries` scores."""
    with user_errors():
        from gloss.train.generate import generate_queries

        done = generate_queries(run_dir, data_dir, split, out_path, num_beams, max_new_tokens, batch_size,
                                max_users, constrained=constrained, trie_path=trie_path)
    typer.echo(str(done))


if __name__ == "__main__":
    app()
