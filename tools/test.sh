#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/setup_mergekit.sh
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
