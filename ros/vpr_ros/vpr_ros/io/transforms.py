"""Rigid transforms on batches of poses: quaternions (x, y, z, w, scipy's order) and translations.

Used to chain /tf transforms and to convert dataset orientations (roll/pitch/yaw, NED) to the ROS convention
(REP 103: x forward, y left, z up; ENU world frame). The rotation maths is scipy's ``Rotation``; this module
adds what scipy does not do: rows with an unknown orientation (NaN quaternion, or NaN angles) stay NaN instead
of raising, so a batch with gaps goes through in one vectorised call.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial.transform import Rotation


def known_rows(*arrays: np.ndarray) -> np.ndarray:
    """Mask of the rows (last axis = one value) that are finite in every array.

    Shape:
        arrays: (N, k_i) each; returns (N,) bool.
    """
    return np.logical_and.reduce([np.isfinite(a).all(axis=-1) for a in arrays])


def map_rotations(q: np.ndarray, fn: Callable[[Rotation], np.ndarray], width: int) -> np.ndarray:
    """Apply ``fn`` (scipy rotations (M,) -> (M, width) values) to the known quaternions of ``q``; NaN elsewhere.

    Shape:
        q: (..., 4); returns (..., width), or (...) when ``width`` is 0 (``fn`` then returns (M,)).
    """
    q = np.asarray(q, dtype=np.float64)
    rows = q.reshape(-1, 4)
    known = known_rows(rows)
    out = np.full((len(rows), max(width, 1)), np.nan)
    if known.any():
        out[known] = fn(Rotation.from_quat(rows[known])).reshape(-1, max(width, 1))
    return out.reshape(q.shape[:-1] + ((width,) if width else ()))


def _rows(a: np.ndarray, lead: tuple[int, ...]) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return np.broadcast_to(a, (*lead, a.shape[-1])).reshape(-1, a.shape[-1])


def compose(t_ab: np.ndarray, q_ab: np.ndarray, t_bc: np.ndarray, q_bc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T_ac = T_ab * T_bc for poses given as translation (..., 3) and rotation (..., 4); NaN where unknown."""
    lead = np.broadcast_shapes(*(np.shape(a)[:-1] for a in (t_ab, q_ab, t_bc, q_bc)))
    t_ab, q_ab, t_bc, q_bc = (_rows(a, lead) for a in (t_ab, q_ab, t_bc, q_bc))
    known = known_rows(q_ab, q_bc)
    t_ac, q_ac = np.full_like(t_ab, np.nan), np.full_like(q_ab, np.nan)
    if known.any():
        r_ab = Rotation.from_quat(q_ab[known])
        t_ac[known] = t_ab[known] + r_ab.apply(t_bc[known])
        q_ac[known] = (r_ab * Rotation.from_quat(q_bc[known])).as_quat()
    return t_ac.reshape(*lead, 3), q_ac.reshape(*lead, 4)


def invert(t_ab: np.ndarray, q_ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T_ba from T_ab (translation (..., 3), rotation (..., 4)); NaN where unknown."""
    lead = np.broadcast_shapes(np.shape(t_ab)[:-1], np.shape(q_ab)[:-1])
    t_ab, q_ab = _rows(t_ab, lead), _rows(q_ab, lead)
    known = known_rows(q_ab)
    t_ba, q_ba = np.full_like(t_ab, np.nan), np.full_like(q_ab, np.nan)
    if known.any():
        r_ba = Rotation.from_quat(q_ab[known]).inv()
        t_ba[known] = -r_ba.apply(t_ab[known])
        q_ba[known] = r_ba.as_quat()
    return t_ba.reshape(*lead, 3), q_ba.reshape(*lead, 4)


def rotation_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation between quaternions (..., 4), in degrees (NaN where either is unknown)."""
    lead = np.broadcast_shapes(np.shape(q1)[:-1], np.shape(q2)[:-1])
    q1, q2 = _rows(q1, lead), _rows(q2, lead)
    known = known_rows(q1, q2)
    angle = np.full(len(q1), np.nan)
    if known.any():
        angle[known] = np.degrees((Rotation.from_quat(q1[known]).inv() * Rotation.from_quat(q2[known])).magnitude())
    return angle.reshape(lead)


def quat_from_euler(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Quaternions of R = Rz(yaw) Ry(pitch) Rx(roll) (intrinsic z-y'-x'', the aerospace convention).

    Shape:
        roll, pitch, yaw: (N,) radians (or broadcastable); returns (N, 4), NaN where an angle is NaN.
    """
    angles = np.stack(np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (yaw, pitch, roll))), axis=-1)
    rows = angles.reshape(-1, 3)
    known = known_rows(rows)
    q = np.full((len(rows), 4), np.nan)
    if known.any():
        q[known] = Rotation.from_euler("ZYX", rows[known]).as_quat()
    return q.reshape(*angles.shape[:-1], 4)


#: ENU <- NED world frame (x east = NED's y, y north = NED's x, z up = -down) and FLU <- FRD body frame.
_R_ENU_NED = Rotation.from_matrix([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
_R_FRD_FLU = Rotation.from_matrix(np.diag([1.0, -1.0, -1.0]))


def ned_to_enu(north: np.ndarray, east: np.ndarray, down: np.ndarray, roll: np.ndarray, pitch: np.ndarray,
               yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NED position + roll/pitch/yaw of a forward-right-down body -> ENU position + FLU body quaternion (w >= 0).

    Navigation systems (e.g. the Oxford RobotCar INS) report attitude as yaw (clockwise from north), pitch and
    roll of a forward-right-down body in the north-east-down frame; ROS (REP 103) wants east-north-up and
    forward-left-up. R_enu_flu = R_enu_ned · R_ned_frd · R_frd_flu.

    Shape:
        all inputs (N,); returns positions (N, 3) and quaternions (N, 4).
    """
    positions = np.stack([east, north, -np.asarray(down, dtype=np.float64)], axis=1).astype(np.float64)
    q_ned_frd = quat_from_euler(roll, pitch, yaw)
    return positions, map_rotations(q_ned_frd, lambda r: (_R_ENU_NED * r * _R_FRD_FLU).as_quat(canonical=True), 4)
