"""``vpr_convert``: public place-recognition datasets -> rosbag2 (+ pose files, ground truth, dataset.yaml)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import yaml

from vpr_ros.cli.common import HelpFormatter, run_cli, setup_logging
from vpr_ros.errors import InputError
from vpr_ros.io.bag_writer import STORAGES
from vpr_ros.io.datasets.msls import convert_msls
from vpr_ros.io.datasets.nordland import convert_nordland
from vpr_ros.io.datasets.robotcar import convert_robotcar

log = logging.getLogger("vpr_ros.convert")

EXAMPLES = """\
examples:
  # Nordland, Patch-NetVLAD test partition, summer (reference) and winter (query), 10-frame tolerance
  vpr_convert nordland /data/nordland --out bags/nordland --partition patchnetvlad-test

  # a few hundred frames of the shipped 64x32 Nordland sample, as raw rgb8 Images in MCAP bags
  vpr_convert nordland data/nordland_part1 --out bags/nordland_small --frames 10:3010 --tolerance 10 \\
      --image-format raw --storage mcap

  # Oxford RobotCar run: stereo centre camera (Bayer GBRG kept as bayer_gbrg8), RTK poses if present
  vpr_convert robotcar /data/robotcar/2014-12-09-13-21-02 --out bags/robotcar_2014-12-09 --every 2

  # MSLS: every city found under train_val/ and test/, sequence task with 5 frames
  vpr_convert msls /data/msls --out bags/msls --cities cph,sf --seq-length 5

Each writes the bag(s), <bag>_poses.csv (stamped poses; build_map --poses / evaluate --query-poses read it),
ground truth where the dataset defines it, and dataset.yaml with the rules and ready-to-run build_map /
evaluate commands. The formats read are described in vpr_ros/io/datasets/*.py and the README.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vpr_convert", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Convert Nordland, Oxford RobotCar or MSLS from their released layout to ROS 2 bags with "
                    "pose files and ground truth, ready for build_map --bag and evaluate --bag.")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars, warnings only")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="dataset", required=True, metavar="{nordland,robotcar,msls}")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--storage", choices=STORAGES, default="sqlite3",
                       help="rosbag2 storage (sqlite3 or mcap), or ros1 for ROS 1 .bag files")

    p = sub.add_parser("nordland", formatter_class=HelpFormatter, help="Nordland seasons (frame-aligned)",
                       description="Nordland: <root>/<season>/...NNNNN.png, frame number = place.")
    p.add_argument("root", type=Path, help="folder with one sub-folder per season")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder")
    p.add_argument("--seasons", default="summer,winter", help="reference first, then the queries")
    p.add_argument("--partition", default="all",
                   help="all | patchnetvlad-test | a file listing image names (one per line)")
    p.add_argument("--frames", metavar="START:END[:STEP]", help="only these frame numbers (END exclusive)")
    p.add_argument("--tolerance", type=int, help="ground truth: frames apart that are still the same place "
                   "(default: the partition's, else 10)")
    p.add_argument("--image-format", choices=("compressed", "raw"), default="compressed",
                   help="compressed: the files' bytes in CompressedImage; raw: decoded rgb8 Image")
    p.add_argument("--frame-period", type=float, default=1.0, help="seconds per frame number (stamps are nominal)")
    common(p)

    p = sub.add_parser("robotcar", formatter_class=HelpFormatter, help="one Oxford RobotCar run",
                       description="Oxford RobotCar: <run>/stereo/centre/<us>.png (Bayer GBRG), gps/ins.csv, rtk.csv.")
    p.add_argument("run", type=Path, help="the run directory (e.g. 2014-12-09-13-21-02)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output bag (a .bag file with --storage ros1)")
    p.add_argument("--poses", default="auto", help="auto (rtk.csv if present, else ins.csv) | ins | rtk | a CSV")
    p.add_argument("--image-format", choices=("bayer", "rgb", "jpeg"), default="bayer",
                   help="bayer: raw mosaic as bayer_gbrg8 Image; rgb: demosaiced rgb8 Image; jpeg: demosaiced, "
                        "compressed")
    p.add_argument("--every", type=int, default=1, help="keep every n-th image (the camera runs at 16 Hz)")
    p.add_argument("--max-frames", type=int, help="stop after this many images")
    p.add_argument("--utm-origin", default="620000,5734000", metavar="EASTING,NORTHING",
                   help="UTM point subtracted from poses (keep it the same for runs you compare)")
    common(p)

    p = sub.add_parser("msls", formatter_class=HelpFormatter, help="Mapillary Street-Level Sequences cities",
                       description="MSLS: <root>/train_val|test/<city>/query|database with CSV metadata.")
    p.add_argument("root", type=Path, help="MSLS root (holding train_val/ and/or test/)")
    p.add_argument("--out", "-o", type=Path, required=True, help="output folder (one sub-folder per city)")
    p.add_argument("--cities", help="comma-separated cities (default: all found)")
    p.add_argument("--seq-length", type=int, default=3, help="frames per query sequence for the seq task (odd)")
    common(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(sys.argv[1:] if argv is None else argv)
    setup_logging(args.verbose, args.quiet)
    progress = not args.quiet
    if args.dataset == "nordland":
        desc = convert_nordland(args.root, args.out, tuple(s.strip() for s in args.seasons.split(",")),
                                args.partition, args.frames, args.tolerance, args.image_format, args.frame_period,
                                args.storage, progress)
        written = args.out / "dataset.yaml"
    elif args.dataset == "robotcar":
        try:
            origin = tuple(float(v) for v in args.utm_origin.split(","))
        except ValueError:
            raise InputError(f"--utm-origin expects EASTING,NORTHING, got {args.utm_origin!r}") from None
        if len(origin) != 2:
            raise InputError(f"--utm-origin expects EASTING,NORTHING, got {args.utm_origin!r}")
        desc = convert_robotcar(args.run, args.out, args.poses, args.image_format, args.every, args.max_frames,
                                origin, storage=args.storage, progress=progress)  # type: ignore[arg-type]
        written = args.out.parent / f"{args.out.name.removesuffix('.bag')}_dataset.yaml"
    else:
        cities = [c.strip() for c in args.cities.split(",")] if args.cities else None
        desc = convert_msls(args.root, args.out, cities, args.seq_length, args.storage, progress)
        written = args.out / "dataset.yaml"
    print(f"wrote {written}")
    usage = desc.get("usage") or [u for c in desc.get("cities", {}).values() for u in c.get("usage", [])]
    if usage:
        print("next:\n  " + "\n  ".join(usage))
    if args.verbose:
        print(yaml.safe_dump(desc, sort_keys=False))
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
