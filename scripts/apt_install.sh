#!/usr/bin/env bash
# Install Debian/Ubuntu packages the project needs, once:   scripts/apt_install.sh PKG...
# Shared by scripts/setup_fonts.sh, scripts/setup_tesseract.sh and scripts/fetch_real_pdfs.sh.
# Idempotent: packages dpkg already has are skipped; nothing to do -> exit 0 without apt-get.
# Runs apt-get as root, or through sudo when not root; exits 1 with a message naming the
# packages when apt-get is missing, or when neither root nor sudo can install them (the caller
# adds what to do instead).
set -euo pipefail

need=()
for pkg in "$@"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
[ ${#need[@]} -gt 0 ] || exit 0

if ! command -v apt-get >/dev/null; then
  echo "apt-get not found: install ${need[*]} with your system's package manager" >&2
  exit 1
fi
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null; then
    echo "installing ${need[*]} needs root: run as root or install sudo" >&2
    exit 1
  fi
  SUDO=(sudo)
fi
if ! { "${SUDO[@]}" apt-get update -qq \
       && "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y -qq --no-install-recommends "${need[@]}"; }; then
  echo "apt-get could not install ${need[*]}${SUDO:+ (with sudo)}" >&2
  exit 1
fi
echo "installed: ${need[*]}"
