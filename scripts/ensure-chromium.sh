#!/usr/bin/env bash
# The browser tests (tests/integration/test_web.py) drive Debian's Chromium; Playwright's own
# browser download cannot work on machines without general network access, so install the
# distribution package when it is missing. A no-op when /usr/bin/chromium is already there.
set -euo pipefail

CHROMIUM=${STYLEFLEET_CHROMIUM:-/usr/bin/chromium}
if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "ensure-chromium: $CHROMIUM is missing and apt-get is not available; install Chromium yourself" \
       "(or set STYLEFLEET_CHROMIUM) or the browser tests will fail (CI) or skip (locally)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
  else
    echo "ensure-chromium: $CHROMIUM is missing; run 'sudo apt-get install chromium'" \
         "or the browser tests will fail (CI) or skip (locally)" >&2
    exit 0
  fi
fi
echo "ensure-chromium: installing Debian's chromium for the browser tests" >&2
export DEBIAN_FRONTEND=noninteractive
# Other jobs on the machine may hold dpkg's lock for a while: wait for it rather than fail.
APT="$SUDO apt-get -q -o DPkg::Lock::Timeout=600"
$APT update
# fonts-liberation: without any font the page's text renders as empty boxes in screenshots.
$APT install -y --no-install-recommends chromium fonts-liberation </dev/null
