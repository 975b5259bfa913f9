"""The localize node's one-shot service, debug image and RViz markers, on real rclpy graphs with corridor images."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker, MarkerArray
from vpr_ros_interfaces.srv import Localize

from vpr_ros.core.image import load_rgb
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.nodes.harness import call_service, change_lifecycle_state
from vpr_ros.nodes.messages import candidates_from_msg
from vpr_ros.nodes.replay import jpeg_to_compressed_msg, rgb_to_image_msg

pytestmark = pytest.mark.ros


def localize_request(rgb: np.ndarray | None = None, jpeg: bytes | None = None, stamp: float = 7.0,
                     top_k: int = 0) -> Localize.Request:
    request = Localize.Request(top_k=top_k)
    if rgb is not None:
        request.image = rgb_to_image_msg(rgb, stamp)
    if jpeg is not None:
        request.compressed_image = jpeg_to_compressed_msg(jpeg, stamp)
    return request


class Inbox:
    """Messages of one topic, received by a subscription on the client node."""

    def __init__(self, node, msg_type, topic: str) -> None:
        self.messages: list = []
        self._cond = threading.Condition()
        self.subscription = node.create_subscription(msg_type, topic, self._on_message, 10)

    def _on_message(self, msg) -> None:
        with self._cond:
            self.messages.append(msg)
            self._cond.notify_all()

    def wait(self, predicate, timeout: float = 30.0):
        with self._cond:
            self._cond.wait_for(lambda: any(predicate(m) for m in self.messages), timeout)
            return next((m for m in self.messages if predicate(m)), None)


def test_localize_service_gives_the_topic_paths_single_frame_answer(start_localize, corridor_patch_map, corridor):
    endpoint = start_localize(corridor_patch_map, "/oneshot")
    client = endpoint.client
    service = "/oneshot/localize/localize"
    for name in ("0000042.jpg", "0000077.jpg"):
        rgb = load_rgb(corridor / "query" / name)
        topic_answer = client.send_and_wait(rgb_to_image_msg(rgb, 50.0 + int(name[:7])), timeout=30)
        response = call_service(client, Localize, service, localize_request(rgb, stamp=3.0))
        assert topic_answer is not None and response is not None and response.success, response
        table = candidates_from_msg(response.candidates)
        assert table.ids.tolist() == topic_answer.ref_ids.tolist()
        np.testing.assert_allclose(table.scores, topic_answer.scores, rtol=1e-6)
        assert response.candidates.reranked and response.candidates.header.stamp.sec == 3
        assert response.pose_valid and response.pose.pose.pose.position.x == float(table.ids[0])

    jpeg = (corridor / "query" / "0000042.jpg").read_bytes()
    response = call_service(client, Localize, service, localize_request(jpeg=jpeg, top_k=3))
    assert response.success and len(response.candidates.candidates) == 3
    assert [c.rank for c in response.candidates.candidates] == [0, 1, 2]
    for request, reason in ((localize_request(), "neither"),
                            (localize_request(load_rgb(corridor / "query" / "0000042.jpg"), jpeg), "both")):
        response = call_service(client, Localize, service, request)
        assert not response.success and reason in response.message
    bad = localize_request(jpeg=b"\xff\xd8\xff" + bytes(200))
    response = call_service(client, Localize, service, bad)
    assert not response.success and response.message.startswith("bad image")


def test_localize_service_leaves_the_live_sequence_alone(start_localize, corridor_map, corridor):
    endpoint = start_localize(corridor_map, "/oneshot_seq", **{"localizer.sequence.method": "seqslam",
                                                                "localizer.sequence.length": 5})
    client = endpoint.client
    queries = sorted((corridor / "query").glob("*.jpg"))[40:43]
    for i, path in enumerate(queries):
        assert client.send_and_wait(rgb_to_image_msg(load_rgb(path), 10.0 + i), timeout=30) is not None
    before = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) == 3)
    rgb = load_rgb(corridor / "query" / "0000090.jpg")
    response = call_service(client, Localize, "/oneshot_seq/localize/localize", localize_request(rgb))
    assert response is not None and response.success
    expected = endpoint.node.localizer.localize_single_frame(rgb)
    assert candidates_from_msg(response.candidates).ids.tolist() == expected.ids.tolist()
    assert response.candidates.sequence_length == 1
    after = client.wait_for_diagnostic(lambda d: d["frames_processed"] == before["frames_processed"])
    assert after["sequence_buffered"] == before["sequence_buffered"] == "3"


def test_localize_service_refuses_without_a_map(start_localize, corridor_map):
    endpoint = start_localize(corridor_map, "/oneshot_idle", autostart=False)
    response = call_service(endpoint.client, Localize, "/oneshot_idle/localize/localize",
                            localize_request(np.zeros((120, 160, 3), np.uint8)))
    assert response is not None and not response.success and "unconfigured" in response.message
    assert change_lifecycle_state(endpoint.client, "/oneshot_idle/localize", "configure")
    response = call_service(endpoint.client, Localize, "/oneshot_idle/localize/localize",
                            localize_request(np.zeros((120, 160, 3), np.uint8)))
    assert response.success  # configured (inactive) is enough for a one-shot answer


def test_debug_image_is_rendered_only_for_a_subscriber(start_localize, corridor_patch_map, corridor):
    endpoint = start_localize(corridor_patch_map, "/debug")
    client = endpoint.client
    rgb = load_rgb(corridor / "query" / "0000063.jpg")
    assert client.send_and_wait(rgb_to_image_msg(rgb, 1.0), timeout=30) is not None
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) >= 1)
    assert d["debug_images"] == "0"

    inbox = Inbox(client, Image, "/debug/localize/debug_image")
    for stamp in np.arange(2.0, 40.0):  # until discovery connects the subscription
        answer = client.send_and_wait(rgb_to_image_msg(rgb, float(stamp)), timeout=30)
        if inbox.wait(lambda m: True, timeout=1.0) is not None:
            break
    image = inbox.wait(lambda m: True)
    assert image is not None and answer is not None
    assert image.encoding == "rgb8" and image.header.frame_id == "map"
    canvas = np.frombuffer(bytes(image.data), np.uint8).reshape(image.height, image.width, 3)
    assert canvas.shape[1] > 2 * rgb.shape[1] and canvas.shape[0] > rgb.shape[0]
    assert canvas.std() > 20  # two photos and coloured match lines, not a blank panel
    d = client.wait_for_diagnostic(lambda d: int(d["debug_images"]) >= 1)
    assert d is not None and d["errors_total"] == "0"


def test_markers_show_the_map_and_the_current_hypothesis(start_localize, corridor_map, corridor):
    endpoint = start_localize(corridor_map, "/viz")
    client = endpoint.client
    inbox = Inbox(client, MarkerArray, "/viz/localize/markers")
    keyframes = inbox.wait(lambda m: any(k.ns == "keyframes" for k in m.markers))
    assert keyframes is not None, "the map's keyframes are sent to a new viewer"
    marker = next(k for k in keyframes.markers if k.ns == "keyframes")
    positions = ReferenceMap.load(corridor_map).frames.positions
    assert marker.action == Marker.ADD and len(marker.points) == len(positions)
    np.testing.assert_allclose([p.x for p in marker.points], positions[:, 0])

    rgb = load_rgb(corridor / "query" / "0000042.jpg")
    answer = client.send_and_wait(rgb_to_image_msg(rgb, 5.0), timeout=30)
    current = inbox.wait(lambda m: any(k.ns == "hypothesis" for k in m.markers))
    assert current is not None and answer is not None
    sphere = next(k for k in current.markers if k.ns == "hypothesis" and k.type == Marker.SPHERE)
    assert sphere.pose.position.x == pytest.approx(answer.positions[0, 0])
    assert current.markers[0].header.frame_id == "map"
