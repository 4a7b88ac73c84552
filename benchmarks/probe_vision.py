"""Probe where a stage-1 model's vision path loses the image (prints numbers, no asserts).

Trains the stage-1 model (DeepEncoder + compact OPT, the ``tiny`` preset by default) on easy
pages drawn with PIL (a few words of a 16-word vocabulary, large glyphs) for ``--steps`` steps
of plain AdamW, then prints, at every ``--every`` steps:

* held-out loss with real and with blank pages (ratio 1.000 = image-blind),
* the relative difference ||f(text page) - f(blank page)|| / ||f(blank page)|| after each
  encoder stage (patch embedding, SAM blocks + neck, compressor net_2 / net_3, CLIP,
  projector): where the image stops reaching the language model,
* the patch embedding's response to a white patch (sum of each filter's weights, the "DC"
  response) against the spread of its weights around their mean (what sees ink),
* the gradient norm per token at image-token positions and at text positions.

    python benchmarks/probe_vision.py --steps 100 --every 25 [--lr 1e-3] [--freeze-sam]
"""

from __future__ import annotations

import argparse
import math
import random
import time

import torch
from PIL import Image, ImageDraw, ImageFont

from models.image_processing import preprocess_image
from models.prompts import PROMPT_COARSE
from models.tokenizer import SPECIAL_TOKENS, OCRTokenizer
from train.optimizer import build_optimizer
from train.stage1 import build_stage1_model

WORDS = "alpha bravo delta echo golf hotel india kilo lima mike oscar papa romeo sierra tango victor".split()


def make_page(rng: random.Random, font_px: int) -> tuple[str, Image.Image]:
    text = "\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 3))) for _ in range(rng.randint(2, 3)))
    img = Image.new("RGB", (512, 512), "white")
    ImageDraw.Draw(img).multiline_text((24, 24), text, fill="black", spacing=font_px // 2,
                                       font=ImageFont.load_default(size=font_px))
    return text, img


def make_tokenizer(texts: list[str]) -> OCRTokenizer:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts + [PROMPT_COARSE], trainer=trainers.BpeTrainer(
        vocab_size=384, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return OCRTokenizer(tok)


def make_batch(tok, pages, blank: bool = False) -> dict:
    rows = []
    for text, img in pages:
        im = preprocess_image(Image.new("RGB", img.size, "white") if blank else img, "tiny")
        prompt = tok.encode_prompt(PROMPT_COARSE, [im])
        label = tok.encode(text) + [tok.eos_token_id]
        rows.append((prompt + label, [-100] * len(prompt) + label, im))
    T = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_token_id)
    labels = torch.full((len(rows), T), -100)
    seg = torch.zeros(len(rows), T, dtype=torch.long)
    for i, (x, y, _) in enumerate(rows):
        ids[i, :len(x)], labels[i, :len(y)], seg[i, :len(x)] = torch.tensor(x), torch.tensor(y), 1
    return {"input_ids": ids, "labels": labels, "segment_ids": seg,
            "position_ids": torch.arange(T).expand(len(rows), T), "images": [r[2] for r in rows]}


@torch.no_grad()
def stage_differences(model, text_px: torch.Tensor, blank_px: torch.Tensor) -> dict[str, float]:
    """Relative difference text page vs blank page after each encoder stage."""
    sam, enc = model.encoder.sam_model, model.encoder
    out = {}

    def rel(a, b):
        return float((a - b).norm() / b.norm().clamp_min(1e-12))

    a, b = sam.patch_embed(text_px), sam.patch_embed(blank_px)
    out["patch_embed"] = rel(a, b)
    a, b = sam.encode(text_px), sam.encode(blank_px)
    out["sam_neck"] = rel(a, b)
    a, b = sam.net_2(a), sam.net_2(b)
    out["net_2"] = rel(a, b)
    a, b = sam.net_3(a), sam.net_3(b)
    out["net_3"] = rel(a, b)
    out["clip"] = rel(enc.vision_model(a)[:, 1:], enc.vision_model(b)[:, 1:])
    out["projector"] = rel(enc.project(a), enc.project(b))
    return out


