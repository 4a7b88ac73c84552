"""Text defects found on real PDFs (real PDFs against poppler), each rebuilt here from
generated text or a generated PDF: a Chinese page quoting LaTeX code labelled Latin, Russian
quoted on an English page left as cp1251 mojibake, monospace code drawn glyph by glyph read
letter-spaced. Each assertion failed on the engine before the fix."""

from __future__ import annotations

import pymupdf
import pytest

from data_engine import coarse, langid, render

# Written for this test (no corpus text): 52 Han characters, and LaTeX code with ~230 letters.
ZH = "数据引擎把文档集合变成训练页面，每一页都保留阅读顺序中的文字和固定分辨率的图像。"
CODE = r"\usepackage{ctex} \begin{document} \section{Introduction} \end{document} documentclass article "


def test_cjk_page_quoting_code_is_han_and_mixed():
    page = "\n".join([ZH, CODE] * 3)
    assert sum(c.isascii() and c.isalpha() for c in page) > sum("\u4e00" <= c <= "\u9fff" for c in page)
    assert langid.detect_script(page) == "Hani"  # was Latn: more Latin letters than Han characters
    lang, script, mixed = langid.page_language_and_script(page)
    assert (lang, script) == ("zho", "Hani")
    assert set(mixed) == {"Hani", "Latn"} and abs(sum(mixed.values()) - 1) < 0.02 and mixed["Hani"] > mixed["Latn"]
    assert langid.page_language_and_script(ZH * 3)[2] is None  # a plain Chinese page is not mixed


def test_russian_quoted_on_an_english_page_is_repaired():
    ru = "Это предложение написано по-русски и было декодировано неправильно, как в старых документах."
    english = "This manual explains how documents are typeset with packages and commands. " * 8
    page = f"{english}\n{ru.encode('cp1251').decode('latin-1')}\n{english}"
    text, reason, detail = coarse.CoarseFilter().check(page)
    assert reason is None and "cp1251" in detail
    assert ru in text and english.strip() in text
    # pages of French/German accents are not mojibake: nothing is re-decoded there
    fr = "Les élèves ont été très fâchés à côté de la forêt où ils étaient allés déjà. " * 10
    assert coarse.CoarseFilter().check(fr)[2] is None


def test_letter_spaced_monospace_is_joined(tmp_path):
    """Code set glyph by glyph in Courier with 0.3 em tracking (as TeX's \\tt with letter
    spacing): every glyph gap is wider than a word gap, and MuPDF puts a synthetic space in
    each. (A one-cell word gap there makes MuPDF start a new line: not tested here.)"""
    doc = pymupdf.open()
    page = doc.new_page()
    size, cell = 10.0, 6.0 + 3.0  # Courier advance 0.6 em + 0.3 em tracking
    for row, line in enumerate([r"\renewcommand{\baselinestretch}{1.5}", r"\newcommand{\R}{\mathbb{R}}"]):
        x = 72.0
        for ch in line:
            if ch != " ":
                page.insert_text((x, 100 + 20 * row), ch, fontname="cour", fontsize=size)
            x += cell
    text = coarse.text_from_dict(render.extract_text(doc[0]))
    assert [ln for ln in text.split("\n") if ln] == [r"\renewcommand{\baselinestretch}{1.5}", r"\newcommand{\R}{\mathbb{R}}"]


def test_grid_table_cells_come_out_row_by_row():
    """A table written column by column (as Excel exports do): MuPDF makes one block per cell
    in that order; the coarse text must read row by row."""
    doc = pymupdf.open()
    page = doc.new_page()
    cols = [["Region", "North", "South", "East"], ["Units", "1200", "950", "1730"], ["Revenue", "15.2", "11.9", "20.4"]]
    for c, col in enumerate(cols):
        for r, cell in enumerate(col):
            page.insert_text((72 + 110 * c, 100 + 16 * r), cell, fontname="helv", fontsize=10)
    page.insert_textbox(pymupdf.Rect(72, 200, 520, 300), "A paragraph after the table. " * 8, fontname="helv", fontsize=10)
    text = coarse.text_from_dict(render.extract_text(doc[0]))
    assert text.split("\n")[:4] == ["Region Units Revenue", "North 1200 15.2", "South 950 11.9", "East 1730 20.4"]
    assert text.replace("\n", " ").endswith("A paragraph after the table.")  # the paragraph stays whole


