"""``build_map``: build a reference map from an image folder and a pose file."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.nodes.cli import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)

log = logging.getLogger("vpr_ros.build_map")

EXAMPLES = """\
examples:
  # images + CSV poses (header: name,x,y[,z][,yaw|qx,qy,qz,qw][,stamp])
  build_map --images data/corridor/ref --poses data/corridor/ref_poses.csv --output maps/corridor

  # images named by timestamp + a TUM trajectory (stamp tx ty tz qx qy qz qw), 64 VLAD clusters
  build_map --images run1/rgb --poses run1/groundtruth.txt --output maps/run1 --set vlad.num_clusters=64

  # weights-free SeqSLAM-style thumbnails (tiny cameras; sequence matching with localizer.sequence.method)
  build_map --images data/nordland_part1/summer --output maps/nordland_thumb \\
      --set encoder.model=thumbnail:64x32,patch=8

  # through ROS 2: ros2 run vpr_ros build_map --images ... --output ...

An interrupted build continues where it stopped when the same command is run again; the map directory
appears only when the build is complete (it is written to a temporary directory and renamed).
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_map", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Build a vpr_ros reference map: encode every image with the ONNX encoder, fit the VLAD "
                    "vocabulary and PCA-whitening on the reference images, index the global descriptors with "
                    "FAISS and store frames, poses and descriptors in a versioned, checksummed map directory.")
    src = parser.add_argument_group("input")
    src.add_argument("--images", type=Path, required=True, help="folder of reference images")
    src.add_argument("--poses", type=Path, help="pose file (CSV or TUM); without it poses are unknown")
    src.add_argument("--pose-format", choices=("auto", "csv", "tum"), default="auto", help="pose file format")
    src.add_argument("--max-time-diff", type=float, default=0.1,
                     help="TUM poses: skip images more than this many seconds outside the trajectory")
    parser.add_argument("--output", "-o", type=Path, required=True, help="map directory to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing map")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_config_arguments(parser, BuildMapConfig, "config/build_map.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    if argv is None:
        argv = sys.argv[1:]
    if "--list-settings" in argv:
        print_settings(BuildMapConfig)
        return 0
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    config = config_from_args(args, node_name="build_map")
    from vpr_ros.io.images import folder_source

    source = folder_source(args.images, args.poses, args.pose_format, args.max_time_diff)
    log.info("%d frames from %s", len(source), args.images)
    t0 = time.perf_counter()
    refmap = build_map(source, args.output, config, overwrite=args.overwrite, progress=not args.quiet,
                       provenance={"command": " ".join(["build_map", *argv]), "images": str(args.images),
                                   "poses": str(args.poses) if args.poses else None})
    elapsed = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    print(f"map {args.output}: {len(refmap)} frames, {refmap.dim}-d descriptors, encoder {refmap.encoder['id']}, "
          f"input {refmap.input_size[1]}x{refmap.input_size[0]}, {size / 1e6:.2f} MB "
          f"({size / len(refmap) / 1e3:.1f} kB/frame), built in {elapsed:.1f} s")
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
