#!/usr/bin/env bash
# The status-page test drives Debian's headless Chromium; install it when it is missing.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "ok: chromium"
  exit 0
fi
echo "installing chromium (Debian package)"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null
apt-get install -y -q chromium >/dev/null
echo "ok: chromium"
