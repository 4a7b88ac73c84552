"""A phone photo with EXIF Orientation=6 (stored landscape, held portrait) is read upright by
every reader of a user's image, as the official pipeline's ImageOps.exif_transpose does."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image


def _photo() -> bytes:
    """200x100 stored pixels, left half black; Orientation=6: shown rotated 90 degrees clockwise
    (100 wide, 200 high, the black half on top)."""
    img = Image.new("RGB", (200, 100), "white")
    img.paste((0, 0, 0), (0, 0, 100, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    return buf.getvalue()


def _assert_upright(img: Image.Image) -> None:
    assert img.size == (100, 200) and img.mode == "RGB"
    assert img.getpixel((50, 20))[0] < 50 and img.getpixel((50, 180))[0] > 200  # black on top


def test_training_reader_turns_photos_upright():
    from train.data_sources import decode_page

    img, _ = decode_page({"jpg": _photo(), "json": json.dumps({"labels": {}}).encode()})
    _assert_upright(img)


def test_source_inputs_turn_photos_upright():
    from data_engine.sources.inputs import decode_image

    _assert_upright(decode_image(_photo(), "photo.jpg"))


def test_shard_iterator_turns_photos_upright(tmp_path):
    import webdataset as wds

    from data_engine.shards import iter_samples

    with wds.TarWriter(str(tmp_path / "p.tar")) as w:
        w.write({"__key__": "p0", "jpg": _photo(), "json": json.dumps({"labels": {}}).encode()})
    (sample,) = list(iter_samples(str(tmp_path / "p.tar")))
    _assert_upright(sample["image"])


def test_engine_image_documents_are_upright_through_mupdf(tmp_path):
    """The engine opens an image input with MuPDF, which applies the tag itself."""
    pymupdf = pytest.importorskip("pymupdf")
    (tmp_path / "photo.jpg").write_bytes(_photo())
    page = pymupdf.open(str(tmp_path / "photo.jpg"))[0]
    assert page.rect.height > page.rect.width
