"""numpy / core results -> standard ROS 2 messages (and back, for listeners such as the evaluator)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from vpr_ros.core.localizer import Hypothesis

#: Fields of one ~/matches point: the candidate's reference pose, FAISS/re-rank score and frame id.
MATCH_FIELDS = (("x", PointField.FLOAT64), ("y", PointField.FLOAT64), ("z", PointField.FLOAT64),
                ("qx", PointField.FLOAT64), ("qy", PointField.FLOAT64), ("qz", PointField.FLOAT64),
                ("qw", PointField.FLOAT64), ("score", PointField.FLOAT32), ("ref_id", PointField.UINT32))
_NP_TYPES = {PointField.FLOAT64: "<f8", PointField.FLOAT32: "<f4", PointField.UINT32: "<u4"}
MATCH_DTYPE = np.dtype([(name, _NP_TYPES[t]) for name, t in MATCH_FIELDS])


def stamp_to_msg(stamp: float) -> Time:
    sec = math.floor(stamp)
    return Time(sec=int(sec), nanosec=round((stamp - sec) * 1e9) % 1_000_000_000)


def stamp_from_msg(stamp: Time) -> float:
    return float(stamp.sec) + float(stamp.nanosec) * 1e-9


def _pose(position: np.ndarray, orientation: np.ndarray) -> Pose:
    pose = Pose()
    pose.position.x, pose.position.y, pose.position.z = (float(v) for v in position)
    q = orientation if not np.isnan(orientation).any() else np.array([0.0, 0.0, 0.0, 1.0])
    pose.orientation.x, pose.orientation.y, pose.orientation.z, pose.orientation.w = (float(v) for v in q)
    return pose


def pose_covariance(confidence: float, sigma_min: float, sigma_max: float, yaw_sigma_deg: float,
                    orientation_known: bool) -> list[float]:
    """Row-major 6x6 covariance (x y z roll pitch yaw) from the hypothesis confidence.

    Position sigma interpolates linearly from ``sigma_max`` (confidence 0) to ``sigma_min`` (confidence 1);
    angular sigmas scale by the same factor. Unknown orientation gets a variance of pi^2 (uninformative).
    """
    c = float(np.clip(confidence, 0.0, 1.0))
    sigma = sigma_min + (sigma_max - sigma_min) * (1.0 - c)
    scale = sigma / sigma_min if sigma_min > 0 else 1.0
    ang = math.radians(yaw_sigma_deg) * scale if orientation_known else math.pi
    cov = np.zeros((6, 6))
    cov[np.diag_indices(3)] = sigma ** 2
    cov[3, 3] = cov[4, 4] = cov[5, 5] = min(ang, math.pi) ** 2
    return cov.ravel().tolist()


def hypothesis_to_pose(hyp: Hypothesis, frame_id: str, sigma_min: float, sigma_max: float,
                       yaw_sigma_deg: float) -> PoseWithCovarianceStamped | None:
    """Best candidate's reference pose, or None when that pose is unknown."""
    if len(hyp.indices) == 0 or np.isnan(hyp.positions[0]).any():
        return None
    msg = PoseWithCovarianceStamped()
    msg.header = Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id)
    msg.pose.pose = _pose(hyp.positions[0], hyp.orientations[0])
    msg.pose.covariance = pose_covariance(hyp.confidence, sigma_min, sigma_max, yaw_sigma_deg,
                                          not np.isnan(hyp.orientations[0]).any())
    return msg


def hypothesis_to_pose_array(hyp: Hypothesis, frame_id: str) -> PoseArray:
    """All candidates with known positions, best first."""
    msg = PoseArray(header=Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id))
    known = ~np.isnan(hyp.positions).any(axis=1)
    msg.poses = [_pose(p, q) for p, q in zip(hyp.positions[known], hyp.orientations[known], strict=True)]
    return msg


def hypothesis_to_matches(hyp: Hypothesis, frame_id: str) -> PointCloud2:
    """Candidates as a PointCloud2 with typed fields (x y z qx qy qz qw score ref_id), best first.

    A PointCloud2 with named fields is the standard message that carries a typed table losslessly; rviz
    shows it as points coloured by score.
    """
    rows = np.zeros(len(hyp.indices), dtype=MATCH_DTYPE)
    for i, axis in enumerate(("x", "y", "z")):
        rows[axis] = hyp.positions[:, i]
    for i, axis in enumerate(("qx", "qy", "qz", "qw")):
        rows[axis] = hyp.orientations[:, i]
    rows["score"] = hyp.scores
    rows["ref_id"] = hyp.ids
    offsets = [MATCH_DTYPE.fields[name][1] for name, _ in MATCH_FIELDS]
    fields = [PointField(name=name, offset=int(off), datatype=dt, count=1)
              for (name, dt), off in zip(MATCH_FIELDS, offsets, strict=True)]
    return PointCloud2(header=Header(stamp=stamp_to_msg(hyp.stamp), frame_id=frame_id), height=1,
                       width=len(rows), fields=fields, is_bigendian=False, point_step=MATCH_DTYPE.itemsize,
                       row_step=MATCH_DTYPE.itemsize * len(rows), data=rows.tobytes(), is_dense=False)


def matches_from_msg(msg: PointCloud2) -> np.ndarray:
    """Inverse of :func:`hypothesis_to_matches`: a structured array with MATCH_DTYPE rows."""
    names = [f.name for f in msg.fields]
    if names != [name for name, _ in MATCH_FIELDS] or msg.point_step != MATCH_DTYPE.itemsize:
        raise ValueError(f"not a vpr_ros matches cloud (fields {names})")
    return np.frombuffer(bytes(msg.data), dtype=MATCH_DTYPE, count=msg.width * msg.height).copy()