def test_vertical_japanese_column_is_one_line():
    """Vertical writing set glyph under glyph (right column first): MuPDF gives one character
    per line; the coarse text has one line per column, in the columns' order."""
    doc = pymupdf.open()
    page = doc.new_page()
    columns = ["縦書きの日本語です", "二行目もあります"]
    for c, col in enumerate(columns):
        for r, ch in enumerate(col):
            page.insert_text((400 - 30 * c, 100 + 14 * r), ch, fontname="japan", fontsize=12)
    text = coarse.text_from_dict(render.extract_text(doc[0]))
    assert [ln for ln in text.split("\n") if ln] == columns


# Written for this test: Greek with tonos on most words and a capitalised word.
GREEK = ("Η μηχανή διαβάζει κάθε σελίδα του εγγράφου και κρατά το κείμενό της με τη σωστή σειρά "
         "ανάγνωσης. Ένα δεύτερο παράδειγμα έχει τόνους και ΚΕΦΑΛΑΙΑ γράμματα. ")


def _legacy_greek_pdf(font_path, text: str) -> pymupdf.Document:
    """A page set in a legacy 8-bit Greek font, as pre-Unicode Greek documents are: the font's
    glyph for byte 0xE1 is alpha, its PDF encoding says WinAnsi (0xE1 = "aacute") and it has no
    ToUnicode. It renders Greek; every text extractor reads Latin-1 ("Ç ìç÷áíÞ")."""
    import io
    import textwrap

    from fontTools import subset, ttLib
    from fontTools.ttLib.tables._c_m_a_p import CmapSubtable

    font = ttLib.TTFont(str(font_path))
    sub = subset.Subsetter(subset.Options())
    sub.populate(text=text)
    sub.subset(font)
    uni = font.getBestCmap()
    legacy = {}  # Latin-1 code point of each cp1253 byte -> the Greek glyph
    for b in range(0x20, 0x100):
        try:
            greek, latin = bytes([b]).decode("cp1253"), bytes([b]).decode("cp1252")
        except UnicodeDecodeError:
            continue
        if ord(greek) in uni:
            legacy[ord(latin)] = uni[ord(greek)]
    cmap = CmapSubtable.newSubtable(4)
    cmap.platformID, cmap.platEncID, cmap.language, cmap.cmap = 3, 1, 0, legacy
    font["cmap"].tables = [cmap]
    buf = io.BytesIO()
    font.save(buf)
    upm, hmtx = font["head"].unitsPerEm, font["hmtx"]
    widths = []
    for code in range(32, 256):
        glyph = legacy.get(ord(bytes([code]).decode("cp1252", errors="replace")))
        widths.append(round(hmtx[glyph][0] * 1000 / upm) if glyph else 0)

    doc = pymupdf.open()
    page = doc.new_page()

    def obj(source: str, stream: bytes | None = None) -> int:
        xref = doc.get_new_xref()
        doc.update_object(xref, source)
        if stream is not None:
            doc.update_stream(xref, stream, new=True)
        return xref

    ff = obj("<<>>", buf.getvalue())
    fd = obj(f"<</Type/FontDescriptor/FontName/LegacyGreek/Flags 32/FontBBox[-500 -300 1500 1000]/ItalicAngle 0"
             f"/Ascent 1000/Descent -300/CapHeight 700/StemV 80/FontFile2 {ff} 0 R>>")
    fo = obj(f"<</Type/Font/Subtype/TrueType/BaseFont/LegacyGreek/FirstChar 32/LastChar 255"
             f"/Widths[{' '.join(map(str, widths))}]/Encoding/WinAnsiEncoding/FontDescriptor {fd} 0 R>>")
    lines = textwrap.wrap(text, 70)
    ops = ["BT /FG 11 Tf 14 TL 72 770 Td", *(f"<{ln.encode('cp1253').hex()}> Tj T*" for ln in lines), "ET"]
    doc.xref_set_key(page.xref, "Resources", f"<</Font<</FG {fo} 0 R>>>>")
    doc.xref_set_key(page.xref, "Contents", f"{obj('<<>>', chr(10).join(ops).encode())} 0 R")
    return pymupdf.open("pdf", doc.tobytes())


