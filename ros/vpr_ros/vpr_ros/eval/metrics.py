"""Retrieval metrics (recall@N, precision-recall, R@100P, AUC) and latency statistics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass
class PrecisionRecall:
    """Precision-recall of accepting a query's top-1 answer when its score is at least a threshold.

    Every query with an answer is a prediction; it is a true positive when the answer is correct and a
    false positive otherwise (including every accepted query that has no correct answer in the map, e.g.
    a stretch of route the map does not cover). Recall is over the queries that do have a correct answer.

    Shape:
        thresholds, precision, recall: (T,), thresholds decreasing, one point per distinct score.
    """

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @property
    def auc(self) -> float:
        """Area under the curve as average precision: sum over points of precision x recall gained."""
        if self.recall.size == 0:
            return float("nan")
        gained = np.diff(np.concatenate([[0.0], self.recall]))
        return float(np.sum(gained * self.precision))

    def _clean_prefix(self) -> int:
        """Points before the first false positive (precision stays 1 exactly until then, never after)."""
        return int(np.argmin(self.precision >= 1.0)) if (self.precision < 1.0).any() else len(self.precision)

    @property
    def recall_at_100_precision(self) -> float:
        """Highest recall reached with no false positive (R@100P); 0 when the best answer is already wrong."""
        n = self._clean_prefix()
        return float(self.recall[n - 1]) if n else 0.0

    @property
    def threshold_at_100_precision(self) -> float:
        """Lowest score threshold with no false positive (inf when there is none): a loop-closure threshold."""
        n = self._clean_prefix()
        return float(self.thresholds[n - 1]) if n else float("inf")

    def summary(self) -> dict[str, float]:
        return {"auc": self.auc, "recall_at_100_precision": self.recall_at_100_precision,
                "threshold_at_100_precision": self.threshold_at_100_precision}

    def curve(self, max_points: int = 200) -> dict[str, list[float]]:
        """The curve thinned to at most ``max_points`` points, for reports."""
        keep = np.unique(np.linspace(0, len(self.thresholds) - 1, min(max_points, len(self.thresholds)))
                         .round().astype(int)) if len(self.thresholds) else np.zeros(0, int)
        return {"threshold": self.thresholds[keep].tolist(), "precision": self.precision[keep].tolist(),
                "recall": self.recall[keep].tolist()}


def precision_recall(scores: np.ndarray, correct: np.ndarray, has_positive: np.ndarray) -> PrecisionRecall:
    """Precision and recall of "accept the top-1 answer when its score >= t" for every distinct t.

    Args:
        scores: (Q,) score of each query's top-1 answer (NaN = no answer, never accepted).
        correct: (Q,) whether that answer is correct.
        has_positive: (Q,) whether the query has any correct answer in the map.
    """
    scores = np.asarray(scores, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    answered = ~np.isnan(scores)
    positives = int(np.asarray(has_positive, dtype=bool).sum())
    order = np.argsort(-scores[answered], kind="stable")
    s, c = scores[answered][order], correct[answered][order]
    tp = np.cumsum(c)
    accepted = np.arange(1, len(s) + 1)
    last_of_tie = np.flatnonzero(np.append(s[1:] != s[:-1], True)) if len(s) else np.zeros(0, int)
    precision = tp[last_of_tie] / accepted[last_of_tie]
    recall = tp[last_of_tie] / positives if positives else np.full(len(last_of_tie), np.nan)
    return PrecisionRecall(s[last_of_tie], precision.astype(np.float64), recall.astype(np.float64))


def latency_stats(samples_ms: Sequence[float]) -> dict[str, float]:
    """Mean, percentiles and max of latencies in milliseconds (empty input gives NaNs and count 0)."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"count": 0, "mean": float("nan"), "p50": float("nan"), "p90": float("nan"),
                "p95": float("nan"), "p99": float("nan"), "max": float("nan")}
    p50, p90, p95, p99 = np.percentile(x, [50, 90, 95, 99])
    return {"count": int(x.size), "mean": float(x.mean()), "p50": float(p50), "p90": float(p90),
            "p95": float(p95), "p99": float(p99), "max": float(x.max())}


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
