"""The recognizer's line canvas (data_engine/flywheel/canvas.py) on lines PyMuPDF sets in the
project's Noto font: one x-height whatever the font size or the letters a line holds, rows
wrapped between words, glyphs inside their token row."""

from __future__ import annotations

import numpy as np
import pymupdf
import pytest
from PIL import Image

from data_engine.flywheel.canvas import (CANVAS, ROW, X_HEIGHT, core_band, line_canvas, normalize_line,
                                         wrap_spans)
from data_engine.flywheel.patches import crop, render_page
from data_engine.scripts import find_font

FONT = find_font("NotoSans-Regular.ttf")
pytestmark = pytest.mark.skipif(FONT is None, reason="Noto fonts missing (scripts/setup_fonts.sh)")


def set_line(text: str, size: float) -> tuple[Image.Image, list[tuple[float, float, str]], float]:
    """``text`` set at ``size`` pt: (the line's crop at 144 dpi, its words' x-ranges in crop
    pixels with their text, pixels per point)."""
    doc = pymupdf.open()
    page = doc.new_page(width=900, height=120)
    page.insert_font(fontname="noto", fontfile=FONT)
    page.insert_text((20, 70), text, fontname="noto", fontsize=size)
    img = render_page(page)
    words = page.get_text("words")
    box = pymupdf.Rect(words[0][:4])
    for w in words[1:]:
        box |= pymupdf.Rect(w[:4])
    sx = img.width / page.rect.width
    x_left = max(0, int((box.x0 - 2.0) * sx))  # where ``crop`` starts
    return crop(img, page.rect, tuple(box)), [(w[0] * sx - x_left, w[2] * sx - x_left, w[4]) for w in words], sx


def x_height_on(canvas: Image.Image) -> int:
    """The x-height of the text in the canvas's first token row, measured on its row profile."""
    ink = np.asarray(canvas.convert("L"))[:ROW] < 160
    top, bottom = core_band(ink)
    return bottom - top + 1


def test_one_x_height_whatever_the_letters_and_the_font_size():
    # no ascender or descender / both / another font size: ink-tight height differs by ~1.7x
    lines = [set_line("xo ucm awe", 14), set_line("kdjuzl bjxa", 14), set_line("kdjuzl bjxa", 20),
             set_line("nou ram sex", 19)]
    heights = [x_height_on(line_canvas(img)) for img, _, _ in lines]
    assert max(heights) - min(heights) <= 2, heights
    assert abs(np.median(heights) - X_HEIGHT) <= 2, heights
    ink_heights = [int((np.asarray(img.convert("L")) < 160).any(1).sum()) for img, _, _ in lines]
    assert max(ink_heights) / min(ink_heights) > 2  # what scaling by the ink height would show


