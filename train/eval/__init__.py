"""OCR evaluation suite (``python -m train.evaluate``): see docs/evaluation.md.

``train.eval.suite.evaluate`` / ``evaluate_model`` run it; ``metrics`` (per-page scores),
``decode`` (held-out pages, greedy OCR with budgets from the reference length),
``loading`` (stage-1 runs, stage-2 exports, published checkpoints), ``report`` (tables,
report.json / report.md, plots).
"""

from .suite import evaluate, evaluate_model

__all__ = ["evaluate", "evaluate_model"]
