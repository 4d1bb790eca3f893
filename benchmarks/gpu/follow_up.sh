#!/usr/bin/env bash
# Local follow-up of the device run (HERE, CPU): adapter -> merge -> f16 GGUF -> Q8_0 -> bundle -> scores.
#
#   bash benchmarks/gpu/follow_up.sh FILES_DIR
#
# FILES_DIR holds what call 2 brought back (adapter.tar.gz.0*, queries_validation.jsonl.gz,
# queries_test.jsonl.gz, ...). Outputs go to $WORK (default benchmarks/.work/gpu-beauty, ignored by git):
# run/ (adapter + manifest + metrics), merged/, model-f16.gguf, model-q8_0.gguf, bundle/, eval/*.json and
# eval/summary.txt. Scores:
#   hf_*         the device's transformers beams (gloss-edge eval --queries), all users it generated
#   paper_*      the paper's own Llama-3.2-1B validation queries on the same bundle (reference), if present
#   bundle_*     the bundle's llama.cpp beams (gloss-edge eval --source bundle) on the first EVAL_USERS
#                validation users, next to hf_*_first on the same users
#   compare.json best-query agreement, HF vs llama.cpp (f16 and Q8_0), first COMPARE_USERS users
# Env: PY (default python3), WORK, DATA_DIR (prepared data the device used; default the staged one),
# EMBEDDER_DIR (reuse an exported embedder; default benchmarks/.work/bundles/beauty/embedder if present),
# EVAL_USERS (default 100), COMPARE_USERS (default 20), PAPER_QUERIES.
set -euo pipefail
FILES=$(cd "${1:?usage: follow_up.sh FILES_DIR}" && pwd)
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-python3}
WORK=${WORK:-benchmarks/.work/gpu-beauty}
DATA_DIR=${DATA_DIR:-benchmarks/gpu/.carry/call1/data}
EVAL_USERS=${EVAL_USERS:-100}
COMPARE_USERS=${COMPARE_USERS:-20}
PAPER_QUERIES=${PAPER_QUERIES:-/work/shared/data/gloss_queries/beauty_validation_llama-3.2-1b.jsonl.gz}
if [[ -z "${EMBEDDER_DIR+x}" && -f benchmarks/.work/bundles/beauty/embedder/model.onnx ]]; then
    EMBEDDER_DIR=benchmarks/.work/bundles/beauty/embedder
fi
T0=$(date +%s)
say() { echo "[$(($(date +%s) - T0))s] $*" >&2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

rm -rf "$WORK/run" "$WORK/eval"
mkdir -p "$WORK/run" "$WORK/eval"
cat "$FILES"/adapter.tar.gz.* | tar -xz -C "$WORK/run"
# The run names its base by the device's path; put the same GGUF there (same file name) if it is missing.
BASE=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["base_model"])' "$WORK/run/gloss_manifest.json")
MAX_SEQ=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["max_seq_length"])' "$WORK/run/gloss_manifest.json")
if [[ ! -e "$BASE" ]]; then
    LOCAL=$("$PY" -c 'from gloss.export.merge import default_base_gguf; print(default_base_gguf())')
    [[ "$(basename "$LOCAL")" == "$(basename "$BASE")" ]] || { echo "error: base $BASE is not $LOCAL" >&2; exit 2; }
    mkdir -p "$(dirname "$BASE")" && ln -s "$LOCAL" "$BASE"
    say "linked $BASE -> $LOCAL"
fi

say "merge, GGUF, Q8_0"
"$PY" -m gloss.export.cli merge "$WORK/run" -o "$WORK/merged" >/dev/null
"$PY" -m gloss.export.cli gguf "$WORK/merged" -o "$WORK/model-f16.gguf" >/dev/null
"$PY" -m gloss.export.cli quantize "$WORK/model-f16.gguf" -o "$WORK/model-q8_0.gguf" --method Q8_0 >/dev/null
say "bundle"
"$PY" -m gloss.export.cli bundle --catalog "$DATA_DIR/items.jsonl.gz" -o "$WORK/bundle" --name beauty \
    --gguf "$WORK/model-q8_0.gguf" ${EMBEDDER_DIR:+--embedder-dir "$EMBEDDER_DIR"} >/dev/null

score() {  # name, then gloss-edge eval arguments
    local name=$1
    shift
    "$PY" -m gloss.edge.cli eval "$WORK/bundle" --out "$WORK/eval/$name.json" "$@" >/dev/null
}
say "scores of the HF queries"
for split in validation test; do
    [[ -f "$FILES/queries_$split.jsonl.gz" ]] || continue
    score "hf_$split" --queries "$FILES/queries_$split.jsonl.gz"
    score "hf_${split}_exclude_seen" --queries "$FILES/queries_$split.jsonl.gz" --exclude-seen
done
if [[ -f "$PAPER_QUERIES" ]]; then
    score paper_validation --queries "$PAPER_QUERIES"
    score paper_validation_exclude_seen --queries "$PAPER_QUERIES" --exclude-seen
fi
say "bundle (llama.cpp) on the first $EVAL_USERS validation users"
score hf_validation_first --queries "$FILES/queries_validation.jsonl.gz" --max-users "$EVAL_USERS"
score bundle_validation_first --source bundle --sequences "$DATA_DIR/sequences.jsonl.gz" --split validation \
    --max-users "$EVAL_USERS" --save-queries "$WORK/eval/bundle_queries_validation.jsonl.gz"
# Same llama.cpp queries, seen items removed (rescored, not regenerated).
score bundle_validation_first_exclude_seen --queries "$WORK/eval/bundle_queries_validation.jsonl.gz" --exclude-seen
say "HF vs llama.cpp beams on $COMPARE_USERS users (n_ctx $MAX_SEQ, as in training)"
"$PY" benchmarks/gpu/compare_queries.py "$FILES/queries_validation.jsonl.gz" --catalog "$DATA_DIR/items.jsonl.gz" \
    --n-ctx "$MAX_SEQ" --gguf "$WORK/model-f16.gguf" --gguf "$WORK/model-q8_0.gguf" \
    --max-users "$COMPARE_USERS" --out "$WORK/eval/compare.json" | tee "$WORK/eval/compare.txt"

"$PY" - "$WORK/eval" <<'EOF' | tee "$WORK/eval/summary.txt"
import json, sys
from pathlib import Path
print(f"{'source':<34}{'users':>7}{'R@5':>8}{'N@5':>8}{'R@10':>8}{'MRR':>8}")
for path in sorted(Path(sys.argv[1]).glob("*.json")):
    if path.name == "compare.json":
        continue
    m = json.loads(path.read_text())["metrics"]["all"]
    print(f"{path.stem:<34}{int(m['users']):>7}{m['recall@5']:>8.4f}{m['ndcg@5']:>8.4f}{m['recall@10']:>8.4f}"
          f"{m['mrr']:>8.4f}")
EOF
say "done: $WORK"
