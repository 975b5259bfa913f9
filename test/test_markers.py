"""RViz markers (vpr_ros/nodes/markers.py) and the RViz config (config/vpr_ros.rviz).

Hypotheses and loop closures come from the real localizer and loop-closure gate on corridor queries against the
corridor map; the messages are serialised and sent over a real rclpy graph on loopback.
"""

from __future__ import annotations

import ast
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import yaml
from rclpy.node import Node
from rclpy.serialization import deserialize_message, serialize_message
from visualization_msgs.msg import Marker, MarkerArray

from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Hypothesis, Localizer, LocalizerConfig
from vpr_ros.core.loop_closure import LoopClosureConfig, LoopClosureGate
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.nodes.markers import (
    NS_CANDIDATES,
    NS_HYPOTHESIS,
    NS_KEYFRAMES,
    NS_LOOP_CLOSURES,
    LoopClosureLinks,
    MarkerStyle,
    candidates_marker,
    confidence_colour,
    delete_all_markers,
    frame_markers,
    hypothesis_markers,
    keyframes_marker,
)


def summary(array: MarkerArray) -> list[tuple]:
    """What each marker says, floats as sent (colours are float32 on the wire, so a message equals its own
    round trip only after one)."""
    return [(m.header.frame_id, m.ns, m.id, m.type, m.action, m.text, xyz(m.points).tobytes(),
             (m.pose.position.x, m.pose.position.y, m.pose.position.z)) for m in array.markers]


def xyz(marker_points: list) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in marker_points], dtype=np.float64).reshape(-1, 3)


@pytest.fixture(scope="module")
def localizer(corridor_map: Path, encoder) -> Localizer:
    return Localizer(ReferenceMap.load(corridor_map), encoder, LocalizerConfig(top_k=5))


@pytest.fixture(scope="module")
def hypotheses(localizer: Localizer, corridor: Path) -> list[Hypothesis]:
    names = sorted(p.name for p in (corridor / "query").iterdir())[30:40]
    return [localizer.localize(load_rgb(corridor / "query" / n), stamp=100.0 + i) for i, n in enumerate(names)]


def test_keyframes_are_the_maps_positions(localizer: Localizer):
    positions = localizer.refmap.frames.positions
    marker = keyframes_marker(positions, localizer.refmap.frame_id)
    assert (marker.ns, marker.id, marker.type, marker.action) == (NS_KEYFRAMES, 0, Marker.SPHERE_LIST, Marker.ADD)
    assert marker.header.frame_id == "map" and len(marker.points) == len(localizer.refmap) > 100
    assert np.array_equal(xyz(marker.points), positions)
    # Unknown positions are left out; a thinned map keeps evenly spaced keyframes, first and last included.
    holes = positions.copy()
    holes[::3] = np.nan
    assert np.array_equal(xyz(keyframes_marker(holes, "map").points), positions[np.isfinite(holes).all(axis=1)])
    thin = xyz(keyframes_marker(positions, "map", max_points=10).points)
    assert len(thin) == 10 and np.array_equal(thin[[0, -1]], positions[[0, -1]])


def test_style_follows_the_keyframe_spacing(localizer: Localizer):
    positions = localizer.refmap.frames.positions
    assert MarkerStyle.for_map(positions) == MarkerStyle()  # the corridor's frames are 1 unit apart
    assert MarkerStyle.for_map(positions * 50).keyframe_size == pytest.approx(MarkerStyle().keyframe_size * 50)


def test_hypothesis_sphere_text_and_arrow(hypotheses: list[Hypothesis]):
    hyp = hypotheses[0]
    sphere, arrow, text = hypothesis_markers(hyp, "map")
    assert [(m.ns, m.id) for m in (sphere, arrow, text)] == [(NS_HYPOTHESIS, 0), (NS_HYPOTHESIS, 1), (NS_HYPOTHESIS, 2)]
    assert sphere.type == Marker.SPHERE and sphere.action == Marker.ADD
    p = sphere.pose.position
    assert (p.x, p.y, p.z) == tuple(hyp.positions[0])
    c = sphere.color
    assert (c.r, c.g, c.b, c.a) == pytest.approx(confidence_colour(hyp.confidence))
    assert text.type == Marker.TEXT_VIEW_FACING and text.text.startswith(f"id {int(hyp.ids[0])}  score ")
    assert (sphere.header.stamp.sec, sphere.header.stamp.nanosec) == (100, 0)
    # The corridor poses have no orientation: the arrow is deleted rather than drawn pointing anywhere.
    assert np.isnan(hyp.orientations[0]).all() and arrow.action == Marker.DELETE
    turned = dataclasses.replace(hyp, orientations=np.tile([0.0, 0.0, 2.0, 2.0], (len(hyp.indices), 1)))
    arrow = hypothesis_markers(turned, "map")[1]
    q = arrow.pose.orientation
    assert arrow.type == Marker.ARROW and arrow.action == Marker.ADD
    assert (q.x, q.y, q.z, q.w) == pytest.approx((0.0, 0.0, np.sqrt(0.5), np.sqrt(0.5)))
    nothing = dataclasses.replace(hyp, indices=hyp.indices[:0], ids=hyp.ids[:0], scores=hyp.scores[:0],
                                  positions=hyp.positions[:0], orientations=hyp.orientations[:0])
    assert [m.action for m in hypothesis_markers(nothing, "map")] == [Marker.DELETE] * 3
    assert candidates_marker(nothing, "map").action == Marker.DELETE


