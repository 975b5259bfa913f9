"""Evaluation results -> JSON report (recall@N, precision-recall, latency, counts, per-query rows)."""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros import __version__
from vpr_ros.eval.ground_truth import GroundTruth
from vpr_ros.eval.metrics import DEFAULT_NS, PrecisionRecall, correct_at, latency_stats, precision_recall, recall_at_n

#: What a precision-recall curve thresholds: the top-1 answer's score, or the ratio-test confidence.
SCORE_KINDS = ("score", "confidence")


@dataclass
class QueryResult:
    """One query's ranked answer (map row indices, best first) and how long it took."""

    name: str
    stamp: float
    ranked: np.ndarray
    scores: np.ndarray
    latency_ms: float
    stage_ms: dict[str, float] = field(default_factory=dict)
    confidence: float = float("nan")


def machine_description() -> dict[str, Any]:
    """CPU model, core count and library versions, recorded beside every figure."""
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    versions = {}
    for mod in ("numpy", "onnxruntime", "faiss", "cv2"):
        try:
            versions[mod] = __import__(mod).__version__
        except (ImportError, AttributeError):
            continue
    return {"cpu": cpu, "cores": os.cpu_count(), "machine": platform.machine(), "python": platform.python_version(),
            "libraries": versions, "vpr_ros": __version__}


def top1_scores(results: Sequence[QueryResult], kind: str = "score") -> np.ndarray:
    """(Q,) the number a threshold applies to: top-1 score or confidence (NaN where there is no answer)."""
    if kind not in SCORE_KINDS:
        raise ValueError(f"score kind {kind!r} is not one of {list(SCORE_KINDS)}")
    if kind == "confidence":
        return np.array([r.confidence if len(r.ranked) else np.nan for r in results], dtype=np.float64)
    return np.array([float(r.scores[0]) if len(r.scores) else np.nan for r in results], dtype=np.float64)


def results_precision_recall(results: Sequence[QueryResult], gt: GroundTruth, kind: str = "score") -> PrecisionRecall:
    """Precision-recall of accepting each query's top-1 answer by its score (see :func:`precision_recall`)."""
    correct = correct_at([r.ranked for r in results], gt.positives, 1)
    return precision_recall(top1_scores(results, kind), correct, gt.has_positive)


def recall_summary(results: Sequence[QueryResult], gt: GroundTruth, ns: Sequence[int] = DEFAULT_NS,
                   score_kind: str = "score") -> dict[str, Any]:
    """recall@N and the precision-recall figures (AUC, R@100P, its threshold) of one set of results."""
    recall = recall_at_n([r.ranked for r in results], gt.positives, ns)
    pr = results_precision_recall(results, gt, score_kind)
    return {**{f"recall@{n}": recall[n] for n in ns}, "precision_recall": {"score": score_kind, **pr.summary()}}


def build_report(results: Sequence[QueryResult], gt: GroundTruth, ns: Sequence[int] = DEFAULT_NS,
                 info: dict[str, Any] | None = None, score_kind: str = "score") -> dict[str, Any]:
    """Summarise per-query results against ground truth."""
    if len(results) != len(gt):
        raise ValueError(f"{len(results)} results for {len(gt)} ground-truth queries")
    ranked = [r.ranked for r in results]
    recall = recall_at_n(ranked, gt.positives, ns)
    has = gt.has_positive
    top1 = correct_at(ranked, gt.positives, 1)
    stages = sorted({k for r in results for k in r.stage_ms})
    pr = results_precision_recall(results, gt, score_kind)
    return {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "ground_truth": gt.description,
        "counts": {"queries": len(results), "with_ground_truth": int(has.sum()),
                   "without_ground_truth": int((~has).sum())},
        **{f"recall@{n}": recall[n] for n in ns},
        "precision_recall": {"score": score_kind, **pr.summary(), "curve": pr.curve()},
        "latency_ms": latency_stats([r.latency_ms for r in results]),
        "stage_latency_ms": {s: latency_stats([r.stage_ms[s] for r in results if s in r.stage_ms]) for s in stages},
        "machine": machine_description(),
        **(info or {}),
        "per_query": [{"name": r.name, "stamp": r.stamp, "top": r.ranked[:10].tolist(),
                       "scores": [round(float(s), 5) for s in r.scores[:10]],
                       "positives": gt.positives[i][:20].tolist(), "correct@1": bool(top1[i]) if has[i] else None,
                       "latency_ms": round(r.latency_ms, 3), "confidence": r.confidence}
                      for i, r in enumerate(results)],
    }


def write_json(report: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def summary_line(report: dict[str, Any], ns: Sequence[int] = DEFAULT_NS) -> str:
    recall = "  ".join(f"R@{n} {report[f'recall@{n}']:.3f}" for n in ns if f"recall@{n}" in report)
    pr = report.get("precision_recall")
    if pr:
        recall += f"  AUC {pr['auc']:.3f}  R@100P {pr['recall_at_100_precision']:.3f}"
    lat = report["latency_ms"]
    return (f"{report['counts']['with_ground_truth']} queries  {recall}  "
            f"latency p50 {lat['p50']:.1f} ms  p95 {lat['p95']:.1f} ms")
