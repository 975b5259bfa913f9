"""Loop closures through the localize node with geometric verification, on real corridor images whose second lap
is the first seen by a camera turned by a known angle (H = K R K^-1: ground truth by construction)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from vpr_ros.core.geometry import CameraIntrinsics
from vpr_ros.core.image import load_rgb
from vpr_ros.nodes.replay import rgb_to_image_msg

pytestmark = pytest.mark.ros

HFOV = 90.0
TURN = Rotation.from_euler("y", 6.0, degrees=True)  # the camera turned 6 degrees about its vertical axis


def turned(rgb: np.ndarray) -> np.ndarray:
    """The image a camera turned by TURN would have seen from the same spot (pure rotation)."""
    camera = CameraIntrinsics.nominal(rgb.shape[1], rgb.shape[0], HFOV)
    k = camera.matrix
    homography = k @ TURN.as_matrix().T @ np.linalg.inv(k)  # query pixel = K R_query_keyframe K^-1 keyframe pixel
    return cv2.warpPerspective(rgb, homography, (rgb.shape[1], rgb.shape[0]))


def start_online(start_localize, corridor_map, namespace: str, **params):
    return start_localize("", namespace, **{
        "map_mode": "online", "online_map.vocabulary_from": str(corridor_map), "online_map.min_time": 0.5,
        "online_map.min_distance": 0.0, "loop_closure.min_consecutive": 1, "localizer.rerank.method": "none",
        "geometry.camera_hfov_deg": HFOV, **params})


def test_closures_carry_the_verified_relative_rotation(start_localize, corridor_map, corridor):
    client = start_online(start_localize, corridor_map, "/verified").client
    refs = sorted((corridor / "ref").glob("*.jpg"))[::3]
    images = [load_rgb(p) for p in refs]
    for i, rgb in enumerate(images):
        assert client.send_and_wait(rgb_to_image_msg(rgb, 1.0 + i), timeout=30) is not None
    for i, rgb in enumerate(images):
        assert client.send_and_wait(rgb_to_image_msg(turned(rgb), 1000.0 + i), timeout=60) is not None
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) == 2 * len(images))
    closures = [c for c in client.loop_closures if c.msg.verified]
    assert len(closures) >= 0.5 * len(images), (len(closures), d)
    errors = []
    for c in closures:
        q = c.msg.relative_pose.pose.orientation
        measured = Rotation.from_quat([q.x, q.y, q.z, q.w])
        # T_query_keyframe: the keyframe camera seen from the query camera, the inverse of the turn.
        errors.append(np.degrees((measured * TURN).magnitude()))
        assert c.msg.inliers >= 20 and not c.msg.metric
        covariance = np.array(c.msg.relative_pose.covariance).reshape(6, 6)
        assert np.all(np.diag(covariance)[3:] < 0.01)  # informative rotation (sigma < 6 degrees)
    assert np.median(errors) < 1.0, errors
    assert d["closures_verified"] == str(len(closures))


def test_without_intrinsics_closures_are_dropped_unless_allowed(start_localize, corridor_map, corridor):
    refs = sorted((corridor / "ref").glob("*.jpg"))[::6]
    images = [load_rgb(p) for p in refs]
    for namespace, allowed in (("/strict", False), ("/lenient", True)):
        client = start_online(start_localize, corridor_map, namespace, **{
            "geometry.camera_hfov_deg": 0.0, "geometry.publish_unverified": allowed}).client
        for lap in (0.0, 1000.0):
            for i, rgb in enumerate(images):
                assert client.send_and_wait(rgb_to_image_msg(rgb, lap + 1.0 + i), timeout=30) is not None
        d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) == 2 * len(images))
        impossible = int(d.get("closures_impossible", 0))
        assert impossible > 0, d
        published = client.wait_for_diagnostic(lambda d: True)["loop_closures"]
        assert int(published) == (impossible if allowed else 0)
        assert all(not c.msg.verified for c in client.loop_closures)
