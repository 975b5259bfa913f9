"""Oxford RobotCar (one run) -> rosbag2 with the stereo centre camera and INS / RTK poses + pose file.

Format read (as the dataset's tar chunks extract)::

    <run>/stereo/centre/<timestamp>.png   8-bit Bayer images, pattern GBRG, named by UNIX time in microseconds
    <run>/stereo.timestamps               optional: "<timestamp> <chunk>" per line (images listed here first)
    <run>/gps/ins.csv                     INS at 50 Hz, header: timestamp,ins_status,latitude,longitude,altitude,
                                          northing,easting,down,utm_zone,velocity_north,velocity_east,
                                          velocity_down,roll,pitch,yaw
    <run>/gps/rtk.csv                     optional RTK ground truth (same columns without ins_status)

Poses (columns are found by name): the vehicle's UTM ``northing, easting, down`` and ``roll, pitch, yaw``
(radians, NED frame, forward-right-down body) become ENU positions relative to a UTM origin and forward-left-up
quaternions (REP 103), interpolated to each image timestamp (linear / slerp); images outside the pose stream
are skipped. The default origin is a fixed point in Oxford, so runs converted separately share one frame
(``--utm-origin`` to change it).

Images: ``bayer`` keeps the raw mosaic as a ``bayer_gbrg8`` Image (lossless, one byte per pixel; the node and
the bag readers demosaic it), ``rgb`` demosaics to an ``rgb8`` Image, ``jpeg`` demosaics and compresses.
Demosaicing is OpenCV's bilinear Bayer conversion (the RobotCar SDK uses a bilinear demosaic too).

With orientations known, ``evaluate`` reports the RobotCar Seasons pose bins (0.25 m / 2 deg, 0.5 m / 5 deg,
5 m / 10 deg) beside recall@N.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vpr_ros.errors import InputError
from vpr_ros.io.datasets.common import Frame, write_dataset_yaml, write_traversal
from vpr_ros.io.image_messages import image_msg_to_rgb
from vpr_ros.io.poses import PoseTable, interpolate_poses
from vpr_ros.io.transforms import ned_to_enu

log = logging.getLogger(__name__)

BAYER_ENCODING = "bayer_gbrg8"  # the RobotCar stereo cameras' colour filter array
#: A round UTM point (zone 30U) in Oxford, near the start of the RobotCar route.
OXFORD_UTM_ORIGIN = (620000.0, 5734000.0)
POSE_COLUMNS = ("timestamp", "northing", "easting", "down", "roll", "pitch", "yaw")


def read_ins(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``ins.csv`` / ``rtk.csv`` -> timestamps (µs, int64) and (N, 6) northing, easting, down, roll, pitch, yaw."""
    path = Path(path)
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            missing = [c for c in POSE_COLUMNS if c not in header]
            if missing:
                raise InputError(f"{path}: missing column(s) {missing}; RobotCar INS/RTK files have "
                                 f"{', '.join(POSE_COLUMNS)} among others")
            cols = [header.index(c) for c in POSE_COLUMNS]
            rows = [[row[c] for c in cols] for row in reader if row]
    except FileNotFoundError:
        raise FileNotFoundError(f"RobotCar pose file {path} does not exist") from None
    except StopIteration:
        raise InputError(f"{path}: empty file") from None
    try:
        values = np.array(rows, dtype=np.float64)
    except ValueError as exc:
        raise InputError(f"{path}: non-numeric pose value ({exc})") from None
    if len(values) == 0:
        raise InputError(f"{path}: no poses")
    return values[:, 0].astype(np.int64), values[:, 1:]


def image_timestamps(run: Path) -> list[int]:
    """Centre-camera timestamps (µs): from ``stereo.timestamps`` if present, else from the file names."""
    folder = run / "stereo" / "centre"
    if not folder.is_dir():
        raise FileNotFoundError(f"{run}: no stereo/centre folder (expected a RobotCar run directory)")
    on_disk = {int(p.stem) for p in folder.glob("*.png") if p.stem.isdigit()}
    listed = run / "stereo.timestamps"
    if listed.is_file():
        stamps = [int(line.split()[0]) for line in listed.read_text().splitlines() if line.strip()]
        missing = [t for t in stamps if t not in on_disk]
        if missing:
            log.warning("%d timestamps of %s have no image (e.g. %s); skipped", len(missing), listed, missing[:3])
        stamps = [t for t in stamps if t in on_disk]
    else:
        stamps = sorted(on_disk)
    if not stamps:
        raise FileNotFoundError(f"{folder}: no <timestamp>.png images")
    return sorted(stamps)


