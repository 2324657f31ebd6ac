#!/usr/bin/env bash
# The report test (tests/test_analyze.py) renders `mergebench analyze`'s report.html in a real headless
# browser: Debian's chromium and chromium-driver. Installed once, quietly (apt's output is shown only
# when it fails); a no-op when both are there. Needs root (or sudo) and an apt mirror the first time.
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
log=$(mktemp)
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver; } >"$log" 2>&1; then
  cat "$log" >&2
  echo "setup_browser.sh: installing chromium and chromium-driver failed" >&2
  exit 1
fi
