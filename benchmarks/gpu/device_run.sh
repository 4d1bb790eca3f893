#!/usr/bin/env bash
# Runs THERE, on the device machine, in the repo root (see benchmarks/gpu/README.md for the two calls).
#
#   bash benchmarks/gpu/device_run.sh call1   stash call 1's carry in $ROOT, check the environment, run the
#                                             smoke test (tiny GGUF: 4-bit fit 3 steps + beam search)  ~40 s
#   bash benchmarks/gpu/device_run.sh stash   stash part 2 of the GGUF in $ROOT (the tree is too big for 2 calls)
#   bash benchmarks/gpu/device_run.sh call2   rebuild the GGUF, measure old vs new training throughput, fit
#                                             Beauty in a time box (bf16 LoRA, packed, chunked loss), generate
#                                             validation + as many test users as time allows      <= BUDGET_S
#
# Env: DRY_RUN=1 (CPU dry run: skip the CUDA check), ROOT (stash, survives between warm calls; default /tmp/gloss-gpu), PY (default python3), OUT (set by
# the device tool; default $ROOT/out), BUDGET_S (call 2's own time, default 560), GEN_RESERVE_S (seconds of
# it kept for generation, default 130), THROUGHPUT_STEPS (timed steps per path, default 4), THROUGHPUT_BATCH (default 64), SMOKE_S / SMOKE_GEN_S (time of the smoke fit / generation,
# default 120 / 90), THROUGHPUT_LIMIT_S
# (default 150), CONFIG (default benchmarks/gpu/beauty-smollm2.yaml), FIT_SET
# (extra `--set k=v` words for run_fit.py), GEN_ARGS (extra run_generate.py words), DATA (default
# $ROOT/data). Files in $OUT (at most 8 come back): call1.log, env.txt | run.log, throughput.json, metrics.jsonl,
# gloss_manifest.json, adapter.tar.gz.00[.01], queries_validation.jsonl.gz, queries_test.jsonl.gz.
set -euo pipefail
MODE=${1:?usage: device_run.sh call1|stash|call2}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=$REPO/benchmarks/gpu/.carry
ROOT=${ROOT:-/tmp/gloss-gpu}
PY=${PY:-python3}
OUT=${OUT:-$ROOT/out}
BUDGET_S=${BUDGET_S:-560}
GEN_RESERVE_S=${GEN_RESERVE_S:-130}
SMOKE_S=${SMOKE_S:-120}
SMOKE_GEN_S=${SMOKE_GEN_S:-90}
THROUGHPUT_STEPS=${THROUGHPUT_STEPS:-4}
THROUGHPUT_BATCH=${THROUGHPUT_BATCH:-64}
THROUGHPUT_LIMIT_S=${THROUGHPUT_LIMIT_S:-150}
CONFIG=${CONFIG:-$REPO/benchmarks/gpu/beauty-smollm2.yaml}
DATA=${DATA:-$ROOT/data}
T0=$(date +%s)
mkdir -p "$ROOT" "$OUT"
cd "$REPO"

say() { echo "[$(($(date +%s) - T0))s] $*"; }

setup_env() {
    # gloss without installing: a namespace folder whose gloss/{edge,train,export} point into this checkout
    # (pyproject maps the top-level folders to gloss.*, so the repo root itself is not importable as gloss).
    mkdir -p "$ROOT/shim/gloss"
    for stage in edge train export; do ln -sfn "$REPO/$stage" "$ROOT/shim/gloss/$stage"; done
    export PYTHONPATH="$ROOT/shim:$ROOT/site${PYTHONPATH:+:$PYTHONPATH}"
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 TOKENIZERS_PARALLELISM=false
    export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
    # bitsandbytes' CUDA library needs libcudart/libcublas 13: those of torch's nvidia wheels.
    local libs
    libs=$("$PY" -c 'import glob, site, os; print(":".join(sorted({os.path.dirname(p) for d in site.getsitepackages() for p in glob.glob(d + "/nvidia/**/libcublas.so*", recursive=True) + glob.glob(d + "/nvidia/**/libcudart.so*", recursive=True)})))' 2>/dev/null || true)
    [[ -n "$libs" ]] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    "$PY" - "$REPO" <<'EOF'
import sys
from pathlib import Path
import gloss.train, gloss.edge, gloss.export
for mod in (gloss.train, gloss.edge, gloss.export):
    where = Path(mod.__path__[0]).resolve()
    if not where.is_relative_to(Path(sys.argv[1]).resolve()):
        sys.exit(f"{mod.__name__} imports from {where}, not from this checkout")
EOF
}

