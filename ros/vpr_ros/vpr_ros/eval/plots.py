"""PNG figures for evaluation reports (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vpr_ros.eval.ground_truth import GroundTruth
from vpr_ros.eval.metrics import PrecisionRecall, recall_at_n
from vpr_ros.eval.report import QueryResult


def _pyplot():  # noqa: ANN202 - matplotlib module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:  # noqa: ANN001 - a matplotlib Figure (matplotlib is imported lazily)
    """Lay out, write ``path`` (creating its folder) and release the figure."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_evaluation(results: Sequence[QueryResult], gt: GroundTruth, path: str | Path,
                    load_query: Callable[[int], np.ndarray] | None = None,
                    load_ref: Callable[[int], np.ndarray | None] | None = None,
                    title: str = "", examples: int = 4) -> Path:
    """Recall@N curve beside example matches (query | top-1 reference, green = correct, red = wrong)."""
    plt = _pyplot()
    ranked = [r.ranked for r in results]
    max_n = max((len(r) for r in ranked), default=1)
    ns = list(range(1, max(max_n, 1) + 1))
    recall = recall_at_n(ranked, gt.positives, ns)
    show_examples = load_query is not None and load_ref is not None and len(results) > 0
    rows = examples if show_examples else 0
    fig = plt.figure(figsize=(12, max(4.0, 2.2 * rows)))
    grid = fig.add_gridspec(max(rows, 1), 3, width_ratios=[1.6, 1, 1])
    ax = fig.add_subplot(grid[:, 0])
    ax.plot(ns, [recall[n] for n in ns], marker="o", ms=3)
    ax.set_xlabel("N (candidates)")
    ax.set_ylabel("recall@N")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or "recall@N")
    for n in (1, 5, 10):
        if n in recall:
            ax.annotate(f"R@{n}={recall[n]:.2f}", (n, recall[n]), textcoords="offset points", xytext=(4, -12),
                        fontsize=8)
    if show_examples:
        # Show failures first (up to half the rows), then successes spread along the run.
        top1_ok = np.array([len(r.ranked) > 0 and int(r.ranked[0]) in set(p.tolist())
                            for r, p in zip(results, gt.positives, strict=True)])
        wrong = np.flatnonzero(~top1_ok & gt.has_positive)[: rows // 2]
        right = np.flatnonzero(top1_ok)
        right = right[np.linspace(0, len(right) - 1, rows - len(wrong)).round().astype(int)] if len(right) else right
        picks = np.sort(np.concatenate([wrong, right]).astype(int))[:rows]
        for row, qi in enumerate(picks):
            res = results[qi]
            best = int(res.ranked[0]) if len(res.ranked) else -1
            ok = best in set(gt.positives[qi].tolist())
            ax_q = fig.add_subplot(grid[row, 1])
            ax_q.imshow(load_query(int(qi)))  # type: ignore[misc]
            ax_q.set_title(f"query {res.name}", fontsize=8)
            ax_r = fig.add_subplot(grid[row, 2])
            ref = load_ref(best) if best >= 0 else None  # type: ignore[misc]
            if ref is not None:
                ax_r.imshow(ref)
            score = float(res.scores[0]) if len(res.scores) else float("nan")
            ax_r.set_title(f"top-1 ref {best} ({score:.2f})", fontsize=8, color="green" if ok else "red")
            for a in (ax_q, ax_r):
                a.set_xticks([])
                a.set_yticks([])
            for spine in ax_r.spines.values():
                spine.set_edgecolor("green" if ok else "red")
                spine.set_linewidth(3)
    return _save(fig, path)


def plot_latency(results: Sequence[QueryResult], path: str | Path, title: str = "latency") -> Path:
    """Histogram of end-to-end latency with p50/p95 marks."""
    plt = _pyplot()
    lat = np.array([r.latency_ms for r in results])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(lat, bins=min(40, max(5, len(lat) // 3)), color="#4477aa")
    for q, style in ((50, "-"), (95, "--")):
        v = float(np.percentile(lat, q)) if lat.size else float("nan")
        ax.axvline(v, color="k", ls=style, lw=1)
        ax.annotate(f"p{q} {v:.1f} ms", (v, ax.get_ylim()[1] * (0.9 if q == 50 else 0.75)), fontsize=8,
                    xytext=(3, 0), textcoords="offset points")
    ax.set_xlabel("latency per frame [ms]")
    ax.set_ylabel("frames")
    ax.set_title(title)
    return _save(fig, path)


def plot_precision_recall(curves: dict[str, PrecisionRecall], path: str | Path,
                          title: str = "precision-recall") -> Path:
    """Precision-recall curves side by side (e.g. single frame vs sequence), AUC and R@100P in the legend."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, pr in curves.items():
        recall = np.concatenate([[0.0], pr.recall])
        precision = np.concatenate([[1.0], pr.precision])
        ax.step(recall, precision, where="post",
                label=f"{name}: AUC {pr.auc:.2f}, R@100P {pr.recall_at_100_precision:.2f}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


def plot_trajectory(ref_positions: np.ndarray, query_positions: np.ndarray, results: Sequence[QueryResult],
                    gt: GroundTruth, path: str | Path, title: str = "trajectory") -> Path | None:
    """Map trajectory (grey) with each query at its position, green where the top-1 match is correct, red where
    it is wrong (a thin red line joins it to the reference it was matched to), grey without ground truth.

    Returns None (and draws nothing) when no query position is known.
    """
    q = np.asarray(query_positions, dtype=np.float64)
    if not (~np.isnan(q[:, :2]).any(1)).any():
        return None
    plt = _pyplot()
    r = np.asarray(ref_positions, dtype=np.float64)
    top1 = np.array([int(res.ranked[0]) if len(res.ranked) else -1 for res in results])
    has = gt.has_positive
    ok = np.array([t in set(p.tolist()) for t, p in zip(top1, gt.positives, strict=True)], dtype=bool)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.plot(r[:, 0], r[:, 1], color="0.6", lw=1, marker=".", ms=3, label=f"map ({len(r)} frames)", zorder=1)
    wrong = np.flatnonzero(has & ~ok & (top1 >= 0))
    if len(wrong):
        seg_from, seg_to = q[wrong, :2], r[top1[wrong], :2]
        for a, b in zip(seg_from, seg_to, strict=True):
            ax.plot([a[0], b[0]], [a[1], b[1]], color="#cc3311", lw=0.5, alpha=0.5, zorder=2)
    for mask, color, label in ((has & ok, "#228833", "correct top-1"), (has & ~ok, "#cc3311", "wrong top-1"),
                               (~has, "0.8", "no ground truth")):
        if mask.any():
            ax.scatter(q[mask, 0], q[mask, 1], s=12, color=color, label=f"{label} ({int(mask.sum())})", zorder=3)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="best")
    ax.grid(alpha=0.3)
    return _save(fig, path)
