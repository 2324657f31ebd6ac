#!/usr/bin/env bash
# The embedded default: set up, build the demo models (CPU, no downloads; only when missing or written by
# another version of the builder), merge the two skill finetunes with task arithmetic, and quick-evaluate
# the merge next to its inputs on every skill.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/python tools/build_demo_models.py demo_models --if-stale
config=${1:-merge_configs/demo-task-arithmetic.yaml}
out=outputs/$(basename "$config" .yaml)
.venv/bin/mergebench merge "$config" "$out" --overwrite \
  --eval demo_models/eval/reverse.jsonl --eval demo_models/eval/add.jsonl --eval demo_models/eval/upper.jsonl
echo "merged model: $out"
echo "to run mergebench yourself: source .venv/bin/activate   (then: mergebench --help)"
