"""Second views of a real image with a known relative pose, for checking geometric verification.

No dataset here has calibrated images with metric ground truth, so the ground truth is built: a real image is
warped by the homography a known camera motion induces, which is exact for

* a pure rotation R of the camera: H = K R K^-1 (any scene);
* a plane n^T X = d in the first (keyframe) camera's frame (unit normal n pointing away from the camera,
  d > 0 its distance) and a motion X_query = R X_keyframe + t: H = K (R + t n^T / d) K^-1. This is
  Hartley & Zisserman's H = K (R - t n'^T / d) K^-1 (section 13.1) with their plane n'^T X + d = 0, n' = -n.
  The keyframe's depth map is then known too: z(u, v) = d / (n . K^-1 [u v 1]).

For a scene that is neither a plane nor seen from one point, :func:`box_view` paints the image on the inside of
a box around the keyframe camera (a corridor: two walls, floor, ceiling, end wall; each pixel on the first
wall its ray meets) and renders it from the moved camera by ray casting; the depth maps are exact there too.
Inside a box every ray meets exactly one wall first, so nothing is occluded.

The warped image is the query, the original the keyframe: (R, t) is T_query_keyframe, the convention of
:func:`vpr_ros.core.geometry.verify_pair`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.core.geometry.camera import CameraIntrinsics


@dataclass(frozen=True)
class SyntheticView:
    """A query image made from a keyframe image, with the true T_query_keyframe.

    Shape:
        query: like the keyframe image; rotation (3, 3); translation (3,); keyframe_depth (H, W) float32 or None
    """

    query: np.ndarray
    rotation: np.ndarray
    translation: np.ndarray
    homography: np.ndarray | None     # None for a box view (no single homography)
    keyframe_depth: np.ndarray | None
    coverage: float          # share of the query image that shows the keyframe image
    normal: np.ndarray | None = None   # the plane normal . X = distance in the keyframe frame (planar views)
    distance: float = float("nan")


def rotation_error_deg(estimated: np.ndarray, true: np.ndarray) -> float:
    """Angle of estimated^T @ true in degrees."""
    return float(np.degrees(Rotation.from_matrix(estimated.T @ true).magnitude()))


def direction_error_deg(estimated: np.ndarray, true: np.ndarray) -> float:
    """Angle between two translation directions in degrees (nan when either is zero)."""
    ne, nt = np.linalg.norm(estimated), np.linalg.norm(true)
    if ne == 0 or nt == 0:
        return float("nan")
    return float(np.degrees(np.arccos(np.clip(estimated @ true / (ne * nt), -1.0, 1.0))))


def random_rotation(rng: np.random.Generator, max_deg: float, min_deg: float = 0.0) -> np.ndarray:
    """A rotation by an angle uniform in [min_deg, max_deg] about a uniformly random axis."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    return Rotation.from_rotvec(np.radians(rng.uniform(min_deg, max_deg)) * axis).as_matrix()


def _warp(image: np.ndarray, homography: np.ndarray) -> tuple[np.ndarray, float]:
    h, w = image.shape[:2]
    query = cv2.warpPerspective(image, homography, (w, h), flags=cv2.INTER_LINEAR)
    coverage = float(cv2.warpPerspective(np.ones((h, w), np.uint8), homography, (w, h)).mean())
    return query, coverage


def rotated_view(image: np.ndarray, camera: CameraIntrinsics, rotation: np.ndarray) -> SyntheticView:
    """The image seen by the same camera rotated by ``rotation`` (X_query = rotation @ X_keyframe)."""
    k = camera.matrix
    homography = k @ rotation @ np.linalg.inv(k)
    query, coverage = _warp(image, homography)
    return SyntheticView(query, rotation, np.zeros(3), homography, None, coverage)


def planar_view(image: np.ndarray, camera: CameraIntrinsics, rotation: np.ndarray, translation: np.ndarray,
                normal: np.ndarray, distance: float) -> SyntheticView:
    """The image painted on the plane normal . X = distance (keyframe frame), seen after the motion
    X_query = rotation @ X_keyframe + translation; with the keyframe's depth map (metres, float32)."""
    k = camera.matrix
    homography = k @ (rotation + np.outer(translation, normal) / distance) @ np.linalg.inv(k)
    query, coverage = _warp(image, homography)
    h, w = image.shape[:2]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = camera.normalize(np.stack([u.ravel(), v.ravel()], axis=1))
    with np.errstate(divide="ignore"):
        depth = distance / (rays @ normal[:2] + normal[2])
    depth = np.where(depth > 0, depth, 0.0).reshape(h, w).astype(np.float32)
    return SyntheticView(query, rotation, np.asarray(translation, float), homography, depth, coverage,
                         np.asarray(normal, float), float(distance))


