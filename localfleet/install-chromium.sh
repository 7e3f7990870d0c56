#!/bin/sh
# Debian's Chromium and its driver, for tests/fleet/test_flower_browser.py (never a downloaded browser).
# Idempotent: does nothing when both binaries are already there.
set -eu

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium chromium-driver
