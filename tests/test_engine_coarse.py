"""Coarse labels, filters, language/script id and rendering of the data engine, on PDFs made here."""

from __future__ import annotations

import io
import json
import re
import unicodedata
from collections import Counter

import pymupdf
import pytest
from PIL import Image

from data_engine import coarse, langid, render

# Text written by us (not from any corpus): (lang, script, paragraphs of lines).
PAGES = {
    "eng": ("Latn", [["The engine reads every page of a document,", "keeps its text in reading order"],
                     ["and writes one training sample for each page", "that passes the quality filters."]]),
    "rus": ("Cyrl", [["Движок читает каждую страницу документа,", "сохраняет текст в порядке чтения"],
                     ["и записывает один обучающий пример", "для каждой страницы, прошедшей фильтры."]]),
    "ell": ("Grek", [["Η μηχανή διαβάζει κάθε σελίδα του εγγράφου,", "κρατά το κείμενο με τη σειρά ανάγνωσης"],
                     ["και γράφει ένα παράδειγμα εκπαίδευσης", "για κάθε σελίδα που περνά τα φίλτρα."]]),
    "zho": ("Hani", [["这个引擎读取文档的每一页，", "并按照阅读顺序保存文本。"],
                     ["每一页通过质量过滤以后，", "它会写出一个训练样本。"]]),
}


def make_page_pdf(paragraphs: list[list[str]], fontsize: float = 12) -> pymupdf.Document:
    """One A4 page; each paragraph is a separate text block, each line a text line.

    MuPDF's builtin "cjk" font (Droid Sans Fallback) covers Latin, Cyrillic, Greek and Han, so
    the test needs no system fonts.
    """
    doc = pymupdf.open()
    page = doc.new_page()
    page.insert_font(fontname="F0", fontbuffer=pymupdf.Font("cjk").buffer)
    y = 90
    for para in paragraphs:
        for line in para:
            page.insert_text((72, y), line, fontname="F0", fontsize=fontsize)
            y += fontsize * 1.4
        y += 60  # a large gap: a new block
    return pymupdf.open("pdf", doc.tobytes())


@pytest.mark.parametrize("lang", sorted(PAGES))
def test_coarse_text_equals_source(lang):
    script, paras = PAGES[lang]
    doc = make_page_pdf(paras)
    text = coarse.text_from_dict(render.extract_text(doc[0]))
    expected = coarse.normalize_text("\n\n".join("\n".join(p) for p in paras))
    assert text == expected
    assert coarse.CoarseFilter().reason(text) is None
    assert langid.detect_script(text) == script
    assert langid.detect_language(text)[0] == lang


def test_normalize_text():
    raw = "  e\u0301t\u00e9\t  two   spaces \r\nnext\n\n\n\nlast  "
    assert coarse.normalize_text(raw) == "\u00e9t\u00e9 two spaces\nnext\n\nlast"
    assert unicodedata.is_normalized("NFC", coarse.normalize_text("A\u030a"))


def test_script_composites():
    assert langid.detect_script("これは日本語の文章です。") == "Jpan"
    assert langid.detect_script("한국어 문장과 漢字") == "Kore"
    assert langid.detect_script("1234 ... !!") == "Zyyy"
    assert langid.detect_script("مرحبا بالعالم") == "Arab"
    assert langid.to_iso639_3("de") == "deu" and langid.to_iso639_3("ary") == "ary"
    assert langid.detect_language("short")[0] == "und"


def _drop_tounicode(doc: pymupdf.Document) -> pymupdf.Document:
    """Remove every /ToUnicode CMap: what broken producers ship (glyph ids come out as text)."""
    for xref in range(1, doc.xref_length()):
        if doc.xref_get_key(xref, "ToUnicode")[0] != "null":
            doc.xref_set_key(xref, "ToUnicode", "null")
    return pymupdf.open("pdf", doc.tobytes())


def test_filters_reasons():
    f = coarse.CoarseFilter(min_chars=10, max_tokens=50)
    garbled = _drop_tounicode(make_page_pdf(PAGES["rus"][1]))
    assert f.reason(coarse.text_from_dict(render.extract_text(garbled[0]))) == coarse.GARBLED_TEXT
    assert f.reason("a \ufffd b \ufffd c d e f g h") == coarse.GARBLED_TEXT
    assert f.reason("\ue000\ue001" + "x" * 20) == coarse.GARBLED_TEXT  # a run of private-use chars
    assert f.check("\ue000" + "x" * 20)[:2] == ("x" * 20, None)  # one lone glyph is dropped, not the page
    assert f.reason("   \n ") == coarse.NO_TEXT_LAYER
    assert f.reason("Page 3") == coarse.TOO_LITTLE_TEXT
    assert f.reason("word " * 60) == coarse.TOO_MANY_TOKENS
    assert f.reason("word " * 30) is None

    class Chars:  # a "tokenizer" with one id per character: the exact path is used when given
        def encode(self, text):
            return list(text)

    assert coarse.CoarseFilter(max_tokens=50, tokenizer=Chars()).reason("abcd " * 11) == coarse.TOO_MANY_TOKENS


