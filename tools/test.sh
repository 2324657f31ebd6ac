#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
bash tools/setup_mergekit.sh
bash tools/setup_browser.sh   # headless chromium + chromedriver for the report tests
exec .venv/bin/python -m pytest -q -n 2 --dist loadfile "$@"
