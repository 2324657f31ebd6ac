#!/usr/bin/env bash
# The embedded default: set up, build the demo models once (CPU, no downloads), merge the two skill
# finetunes with TIES, and quick-evaluate the merge next to its inputs on both skills.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
if [ ! -f demo_models/.complete ]; then
  .venv/bin/python tools/build_demo_models.py demo_models
fi
config=${1:-merge_configs/demo-ties.yaml}
out=outputs/$(basename "$config" .yaml)
.venv/bin/mergebench merge "$config" "$out" --overwrite \
  --eval demo_models/eval/reverse.jsonl --eval demo_models/eval/add.jsonl
echo "merged model: $out"
