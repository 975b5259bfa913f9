"""The interface package vpr_ros_interfaces: frozen field tables, CDR round trips, and a real rclpy graph.

The package is built with colcon and installed into the venv by ``make interfaces`` (``make test`` does it);
these tests import it in the test process, as the nodes do.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import queue
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, PoseWithCovariance
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from rosidl_adapter.parser import parse_message_file, parse_service_file
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from vpr_ros.nodes.messages import stamp_to_msg

try:
    from vpr_ros_interfaces.msg import LoopClosure, PlaceCandidate, PlaceCandidates
    from vpr_ros_interfaces.srv import Localize, SaveMap
except ImportError as error:  # not a skip: make test builds and installs the package first
    pytest.fail(f"vpr_ros_interfaces is not importable ({error}): run `make interfaces`", pytrace=False)

REPO = Path(__file__).resolve().parents[1]
SOURCE = REPO / "ros" / "vpr_ros_interfaces"
PACKAGE = "vpr_ros_interfaces"

# ---- Frozen field tables -----------------------------------------------------------------------------------
# The fields of each interface in .msg syntax, in order. LoopClosure is defined completely so that consumers
# (pose-graph back ends) never see it change: editing LoopClosure.msg must fail this test. The others change
# only together with this table (and the README's tables).

PLACE_CANDIDATE_FIELDS = (
    ("uint32", "ref_id"), ("builtin_interfaces/Time", "ref_stamp"), ("geometry_msgs/Pose", "pose"),
    ("bool", "pose_known"), ("bool", "orientation_known"), ("float32", "score"), ("uint16", "rank"))
PLACE_CANDIDATES_FIELDS = (
    ("std_msgs/Header", "header"), ("vpr_ros_interfaces/PlaceCandidate[]", "candidates"),
    ("float32", "confidence"), ("uint16", "sequence_length"), ("bool", "reranked"))
LOOP_CLOSURE_FIELDS = (
    ("std_msgs/Header", "header"), ("builtin_interfaces/Time", "query_stamp"), ("string", "query_frame_id"),
    ("uint32", "keyframe_id"), ("builtin_interfaces/Time", "keyframe_stamp"),
    ("geometry_msgs/Pose", "keyframe_pose"), ("bool", "keyframe_pose_known"),
    ("bool", "keyframe_orientation_known"), ("geometry_msgs/PoseWithCovariance", "relative_pose"),
    ("uint32", "inliers"), ("float32", "score"), ("float32", "confidence"), ("bool", "verified"),
    ("bool", "metric"))
LOOP_CLOSURE_CONSTANTS = (("float64", "UNINFORMATIVE_TRANSLATION_VARIANCE", 1.0e12),
                          ("float64", "UNINFORMATIVE_ROTATION_VARIANCE", 1.0e12))
LOCALIZE_REQUEST_FIELDS = (
    ("sensor_msgs/Image", "image"), ("sensor_msgs/CompressedImage", "compressed_image"), ("uint16", "top_k"))
LOCALIZE_RESPONSE_FIELDS = (
    ("bool", "success"), ("string", "message"), ("vpr_ros_interfaces/PlaceCandidates", "candidates"),
    ("geometry_msgs/PoseWithCovarianceStamped", "pose"), ("bool", "pose_valid"))
SAVE_MAP_REQUEST_FIELDS = (("string", "path"), ("bool", "overwrite"))
SAVE_MAP_RESPONSE_FIELDS = (("bool", "success"), ("string", "message"), ("uint32", "keyframes"))

MESSAGES = (("PlaceCandidate", PlaceCandidate, PLACE_CANDIDATE_FIELDS),
            ("PlaceCandidates", PlaceCandidates, PLACE_CANDIDATES_FIELDS),
            ("LoopClosure", LoopClosure, LOOP_CLOSURE_FIELDS))

#: .msg primitive type -> the IDL name the generated Python classes report.
_IDL_PRIMITIVES = {"bool": "boolean", "float32": "float", "float64": "double"}


def idl_type(msg_type: str) -> str:
    """``float32`` -> ``float``, ``pkg/Type[]`` -> ``sequence<pkg/Type>``: what get_fields_and_field_types says."""
    if msg_type.endswith("[]"):
        return f"sequence<{idl_type(msg_type[:-2])}>"
    return _IDL_PRIMITIVES.get(msg_type, msg_type)


def source_fields(spec) -> tuple[tuple[str, str], ...]:
    return tuple((str(field.type), field.name) for field in spec.fields)


@pytest.mark.parametrize(("name", "cls", "table"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_message_fields_match_the_table(name: str, cls: type, table: tuple[tuple[str, str], ...]) -> None:
    spec = parse_message_file(PACKAGE, str(SOURCE / "msg" / f"{name}.msg"))
    assert source_fields(spec) == table, f"msg/{name}.msg changed: update the table here and the README"
    # The installed package is the one built from these sources (else: a stale `make interfaces`).
    assert cls.get_fields_and_field_types() == {n: idl_type(t) for t, n in table}, (
        f"installed {PACKAGE}/{name} differs from msg/{name}.msg: run `make interfaces`")


def test_loop_closure_constants_match_the_table() -> None:
    spec = parse_message_file(PACKAGE, str(SOURCE / "msg" / "LoopClosure.msg"))
    assert tuple((c.type, c.name, c.value) for c in spec.constants) == LOOP_CLOSURE_CONSTANTS
    assert [(name, getattr(LoopClosure, name)) for _, name, _ in LOOP_CLOSURE_CONSTANTS] == [
        (name, value) for _, name, value in LOOP_CLOSURE_CONSTANTS]


@pytest.mark.parametrize(("name", "cls", "request_table", "response_table"), [
    ("Localize", Localize, LOCALIZE_REQUEST_FIELDS, LOCALIZE_RESPONSE_FIELDS),
    ("SaveMap", SaveMap, SAVE_MAP_REQUEST_FIELDS, SAVE_MAP_RESPONSE_FIELDS)], ids=["Localize", "SaveMap"])
def test_service_fields_match_the_table(name: str, cls: type, request_table, response_table) -> None:
    spec = parse_service_file(PACKAGE, str(SOURCE / "srv" / f"{name}.srv"))
    assert source_fields(spec.request) == request_table
    assert source_fields(spec.response) == response_table
    for part, table in ((cls.Request, request_table), (cls.Response, response_table)):
        assert part.get_fields_and_field_types() == {n: idl_type(t) for t, n in table}, (
            f"installed {PACKAGE}/{name} differs from srv/{name}.srv: run `make interfaces`")


# ---- Messages with real values ---------------------------------------------------------------------------------
# Scores and confidences are float32 fields: the values below are exact in float32, so a round trip compares equal.

def corridor_reference_rows(corridor: Path) -> list[dict[str, str]]:
    """Rows of the corridor's ref_poses.csv (name, x, y, stamp; positions only, no orientation)."""
    with open(corridor / "ref_poses.csv", newline="") as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


