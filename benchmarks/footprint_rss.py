"""Part 3 of benchmarks/footprint.py: bundle size on disk and peak RSS of `gloss-edge recommend` and `serve`.

Also runnable alone on any bundle (what the lead reruns on a quiet machine):
    python benchmarks/footprint_rss.py BUNDLE_DIR [--requests 8]
prints size, recommend and serve peak RSS, where the server's RSS goes (/proc/PID/smaps by mapping) and the RSS
after each load step of a Recommender (``--probe ITEM...`` alone prints only that).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

MB = 2**20  # "MB" here is MiB, the unit of the "247 MB" (138 + 86 + 21 MiB of parts)
SERVE_START_SECONDS = 180
REQUEST_SECONDS = 300
CONCURRENT = 4  # requests in flight at once while serving (the queue holds them; one worker answers)


def bundle_size(bundle_dir: Path) -> dict[str, Any]:
    """Bytes of every file of the bundle, in total and per top-level part."""
    parts: dict[str, int] = {}
    for path in bundle_dir.rglob("*"):
        if path.is_file():
            rel = path.relative_to(bundle_dir)
            key = str(rel) if len(rel.parts) == 1 else f"{rel.parts[0]}/"
            parts[key] = parts.get(key, 0) + path.stat().st_size
    total = sum(parts.values())
    parts_mb = {key: value / MB for key, value in sorted(parts.items())}
    return {"bundle_mb": total / MB, "bundle_bytes": total, "parts_mb": parts_mb}


def _gloss_edge() -> list[str]:
    exe = shutil.which("gloss-edge")
    return [exe] if exe else [sys.executable, "-m", "gloss.edge.cli"]


def recommend_peak_rss(bundle_dir: Path, history: Sequence[str], last_item: bool = False) -> dict[str, Any]:
    """Peak RSS (MB) and wall time of one `gloss-edge recommend` process.

    The peak is the child's VmHWM, polled until it exits: its rusage ``ru_maxrss`` would count this (large)
    parent process too, since Linux carries the pre-exec memory's peak of a forked child into it.
    """
    cmd = [*_gloss_edge(), "recommend", str(bundle_dir), "-k", "10", "--json"]
    cmd += [arg for item in history for arg in ("-i", item)] + (["--last-item"] if last_item else ["--llm"])
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        peak = 0.0
        while proc.poll() is None:
            with contextlib.suppress(OSError, KeyError):
                peak = max(peak, _proc_status(proc.pid)["VmHWM"])
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} failed: {err.read().decode(errors='replace')[-2000:]}")
    return {"peak_rss_mb": peak, "seconds": seconds}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _post(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=REQUEST_SECONDS) as reply:
            reply.read()
            return int(reply.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _wait_ready(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + SERVE_START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gloss-edge serve exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"gloss-edge serve did not listen on port {port} within {SERVE_START_SECONDS} s")


def _proc_status(pid: int) -> dict[str, float]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            values[key] = int(rest.split()[0]) * 1024 / MB
    return values


def rss_by_mapping(pid: int, top: int = 8) -> dict[str, float]:
    """RSS (MB) per mapped file (anonymous memory as '[anon]'), largest first."""
    sizes: dict[str, int] = {}
    name = "[anon]"
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:
            name = Path(fields[5]).name if len(fields) > 5 and fields[5].startswith("/") else "[anon]"
        elif fields[0] == "Rss:":
            sizes[name] = sizes.get(name, 0) + int(fields[1]) * 1024
    ranked = sorted(sizes.items(), key=lambda item: -item[1])
    out = {key: value / MB for key, value in ranked[:top]}
    out["[rest]"] = sum(value for _, value in ranked[top:]) / MB
    return out


def serve_peak_rss(bundle_dir: Path, histories: Sequence[Sequence[str]], last_item: bool = False) -> dict[str, Any]:
    """Start `gloss-edge serve`, send the histories (CONCURRENT at a time), read the process's peak RSS."""
    port = _free_port()
    cmd = [*_gloss_edge(), "serve", str(bundle_dir), "--port", str(port), "--request-timeout", str(REQUEST_SECONDS)]
    cmd += ["--last-item"] if last_item else ["--llm"]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        try:
            _wait_ready(port, proc)
            idle = _proc_status(proc.pid)
            url = f"http://127.0.0.1:{port}/recommend"
            start = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENT) as pool:
                codes = list(pool.map(lambda h: _post(url, {"history": list(h), "k": 10}), histories))
            seconds = time.perf_counter() - start
            status, mapping = _proc_status(proc.pid), rss_by_mapping(proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return {"peak_rss_mb": status["VmHWM"], "rss_after_mb": status["VmRSS"], "rss_idle_mb": idle["VmRSS"],
            "anon_mb": status.get("RssAnon"), "file_mb": status.get("RssFile"), "requests": len(codes),
            "ok": sum(code == 200 for code in codes), "status_codes": sorted(set(codes)), "seconds": seconds,
            "rss_by_mapping_mb": mapping}  # fmt: skip


def _status_mb() -> dict[str, float]:
    return {key: round(value, 1) for key, value in _proc_status(os.getpid()).items() if key in ("VmRSS", "VmHWM")}


def probe_steps(bundle_dir: Path, history: Sequence[str]) -> dict[str, Any]:
    """In this process: RSS after each part of a Recommender is loaded and after one recommendation."""
    steps: dict[str, Any] = {"python": _status_mb()}
    import llama_cpp  # noqa: F401
    import onnxruntime  # noqa: F401
    import usearch.index  # noqa: F401

    from gloss.edge.bundle import load_bundle
    from gloss.edge.generation.generate import LlamaCppGenerator
    from gloss.edge.recommend import Recommender

    steps["imports"] = _status_mb()
    bundle = load_bundle(bundle_dir, verify=False)
    steps["manifest + catalogue"] = _status_mb()
    embedder = bundle.open_embedder()
    embedder.embed(["Title: one title"])
    steps["embedder (loaded, one title)"] = _status_mb()
    index = bundle.open_index()
    index.vectors()
    steps["index (mapped, float32 copy)"] = _status_mb()
    fusion = bundle.open_fusion(index) if bundle.fusion_meta is not None else None
    steps["fusion statistics"] = _status_mb()
    generator = LlamaCppGenerator.load(bundle.paths.generator) if bundle.paths.generator else None
    steps["generator (GGUF mapped, context)"] = _status_mb()
    Recommender(bundle.catalog, embedder, index, generator, fusion).recommend(list(history), k=10)
    steps["one recommendation"] = _status_mb()
    return steps


def rss_steps(bundle_dir: Path, history: Sequence[str]) -> dict[str, Any]:
    """:func:`probe_steps` in a fresh subprocess."""
    cmd = [sys.executable, str(Path(__file__).resolve()), str(bundle_dir), "--probe", *history]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)


