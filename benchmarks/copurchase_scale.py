"""Cost of the catalogue, sequence and co-purchase stages at 200k-1M synthetic items (issue 16).

Usage:
    python benchmarks/copurchase_scale.py synth --items 1000000 --out-dir /tmp/scale-1m
    flock /tmp/gloss-heavy.lock python benchmarks/copurchase_scale.py run --data /tmp/scale-200k /tmp/scale-1m

``synth`` writes a seeded synthetic catalogue (``items.jsonl.gz``: real Amazon titles recombined, two halves of two
titles) and user sequences (``sequences.jsonl.gz``: random walks over the real next-item transitions of Beauty, Toys
and Sports, each synthetic item standing in for one real item, about 16 interactions per item, lengths drawn from the
real users'). ``run`` times each stage in its own child process and records its peak RSS (the child's ``ru_maxrss``):
parsing the catalogue, writing and opening its compact arrays, resolving histories, streaming the sequences into flat
arrays, counting the co-purchase statistics, opening them memory-mapped, and one fusion request's feature work (over a
fixed candidate list, so the index search, timed by ``benchmarks/scale.py``, is left out). Writes
``copurchase_scale.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger("benchmarks.copurchase_scale")
RESULTS = Path(__file__).parent / "results"
DATA_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon2014"
DATASETS = ("beauty", "toys", "sports")
INTERACTIONS_PER_ITEM = 16
SEED = 0
USER_CHUNK = 100_000


# -- synthetic data -----------------------------------------------------------------------------------------------


def real_data(data_root: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Real titles, the next-item transitions as CSR (indptr, successors) and the users' sequence lengths."""
    titles, succ_src, succ_dst, lengths = [], [], [], []
    for name in DATASETS:
        position: dict[str, int] = {}
        with gzip.open(data_root / name / "items.jsonl.gz", "rt", encoding="utf-8") as handle:
            for line in handle:
                row = json.loads(line)
                position[row["asin"]] = len(titles)
                titles.append(row["title"])
        with gzip.open(data_root / name / "sequences.jsonl.gz", "rt", encoding="utf-8") as handle:
            for line in handle:
                items = [position[a] for a in json.loads(line)["items"]]
                lengths.append(len(items))
                succ_src.extend(items[:-1])
                succ_dst.extend(items[1:])
    src, dst = np.array(succ_src), np.array(succ_dst)
    order = np.argsort(src, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(src, minlength=len(titles)))])
    return titles, indptr, dst[order], np.array(lengths)


def walk(
    rng: np.random.Generator, num_users: int, length: int, num_items: int, template: np.ndarray, indptr: np.ndarray,
    successors: np.ndarray, copies_ptr: np.ndarray, copies_order: np.ndarray,
) -> np.ndarray:
    """(num_users, length) random walks: from a synthetic item to a synthetic copy of a real successor."""
    walks = np.zeros((num_users, length), dtype=np.int64)
    walks[:, 0] = rng.integers(num_items, size=num_users)
    for step in range(1, length):
        current = template[walks[:, step - 1]]
        out_degree = indptr[current + 1] - indptr[current]
        pick = indptr[current] + (rng.random(num_users) * np.maximum(out_degree, 1)).astype(np.int64)
        real_next = np.where(out_degree > 0, successors[np.minimum(pick, len(successors) - 1)], -1)
        count = np.where(real_next >= 0, copies_ptr[real_next + 1] - copies_ptr[np.maximum(real_next, 0)], 0)
        copy = copies_ptr[np.maximum(real_next, 0)] + (rng.random(num_users) * np.maximum(count, 1)).astype(np.int64)
        jump = rng.integers(num_items, size=num_users)  # no successor or no synthetic copy of it: start afresh
        walks[:, step] = np.where(count > 0, copies_order[np.minimum(copy, num_items - 1)], jump)
    return walks