def demosaic(mosaic: np.ndarray) -> np.ndarray:
    """GBRG Bayer mosaic (H, W) uint8 -> RGB (H, W, 3), as the node decodes a ``bayer_gbrg8`` Image."""
    from types import SimpleNamespace

    h, w = mosaic.shape
    msg = SimpleNamespace(encoding=BAYER_ENCODING, height=h, width=w, step=w, is_bigendian=0,
                          data=np.ascontiguousarray(mosaic).tobytes())
    return image_msg_to_rgb(msg)


def _read_mosaic(path: Path) -> np.ndarray:
    mosaic = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mosaic is None or mosaic.ndim != 2:
        raise InputError(f"{path}: not a single-channel Bayer PNG")
    return mosaic


def convert_robotcar(run: str | Path, out: str | Path, poses: str = "auto", image_format: str = "bayer",
                     every: int = 1, max_frames: int | None = None,
                     utm_origin: tuple[float, float] = OXFORD_UTM_ORIGIN, max_time_diff: float = 0.1,
                     storage: str = "sqlite3", progress: bool = True) -> dict[str, Any]:
    """Convert one run to the bag ``out`` (+ ``<out>_poses.csv`` and ``dataset.yaml`` beside it).

    Args:
        poses: ``auto`` (rtk.csv if present, else ins.csv), ``ins``, ``rtk``, or a path to such a CSV.
        every: keep every n-th image.
        max_time_diff: images farther than this (seconds) outside the pose stream are skipped.
    """
    run, out = Path(run), Path(out)
    if image_format not in ("bayer", "rgb", "jpeg"):
        raise InputError(f"image format {image_format!r} is not bayer, rgb or jpeg")
    if poses == "auto":
        pose_path = run / "gps" / ("rtk.csv" if (run / "gps" / "rtk.csv").is_file() else "ins.csv")
    elif poses in ("ins", "rtk"):
        pose_path = run / "gps" / f"{poses}.csv"
    else:
        pose_path = Path(poses)
    times_us, nav = read_ins(pose_path)
    positions, orientations = ned_to_enu(nav[:, 0] - utm_origin[1], nav[:, 1] - utm_origin[0], nav[:, 2],
                                         nav[:, 3], nav[:, 4], nav[:, 5])
    order = np.argsort(times_us, kind="stable")
    table = PoseTable([""] * len(order), positions[order], orientations[order], times_us[order] * 1e-6)
    stamps_us = np.array(image_timestamps(run)[::max(1, every)], dtype=np.int64)
    if max_frames is not None:
        stamps_us = stamps_us[:max_frames]
    img_pos, img_ori, valid = interpolate_poses(table, stamps_us * 1e-6, max_extrapolation=max_time_diff)
    if not valid.all():
        log.warning("%d of %d images lie outside %s and are skipped", int((~valid).sum()), len(valid), pose_path)
    folder = run / "stereo" / "centre"
    frames = [Frame(name=f"{t}.png", stamp=t * 1e-6, payload=_payload(folder / f"{t}.png", image_format),
                    position=img_pos[i], orientation=img_ori[i], stamp_ns=t * 1000)
              for i, t in enumerate(stamps_us.tolist()) if valid[i]]
    if not frames:
        raise InputError(f"{run}: no image lies within the pose stream of {pose_path}")
    desc = write_traversal(frames, out, storage, progress)
    description = {
        "dataset": "Oxford RobotCar (Maddern et al., IJRR 2017), one run, stereo centre camera",
        "source": str(run), "pose_source": str(pose_path), "image_format": image_format,
        "frame_id": "map: UTM east/north minus the origin, up (ENU); base_link forward-left-up",
        "utm_origin": {"easting": utm_origin[0], "northing": utm_origin[1]},
        "pose_accuracy_bins": "0.25 m / 2 deg, 0.5 m / 5 deg, 5 m / 10 deg (RobotCar Seasons)",
        "traversal": desc,
        "usage": [f"build_map --bag {out} --image-topic {desc['topics']['images']} --pose-topic /pose "
                  f"--min-distance 1 --output maps/{out.name}",
                  f"evaluate --map maps/OTHER_RUN --bag {out} --image-topic {desc['topics']['images']} "
                  "--pose-topic /pose --dist-threshold 25"]}
    write_dataset_yaml(out.parent / f"{out.name.removesuffix('.bag')}_dataset.yaml", description)
    return description


def _payload(path: Path, image_format: str):  # noqa: ANN202 - Frame.payload callable
    def load() -> tuple[str, Any, str]:
        mosaic = _read_mosaic(path)
        if image_format == "bayer":
            return "raw", mosaic, BAYER_ENCODING
        rgb = demosaic(mosaic)
        if image_format == "rgb":
            return "raw", rgb, "rgb8"
        ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
        if not ok:
            raise InputError(f"{path}: JPEG encoding failed")
        return "compressed", jpeg.tobytes(), "jpeg"
    return load