def place_candidates(corridor: Path, query_stamp: Time, ref_ids: list[int], scores: list[float]) -> PlaceCandidates:
    """Candidates for the corridor map frames ``ref_ids`` (best first) with their recorded poses and stamps."""
    rows = corridor_reference_rows(corridor)
    candidates = []
    for rank, (ref_id, score) in enumerate(zip(ref_ids, scores, strict=True)):
        row = rows[ref_id]
        pose = Pose()
        pose.position.x, pose.position.y = float(row["x"]), float(row["y"])
        candidates.append(PlaceCandidate(ref_id=ref_id, ref_stamp=stamp_to_msg(float(row["stamp"])), pose=pose,
                                         pose_known=True, orientation_known=False, score=score, rank=rank))
    return PlaceCandidates(header=Header(stamp=query_stamp, frame_id="map"), candidates=candidates,
                           confidence=0.625, sequence_length=1, reranked=True)


def verified_loop_closure(corridor: Path) -> LoopClosure:
    """Query 42 (stamped 1700000021.25 s) closing a loop with map frame 40, 1.5 m ahead, yawed by 0.1 rad."""
    keyframe = corridor_reference_rows(corridor)[40]
    query_stamp = stamp_to_msg(1_700_000_021.25)
    keyframe_pose = Pose()
    keyframe_pose.position.x, keyframe_pose.position.y = float(keyframe["x"]), float(keyframe["y"])
    covariance = np.diag([0.04, 0.04, 0.09, 0.01, 0.01, 0.0025])
    covariance[0, 1] = covariance[1, 0] = 0.01  # a correlated x-y estimate: checks the row-major layout
    relative = PoseWithCovariance(covariance=covariance.ravel().tolist())
    relative.pose.position.z = 1.5
    relative.pose.orientation.y, relative.pose.orientation.w = np.sin(0.05), np.cos(0.05)
    return LoopClosure(header=Header(stamp=query_stamp, frame_id="map"), query_stamp=query_stamp,
                       query_frame_id="camera_optical_frame", keyframe_id=40,
                       keyframe_stamp=stamp_to_msg(float(keyframe["stamp"])), keyframe_pose=keyframe_pose,
                       keyframe_pose_known=True, keyframe_orientation_known=False, relative_pose=relative,
                       inliers=187, score=0.828125, confidence=0.71875, verified=True, metric=True)