def measure_bundle(bundle_dir: Path, histories: Sequence[Sequence[str]], num_requests: int) -> dict[str, Any]:
    """Size, recommend RSS (LLM and last-item) and serve RSS (LLM) of one bundle."""
    out: dict[str, Any] = {"bundle": str(bundle_dir), **bundle_size(bundle_dir)}
    out["recommend"] = [recommend_peak_rss(bundle_dir, h) for h in histories[:1]]
    out["recommend_last_item"] = recommend_peak_rss(bundle_dir, histories[0], last_item=True)
    out["serve"] = serve_peak_rss(bundle_dir, histories[:num_requests])
    out["rss_steps_mb"] = rss_steps(bundle_dir, histories[0])
    out["recommend_rss_mb"] = max(r["peak_rss_mb"] for r in out["recommend"])
    out["serve_rss_mb"] = out["serve"]["peak_rss_mb"]
    return out


def build_bundles(data_dir: Path, work: Path) -> dict[str, Path]:
    """Three Beauty bundles with serving co-purchase statistics (holdout 0) and the catalogue trie:
    the default of `gloss-export bundle` (Q8_0, int8 embedder, f16 index), the previous default (Q8_0, fp32,
    f32) and the default with a Q5_K_M generator.

    They reuse the GGUFs and embedder exports of the other parts (byte for byte what ``--adapter
    smollm2-135m-beauty --method M`` and the bundle's own export write), so merge and export are not repeated.
    """
    from gloss.edge.index import DEFAULT_INDEX_DTYPE
    from gloss.export.bundle import DEFAULT_EMBEDDER_INT8, DEFAULT_METHOD, add_generator, build_bundle

    items, sequences = data_dir / "items.jsonl.gz", data_dir / "sequences.jsonl.gz"
    default_embedder = "int8" if DEFAULT_EMBEDDER_INT8 else "fp32"
    variants = {
        "default with Q5_K_M": ("Q5_K_M", default_embedder, DEFAULT_INDEX_DTYPE),
        "default": (DEFAULT_METHOD, default_embedder, DEFAULT_INDEX_DTYPE),
        "previous default": ("Q8_0", "fp32", "f32"),
    }
    bundles: dict[str, Path] = {}
    for name, (method, embedder, dtype) in variants.items():
        out = work / f"bundle-{method}-{embedder}-{dtype}"
        meta = {"adapter": "smollm2-135m-beauty", "fine_tuned": True, "quantization": method}
        gguf = work / "gguf" / f"model-{method}.gguf"
        same_rest = [b for b in bundles.values() if b.name.split("-", 2)[2] == f"{embedder}-{dtype}"]
        if not (out / "gloss_bundle.json").is_file() and same_rest:
            # Same catalogue, embedder and index as a bundle already built: copy it and swap the generator
            # (add_generator rebuilds the trie), instead of embedding the catalogue again.
            shutil.copytree(same_rest[0], out)
            add_generator(out, gguf, meta)
        elif not (out / "gloss_bundle.json").is_file():
            build_bundle(items, out, gguf_path=gguf, embedder_dir=work / f"embedder-{embedder}",
                         sequences_path=sequences, index_dtype=dtype, name="beauty", generator_meta=meta)
        bundles[name] = out
    return bundles


