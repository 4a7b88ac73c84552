#!/usr/bin/env bash
# Real, born-digital PDFs for tests/test_real_pdfs.py, benchmarks/bench_engine.py and
# scripts/compare_pdftotext.py, from producers the project did not make:
# * Debian packages' documentation (TeX Live language packages: pdfTeX, xdvipdfmx, XeTeX;
#   groff: gropdf), downloaded with `apt-get download` (no installation, no dependencies);
# * test PDFs in a PyPI source distribution (pypdf: Word, Excel via Acrobat PDFMaker,
#   LibreOffice, InDesign, Google Docs/Skia, cairo, ReportLab, AutoCAD, LEADTOOLS), downloaded
#   with `pip download --no-binary :all: --no-deps` (no installation).
# Only the named PDFs are extracted (~195 MB downloaded, ~25 MB kept). Also installs poppler-utils (pdftotext, the independent
# reference) when it may (root or sudo; scripts/apt_install.sh). PYTHON: the interpreter whose
# pip downloads the sdists (default: .venv/bin/python, else python3).
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
texlive-lang-other|usr/share/doc/texlive-doc/latex/lshort-thai/lsh132.pdf|tha_lsh132.pdf
texlive-lang-other|usr/share/doc/texlive-doc/latex/thaispec/thaispec.pdf|tha_thaispec.pdf
texlive-lang-other|usr/share/doc/texlive-doc/generic/velthuis/hindi.pdf|hin_velthuis.pdf
texlive-lang-other|usr/share/doc/texlive-doc/latex/latex-mr/latex-mr.pdf|mar_latex-mr.pdf
texlive-lang-other|usr/share/doc/texlive-doc/latex/ethiop/ethiodoc.pdf|amh_ethiodoc.pdf
texlive-lang-chinese|usr/share/doc/texlive-doc/latex/lshort-chinese/lshort-zh-cn.pdf|zho_lshort-zh-cn.pdf
texlive-lang-chinese|usr/share/doc/texlive-doc/latex/ctex/ctex.pdf|zho_ctex.pdf
groff|usr/share/doc/groff-base/pdf/pdfmark.pdf|eng_groff_pdfmark.pdf
groff|usr/share/doc/groff-base/examples/mom/mon_premier_doc.pdf|fra_groff_mom.pdf
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
# PyPI sdist (pinned) | path inside the sdist | file name under DEST (producer: pdfinfo's Creator/Producer)
SDISTS="
pypdf==7.1.1|resources/GeoBase_NHNC1_Data_Model_UML_EN.pdf|eng_word2010_geobase.pdf
pypdf==7.1.1|resources/git.pdf|fra_word365_git.pdf
pypdf==7.1.1|resources/issue-914-xmp-data.pdf|zho_excel_pdfmaker.pdf
pypdf==7.1.1|resources/multilang.pdf|mul_libreoffice64_multilang.pdf
pypdf==7.1.1|resources/labeled-edges-center-image.pdf|eng_libreoffice64_image.pdf
pypdf==7.1.1|resources/example.pdf|eng_googledocs_skia.pdf
pypdf==7.1.1|resources/selenium-pypdf-issue-177.pdf|eng_cairo_selenium.pdf
pypdf==7.1.1|resources/reportlab-inline-image.pdf|eng_reportlab.pdf
pypdf==7.1.1|resources/AutoCad_Diagram.pdf|eng_autocad.pdf
pypdf==7.1.1|resources/crazyones.pdf|eng_xdvipdfmx_crazyones.pdf
pypdf==7.1.1|resources/issue-301.pdf|eng_leadtools.pdf
pypdf==7.1.1|resources/pdflatex-outline.pdf|eng_pdftex_outline.pdf
pypdf==7.1.1|resources/issue-604.pdf|eng_indesign14_pdfsharp.pdf
"
PY="${PYTHON:-}"
[ -n "$PY" ] || { [ -x .venv/bin/python ] && PY=.venv/bin/python || PY=python3; }
for row in $SDISTS; do
  IFS='|' read -r req path name <<<"$row"
  [ -s "$DEST/$name" ] && continue
  pkg="${req%%==*}"; ver="${req##*==}"
  sd="$(ls "$TMP"/"${pkg//-/_}"-"$ver".tar.gz "$TMP"/"$pkg"-"$ver".tar.gz 2>/dev/null | head -1 || true)"
  if [ -z "$sd" ]; then
    "$PY" -m pip download -q --no-deps --no-binary :all: "$req" -d "$TMP" >/dev/null 2>&1 \
      || { echo "warning: could not download the $req sdist"; continue; }
    sd="$(ls "$TMP"/"${pkg//-/_}"-"$ver".tar.gz "$TMP"/"$pkg"-"$ver".tar.gz 2>/dev/null | head -1 || true)"
  fi
  top="$(basename "$sd" .tar.gz)"
  tar -xzf "$sd" -C "$TMP" "$top/$path" 2>/dev/null && cp "$TMP/$top/$path" "$DEST/$name" \
    || echo "warning: $path not in $sd"
done
ls -l "$DEST"
