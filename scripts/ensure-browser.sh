#!/usr/bin/env bash
# The console's browser tests drive Debian's Chromium (Playwright's own browser downloads are not used).
# Installs it when missing, and says so; where it cannot, says why and carries on: the browser tests then
# fail with that reason. TDEV_SKIP_BROWSER=1 skips them on purpose (and the test summary says so).
set -euo pipefail
if [ "${TDEV_SKIP_BROWSER:-}" = "1" ]; then
  echo "browser: TDEV_SKIP_BROWSER=1, the console's browser tests will be skipped"
  exit 0
fi
for candidate in "${TDEV_CHROMIUM:-}" chromium chromium-browser; do
  if [ -n "$candidate" ] && command -v "$candidate" >/dev/null 2>&1; then
    exit 0
  fi
done
if ! command -v apt-get >/dev/null 2>&1; then
  echo "browser: no Chromium and no apt-get here; install Chromium (or set TDEV_CHROMIUM to one) for the console's browser tests" >&2
  exit 0
fi
as_root=""
if [ "$(id -u)" != 0 ]; then
  if sudo -n true 2>/dev/null; then as_root="sudo -n"; else
    echo "browser: no Chromium, and installing it needs root: sudo apt-get install chromium (or TDEV_SKIP_BROWSER=1)" >&2
    exit 0
  fi
fi
echo "browser: installing Chromium from Debian's packages for the console's browser tests (apt-get, once)"
started=$(date +%s)
if $as_root apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive $as_root apt-get install -y -qq chromium >/dev/null; then
  echo "browser: $(chromium --version 2>/dev/null | head -1) installed in $(( $(date +%s) - started ))s"
else
  echo "browser: apt-get could not install chromium; the console's browser tests will fail and say so" >&2
fi