def test_legacy_encoded_greek_is_read_as_greek():
    """cp1253 bytes read as Latin-1 are letters in cp1251 and KOI8-R too: the page was
    'repaired' into Cyrillic gibberish ("З мзчбнЮ"). The code page whose reading spells words wins."""
    from data_engine import fallback
    from data_engine.scripts import find_font

    font = find_font("NotoSans-Regular.ttf")
    if font is None:
        pytest.skip("Noto Sans not installed (scripts/setup_fonts.sh)")
    doc = _legacy_greek_pdf(font, GREEK * 2)
    raw = coarse.text_from_dict(render.extract_text(doc[0]))
    assert "Ç ìç÷áíÞ" in raw  # the defect is in the text layer
    (text, reason, detail), tdict, source = fallback.page_check(doc[0], coarse.CoarseFilter())
    assert reason is None and detail == coarse.MOJIBAKE_FIXED + "Latin-1 -> cp1253"
    assert coarse.normalize_text(GREEK * 2).replace("\n", " ") == text.replace("\n", " ")
    assert langid.page_language_and_script(text)[:2] == ("ell", "Grek")
    # Russian read as Latin-1 still goes to cp1251 (KOI8-R and cp1253 make it letters too)
    ru = "Это предложение написано по-русски и было декодировано неправильно, как в старых документах. " * 3
    assert coarse.CoarseFilter().check(coarse.normalize_text(ru.encode("cp1251").decode("latin-1")))[0] == ru.strip()


def _two_column_page_written_across(columns: list[str], lines_per_column: int = 9) -> pymupdf.Document:
    """A title over side-by-side columns whose content stream writes the page line by line
    across the columns (left line 1, right line 1, ...), as some producers do: MuPDF joins those
    lines into one block that alternates between the columns."""
    import textwrap

    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_text((72, 80), "Reading Order of a Column Page", fontname="hebo", fontsize=16)
    width = (451 - 20 * (len(columns) - 1)) / len(columns)
    wrapped = [textwrap.wrap(t, int(width / 5.2))[:lines_per_column] for t in columns]
    for row in range(lines_per_column):
        for c, lines in enumerate(wrapped):
            page.insert_text((72 + c * (width + 20), 120 + 13 * row), lines[row], fontname="helv", fontsize=10)
    return pymupdf.open("pdf", doc.tobytes())


# Written for this test: two columns of distinct sentences.
LEFT = "The left column opens the article and explains how the engine reads each page of a document. " * 4
RIGHT = "The right column goes on after the left one has ended at the bottom of the same page. " * 4


def test_two_columns_written_across_read_left_column_first():
    from data_engine.layout.textlayer import TextLayerLayout

    doc = _two_column_page_written_across([LEFT, RIGHT])
    tdict = render.extract_text(doc[0])
    text = coarse.text_from_dict(tdict)
    paragraphs = [p.replace("\n", " ") for p in text.split("\n\n")]
    assert paragraphs[0] == "Reading Order of a Column Page"
    assert paragraphs[1].startswith("The left column opens") and "right column" not in paragraphs[1]
    assert paragraphs[2].startswith("The right column goes on") and "left column" not in paragraphs[2]
    assert len(paragraphs) == 3
    # the fine label reads the same blocks: the title, then one box per column
    for td in (tdict, None):  # coarse's dict, or the layout's own extraction
        blocks = TextLayerLayout(find_tables=False).blocks(doc[0], td)
        assert [b.label for b in blocks] == ["title", "text", "text"]
        assert blocks[1].text.startswith("The left column") and blocks[2].text.startswith("The right column")
        assert blocks[1].bbox[2] < blocks[2].bbox[0]  # side by side, not one box over both
