"""Coarse-label defect classes found on real PDFs, each reproduced on a small PDF made here (or
on glyph records laid out the way MuPDF reports a real XeTeX page), plus language/script ID."""

from __future__ import annotations

import pymupdf
import pytest

from data_engine import coarse, langid
from data_engine.scripts import find_font
from data_engine.text_assembly import line_text, visual_to_logical


def _page():
    doc = pymupdf.open()
    return doc, doc.new_page()


def _text(page) -> str:
    return coarse.page_text(page)[0]


def test_word_gaps_made_by_positioning_korean():
    # xdvipdfmx-style Korean: every word drawn on its own, the inter-word space is pen movement
    doc, page = _page()
    font = pymupdf.Font("cjk")
    page.insert_font(fontname="F0", fontbuffer=font.buffer)
    x = 72
    for word in ["웹주소에서", "흔히", "보이는", "문자"]:
        page.insert_text((x, 100), word, fontname="F0", fontsize=12)
        x += font.text_length(word, 12) + 4  # a 0.33 em gap, no space glyph
    assert page.get_text().strip() == "웹주소에서흔히보이는문자"  # MuPDF's own text loses the breaks
    assert _text(page) == "웹주소에서 흔히 보이는 문자"


def test_no_spaces_inside_japanese_justification():
    doc, page = _page()
    font = pymupdf.Font("cjk")
    page.insert_font(fontname="F0", fontbuffer=font.buffer)
    x = 72
    for ch in "これは日本語の文章です":  # justified: every character 0.2 em apart
        page.insert_text((x, 100), ch, fontname="F0", fontsize=12)
        x += font.text_length(ch, 12) + 2.4
    assert _text(page) == "これは日本語の文章です"


def test_tex_spacing_accents_compose():
    # TeX's \accent: the accent is its own glyph drawn over the letter, before it
    doc, page = _page()
    helv = pymupdf.Font("helv")
    x = 72
    page.insert_text((x, 100), "preparaci", fontname="helv", fontsize=12)
    x += helv.text_length("preparaci", 12)
    page.insert_text((x + 1.5, 100), "\u00b4", fontname="helv", fontsize=12)
    page.insert_text((x, 100), "on apresenta", fontname="helv", fontsize=12)
    x += helv.text_length("on apresenta", 12)
    page.insert_text((x + 1, 100), "\u00b8", fontname="helv", fontsize=12)  # cedilla under the c
    page.insert_text((x, 100), "c", fontname="helv", fontsize=12)
    x += helv.text_length("c", 12)
    page.insert_text((x + 0.5, 100), "~", fontname="helv", fontsize=12)  # OT1 tilde
    page.insert_text((x, 100), "oes", fontname="helv", fontsize=12)
    assert "preparaci\u00b4on" in page.get_text()
    assert _text(page) == "preparación apresentações"
    # a standalone accent (not over a letter) stays as it is
    assert line_text([{"c": "\u00b4", "bbox": (0, 0, 4, 10), "size": 10},
                      {"c": "a", "bbox": (10, 0, 15, 10), "size": 10}]) == "\u00b4 a"


def test_dotless_i_and_ogonek():
    chars = [{"c": "w", "bbox": (0, 0, 7, 10), "size": 10}, {"c": "\u00b4", "bbox": (7.5, 0, 9.5, 10), "size": 10},
             {"c": "\u0131", "bbox": (7, 0, 10, 10), "size": 10}, {"c": "\u02db", "bbox": (10.5, 0, 12.5, 10), "size": 10},
             {"c": "e", "bbox": (10, 0, 15, 10), "size": 10}]
    assert line_text(chars) == "wíę"


def test_rtl_visual_order_restored():
    font = find_font("NotoNaskhArabic-Regular.ttf")
    if font is None:
        pytest.skip("Noto Naskh Arabic not installed (scripts/setup_fonts.sh)")
    from bidi import get_display

    logical = "في عام 1987 قال الكاتب"
    visual = get_display(logical, base_dir="R")  # what a visual-order producer draws left to right
    doc, page = _page()
    page.insert_font(fontname="AR", fontfile=str(font))
    page.insert_text((72, 100), visual, fontname="AR", fontsize=14)
    assert page.get_text().strip() != logical
    assert _text(page) == logical


