#!/usr/bin/env bash
# Build what the three device calls carry (run HERE, on the CPU machine, right before the calls; ~1 min).
#
#   benchmarks/gpu/.carry/call1/  site/   bitsandbytes 0.50.2 (CUDA 13.0 + CPU libraries only) and gguf 0.19.0,
#                                         unpacked wheels with their dist-info (transformers checks versions)
#                                 data/   `gloss-train prepare` of Beauty (the paper's splits)
#                                 smoke/  tiny random LLaMA GGUF with SmolLM2's tokenizer + 40 users' data
#                                 model.part1, model.sha256   first bytes of the SmolLM2 GGUF
#   benchmarks/gpu/.carry/stash/  model.part2, model.sha256   the next bytes (a call that only stashes them)
#   benchmarks/gpu/.carry/call2/  model.part3, model.sha256   the rest of it
#
# The tool refuses a call over 64 MiB (working tree included, now ~11 MB with the shipped adapter), so the GGUF
# (98.4 MB) no longer fits two calls beside the rest of call 1: part 1 fills call 1, parts 2 and 3 share the rest.
# The script measures the working tree and checks every call.
#
# Env: PY (python with gloss installed; default python3), BEAUTY_DIR (items/sequences .jsonl.gz; default
# /work/shared/data/amazon2014/beauty), WHEEL_DIR (pip download cache; default /tmp/gloss-gpu-wheels),
# RESERVE_MIB (headroom left in each call; default 2), SKIP_DATA=1 (keep an already prepared data/).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
PY=${PY:-python3}
BEAUTY_DIR=${BEAUTY_DIR:-/work/shared/data/amazon2014/beauty}
WHEEL_DIR=${WHEEL_DIR:-/tmp/gloss-gpu-wheels}
RESERVE_MIB=${RESERVE_MIB:-2}
CARRY=benchmarks/gpu/.carry
LIMIT=$((64 * 1024 * 1024))

