"""``python -m train.evaluate``: the evaluation suite's entry (kept for scripts and docs).

The suite lives in ``train/eval/`` (docs/evaluation.md); this module re-exports its API.
"""

from __future__ import annotations

from .eval.cli import main
from .eval.decode import heldout_pages, ocr
from .eval.metrics import normalized_edit_distance, word_precision
from .eval.suite import evaluate, evaluate_model

__all__ = ["main", "evaluate", "evaluate_model", "heldout_pages", "ocr", "normalized_edit_distance",
           "word_precision"]

if __name__ == "__main__":
    main()
