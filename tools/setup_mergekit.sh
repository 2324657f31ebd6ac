#!/usr/bin/env bash
# mergekit 0.1.5 is the reference in tests and benchmarks, never a dependency of mergebench: it lives
# in a venv of its own (.venv-mergekit), made once. tools/test.sh runs this; the demo does not need it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv-mergekit/bin/mergekit-yaml ]; then
  rm -rf .venv-mergekit
  "$PYTHON" -m venv .venv-mergekit
  # the pinned CPU wheel first: mergekit's unpinned torch would pull a multi-GB CUDA build
  .venv-mergekit/bin/python -m pip install -q "torch==2.13.0"
  .venv-mergekit/bin/python -m pip install -q "mergekit==0.1.5"
fi
