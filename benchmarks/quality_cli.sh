#!/usr/bin/env bash
# Reproduce the quality race's fusion rows through the product's own commands (gloss-export fusion +
# gloss-edge eval --fusion), from the bundles benchmarks/retrieval.py builds and the tuned settings in
# benchmarks/results/quality.json. Writes benchmarks/results/quality_cli.{json,md}.
# Usage: bash benchmarks/quality_cli.sh [DATA_ROOT]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
data="${1:-../shared/data}/amazon2014"
work=benchmarks/.work/quality_cli
mkdir -p "$work"
for name in beauty toys sports; do
  python - "$name" "$work" <<'PY'
import json, sys
name, work = sys.argv[1], sys.argv[2]
settings = json.load(open("benchmarks/results/quality.json"))["datasets"][name]["settings"]
json.dump(settings["fusion"], open(f"{work}/{name}_fusion.json", "w"))
open(f"{work}/{name}_copurchase.args", "w").write(f"--window {settings['copurchase_window']} "
                                                  f"--decay {settings['copurchase_decay']}")
PY
  rm -rf "$work/$name" && cp -r "benchmarks/.work/bundles/$name" "$work/$name"
  # shellcheck disable=SC2046
  gloss-export fusion "$work/$name" --sequences "$data/$name/sequences.jsonl.gz" --holdout 1 \
    $(cat "$work/${name}_copurchase.args") --config "$work/${name}_fusion.json" >/dev/null
  gloss-edge eval "$work/$name" --source last-item --sequences "$data/$name/sequences.jsonl.gz" --split test \
    --fusion --out "$work/${name}_test.json" >/dev/null
done
python - "$work" <<'PY'
import json, sys
work = sys.argv[1]
rows, out = [], {}
for name in ("beauty", "toys", "sports"):
    report = json.load(open(f"{work}/{name}_test.json"))
    out[name] = report
    m = report["metrics"]["all"]
    rows.append(f"| {name} | {int(m['users'])} | {m['recall@5']:.4f} | {m['ndcg@5']:.4f} | {m['recall@10']:.4f} | "
                f"{m['ndcg@10']:.4f} | {report['seconds']:.1f} |")
json.dump(out, open("benchmarks/results/quality_cli.json", "w"), indent=2)
open("benchmarks/results/quality_cli.md", "w").write(
    "# Fusion rows reproduced with the CLI (test split, co-purchase --holdout 1)\n\n"
    "Command: `bash benchmarks/quality_cli.sh`\n\n"
    "| dataset | users | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | eval seconds |\n|---|---|---|---|---|---|---|\n"
    + "\n".join(rows) + "\n")
print(open("benchmarks/results/quality_cli.md").read())
PY
