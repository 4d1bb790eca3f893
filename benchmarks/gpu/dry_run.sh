#!/usr/bin/env bash
# CPU dry run of the whole device flow HERE, with the same scripts and tiny settings (run stage.sh first).
#
# Copies the working tree the way the device tool sends it (tracked + untracked-not-ignored files, plus the
# carried folder) into $SIM/repo, runs `device_run.sh call1`, `stash` and `call2` there with DEVICE_PY
# (the device has transformers 5.x: use a throwaway venv with it), checks what would come back from $OUT
# (<= 8 files, < 16 MiB each, plain names), then runs follow_up.sh on it with PY (this machine's env).
# Call 2 uses the real SmolLM2 GGUF rebuilt from its three parts: the throughput script's three paths (NF4 on the
# CPU: bitsandbytes 0.50 runs 4-bit there, slowly) on batches of 2, then the time-boxed fit (2 steps on 40 users),
# 4 validation + 4 test users; follow-up scores EVAL_USERS users.
#
#   DEVICE_PY=/tmp/tf5/bin/python bash benchmarks/gpu/dry_run.sh     # ~10 min on 2 cores
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
DEVICE_PY=${DEVICE_PY:-python3}
PY=${PY:-python3}
SIM=${SIM:-/tmp/gloss-gpu-dry}
CARRY=benchmarks/gpu/.carry
[[ -f $CARRY/call2/model.part3 ]] || { echo "error: run benchmarks/gpu/stage.sh first" >&2; exit 2; }
rm -rf "$SIM"
mkdir -p "$SIM/repo" "$SIM/out1" "$SIM/outs" "$SIM/out2"

send() {  # the working tree plus one carried folder, as a device call sends them
    git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$SIM/repo"
    rm -rf "$SIM/repo/$CARRY"
    mkdir -p "$SIM/repo/$CARRY"
    cp -r "$CARRY/$1" "$SIM/repo/$CARRY/"
}
check_out() {  # what the device tool would bring back
    "$PY" - "$1" <<'EOF'
import re, sys
from pathlib import Path
files = [p for p in Path(sys.argv[1]).rglob("*") if p.is_file()]
bad = [p.name for p in files if not re.fullmatch(r"[A-Za-z0-9._-]+", p.name) or p.stat().st_size >= 16 << 20]
print(f"{sys.argv[1]}: {len(files)} files: " + ", ".join(f"{p.name} ({p.stat().st_size})" for p in files))
if len(files) > 8 or bad:
    sys.exit(f"would not all come back: {len(files)} files; bad names or sizes: {bad}")
EOF
}

echo "== call 1"
send call1
(cd "$SIM/repo" && ROOT=$SIM/root OUT=$SIM/out1 PY=$DEVICE_PY DRY_RUN=1 SMOKE_S=900 SMOKE_GEN_S=900 \
    bash benchmarks/gpu/device_run.sh call1)
check_out "$SIM/out1"

echo "== stash"
send stash
(cd "$SIM/repo" && ROOT=$SIM/root OUT=$SIM/outs PY=$DEVICE_PY bash benchmarks/gpu/device_run.sh stash)
check_out "$SIM/outs"

echo "== call 2 (tiny settings)"
send call2
(cd "$SIM/repo" && ROOT=$SIM/root OUT=$SIM/out2 PY=$DEVICE_PY DRY_RUN=1 BUDGET_S=3000 GEN_RESERVE_S=1200 \
    THROUGHPUT_STEPS=1 THROUGHPUT_BATCH=2 THROUGHPUT_LIMIT_S=900 \
    CONFIG=benchmarks/gpu/smoke.yaml DATA=$SIM/root/smoke/data \
    FIT_SET="max_steps=2 per_device_batch_size=2 eval_max_users=2" \
    GEN_ARGS="--batch-size 4 --validation-max-users 4 --test-max-users 4" \
    bash benchmarks/gpu/device_run.sh call2)
check_out "$SIM/out2"

echo "== follow-up"
WORK=$SIM/work DATA_DIR=$SIM/root/smoke/data EVAL_USERS=${EVAL_USERS:-4} COMPARE_USERS=${COMPARE_USERS:-2} \
    PAPER_QUERIES=/nonexistent PY=$PY bash benchmarks/gpu/follow_up.sh "$SIM/out2"

echo "== slot report (into $SIM/report, not benchmarks/results)"
"$PY" benchmarks/gpu/slot_report.py "$SIM/out2" "$SIM/work/eval" --out-dir "$SIM/report"
"$PY" -c 'import json, sys; d = json.load(open(sys.argv[1])); print({k: d[k] for k in ("device", "baseline_tokens_per_s", "tokens_per_s", "epochs", "converged", "validation")})' "$SIM/report/train_slot.json"
echo "DRY RUN OK"