def test_candidates_are_the_other_top_k(hypotheses: list[Hypothesis]):
    hyp = hypotheses[0]
    marker = candidates_marker(hyp, "map")
    assert (marker.ns, marker.id, marker.type) == (NS_CANDIDATES, 0, Marker.SPHERE_LIST)
    assert np.array_equal(xyz(marker.points), hyp.positions[1:]) and len(marker.points) == 4


def test_loop_closure_links_from_the_real_gate(localizer: Localizer, hypotheses: list[Hypothesis]):
    gate = LoopClosureGate(LoopClosureConfig(min_score=0.0, min_consecutive=1, exclusion_window=0.0),
                           localizer.refmap.frames, localizer.config.confidence_radius)
    links = LoopClosureLinks(max_links=4)
    closed = [(h, c) for h in hypotheses if (c := gate.update(h)) is not None]
    assert len(closed) == len(hypotheses)
    for hyp, closure in closed:
        assert links.add(hyp, closure)
    assert len(links) == 4, "only the last max_links are kept"
    lines, ends = links.markers("map", stamp=5.0)
    assert (lines.ns, lines.id, lines.type, ends.ns, ends.id, ends.type) == (
        NS_LOOP_CLOSURES, 0, Marker.LINE_LIST, NS_LOOP_CLOSURES, 1, Marker.SPHERE_LIST)
    expected = np.stack([[h.positions[0], c.position] for h, c in closed[-4:]]).reshape(-1, 3)
    assert np.array_equal(xyz(lines.points), expected)
    assert np.array_equal(xyz(ends.points), expected[1::2])
    links.reset()
    assert [m.action for m in links.markers("map")] == [Marker.DELETE, Marker.DELETE]


def test_frame_markers_ids_unique_and_serialisable(hypotheses: list[Hypothesis], localizer: Localizer):
    links = LoopClosureLinks()
    gate = LoopClosureGate(LoopClosureConfig(min_score=0.0, min_consecutive=1, exclusion_window=0.0),
                           localizer.refmap.frames, localizer.config.confidence_radius)
    links.add(hypotheses[1], gate.update(hypotheses[1]))
    array = frame_markers(hypotheses[1], "map", links)
    keys = [(m.ns, m.id) for m in array.markers]
    assert len(keys) == len(set(keys)) == 6
    assert {m.header.frame_id for m in array.markers} == {"map"}
    wire = serialize_message(array)
    back = deserialize_message(wire, MarkerArray)
    # Compared field by field, not as CDR bytes: the serializer leaves the alignment padding after a string
    # unzeroed, so two serializations of one message can differ there.
    assert summary(back) == summary(array) and as_sent(back) == back
    reset = delete_all_markers("map")
    assert [(m.action, m.ns) for m in reset.markers] == [(Marker.DELETEALL, "")]
    assert summary(deserialize_message(serialize_message(reset), MarkerArray)) == summary(reset)


def as_sent(message: MarkerArray) -> MarkerArray:
    """``message`` as a subscriber receives it: its float32 fields rounded to float32."""
    return deserialize_message(serialize_message(message), MarkerArray)


def test_markers_cross_a_real_graph(graph, hypotheses: list[Hypothesis], localizer: Localizer):
    array = frame_markers(hypotheses[2], "map", LoopClosureLinks())
    array.markers.append(keyframes_marker(localizer.refmap.frames.positions, "map"))
    got: list[MarkerArray] = []
    arrived = threading.Event()
    node = graph.add(Node("marker_check", context=graph.context))
    publisher = node.create_publisher(MarkerArray, "/vpr_markers_check/markers", 10)

    def on_markers(msg: MarkerArray) -> None:
        got.append(msg)
        arrived.set()

    node.create_subscription(MarkerArray, "/vpr_markers_check/markers", on_markers, 10)
    for _ in range(100):  # until discovery has matched publisher and subscription
        publisher.publish(array)
        if arrived.wait(0.1):
            break
    assert got and got[0] == as_sent(array)  # field by field (CDR padding bytes are not zeroed: see above)
    assert summary(got[0]) == summary(array)


def test_rviz_config_shows_the_nodes_topics():
    """config/vpr_ros.rviz subscribes to the topics of the node the launch file starts, in the map frame."""
    launch = ast.parse((PACKAGE_ROOT / "launch" / "localize.launch.py").read_text())
    node_call = next(n for n in ast.walk(launch) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "Node")
    name = ast.literal_eval(next(k.value for k in node_call.keywords if k.arg == "name"))
    config = yaml.safe_load((PACKAGE_ROOT / "config" / "vpr_ros.rviz").read_text())
    manager = config["Visualization Manager"]
    assert manager["Global Options"]["Fixed Frame"] == "map"
    topics = {d["Topic"]["Value"]: d["Class"] for d in manager["Displays"] if "Topic" in d}
    assert topics == {f"/{name}/debug_image": "rviz_default_plugins/Image",
                      f"/{name}/markers": "rviz_default_plugins/MarkerArray",
                      f"/{name}/pose": "rviz_default_plugins/PoseWithCovariance",
                      f"/{name}/candidates": "rviz_default_plugins/PoseArray"}
    markers = next(d for d in manager["Displays"] if d["Class"] == "rviz_default_plugins/MarkerArray")
    assert set(markers["Namespaces"]) == {NS_KEYFRAMES, NS_HYPOTHESIS, NS_CANDIDATES, NS_LOOP_CLOSURES}