git check-ignore -q "$CARRY/x" || { echo "error: $CARRY is not ignored by git; add it to .gitignore" >&2; exit 2; }
mkdir -p "$CARRY/call1" "$CARRY/call2" "$WHEEL_DIR"
mkdir -p "$CARRY/stash"
rm -rf "$CARRY/call1/site" "$CARRY/call1/smoke" "$CARRY"/call1/model.* "$CARRY"/call2/* "$CARRY"/stash/*

echo "== wheels: bitsandbytes 0.50.2 (manylinux x86_64), gguf 0.19.0"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    -d "$WHEEL_DIR" bitsandbytes==0.50.2 gguf==0.19.0
BNB_WHL=$(ls "$WHEEL_DIR"/bitsandbytes-0.50.2-*manylinux*x86_64.whl | head -n 1)
GGUF_WHL=$(ls "$WHEEL_DIR"/gguf-0.19.0-py3-none-any.whl)
mkdir -p "$CARRY/call1/site"
unzip -q -o "$BNB_WHL" -d "$CARRY/call1/site"
unzip -q -o "$GGUF_WHL" -d "$CARRY/call1/site"
# Only the device's CUDA 13.0 build (torch 2.11+cu130) and the CPU one: the wheel holds 15 builds (129 MB).
find "$CARRY/call1/site/bitsandbytes" -maxdepth 1 -name 'libbitsandbytes_*.so' \
    ! -name 'libbitsandbytes_cuda130.so' ! -name 'libbitsandbytes_cpu.so' -delete
test -f "$CARRY/call1/site/bitsandbytes/libbitsandbytes_cuda130.so"

if [[ "${SKIP_DATA:-0}" == 1 && -f "$CARRY/call1/data/gloss_manifest.json" ]]; then
    echo "== data: kept $CARRY/call1/data"
else
    echo "== data: gloss-train prepare (Beauty from $BEAUTY_DIR)"
    "$PY" -m gloss.train.cli prepare "$CARRY/call1/data" --items "$BEAUTY_DIR/items.jsonl.gz" \
        --sequences "$BEAUTY_DIR/sequences.jsonl.gz" >/dev/null
fi

echo "== smoke: tiny GGUF + 40 users"
mkdir -p "$CARRY/call1/smoke"
"$PY" - "$BEAUTY_DIR/sequences.jsonl.gz" "$CARRY/call1/smoke/sequences.jsonl.gz" <<'EOF'
import itertools, sys
from gloss.edge.files import read_jsonl, write_jsonl_atomic
write_jsonl_atomic(sys.argv[2], itertools.islice(read_jsonl(sys.argv[1]), 40))
EOF
"$PY" -m gloss.train.cli prepare "$CARRY/call1/smoke/data" --items "$BEAUTY_DIR/items.jsonl.gz" \
    --sequences "$CARRY/call1/smoke/sequences.jsonl.gz" >/dev/null
rm "$CARRY/call1/smoke/sequences.jsonl.gz"
"$PY" benchmarks/gpu/make_smoke_gguf.py "$CARRY/call1/smoke/tiny.gguf" 2>/dev/null >/dev/null

echo "== working tree (what every call sends besides its carry)"
TREE=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
    | awk '{s += $1} END {print s + 0}')
[[ -d shared ]] && TREE=$((TREE + $(du -sb shared | cut -f1)))
ROOM=$((LIMIT - TREE - RESERVE_MIB * 1024 * 1024 - 65536))  # 64 KiB: folder entries, model.sha256

echo "== model: split the SmolLM2 GGUF in three"
GGUF=$("$PY" -c 'from gloss.export.merge import default_base_gguf; print(default_base_gguf())')
SIZE=$(stat -c %s "$GGUF")
OTHER1=$(du -sb "$CARRY/call1" | cut -f1)
PART1=$((ROOM - OTHER1))  # call 1 full; the stash call and call 2 share the rest equally
((PART1 > 0)) || { echo "error: call 1 has no room for part 1 (tree $TREE + carry $OTHER1)" >&2; exit 1; }
PART1=$((PART1 < SIZE ? PART1 : SIZE))
PART2=$(((SIZE - PART1) / 2))
PART3=$((SIZE - PART1 - PART2))
head -c "$PART1" "$GGUF" >"$CARRY/call1/model.part1"
dd if="$GGUF" of="$CARRY/stash/model.part2" bs=1M iflag=skip_bytes,count_bytes skip="$PART1" count="$PART2" \
    status=none
tail -c "$PART3" "$GGUF" >"$CARRY/call2/model.part3"
SUM=$(sha256sum "$GGUF" | cut -d' ' -f1)
printf '%s  %s  %s\n' "$SUM" "$SIZE" "$(basename "$GGUF")" | tee "$CARRY/call1/model.sha256" \
    "$CARRY/stash/model.sha256" >"$CARRY/call2/model.sha256"
cat "$CARRY/call1/model.part1" "$CARRY/stash/model.part2" "$CARRY/call2/model.part3" | sha256sum | grep -q "^$SUM " \
    || { echo "error: the three parts do not rebuild $GGUF" >&2; exit 1; }

echo "== sizes (limit per call: 64 MiB = $LIMIT bytes, tree + carry)"
status=0
for call in call1 stash call2; do
    bytes=$(du -sb "$CARRY/$call" | cut -f1)
    total=$((TREE + bytes))
    verdict=ok
    ((total <= LIMIT - RESERVE_MIB * 1024 * 1024)) || { verdict="TOO LARGE"; status=1; }
    printf '%s: tree %d + carry %d = %d bytes (%.1f MiB) %s\n' "$call" "$TREE" "$bytes" "$total" \
        "$(echo "$total / 1048576" | bc -l)" "$verdict"
done
du -sh "$CARRY"/call1/* "$CARRY"/stash/* "$CARRY"/call2/*
exit $status