def synth(num_items: int, out_dir: Path, data_root: Path = DATA_ROOT, seed: int = SEED) -> None:
    """Write ``items.jsonl.gz`` and ``sequences.jsonl.gz`` of a synthetic catalogue of ``num_items`` items."""
    rng = np.random.default_rng(seed)
    titles, indptr, successors, real_lengths = real_data(data_root)
    num_real = len(titles)
    words = [t.split() for t in titles]
    template = rng.integers(num_real, size=num_items)  # the real item each synthetic item stands in for
    other = rng.integers(num_real, size=num_items)
    copies_order = np.argsort(template, kind="stable")
    copies_ptr = np.concatenate([[0], np.cumsum(np.bincount(template, minlength=num_real))])
    out_dir.mkdir(parents=True, exist_ok=True)
    with gzip.open(out_dir / "items.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) as handle:
        for i in range(num_items):
            a, b = words[template[i]], words[other[i]]
            cut_a, cut_b = (len(a) + 1) // 2, len(b) // 2
            title = " ".join(a[:cut_a] + b[cut_b:]) or titles[template[i]]
            handle.write(json.dumps({"asin": f"S{i:010d}", "title": title}, ensure_ascii=False) + "\n")
    num_users = int(num_items * INTERACTIONS_PER_ITEM / real_lengths.mean())
    lengths = rng.choice(real_lengths, size=num_users)
    with gzip.open(out_dir / "sequences.jsonl.gz", "wt", encoding="utf-8", compresslevel=6) as handle:
        for start in range(0, num_users, USER_CHUNK):
            chunk = lengths[start : start + USER_CHUNK]
            walks = walk(rng, len(chunk), int(chunk.max()), num_items, template, indptr, successors, copies_ptr,
                         copies_order)
            for user, (row, length) in enumerate(zip(walks.tolist(), chunk.tolist(), strict=True), start=start):
                items = [f"S{i:010d}" for i in row[:length]]
                handle.write(json.dumps({"user": f"U{user:09d}", "items": items}) + "\n")
    logger.info("synthetic %s: %d items, %d users, %d interactions", out_dir, num_items, num_users, lengths.sum())


# -- stages, each run in its own child process -------------------------------------------------------------------

LEGACY_COMMIT = "d0bd95e"  # the tree before issue 16: one-shot co-purchase, tuple catalogue, compressed .npz
NUM_REQUESTS = 200


def legacy_module(path: str) -> Any:
    """A module of the pre-issue-16 tree (``git show LEGACY_COMMIT:path``), for side-by-side timings."""
    import importlib.util

    source = subprocess.run(["git", "show", f"{LEGACY_COMMIT}:{path}"], check=True, capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout
    name = "legacy_" + path.replace("/", "_").removesuffix(".py")
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module
    exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102  (our own code at a fixed commit)
    return module


def sample_histories(data: Path, count: int, seed: int = 1) -> list[list[str]]:
    """``count`` users' item ids (the first users of the file: their order is random already)."""
    out = []
    with gzip.open(data / "sequences.jsonl.gz", "rt", encoding="utf-8") as handle:
        for line in handle:
            out.append(json.loads(line)["items"][-6:])
            if len(out) == count:
                break
    return out


def stage(name: str, data: Path, work: Path) -> dict[str, Any]:
    """Run one stage in this process; return its measurements (seconds, sizes)."""
    from gloss.edge import catalog as cat
    from gloss.edge.copurchase import CoPurchase

    items, sequences = data / "items.jsonl.gz", data / "sequences.jsonl.gz"
    compact, stats_path = work / "catalog.bin", work / "copurchase.bin"
    start = time.perf_counter()
    out: dict[str, Any] = {}
    if name == "catalog_parse":
        catalog = cat.load_catalog(items)
    elif name == "catalog_parse_legacy":
        catalog = legacy_module("edge/catalog.py").load_catalog(items)
    elif name == "catalog_compact":
        catalog = cat.load_catalog(items)
        out["parse_s"] = time.perf_counter() - start
        cat.save_catalog(catalog, work / "catalog.jsonl.gz")
        out["save_jsonl_s"] = time.perf_counter() - start - out["parse_s"]
        cat.save_catalog_arrays(catalog, compact, work / "catalog.jsonl.gz")
        out["compact_mb"] = compact.stat().st_size / 1e6
    elif name == "catalog_open":
        catalog = cat.open_catalog_arrays(compact)
        out["open_s"] = time.perf_counter() - start
        histories = sample_histories(data, NUM_REQUESTS)
        begin = time.perf_counter()
        for history in histories:
            catalog.resolve_history(history[:-1] + ["Title: " + catalog.title(history[-1])])
        out["resolve_ms_per_history"] = (time.perf_counter() - begin) / len(histories) * 1e3
    elif name == "sequences":
        catalog = cat.open_catalog_arrays(compact)
        positions = {asin: i for i, asin in enumerate(catalog.asins)}
        out["position_dict_s"] = time.perf_counter() - start
        from gloss.edge.sequences import read_sequence_arrays

        seqs = read_sequence_arrays(sequences, positions, holdout=0)
        out["interactions"] = len(seqs.items)
    elif name == "copurchase":
        from gloss.export.copurchase import build_copurchase_file

        catalog = cat.open_catalog_arrays(compact)
        stats = build_copurchase_file(sequences, catalog, stats_path, holdout=0)
        out.update(nnz=stats.nnz, file_mb=stats_path.stat().st_size / 1e6)
    elif name == "copurchase_legacy":
        legacy_catalog = legacy_module("edge/catalog.py").load_catalog(items)
        out["parse_s"] = time.perf_counter() - start
        legacy = legacy_module("export/copurchase.py")
        legacy.CoPurchase = legacy_module("edge/copurchase.py").CoPurchase  # saves the compressed .npz of format 1
        stats = legacy.build_copurchase_file(sequences, legacy_catalog, work / "legacy.npz", holdout=0)
        out.update(nnz=stats.nnz, file_mb=(work / "legacy.npz").stat().st_size / 1e6)
    elif name == "copurchase_open_legacy":
        stats = legacy_module("edge/copurchase.py").CoPurchase.load(work / "legacy.npz")
    elif name == "copurchase_open":
        stats = CoPurchase.load(stats_path)
        out["open_s"] = time.perf_counter() - start
        out.update(fusion_request(stats, data, work))
    else:
        raise SystemExit(f"unknown stage {name}")
    out["seconds"] = time.perf_counter() - start
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


class StubIndex:
    """An index whose vectors are one zero row broadcast to every item (no memory) and whose search returns seeded
    random neighbours: fusion's own work, without the search and the vectors (timed by benchmarks/scale.py)."""

    def __init__(self, num_items: int, dim: int = 384) -> None:
        self._vectors = np.broadcast_to(np.zeros(dim, dtype=np.float16), (num_items, dim))
        self._rng = np.random.default_rng(0)

    def search(self, queries: np.ndarray, k: int, exact: bool = True) -> tuple[np.ndarray, np.ndarray]:
        found = self._rng.integers(len(self), size=(len(queries), k))  # choice(replace=False) would cost O(N)
        return found, np.zeros(found.shape, dtype=np.float32)

    def vectors(self) -> np.ndarray:
        return self._vectors

    def __len__(self) -> int:
        return len(self._vectors)


def fusion_request(stats: Any, data: Path, work: Path) -> dict[str, float]:
    """Ranker set-up time and per-request milliseconds (p50, p95) of fusion over a stub index."""
    from gloss.edge import catalog as cat
    from gloss.edge.fusion import FusionConfig, FusionRanker

    catalog = cat.open_catalog_arrays(work / "catalog.bin")
    index = StubIndex(len(catalog))
    start = time.perf_counter()
    ranker = FusionRanker(len(catalog), index, stats, FusionConfig())
    setup = time.perf_counter() - start
    times = []
    for history in sample_histories(data, NUM_REQUESTS):
        begin = time.perf_counter()
        ranker.rank([catalog.position(a) for a in history], None, k=10)
        times.append(time.perf_counter() - begin)
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return {"ranker_setup_s": setup, "request_p50_ms": float(np.percentile(times, 50) * 1e3),
            "request_p95_ms": float(np.percentile(times, 95) * 1e3),
            "rss_anon_mb": int(status["RssAnon"].split()[0]) / 1024,
            "rss_file_mb": int(status["RssFile"].split()[0]) / 1024}


def run_stage(name: str, data: Path, work: Path) -> dict[str, Any]:
    """Run ``stage`` in a child process (its own peak RSS) and return its JSON."""
    command = [sys.executable, __file__, "stage", name, "--data", str(data), "--work", str(work)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"stage {name} on {data} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    shown = {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()}
    logger.info("%s %s: %s", data.name, name, shown)
    return result


STAGES = ("catalog_parse", "catalog_parse_legacy", "catalog_compact", "catalog_open", "sequences", "copurchase",
          "copurchase_open", "copurchase_legacy", "copurchase_open_legacy")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("synth", help="Write a synthetic catalogue and sequences.")
    make.add_argument("--items", type=int, required=True)
    make.add_argument("--out-dir", type=Path, required=True)
    make.add_argument("--seed", type=int, default=SEED)
    one = sub.add_parser("stage", help="Run one stage in this process (used by run).")
    one.add_argument("name", choices=STAGES)
    one.add_argument("--data", type=Path, required=True)
    one.add_argument("--work", type=Path, required=True)
    every = sub.add_parser("run", help="Run every stage on each data folder; write the results.")
    every.add_argument("--data", type=Path, nargs="+", required=True)
    every.add_argument("--work-root", type=Path, default=Path("/tmp/gloss-copurchase-scale"))
    every.add_argument("--legacy-max-items", type=int, default=200_000, help="Skip the old one-shot build above this.")
    every.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    every.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "synth":
        synth(args.items, args.out_dir, seed=args.seed)
    elif args.command == "stage":
        logging.getLogger().setLevel(logging.WARNING)
        print(json.dumps(stage(args.name, args.data, args.work)))
    else:
        run(args)


def run(args: argparse.Namespace) -> None:
    """Every stage on every data folder, then the JSON and Markdown reports."""
    results: dict[str, Any] = {"machine": machine(), "command": "flock /tmp/gloss-heavy.lock python "
                               "benchmarks/copurchase_scale.py run --data " + " ".join(map(str, args.data)),
                               "legacy_commit": LEGACY_COMMIT, "sizes": {}}
    for data in args.data:
        work = args.work_root / data.name
        work.mkdir(parents=True, exist_ok=True)
        num_items = sum(1 for _ in gzip.open(data / "items.jsonl.gz", "rb"))
        size: dict[str, Any] = {"items": num_items}
        for name in args.stages:
            if "legacy" in name and "copurchase" in name and num_items > args.legacy_max_items:
                continue
            size[name] = run_stage(name, data, work)
        results["sizes"][data.name] = size
    args.out_dir.mkdir(parents=True, exist_ok=True)
    from gloss.edge.files import write_json_atomic, write_text_atomic

    write_json_atomic(args.out_dir / "copurchase_scale.json", results)
    write_text_atomic(args.out_dir / "copurchase_scale.md", markdown(results))


def machine() -> str:
    """CPU model, cores and RAM of this machine."""
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    ram_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()} {model}, {os.cpu_count()} cores, {ram_gb:.0f} GB RAM, no GPU"


def markdown(results: dict[str, Any]) -> str:
    """The Markdown report: one row per stage and size."""
    lines = ["# Catalogue, sequences and co-purchase stages at scale", "", f"Command: `{results['command']}`",
             f"Machine: {results['machine']}. Legacy = the same stage in the tree at {results['legacy_commit']} "
             "(before issue 16).",
             "Data: `synth-N` = benchmarks/synth_catalog.py (walks stay within one copy of the real catalogue, "
             "like the scale benchmark); `spread-N` = `synth` of this script (each step goes to a random copy of a "
             "real "
             "successor: the most distinct pairs, the worst case for the statistics' size).",
             "Stages run in their own child process; peak RSS is that child's `ru_maxrss` (imports included, "
             "~30 MB). "
             "`copurchase` includes streaming the sequences; `copurchase_open` = open the statistics and the compact "
             "catalogue, set up the fusion ranker and rank 200 users' histories over a stub index (no search, no "
             "vectors: that part is benchmarks/scale.py's).",
             "", "| size | stage | seconds | peak RSS MB | details |", "|---|---|---|---|---|"]
    for label, size in results["sizes"].items():
        for name in STAGES:
            if name not in size:
                continue
            r = size[name]
            details = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()
                                if k not in ("seconds", "peak_rss_mb"))
            lines.append(f"| {label} ({size['items']:,} items) | {name} | {r['seconds']:.2f} | {r['peak_rss_mb']:.0f} "
                         f"| {details} |")
    lines += ["", "Side by side (new / pre-issue-16 code, seconds and peak RSS MB of the child process):", ""]
    for label, size in results["sizes"].items():
        pairs = [("cold catalogue", "catalog_open", "catalog_parse_legacy"),
                 ("co-purchase build", "copurchase", "copurchase_legacy"),
                 ("co-purchase open (new: and 200 fusion requests)", "copurchase_open", "copurchase_open_legacy")]
        for what, new, old in pairs:
            if new in size and old in size:
                lines.append(f"- {label}, {what}: {size[new]['seconds']:.2f} s / {size[new]['peak_rss_mb']:.0f} MB vs "
                             f"{size[old]['seconds']:.2f} s / {size[old]['peak_rss_mb']:.0f} MB")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
