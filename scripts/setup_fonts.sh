#!/usr/bin/env bash
# Install the Noto fonts the synthetic page generator uses (data_engine/scripts.py):
# Debian/Ubuntu packages fonts-noto-core (per-script Noto Sans/Serif) and fonts-noto-cjk, and
# fonts-liberation for the reading pages (data_engine/reading_pages.py).
# Idempotent: does nothing when the fonts are already present. Other systems: install the
# Noto fonts any way you like and set OCRFLOW_FONT_DIRS to the folder(s) holding the files.
set -euo pipefail

need=()
[ -f /usr/share/fonts/truetype/noto/NotoSans-Regular.ttf ] || need+=(fonts-noto-core)
[ -f /usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc ] || need+=(fonts-noto-cjk)
# Liberation Sans/Serif/Mono: font families of the reading pages (data_engine/reading_pages.py)
[ -f /usr/share/fonts/truetype/liberation/LiberationMono-Regular.ttf ] || need+=(fonts-liberation)
if [ ${#need[@]} -eq 0 ]; then
  echo "Noto and Liberation fonts already installed"
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "${need[@]}" fontconfig \
  || { echo "Noto fonts not installed: install the Noto font files any way you like and set OCRFLOW_FONT_DIRS" >&2; exit 1; }
fc-cache -f >/dev/null 2>&1 || true
