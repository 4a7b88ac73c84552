"""Run the evaluation: every (mode, label kind, variant) over the held-out pages -> rows -> report.

``evaluate(model_path, shards, ...)`` loads the model (``train.eval.loading``), OCRs each page
with its real image (``trained``), with a blank page of the same size (``blind``) and,
optionally, with the same architecture at a fresh init (``untrained``), scores every
prediction (``train.eval.metrics``) and writes the report (``train.eval.report``).
``evaluate_model`` does the same for a model already in memory.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import torch

from .decode import Page, blank_like, heldout_pages, label_texts, ocr, plain_text, token_budget
from .loading import OCRModel, describe, last_loss_ratio, load_model, run_dir, run_train_shards
from .metrics import match_blocks, page_scores
from .report import build_report, console_table, write_report

VARIANTS = ("trained", "blind")  # "untrained" is opt-in (a second model)


def _fine_texts(pred: str, label: dict) -> tuple[str, str, list, list]:
    """Plain page texts (blocks joined) and block lists of a grounded prediction and its label."""
    from models.prompts import BLOCK_SEPARATOR, parse_grounded_output

    ref_blocks = label.get("boxes") or []
    pred_blocks = parse_grounded_output(pred)
    ref_text = plain_text(label)
    # an output without any parsable block is scored as plain text
    pred_text = BLOCK_SEPARATOR.join(b[2] for b in pred_blocks) if pred_blocks else pred
    return pred_text, ref_text, pred_blocks, ref_blocks


def score_prediction(pred: str, page: Page, kind: str) -> dict:
    label = page.labels[kind]
    if kind == "fine":
        pred_text, ref_text, pred_blocks, ref_blocks = _fine_texts(pred, label)
        row = page_scores(pred_text, ref_text)
        row["pred_text"], row["ref_text"] = pred_text, ref_text  # the plain texts the reading scores use
        row["blocks"] = match_blocks(pred_blocks, ref_blocks)
        return row
    return page_scores(pred, label["text"])


def run_variant(model, tokenizer, pages: Sequence[Page], kind: str, mode: str, variant: str, *,
                budget_factor: float = 1.5, budget_margin: int = 16, max_new_tokens: int | None = None,
                max_positions: int | None = None, batch_size: int = 4, no_repeat_ngram: int = 20) -> list[dict]:
    """OCR + score ``pages`` having ``kind`` in one mode; ``variant == "blind"`` blanks the images."""
    todo = [p for p in pages if kind in p.labels]
    ref_tokens = [len(tokenizer.encode(p.labels[kind]["text"])) for p in todo]
    items = [(blank_like(p.image) if variant == "blind" else p.image, p.labels[kind]["prompt"],
              token_budget(n, budget_factor, budget_margin, max_new_tokens)) for p, n in zip(todo, ref_tokens)]
    outs = ocr(model, tokenizer, items, mode, batch_size=batch_size, no_repeat_ngram=no_repeat_ngram,
               max_positions=max_positions)
    rows = []
    for p, n, o in zip(todo, ref_tokens, outs):
        rows.append({"variant": variant, "mode": mode, "kind": kind, "key": p.key, "lang": p.lang,
                     "script": p.script, "ref_tokens": n, **o, **score_prediction(o["pred"], p, kind),
                     "ref": p.labels[kind]["text"]})
    return rows


def model_version(model: torch.nn.Module) -> int:
    """2 when ``model`` (a checkpoint model or a stage-1 generator) holds DeepEncoder V2, else 1."""
    from models.deepencoder_v2 import DeepEncoderV2

    return 2 if any(isinstance(mod, DeepEncoderV2) for mod in model.modules()) else 1


def check_modes(model: torch.nn.Module, modes: Sequence[str] | None) -> list[str]:
    """The modes to read with (default: ``tiny`` for DeepSeek-OCR, ``ocr2`` for DeepSeek-OCR 2);
    a mode of the other model is refused in one line."""
    from models.config import RESOLUTION_MODES, get_mode

    version = model_version(model)
    if not modes:
        return ["ocr2" if version == 2 else "tiny"]
    wrong = [x for x in modes if get_mode(x).version != version]
    if wrong:
        name = "DeepSeek-OCR 2" if version == 2 else "DeepSeek-OCR"
        other = ", ".join(k for k, r in RESOLUTION_MODES.items() if r.version == version)
        raise ValueError(f"modes {wrong} are not {name} modes (the model is {name}; its modes: {other})")
    return list(modes)


def evaluate_model(m: OCRModel, pages: Sequence[Page], *, modes: Sequence[str] | None = None,
                   label_kinds: Sequence[str] = ("coarse",), untrained: bool = False, seed: int = 0,
                   out_dir: str | Path | None = None, fox_edges: Sequence[int] | None = None,
                   plots: bool = True, progress=print, train_labels: dict[str, list[str]] | None = None,
                   loss_ratio: float | None = None, **decode_kw) -> dict:
    """Rows for every (mode, kind, variant), the report, and its files when ``out_dir`` is set.

    ``train_labels`` (kind -> training label texts) sets the constant-output baseline (else the
    most frequent held-out reference); ``loss_ratio`` (the run's last held-out real/blank loss
    ratio) is reported beside the reading verdict, never in it."""
    modes = check_modes(m.model, modes)
    models = {"trained": m.model, "blind": m.model}
    if untrained:
        models["untrained"] = m.fresh(seed)
    decode_kw.setdefault("max_positions", m.max_positions)
    rows: list[dict] = []
    t_start = time.process_time()
    for mode in modes:
        for kind in label_kinds:
            if not any(kind in p.labels for p in pages):
                continue
            for variant in ("untrained", *VARIANTS) if untrained else VARIANTS:
                t0 = time.perf_counter()
                got = run_variant(models[variant], m.tokenizer, pages, kind, mode, variant, **decode_kw)
                rows += got
                if progress:
                    progress(f"[eval] {mode:>8s} {kind:6s} {variant:9s} {len(got)} pages in "
                             f"{time.perf_counter() - t0:.1f}s")
    info = {"model": describe(m), "pages_evaluated": len(pages), "modes": list(modes), "label_kinds": list(label_kinds),
            "decoding": {k: v for k, v in decode_kw.items()}, "seed": seed,
            "cpu_seconds": round(time.process_time() - t_start, 2)}
    report = build_report(rows, fox_edges=fox_edges, info=info, train_labels=train_labels, loss_ratio=loss_ratio,
                          seed=seed)
    if out_dir is not None:
        report["files"] = write_report(report, rows, out_dir, plots=plots)
    return {"report": report, "rows": rows}


def evaluate(model_path: str | Path, shards: str | Sequence[str], *, tokenizer: str | Path | None = None,
             config: str | Path | None = None, pages: int | None = 8, device: str = "cpu",
             train_shards: str | Sequence[str] | None = None, train_label_pages: int | None = 5000,
             progress=print, **kw) -> dict:
    """Load ``model_path`` (stage-1 run, stage-2 export or published checkpoint) and evaluate it
    on the first ``pages`` held-out pages of ``shards``; see ``evaluate_model`` for the rest.

    The constant-output baseline takes the most frequent label of the first ``train_label_pages``
    pages of ``train_shards`` (default: the run config's ``data.shards`` when the model is a run's);
    the loss ratio is the run's last ``reliance/ratio`` (metrics.jsonl) when there is one."""
    m = load_model(model_path, tokenizer, device, config)
    kinds = kw.get("label_kinds", ("coarse",))
    data = heldout_pages(shards, pages, kinds)
    run = run_dir(model_path)
    train_shards = train_shards or (run_train_shards(run) if run else None)
    train_labels = None
    if train_shards:
        try:
            train_labels = label_texts(train_shards, kinds, train_label_pages) or None
        except (FileNotFoundError, OSError, ValueError) as e:  # moved or deleted training data
            if progress:
                progress(f"[eval] training labels unreadable ({e}): constant baseline from the held-out references")
    return evaluate_model(m, data, train_labels=train_labels, loss_ratio=last_loss_ratio(run) if run else None,
                          progress=progress, **kw)


__all__ = ["evaluate", "evaluate_model", "check_modes", "model_version", "run_variant", "score_prediction", "console_table", "VARIANTS"]
