"""``evaluate``: run the localization pipeline over query images (a folder or a bag, offline or live through the
node) and report recall@N, precision-recall, loop closures, pose accuracy and latency.

With a sequence method (``--set localizer.sequence.method=seqslam``) the report puts the single-frame and
the sequence answers of the same run side by side. Queries are fed in stamp / file-name order, as a camera would.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_ros.cli.bag_options import add_bag_arguments, check_bag_arguments
from vpr_ros.cli.common import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_ros.config import config_to_dict
from vpr_ros.core.frames import FrameSource, FrameTable
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Hypothesis, Localizer
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.eval.ground_truth import GroundTruth, positives_by_index, positives_from_vpr_bench, positives_within
from vpr_ros.eval.outputs import write_evaluation
from vpr_ros.eval.report import QueryResult, recall_summary, results_precision_recall, summary_line
from vpr_ros.io.bags import load_frame_source

log = logging.getLogger("vpr_ros.evaluate")

EXAMPLES = """\
examples:
  # queries with their own poses: correct = a candidate within 25 m (and 30 deg of heading)
  evaluate --map maps/run1 --queries run2/images --query-poses run2/poses.csv --angle-threshold 30

  # VPR-Bench style ground truth (query index -> list of reference indices)
  evaluate --map maps/corridor --queries data/corridor/query --ground-truth data/corridor/ground_truth_new.npy

  # a bag, offline (frames straight into the pipeline, as fast as the machine goes); ground truth from the
  # bag's odometry: correct = within 10 m
  evaluate --map maps/run1 --bag run2 --image-topic /camera/image_raw/compressed --pose-topic /odom \\
      --dist-threshold 10

  # live replay: start the localize node, publish the bag's images to it at their recorded pace (2x here)
  # with their original stamps, listen to its answers: end-to-end latency, dropped frames, recall
  evaluate --map maps/run1 --bag run2 --image-topic /camera/image_raw/compressed --pose-topic /odom \\
      --live --rate 2

  # aligned traversals (Nordland): query i matches references i-1..i+1
  evaluate --map maps/summer --bag winter --image-topic /camera/image --index-tolerance 1

  # compare global retrieval with Patch-NetVLAD re-ranking on a map built with --set patches.preset=speed
  evaluate --map maps/corridor_speed ... --set localizer.rerank.method=none --out out/global
  evaluate --map maps/corridor_speed ... --set localizer.rerank.candidates=100 --out out/reranked

  # SeqSLAM over 10-frame sequences beside single frames, with thumbnails (Nordland, frame-aligned)
  build_map --images data/nordland_part1/summer --output maps/nordland_thumb \\
      --set encoder.model=thumbnail:64x32,patch=8
  evaluate --map maps/nordland_thumb --queries data/nordland_part1/winter --index-tolerance 1 \\
      --set localizer.encoder.model=thumbnail:64x32,patch=8 --set localizer.sequence.method=seqslam

