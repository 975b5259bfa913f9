"""``build_map``: build (or grow) a reference map from an image folder with a pose file, or from a bag."""

from __future__ import annotations

import argparse
import logging
import sys
import time
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
from vpr_ros.core.map_builder import BuildMapConfig, append_to_map, build_map, check_output_apart_from_inputs
from vpr_ros.core.ray_executor import executor_from_spec
from vpr_ros.core.refmap import check_overwritable, map_lock, recover_interrupted_swap
from vpr_ros.io.geodesy import GeodeticOrigin
from vpr_ros.io.images import folder_source

log = logging.getLogger("vpr_ros.build_map")

RESUME_HINT = "the unfinished map build resumes when started again with the same arguments"

EXAMPLES = """\
examples:
  # images + CSV poses (header: name,x,y[,z][,yaw|qx,qy,qz,qw][,stamp])
  build_map --images data/corridor/ref --poses data/corridor/ref_poses.csv --output maps/corridor

  # images named by timestamp + a TUM trajectory (stamp tx ty tz qx qy qz qw), 64 VLAD clusters
  build_map --images run1/rgb --poses run1/groundtruth.txt --output maps/run1 --set vlad.num_clusters=64

  # weights-free SeqSLAM-style thumbnails (tiny cameras; sequence matching with localizer.sequence.method)
  build_map --images data/nordland_part1/summer --output maps/nordland_thumb \\
      --set encoder.model=thumbnail:64x32,patch=8

  # a bag (ROS 2 sqlite3 / MCAP, or ROS 1): compressed camera topic, odometry poses, a frame every 2 m
  build_map --bag run1 --image-topic /camera/image_raw/compressed --pose-topic /odom --min-distance 2 \\
      --output maps/run1

  # poses from the tf tree (map -> base_link), at most 5 frames per second, only the first 10 minutes
  build_map --bag run1.mcap --image-topic /cam/image --tf map base_link --min-interval 0.2 --end 600 -o maps/run1

  # GNSS fixes (sensor_msgs/NavSatFix) as poses, in metres east/north of the first fix
  build_map --bag drive.bag --image-topic /stereo/centre --pose-topic /gps/fix --min-distance 1 -o maps/drive

  # grow an existing map with a second recording (its vocabulary and PCA are kept; frames already in the
  # map are skipped, so running it twice adds nothing)
  build_map --bag run2 --image-topic /camera/image_raw/compressed --pose-topic /odom --output maps/run1 --append

  # the same, and train the map's IVF index afresh over all its frames (else new frames join the trained index)
  build_map --bag run3 --image-topic /camera/image_raw/compressed --pose-topic /odom --output maps/run1 \
      --append --retrain

  # join maps recorded apart with the same encoder and vocabulary (e.g. copies of one map grown with --append
  # on two robots) into a new map; incompatible maps are refused naming the maps and what differs
  build_map --merge maps/robot1 maps/robot2 --output maps/campus

  # encode on Ray (optional: pip install -r requirements/ray.txt): a local cluster of 2 workers on 127.0.0.1,
  # 1 ONNX Runtime thread each; the map equals the single-process build with encoder.threads=1
  build_map --images data/corridor/ref --poses data/corridor/ref_poses.csv -o maps/corridor \
      --executor ray --workers 2 --set encoder.threads=1
  # ... or on a running cluster through its Ray Client server (GPU workers where it has GPUs)
  build_map --images /shared/city/rgb --poses /shared/city/poses.csv -o maps/city --executor ray://head:10001

  # through ROS 2: ros2 run vpr_ros build_map --images ... --output ...

An interrupted build (or append) continues where it stopped when the same command is run again; the map
directory appears, or changes, only when the work is complete (it is written to a temporary directory and
renamed; a kill at any moment leaves the old or the new map). A second build of the same map while one runs
is refused (lock file .NAME.lock beside the map). --overwrite replaces only a vpr_ros map, and the output may
not be, contain or lie inside an input. A corrupt or truncated bag, a missing topic or a topic of the wrong
type stops with a message naming it (exit code 2).
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="build_map", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Build a vpr_ros reference map: encode every image with the ONNX encoder, fit the VLAD "
                    "vocabulary and PCA-whitening on the reference images, index the global descriptors with "
                    "FAISS and store frames, poses and descriptors in a versioned, checksummed map directory.")
    src = parser.add_argument_group("input")
    src.add_argument("--images", type=Path, help="folder of reference images (or use --bag)")
    src.add_argument("--poses", type=Path, help="pose file (CSV or TUM); without it poses are unknown. With --bag "
                     "the poses must be stamped (a 'stamp' column or TUM) and are interpolated to image stamps")
    src.add_argument("--pose-format", choices=("auto", "csv", "tum"), default="auto", help="pose file format")
    src.add_argument("--max-time-diff", type=float, default=0.1,
                     help="stamped poses: skip images more than this many seconds outside the trajectory")
    add_bag_arguments(parser, "reference frames")
    parser.add_argument("--output", "-o", type=Path, required=True, help="map directory to write")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing map (only a vpr_ros map: anything else at --output is refused)")
    parser.add_argument("--append", action="store_true",
                        help="add the frames to the map at --output (built first if it does not exist yet)")
    parser.add_argument("--retrain", action="store_true",
                        help="with --append or --merge: build the index afresh over all frames (index.factory auto "
                             "chooses again for the new size); without it, new frames are added to the map's "
                             "trained index")
    parser.add_argument("--merge", nargs="+", type=Path, metavar="MAP",
                        help="join these maps (same encoder, vocabulary, input size) into the new map at --output "
                             "instead of encoding images; the first map's frames keep their ids")
    run = parser.add_argument_group("executor (where the frames are encoded)")
    run.add_argument("--executor", default="local", metavar="{local,ray,ray://HOST:PORT,ray:ADDRESS}",
                     help="local: this process. ray: Ray actors on a local cluster started for the run (127.0.0.1 "
                     "only); ray://HOST:PORT: a running Ray cluster through its Ray Client server; ray:ADDRESS: a "
                     "running cluster this machine is a node of (ray:auto). The vocabulary / PCA fit runs here; "
                     "workers get chunks of chunk_size frames, one ONNX Runtime session each (a GPU each where the "
                     "cluster has GPUs); the map equals the local build with the same settings. Needs the "
                     "optional package ray (requirements/ray.txt)")
    run.add_argument("--workers", type=int, default=0, metavar="N",
                     help="Ray workers (0 = one per GPU, else one per encoder.threads CPUs of the cluster)")
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
    if args.merge:
        return merge(parser, args, argv)
    if args.retrain and not args.append:
        parser.error("--retrain goes with --append or --merge (a new build trains its index anyway)")
    if (args.images is None) == (args.bag is None):
        parser.error("give the reference frames as --images FOLDER or as --bag PATH --image-topic TOPIC")
    check_bag_arguments(parser, args)
    if args.append and args.overwrite:
        parser.error("--append and --overwrite exclude each other")
    inputs = {"image folder": args.images, "pose file": args.poses, "bag": args.bag}
    check_output_apart_from_inputs(args.output, {what: path for what, path in inputs.items() if path is not None})
    check_output_directory(args.output, "--output")
    setup_logging(args.verbose, args.quiet)
    config = config_from_args(args, node_name="build_map")
    executor = executor_from_spec(args.executor, args.workers)  # without ray: one line and exit 2, before any work
    with map_lock(args.output):  # the whole build or append, so that two of them cannot race
        recover_interrupted_swap(args.output)  # else a map left aside by a killed write looks absent
        if args.overwrite and args.output.exists():
            check_overwritable(args.output)  # before reading any input
        appending = args.append and args.output.exists()
        source = load_source(args, map_geodetic_origin(args.output) if appending else None)
        provenance = {"command": " ".join(["build_map", *argv]),
                      "images": str(args.images) if args.images else None,
                      "poses": str(args.poses) if args.poses else None, **getattr(source, "info", {})}
        origin = getattr(source, "info", {}).get("geodetic_origin")
        t0 = time.perf_counter()
        try:
            if appending:
                refmap, added = append_to_map(source, args.output, config, progress=not args.quiet,
                                              provenance=provenance, retrain=args.retrain, executor=executor)
                action = f"{added} frames appended" if added else "nothing appended (all frames already in the map)"
            else:
                refmap = build_map(source, args.output, config, overwrite=args.overwrite, progress=not args.quiet,
                                   sections={"geodetic_origin": origin} if origin else None, provenance=provenance,
                                   executor=executor)
                action = "built"
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()
    elapsed = time.perf_counter() - t0
    size = sum(f.stat().st_size for f in args.output.rglob("*") if f.is_file())
    print(f"map {args.output}: {len(refmap)} frames, {refmap.dim}-d descriptors, encoder {refmap.encoder['id']}, "
          f"input {refmap.input_size[1]}x{refmap.input_size[0]}, {size / 1e6:.2f} MB "
          f"({size / len(refmap) / 1e3:.1f} kB/frame), {action} in {elapsed:.1f} s")
    return 0


def merge(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]) -> int:
    """``--merge A B ... --output C``: see :mod:`vpr_ros.core.map_merge`."""
    from vpr_ros.core.map_merge import merge_maps

    if args.images is not None or args.bag is not None or args.append or args.executor != "local" or args.workers:
        parser.error("--merge joins existing maps without encoding images: it takes no --images, --bag, --append, "
                     "--executor or --workers")
    check_output_directory(args.output, "--output")
    setup_logging(args.verbose, args.quiet)
    t0 = time.perf_counter()
    refmap = merge_maps(args.merge, args.output, overwrite=args.overwrite, retrain=args.retrain,
                        provenance={"command": " ".join(["build_map", *argv])})
    spec = refmap.index_spec
    print(f"map {args.output}: {len(refmap)} frames merged from {len(args.merge)} maps, index "
          f"{spec.factory if spec else '?'}, in {time.perf_counter() - t0:.1f} s")
    return 0


def load_source(args: argparse.Namespace, origin: GeodeticOrigin | None) -> FrameSource:
    if args.bag is not None:
        source = bag_source_from_args(args, args.poses, args.pose_format, args.max_time_diff, origin,
                                      progress=not args.quiet)
        log.info("%d frames from %s (%s)", len(source), args.bag, args.image_topic)
        return source
    source = folder_source(args.images, args.poses, args.pose_format, args.max_time_diff, args.max_pixels)
    log.info("%d frames from %s", len(source), args.images)
    return source


def entry_point() -> None:
    sys.exit(run_cli(main, interrupted_hint=RESUME_HINT))


if __name__ == "__main__":
    entry_point()
