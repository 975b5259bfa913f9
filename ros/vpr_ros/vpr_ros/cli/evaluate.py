"""``evaluate``: run the localization pipeline over query images (a folder or a bag, offline or live through the
node) and report recall@N, precision-recall, loop closures, pose accuracy and latency.

This module only parses arguments: the work is :func:`vpr_ros.eval.run` (offline) and
:func:`vpr_ros.nodes.live_evaluation.evaluate_live` (``--live``), which a notebook can call as well.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from vpr_ros.cli.bag_options import add_bag_arguments, bag_source_from_args, check_bag_arguments, map_geodetic_origin
from vpr_ros.cli.common import (
    HelpFormatter,
    add_config_arguments,
    check_output_directory,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.paths import resolve_path
from vpr_ros.errors import InputError
from vpr_ros.eval import EvalConfig, Report, VprBenchFile, WithinDistance, WithinIndex, run
from vpr_ros.eval.ground_truth import GroundTruthRule
from vpr_ros.io.images import folder_source

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
    check_output_directory(args.out, "--out")
    if args.node_log is not None:
        check_output_directory(args.node_log.parent, "--node-log")


def recall_ns(text: str) -> tuple[int, ...]:
    """``--top-n 1,5,10`` -> (1, 5, 10)."""
    try:
        return tuple(int(n) for n in text.split(","))
    except ValueError:
        raise InputError(f"--top-n expects comma-separated positive integers, got {text!r}") from None


def ground_truth_rule(args: argparse.Namespace) -> GroundTruthRule:
    if args.ground_truth is not None:
        return VprBenchFile(args.ground_truth)
    if args.index_tolerance is not None:
        return WithinIndex(args.index_tolerance)
    return WithinDistance(args.dist_threshold, args.angle_threshold)


def print_summary(report: Report, config: EvalConfig) -> None:
    ns = config.recall_ns
    if "single_frame" in report:
        print("single frame: " + "  ".join(f"R@{n} {report['single_frame'][f'recall@{n}']:.3f}" for n in ns))
        print("sequence:     " + report.summary())
    else:
        print(report.summary())
    if "loop_closures" in report:
        lc = report["loop_closures"]
        print(f"loop closures at min_score {config.localize.loop_closure.min_score:g}: {lc['published']} published, "
              f"{lc['correct']} correct; threshold for 100% precision: "
              f"{report['precision_recall']['threshold_at_100_precision']:.4g}")
    if report.path is not None:
        print(f"report: {report.path}")


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else argv
    if "--list-settings" in argv:
        print_settings(LocalizeNodeConfig)
        return 0
    args = parser.parse_args(argv)
    check_arguments(parser, args)
    setup_logging(args.verbose, args.quiet)
    settings: LocalizeNodeConfig = config_from_args(args, node_name="localize")
    source_name = args.queries.name if args.bag is None else args.image_topic
    config = EvalConfig(localize=settings, recall_ns=recall_ns(args.top_n), pr_score=args.pr_score,
                        plots=not args.no_plots, progress=not args.quiet, title=f"{source_name} vs {args.map.name}")
    rule = ground_truth_rule(args)
    if args.bag is None:
        queries = folder_source(args.queries, args.query_poses, max_pixels=args.max_pixels)
        report = run(args.map, queries, rule, config, out=args.out, info={"queries": str(args.queries)})
    else:
        with bag_source_from_args(args, args.query_poses, origin=map_geodetic_origin(args.map),
                                  progress=not args.quiet) as queries:
            report = evaluate_live(args, queries, rule, config) if args.live else run(
                args.map, queries, rule, config, out=args.out,
                info={"mode": "offline: bag frames straight into the pipeline", "queries": queries.info})
    print_summary(report, config)
    return 0


def evaluate_live(args: argparse.Namespace, queries: FrameSource, rule: GroundTruthRule,
                  config: EvalConfig) -> Report:
    # rclpy is imported only for --live: offline evaluation runs where no ROS 2 is installed.
    from vpr_ros.nodes.live_evaluation import LiveReplayOptions
    from vpr_ros.nodes.live_evaluation import evaluate_live as replay_and_score

    replay = LiveReplayOptions(
        params_file=resolve_path(args.config, what="config file") if args.config else None,
        parameters=[f"{item.partition('=')[0].strip()}:={item.partition('=')[2]}" for item in args.set],
        rate=args.rate, drain_timeout=args.drain_timeout, log_path=args.node_log)
    return replay_and_score(args.map, queries, rule, config, replay, args.out)


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
