"""Simulated odometry drift and trajectory error, for evaluating a pose-graph back end (bench_two_sessions).

The data sets here have nominal poses only (a frame index along the route), no odometry. A second session's
odometry is simulated from the nominal poses: each step between consecutive nominal poses is scaled by
``1 + scale_bias + N(0, scale_sigma)`` and its heading change gets ``yaw_bias_deg + N(0, yaw_sigma_deg)``; the
integrated path is then expressed in the session's own odometry frame (``odometry_from_map``: where the
robot's odometry happened to start, unknown to it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DriftModel:
    """Per-step odometry errors (planar: scale and heading) and the random seed that draws them."""

    scale_bias: float = 0.02
    scale_sigma: float = 0.02
    yaw_bias_deg: float = 0.2
    yaw_sigma_deg: float = 0.3
    seed: int = 0

    def describe(self) -> dict[str, float | int | str]:
        return {"scale_bias": self.scale_bias, "scale_sigma": self.scale_sigma, "yaw_bias_deg": self.yaw_bias_deg,
                "yaw_sigma_deg": self.yaw_sigma_deg, "seed": self.seed,
                "model": "per step between consecutive nominal poses: length x (1 + scale_bias + N(0, scale_sigma)), "
                         "heading change + yaw_bias_deg + N(0, yaw_sigma_deg); numpy default_rng(seed)"}


def planar_poses(positions: np.ndarray, yaw: np.ndarray | None = None) -> np.ndarray:
    """(N, 4, 4) poses from positions (N, 3) and headings (N,) radians (default: along the direction of travel).

    Shape: positions (N, 3) -> (N, 4, 4).
    """
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"positions must be (N, 3), got {p.shape}")
    if yaw is None:
        step = np.diff(p[:, :2], axis=0, append=p[-1:, :2] + (p[-1:, :2] - p[-2:-1, :2] if len(p) > 1 else 1.0))
        yaw = np.arctan2(step[:, 1], step[:, 0])
    yaw = np.asarray(yaw, dtype=np.float64)
    poses = np.tile(np.eye(4), (len(p), 1, 1))
    c, s = np.cos(yaw), np.sin(yaw)
    poses[:, 0, 0], poses[:, 0, 1], poses[:, 1, 0], poses[:, 1, 1] = c, -s, s, c
    poses[:, :3, 3] = p
    return poses


def drifted_odometry(nominal: np.ndarray, model: DriftModel, odometry_from_map: np.ndarray) -> np.ndarray:
    """Simulated odometry (N, 4, 4) of a robot driving the ``nominal`` poses (N, 4, 4, map frame, planar).

    Starts at the true first pose, accumulates the drift of ``model``, and is expressed in the odometry frame
    ``odometry_from_map`` (4, 4).
    """
    nominal = np.asarray(nominal, dtype=np.float64)
    rng = np.random.default_rng(model.seed)
    yaw = np.arctan2(nominal[:, 1, 0], nominal[:, 0, 0])
    steps_world = np.diff(nominal[:, :2, 3], axis=0)
    # Each step in the frame of the pose it starts from (what a wheel odometry measures).
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    forward = c * steps_world[:, 0] + s * steps_world[:, 1]
    lateral = -s * steps_world[:, 0] + c * steps_world[:, 1]
    n = len(forward)
    scale = 1.0 + model.scale_bias + rng.normal(0.0, model.scale_sigma, n)
    dyaw = np.diff(yaw) + np.radians(model.yaw_bias_deg + rng.normal(0.0, model.yaw_sigma_deg, n))
    est_yaw = yaw[0] + np.concatenate([[0.0], np.cumsum(dyaw)])
    ce, se = np.cos(est_yaw[:-1]), np.sin(est_yaw[:-1])
    dx = scale * (ce * forward - se * lateral)
    dy = scale * (se * forward + ce * lateral)
    xy = nominal[0, :2, 3] + np.vstack([[0.0, 0.0], np.cumsum(np.stack([dx, dy], axis=1), axis=0)])
    positions = np.column_stack([xy, np.full(len(xy), nominal[0, 2, 3])])
    in_map = planar_poses(positions, est_yaw)
    return np.asarray(odometry_from_map, dtype=np.float64) @ in_map


def ate_rmse(estimated: np.ndarray, truth: np.ndarray) -> float:
    """Absolute trajectory error: RMS of the position differences (N, 3) vs (N, 3), *without* any alignment."""
    e, t = np.asarray(estimated, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    if e.shape != t.shape:
        raise ValueError(f"estimated {e.shape} and truth {t.shape} differ in shape")
    return float(np.sqrt(np.mean(np.sum((e - t) ** 2, axis=1))))
