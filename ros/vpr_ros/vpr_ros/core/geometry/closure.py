"""Geometry of a loop closure as the localize node uses it: keyframe features in the map, the verdict on a gated
closure, and the query camera's pose in the map from a verified relative pose (ROS-free).

Frames. The relative pose of :func:`~vpr_ros.core.geometry.verification.verify_pair` is T_query_keyframe between
the two *camera optical frames* (x right, y down, z forward), as LoopClosure.msg carries it. Map poses (frames.csv,
odometry) are poses of the robot or of the camera in its body convention (x forward, y left, z up). The camera's
mounting, ``camera_pose`` = T_body_camera (translation x y z, quaternion x y z w of the optical frame in the pose
frame), links them; the default is the REP 103 optical rotation with no offset (a camera looking along the body's
x axis), the transform a ``camera_link -> camera_optical_frame`` static transform holds.

What a keyframe stores for verification (online maps, :class:`vpr_ros.core.online_map.OnlineMap`'s local
features): ``keypoints`` (n, 2) float32 pixels, ``descriptors`` (n, 128) uint8 for SIFT or (n, 32) for ORB, and
``depths`` (n,) float32 metres at the keypoints from the depth image (NaN where none: PnP then gives a metric
translation), and ``camera`` (1, 6) float64 = fx fy cx cy width height of the intrinsics the image was taken
with.
SIFT with the default 1000 keypoints: 132 bytes per keypoint plus 48 bytes, at most about 130 kB per keyframe;
ORB: 40 bytes per keypoint. A map without them (``build_map`` maps) is verified from its images (the frames'
sources), features extracted when a closure needs them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from vpr_ros.config import section, setting
from vpr_ros.core.geometry.camera import CameraIntrinsics
from vpr_ros.core.geometry.features import Features
from vpr_ros.core.geometry.verification import Verification, VerificationConfig, verify_pair
from vpr_ros.io.transforms import compose, invert

#: REP 103: the optical frame (z forward, x right, y down) in the body frame (x forward, y left, z up).
OPTICAL_IN_BODY = (0.0, 0.0, 0.0, -0.5, 0.5, -0.5, 0.5)


@dataclass(frozen=True)
class ClosureGeometryConfig:
    """Geometric verification of the loop closures the gate lets through (localize node, ``geometry.*``)."""

    enabled: bool = setting(True, "verify every gated loop closure with local features and two-view geometry; a "
                            "closure that fails is not published")
    publish_unverified: bool = setting(False, "publish a closure, flagged verified false, when verification is "
                                       "impossible (no intrinsics, tiny images, too few features, no keyframe "
                                       "image); false = drop it")
    camera_hfov_deg: float = setting(0.0, "horizontal field of view (degrees) for nominal pinhole intrinsics when "
                                     "no camera_info arrives (0 = none: verification needs camera_info)", min=0.0,
                                     max=179.0)
    camera_pose: tuple[float, ...] = setting(
        OPTICAL_IN_BODY, "the camera's optical frame in the frame of the map and odometry poses: x y z qx qy qz qw "
        "(default: REP 103 optical rotation, camera looking along x, no offset)")
    metric_pose: bool = setting(True, "on a verified closure, ~/pose is the keyframe's pose composed with the "
                                "verified relative pose (not just the keyframe's pose)")
    publish_initial_pose: bool = setting(False, "also publish a verified metric pose on /initialpose (nav2's "
                                         "convention for relocalizing AMCL and friends)")
    store_keyframe_features: bool = setting(True, "online maps: store each keyframe's local features (see "
                                            "README for bytes per keyframe) so closures are verified without "
                                            "its image")
    verification: VerificationConfig = section(VerificationConfig)

    def __post_init__(self) -> None:
        if len(self.camera_pose) != 7 or not np.isfinite(self.camera_pose).all():
            raise ValueError(f"camera_pose: expected 7 finite numbers x y z qx qy qz qw, got {list(self.camera_pose)}")
        if abs(np.linalg.norm(self.camera_pose[3:]) - 1.0) > 1e-3:
            raise ValueError(f"camera_pose: the quaternion {list(self.camera_pose[3:])} is not of unit length")


def keyframe_blob(features: Features, camera: CameraIntrinsics | None) -> dict[str, np.ndarray]:
    """What an online map stores for a keyframe (see the module docstring)."""
    intrinsics = [camera.fx, camera.fy, camera.cx, camera.cy, camera.width, camera.height] if camera else [np.nan] * 6
    depths = features.depths if features.depths is not None else np.full(len(features), np.nan, np.float32)
    return {"keypoints": features.keypoints.astype(np.float32), "descriptors": features.descriptors,
            "depths": depths.astype(np.float32), "camera": np.asarray([intrinsics], dtype=np.float64)}


def blob_features(blob: dict[str, np.ndarray]) -> tuple[Features, CameraIntrinsics | None]:
    """Inverse of :func:`keyframe_blob`: the keyframe's features (image size from its intrinsics) and camera."""
    intrinsics = np.asarray(blob["camera"], dtype=np.float64).reshape(6)
    kind = "sift" if blob["descriptors"].shape[1] == 128 else "orb"
    if not np.isfinite(intrinsics).all():
        raise ValueError("keyframe features without intrinsics")
    fx, fy, cx, cy, width, height = intrinsics
    camera = CameraIntrinsics(fx=fx, fy=fy, cx=cx, cy=cy, width=int(width), height=int(height))
    depths = np.asarray(blob["depths"], np.float32) if "depths" in blob else None
    depths = depths if depths is not None and np.isfinite(depths).any() else None
    return Features(np.asarray(blob["keypoints"], np.float32), np.asarray(blob["descriptors"]), kind,
                    (int(height), int(width)), depths), camera


