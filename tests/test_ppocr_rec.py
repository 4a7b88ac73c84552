"""models/ppocr_rec.py: the PyTorch PP-OCRv4 recognizer equals onnxruntime on the shipped ONNX file.

Measured (1 thread): max abs diff of the softmax outputs 4.3e-6 on random input, 9.6e-6 on two
rendered lines; the test allows 1e-4.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("onnx", reason="reading the ONNX weights needs the onnx package (pyproject dependency)")
ort = pytest.importorskip("onnxruntime")

from models.ppocr_rec import BLANK, ctc_greedy, ppocr_rec_from_onnx, ppocr_rec_path, preprocess  # noqa: E402

TOL = 1e-4  # softmax probabilities; measured max abs diff ~3e-6


@pytest.fixture(scope="module")
def rec():
    try:
        path = ppocr_rec_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    return ppocr_rec_from_onnx(path), ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def _line_crop(text: str, fontsize: float = 14, dpi: int = 144):
    """A line set by PyMuPDF (Helvetica), rendered and cropped to its text bbox (RGB array)."""
    import pymupdf

    doc = pymupdf.open()
    page = doc.new_page(width=400, height=60)
    page.insert_text((12, 36), text, fontsize=fontsize, fontname="helv")
    bbox = pymupdf.Rect()
    for b in page.get_text("dict")["blocks"]:
        for line in b.get("lines", []):
            bbox |= pymupdf.Rect(line["bbox"])
    bbox = pymupdf.Rect(bbox.x0 - 2, bbox.y0 - 2, bbox.x1 + 2, bbox.y1 + 2)
    pix = page.get_pixmap(dpi=dpi, clip=bbox)
    return np.frombuffer(pix.samples, np.uint8).reshape(pix.h, pix.w, pix.n)[:, :, :3].copy()


def _max_diff(model, sess, x: torch.Tensor) -> float:
    with torch.no_grad():
        ours = model(x).softmax(-1).numpy()
    theirs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    assert ours.shape == theirs.shape
    return float(np.abs(ours - theirs).max())


def test_weights_and_charset_come_from_the_onnx_file(rec):
    model, _ = rec
    n = sum(p.numel() for p in model.parameters())
    n += sum(b.numel() for k, b in model.named_buffers() if not k.endswith("num_batches_tracked"))
    assert n == 2_690_221  # every named weight Constant of the graph (the rest are shape/scalar helpers)
    assert len(model.charset) == model.head.out_features == 6625
    assert model.charset[0] == BLANK and model.charset[-1] == " " and "A" in model.charset


def test_equals_onnxruntime_on_random_input(rec):
    model, sess = rec
    torch.manual_seed(0)
    for width in (320, 416):
        diff = _max_diff(model, sess, torch.rand(2, 3, 48, width) * 2 - 1)
        assert diff < TOL, f"width {width}: max abs diff {diff:.2e}"


def test_equals_onnxruntime_and_rapidocr_on_a_rendered_line(rec):
    model, sess = rec
    text = "Quick brown fox 2024"
    crops = [_line_crop(text), _line_crop("jumps over the lazy dog", fontsize=11)]
    x = preprocess(crops)
    diff = _max_diff(model, sess, x)
    assert diff < TOL, f"max abs diff {diff:.2e}"
    with torch.no_grad():
        reads = ctc_greedy(model(x), model.charset)
    assert reads[0][0] == text, reads
    # RapidOCR's own pre/post-processing (cv2 BGR input) reads the same text with the same confidence
    from rapidocr_onnxruntime.ch_ppocr_rec import TextRecognizer

    theirs, _ = TextRecognizer({"model_path": str(ppocr_rec_path()), "rec_img_shape": [3, 48, 320],
                                "rec_batch_num": 6, "use_cuda": False, "intra_op_num_threads": 1,
                                "inter_op_num_threads": 1})([c[:, :, ::-1].copy() for c in crops])
    for (t_ours, mean_ours, _), (t_theirs, conf_theirs) in zip(reads, theirs):
        assert t_ours == t_theirs
        assert abs(mean_ours - conf_theirs) < 1e-4


def test_batch_norm_stays_frozen_in_train_mode(rec):
    model, _ = rec
    bn = model.backbone.stem_bn
    before = bn.running_mean.clone()
    model.train()
    try:
        assert model.neck.blocks[0].training and not bn.training
        model(torch.rand(2, 3, 48, 320))
        assert torch.equal(bn.running_mean, before)
    finally:
        model.eval()
