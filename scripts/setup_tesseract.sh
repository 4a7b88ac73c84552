#!/usr/bin/env bash
# Install Tesseract 5 and the language packs the flywheel's baseline column uses (Debian/Ubuntu):
# tesseract-ocr + tesseract-ocr-<lang> for each language given (default: eng hin).
#   scripts/setup_tesseract.sh eng hin ben tam tha ara fas kor jpn khm mya sin
# Idempotent (scripts/apt_install.sh). Without apt-get (or root/sudo) it says so and exits 1;
# the flywheel then shows the Tesseract column empty with the reason instead of failing.
set -euo pipefail

langs=("$@")
[ ${#langs[@]} -gt 0 ] || langs=(eng hin)
have=""
command -v tesseract >/dev/null && have="$(tesseract --list-langs 2>/dev/null | tail -n +2 || true)"
need=()
command -v tesseract >/dev/null || need+=(tesseract-ocr)
for l in "${langs[@]}"; do
  grep -qx "$l" <<<"$have" || need+=("tesseract-ocr-${l//_/-}")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "Tesseract with ${langs[*]} already installed"
  exit 0
fi
bash "$(dirname "$0")/apt_install.sh" "${need[@]}" \
  || { echo "Tesseract not installed: the flywheel shows its column empty with the reason meanwhile" >&2; exit 1; }
