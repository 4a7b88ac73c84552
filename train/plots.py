"""Loss curves from ``metrics.jsonl`` (matplotlib, no display needed).

One panel per run: the training loss per step and, where the run measured vision reliance
(train/reliance.py), the held-out loss with real images and with blank images. A reading model
shows the real curve falling below the blank one; an image-blind one shows them on top of
each other.

CLI: ``python -m train.plots runs/demo/stage1/metrics.jsonl runs/demo/stage2/metrics.jsonl
--out runs/demo/loss_curve.png``
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path


def read_metrics(path: str | Path) -> list[dict]:
    """Rows of a metrics.jsonl; the last row of a step wins (a resumed run repeats steps)."""
    rows: dict[int, dict] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            rows[int(r["step"])] = r
    return [rows[s] for s in sorted(rows)]


def plot_runs(paths: Sequence[str | Path], out: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(paths), figsize=(5.5 * len(paths), 4), squeeze=False)
    for ax, path in zip(axes[0], paths):
        rows = read_metrics(path)
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1, alpha=0.6, label="train loss")
        rel = [r for r in rows if "reliance/loss_real" in r]
        if rel:
            steps = [r["step"] for r in rel]
            ax.plot(steps, [r["reliance/loss_real"] for r in rel], "o-", label="held-out, real images")
            ax.plot(steps, [r["reliance/loss_blank"] for r in rel], "s--", label="held-out, blank images")
        ax.set_title(Path(path).parent.name)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("loss (nats / token)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("metrics", nargs="+", help="metrics.jsonl files, one panel each")
    ap.add_argument("--out", required=True, help="PNG to write")
    a = ap.parse_args(argv)
    print(plot_runs(a.metrics, a.out))


if __name__ == "__main__":
    main()