def _box_distance(origins: np.ndarray, directions: np.ndarray, half_width: float, half_height: float,
                  length: float) -> np.ndarray:
    """Ray parameter s of the first wall of the box |x| <= half_width, |y| <= half_height, z <= length met by
    origin + s * direction (s > 0), (N,); inf where none (a ray pointing backwards, out of the open end)."""
    bounds = np.array([half_width, half_height, length])
    hits = []
    for axis in range(3):
        for sign in ((-1.0, 1.0) if axis < 2 else (1.0,)):
            with np.errstate(divide="ignore", invalid="ignore"):
                s = (sign * bounds[axis] - origins[:, axis]) / directions[:, axis]
            hits.append(np.where(s > 0, s, np.inf))
    return np.min(np.stack(hits, axis=1), axis=1)


def box_view(image: np.ndarray, camera: CameraIntrinsics, rotation: np.ndarray, translation: np.ndarray, *,
             half_width: float = 1.5, half_height: float = 1.2, length: float = 8.0) -> SyntheticView:
    """The image painted on the inside of a box around the keyframe camera (walls x = +-half_width, floor and
    ceiling y = +-half_height, end wall z = length; keyframe frame), seen after the motion
    X_query = rotation @ X_keyframe + translation (the query camera must stay inside the box)."""
    h, w = image.shape[:2]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    rays = np.c_[camera.normalize(np.stack([u.ravel(), v.ravel()], axis=1)), np.ones(u.size)]
    keyframe_depth = _box_distance(np.zeros_like(rays), rays, half_width, half_height, length)  # z, as rays[:, 2] = 1
    centre = -rotation.T @ translation                  # query camera centre in the keyframe frame
    if np.any(np.abs(centre) >= [half_width, half_height, length]):
        raise ValueError(f"box_view: the query camera {centre} is outside the box")
    directions = rays @ rotation                        # rotation.T @ ray for each row: query rays, keyframe frame
    s = _box_distance(np.tile(centre, (len(rays), 1)), directions, half_width, half_height, length)
    points = centre + s[:, None] * directions
    with np.errstate(divide="ignore", invalid="ignore"):
        projected = points[:, :2] / points[:, 2:3] * [camera.fx, camera.fy] + [camera.cx, camera.cy]
    valid = np.isfinite(projected).all(axis=1) & (points[:, 2] > 0)
    map_xy = np.where(valid[:, None], projected, -1.0).astype(np.float32).reshape(h, w, 2)
    query = cv2.remap(image, map_xy[..., 0], map_xy[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    inside = valid & (projected[:, 0] >= 0) & (projected[:, 0] <= w - 1) & (projected[:, 1] >= 0) \
        & (projected[:, 1] <= h - 1)
    depth = np.where(np.isfinite(keyframe_depth), keyframe_depth, 0.0).reshape(h, w).astype(np.float32)
    return SyntheticView(query, rotation, np.asarray(translation, float), None, depth, float(inside.mean()))


def sample_box_views(image: np.ndarray, camera: CameraIntrinsics, rng: np.random.Generator, count: int, *,
                     max_rotation_deg: float = 15.0, translation_range: tuple[float, float] = (0.3, 0.8),
                     min_coverage: float = 0.5) -> Iterator[SyntheticView]:
    """``count`` box views (:func:`box_view`, default box) after a rotation up to ``max_rotation_deg`` and a
    translation of random direction and length in ``translation_range``; drawn again below ``min_coverage``."""
    made = 0
    while made < count:
        rotation = random_rotation(rng, max_rotation_deg)
        direction = rng.normal(size=3)
        translation = direction / np.linalg.norm(direction) * rng.uniform(*translation_range)
        view = box_view(image, camera, rotation, translation)
        if view.coverage >= min_coverage:
            made += 1
            yield view


def sample_rotated_views(image: np.ndarray, camera: CameraIntrinsics, rng: np.random.Generator, count: int,
                         max_deg: float = 30.0) -> Iterator[SyntheticView]:
    """``count`` pure-rotation views, angles uniform in [0, max_deg] about random axes."""
    for _ in range(count):
        yield rotated_view(image, camera, random_rotation(rng, max_deg))


def sample_planar_views(image: np.ndarray, camera: CameraIntrinsics, rng: np.random.Generator, count: int, *,
                        max_rotation_deg: float = 15.0, max_tilt_deg: float = 40.0, distance: float = 2.0,
                        translation_range: tuple[float, float] = (0.2, 0.6),
                        min_coverage: float = 0.5) -> Iterator[SyntheticView]:
    """``count`` views of the image on a plane ``distance`` metres away, its normal tilted from the optical
    axis by up to ``max_tilt_deg``, after a rotation up to ``max_rotation_deg`` and a translation of random
    direction and length in ``translation_range``; draws again until the query shows the keyframe over at
    least ``min_coverage`` of its area."""
    made = 0
    while made < count:
        rotation = random_rotation(rng, max_rotation_deg)
        tilt_axis = np.r_[rng.normal(size=2), 0.0]
        tilt = Rotation.from_rotvec(np.radians(rng.uniform(0, max_tilt_deg)) * tilt_axis / np.linalg.norm(tilt_axis))
        normal = tilt.apply([0.0, 0.0, 1.0])
        direction = rng.normal(size=3)
        translation = direction / np.linalg.norm(direction) * rng.uniform(*translation_range)
        view = planar_view(image, camera, rotation, translation, normal, distance)
        if view.coverage >= min_coverage:
            made += 1
            yield view
