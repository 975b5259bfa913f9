"""Parameters changed while the localize node runs, through the standard parameter services (rclpy's
AsyncParameterClient, as ``ros2 param set`` uses them) on a real rclpy graph with corridor images."""

from __future__ import annotations

import time
from typing import Any

import pytest
from rcl_interfaces.msg import SetParametersResult
from rclpy.parameter import Parameter, parameter_value_to_python
from rclpy.parameter_client import AsyncParameterClient

from vpr_ros.core.image import load_rgb
from vpr_ros.nodes.localize import RUNTIME_PARAMETERS, runtime_changeable
from vpr_ros.nodes.replay import LocalizeClient, rgb_to_image_msg

pytestmark = pytest.mark.ros

NODE = "/rp/localize"


def wait(future: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert future.done(), "the parameter service did not answer"
    return future.result()


def set_parameter(parameters: AsyncParameterClient, name: str, value: Any) -> SetParametersResult:
    (result,) = wait(parameters.set_parameters([Parameter(name, value=value)])).results
    return result


def get_parameter(parameters: AsyncParameterClient, name: str) -> Any:
    (value,) = wait(parameters.get_parameters([name])).values
    return parameter_value_to_python(value)


class Frames:
    """Corridor query 30 at increasing stamps; each send waits for the node's answer."""

    def __init__(self, client: LocalizeClient, corridor) -> None:
        self.client = client
        self.rgb = load_rgb(corridor / "query" / "0000030.jpg")
        self.stamp = 0.0

    def answer(self):
        self.stamp += 1.0
        answer = self.client.send_and_wait(rgb_to_image_msg(self.rgb, self.stamp), timeout=30)
        assert answer is not None
        return answer


def test_runtime_parameters_apply_at_the_next_frame_and_invalid_ones_are_refused(start_localize, corridor_map,
                                                                                corridor):
    endpoint = start_localize(corridor_map, "/rp", **{"localizer.top_k": 5})
    client, node = endpoint.client, endpoint.node
    parameters = AsyncParameterClient(client, NODE)
    assert parameters.wait_for_services(30)
    frames = Frames(client, corridor)
    assert len(frames.answer().ref_ids) == 5

    # Accepted: the next frame has 3 candidates; the map was not loaded again.
    result = set_parameter(parameters, "localizer.top_k", 3)
    assert result.successful, result.reason
    assert get_parameter(parameters, "localizer.top_k") == 3
    answer = frames.answer()
    assert len(answer.ref_ids) == 3 and abs(int(answer.ref_ids[0]) - 30) <= 2

    # Refused with a reason naming the parameter; the old value stays and still applies.
    refused = {
        ("localizer.top_k", 0): "localizer.top_k: 0 is below the minimum 1",
        ("localizer.sequence.method", "seqslamm"): "localizer.sequence.method: 'seqslamm' is not one of",
        ("loop_closure.min_consecutive", 0): "loop_closure.min_consecutive: 0 is below the minimum 1",
        ("position_sigma_max", 0.5): "position_sigma_max must be >= position_sigma_min",
        ("map_path", "/elsewhere"): "read-only parameter: map_path",
        ("localizer.encoder.model", "other.onnx"): "read-only parameter: localizer.encoder.model",
    }
    for (name, value), reason in refused.items():
        before = get_parameter(parameters, name)
        result = set_parameter(parameters, name, value)
        assert not result.successful and reason in result.reason, (name, result.reason)
        assert get_parameter(parameters, name) == before
    assert node.config.localizer.top_k == 3 and node.config.localizer.sequence.method == "none"
    assert len(frames.answer().ref_ids) == 3

    # An integer for a float parameter is that float (ros2 param set ... 3); thresholds reach the gate.
    assert set_parameter(parameters, "localizer.confidence_radius", 3).successful
    assert get_parameter(parameters, "localizer.confidence_radius") == 3.0
    assert set_parameter(parameters, "loop_closure.min_consecutive", 1).successful
    assert set_parameter(parameters, "loop_closure.min_score", 0.5).successful
    assert node.gate is not None and node.gate.config.min_consecutive == 1 and node.gate.config.min_score == 0.5
    assert node.gate.confidence_radius == 3.0

    # Sequence method and length: the sequence stage is rebuilt on the loaded map.
    localizer = node.localizer
    assert set_parameter(parameters, "localizer.sequence.method", "seq2im_min").successful
    assert set_parameter(parameters, "localizer.sequence.length", 3).successful
    for _ in range(4):
        assert len(frames.answer().ref_ids) == 3
    d = client.wait_for_diagnostic(lambda d: d.get("sequence_method") == "seq2im_min"
                                   and d.get("sequence_buffered") == "3")
    assert d is not None, client.latest_diagnostic()
    assert d["map_loads"] == "1" and node.localizer is localizer

    # rclpy's own parameters are not the config's business.
    assert set_parameter(parameters, "use_sim_time", False).successful

    # Turning loop closures off and on again at run time.
    assert set_parameter(parameters, "loop_closure.enabled", False).successful and node.gate is None
    assert set_parameter(parameters, "loop_closure.enabled", True).successful and node.gate is not None


def test_parameter_descriptors_say_which_can_change(start_localize, corridor_map):
    node = start_localize(corridor_map, "/rp_desc").node
    names = [name for name, _ in node.get_parameters_by_prefix("").items()]
    changeable = {name for name in names if runtime_changeable(name)}
    # Every entry of RUNTIME_PARAMETERS names real parameters (a renamed field must not silently go read-only).
    for entry in RUNTIME_PARAMETERS:
        assert any(name == entry or (entry.endswith(".") and name.startswith(entry)) for name in changeable), entry
    for name in names:
        descriptor = node.describe_parameter(name)
        if name == "use_sim_time":
            continue
        assert descriptor.read_only == (name not in changeable), name
        assert ("Can be changed at run time" in descriptor.description) == (name in changeable), name
    assert "localizer.top_k" in changeable and "loop_closure.min_score" in changeable
    assert "map_path" not in changeable and "image_transport" not in changeable
    assert "Read-only while the node runs" in node.describe_parameter("map_path").description
