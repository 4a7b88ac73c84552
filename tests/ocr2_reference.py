"""DeepSeek-OCR 2 vs ``transformers.models.deepseek_ocr2`` with the same random weights (fp32):
shared by the tiny default tests and the slow full-size check (``tests/test_ocr2.py``).

Our model is exported in the published layout and read back by
``DeepseekOcr2ForConditionalGeneration.from_pretrained`` (so the export is exercised too); every
part is then fed the same inputs: SAM + compressor, the flow encoder with its queries, the
projector, the decoder, and the whole forward on preprocessed images (each side with its own
image processor) at 768 px, 1024 px and one tiled image.
"""

from __future__ import annotations

import torch
from PIL import Image

from models.checkpoint import export_checkpoint
from models.deepseek_ocr import DeepseekOCRForCausalLM
from models.image_processing import preprocess_image

TEXT_LO = 16  # random text ids start above the special tokens


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> None:
    """Every tensor random (biases, position tables and norms too), so no part hides behind a
    zero or one init; norms stay near 1 to keep deep stacks finite."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g)
        is_norm = "norm" in name and p.ndim == 1 and not name.endswith("bias")
        p.copy_(1 + 0.1 * noise if is_norm else std * noise)


def page(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A noisy RGB page (random pixels: resampling differences cannot hide in flat areas)."""
    g = torch.Generator().manual_seed(seed)
    w, h = size
    arr = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def reference_processor(crop: bool):
    from transformers.models.deepseek_ocr2 import DeepseekOcr2ImageProcessorPil

    return DeepseekOcr2ImageProcessorPil(crop_to_patches=crop)


def build_pair(cfg, out_dir, seed: int = 0, attn: str = "sdpa"):
    """(ours, reference) with identical random weights; the reference loaded from our export.
    ``attn``: the reference's attention kernels, ``sdpa`` (its default; ours always use
    ``F.scaled_dot_product_attention``) or ``eager`` (matmul + softmax: the same math summed in
    another order, so fp32 rounding differs)."""
    from transformers.models.deepseek_ocr2 import DeepseekOcr2ForConditionalGeneration

    torch.manual_seed(seed)
    ours = DeepseekOCRForCausalLM(cfg).eval()
    randomize(ours, seed)
    export_checkpoint(ours, out_dir, dtype=torch.float32)
    ref, info = DeepseekOcr2ForConditionalGeneration.from_pretrained(
        str(out_dir), output_loading_info=True, attn_implementation=attn)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    return ours, ref.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (tuple(a.shape), tuple(b.shape))
    return float((a.float() - b.float()).abs().max())


# (name, image size, our mode, reference crop_to_patches)
CASES = [("768", (700, 500), "ocr2_768", False),
         ("1024", (700, 500), "ocr2", True),
         ("tiled", (1500, 800), "ocr2", True)]


class _Diffs(dict):
    """A dict of max abs differences that hands each one to ``report`` as it is set (a long
    full-size run shows its figures part by part)."""

    def __init__(self, report=None) -> None:
        super().__init__()
        self.report = report

    def __setitem__(self, key: str, value: float) -> None:
        super().__setitem__(key, value)
        if self.report is not None:
            self.report(key, value)


@torch.no_grad()
def compare(ours, ref, cases=CASES, text_len: int = 7, report=None) -> dict[str, float]:
    """Max abs differences per part and per whole forward; also checks token counts.
    ``report(key, diff)`` is called with each figure as soon as it is measured."""
    cfg, vt = ours.cfg, ref.model.vision_tower
    diffs = _Diffs(report)
    g = torch.Generator().manual_seed(1)
    for name, size, mode, crop in cases:
        image = page(size, seed=len(name))
        img = preprocess_image(image, mode)
        px = reference_processor(crop)(image, return_tensors="pt")
        assert torch.equal(img.global_view[None], px["pixel_values"]), f"{name}: global view pixels differ"
        n_tiles = int(px["num_local_patches"][0])
        assert img.tiles.shape[0] == n_tiles, (name, img.tiles.shape[0], n_tiles)
        if n_tiles:
            assert torch.equal(img.tiles, px["pixel_values_local"]), f"{name}: tile pixels differ"
        x = img.global_view[None]
        # SAM + neck + compressor
        f_ours = ours.model.sam_features(x)
        f_ref = vt.sam_encoder(x).last_hidden_state
        diffs[f"sam/{name}"] = max_diff(f_ours, f_ref)
        # flow encoder with its queries, on the same features
        q_ours = ours.model.qwen2_model(f_ref)
        N = f_ref.shape[-1] * f_ref.shape[-2]
        queries = vt.query_768_resolution.weight if N <= 144 else vt.query_1024_resolution.weight
        seq = torch.cat([f_ref.flatten(2).transpose(1, 2), queries[None]], dim=1)
        q_ref = vt.vision_encoder(inputs_embeds=seq, num_patches=N).last_hidden_state[:, N:]
        diffs[f"encoder/{name}"] = max_diff(q_ours, q_ref)
        diffs[f"projector/{name}"] = max_diff(ours.model.projector(q_ref), ref.model.multi_modal_projector(q_ref))
        # whole forward: bos, the image's tokens, random text
        n_img = img.num_tokens
        text = torch.randint(TEXT_LO, cfg.decoder.vocab_size, (text_len,), generator=g)
        ids = torch.cat([torch.tensor([cfg.bos_token_id]), torch.full((n_img,), cfg.image_token_id), text])[None]
        logits = ours(ids, images=[img]).logits
        kw = {"pixel_values_local": px["pixel_values_local"]} if n_tiles else {}
        logits_ref = ref(input_ids=ids, pixel_values=px["pixel_values"], num_local_patches=px["num_local_patches"],
                         **kw).logits
        diffs[f"forward/{name}"] = max_diff(logits, logits_ref)
    # decoder alone (text ids)
    ids = torch.randint(TEXT_LO, cfg.decoder.vocab_size, (2, 11), generator=g)
    h, _, _ = ours.model(ids)
    diffs["decoder"] = max_diff(h, ref.model.language_model(input_ids=ids).last_hidden_state)
    return dict(diffs)


def reference_token_count(num_tiles: int, crop: bool, side: int | None = None) -> int:
    """The reference processor's ``<image>`` count for an image with ``num_tiles`` tiles (``side``:
    a global view of that many pixels instead of the processor's 1024 / 768)."""
    from transformers.models.deepseek_ocr2.processing_deepseek_ocr2 import DeepseekOcr2Processor

    proc = DeepseekOcr2Processor.__new__(DeepseekOcr2Processor)  # no tokenizer needed for the count
    proc.image_processor, proc.patch_size, proc.downsample_ratio = reference_processor(crop), 16, 4
    side = side or (None if crop else 768)  # crop_to_patches=False: a 768 px global view
    return proc._get_num_image_tokens(num_tiles, size={"height": side, "width": side} if side else None)