def test_rtl_ligature_and_marks_as_mupdf_reports_xetex():
    # Glyph records of "معمولاً به" from a real XeTeX page (lshort-persian): MuPDF emits the
    # lam-alef ligature's extra character (alef) as a zero-width box *before* the glyph, and
    # the tanween after the following space.
    raw = [("م", 421.6, 425.4), ("ع", 417.4, 421.6), ("م", 412.6, 417.4), ("و", 408.1, 412.6),
           ("ا", 409.1, 409.1), ("ل", 402.8, 409.1), (" ", 400.6, 402.8), ("\u064b", 400.6, 400.6),
           ("ب", 398.4, 400.6), ("ه", 394.7, 398.4)]
    chars = [{"c": c, "bbox": (x0, 0, x1, 10), "size": 10.9} for c, x0, x1 in raw]
    assert line_text(chars) == "معمولاً به"
    # kashida (tatweel) stretching a word is not a letter
    kash = [{"c": c, "bbox": (100 - 5 * i, 0, 105 - 5 * i, 10), "size": 10} for i, c in enumerate("كـــتاب")]
    assert line_text(kash) == "كتاب"


@pytest.mark.parametrize("logical", ["السلام عليكم في عام 1987 قال", "Windows 10 نسخه جدید", "abc عربی def",
                                     "الفصل ۲.۲ شکستن خط", "מחיר 100 ש״ח and more"])
def test_visual_to_logical_matches_python_bidi(logical):
    from bidi import get_display

    for base, level in (("R", 1), ("L", 0)):
        visual = get_display(logical, base_dir=base)  # reference UBA implementation
        assert "".join(visual_to_logical(list(visual), level)) == logical


def test_cp1251_mojibake_repaired():
    doc, page = _page()
    page.insert_text((72, 100), "Ìû ïðîâåðÿåì, ÷òî òåêñò â êîäèðîâêå ÷èòàåòñÿ ïðàâèëüíî.", fontname="helv", fontsize=11)
    text, reason, detail = coarse.CoarseFilter().check(_text(page))
    assert reason is None and "cp1251" in detail
    assert text == "Мы проверяем, что текст в кодировке читается правильно."
    assert langid.detect_language(text)[0] == "rus"
    # real accented languages are untouched
    for text in ("Ceci est une phrase française où l'on écrit à côté des élèves.",
                 "Tiếng Việt có nhiều dấu thanh và chữ cái đặc biệt như ư, ơ, đ."):
        assert coarse.CoarseFilter().check(text) == (text, None, None)


def _drop_tounicode(doc):
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "ToUnicode")[0] != "null":
            doc.xref_set_key(xref, "ToUnicode", "null")
    return pymupdf.open("pdf", doc.tobytes())


def test_few_unmapped_glyphs_do_not_reject_a_page():
    # prose in Helvetica, three delimiters from a font without a ToUnicode map (U+FFFD each)
    doc, page = _page()
    page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cjk").buffer)
    sentence = "The engine reads every page of the document and keeps the text in reading order."
    for i in range(4):
        page.insert_text((72, 100 + 20 * i), sentence, fontname="helv", fontsize=10)
    for i in range(3):
        page.insert_text((60, 100 + 20 * i), "\u27e8", fontname="F0", fontsize=10)
    doc = _drop_tounicode(doc)
    raw = _text(doc[0])
    assert 1 <= sum(1 for c in raw if c == "\ufffd" or ord(c) < 32 and c not in "\n\t") <= 3
    text, reason, detail = coarse.CoarseFilter().check(raw)
    assert reason is None and detail.startswith("dropped")
    assert "\ufffd" not in text and sentence in text
    # whole words unmapped: still garbled, with the ratio and the characters in the detail
    _, reason, detail = coarse.CoarseFilter().check("ok " + "\ufffd" * 30 + " fine words here")
    assert reason == coarse.GARBLED_TEXT and "U+FFFD x30" in detail


def test_script_joins_han_and_kana_before_counting():
    # more Latin letters than kana, more than Han, but fewer than Han + kana
    text = "LaTeX の jsarticle クラスでは、本文の文字サイズを指定する。"  # Latin 14, kana 13, Han 6
    assert langid.detect_script(text) == "Jpan"
    assert langid.detect_script("한국어 문장과 漢字") == "Kore"
    assert langid.detect_script("這是中文的句子，有一點 English") == "Hani"


def test_language_macrolanguages_and_modern_languages():
    assert not {"wuu", "yue", "grc", "hbo", "zxx"} & set(langid.languages())
    assert len(langid.languages()) >= 100
    zh = "我们的数据引擎把每一页文档渲染成图像，并从文本层提取文字作为训练标签。这样可以得到大量的训练数据。"
    assert langid.detect_language(zh)[0] == "zho"
    polytonic = "Ἡ γλῶσσα μου ἔχει πολλὰ τονικὰ σημάδια, ἀλλὰ εἶναι ἡ νέα ἑλληνικὴ γλῶσσα ποὺ μιλᾶμε σήμερα."
    assert langid.detect_language(polytonic)[0] == "ell"
