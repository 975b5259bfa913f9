"""``vpr-adapt``: adapt the encoder to your route from two or more recordings of it, in one command.

Give two or more traversals of the same area under different conditions (day / night, summer / winter,
sun / rain), with poses or frame-aligned. One of them is the map (--map-traversal, default: the first). The
route's places are split along the route (never frame by frame) into a held-out test stretch (the first
third), a training stretch and a validation stretch (the last sixth), with gaps as long as the longest query
sequence between them. vpr-adapt then trains the encoder on the training places (positives and negatives
picked from the poses by the sub-cache miner, early stopping on validation), exports it to ONNX, builds the
map of the whole route with it, trains a learned sequence descriptor (SeqNet) per sequence length, and reports
held-out recall of the adapted model next to the default encoder on the same frames, single frame and with
sequences, in <out>/report.json and <out>/report.png. <out>/localize.yaml holds the node's settings with the
method that did best on validation.

Run the same command again to resume after an interruption: finished steps are skipped, training continues
from its last epoch. A GPU is used when present (--set device=cpu to stay on the CPU).

Examples::

    # frame-aligned traversals (frame i = the same place in each), e.g. Nordland seasons
    vpr-adapt --traversal summer=data/nordland_part1/summer --traversal winter=data/nordland_part1/winter \\
        --aligned --out runs/adapt_nordland
    # image folders with pose files (CSV name,x,y[,yaw] or TUM, as build_map reads them)
    vpr-adapt --traversal day=run1/images:run1/poses.csv --traversal night=run2/images:run2/poses.csv \\
        --out runs/adapt_site
    # bags: images and poses from topics (frames are written once as PNG under <out>/frames/)
    vpr-adapt --bag day=day.mcap --bag night=night.mcap --image-topic /camera/image_raw \\
        --pose-topic /odom --min-distance 1 --out runs/adapt_site
    # the split of the acceptance benchmark, three settings changed
    vpr-adapt ... --split test=0:600,train=620:1480,val=1500:1800 --set epochs=20 --set seed=1 \\
        --set sequence_lengths=[10,20]
    vpr-adapt --list-settings

Then run the node with what it wrote:  ros2 launch vpr_ros localize.launch.py params_file:=<out>/localize.yaml ...
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from vpr_ros.cli.common import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_training.adapt.pipeline import AdaptConfig
from vpr_training.adapt.route import AdaptInputError, Traversal

log = logging.getLogger("vpr_training.adapt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vpr-adapt", formatter_class=HelpFormatter,
                                     description=__doc__.split("Examples::", 1)[0],
                                     epilog="examples:" + __doc__.split("Examples::", 1)[1])
    parser.add_argument("--traversal", action="append", default=[], metavar="NAME=IMAGES[:POSES]",
                        help="a traversal: image folder, with its pose file after a colon (repeat per traversal)")
    parser.add_argument("--bag", action="append", default=[], metavar="NAME=BAG",
                        help="a traversal recorded in a bag (ROS 2 sqlite3 / MCAP or ROS 1); with --image-topic "
                             "and --pose-topic or --tf")
    parser.add_argument("--image-topic", metavar="TOPIC", help="bags: image topic (raw or compressed)")
    parser.add_argument("--pose-topic", metavar="TOPIC", help="bags: Odometry / PoseStamped / NavSatFix topic")
    parser.add_argument("--tf", nargs=2, metavar=("PARENT", "CHILD"), help="bags: poses from the tf chain")
    parser.add_argument("--min-distance", type=float, default=0.0, metavar="M",
                        help="bags: keep a frame only this far from the last kept one")
    parser.add_argument("--min-interval", type=float, default=0.0, metavar="S",
                        help="bags: keep a frame only this many seconds after the last kept one")
    parser.add_argument("--aligned", action="store_true",
                        help="frame i of every traversal is the same place (no poses needed), e.g. Nordland")
    parser.add_argument("--map-traversal", metavar="NAME", help="the traversal the map is built from (default: "
                        "the first)")
    parser.add_argument("--split", metavar="test=A:B,train=C:D,val=E:F",
                        help="place ranges along the route (map traversal frame indices, stop exclusive); "
                             "default: test = first third, val = last sixth, train between, gaps of the longest "
                             "sequence length")
    parser.add_argument("--out", type=Path, required=False, help="run folder (created; rerun to resume)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")
    parser.add_argument("-v", "--verbose", action="store_true")
    add_config_arguments(parser, AdaptConfig, None)
    return parser


def read_traversals(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[Traversal]:
    from vpr_training.adapt.route import folder_traversal, materialised

    traversals = []
    for spec in args.traversal:
        name, sep, rest = spec.partition("=")
        if not sep or not name or not rest:
            parser.error(f"--traversal expects NAME=IMAGES[:POSES], got {spec!r}")
        images, _, poses = rest.partition(":")
        traversals.append(folder_traversal(name, Path(images), Path(poses) if poses else None))
    if args.bag and not args.image_topic:
        parser.error("--bag needs --image-topic")
    for spec in args.bag:
        name, sep, bag = spec.partition("=")
        if not sep or not name or not bag:
            parser.error(f"--bag expects NAME=BAG, got {spec!r}")
        from vpr_ros.cli.bag_options import bag_source_from_args

        bag_args = argparse.Namespace(bag=Path(bag), image_topic=args.image_topic, pose_topic=args.pose_topic,
                                      tf=args.tf, gnss_origin=None, max_pose_gap=2.0, min_interval=args.min_interval,
                                      min_distance=args.min_distance, start=None, end=None, skip_damaged=False,
                                      max_pixels=50_000_000)
        source = bag_source_from_args(bag_args, None, progress=not args.no_progress)
        traversals.append(materialised(name, source, args.out / "frames" / name, progress=not args.no_progress))
    return traversals


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list_settings:
        print_settings(AdaptConfig)
        return 0
    if args.out is None:
        parser.error("--out is required (the run folder)")
    if len(args.traversal) + len(args.bag) < 2:
        parser.error("give two or more traversals of the same route (--traversal / --bag)")
    setup_logging(args.verbose)
    config = config_from_args(args)
    traversals = read_traversals(args, parser)
    map_name = args.map_traversal or traversals[0].name
    from vpr_training.adapt.pipeline import AdaptRun

    report = AdaptRun(traversals, map_name, args.out, config, aligned=args.aligned, split=args.split,
                      progress=not args.no_progress).run()
    print(summary(report))
    return 0


def summary(report: dict) -> str:
    """The held-out comparison as a small table (what report.json and report.png hold)."""
    test = report["results"]["test"]
    lines = [f"held-out test places {report['split']['test']} ({report['unit']}), queries: "
             f"{next(iter(test['adapted'].values()))['queries']}",
             f"{'method':22s} {'default R@1':>11s} {'adapted R@1':>11s} {'adapted R@5':>11s} {'AUC':>6s}"]
    for method, row in test["adapted"].items():
        default = test["default"].get(method, {}).get("recall@1")
        shown = "-" if default is None else f"{default:.3f}"
        lines.append(f"{method:22s} {shown:>11s} {row['recall@1']:11.3f} "
                     f"{row['recall@5']:11.3f} {row['auc']:6.3f}")
    lines.append(f"recommended (best on validation): {report['recommended']}; node settings: "
                 f"{Path(report['maps']['adapted']).parents[1] / 'localize.yaml'}")
    lines.append(json.dumps(report["seconds"]))
    return "\n".join(lines)


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()


__all__ = ["AdaptInputError", "main"]
