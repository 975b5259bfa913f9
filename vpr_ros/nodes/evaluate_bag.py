"""``evaluate --bag``: query frames from a bag, offline through the core pipeline or live through the node.

Offline, every selected frame goes straight into :class:`vpr_ros.core.localizer.Localizer` (as fast as the
machine goes; the same code path as the folder evaluator, so the same images give the same results). Live
(``--live``), the bag is replayed in real time to the localize node started as its own process
(:mod:`vpr_ros.nodes.live_replay`); the report then covers the frames the node answered and adds the replay's
counts: published, answered, dropped by the node, lost in transport, publish lag, node memory over the run.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

import numpy as np

from vpr_ros.cli.bag_options import bag_source_from_args
from vpr_ros.cli.evaluate import evaluate_offline, ground_truth_for, ref_image_loader
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import ratio_confidence
from vpr_ros.core.refmap import ReferenceMap, read_manifest
from vpr_ros.eval.ground_truth import GroundTruth
from vpr_ros.eval.metrics import recall_at_n
from vpr_ros.eval.outputs import write_evaluation
from vpr_ros.eval.report import QueryResult
from vpr_ros.io.bags import BagFrameSource
from vpr_ros.io.geodesy import GeodeticOrigin

log = logging.getLogger("vpr_ros.evaluate")


def map_origin(args: argparse.Namespace) -> GeodeticOrigin | None:
    """GNSS query poses must be expressed relative to the map's origin to be comparable."""
    origin = (read_manifest(args.map).get("sections") or {}).get("geodetic_origin")
    return GeodeticOrigin.from_dict(origin) if origin else None


def common_info(args: argparse.Namespace, queries: BagFrameSource) -> dict[str, Any]:
    return {"map": str(args.map), "queries": queries.info,
            "dist_threshold_m": args.dist_threshold if args.ground_truth is None and args.index_tolerance is None
            else None, "angle_threshold_deg": args.angle_threshold, "index_tolerance": args.index_tolerance}


def evaluate_bag(args: argparse.Namespace, config: LocalizeNodeConfig, ns: tuple[int, ...]) -> dict[str, Any]:
    with bag_source_from_args(args, args.query_poses, origin=map_origin(args), progress=not args.quiet) as queries:
        if args.live:
            return evaluate_live(args, config, ns, queries)
        info = {"mode": "offline: bag frames straight into the pipeline", **common_info(args, queries)}
        return evaluate_offline(args, config, ns, queries, title=f"{args.image_topic} vs {args.map.name}", info=info)


def subset(frames: FrameTable, rows: np.ndarray) -> FrameTable:
    return FrameTable(frames.ids[rows], [frames.names[i] for i in rows], [frames.sources[i] for i in rows],
                      frames.stamps[rows], frames.positions[rows], frames.orientations[rows])


def evaluate_live(args: argparse.Namespace, config: LocalizeNodeConfig, ns: tuple[int, ...],
                  queries: BagFrameSource) -> dict[str, Any]:
    from vpr_ros.core.paths import resolve_path
    from vpr_ros.nodes.live_replay import replay_live

    refmap = ReferenceMap.load(args.map, verify=False)
    gt_all = ground_truth_for(args, refmap, queries)
    params_file = resolve_path(args.config, what="config file") if args.config else None
    parameters = [f"{item.partition('=')[0].strip()}:={item.partition('=')[2]}" for item in args.set]
    log_path = args.node_log or args.out / "localize_node.log"
    run = replay_live(args.map.resolve(), queries, params_file, parameters, rate=args.rate,
                      drain_timeout=args.drain_timeout, log_path=log_path)
    row_of_id = {int(fid): row for row, fid in enumerate(refmap.frames.ids)}
    radius = config.localizer.confidence_radius
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
    recall_all = recall_at_n(all_ranked, [gt_all.positives[i] for i in published_rows], ns)
    live = run.summary()
    live.update({"rate": args.rate, **{f"recall_all_frames@{n}": v for n, v in recall_all.items()},
                 "note": "recall@N and latency cover the answered frames; recall_all_frames@N counts every "
                         "published frame, unanswered ones as misses"})
    info = {"mode": f"live: bag replayed to the localize node at {args.rate:g}x, answers from ~/matches",
            **common_info(args, queries), "encoder": refmap.encoder, "live": live,
            "node_diagnostics": run.diagnostics_after,
            "latency_note": "end-to-end: frame published -> ~/matches received, includes DDS transport on loopback"}
    log.info("live replay: %d published, %d answered, node dropped %s, memory growth %.1f MB", live["published"],
             live["answered"], live["node_frames_dropped"], live["node_memory"].get("growth_mb", float("nan")))
    return write_evaluation(results, gt, args.out, refmap.frames, subset(queries.frames, rows), ns, info=info,
                            plots=not args.no_plots, load_query=lambda i: queries.load_image(int(rows[i])),
                            load_ref=ref_image_loader(refmap), title=f"{args.image_topic} vs {args.map.name} (live)",
                            latency_title="end-to-end latency through the localize node",
                            score_kind=args.pr_score or config.loop_closure.score)