env_report() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" - <<'EOF'
import importlib.metadata as md, time
import torch
for name in ("torch", "transformers", "peft", "accelerate", "bitsandbytes", "gguf", "tokenizers", "safetensors"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} MISSING")
print("cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
import bitsandbytes as bnb
from transformers.utils import is_bitsandbytes_available, is_gguf_available
print("transformers sees bitsandbytes", is_bitsandbytes_available(), "gguf", is_gguf_available())
if not torch.cuda.is_available():
    import os, sys
    if os.environ.get("DRY_RUN") == "1":
        sys.exit(print("no CUDA: 4-bit GPU check skipped (DRY_RUN=1)"))
    sys.exit("no CUDA device visible to torch")
# NF4 round trip and a 4-bit matmul against its own dequantized weight: the CUDA library really works.
w = torch.randn(256, 512, device="cuda", dtype=torch.bfloat16)
x = torch.randn(8, 512, device="cuda", dtype=torch.bfloat16)
q, state = bnb.functional.quantize_4bit(w, quant_type="nf4")
deq = bnb.functional.dequantize_4bit(q, state)
got = bnb.matmul_4bit(x, q.t(), quant_state=state)
ref = x.float() @ deq.float().t()
err = ((got.float() - ref).norm() / ref.norm()).item()
print(f"nf4 weight error {((deq.float() - w.float()).norm() / w.float().norm()).item():.3f}, "
      f"4-bit matmul vs dequantized reference {err:.1e}")
assert err < 2e-2, "bitsandbytes 4-bit matmul is wrong"
EOF
}

call1() {
    say "stash call 1's carry in $ROOT"
    rm -rf "$ROOT/site" "$ROOT/data" "$ROOT/smoke" "$ROOT/smoke-run" "$ROOT/model" "$ROOT/model.part2"
    cp -r "$CARRY/call1/site" "$CARRY/call1/data" "$CARRY/call1/smoke" "$ROOT/"
    cp "$CARRY/call1/model.part1" "$CARRY/call1/model.sha256" "$ROOT/"
    setup_env
    say "environment"
    env_report 2>&1 | tee "$OUT/env.txt"
    say "smoke: fit (tiny GGUF, LoRA, packing, chunked loss, time box, 3 steps)"
    "$PY" benchmarks/gpu/run_fit.py --config benchmarks/gpu/smoke.yaml --data-dir "$ROOT/smoke/data" \
        --out-dir "$ROOT/smoke-run" --base-model "$ROOT/smoke/tiny.gguf" --deadline $(($(date +%s) + SMOKE_S))
    say "smoke: throughput of the three paths (NF4 padded full logits / NF4 packed chunked / bf16 packed chunked)"
    "$PY" benchmarks/train_throughput.py --data-dir "$ROOT/smoke/data" --base-model "$ROOT/smoke/tiny.gguf" \
        --json-out "$ROOT/smoke-throughput.json" --batch-size 4 --steps 1 --max-seq-length 512 >/dev/null
    say "smoke: generate (2 validation + 8 test users)"
    "$PY" benchmarks/gpu/run_generate.py "$ROOT/smoke-run" --out-dir "$ROOT/smoke-gen" \
        --deadline $(($(date +%s) + SMOKE_GEN_S)) --batch-size 4 --test-max-users 8
    test -s "$ROOT/smoke-gen/queries_validation.jsonl.gz" && test -s "$ROOT/smoke-gen/queries_test.jsonl.gz"
    say "SMOKE OK; part 1 of the model is in $ROOT: make the stash call now, then call 2"
}

stash() {
    [[ -f "$ROOT/model.part1" ]] || { say "MISSING $ROOT/model.part1: run call 1 first, then stash at once"; exit 3; }
    cp "$CARRY/stash/model.part2" "$ROOT/"
    say "part 2 of the model is in $ROOT: make call 2 now"
}