def corridor_query_image(corridor: Path, index: int, stamp: Time) -> tuple[Image, CompressedImage]:
    """The corridor query image ``index`` as a raw bgr8 Image and as the JPEG it is stored as."""
    path = corridor / "query" / f"{index:07d}.jpg"
    pixels = cv2.imread(str(path), cv2.IMREAD_COLOR)
    header = Header(stamp=stamp, frame_id="camera_optical_frame")
    raw = Image(header=header, height=pixels.shape[0], width=pixels.shape[1], encoding="bgr8", is_bigendian=0,
                step=pixels.shape[1] * 3, data=pixels.tobytes())
    return raw, CompressedImage(header=header, format="jpeg", data=path.read_bytes())


def test_messages_survive_cdr_serialization(corridor: Path) -> None:
    stamp = stamp_to_msg(1_700_000_021.25)
    candidates = place_candidates(corridor, stamp, [40, 41, 12], [0.90625, 0.875, 0.34375])
    raw, compressed = corridor_query_image(corridor, 42, stamp)
    response = Localize.Response(success=True, message="", candidates=candidates, pose_valid=True)
    response.pose.header = candidates.header
    response.pose.pose.pose = candidates.candidates[0].pose
    messages = [candidates.candidates[0], candidates, verified_loop_closure(corridor),
                Localize.Request(image=raw, top_k=3), Localize.Request(compressed_image=compressed), response]
    for message in messages:
        restored = deserialize_message(serialize_message(message), type(message))
        assert restored == message, type(message).__name__
        assert restored != type(message)(), f"{type(message).__name__} was built with default values only"
    closure = deserialize_message(serialize_message(messages[2]), LoopClosure)
    assert np.asarray(closure.relative_pose.covariance).reshape(6, 6)[1, 0] == pytest.approx(0.01)


# ---- On a real rclpy graph (own context, loopback) ----------------------------------------------------------

def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} within {timeout:.0f} s")
        time.sleep(0.05)


def test_loop_closure_crosses_a_real_graph(graph, corridor: Path) -> None:
    topic = "/vpr_interfaces_test/loop_closure"
    received: queue.Queue[LoopClosure] = queue.Queue()
    listener = graph.add(Node("loop_closure_listener", context=graph.context))
    listener.create_subscription(LoopClosure, topic, received.put, 10)
    talker = graph.add(Node("loop_closure_talker", context=graph.context))
    publisher = talker.create_publisher(LoopClosure, topic, 10)
    wait_until(lambda: publisher.get_subscription_count() > 0, 10.0, "the listener was not discovered")
    sent = verified_loop_closure(corridor)
    # Publish until one arrives: the listener's side of discovery can lag the talker's by a few ms.
    deadline = time.monotonic() + 10.0
    while received.empty() and time.monotonic() < deadline:
        publisher.publish(sent)
        time.sleep(0.1)
    assert not received.empty(), "no LoopClosure arrived within 10 s"
    assert received.get() == sent


DEFAULT_TOP_K = 5


