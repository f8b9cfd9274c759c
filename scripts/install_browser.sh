#!/usr/bin/env bash
# Install the browser the real-browser tests drive (tests/e2e/test_browser.py): Debian's chromium and
# chromium-driver. Playwright's own browser download (`playwright install`) is never used: the tests
# launch /usr/bin/chromium through Playwright's executable_path.
#
# Idempotent: does nothing when /usr/bin/chromium is already there. Needs root for apt-get; without
# it, says so and exits 0, and the browser tests skip with that reason. Under NBTRACK_REQUIRE_ALL=1
# (CI) nothing may skip: it exits 1 instead, and the browser tests would fail.
set -euo pipefail

# What "cannot install" exits with: 0 locally, 1 when nothing may skip.
cannot_install() {
  if [ -n "${NBTRACK_REQUIRE_ALL:-}" ] && [ "${NBTRACK_REQUIRE_ALL}" != 0 ]; then
    echo "install_browser: NBTRACK_REQUIRE_ALL=1: the browser tests may not skip, so this fails." >&2
    exit 1
  fi
  echo "install_browser: until then the browser tests (tests/e2e/test_browser.py) skip." >&2
  exit 0
}

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "install_browser: $CHROMIUM is present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))."
  exit 0
fi

if [ "$(id -u)" != 0 ]; then
  echo "install_browser: $CHROMIUM is missing and this is not root, so it was not installed." >&2
  echo "install_browser: as root run: apt-get update && apt-get install -y chromium chromium-driver" >&2
  cannot_install
fi

if ! command -v apt-get >/dev/null; then
  echo "install_browser: no apt-get here; install chromium so that $CHROMIUM exists." >&2
  cannot_install
fi

echo "install_browser: installing chromium and chromium-driver with apt-get..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
# Fonts keep screenshots legible; recommended by chromium but skipped above to stay small.
apt-get install -y -qq --no-install-recommends fonts-liberation fonts-dejavu-core >/dev/null || true
echo "install_browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM installed")."