def footprint_part(data_dir: Path, work: Path, examples: Sequence[Any], num_requests: int) -> dict[str, Any]:
    """Part 3: both bundles measured; the top-level keys the issue asks for are the default bundle's."""
    histories = [list(ex.history) for ex in examples if len(ex.history) >= 3][:num_requests]
    bundles = build_bundles(data_dir, work)
    measured = {name: measure_bundle(path, histories, num_requests) for name, path in bundles.items()}
    default = measured["default"]
    manifest = json.loads((bundles["default"] / "gloss_bundle.json").read_text(encoding="utf-8"))
    return {"bundle_mb": default["bundle_mb"], "serve_rss_mb": default["serve_rss_mb"],
            "recommend_rss_mb": default["recommend_rss_mb"], "bundles": measured,
            "default_manifest": {key: manifest.get(key) for key in ("embedder", "index", "generator")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundle_dir", type=Path)
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--data-dir", type=Path, default=Path("/work/shared/data/amazon2014/beauty"))
    parser.add_argument("--probe", nargs="+", metavar="ITEM", help="Only print RSS per load step for this history.")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe_steps(args.bundle_dir, args.probe)))
        return
    from gloss.edge.splits import Split, load_sequences, make_examples, validation_users

    sequences = load_sequences(args.data_dir / "sequences.jsonl.gz")
    held = validation_users([s.user for s in sequences])
    examples = [ex for ex in make_examples(sequences, Split.validation, held) if len(ex.history) >= 3]
    result = measure_bundle(args.bundle_dir, [list(ex.history) for ex in examples], args.requests)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
