#!/usr/bin/env bash
# Install the Noto fonts the synthetic page generator uses (data_engine/scripts.py):
# Debian/Ubuntu packages fonts-noto-core (per-script Noto Sans/Serif) and fonts-noto-cjk.
# Idempotent: does nothing when the fonts are already present. Other systems: install the
# Noto fonts any way you like and set OCRFLOW_FONT_DIRS to the folder(s) holding the files.
set -euo pipefail

need=()
[ -f /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf ] || need+=(fonts-noto-core)
[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
if [ ${#need[@]} -eq 0 ]; then
  echo "Noto fonts already installed"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "apt-get not found: install ${need[*]} (or the Noto font files) manually and set OCRFLOW_FONT_DIRS" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" fontconfig
fc-cache -f >/dev/null 2>&1 || true
echo "installed: ${need[*]}"
