"""Model flywheel rounds (DeepSeek-OCR paper, section 3.4); data side in ``data_engine.flywheel``.

    from train.flywheel import run_flywheel
    report = run_flywheel(cfg)          # cfg: conf/flywheel.yaml composed (or a dict like it)

``python -m train.flywheel [overrides]`` / ``./launch.sh flywheel [overrides]`` is the Hydra
entry. See docs/flywheel.md for the loop, its knobs and its outputs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .config import FlywheelAppConfig, as_app_config


def _console(msg: str) -> None:
    print(msg, flush=True)


def run_flywheel(cfg: FlywheelAppConfig | DictConfig | dict, log=_console) -> dict:
    """Prepare the data (once), then run ``flywheel.rounds`` rounds; returns the run report.
    ``cfg``: ``conf/flywheel.yaml`` composed, or a (partial) dict set onto the schema defaults."""
    import torch

    from data_engine.flywheel.dataset import generate_default_corpus, patch_kinds, prepare_data
    from data_engine.flywheel.detect import get_line_source

    from .recognizer import canvas_side
    from .report import table, write_run_report
    from .rounds import RoundRunner

    cfg = as_app_config(cfg)
    fw = cfg.flywheel
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(fw.threads)
    languages = {lp.lang: {"digital": lp.digital, "scan": lp.scan, "gold": lp.gold, "drawn": lp.drawn, "calib": lp.calib}
                 for lp in fw.languages}
    t0 = time.process_time()
    if fw.input:
        from data_engine.flywheel.inputs import PAGE_IMAGES, detect_languages, is_input_file

        pdf_dir = Path(fw.input)
        if not pdf_dir.is_dir() or not any(is_input_file(p) for p in pdf_dir.rglob("*")):
            raise FileNotFoundError(f"flywheel.input={pdf_dir}: no PDF files or page images "
                                    f"({', '.join(PAGE_IMAGES)}) there")
        if not languages:  # language ID: language folders and the text layers (data_engine/flywheel/inputs.py)
            languages = {spec: {} for spec in detect_languages(pdf_dir)}
            if not languages:
                raise ValueError(f"flywheel.languages is empty and no language was identified in {pdf_dir} (no "
                                 "<lang>-<Script> folder, no text layer language ID can read): name them, e.g. "
                                 "'flywheel.languages=[{lang: hin-Deva}]'")
            log(f"[flywheel] languages identified in {pdf_dir}: {', '.join(languages)}")
    elif not languages:
        raise ValueError("flywheel.languages is empty: name at least one '<iso639-3>-<iso15924>' language")
    else:
        pdf_dir = out / "pdfs"
        log(f"[flywheel] generating the embedded default corpus -> {pdf_dir}")
        generate_default_corpus(pdf_dir, languages, fw.pages_per_doc, fw.seed, tuple(fw.lines_per_block),
                                fw.lexicon_size, fw.words, fw.pool_words)
    det_kw = {"model_path": fw.detector.model_path, "threads": fw.threads, "dpi": fw.dpi} \
        if fw.detector.name == "ppocr_det" else {}
    detector = get_line_source(fw.detector.name, **det_kw)
    counts = prepare_data(out / "data", languages, pdf_dir=pdf_dir, detector=detector, dpi=fw.dpi,
                          tokenizer_vocab=fw.tokenizer_vocab, kinds=patch_kinds(fw.patches),
                          canvas=canvas_side(fw.recognizer.mode), stretch=fw.recognizer.stretch,
                          collage=fw.collage, calibration_lines=fw.accept.calibration_lines, log=log)
    if sum(c["pool"] for c in counts.values()) == 0:
        log("[flywheel] warning: nothing to label (no image-only pages and no refused text-layer lines)")
    runner = RoundRunner(fw, out, list(languages), log=log)
    rounds = []
    for k in range(fw.rounds):
        log(f"[flywheel] round {k}: train -> label -> accept -> measure")
        rounds.append(runner.run_round(k))
        write_run_report(out, rounds, {"data": counts, "config": OmegaConf.to_container(OmegaConf.structured(cfg))})
    log(table(rounds))
    for spec, d in rounds[-1]["languages"].items():
        if d.get("note"):
            log(f"[flywheel] note {spec}: {d['note']}")
    log(f"[flywheel] report: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'} "
        f"({time.process_time() - t0:.0f} CPU-s in this process)")
    return json.loads((out / "report.json").read_text(encoding="utf-8"))
