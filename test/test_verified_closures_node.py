"""Loop closures through the localize node with geometric verification, on real corridor images whose second lap
is the first seen by a camera turned by a known angle (H = K R K^-1: ground truth by construction)."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import Image

from vpr_ros.core.geometry import CameraIntrinsics
from vpr_ros.core.image import load_rgb
from vpr_ros.eval.synthetic_views import planar_view
from vpr_ros.nodes.messages import stamp_to_msg
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


def test_depth_gives_metric_closures(start_localize, corridor_map, corridor):
    """Each first-lap keyframe comes with a registered depth image of a wall 3 m ahead; the second lap is that
    wall seen from 0.25 m to the side: PnP on the keyframe's depths measures the translation in metres."""
    endpoint = start_online(start_localize, corridor_map, "/metric")
    client = endpoint.client
    depth_pub = client.create_publisher(Image, "/metric/depth", 10)
    refs = sorted((corridor / "ref").glob("*.jpg"))[::6]
    images = [load_rgb(p) for p in refs]
    camera = CameraIntrinsics.nominal(images[0].shape[1], images[0].shape[0], HFOV)
    translation = np.array([0.25, 0.0, 0.0])
    views = [planar_view(rgb, camera, np.eye(3), translation, np.array([0.0, 0.0, 1.0]), 3.0) for rgb in images]
    for _ in range(100):  # the node must see the depth publisher before the first depth image
        if depth_pub.get_subscription_count():
            break
        time.sleep(0.05)
    for i, (rgb, view) in enumerate(zip(images, views, strict=True)):
        depth = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="32FC1", step=rgb.shape[1] * 4,
                      data=view.keyframe_depth.astype("<f4").tobytes())
        depth.header.stamp = stamp_to_msg(1.0 + i)
        depth_pub.publish(depth)
        time.sleep(0.05)
        assert client.send_and_wait(rgb_to_image_msg(rgb, 1.0 + i), timeout=30) is not None
    for i, view in enumerate(views):
        assert client.send_and_wait(rgb_to_image_msg(view.query, 1000.0 + i), timeout=60) is not None
    metric = [c for c in client.loop_closures if c.msg.verified and c.msg.metric]
    assert len(metric) >= 0.5 * len(images), [(c.msg.verified, c.msg.metric) for c in client.loop_closures]
    errors = [np.linalg.norm(np.array([c.msg.relative_pose.pose.position.x, c.msg.relative_pose.pose.position.y,
                                       c.msg.relative_pose.pose.position.z]) - translation) for c in metric]
    assert np.median(errors) < 0.05, errors  # metres, of a 0.25 m offset
