"""Retrieval metrics (recall@N) and latency statistics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from vpr_ros.io.transforms import rotation_angle_deg

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


def top1_precision_recall(confidence: np.ndarray, correct: np.ndarray, has_positive: np.ndarray) -> dict[str, Any]:
    """Precision-recall of accepting the top-1 match when its confidence reaches a threshold.

    Sweeping the threshold over every confidence value: precision = correct accepted / accepted, recall =
    correct accepted / queries with a ground-truth match (queries without one can only add false positives, as
    a localizer that answers there is wrong). Also returns the recall at 100% precision (the highest recall with
    no wrong accepted match) and the average precision (area under the curve, step-wise).

    Shape:
        confidence, correct, has_positive: (Q,); returns arrays of length T (thresholds, descending).
    """
    conf = np.nan_to_num(np.asarray(confidence, dtype=np.float64), nan=-np.inf)
    ok = np.asarray(correct, dtype=bool) & np.asarray(has_positive, dtype=bool)
    positives = int(np.asarray(has_positive, dtype=bool).sum())
    order = np.argsort(-conf, kind="stable")
    tp = np.cumsum(ok[order])
    accepted = np.arange(1, len(order) + 1)
    # One point per distinct threshold: the last query accepted at that confidence.
    last = np.flatnonzero(np.r_[np.diff(conf[order]) != 0, True]) if len(order) else np.zeros(0, np.int64)
    precision = tp[last] / accepted[last] if len(last) else np.zeros(0)
    recall = tp[last] / positives if positives and len(last) else np.zeros(len(last))
    perfect = precision >= 1.0
    r_at_100p = float(recall[perfect].max()) if perfect.any() else 0.0
    ap = float(np.sum(np.diff(np.r_[0.0, recall]) * precision)) if len(last) else float("nan")
    return {"thresholds": conf[order][last], "precision": precision, "recall": recall,
            "recall_at_100_precision": r_at_100p, "average_precision": ap}


#: RobotCar Seasons / Extended CMU Seasons pose error bins (metres, degrees), as used by Patch-NetVLAD.
ROBOTCAR_SEASONS_THRESHOLDS = ((0.25, 2.0), (0.5, 5.0), (5.0, 10.0))


def pose_accuracy(query_positions: np.ndarray, query_orientations: np.ndarray, est_positions: np.ndarray,
                  est_orientations: np.ndarray,
                  thresholds: Sequence[tuple[float, float]] = ROBOTCAR_SEASONS_THRESHOLDS) -> dict[str, Any]:
    """Share of queries whose estimated pose (the top-1 reference's) is within each (metres, degrees) bin.

    A place-recognition system localizes a query by inheriting the pose of its best-matching reference
    (Patch-NetVLAD, Sec. 4.2); the error is the translation distance and the angle of the relative rotation.
    Queries without a known pose are left out; an estimate with an unknown orientation misses every bin.

    Shape:
        positions (Q, 3), orientations (Q, 4) x y z w (NaN = unknown).
    """
    known = ~np.isnan(query_positions).any(1) & ~np.isnan(query_orientations).any(1)
    t_err = np.linalg.norm(est_positions[known] - query_positions[known], axis=1)
    r_err = rotation_angle_deg(est_orientations[known], query_orientations[known])
    out: dict[str, Any] = {"queries": int(known.sum())}
    for t_max, r_max in thresholds:
        hit = (t_err <= t_max) & (r_err <= r_max)  # NaN errors compare False: a miss
        out[f"{t_max:g}m_{r_max:g}deg"] = float(hit.mean()) if known.any() else float("nan")
    out["median_translation_error_m"] = float(np.nanmedian(t_err)) if known.any() else float("nan")
    out["median_rotation_error_deg"] = float(np.nanmedian(r_err)) if known.any() and \
        not np.isnan(r_err).all() else float("nan")
    return out