def test_rows_wrap_between_words_and_glyphs_stay_in_their_row():
    img, words, _ = set_line("lim edjogv kkwquor dabpi mgues", 16)
    line = normalize_line(img)
    ink_cols = (np.asarray(line.image) < 160).sum(0)
    spans = wrap_spans(ink_cols, CANVAS - 8, 8, space=round(0.45 * X_HEIGHT))
    assert spans is not None and len(spans) >= 3
    assert wrap_spans(ink_cols, CANVAS - 8, 2, space=round(0.45 * X_HEIGHT)) is None  # does not fit 2 rows
    # every row break falls in the gap between two words (the words' boxes mapped to the line)
    gaps = [((a_end - line.x0) * line.scale, (b_start - line.x0) * line.scale)
            for (_, a_end, _), (b_start, _, _) in zip(words, words[1:])]
    for _, cut in spans[:-1]:
        assert any(lo - 2 <= cut <= hi + 2 for lo, hi in gaps), (cut, gaps)
    canvas = np.asarray(line_canvas(img).convert("L")) < 128
    rows = [y for y in range(CANVAS) if canvas[y].any()]
    assert len({y // ROW for y in rows}) == CANVAS // ROW  # shrunk a little to fit the canvas's 4 rows
    assert all(y % ROW not in (0, ROW - 1) for y in rows)  # no glyph straddles two token rows


def test_a_line_too_long_for_the_rows_is_shrunk_not_cut():
    img, _, _ = set_line("kdjuzl bjxa lim edjogv", 16)
    long = Image.new("RGB", (img.width * 4, img.height), "white")
    for i in range(4):
        long.paste(img, (i * img.width, 0))
    canvas = np.asarray(line_canvas(long).convert("L")) < 128
    assert canvas.any(1)[-ROW:].any()  # all four rows used
    assert x_height_on(line_canvas(long)) < X_HEIGHT - 2  # smaller than the normal scale
    # a blank crop gives a blank canvas, not an error
    assert not (np.asarray(line_canvas(Image.new("RGB", (40, 20), "white")).convert("L")) < 128).any()


def test_collage_lines_show_their_label(tmp_path):
    """Collage lines (seed words recombined) are labelled with exactly the words they show:
    their words come from the text layer of trusted lines, the same x-height as real lines, and
    Tesseract, an independent reader, reads them as well as the real lines they were cut from."""
    from data_engine.flywheel.baseline import availability, read_line
    from data_engine.flywheel.collage import line_word_boxes, make_collages, word_pieces
    from data_engine.flywheel.linepages import LineLanguage, make_line_document
    from data_engine.flywheel.patches import cut_text_layer
    from data_engine.metrics import corpus_cer

    path = tmp_path / "eng_Latn_digital_0000.pdf"
    make_line_document(LineLanguage.parse("eng-Latn"), path, kind="digital", n_pages=1, seed=5)
    page = pymupdf.open(path)[0]
    img = render_page(page)
    lines, _ = cut_text_layer(page, img, doc_id="d", lang="eng", script="Latn")
    pieces = []
    for p in lines:
        boxes = line_word_boxes(page, p)
        assert boxes is not None and " ".join(b[2] for b in boxes) == p.text
        pieces += word_pieces(img, page.rect, p, boxes)
    assert len(pieces) == sum(len(p.text.split()) for p in lines)
    collages = make_collages(pieces, 12, seed=0, template=lines[0], words=(2, 4))
    assert collages == make_collages(pieces, 12, seed=0, template=lines[0], words=(2, 4))  # deterministic
    vocab = {w for p in lines for w in p.text.split()}
    assert all(c.source == "collage" and 2 <= len(c.text.split()) <= 4 and set(c.text.split()) <= vocab
               for c in collages)
    assert len({c.key for c in collages}) == 12
    heights = [x_height_on(line_canvas(c.image)) for c in collages[:6]] + [x_height_on(line_canvas(p.image))
                                                                           for p in lines[:6]]
    assert max(heights) - min(heights) <= 2, heights
    tess, why = availability("eng")
    if tess is None:
        pytest.skip(why)
    real = corpus_cer([(p.text, read_line(p.image, tess)) for p in lines])
    made = corpus_cer([(c.text, read_line(c.image, tess)) for c in collages])
    assert made <= max(0.05, 2 * real), (made, real)


def test_mix_shards_interleaves_sources_and_is_idempotent(tmp_path):
    """Training shards of several sources are mixed into small shards: every sample once, the
    sources interleaved within each shard (not one source after another), the same bytes again
    for the same seed, and a duplicate key across sources is an error."""
    import tarfile

    from data_engine.shards import SampleTarWriter, mix_shards

    def make(path, prefix, n):
        with open(path, "wb") as f:
            w = SampleTarWriter(f)
            for i in range(n):
                w.write({"__key__": f"{prefix}_{i:04d}", "json": b"{}", "png": bytes([i % 256]) * 10})
            w.close()
        return path

    a, b = make(tmp_path / "a.tar", "a", 300), make(tmp_path / "b.tar", "b", 60)
    out = mix_shards([a, b], tmp_path / "mix", per_shard=100, seed=3)
    assert [p.name for p in out] == [f"mix-{i:06d}.tar" for i in range(4)]
    keys = []
    for p in out:
        with tarfile.open(p) as tf:
            names = tf.getnames()
            assert all(tf.extractfile(n).read() == (b"{}" if n.endswith("json") else
                                                    bytes([int(n.split("_")[1][:4]) % 256]) * 10) for n in names)
        shard_keys = sorted({n.split(".")[0] for n in names})
        assert {k[0] for k in shard_keys} == {"a", "b"}  # both sources in every shard
        keys += shard_keys
    assert sorted(keys) == [f"a_{i:04d}" for i in range(300)] + [f"b_{i:04d}" for i in range(60)]
    first = out[0].read_bytes()
    assert mix_shards([a, b], tmp_path / "mix") == out  # DONE: returned as they are
    again = mix_shards([a, b], tmp_path / "mix2", per_shard=100, seed=3)
    assert again[0].read_bytes() == first
    with pytest.raises(ValueError, match="a_0000"):
        mix_shards([a, a], tmp_path / "dup")


@pytest.mark.skipif(find_font("NotoSansHebrew-Regular.ttf") is None,
                    reason="Noto Hebrew font missing (scripts/setup_fonts.sh)")
def test_a_right_to_left_line_starts_on_the_first_row_at_the_right():
    """Hebrew runs right to left: its first word (rightmost) opens the first row, set at the
    canvas's right edge, and its last word (leftmost) ends the last row."""
    from data_engine.flywheel.canvas import MARGIN, is_rtl

    assert is_rtl("Hebr") and is_rtl("Arab") and not is_rtl("Latn") and not is_rtl("Deva")
    doc = pymupdf.open()
    page = doc.new_page(width=900, height=120)
    page.insert_htmlbox(pymupdf.Rect(20, 20, 880, 110),
                        '<p dir="rtl" style="font-size:16pt">שלום עולם טוב מאוד יפה</p>',
                        css=f'@font-face {{font-family: h; src: url("{find_font("NotoSansHebrew-Regular.ttf")}");}} '
                            '* {font-family: h;}')
    img = render_page(page)
    words = sorted(page.get_text("words"), key=lambda w: -w[2])  # right to left
    assert len(words) == 5
    box = pymupdf.Rect(words[0][:4])
    for w in words[1:]:
        box |= pymupdf.Rect(w[:4])
    line = crop(img, page.rect, tuple(box))
    canvas = np.asarray(line_canvas(line, rtl=True).convert("L")) < 128
    rows = [r for r in range(CANVAS // ROW) if canvas[r * ROW:(r + 1) * ROW].any()]
    assert len(rows) >= 2
    first = canvas[:ROW]
    assert first.any(0)[CANVAS - MARGIN - 3:CANVAS - MARGIN].any()  # the first row ends at the right edge
    ltr = np.asarray(line_canvas(line).convert("L")) < 128
    assert ltr[:ROW].any(0)[MARGIN:MARGIN + 3].any() and not first.any(0)[:MARGIN + 3].any()
    # the first row of the right-to-left canvas shows the line's right end (its first words):
    # the same pixels as the right end of the normalised line
    norm = normalize_line(line)
    right = np.asarray(norm.image)[:, -40:] < 128
    shown = first[:, CANVAS - MARGIN - 40:CANVAS - MARGIN]
    assert right.sum() > 0 and abs(int(shown.sum()) - int(right.sum())) <= 0.1 * right.sum()