Writes <out>/report.json (recall@N; precision-recall of the top-1 answer: AUC, recall at 100% precision and
the score threshold that reaches it -- a value for loop_closure.min_score --; loop closures the node's gate
would publish; pose accuracy in the RobotCar Seasons bins when orientations are known; latency percentiles
per stage; counts; per-query rows; with --live also published / answered / dropped frames and the node's
memory over the run) and the plots <out>/recall.png (recall@N and example matches), latency.png,
precision_recall.png and trajectory.png
(queries coloured by top-1 correctness, when query positions are known).
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Evaluate place recognition: the same pipeline as the localize node, run on a folder of "
                    "query images or a bag against a reference map (offline), or through the running node "
                    "with the bag replayed in real time (--live).")
    parser.add_argument("--map", type=Path, required=True, help="reference map directory")
    parser.add_argument("--queries", type=Path, help="folder of query images (or use --bag)")
    add_bag_arguments(parser, "queries")
    gt = parser.add_argument_group("ground truth (one of; with --bag, --pose-topic / --tf give query poses too)")
    gt.add_argument("--query-poses", type=Path, help="query pose file (CSV or TUM; stamped for bags): ground "
                    "truth by distance")
    gt.add_argument("--ground-truth", type=Path, help="VPR-Bench ground_truth .npy (query -> reference indices)")
    gt.add_argument("--index-tolerance", type=int, metavar="K",
                    help="aligned traversals: query i matches reference ids i-K..i+K (e.g. Nordland)")
    gt.add_argument("--dist-threshold", type=float, default=25.0,
                    help="metres: a reference this close to the query pose is a correct match")
    gt.add_argument("--angle-threshold", type=float, default=None,
                    help="degrees: also require the heading difference to be at most this")
    live = parser.add_argument_group("live replay through the localize node (--bag only)")
    live.add_argument("--live", action="store_true",
                      help="start the localize node and publish the bag's images to it in real time")
    live.add_argument("--rate", type=float, default=1.0, help="replay speed (1 = as recorded)")
    live.add_argument("--drain-timeout", type=float, default=5.0,
                      help="seconds to wait for answers after the last frame")
    live.add_argument("--node-log", type=Path, help="write the node's output here (default <out>/localize_node.log)")
    parser.add_argument("--top-n", default="1,5,10", help="N values for recall@N")
    parser.add_argument("--pr-score", choices=("score", "confidence"), default=None,
                        help="what the precision-recall curve thresholds; None = the loop_closure.score setting")
    parser.add_argument("--out", type=Path, default=Path("out/evaluation"), help="report directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_config_arguments(parser, LocalizeNodeConfig, "config/localize.yaml")
    return parser


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if (args.queries is None) == (args.bag is None):
        parser.error("give the queries as --queries FOLDER or as --bag PATH --image-topic TOPIC")
    check_bag_arguments(parser, args)
    sources = [name for name in ("query_poses", "ground_truth", "index_tolerance") if getattr(args, name) is not None]
    if len(sources) > 1:
        parser.error(f"give one ground truth, not {', '.join('--' + s.replace('_', '-') for s in sources)}")
    has_bag_poses = args.bag is not None and (args.pose_topic or args.tf)
    if not sources and not has_bag_poses:
        parser.error("no ground truth: give --query-poses, --ground-truth or --index-tolerance (or, with --bag, "
                     "--pose-topic / --tf)")
    if args.live and args.bag is None:
        parser.error("--live replays a bag: give --bag and --image-topic")
    if args.rate <= 0:
        parser.error("--rate must be positive")
    if args.index_tolerance is not None and args.index_tolerance < 0:
        parser.error(f"--index-tolerance must be >= 0, got {args.index_tolerance}")


def ground_truth_for(args: argparse.Namespace, refmap: ReferenceMap, queries: FrameSource | FrameTable) -> GroundTruth:
    """Positives per query from the ground-truth option given (VPR-Bench file, index tolerance or poses)."""
    q = queries if isinstance(queries, FrameTable) else queries.frames
    if args.ground_truth is not None:
        return positives_from_vpr_bench(args.ground_truth, refmap.frames.ids, len(q))
    if getattr(args, "index_tolerance", None) is not None:
        return positives_by_index(len(q), refmap.frames.ids, args.index_tolerance)
    if np.isnan(q.positions).all():
        raise ValueError("the queries have no poses, so there is no ground truth (check the pose source)")
    return positives_within(q.positions, refmap.frames.positions, args.dist_threshold,
                            q.orientations, refmap.frames.orientations, args.angle_threshold)


def query_result(name: str, hyp: Hypothesis) -> QueryResult:
    return QueryResult(name=name, stamp=hyp.stamp, ranked=hyp.indices, scores=hyp.scores,
                       latency_ms=hyp.timings_ms.get("total", float("nan")), stage_ms=hyp.timings_ms,
                       confidence=hyp.confidence)


def run_queries(localizer: Localizer, queries: FrameSource, progress: bool = True) -> list[Hypothesis]:
    """Localize every query frame in order (one at a time, as the node does) and keep the hypotheses."""
    return [localizer.localize(queries.load_image(i), float(queries.frames.stamps[i]))
            for i in tqdm(range(len(queries)), desc="localize queries", unit="img", disable=not progress)]


def gated_loop_closures(hyps: list[Hypothesis], gate: LoopClosureGate, gt: GroundTruth) -> dict[str, float]:
    """What the node's loop-closure gate would publish on these queries, and how much of it is right."""
    closures = [(i, gate.update(h)) for i, h in enumerate(hyps)]
    published = [(i, c) for i, c in closures if c is not None]
    correct = sum(int(c.row in set(gt.positives[i].tolist())) for i, c in published)
    return {"published": len(published), "correct": correct,
            "precision": correct / len(published) if published else float("nan"),
            "recall": correct / max(int(gt.has_positive.sum()), 1)}


def ref_image_loader(refmap: ReferenceMap):  # noqa: ANN201 - Callable[[int], np.ndarray | None]
    """Image of map row ``row`` from the frame's recorded source (an image file or a bag message)."""
    def load(row: int) -> np.ndarray | None:
        return load_frame_source(refmap.frames.sources[row])
    return load


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else argv
    if "--list-settings" in argv:
        print_settings(LocalizeNodeConfig)
        return 0
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    setup_logging(args.verbose, args.quiet)
    ns = tuple(int(n) for n in args.top_n.split(","))
    config: LocalizeNodeConfig = config_from_args(args, node_name="localize")
    if args.bag is not None:
        from vpr_ros.nodes.evaluate_bag import evaluate_bag

        report = evaluate_bag(args, config, ns)
    else:
        report = evaluate_folder(args, config, ns)
    if "single_frame" in report:
        print("single frame: " + "  ".join(f"R@{n} {report['single_frame'][f'recall@{n}']:.3f}" for n in ns))
        print("sequence:     " + summary_line(report, ns))
    else:
        print(summary_line(report, ns))
    if "loop_closures" in report:
        lc = report["loop_closures"]
        print(f"loop closures at min_score {config.loop_closure.min_score:g}: {lc['published']} published, "
              f"{lc['correct']} correct; threshold for 100% precision: "
              f"{report['precision_recall']['threshold_at_100_precision']:.4g}")
    print(f"report: {args.out / 'report.json'}")
    return 0


def evaluate_folder(args: argparse.Namespace, config: LocalizeNodeConfig, ns: tuple[int, ...]) -> dict[str, Any]:
    from vpr_ros.io.images import folder_source

    queries = folder_source(args.queries, args.query_poses)
    return evaluate_offline(args, config, ns, queries, title=f"{args.queries.name} vs {args.map.name}",
                            info={"queries": str(args.queries)})


def evaluate_offline(args: argparse.Namespace, config: LocalizeNodeConfig, ns: tuple[int, ...], queries: FrameSource,
                     title: str, info: dict[str, Any]) -> dict[str, Any]:
    """Every query frame straight into the core pipeline (folder or bag), then the report and plots."""
    localizer = Localizer.from_paths(str(args.map), config.localizer)
    warn_top_k(localizer, ns)
    gt = ground_truth_for(args, localizer.refmap, queries)
    localizer.localize(queries.load_image(0))  # warm-up: first-run allocations are not query latency
    localizer.reset_sequence()
    t0 = time.perf_counter()
    hyps = run_queries(localizer, queries, progress=not args.quiet)
    wall = time.perf_counter() - t0
    names = queries.frames.names
    results = [query_result(n, h) for n, h in zip(names, hyps, strict=True)]
    score_kind = args.pr_score or config.loop_closure.score
    seq = localizer.config.sequence
    # Offline, queries and map are separate recordings whose stamps are unrelated (or file indices), so the
    # temporal exclusion window -- meant for a map built online by the same robot -- is not applied.
    gate = LoopClosureGate(dataclasses.replace(config.loop_closure, exclusion_window=0.0), localizer.refmap.frames,
                           localizer.config.confidence_radius)
    rerank = localizer.reranker
    info = {
        "map": str(args.map), **info, "encoder": localizer.refmap.encoder,
        "providers": localizer.encoder.providers,
        "config": {"top_k": localizer.config.top_k, "rerank": {
            **config_to_dict(localizer.config.rerank),
            "active": rerank.spec.preset if rerank is not None else "none",
            "patches": rerank.spec.describe() if rerank is not None else None}},
        "sequence": {"method": seq.method, "length": seq.length, "search": seq.search},
        "loop_closures": {**gated_loop_closures(hyps, gate, gt), "gate": config_to_dict(config.loop_closure)},
        "dist_threshold_m": args.dist_threshold if args.ground_truth is None and args.index_tolerance is None
        else None, "index_tolerance": args.index_tolerance, "angle_threshold_deg": args.angle_threshold,
        "wall_time_s": wall, "frames_per_second": len(results) / wall if wall > 0 else float("nan")}
    curves = {"pipeline": results_precision_recall(results, gt, score_kind)}
    if localizer.sequence is not None:
        single = [query_result(n, h.single) for n, h in zip(names, hyps, strict=True) if h.single is not None]
        info["single_frame"] = recall_summary(single, gt, ns, score_kind)
        curves = {"single frame": results_precision_recall(single, gt, score_kind),
                  f"{seq.method}, {seq.length} frames": curves["pipeline"]}
    return write_evaluation(results, gt, args.out, localizer.refmap.frames, queries.frames, ns, info=info,
                            plots=not args.no_plots, load_query=queries.load_image,
                            load_ref=ref_image_loader(localizer.refmap), title=title, score_kind=score_kind,
                            curves=curves)


def warn_top_k(localizer: Localizer, ns: tuple[int, ...]) -> None:
    if localizer.config.top_k < max(ns):
        log.warning("localizer.top_k=%d < max N=%d: recall@N above top_k equals recall@top_k",
                    localizer.config.top_k, max(ns))


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
