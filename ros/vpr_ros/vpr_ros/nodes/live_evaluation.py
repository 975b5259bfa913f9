"""Live evaluation: a bag replayed in real time to the running localize node, its answers scored like offline.

The adapter between :func:`vpr_ros.nodes.live_replay.replay_live` (rclpy: start the node, publish, listen) and
the ROS-free report of :mod:`vpr_ros.eval` -- the same report, plots and ground-truth rules as an offline
:func:`vpr_ros.eval.run`. The report covers the frames the node answered and adds the replay's counts:
published, answered, dropped by the node, lost in transport, publish lag, node memory over the run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.core.localizer import ratio_confidence
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.errors import InputError
from vpr_ros.eval.evaluate import EvalConfig, Report, ref_image_loader
from vpr_ros.eval.ground_truth import GroundTruth, GroundTruthRule, describe_ground_truth, resolve_ground_truth
from vpr_ros.eval.metrics import recall_at_n
from vpr_ros.eval.outputs import write_evaluation
from vpr_ros.eval.report import QueryResult
from vpr_ros.io.bags import BagFrameSource
from vpr_ros.nodes.live_replay import replay_live

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveReplayOptions:
    """How the bag is replayed to the node."""

    params_file: Path | None = None  # the node's parameters file (the same as ``EvalConfig.localize`` came from)
    parameters: Sequence[str] = ()  # extra node parameters as ``name:=value``
    rate: float = 1.0  # replay speed (1 = as recorded)
    drain_timeout: float = 5.0  # seconds to wait for answers after the last frame
    log_path: Path | None = None  # the node's output (default <out>/localize_node.log)

    def __post_init__(self) -> None:
        if not self.rate > 0:
            raise InputError(f"replay rate must be positive, got {self.rate}")


def evaluate_live(map_path: Path, queries: BagFrameSource, ground_truth: GroundTruthRule | GroundTruth | str | Path,
                  config: EvalConfig, replay: LiveReplayOptions, out: Path) -> Report:
    """Replay ``queries`` to the localize node started on ``map_path`` and score its answers."""
    refmap = ReferenceMap.load(map_path, verify=False)
    gt_all = resolve_ground_truth(ground_truth, refmap.frames, queries.frames)
    log_path = replay.log_path or out / "localize_node.log"
    run = replay_live(map_path.resolve(), queries, replay.params_file, replay.parameters, rate=replay.rate,
                      drain_timeout=replay.drain_timeout, log_path=log_path)
    row_of_id = {int(fid): row for row, fid in enumerate(refmap.frames.ids)}
    radius = config.localize.localizer.confidence_radius
    answered_rows, results, all_ranked = [], [], []
    for k, key in run.published:
        answer = run.answers.get(key)
        if answer is None:
            all_ranked.append(np.zeros(0, np.int64))
            continue
        ranked = np.array([row_of_id.get(int(r), -1) for r in answer.ref_ids], dtype=np.int64)
        all_ranked.append(ranked)
        answered_rows.append(k)
        results.append(QueryResult(name=queries.frames.names[k], stamp=key, ranked=ranked, scores=answer.scores,
                                   latency_ms=answer.latency_ms,
                                   confidence=ratio_confidence(answer.scores, answer.positions, radius)))
    if not results:
        raise RuntimeError(f"the localize node answered none of {len(run.published)} frames; see {log_path}")
    rows = np.array(answered_rows, dtype=np.int64)
    published_rows = [k for k, _ in run.published]
    gt = GroundTruth([gt_all.positives[i] for i in rows], gt_all.description)
    recall_all = recall_at_n(all_ranked, [gt_all.positives[i] for i in published_rows], config.recall_ns)
    live = run.summary()
    live.update({"rate": replay.rate, **{f"recall_all_frames@{n}": v for n, v in recall_all.items()},
                 "note": "recall@N and latency cover the answered frames; recall_all_frames@N counts every "
                         "published frame, unanswered ones as misses"})
    info = {"mode": f"live: bag replayed to the localize node at {replay.rate:g}x, answers from ~/matches",
            "map": str(map_path), "queries": queries.info, "encoder": refmap.encoder, "live": live,
            "ground_truth_rule": describe_ground_truth(ground_truth),
            "node_diagnostics": run.diagnostics_after,
            "latency_note": "end-to-end: frame published -> ~/matches received, includes DDS transport on loopback"}
    log.info("live replay: %d published, %d answered, node dropped %s, memory growth %.1f MB", live["published"],
             live["answered"], live["node_frames_dropped"], live["node_memory"].get("growth_mb", float("nan")))
    data = write_evaluation(results, gt, out, refmap.frames, queries.frames.take(rows), config.recall_ns,
                            info=info, plots=config.plots, load_query=lambda i: queries.load_image(int(rows[i])),
                            load_ref=ref_image_loader(refmap), title=f"{config.title} (live)",
                            latency_title="end-to-end latency through the localize node",
                            score_kind=config.score_kind)
    return Report(data, results, gt, tuple(config.recall_ns), out / "report.json")
