"""``evaluate``: run the localization pipeline over query images (a folder or a bag, offline or live through the
node) and report recall@N, precision-recall, pose accuracy and latency."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_ros.core.localizer import Localizer
from vpr_ros.core.map_builder import FrameSource
from vpr_ros.core.refmap import FrameTable, ReferenceMap
from vpr_ros.eval.ground_truth import GroundTruth, positives_by_index, positives_from_vpr_bench, positives_within
from vpr_ros.eval.outputs import write_evaluation
from vpr_ros.eval.report import QueryResult, summary_line
from vpr_ros.io.bags import load_frame_source
from vpr_ros.nodes.bag_cli import add_bag_arguments, check_bag_arguments
from vpr_ros.nodes.cli import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_ros.nodes.localize_config import LocalizeNodeConfig

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

Writes <out>/report.json (recall@N, latency percentiles per stage, precision-recall of the top-1 match by
confidence, pose accuracy in the RobotCar Seasons bins when orientations are known, counts, per-query rows;
with --live also published / answered / dropped frames and the node's memory over the run) and the plots
<out>/recall.png (recall@N and example matches), latency.png, precision_recall.png and trajectory.png
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


def run_queries(localizer: Localizer, queries: FrameSource, progress: bool = True) -> list[QueryResult]:
    """Localize every query frame (one at a time, as the node does) and collect timed results."""
    results = []
    for i in tqdm(range(len(queries)), desc="localize queries", unit="img", disable=not progress):
        hyp = localizer.localize(queries.load_image(i), float(queries.frames.stamps[i]))
        results.append(QueryResult(name=queries.frames.names[i], stamp=hyp.stamp, ranked=hyp.indices,
                                   scores=hyp.scores, latency_ms=hyp.timings_ms["total"],
                                   stage_ms=hyp.timings_ms, confidence=hyp.confidence))
    return results


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
    print(summary_line(report, ns))
    print(f"report: {args.out / 'report.json'}")
    return 0


def evaluate_folder(args: argparse.Namespace, config: LocalizeNodeConfig, ns: tuple[int, ...]) -> dict[str, Any]:
    from vpr_ros.io.images import folder_source

    queries = folder_source(args.queries, args.query_poses)
    localizer = Localizer.from_paths(str(args.map), config.localizer)
    warn_top_k(localizer, ns)
    gt = ground_truth_for(args, localizer.refmap, queries)
    localizer.localize(queries.load_image(0))  # warm-up: first-run allocations are not query latency
    results = run_queries(localizer, queries, progress=not args.quiet)
    return write_evaluation(
        results, gt, args.out, localizer.refmap.frames, queries.frames, ns, plots=not args.no_plots,
        load_query=queries.load_image, load_ref=ref_image_loader(localizer.refmap),
        title=f"{args.queries.name} vs {args.map.name}", info={
            "map": str(args.map), "queries": str(args.queries), "encoder": localizer.refmap.encoder,
            "providers": localizer.encoder.providers, "config": {"top_k": localizer.config.top_k},
            "dist_threshold_m": args.dist_threshold if args.ground_truth is None and args.index_tolerance is None
            else None, "index_tolerance": args.index_tolerance,
            "angle_threshold_deg": args.angle_threshold})


def warn_top_k(localizer: Localizer, ns: tuple[int, ...]) -> None:
    if localizer.config.top_k < max(ns):
        log.warning("localizer.top_k=%d < max N=%d: recall@N above top_k equals recall@top_k",
                    localizer.config.top_k, max(ns))


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