call2() {
    if ((BUDGET_S < GEN_RESERVE_S + 120)); then
        say "BUDGET_S=$BUDGET_S leaves under 120 s for training (GEN_RESERVE_S=$GEN_RESERVE_S)"
        exit 2
    fi
    if [[ ! -f "$ROOT/model.part1" || ! -f "$ROOT/model.part2" || ! -d "$ROOT/site" ]]; then
        say "MISSING $ROOT/model.part1 or part2: this machine is not the one calls 1 and stash ran on. Run call 1, stash and call 2 again, back to back."
        exit 3
    fi
    read -r SUM SIZE NAME <"$CARRY/call2/model.sha256"
    mkdir -p "$ROOT/model"
    GGUF=$ROOT/model/$NAME
    cat "$ROOT/model.part1" "$ROOT/model.part2" "$CARRY/call2/model.part3" >"$GGUF"
    echo "$SUM  $GGUF" | sha256sum -c --quiet || { say "GGUF checksum mismatch: rerun stage.sh and both calls"; exit 4; }
    say "model rebuilt: $GGUF ($SIZE bytes)"
    setup_env
    END=$((T0 + BUDGET_S))
    FIT_END=$((END - GEN_RESERVE_S))
    # Issue 8's baseline: today's NF4 path vs the new default, same GPU, same data, same call (~1-2 min).
    if ((THROUGHPUT_STEPS > 0)); then  # THROUGHPUT_STEPS=0: all of the budget for training
        say "throughput: old NF4 path vs new paths, $THROUGHPUT_STEPS steps of $THROUGHPUT_BATCH each"
        timeout --signal=TERM "$THROUGHPUT_LIMIT_S" "$PY" benchmarks/train_throughput.py --data-dir "$DATA" \
            --base-model "$GGUF" --json-out "$OUT/throughput.json" --batch-size "$THROUGHPUT_BATCH" \
            --steps "$THROUGHPUT_STEPS" --max-seq-length 512 >/dev/null \
            || say "throughput measurement failed or ran out of time (continuing)"
    fi
    say "fit until $((FIT_END - T0))s at the latest (time box), generate until ${BUDGET_S}s"
    rm -rf "$ROOT/run"
    # shellcheck disable=SC2086  # FIT_SET is a list of words on purpose
    timeout --signal=TERM $((FIT_END - $(date +%s) + 60)) "$PY" benchmarks/gpu/run_fit.py --config "$CONFIG" \
        --data-dir "$DATA" --out-dir "$ROOT/run" --base-model "$GGUF" --deadline "$FIT_END" \
        ${FIT_SET:+$(printf -- '--set %s ' $FIT_SET)}
    cp "$ROOT/run/metrics.jsonl" "$ROOT/run/gloss_manifest.json" "$OUT/"
    tar -C "$ROOT/run" -czf "$ROOT/adapter.tar.gz" adapter gloss_manifest.json metrics.jsonl plan.json
    split -b 15M -d -a 2 "$ROOT/adapter.tar.gz" "$OUT/adapter.tar.gz."
    say "adapter packed: $(stat -c %s "$ROOT/adapter.tar.gz") bytes in $(ls "$OUT"/adapter.tar.gz.* | wc -l) part(s)"
    # shellcheck disable=SC2086
    timeout --signal=TERM $((END - $(date +%s) + 15)) "$PY" benchmarks/gpu/run_generate.py "$ROOT/run" \
        --out-dir "$OUT" --summary-path "$ROOT/generate_summary.json" --deadline "$END" ${GEN_ARGS:-}
    say "DONE"
}

# A pipeline, not `exec > >(tee ...)`: the script then waits for tee, so the log is complete in $OUT.
case "$MODE" in
call1) call1 2>&1 | tee "$OUT/call1.log" ;;
stash) stash 2>&1 | tee "$OUT/stash.log" ;;
call2) call2 2>&1 | tee "$OUT/run.log" ;;
*) echo "usage: device_run.sh call1|stash|call2" >&2; exit 2 ;;
esac
