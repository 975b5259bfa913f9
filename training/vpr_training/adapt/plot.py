"""``vpr-adapt``'s picture: held-out recall@1 of every method, default vs adapted encoder, beside each other."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def plot_report(report: dict[str, Any], path: Path) -> Path:
    """Grouped bars of test recall@1 (and recall at 100% precision as a dark inset) per method and encoder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vpr_ros.core.files import atomic_output

    test = report["results"]["test"]
    methods = list(test["adapted"])
    encoders = [e for e in ("default", "adapted") if e in test]
    x = np.arange(len(methods))
    width = 0.8 / len(encoders)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 3.8))
    for k, enc in enumerate(encoders):
        r1 = [test[enc][m]["recall@1"] if m in test[enc] else np.nan for m in methods]
        r100 = [test[enc][m]["recall_at_100_precision"] if m in test[enc] else np.nan for m in methods]
        pos = x + (k - (len(encoders) - 1) / 2) * width
        ax.bar(pos, r1, width, label=f"{enc} encoder: recall@1", alpha=0.85)
        ax.bar(pos, r100, width * 0.4, color="black", alpha=0.5,
               label="recall at 100% precision" if k == len(encoders) - 1 else None)
        for p, v in zip(pos, r1, strict=True):
            if np.isfinite(v):
                ax.text(p, v + 0.01, f"{v:.2f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, methods, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("held-out recall@1")
    split = report["split"]
    ax.set_title(f"vpr-adapt, held-out places {split['test'][0]}-{split['test'][1]} "
                 f"(trained on {split['train'][0]}-{split['train'][1]})", fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    with atomic_output(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    plt.close(fig)
    return path
