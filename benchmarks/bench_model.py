"""Model speed/memory benchmark: DeepEncoder images/s per resolution mode, decoder tokens/s.

Measures, on random (or loaded) weights and synthetic page images:
  * encoder: images/s of the DeepEncoder (SAM + compressor + CLIP + projector + layout) per
    resolution mode, for a batch of pages of a fixed aspect ratio (A4 portrait by default,
    so Gundam modes cut their usual 2x3 tile grid);
  * decoder prefill: tokens/s of one forward over ``--prompt-len`` text tokens per sequence;
  * decoder decode: tokens/s of greedy steps with the KV cache (``--new-tokens`` per sequence);
  * peak CUDA memory of each phase.
Weights do not change speed, so random init is the default; ``--weights DIR`` loads a checkpoint.

    python benchmarks/bench_model.py                                  # tiny preset, CPU, < 1 min
    python benchmarks/bench_model.py --preset deepseek-ocr --device cuda --dtype bfloat16 \\
        --modes tiny,small,base,large,gundam --batch 8 --decode-batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from models.config import RESOLUTION_MODES, get_preset  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int) -> float:
    """Median seconds per call of ``fn`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def synthetic_page(width: int, height: int, seed: int = 0):
    """A page-like RGB image: white background with dark text-like bars (content does not
    affect speed, but a real-looking page keeps the preprocessing path realistic)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = np.full((height, width, 3), 255, dtype=np.uint8)
    line_h = max(4, height // 60)
    for y in range(height // 12, height - height // 12, 2 * line_h):
        x0 = width // 10
        x1 = int(width * rng.uniform(0.5, 0.9))
        arr[y : y + line_h // 2, x0:x1] = rng.integers(0, 80)
    return Image.fromarray(arr)


def bench_encoder(model, modes, batch, device, dtype, iters, warmup, page_size):
    from models.image_processing import preprocess_image

    page = synthetic_page(*page_size)
    rows = []
    for mode in modes:
        img = preprocess_image(page, mode).to(device=device, dtype=dtype)
        images = [img] * batch
        reset_peak(device)
        with torch.inference_mode():
            sec = timed(lambda: model.model.encode_images(images), device, iters, warmup)
        rows.append({
            "mode": mode, "batch": batch, "tiles": int(img.tiles.shape[0]), "vision_tokens": img.num_tokens,
            "images_per_s": batch / sec, "ms_per_batch": 1e3 * sec, "peak_gib": peak_gib(device),
        })
    return rows


def bench_decoder(model, cfg, batch, prompt_len, new_tokens, device, iters, warmup):
    from models.decoder import KVCache

    vocab = cfg.decoder.vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(16, vocab, (batch, prompt_len), generator=g).to(device)
    n_layers = cfg.decoder.num_hidden_layers

    def prefill():
        cache = KVCache(n_layers, max_len=prompt_len + new_tokens)
        out = model(ids, past_key_values=cache, use_cache=True)
        return out, cache

    def decode() -> float:
        """Seconds of ``new_tokens`` greedy steps on a fresh prefilled cache (prefill untimed)."""
        out, cache = prefill()
        nxt = out.logits[:, -1].argmax(-1, keepdim=True)  # (B, 1) greedy
        sync(device)
        t0 = time.perf_counter()
        for i in range(new_tokens):
            pos = torch.full((batch, 1), prompt_len + i, device=device, dtype=torch.long)
            out = model(nxt, position_ids=pos, past_key_values=cache, use_cache=True)
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        return time.perf_counter() - t0

    with torch.inference_mode():
        reset_peak(device)
        t_prefill = timed(prefill, device, iters, warmup)
        prefill_peak = peak_gib(device)
        reset_peak(device)
        for _ in range(warmup):
            decode()
        t_decode = statistics.median(decode() for _ in range(max(1, iters)))
        decode_peak = peak_gib(device)
    return {
        "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
        "prefill_tokens_per_s": batch * prompt_len / t_prefill, "prefill_ms": 1e3 * t_prefill,
        "decode_tokens_per_s": batch * new_tokens / t_decode, "decode_ms_per_step": 1e3 * t_decode / new_tokens,
        "prefill_peak_gib": prefill_peak, "decode_peak_gib": decode_peak,
    }


def build_model(args, device, dtype):
    from models.deepseek_ocr import DeepseekOCRForCausalLM

    if args.weights:
        from models.checkpoint import import_checkpoint

        return import_checkpoint(args.weights, device=device, dtype=dtype)
    cfg = get_preset(args.preset)
    if args.moe_impl:
        import dataclasses

        cfg = cfg.replace(decoder=dataclasses.replace(cfg.decoder, moe_impl=args.moe_impl))
    with torch.device(device):
        model = DeepseekOCRForCausalLM(cfg)
    return model.to(dtype).eval()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", help="model preset: tiny | deepseek-ocr")
    p.add_argument("--weights", default=None, help="checkpoint directory (default: random init)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, choices=sorted(DTYPES), help="default: bfloat16 on cuda, float32 on cpu")
    p.add_argument("--modes", default=None, help=f"comma list of {sorted(RESOLUTION_MODES)} (default: tiny,small,base on cpu; "
                                                 "all on cuda); 'none' skips the encoder")
    p.add_argument("--mode", dest="modes", help="alias of --modes")
    p.add_argument("--batch", type=int, default=None, help="images per encoder batch (default 1 cpu, 8 cuda)")
    p.add_argument("--page-size", default="1240x1754", help="synthetic page WxH in pixels (A4 at 150 dpi)")
    p.add_argument("--decode-batch", type=int, default=None, help="sequences for the decoder (default 1 cpu, 16 cuda)")
    p.add_argument("--prompt-len", type=int, default=None, help="prefill tokens per sequence (default 256 cpu, 1024 cuda)")
    p.add_argument("--new-tokens", type=int, default=None, help="decode steps (default 32 cpu, 256 cuda)")
    p.add_argument("--moe-impl", default=None, choices=["auto", "grouped", "loop"])
    p.add_argument("--iters", type=int, default=None, help="timed repeats (default 2 cpu, 5 cuda)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--json", default=None, help="also write the results to this file")
    args = p.parse_args(argv)

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda but no CUDA device is visible")
    torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype or ("bfloat16" if cuda else "float32")]
    modes = args.modes or (",".join(RESOLUTION_MODES) if cuda else "tiny,small,base")
    modes = [] if modes == "none" else [m.strip() for m in modes.split(",") if m.strip()]
    for m in modes:
        if m not in RESOLUTION_MODES:
            p.error(f"unknown mode {m!r}; known: {sorted(RESOLUTION_MODES)}")
    batch = args.batch or (8 if cuda else 1)
    dbatch = args.decode_batch or (16 if cuda else 1)
    prompt_len = args.prompt_len or (1024 if cuda else 256)
    new_tokens = args.new_tokens or (256 if cuda else 32)
    iters = args.iters or (5 if cuda else 2)
    page_size = tuple(int(v) for v in args.page_size.lower().split("x"))

    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = build_model(args, device, dtype)
    cfg = model.cfg if hasattr(model, "cfg") else model.config
    n_params = sum(p.numel() for p in model.parameters())
    print(f"# {args.weights or args.preset}: {n_params / 1e6:.1f}M params, {device} {str(dtype)[6:]}, "
          f"built in {time.perf_counter() - t0:.1f}s, torch {torch.__version__}, threads {args.threads}")
    if cuda:
        print(f"# {torch.cuda.get_device_name(device)}, weights {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB")

    results: dict = {"preset": args.preset, "device": str(device), "dtype": str(dtype)[6:], "params": n_params}
    if modes:
        results["encoder"] = bench_encoder(model, modes, batch, device, dtype, iters, args.warmup, page_size)
        print(f"\n{'mode':<10}{'tiles':>6}{'tokens':>8}{'batch':>7}{'img/s':>10}{'ms/batch':>10}{'peak GiB':>10}")
        for r in results["encoder"]:
            pk = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
            print(f"{r['mode']:<10}{r['tiles']:>6}{r['vision_tokens']:>8}{r['batch']:>7}"
                  f"{r['images_per_s']:>10.2f}{r['ms_per_batch']:>10.1f}{pk:>10}")

    d = results["decoder"] = bench_decoder(model, cfg, dbatch, prompt_len, new_tokens, device, iters, args.warmup)
    pk = lambda v: f", peak {v:.2f} GiB" if v is not None else ""  # noqa: E731
    print(f"\ndecoder (batch {d['batch']}, prompt {d['prompt_len']}, {d['new_tokens']} new tokens, KV cache):")
    print(f"  prefill {d['prefill_tokens_per_s']:>10.0f} tok/s  ({d['prefill_ms']:.1f} ms{pk(d['prefill_peak_gib'])})")
    print(f"  decode  {d['decode_tokens_per_s']:>10.1f} tok/s  ({d['decode_ms_per_step']:.2f} ms/step{pk(d['decode_peak_gib'])})")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