class TinyLocalizeServer:
    """A stand-in answering Localize from the request alone (a test of the interface, not of the node).

    It enforces the "set exactly one image" rule, answers ``top_k`` corridor candidates (``DEFAULT_TOP_K`` for
    0) stamped with the request image's stamp, and reports the sha256 of the image bytes it received in
    ``message`` so that the test can check the payload crossed intact.
    """

    def __init__(self, node: Node, name: str, corridor: Path) -> None:
        self.corridor = corridor
        node.create_service(Localize, name, self.localize)

    def localize(self, request: Localize.Request, response: Localize.Response) -> Localize.Response:
        has_raw, has_compressed = len(request.image.data) > 0, len(request.compressed_image.data) > 0
        if has_raw == has_compressed:
            response.success = False
            response.message = "set exactly one of image and compressed_image"
            return response
        image = request.image if has_raw else request.compressed_image
        top_k = request.top_k or DEFAULT_TOP_K
        ref_ids = list(range(40, 40 + top_k))
        response.candidates = place_candidates(self.corridor, image.header.stamp, ref_ids,
                                               [0.9 - 0.05 * i for i in range(top_k)])
        best = response.candidates.candidates[0]
        response.pose.header = response.candidates.header
        response.pose.pose.pose = best.pose
        response.pose_valid = best.pose_known
        response.success = True
        response.message = hashlib.sha256(bytes(image.data)).hexdigest()
        return response


def test_localize_service_on_a_real_graph(graph, corridor: Path) -> None:
    service = "/vpr_interfaces_test/localize"
    TinyLocalizeServer(graph.add(Node("tiny_localize_server", context=graph.context)), service, corridor)
    client_node = graph.add(Node("tiny_localize_client", context=graph.context))
    client = client_node.create_client(Localize, service)
    assert client.wait_for_service(timeout_sec=10.0), "the Localize server was not discovered within 10 s"

    def call(request: Localize.Request) -> Localize.Response:
        future = client.call_async(request)
        wait_until(future.done, 10.0, "no Localize response")
        return future.result()

    stamp = stamp_to_msg(1_700_000_021.25)
    raw, compressed = corridor_query_image(corridor, 42, stamp)

    answer = call(Localize.Request(compressed_image=compressed, top_k=3))
    assert answer.success
    assert answer.message == hashlib.sha256(compressed.data.tobytes()).hexdigest()
    assert answer.candidates.header == Header(stamp=stamp, frame_id="map")
    assert [c.ref_id for c in answer.candidates.candidates] == [40, 41, 42]
    assert [c.rank for c in answer.candidates.candidates] == [0, 1, 2]
    assert answer.candidates.candidates[2].pose.position.x == pytest.approx(42.0)  # ref_poses.csv: x = index
    assert answer.pose_valid and answer.pose.header.stamp == stamp
    assert answer.pose.pose.pose == answer.candidates.candidates[0].pose

    answer = call(Localize.Request(image=raw))  # top_k 0: the server's default
    assert answer.success
    assert answer.message == hashlib.sha256(raw.data.tobytes()).hexdigest()
    assert len(answer.candidates.candidates) == DEFAULT_TOP_K

    for both_or_neither in (Localize.Request(image=raw, compressed_image=compressed), Localize.Request()):
        answer = call(both_or_neither)
        assert not answer.success and answer.message == "set exactly one of image and compressed_image"
        assert not answer.pose_valid and answer.candidates.candidates == []


# ---- tools/patch_rosidl_wheels.py ---------------------------------------------------------------------------

def test_patch_rosidl_wheels_replaces_the_builders_include_dirs_once(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("patch_rosidl_wheels", REPO / "tools" / "patch_rosidl_wheels.py")
    patcher = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(patcher)
    # The line as the ros-kilted-std-msgs 5.5.1 wheel ships it (share/std_msgs/cmake/...pyExport.cmake, line 62).
    shipped = ('set_target_properties(std_msgs::std_msgs__rosidl_generator_py PROPERTIES\n'
               '  INTERFACE_INCLUDE_DIRECTORIES "/opt/python/cp311-cp311/include/python3.11;'
               '/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"\n)\n')
    export = tmp_path / "export_std_msgs__rosidl_generator_pyExport.cmake"
    export.write_text(shipped)
    ours = "/venv/include/python3.11;/venv/site-packages/numpy/_core/include"
    assert patcher.patch_export_file(export, ours)
    assert export.read_text() == shipped.replace(shipped.split('"')[1], ours)
    assert not patcher.patch_export_file(export, ours), "a second run must change nothing"
    apt_installed = tmp_path / "apt.cmake"  # ROS 2 from apt: right as installed, left alone
    apt_installed.write_text('  INTERFACE_INCLUDE_DIRECTORIES "/usr/include/python3.12"\n')
    assert not patcher.patch_export_file(apt_installed, ours)
    assert apt_installed.read_text() == '  INTERFACE_INCLUDE_DIRECTORIES "/usr/include/python3.12"\n'
