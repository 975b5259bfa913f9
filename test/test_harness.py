"""The node harness: parameters passed to a node process unchanged, everything stopped on exit, failures raised."""

from __future__ import annotations

import threading

import pytest
from rclpy.node import Node

from vpr_ros.nodes.harness import (
    LocalizeLaunch,
    RosGraph,
    parse_parameter_assignments,
    ros_argument_value,
)

pytestmark = pytest.mark.ros


def test_parameter_values_keep_their_type_on_the_command_line():
    assert ros_argument_value("thumbnail:64x32,patch=8") == "thumbnail:64x32,patch=8"
    assert ros_argument_value("/maps/corridor") == "/maps/corridor"
    assert ros_argument_value("5") == '"5"' and ros_argument_value("true") == '"true"'
    assert ros_argument_value("") == '""'
    assert ros_argument_value(True) == "true" and ros_argument_value(3) == "3" and ros_argument_value(0.25) == "0.25"
    assert ros_argument_value([1.0, 2.5]) == "[1.0, 2.5]"
    with pytest.raises(TypeError, match="not None"):
        ros_argument_value(None)  # type: ignore[arg-type]


def test_parameter_assignments_read_as_yaml():
    assert parse_parameter_assignments(["localizer.top_k:=5", "map_path:=/m", "verify_map:=false"]) == {
        "localizer.top_k": 5, "map_path": "/m", "verify_map": False}
    with pytest.raises(ValueError, match="name:=value"):
        parse_parameter_assignments(["localizer.top_k=5"])


def test_launch_names_and_process_arguments(tmp_path):
    launch = LocalizeLaunch({"map_path": "/m", "image_transport": "compressed", "localizer.top_k": 5},
                            namespace="/cam", params_file=tmp_path / "p.yaml", own_process=True)
    assert launch.image_topic == "/cam/image/compressed" and launch.node_name == "/cam/localize"
    assert launch.ros_arguments() == ["--params-file", str(tmp_path / "p.yaml"), "-r", "__ns:=/cam",
                                      "-p", "map_path:=/m", "-p", "image_transport:=compressed",
                                      "-p", "localizer.top_k:=5"]
    assert LocalizeLaunch().image_topic == "/image" and LocalizeLaunch().node_name == "/localize"
    with pytest.raises(ValueError, match="absolute"):
        LocalizeLaunch(namespace="cam")


def test_exit_stops_node_worker_spin_thread_and_context(corridor_map, default_model):
    with RosGraph(threads=4) as graph:
        localize = graph.start_localize(LocalizeLaunch({"map_path": str(corridor_map),
                                                        "localizer.encoder.model": str(default_model)},
                                                       namespace="/stop"))
        assert localize.node is not None and localize.node.localizer is not None and graph.context.ok()
        running = {t.name for t in threading.enumerate()}
        assert {"ros_graph_spin", "vpr_localize_worker"} <= running
    assert not graph.context.ok()
    left = {t.name for t in threading.enumerate()}
    assert not {"ros_graph_spin", "vpr_localize_worker"} & left, left


def test_a_failing_callback_is_raised_when_the_graph_closes():
    fired = threading.Event()

    def fail() -> None:
        fired.set()
        raise ValueError("callback bug")

    with pytest.raises(RuntimeError, match="callback failed") as failure, RosGraph() as graph:
        node = graph.add(Node("failing", context=graph.context))
        node.create_timer(0.01, fail)
        assert fired.wait(10)
    assert isinstance(failure.value.__cause__, ValueError)


def test_nodes_of_another_context_are_refused():
    with RosGraph() as first, RosGraph() as second:
        stranger = Node("stranger", context=first.context)
        try:
            with pytest.raises(ValueError, match="another context"):
                second.add(stranger)
        finally:
            stranger.destroy_node()
