"""Word documents a user has (the paper's 3M .docx pairs, good for formulas and HTML tables).

Item = one ``.docx`` file. Label (prompt "Free OCR."), from the document's structure with
``mammoth``: paragraphs and headings as text lines, tables as minimal HTML
(``htmltable.html_table``, merged cells kept). Image: the document rendered with LibreOffice
headless (Debian ``libreoffice-writer-nogui``) to PDF, then with PyMuPDF. The pair is
layout-free, so only single-page documents are used (``multi_page`` otherwise: a page-wise
label would need the text-to-page split LibreOffice does not report). Equations stored as
Office Math (OMML) are not converted by mammoth and are dropped from the label; documents
that contain them are recorded as ``has_equations`` and skipped rather than mislabelled.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

from data_engine.sources.base import GeneratedSample, MissingDependency, Skip, Source, hash16, require
from data_engine.sources.htmltable import html_table
from models.prompts import PROMPT_COARSE

_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li"}


class _DocHTML(HTMLParser):
    """mammoth's HTML -> label lines; tables become minimal HTML tables."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.text: list[str] | None = None
        self.tables: list[list[list]] = []  # stack (nested tables are flattened into cells)
        self.cell: list[str] | None = None
        self.span = (1, 1)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr" and self.tables:
            self.tables[-1].append([])
        elif tag in ("td", "th") and self.tables:
            a = dict(attrs)
            self.cell, self.span = [], (int(a.get("colspan") or 1), int(a.get("rowspan") or 1))
        elif tag in _BLOCKS and self.cell is None:
            self.text = []
        elif tag == "br":
            (self.cell if self.cell is not None else self.text or []).append(" ")

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None and self.tables and self.tables[-1]:
            self.tables[-1][-1].append((" ".join("".join(self.cell).split()), *self.span))
            self.cell = None
        elif tag == "table" and self.tables:
            rows = [r for r in self.tables.pop() if r]
            if rows:
                self.out.append(html_table(rows))
        elif tag in _BLOCKS and self.text is not None and self.cell is None:
            line = " ".join("".join(self.text).split())
            if line:
                self.out.append(("#" * int(tag[1]) + " " + line) if tag[0] == "h" and tag[1:].isdigit() else line)
            self.text = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell.append(data)
        elif self.text is not None:
            self.text.append(data)


def docx_label(path: str | Path) -> str:
    """The label text of a .docx (paragraphs, headings, HTML tables), one block per line."""
    mammoth = require("mammoth", "mammoth", "sources")
    with open(path, "rb") as f:
        html = mammoth.convert_to_html(f).value
    p = _DocHTML()
    p.feed(html)
    p.close()
    return "\n\n".join(p.out)


def soffice() -> str:
    exe = shutil.which("soffice") or shutil.which("libreoffice")
    if exe is None:
        raise MissingDependency("rendering .docx files needs LibreOffice: install the Debian package "
                                "libreoffice-writer-nogui (apt-get install libreoffice-writer-nogui)")
    return exe


def render_docx(path: str | Path, dpi: int = 144):
    """First page of the document as an RGB image, and its page count (LibreOffice -> PDF -> PyMuPDF)."""
    import pymupdf
    from PIL import Image

    exe = soffice()
    with tempfile.TemporaryDirectory() as tmp:
        # A private profile: parallel conversions must not share LibreOffice's user directory.
        cmd = [exe, f"-env:UserInstallation=file://{tmp}/profile", "--headless", "--convert-to", "pdf",
               "--outdir", tmp, str(path)]
        r = subprocess.run(cmd, capture_output=True, timeout=120)
        pdf = Path(tmp) / (Path(path).stem + ".pdf")
        if r.returncode != 0 or not pdf.is_file():
            raise Skip("render_error", f"LibreOffice failed: {r.stderr.decode(errors='replace')[-200:]}")
        doc = pymupdf.open(pdf)
        n = doc.page_count
        pix = doc[0].get_pixmap(dpi=dpi, alpha=False)
        return Image.frombytes("RGB", (pix.width, pix.height), pix.samples), n


class DocxSource(Source):
    name = "docx"

    def __init__(self, input=None, dpi: int = 144, **options):
        if not input:
            raise ValueError("docx needs --input: a folder, glob or list of .docx files")
        super().__init__(input=input, dpi=dpi, **options)
        root = Path(input)
        self.files = sorted(str(p) for p in root.rglob("*.docx")) if root.is_dir() else sorted(
            str(p) for p in Path().glob(input)) if any(c in input for c in "*?[") else [input]
        soffice()

    def num_items(self):
        return len(self.files)

    def describe(self, index):
        return self.files[index]

    def make(self, index, rng):
        path = self.files[index]
        data = Path(path).read_bytes()
        if b"m:oMath" in _document_xml(data):
            raise Skip("has_equations", "Office Math equations are not converted by mammoth")
        try:
            label = docx_label(path)
        except Exception as e:  # noqa: BLE001 - a broken document is recorded, never fatal
            raise Skip("bad_docx", f"{type(e).__name__}: {e}") from None
        if not label.strip():
            raise Skip("empty_document", "no text or table")
        img, pages = render_docx(path, self.options["dpi"])
        if pages != 1:
            raise Skip("multi_page", f"{pages} pages")
        return GeneratedSample(image=img, labels={"coarse": {"prompt": PROMPT_COARSE, "text": label}},
                               source_path=str(Path(path).resolve()), doc_id=hash16(data), kind="docx")


def _document_xml(data: bytes) -> bytes:
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.read("word/document.xml")
    except (zipfile.BadZipFile, KeyError):
        raise Skip("bad_docx", "not a .docx (zip with word/document.xml)") from None
