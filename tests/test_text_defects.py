"""Text defects found on real PDFs (real PDFs against poppler), each rebuilt here from
generated text or a generated PDF: a Chinese page quoting LaTeX code labelled Latin, Russian
quoted on an English page left as cp1251 mojibake, monospace code drawn glyph by glyph read
letter-spaced. Each assertion failed on the engine before the fix."""

from __future__ import annotations

import pymupdf

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
