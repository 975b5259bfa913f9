"""What every converter writes: one bag per traversal (images, and poses when known), a stamped pose file and a
``dataset.yaml`` describing topics, frames, ground truth and how to build a map and evaluate."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from tqdm import tqdm

from vpr_ros.errors import InputError
from vpr_ros.io.bag_writer import BagWriter
from vpr_ros.io.poses import PoseTable, write_pose_csv

log = logging.getLogger(__name__)

IMAGE_TOPIC = "/camera/image"
COMPRESSED_TOPIC = "/camera/image/compressed"
POSE_TOPIC = "/pose"
MAP_FRAME = "map"


@dataclass
class Frame:
    """One image of a traversal: its stamp (s), how to get its message payload, and its pose (NaN = unknown).

    ``payload()`` returns ``("compressed", bytes, format)`` for encoded images written unchanged, or
    ``("raw", pixels, encoding)`` for an array in the layout of a sensor_msgs/Image encoding.
    """

    name: str
    stamp: float
    payload: Callable[[], tuple[str, Any, str]]
    position: np.ndarray
    orientation: np.ndarray
    stamp_ns: int | None = None  # exact, where the dataset has it (float seconds since 1970 resolve ~0.2 µs)

    @property
    def ns(self) -> int:
        return self.stamp_ns if self.stamp_ns is not None else round(self.stamp * 1e9)


def strictly_increasing(stamps_ns: np.ndarray, step_ns: int = 1000) -> np.ndarray:
    """Integer stamps nudged forward by ``step_ns`` where they repeat, so bag order equals frame order everywhere."""
    out = np.asarray(stamps_ns, dtype=np.int64).copy()
    for i in range(1, len(out)):  # metadata only
        if out[i] <= out[i - 1]:
            out[i] = out[i - 1] + step_ns
    return out


def stamp_name(ns: int) -> str:
    """Frame name as bag frame sources name frames: ``<sec>.<nanosec>``."""
    return f"{ns // 1_000_000_000}.{ns % 1_000_000_000:09d}"


def write_traversal(frames: Sequence[Frame], bag_path: Path, storage: str = "sqlite3", progress: bool = True,
                    pose_kind: str = "pose") -> dict[str, Any]:
    """Write ``frames`` (in stamp order) to a bag, poses to ``<bag>_poses.csv``; returns a description.

    Poses go on ``/pose`` (PoseStamped in the ``map`` frame) only for frames whose position is known; a frame
    with a position but an unknown orientation is not published there (a PoseStamped cannot say "unknown"), but
    the pose file keeps it (empty quaternion columns mean unknown).
    """
    stamps = np.array([f.stamp for f in frames])
    ns = np.array([f.ns for f in frames], dtype=np.int64)
    if len(ns) > 1 and (np.diff(ns) <= 0).any():
        raise InputError(f"{bag_path}: frame stamps must increase strictly")
    topics: dict[str, str] = {}
    with BagWriter(bag_path, storage) as bag:
        for f in tqdm(frames, desc=f"write {bag_path.name}", unit="img", disable=not progress):
            kind, data, fmt = f.payload()
            if kind == "compressed":
                bag.write_compressed(COMPRESSED_TOPIC, f.stamp, data, fmt=fmt, stamp_ns=f.ns)
                topics["images"] = COMPRESSED_TOPIC
            else:
                bag.write_image(IMAGE_TOPIC, f.stamp, data, encoding=fmt, stamp_ns=f.ns)
                topics["images"] = IMAGE_TOPIC
            if not np.isnan(f.position).any() and not np.isnan(f.orientation).any():
                bag.write_pose(POSE_TOPIC, f.stamp, f.position, f.orientation, kind=pose_kind, frame_id=MAP_FRAME,
                               stamp_ns=f.ns)
                topics["poses"] = POSE_TOPIC
    pose_file = None
    positions = np.array([f.position for f in frames]).reshape(-1, 3)
    if not np.isnan(positions).all():
        pose_file = bag_path.with_name(f"{bag_path.name.removesuffix('.bag')}_poses.csv")
        write_pose_csv(pose_file, PoseTable([stamp_name(int(s)) for s in ns], positions,
                                            np.array([f.orientation for f in frames]).reshape(-1, 4), stamps))
    return {"bag": bag_path.name, "storage": storage, "frames": len(frames), "topics": topics,
            "pose_file": pose_file.name if pose_file else None,
            "names": "frame i of the bag is the i-th image message in stamp order"}


def write_dataset_yaml(path: Path, description: dict[str, Any]) -> Path:
    """The converter's description (what was written, ground truth, suggested commands) as YAML."""
    path.write_text(yaml.safe_dump(description, sort_keys=False, width=110))
    return path


def write_vpr_bench_ground_truth(path: Path, positives: Sequence[np.ndarray]) -> Path:
    """Ground truth as VPR-Bench stores it (rows ``[query_index, [reference indices]]``), read by ``evaluate
    --ground-truth``."""
    rows = np.empty((len(positives), 2), dtype=object)
    for i, p in enumerate(positives):
        rows[i, 0] = i
        rows[i, 1] = np.asarray(p, dtype=np.int64)
    np.save(path, rows, allow_pickle=True)
    return path
