"""What the node does with a verification: the keyframe blob an online map stores, and the query's pose in the map."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.geometry import CameraIntrinsics, Verification, extract_features
from vpr_ros.core.geometry.closure import OPTICAL_IN_BODY, blob_features, keyframe_blob, query_pose_in_map
from vpr_ros.core.image import load_rgb


def verification(rotation: np.ndarray, translation: np.ndarray, metric: bool) -> Verification:
    return Verification(verified=True, reason="", model="pnp" if metric else "essential", rotation=rotation,
                        translation=translation, metric=metric, inliers=50, matches=80, inlier_ratio=0.6, spread=0.2,
                        covariance=np.eye(6) * 1e-4)


def test_query_behind_the_keyframe_along_the_body_x_axis():
    # The keyframe camera is 1 m ahead of the query camera along the optical axis (z): the query body is 1 m behind
    # the keyframe body along x, whatever the keyframe's heading (here 90 degrees: +x of the body is map +y).
    heading = Rotation.from_euler("z", 90, degrees=True).as_quat()
    position, orientation, metric = query_pose_in_map(np.array([5.0, 2.0, 0.0]), heading,
                                                      verification(np.eye(3), np.array([0.0, 0.0, 1.0]), True),
                                                      OPTICAL_IN_BODY)
    assert metric
    np.testing.assert_allclose(position, [5.0, 1.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(Rotation.from_quat(orientation).as_euler("zyx", degrees=True), [90, 0, 0], atol=1e-9)


def test_query_turned_left_keeps_the_keyframe_position_without_metric_translation():
    # The query camera turned 10 degrees left (about the body z, = about the optical -y): the keyframe camera is
    # seen turned right in the query's frame, R_query_keyframe = rotation about optical +y by 10 degrees.
    relative = Rotation.from_euler("y", 10, degrees=True).as_matrix()
    position, orientation, metric = query_pose_in_map(np.array([1.0, 2.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]),
                                                      verification(relative, np.array([0.6, 0.0, 0.8]), False),
                                                      OPTICAL_IN_BODY)
    assert not metric
    np.testing.assert_allclose(position, [1.0, 2.0, 0.0])
    yaw = Rotation.from_quat(orientation).as_euler("zyx", degrees=True)[0]
    assert yaw == pytest.approx(10.0, abs=1e-9)


def test_keyframe_blob_round_trip(corridor):
    rgb = load_rgb(corridor / "ref" / "0000040.jpg")
    camera = CameraIntrinsics.nominal(rgb.shape[1], rgb.shape[0], 90.0)
    features = extract_features(rgb)
    restored, restored_camera = blob_features(keyframe_blob(features, camera))
    np.testing.assert_array_equal(restored.keypoints, features.keypoints)
    np.testing.assert_array_equal(restored.descriptors, features.descriptors)
    assert restored.kind == "sift" and restored.image_size == rgb.shape[:2] and restored.depths is None
    assert restored_camera == camera
    with pytest.raises(ValueError, match="without intrinsics"):
        blob_features(keyframe_blob(features, None))
