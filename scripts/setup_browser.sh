#!/usr/bin/env bash
# Debian's chromium for the one browser test (tests/service/test_ui_browser.py): headless, no display needed.
# Needs root (apt-get); does nothing when chromium is already installed.
#   bash scripts/setup_browser.sh && bash scripts/test.sh -m browser tests/service/test_ui_browser.py
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO=sudo
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
chromium --version