def test_estimate_tokens():
    assert coarse.estimate_tokens("") == 0
    assert coarse.estimate_tokens("中文文本") == 4          # one per wide char
    assert coarse.estimate_tokens("abcdefgh") == 2          # 8 bytes / 4
    assert coarse.estimate_tokens("абвг") == 2              # 8 UTF-8 bytes / 4
    # 4-byte wide chars (CJK ext. B, emoji): still one each, never more tokens than chars
    assert coarse.estimate_tokens("\U00020000\U0001F600a") == 3
    for text in ("\U00020000" * 9, "x\U0001F600" * 7, "中a" * 5):
        assert coarse.estimate_tokens(text) <= len(text)


def test_render_dpi_cap_and_jpeg():
    doc = make_page_pdf(PAGES["eng"][1])
    img = render.render_page(doc[0], dpi=144)
    assert img.size == (1190, 1684) and img.dpi == 144.0  # A4 at 2x
    pil = Image.open(io.BytesIO(img.data))
    assert pil.format == "JPEG" and pil.size == img.size
    # The text is there: the page is not blank where the first line was drawn.
    gray = pil.convert("L").crop((144, 150, 700, 190))
    assert gray.getextrema()[0] < 100
    capped = render.render_page(doc[0], dpi=144, max_side=842)
    assert max(capped.size) == 842 and capped.dpi == pytest.approx(72.0)
    png = render.render_page(doc[0], dpi=72, fmt="png")
    assert Image.open(io.BytesIO(png.data)).format == "PNG" and png.size == (595, 842)


def test_synthetic_pages_round_trip(tmp_path, noto_fonts):
    """The synthetic generator: coarse text holds exactly the characters the generator placed."""
    from data_engine.synthetic import generate_corpus

    noto_fonts("Cyrl", "Latn")

    for pdf in generate_corpus(tmp_path, languages=["Cyrl", "Latn"], n_docs=1, pages_per_doc=1, seed=3):
        gt = json.loads(pdf.with_suffix(".gt.json").read_text(encoding="utf-8"))
        blocks = gt["pages"][0]["blocks"]
        want = Counter()
        for b in blocks:  # tables' ground truth is HTML: compare the cell text only
            want.update(c for c in unicodedata.normalize("NFKC", re.sub(r"<[^>]+>", "", b["text"])) if not c.isspace())
        doc = pymupdf.open(pdf)
        text = coarse.text_from_dict(render.extract_text(doc[0]))
        got = Counter(c for c in unicodedata.normalize("NFKC", text) if not c.isspace())
        assert got == want, (pdf.name, (got - want).most_common(5), (want - got).most_common(5))
        assert langid.detect_script(text) == gt["script"]


# UDHR files (real text, 451 languages) whose language py3langid covers; (file, ISO 639-3, ISO 15924).
_UDHR = [("eng", "eng", "Latn"), ("rus", "rus", "Cyrl"), ("ukr", "ukr", "Cyrl"), ("ell_monotonic", "ell", "Grek"),
         ("deu_1901", "deu", "Latn"), ("pol", "pol", "Latn"), ("tur", "tur", "Latn"), ("vie", "vie", "Latn"),
         ("hin", "hin", "Deva"), ("tha", "tha", "Thai"), ("jpn", "jpn", "Jpan"), ("kor", "kor", "Hang"),
         ("cmn_hans", "zho", "Hani")]  # py3langid answers the macrolanguage (zh -> zho) for Mandarin


@pytest.mark.parametrize("name,lang,script", _UDHR)
def test_language_and_script_on_udhr(udhr_dir, name, lang, script):
    text = (udhr_dir / f"{name}.txt").read_text(encoding="utf-8")[:3000]
    assert langid.detect_language(text)[0] == lang
    assert langid.detect_script(text) == script


def _garble_by_loop(text: str) -> tuple[int, int, int, list]:
    """The per-character definition `coarse.garble` must agree with (it counts with Counter
    and one regex pass): bad characters, those without a bad neighbour, the three most common."""
    bad_at = [coarse._is_bad_char(ch) for ch in text]
    bad = sum(b and not ch.isspace() for b, ch in zip(bad_at, text))
    isolated = sum(b and not (i > 0 and bad_at[i - 1]) and not (i + 1 < len(text) and bad_at[i + 1])
                   for i, b in enumerate(bad_at))
    counts = Counter()
    for ch, b in zip(text, bad_at):
        if b:
            counts[ch] += 1
    return bad, isolated if bad else 0, counts.most_common(3) if bad else [], sum(not c.isspace() for c in text)


def test_garble_counts_match_the_per_character_definition():
    import random

    rng = random.Random(0)
    # letters, spaces, U+FFFD, private use, control characters (one a regex metacharacter's neighbour)
    alphabet = list("ab ]^-\\\n") + ["\ufffd", "\ue000", "\x01", "\x1c", "\x7f"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        g = coarse.garble(text)
        bad, isolated, examples, chars = _garble_by_loop(text)
        assert (g.bad, g.isolated, g.examples, g.chars) == (bad, isolated, examples, chars), repr(text)