@dataclass(frozen=True)
class ClosureCheck:
    """The verdict on one gated closure: ``verified``, ``failed`` (geometry says no: drop it) or ``impossible``
    (nothing to check with: publish unverified only if allowed), with the verification when one ran."""

    status: str
    reason: str
    verification: Verification | None = None


def check_closure(query_rgb: np.ndarray, keyframe: np.ndarray | Features | None, query_camera: CameraIntrinsics | None,
                  keyframe_camera: CameraIntrinsics | None, config: ClosureGeometryConfig,
                  baseline: float | None = None, query_depth: np.ndarray | None = None) -> ClosureCheck:
    """Verify one closure; say whether it is impossible (no intrinsics, no keyframe image or features, images below
    ``min_image_side`` such as 64x32 thumbnails) rather than wrong. Too few matches between images large enough
    is a failure: unrelated places look exactly like that."""
    if query_camera is None:
        return ClosureCheck("impossible", "no camera intrinsics (camera_info, or geometry.camera_hfov_deg)")
    if keyframe is None:
        return ClosureCheck("impossible", "the keyframe's image and features are not available")
    result = verify_pair(query_rgb, keyframe, query_camera, keyframe_camera or query_camera, baseline=baseline,
                         query_depth=query_depth, config=config.verification)
    if result.verified:
        return ClosureCheck("verified", "", result)
    too_small = result.reason.startswith("image too small")
    return ClosureCheck("impossible" if too_small else "failed", result.reason, result)


def query_pose_in_map(keyframe_position: np.ndarray, keyframe_orientation: np.ndarray, verification: Verification,
                      camera_pose: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
    """The query's pose (body convention, as the map's) in the map: T_map_q = T_map_k T_bc T_qk^-1 T_bc^-1.

    Returns (position (3,), quaternion x y z w (4,), position_known): without a metric translation the position is
    the keyframe's (only the orientation follows from the relative rotation), and ``position_known`` is False.
    """
    t_bc, q_bc = np.asarray(camera_pose[:3], float), np.asarray(camera_pose[3:], float)
    q_qk = Rotation.from_matrix(verification.rotation).as_quat()
    t_qk = verification.translation if verification.metric else np.zeros(3)
    t_kq, q_kq = invert(t_qk, q_qk)                                  # keyframe camera -> query camera
    t_cb, q_cb = invert(t_bc, q_bc)
    t, q = compose(*compose(*compose(keyframe_position, keyframe_orientation, t_bc, q_bc), t_kq, q_kq), t_cb, q_cb)
    if not verification.metric:
        t = np.asarray(keyframe_position, float)
    return t, q, bool(verification.metric)
