#!/usr/bin/env bash
# The browser test drives Debian's Chromium through Playwright (no browser download).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    exit 0
fi
echo "the browser test needs Chromium: install it (Debian/Ubuntu: sudo apt-get install chromium)" >&2
exit 1
