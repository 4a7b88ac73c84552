#!/usr/bin/env bash
# Real, born-digital PDFs for tests/test_real_pdfs.py, taken from Debian's TeX Live language
# packages (documentation the project did not make; LPPL/GPL-licensed TeX documentation). The
# .deb files are downloaded with `apt-get download` (no installation, no dependencies) and only
# the named PDFs are extracted. Also installs poppler-utils (pdftotext, the independent
# reference) when it may (root or sudo; scripts/apt_install.sh).
#
#   bash scripts/fetch_real_pdfs.sh [DEST]      # default DEST: .cache/real_pdfs
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-.cache/real_pdfs}"
mkdir -p "$DEST"
if ! command -v pdftotext >/dev/null 2>&1; then
  bash scripts/apt_install.sh poppler-utils >/dev/null || echo "warning: poppler-utils not installed"
fi
# package | path inside the package | file name under DEST (language prefix: what it exercises)
FILES="
texlive-lang-polish|usr/share/doc/texlive-doc/latex/przechlewski-book/wkmgr1.pdf|pol_wkmgr1.pdf
texlive-lang-korean|usr/share/doc/texlive-doc/latex/lshort-korean/lshort-ko.pdf|kor_lshort-ko.pdf
texlive-lang-arabic|usr/share/doc/texlive-doc/latex/lshort-persian/lshort.pdf|fas_lshort.pdf
texlive-lang-cyrillic|usr/share/doc/texlive-doc/latex/lshort-russian/lshortru.pdf|rus_lshortru.pdf
"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
for row in $FILES; do
  IFS='|' read -r pkg path name <<<"$row"
  [ -s "$DEST/$name" ] && continue
  if [ -f "/$path" ]; then cp "/$path" "$DEST/$name"; continue; fi                  # installed package
  if [ -f "/$path.gz" ]; then gunzip -c "/$path.gz" >"$DEST/$name"; continue; fi
  ( cd "$TMP" && ls "$pkg"_*.deb >/dev/null 2>&1 || apt-get download -q "$pkg" >/dev/null ) \
    || { echo "warning: could not download $pkg"; continue; }
  deb="$(ls "$TMP/$pkg"_*.deb | head -1)"
  dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$TMP" "./$path" 2>/dev/null \
    || dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$TMP" "./$path.gz" 2>/dev/null || true
  if [ -f "$TMP/$path" ]; then cp "$TMP/$path" "$DEST/$name"
  elif [ -f "$TMP/$path.gz" ]; then gunzip -c "$TMP/$path.gz" >"$DEST/$name"
  else echo "warning: $path not in $pkg"; fi
done
ls -l "$DEST"
