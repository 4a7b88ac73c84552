"""The flywheel's recognizer kinds (``flywheel.recognizer.kind``) behind one small interface.

The rounds (``rounds.py``) only ever call:

* ``train(out_dir, shards, steps=, seed=, init_from=) -> dict``: train (or resume) on patch shards;
  the result's ``export_dir`` is the round's model directory.
* ``load(model_dir) -> (model, tokenizer)``: the handle the reads take (tokenizer None for ppocr).
* ``read(model, tok, patches) -> [(text, confidence, finished)]``: one per patch, in order; the
  confidence is a mean log-probability (the scale of ``accept.min_confidence``).
* ``read_images(model, tok, images, like)`` (the image-blind control: blank images shaped like
  ``like``'s patches) and ``nll(model, tok, images, texts, like)`` (teacher-forced loss per
  character/token of the reference texts).
* ``reader(...)``: what labels the pool (``readers.py``: here, or on Ray actors for the paper model).

Kinds:

* ``ppocr`` (default): PP-OCRv4 rec fine-tuned with CTC (``ppocr.py``, recipe ``flywheel_ppocr``);
  reads the patches' crops at 48 px height.
* ``paper``: the project's DeepSeek-OCR at ``tiny-wide`` size (or the paper's size on GPUs), trained as
  stage 2 on the patch canvases (``recognizer.py``, recipe ``flywheel_recognizer``).
"""

from __future__ import annotations

from pathlib import Path

from data_engine.flywheel.canvas import is_rtl

from .readers import canvas_kw, make_reader, read_batch

DEFAULT_EXPERIMENT = {"ppocr": "flywheel_ppocr", "paper": "flywheel_recognizer"}
DEFAULT_STEPS = {"ppocr": [300, 100, 100], "paper": [1800, 300, 300]}


class PaperRecognizer:
    """The paper model (DeepSeek-OCR, ``recognizer.py``) on patch canvases."""

    def __init__(self, fw, data_dir: Path):
        self.fw, self.rc, self.data = fw, fw.recognizer, Path(data_dir)

    def read_kw(self) -> dict:
        lc, rc = self.fw.label, self.rc
        return dict(batch_size=lc.batch_size, max_new_tokens=lc.max_new_tokens,
                    no_repeat_ngram=lc.no_repeat_ngram, window=lc.window, mode=rc.mode, stretch=rc.stretch)

    def train(self, out_dir: Path, shards, *, steps: int, seed: int, init_from: str | None) -> dict:
        from .recognizer import recognizer_config, train_recognizer

        return train_recognizer(recognizer_config(self.rc.experiment or DEFAULT_EXPERIMENT["paper"], self.rc.overrides,
                                                  shards=[str(s) for s in shards], tokenizer=str(self.data / "tokenizer"),
                                                  out_dir=out_dir, steps=steps, seed=seed, init_from=init_from,
                                                  mode=self.rc.mode))

    def load(self, model_dir: Path):
        from .recognizer import load_recognizer

        return load_recognizer(model_dir, self.data / "tokenizer")

    def read(self, model, tok, patches) -> list[tuple[str, float, bool]]:
        return read_batch(model, tok, patches, self.read_kw()) if patches else []

    def read_images(self, model, tok, images, like) -> list[tuple[str, float, bool]]:
        from .recognizer import read_patches

        return read_patches(model, tok, images, **self.read_kw(), **canvas_kw(like))

    def nll(self, model, tok, images, texts, like) -> float:
        from .recognizer import reference_nll

        kw = dict(self.read_kw(), **canvas_kw(like))
        return reference_nll(model, tok, images, texts, **{k: kw[k] for k in ("batch_size", "mode", "stretch", "kinds", "rtl")})

    def reader(self, model, tok, model_dir: Path, threads: int, log=print):
        return make_reader(self.fw.label, model=model, tokenizer=tok, model_dir=model_dir,
                           tokenizer_dir=self.data / "tokenizer", read_kw=self.read_kw(), threads=threads, log=log)


class PPOCRRecognizer:
    """PP-OCRv4 rec fine-tuned with CTC (``ppocr.py``) on the patches' crops."""

    def __init__(self, fw, data_dir: Path):
        self.fw, self.rc, self.data = fw, fw.recognizer, Path(data_dir)

    def train(self, out_dir: Path, shards, *, steps: int, seed: int, init_from: str | None) -> dict:
        from .ppocr import ppocr_config, train_ppocr

        return train_ppocr(ppocr_config(self.rc.overrides, shards=[str(s) for s in shards], out_dir=out_dir,
                                        steps=steps, seed=seed, init_from=init_from,
                                        experiment=self.rc.experiment or DEFAULT_EXPERIMENT["ppocr"]))

    def load(self, model_dir: Path):
        from .ppocr import load_ppocr

        return load_ppocr(model_dir), None

    def read_images(self, model, tok, images, like, text_layers=None) -> list[tuple[str, float, bool]]:
        from .ppocr import read_ppocr

        reads = read_ppocr(model, images, rtl=[is_rtl(p.script) for p in like], scripts=[p.script for p in like],
                           batch_size=self.fw.label.batch_size, cached=True, text_layers=text_layers)
        return [(text, conf, True) for text, conf, _ in reads]  # CTC always finishes

    def read(self, model, tok, patches) -> list[tuple[str, float, bool]]:
        """A refused text-layer line (``extra.text_layer``) is decoded on its garbled text layer
        (``ctc_constrained``); gold and detector lines are read freely."""
        return self.read_images(model, tok, [p.image for p in patches], patches,
                                [p.extra.get("text_layer") for p in patches]) if patches else []

    def nll(self, model, tok, images, texts, like) -> float | None:
        from .ppocr import reference_ctc_nll

        return reference_ctc_nll(model, images, texts, rtl=[is_rtl(p.script) for p in like])

    def reader(self, model, tok, model_dir: Path, threads: int, log=print):
        if self.fw.label.executor != "local":
            raise ValueError(f"flywheel.label.executor={self.fw.label.executor} reads with the paper model only; "
                             "flywheel.recognizer.kind=ppocr labels in this process (executor=local)")
        return _BatchReader(lambda batch: self.read(model, tok, batch))


class _BatchReader:
    """``readers.py``'s reader interface (``map`` in batch order, ``close``) over a read function."""

    def __init__(self, read):
        self.read = read

    def map(self, batches):
        for batch in batches:
            yield self.read(batch)

    def close(self) -> None:
        pass


def make_recognizer(fw, data_dir: Path):
    """The recognizer ``flywheel.recognizer.kind`` names."""
    return {"ppocr": PPOCRRecognizer, "paper": PaperRecognizer}[fw.recognizer.kind](fw, data_dir)


def round_steps(rc, k: int) -> int:
    """Optimizer steps of round ``k`` (``flywheel.recognizer.steps``, else the kind's default; the last repeats)."""
    steps = list(rc.steps) if rc.steps else DEFAULT_STEPS[rc.kind]
    return steps[min(k, len(steps) - 1)]
