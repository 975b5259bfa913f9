"""Command-line options shared by ``build_map --bag`` and ``evaluate --bag``: topics, pose source, frame selection."""

from __future__ import annotations

import argparse
from pathlib import Path

from vpr_ros.core.image import DEFAULT_MAX_PIXELS
from vpr_ros.core.refmap import read_manifest
from vpr_ros.errors import InputError
from vpr_ros.io.bag_poses import PoseSpec
from vpr_ros.io.bags import BagFrameSource, FrameSelection, bag_frame_source
from vpr_ros.io.geodesy import GeodeticOrigin

BAG_ONLY_OPTIONS = ("image_topic", "pose_topic", "tf", "gnss_origin", "min_interval", "min_distance", "start", "end",
                    "skip_damaged")


def add_bag_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """``--bag``, ``--image-topic``, pose source and frame selection options."""
    group = parser.add_argument_group(
        f"{what} from a bag (ROS 2 sqlite3/MCAP directory or file, or ROS 1 .bag)")
    group.add_argument("--bag", type=Path, help=f"bag with the {what}")
    group.add_argument("--image-topic", metavar="TOPIC",
                       help="sensor_msgs/Image or sensor_msgs/CompressedImage topic in the bag")
    group.add_argument("--pose-topic", metavar="TOPIC",
                       help="poses: nav_msgs/Odometry, geometry_msgs/PoseStamped, PoseWithCovarianceStamped, or "
                            "sensor_msgs/NavSatFix (GNSS, converted to local east-north-up metres)")
    group.add_argument("--tf", nargs=2, metavar=("PARENT", "CHILD"),
                       help="poses from the /tf and /tf_static chain PARENT -> CHILD (e.g. map base_link)")
    group.add_argument("--gnss-origin", metavar="LAT,LON[,ALT]",
                       help="origin of the local frame for GNSS poses (default: the map's, else the first fix)")
    group.add_argument("--max-pose-gap", type=float, default=2.0, metavar="S",
                       help="no pose between two pose samples farther apart than this (seconds)")
    group.add_argument("--min-interval", type=float, default=0.0, metavar="S",
                       help="keep a frame only this many seconds after the last kept one")
    group.add_argument("--min-distance", type=float, default=0.0, metavar="M",
                       help="keep a frame only this far (pose units, normally metres) from the last kept one")
    group.add_argument("--start", type=float, metavar="S", help="ignore images before this many seconds into the bag")
    group.add_argument("--end", type=float, metavar="S", help="ignore images from this many seconds into the bag on")
    group.add_argument("--skip-damaged", action="store_true",
                       help="read what is left of a damaged bag (fewer readable messages than its index or "
                            "metadata declares) with a warning, instead of stopping with an error")
    parser.add_argument("--max-pixels", type=positive_int, default=DEFAULT_MAX_PIXELS, metavar="N",
                        help="refuse images that declare more pixels than this in their header (decompression "
                             "bombs), before decoding them")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def check_bag_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Bag options need --bag, and --bag needs --image-topic; exits with code 2 (argparse) otherwise."""
    if args.bag is None:
        given = [f"--{name.replace('_', '-')}" for name in BAG_ONLY_OPTIONS
                 if getattr(args, name) not in (None, 0.0)]
        if given:
            parser.error(f"{', '.join(given)} only apply to --bag input")
        return
    if not args.image_topic:
        parser.error("--bag needs --image-topic (run with a wrong topic to see the bag's topics)")
    if args.pose_topic and args.tf:
        parser.error("give --pose-topic or --tf, not both")


def parse_origin(text: str | None) -> GeodeticOrigin | None:
    if not text:
        return None
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"--gnss-origin expects LAT,LON[,ALT] in degrees and metres, got {text!r}") from None
    if len(values) not in (2, 3):
        raise InputError(f"--gnss-origin expects LAT,LON[,ALT], got {text!r}")
    return GeodeticOrigin(*values)


def bag_source_from_args(args: argparse.Namespace, pose_file: Path | None, pose_format: str = "auto",
                         max_time_diff: float = 0.1, origin: GeodeticOrigin | None = None,
                         progress: bool = True) -> BagFrameSource:
    """The frames ``args`` select from ``args.bag`` (poses from a topic, a tf chain or ``pose_file``)."""
    if pose_file is not None and (args.pose_topic or args.tf):
        raise InputError("give one pose source: a pose file, --pose-topic or --tf")
    spec = PoseSpec(topic=args.pose_topic, tf=tuple(args.tf) if args.tf else None, file=pose_file,
                    file_format=pose_format, max_time_diff=max_time_diff, max_gap=args.max_pose_gap,
                    gnss_origin=parse_origin(args.gnss_origin) or origin)
    selection = FrameSelection(min_interval=args.min_interval, min_distance=args.min_distance, start=args.start,
                               end=args.end)
    if selection.min_distance > 0 and not spec.given:
        raise InputError("--min-distance needs poses (--pose-topic, --tf or a pose file)")
    return bag_frame_source(args.bag, args.image_topic, spec, selection, progress=progress,
                            skip_damaged=args.skip_damaged, max_pixels=args.max_pixels)


def map_geodetic_origin(map_path: Path) -> GeodeticOrigin | None:
    """The GNSS origin an existing map's poses are relative to (GNSS poses of new frames must use the same)."""
    if not (map_path / "manifest.yaml").is_file():
        return None
    origin = (read_manifest(map_path).get("sections") or {}).get("geodetic_origin")
    return GeodeticOrigin.from_dict(origin) if origin else None
