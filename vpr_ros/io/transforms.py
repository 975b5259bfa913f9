"""Rigid transforms on batches of poses: quaternions (x, y, z, w) and translations, numpy only.

Used to chain /tf transforms and to convert dataset orientations (roll/pitch/yaw, NED) to the ROS convention
(REP 103: x forward, y left, z up; ENU world frame).
"""

from __future__ import annotations

import numpy as np


def quat_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product ``a * b`` (rotation b first, then a).

    Shape:
        a, b: (..., 4) x, y, z, w (broadcast); returns (..., 4).
    """
    ax, ay, az, aw = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bx, by, bz, bw = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack([aw * bx + ax * bw + ay * bz - az * by,
                     aw * by - ax * bz + ay * bw + az * bx,
                     aw * bz + ax * by - ay * bx + az * bw,
                     aw * bw - ax * bx - ay * by - az * bz], axis=-1)


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    """Inverse rotation of unit quaternions (..., 4)."""
    q = np.asarray(q, dtype=np.float64)
    return np.concatenate([-q[..., :3], q[..., 3:]], axis=-1)


def quat_rotate(q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rotate vectors ``v`` (..., 3) by unit quaternions ``q`` (..., 4)."""
    q = np.asarray(q, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u, w = q[..., :3], q[..., 3:]
    t = 2.0 * np.cross(u, v)
    return v + w * t + np.cross(u, t)


def compose(t_ab: np.ndarray, q_ab: np.ndarray, t_bc: np.ndarray, q_bc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T_ac = T_ab * T_bc for poses given as translation (..., 3) and rotation (..., 4)."""
    return t_ab + quat_rotate(q_ab, t_bc), quat_multiply(q_ab, q_bc)


def invert(t_ab: np.ndarray, q_ab: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """T_ba from T_ab."""
    q_ba = quat_conjugate(q_ab)
    return -quat_rotate(q_ba, t_ab), q_ba


def rotation_angle_deg(q1: np.ndarray, q2: np.ndarray) -> np.ndarray:
    """Angle of the relative rotation between unit quaternions (..., 4), in degrees (NaN where unknown)."""
    dot = np.abs(np.sum(np.asarray(q1, dtype=np.float64) * np.asarray(q2, dtype=np.float64), axis=-1))
    return np.degrees(2.0 * np.arccos(np.clip(dot, -1.0, 1.0)))


def quat_from_euler(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Quaternions of R = Rz(yaw) Ry(pitch) Rx(roll) (intrinsic z-y'-x'', the aerospace convention).

    Shape:
        roll, pitch, yaw: (N,) radians; returns (N, 4).
    """
    hr, hp, hy = (np.asarray(a, dtype=np.float64) / 2 for a in (roll, pitch, yaw))
    cr, sr, cp, sp, cy, sy = np.cos(hr), np.sin(hr), np.cos(hp), np.sin(hp), np.cos(hy), np.sin(hy)
    return np.stack([sr * cp * cy - cr * sp * sy,
                     cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy,
                     cr * cp * cy + sr * sp * sy], axis=-1)


#: ENU <- NED world frame (x east = y north-east-down's east, ...) and FLU <- FRD body frame, as quaternions.
_Q_ENU_NED = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0, 0.0])  # R = [[0,1,0],[1,0,0],[0,0,-1]]
_Q_FRD_FLU = np.array([1.0, 0.0, 0.0, 0.0])                    # R = diag(1,-1,-1)


def ned_to_enu(north: np.ndarray, east: np.ndarray, down: np.ndarray, roll: np.ndarray, pitch: np.ndarray,
               yaw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NED position + roll/pitch/yaw of a forward-right-down body -> ENU position + FLU body quaternion.

    Navigation systems (e.g. the Oxford RobotCar INS) report attitude as yaw (clockwise from north), pitch and
    roll of a forward-right-down body in the north-east-down frame; ROS (REP 103) wants east-north-up and
    forward-left-up. R_enu_flu = R_enu_ned · R_ned_frd · R_frd_flu.

    Shape:
        all inputs (N,); returns positions (N, 3) and quaternions (N, 4).
    """
    positions = np.stack([east, north, -np.asarray(down, dtype=np.float64)], axis=1).astype(np.float64)
    q_ned_frd = quat_from_euler(roll, pitch, yaw)
    q = quat_multiply(quat_multiply(_Q_ENU_NED, q_ned_frd), _Q_FRD_FLU)
    return positions, q * np.where(q[..., 3:] < 0, -1.0, 1.0)
