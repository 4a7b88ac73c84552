"""Typed config schema of the flywheel (``conf/flywheel.yaml`` + ``conf/flywheel/``).

One default per key, here and nowhere else (the YAML files hold the embedded default's values
only); ranges are checked when the config is composed and the error names the key. The
acceptance filters' settings are ``data_engine.flywheel.accept.AcceptConfig`` (the filters'
own dataclass, used as the ``flywheel.accept`` group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from omegaconf import MISSING

from data_engine.config import ConfigError, Schema, group, register_schema, setting, typed
from data_engine.flywheel.accept import AcceptConfig
from data_engine.flywheel.linepages import POOL_WORDS, WORD_SOURCES, LineLanguage
from data_engine.scripts import SCRIPTS
from models.config import RESOLUTION_MODES

PATCH_KINDS = ("lines", "blocks", "both")  # flywheel.patches
RECOGNIZER_MODES = tuple(name for name, m in RESOLUTION_MODES.items() if not m.tiled)  # one square view
LABEL_EXECUTORS = ("local", "ray")  # flywheel.label.executor
RECOGNIZER_KINDS = ("ppocr", "paper")  # flywheel.recognizer.kind (train/flywheel/recognizers.py)

__all__ = ["FlywheelAppConfig", "FlywheelConfig", "LanguagePlan", "as_app_config", "register", "typed"]


@dataclass
class LanguagePlan(Schema):
    """One language of a run and, for the generated default corpus, its documents per kind."""

    lang: str = MISSING               # "<iso639-3>-<iso15924>", e.g. hin-Deva (a bare script code works too)
    digital: int = setting(0, ge=0)   # born-digital documents (text layer: seed patches)
    scan: int = setting(0, ge=0)      # image-only documents (patches to label)
    gold: int = setting(0, ge=0)      # held-out image-only documents (recognizer / Tesseract CER)
    drawn: int = setting(0, ge=0)     # image-only documents of training words with a shaped sign (pre-base vowel sign, conjunct), seed lines labelled with the text drawn; none for scripts without such signs
    calib: int = setting(0, ge=0)     # born-digital documents cut as the pool is (refused text-layer lines' boxes + detector lines), labelled by their truth: the acceptance calibration lines (0: held-out seed documents, accept.calibration_lines)


@dataclass
class DetectorConfig(Schema):
    _key: ClassVar[str] = "flywheel.detector"

    name: str = "ppocr_det"           # ppocr_det | textlayer_lines | a data_engine.layout source name
    model_path: Optional[str] = None  # null: the ONNX file shipped in the rapidocr-onnxruntime wheel


@dataclass
class RecognizerConfig(Schema):
    _key: ClassVar[str] = "flywheel.recognizer"

    # ppocr: PP-OCRv4 rec fine-tuned with CTC (train/flywheel/ppocr.py); paper: the project's
    # DeepSeek-OCR trained on patch canvases (train/flywheel/recognizer.py; the paper's size on GPUs)
    kind: str = setting("ppocr", choices=RECOGNIZER_KINDS)
    experiment: Optional[str] = None  # conf/experiment recipe; null: the kind's (flywheel_ppocr | flywheel_recognizer)
    steps: list[int] = setting([], ge=1)  # optimizer steps per round (the last value repeats); []: the kind's (recognizers.DEFAULT_STEPS: ppocr [300, 100, 100], paper [1800, 300, 300])
    continue_training: bool = True    # round k > 0 starts from round k-1's model
    train_on_accepted: bool = True    # round k > 0 trains on the labels accepted before it; false: the control run (seed and collage only, same steps)
    accepted_repeats: int = setting(1, ge=1)  # each accepted label is trained on this many times per epoch (copies with their own keys); 1: once, as a seed line
    overrides: list[str] = setting([])  # training overrides, e.g. [model.preset=deepseek-ocr]
    mode: str = setting("micro", choices=RECOGNIZER_MODES)  # paper: resolution mode it reads; patch canvases have its side
    stretch: float = setting(1.0, gt=0)  # paper: horizontal stretch of a line on its canvas (data_engine/flywheel/patches.py)


@dataclass
class LabelConfig(Schema):
    _key: ClassVar[str] = "flywheel.label"

    batch_size: int = setting(16, ge=1)  # patches per generate() call
    max_new_tokens: int = setting(64, ge=1)  # longer outputs are rejected as unfinished
    no_repeat_ngram: int = setting(8, ge=0)  # ban repeating an n-gram of this many tokens (0: off) ...
    window: int = setting(48, ge=1)   # ... within the last this many generated tokens
    executor: str = setting("local", choices=LABEL_EXECUTORS)  # local: this process; ray: Ray actors (train/flywheel/readers.py)
    actors: int = setting(2, ge=1)    # executor=ray on a cluster without GPUs: CPU actors (with GPUs: one per GPU)
    ray_address: Optional[str] = None  # executor=ray: "auto", "host:6379", "ray://host:10001"; null: $RAY_ADDRESS, else a new local Ray instance

    def check(self) -> None:
        if self.executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError as e:
                raise ConfigError("flywheel.label.executor=ray needs Ray: pip install 'ocrflow[ray]'") from e


@dataclass
class BaselineConfig(Schema):
    _key: ClassVar[str] = "flywheel.baseline"

    tesseract: bool = True            # Tesseract 5 CER on the gold patches (skipped with a reason when missing)


@dataclass
class FlywheelConfig(Schema):
    """The ``flywheel`` group: what ``train.flywheel.run_flywheel`` runs."""

    _key: ClassVar[str] = "flywheel"

    input: Optional[str] = None       # folder of your PDFs / page images, any names (+ gold/, gold_unseen/; data_engine/flywheel/inputs.py); null: generate the default corpus
    languages: list[LanguagePlan] = setting([])  # see LanguagePlan; the default corpus is in conf/flywheel/default.yaml
    pages_per_doc: int = setting(2, ge=1)  # generated documents' pages
    seed: int = 0                     # corpus generation and training seeds (round k trains with seed + k)
    rounds: int = setting(3, ge=1)    # round 0 = text-layer (fitz) patches only
    dpi: int = setting(144, gt=0)     # page rendering for patch cutting and detection
    threads: int = setting(2, ge=1)   # torch / onnxruntime threads
    tokenizer_vocab: int = setting(512, ge=265)  # byte-level BPE on seed labels + the scripts' letters
    patches: str = setting("lines", choices=PATCH_KINDS)  # what is cut: lines, blocks (text blocks / detector line groups) or both
    lines_per_block: list[int] = setting([1, 1], ge=1)  # generated corpus: lines per paragraph [lo, hi] ([1, 1]: every line alone)
    words: str = setting("wordfreq", choices=WORD_SOURCES)  # generated corpus: real words of each language (wordfreq; pseudo-words where it lacks one) or pseudo-words
    pool_words: str = setting("seed", choices=POOL_WORDS)  # generated corpus: the image-only pages to label use the seed's words, or words of their own (none of the seed's or the unseen-word gold's: linepages.POOL)
    lexicon_size: int = setting(3000, ge=20)  # generated corpus: wordfreq: the language's most frequent words, 1 in 8 held out for the unseen-word gold; pseudo: pseudo-words per script (the unseen-word gold from as many others)
    collage: float = setting(0.0, ge=0)  # collage lines (seed words recombined, data_engine/flywheel/collage.py) per language, x the best-seeded language's seed lines
    page_erase_share: Optional[float] = setting(0.5, gt=0, le=1)  # a page with unaccepted lines still gets a page label when at least this share of its found lines is accepted: the others are painted white and left out of the label (data_engine/flywheel/reassemble.py); null: complete pages only
    detector: DetectorConfig = group(DetectorConfig)
    recognizer: RecognizerConfig = group(RecognizerConfig)
    label: LabelConfig = group(LabelConfig)
    accept: AcceptConfig = group(AcceptConfig)
    baseline: BaselineConfig = group(BaselineConfig)

    def check(self) -> None:
        lo_hi = self.lines_per_block
        if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
            raise ConfigError(f"flywheel.lines_per_block must be [lo, hi] with lo <= hi, got {lo_hi}")
        if self.recognizer.kind == "ppocr" and self.label.executor == "ray":
            raise ConfigError("flywheel.label.executor=ray reads with the paper model only: use "
                              "flywheel.recognizer.kind=paper, or executor=local with kind=ppocr")
        specs = [lp.lang for lp in self.languages]
        if len(set(specs)) != len(specs):
            raise ConfigError(f"flywheel.languages: each lang may appear once, got {specs}")
        for s in specs:
            lang = LineLanguage.parse(s)
            if not lang.lang or lang.script not in SCRIPTS:
                raise ConfigError(f"flywheel.languages: lang must look like 'hin-Deva' (ISO 639-3 - ISO 15924 "
                                  f"script of {sorted(SCRIPTS)}), got {s!r}")


@dataclass
class FlywheelAppConfig(Schema):
    """Primary config of ``python -m train.flywheel`` (``conf/flywheel.yaml``)."""

    out: str = "runs/flywheel"        # run directory: data/, round_<k>/, report.json/.md/.png
    flywheel: FlywheelConfig = group(FlywheelConfig)


def as_app_config(cfg) -> FlywheelAppConfig:
    """The validated config from a composed DictConfig, an instance or a (partial) plain dict
    (whose ``flywheel.languages`` entries may be dicts)."""
    from collections.abc import Mapping

    if isinstance(cfg, Mapping) and isinstance(cfg.get("flywheel"), Mapping) and "languages" in cfg["flywheel"]:
        langs = [LanguagePlan(**d) if isinstance(d, Mapping) else d for d in cfg["flywheel"]["languages"]]
        cfg = {**cfg, "flywheel": {**cfg["flywheel"], "languages": langs}}
    return typed(cfg, FlywheelAppConfig)


def register() -> None:
    register_schema("flywheel_schema", FlywheelAppConfig)
