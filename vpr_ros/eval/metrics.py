"""Retrieval metrics (recall@N) and latency statistics."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_NS = (1, 5, 10)


def correct_at(ranked: Sequence[np.ndarray], positives: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Per query: is any of the first ``n`` ranked references a positive? (Q,) bool."""
    return np.array([np.isin(r[:n], p).any() for r, p in zip(ranked, positives, strict=True)], dtype=bool)


def recall_at_n(ranked: Sequence[np.ndarray], positives: Sequence[np.ndarray],
                ns: Sequence[int] = DEFAULT_NS) -> dict[int, float]:
    """Recall@N over the queries that have at least one positive (standard VPR protocol).

    Args:
        ranked: per query, reference row indices best first.
        positives: per query, reference row indices that are correct.
    """
    has = np.array([p.size > 0 for p in positives], dtype=bool)
    if not has.any():
        return {n: float("nan") for n in ns}
    ranked_ = [r for r, h in zip(ranked, has, strict=True) if h]
    pos_ = [p for p, h in zip(positives, has, strict=True) if h]
    return {n: float(correct_at(ranked_, pos_, n).mean()) for n in ns}


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """Mean, percentiles and max of latencies in milliseconds (empty input gives NaNs and count 0)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"count": 0, "mean": float("nan"), "p50": float("nan"), "p90": float("nan"),
                "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p95, p99 = np.percentile(x, [50, 90, 95, 99])
    return {"count": int(x.size), "mean": float(x.mean()), "p50": float(p50), "p90": float(p90),
            "p95": float(p95), "p99": float(p99), "max": float(x.max())}
