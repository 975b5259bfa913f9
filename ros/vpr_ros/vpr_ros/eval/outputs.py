"""One evaluation's outputs, shared by the folder, bag and live-replay evaluators: report.json and the PNG plots.

``report.json`` holds recall@N, latency percentiles (total and per stage), counts and per-query rows
(:func:`vpr_ros.eval.report.build_report`), plus:

* ``precision_recall``: AUC, recall at 100% precision and its threshold of accepting the top-1 answer by its
  score or confidence (:func:`vpr_ros.eval.report.results_precision_recall`);
* ``pose_accuracy`` (when queries and references both have orientations): the share of queries whose top-1
  reference pose is within 0.25 m / 2 deg, 0.5 m / 5 deg and 5 m / 10 deg (the RobotCar Seasons bins);
* whatever the evaluator adds in ``info`` (e.g. the live replay's drops and memory).

Plots: ``recall.png`` (recall@N and example matches), ``latency.png`` (histogram), ``precision_recall.png``
and, when query positions are known, ``trajectory.png`` (queries coloured by top-1 correctness).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.frames import FrameTable
from vpr_ros.eval.ground_truth import GroundTruth
from vpr_ros.eval.metrics import (
    DEFAULT_NS,
    ROBOTCAR_SEASONS_THRESHOLDS,
    PrecisionRecall,
    pose_accuracy,
)
from vpr_ros.eval.plots import (
    plot_evaluation,
    plot_latency,
    plot_precision_recall,
    plot_trajectory,
)
from vpr_ros.eval.report import QueryResult, build_report, results_precision_recall, write_json

log = logging.getLogger(__name__)


def top1_rows(results: Sequence[QueryResult]) -> np.ndarray:
    """Map row of each query's best match (-1 where it has none). Shape: (Q,) int64."""
    return np.array([int(r.ranked[0]) if len(r.ranked) else -1 for r in results], dtype=np.int64)


def evaluation_extras(results: Sequence[QueryResult], ref_frames: FrameTable, query_frames: FrameTable | None,
                      pose_thresholds: Sequence[tuple[float, float]] = ROBOTCAR_SEASONS_THRESHOLDS) -> dict[str, Any]:
    """Report sections beyond recall@N and precision-recall: pose accuracy when orientations are known."""
    extras: dict[str, Any] = {}
    if query_frames is not None:
        top1 = top1_rows(results)
        answered = top1 >= 0
        ref_ori_known = ~np.isnan(ref_frames.orientations).any(1)
        q_ori_known = ~np.isnan(query_frames.orientations).any(1)
        if q_ori_known.any() and ref_ori_known.any():
            est_pos = np.full((len(results), 3), np.nan)
            est_ori = np.full((len(results), 4), np.nan)
            est_pos[answered] = ref_frames.positions[top1[answered]]
            est_ori[answered] = ref_frames.orientations[top1[answered]]
            extras["pose_accuracy"] = pose_accuracy(query_frames.positions, query_frames.orientations, est_pos,
                                                    est_ori, pose_thresholds)
    return extras


def write_evaluation(results: Sequence[QueryResult], gt: GroundTruth, out: str | Path | None, ref_frames: FrameTable,
                     query_frames: FrameTable | None = None, ns: Sequence[int] = DEFAULT_NS,
                     info: dict[str, Any] | None = None, plots: bool = True,
                     load_query: Callable[[int], np.ndarray] | None = None,
                     load_ref: Callable[[int], np.ndarray | None] | None = None, title: str = "",
                     latency_title: str = "pipeline latency per query",
                     pose_thresholds: Sequence[tuple[float, float]] = ROBOTCAR_SEASONS_THRESHOLDS,
                     score_kind: str = "score", curves: dict[str, PrecisionRecall] | None = None) -> dict[str, Any]:
    """Build the report and, when ``out`` is given, write ``<out>/report.json`` and the plots; return the report.

    Args:
        results: one per query, ``ranked`` holding map rows.
        gt: positives per query (same order).
        ref_frames: the map's frame table; query_frames: the queries' (for poses), same order as ``results``.
        score_kind: what the precision-recall threshold applies to (``score`` or ``confidence``).
        curves: precision-recall curves to plot side by side (default: the one of ``results``).
    """
    report = build_report(results, gt, ns, info, score_kind=score_kind)
    extras = evaluation_extras(results, ref_frames, query_frames, pose_thresholds)
    per_query = report.pop("per_query")
    report.update(extras)
    if out is None:
        report["per_query"] = per_query
        return report
    out = Path(out)
    written = []
    if plots:
        written.append(plot_evaluation(results, gt, out / "recall.png", load_query=load_query, load_ref=load_ref,
                                       title=title))
        written.append(plot_latency(results, out / "latency.png", title=latency_title))
        curves = curves or {"top-1": results_precision_recall(results, gt, score_kind)}
        written.append(plot_precision_recall(curves, out / "precision_recall.png",
                                             title=f"{title} (threshold on {score_kind})" if title else
                                             f"precision-recall (threshold on {score_kind})"))
        if query_frames is not None:
            traj = plot_trajectory(ref_frames.positions, query_frames.positions, results, gt, out / "trajectory.png",
                                   title=title or "trajectory")
            if traj is None:
                log.info("no query positions: trajectory plot skipped")
            else:
                written.append(traj)
    report["plots"] = [p.name for p in written]
    report["per_query"] = per_query  # last, so the summary reads first in the file
    write_json(report, out / "report.json")
    return report