def grad_at_positions(model, batch, image_token_id: int) -> tuple[float, float]:
    """Mean per-token gradient norm of the loss w.r.t. the LM input at image / text positions."""
    grads = {}
    orig_embed = model.embed

    def embed(input_ids, images):
        e = orig_embed(input_ids, images)
        e.retain_grad()
        grads["e"] = e
        return e

    model.embed = embed
    try:
        loss = model(**batch)[0]
        loss.backward()
    finally:
        model.embed = orig_embed
    g = grads["e"].grad.norm(dim=-1)  # (B, T)
    img = batch["input_ids"] == image_token_id
    txt = (batch["labels"] != -100)
    model.zero_grad(set_to_none=True)
    return float(g[img].mean()), float(g[txt].mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--font", type=int, default=40, help="glyph size in pixels on the 512 px page")
    ap.add_argument("--freeze-sam", action="store_true", help="keep SAM + compressor at their random init")
    ap.add_argument("--sam-lr-scale", type=float, default=1.0, help="optim.sam_lr_scale (train.optimizer)")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    train = [make_page(rng, a.font) for _ in range(400)]
    held = [make_page(rng, a.font) for _ in range(16)]
    tok = make_tokenizer([t for t, _ in train])
    cfg = {"model": {"preset": a.preset, "stage1_lm": {"hidden_size": 64, "num_layers": 2, "num_heads": 4,
                                                       "ffn_dim": 128, "dropout": 0.0}}}
    special = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
               "pad_token_id": tok.pad_token_id, "image_token_id": tok.image_token_id}
    model = build_stage1_model(cfg, tok.vocab_size, special_ids=special, seq_len=256)
    if a.freeze_sam:
        model.encoder.sam_model.requires_grad_(False)
    opt = build_optimizer(model, {"lr": a.lr, "weight_decay": 0.0, "sam_lr_scale": a.sam_lr_scale})
    base_lrs = [g["lr"] for g in opt.param_groups]
    real, blank = make_batch(tok, held), make_batch(tok, held, blank=True)
    text_px = torch.stack([im.global_view for im in real["images"]])
    blank_px = torch.stack([im.global_view for im in blank["images"]])

    def report(step: int, t0: float) -> None:
        model.eval()
        with torch.no_grad():
            lr_, lb = float(model(**real)[0]), float(model(**blank)[0])
        diffs = stage_differences(model, text_px, blank_px)
        g_img, g_txt = grad_at_positions(model, real, tok.image_token_id)
        model.train()
        W = model.encoder.sam_model.patch_embed.proj.weight.detach().flatten(1)  # (C, 3*16*16)
        dc = float(W.sum(1).abs().mean())
        ac = float((W - W.mean(1, keepdim=True)).std())
        print(f"step {step:4d}  held-out real {lr_:.4f} blank {lb:.4f} ratio {lr_ / lb:.3f}  "
              f"cpu {time.process_time() - t0:.0f}s")
        print("   text-vs-blank rel. diff: " + "  ".join(f"{k} {v:.4f}" for k, v in diffs.items()))
        print(f"   patch-embed white response {dc:.3f}, weight spread {ac:.4f};  "
              f"grad/token image {g_img:.2e} text {g_txt:.2e}", flush=True)

    t0 = time.process_time()
    report(0, t0)
    for step in range(1, a.steps + 1):
        for g, lr0 in zip(opt.param_groups, base_lrs):
            g["lr"] = lr0 * min(1.0, step / 5) * (0.55 + 0.45 * math.cos(math.pi * step / a.steps))
        loss = model(**make_batch(tok, [train[rng.randrange(len(train))] for _ in range(a.batch)]))[0]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % a.every == 0 or step == a.steps:
            report(step, t0)


if __name__ == "__main__":
    main()
