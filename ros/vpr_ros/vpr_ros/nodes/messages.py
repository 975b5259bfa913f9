"""numpy / core results -> standard ROS 2 messages (and back, for listeners such as the evaluator)."""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseArray, PoseWithCovarianceStamped
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from vpr_ros.core.localizer import Hypothesis
from vpr_ros.core.loop_closure import LoopClosure

#: Fields of one ~/matches point: the candidate's reference pose, FAISS/re-rank score and frame id.
MATCH_FIELDS = (("x", PointField.FLOAT64), ("y", PointField.FLOAT64), ("z", PointField.FLOAT64),
                ("qx", PointField.FLOAT64), ("qy", PointField.FLOAT64), ("qz", PointField.FLOAT64),
                ("qw", PointField.FLOAT64), ("score", PointField.FLOAT32), ("ref_id", PointField.UINT32))
#: Fields of the one ~/loop_closure point: the matched map frame's pose and stamp, the gated score, its id.
LOOP_CLOSURE_FIELDS = (("x", PointField.FLOAT64), ("y", PointField.FLOAT64), ("z", PointField.FLOAT64),
                       ("qx", PointField.FLOAT64), ("qy", PointField.FLOAT64), ("qz", PointField.FLOAT64),
                       ("qw", PointField.FLOAT64), ("ref_stamp", PointField.FLOAT64),
                       ("score", PointField.FLOAT32), ("ref_id", PointField.UINT32))
_NP_TYPES = {PointField.FLOAT64: "<f8", PointField.FLOAT32: "<f4", PointField.UINT32: "<u4"}
MATCH_DTYPE = np.dtype([(name, _NP_TYPES[t]) for name, t in MATCH_FIELDS])
LOOP_CLOSURE_DTYPE = np.dtype([(name, _NP_TYPES[t]) for name, t in LOOP_CLOSURE_FIELDS])


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


def _table_cloud(rows: np.ndarray, fields_spec: tuple[tuple[str, int], ...], stamp: float,
                 frame_id: str) -> PointCloud2:
    """A structured array as a PointCloud2 whose fields are the array's columns (lossless, typed)."""
    offsets = [rows.dtype.fields[name][1] for name, _ in fields_spec]
    fields = [PointField(name=name, offset=int(off), datatype=dt, count=1)
              for (name, dt), off in zip(fields_spec, offsets, strict=True)]
    return PointCloud2(header=Header(stamp=stamp_to_msg(stamp), frame_id=frame_id), height=1,
                       width=len(rows), fields=fields, is_bigendian=False, point_step=rows.dtype.itemsize,
                       row_step=rows.dtype.itemsize * len(rows), data=rows.tobytes(), is_dense=False)


def _table_from_cloud(msg: PointCloud2, fields_spec: tuple[tuple[str, int], ...], dtype: np.dtype,
                      what: str) -> np.ndarray:
    names = [f.name for f in msg.fields]
    if names != [name for name, _ in fields_spec] or msg.point_step != dtype.itemsize:
        raise ValueError(f"not a vpr_ros {what} cloud (fields {names})")
    return np.frombuffer(bytes(msg.data), dtype=dtype, count=msg.width * msg.height).copy()


def loop_closure_to_msg(closure: LoopClosure, frame_id: str) -> PointCloud2:
    """A loop closure as a one-point PointCloud2 with typed fields (LOOP_CLOSURE_FIELDS).

    ``header.stamp`` is the query frame's stamp and ``header.frame_id`` the map frame; the point holds the
    matched map frame's pose (x y z qx qy qz qw, float64; NaN when the map has no pose for it), its stamp
    (``ref_stamp``, float64 seconds, as stored in the map), the gated ``score`` (float32) and its id
    (``ref_id``, uint32). Nothing is rounded or packed into unrelated fields.
    """
    row = np.zeros(1, dtype=LOOP_CLOSURE_DTYPE)
    for i, axis in enumerate(("x", "y", "z")):
        row[axis] = closure.position[i]
    for i, axis in enumerate(("qx", "qy", "qz", "qw")):
        row[axis] = closure.orientation[i]
    row["ref_stamp"] = closure.ref_stamp
    row["score"] = closure.score
    row["ref_id"] = closure.ref_id
    return _table_cloud(row, LOOP_CLOSURE_FIELDS, closure.stamp, frame_id)


def loop_closure_from_msg(msg: PointCloud2) -> np.ndarray:
    """Inverse of :func:`loop_closure_to_msg`: a structured array with LOOP_CLOSURE_DTYPE rows (one)."""
    return _table_from_cloud(msg, LOOP_CLOSURE_FIELDS, LOOP_CLOSURE_DTYPE, "loop closure")


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
    return _table_cloud(rows, MATCH_FIELDS, hyp.stamp, frame_id)


def matches_from_msg(msg: PointCloud2) -> np.ndarray:
    """Inverse of :func:`hypothesis_to_matches`: a structured array with MATCH_DTYPE rows."""
    return _table_from_cloud(msg, MATCH_FIELDS, MATCH_DTYPE, "matches")
