"""Real rclpy graphs on loopback: publisher -> localize node -> subscriber, on real corridor images."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.ros

rclpy = pytest.importorskip("rclpy")
from rclpy.executors import MultiThreadedExecutor  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from vpr_ros.core.image import load_rgb  # noqa: E402
from vpr_ros.nodes.localize import LocalizeNode  # noqa: E402
from vpr_ros.nodes.messages import stamp_to_msg  # noqa: E402
from vpr_ros.nodes.replay import LocalizeClient, NodeProcess, jpeg_to_compressed_msg, rgb_to_image_msg  # noqa: E402


class Graph:
    """Nodes of one test, spun by a multi-threaded executor in a background thread."""

    def __init__(self) -> None:
        self.executor = MultiThreadedExecutor(num_threads=4)
        self.nodes: list = []
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(timeout=10)  # spin must have returned before rclpy shuts the context down
        for node in self.nodes:
            if isinstance(node, LocalizeNode):
                node.shutdown()
            node.destroy_node()


@pytest.fixture
def graph() -> Iterator[Graph]:
    rclpy.init()
    g = Graph()
    try:
        yield g
    finally:
        g.close()
        rclpy.try_shutdown()


def localize_node(map_path: Path, model: Path, namespace: str, **params) -> LocalizeNode:
    overrides = [Parameter("map_path", value=str(map_path)),
                 Parameter("localizer.encoder.model", value=str(model)),
                 Parameter("diagnostics_period", value=0.2),
                 *(Parameter(k, value=v) for k, v in params.items())]
    return LocalizeNode(namespace=namespace, parameter_overrides=overrides)


def wait_diag(client: LocalizeClient, predicate, timeout: float = 20.0) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        d = client.latest_diagnostic()
        if d and predicate(d):
            return d
        time.sleep(0.05)
    raise AssertionError(f"diagnostics never satisfied the condition; last: {client.latest_diagnostic()}")


def test_graph_localizes_real_corridor_queries(graph, corridor_map, default_model, corridor,
                                               corridor_ground_truth):
    graph.add(localize_node(corridor_map, default_model, "/vpr"))
    client = graph.add(LocalizeClient(node_namespace="/vpr/localize", image_topic="/vpr/image"))
    assert client.wait_until_ready(30)
    queries = sorted((corridor / "query").glob("*.jpg"))[::4]
    correct = 0
    for path in queries:
        qi = int(path.stem)
        answer = client.send_and_wait(rgb_to_image_msg(load_rgb(path), 100.0 + qi, encoding="bgr8"), timeout=30)
        assert answer is not None, f"no answer for {path.name}"
        assert len(answer.ref_ids) == 10
        correct += int(answer.ref_ids[0] in corridor_ground_truth[qi])
        np.testing.assert_allclose(answer.positions[0, 0], float(answer.ref_ids[0]))  # nominal pose x = index
    assert correct / len(queries) >= 0.85, f"top-1 correct on {correct}/{len(queries)} queries"
    d = wait_diag(client, lambda d: int(d["frames_processed"]) >= len(queries))
    assert d["level"] == "0" and d["message"] == "localizing" and int(d["errors_total"]) == 0
    assert float(d["latency_p50_ms"]) > 0


def test_bad_inputs_are_reported_and_node_keeps_running(graph, corridor_map, default_model, corridor):
    raw = graph.add(localize_node(corridor_map, default_model, "/raw"))
    comp = graph.add(localize_node(corridor_map, default_model, "/comp", image_transport="compressed"))
    raw_client = graph.add(LocalizeClient("/raw/localize", "/raw/image", name="raw_client"))
    comp_client = graph.add(LocalizeClient("/comp/localize", "/comp/image/compressed", compressed=True,
                                           name="comp_client"))
    assert raw_client.wait_until_ready(30) and comp_client.wait_until_ready(30)
    good = load_rgb(corridor / "query" / "0000042.jpg")
    jpeg = (corridor / "query" / "0000042.jpg").read_bytes()

    # Raw transport: unsupported encoding, zero-size image, truncated data.
    wrong = Image(height=4, width=4, encoding="32FC1", step=16, data=bytes(64))
    empty = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
    short = Image(height=120, width=160, encoding="rgb8", step=480, data=bytes(100))
    for i, bad in enumerate((wrong, empty, short)):
        bad.header.stamp = stamp_to_msg(float(i))
        raw_client.publish(bad)
        time.sleep(0.3)  # let each bad frame be processed on its own (latest-only slot)
    assert raw_client.send_and_wait(rgb_to_image_msg(good, 10.0), timeout=30) is not None
    d = wait_diag(raw_client, lambda d: int(d.get("errors_total", 0)) >= 3 and int(d["frames_processed"]) >= 1)
    assert d["level"] == "1" and int(d["errors_encoding"]) == 1 and int(d["errors_empty"]) == 1
    assert int(d["errors_size"]) == 1 and int(d["frames_processed"]) >= 1

    # Compressed transport: corrupt JPEG and empty data.
    corrupt = jpeg_to_compressed_msg(b"\xff\xd8\xff" + bytes(reversed(jpeg[3:500])), 1.0)
    comp_client.publish(corrupt)
    time.sleep(0.3)
    comp_client.publish(jpeg_to_compressed_msg(b"", 2.0))
    time.sleep(0.3)
    answer = comp_client.send_and_wait(jpeg_to_compressed_msg(jpeg, 3.0), timeout=30)
    assert answer is not None and abs(int(answer.ref_ids[0]) - 42) <= 2
    d = wait_diag(comp_client, lambda d: int(d.get("errors_total", 0)) >= 2)
    assert int(d["errors_decode"]) == 1 and int(d["errors_empty"]) == 1
    assert raw.localizer is not None and comp.localizer is not None


def test_missing_map_is_reported_and_reload_recovers(graph, corridor_map, default_model, corridor, tmp_path):
    later = tmp_path / "map_built_later"
    node = graph.add(localize_node(later, default_model, "/late"))
    client = graph.add(LocalizeClient("/late/localize", "/late/image", name="late_client"))
    assert client.wait_until_ready(30)
    d = wait_diag(client, lambda d: d["level"] == "2")
    assert "no map loaded" in d["message"] and "does not exist" in d["message"]
    client.publish(rgb_to_image_msg(load_rgb(corridor / "query" / "0000005.jpg"), 1.0))
    wait_diag(client, lambda d: int(d.get("errors_no_map", 0)) >= 1)

    shutil.copytree(corridor_map, later)
    response = client.trigger("reload_map", timeout=60)
    assert response is not None and response.success, response
    answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000060.jpg"), 2.0), 30)
    assert answer is not None and abs(int(answer.ref_ids[0]) - 60) <= 2
    assert node.map_error == ""


def test_node_executable_runs_with_params_file(repo, corridor_map, default_model, corridor, tmp_path):
    """The console script, started as its own process with --ros-args --params-file, as ros2 run would."""
    rclpy.init()
    graph = Graph()
    client = graph.add(LocalizeClient("/exe/localize", "/exe/image/compressed", name="exe_client", compressed=True))
    try:
        with NodeProcess(["--params-file", str(repo / "config" / "localize.yaml"), "-r", "__ns:=/exe",
                          "-p", f"map_path:={corridor_map}", "-p", f"localizer.encoder.model:={default_model}",
                          "-p", "image_transport:=compressed"], log_path=tmp_path / "node.log") as proc:
            assert client.wait_until_ready(60), (tmp_path / "node.log").read_text()
            for qi in (10, 50, 90):
                jpeg = (corridor / "query" / f"{qi:07d}.jpg").read_bytes()
                answer = client.send_and_wait(jpeg_to_compressed_msg(jpeg, float(qi)), timeout=30)
                assert answer is not None and (np.abs(answer.ref_ids[:5] - qi) <= 2).any()
            assert proc.alive()
            assert proc.stop() == 0, (tmp_path / "node.log").read_text()
    finally:
        graph.close()
        rclpy.try_shutdown()


def test_invalid_parameter_exits_with_clear_message(repo, tmp_path):
    log = tmp_path / "node.log"
    with NodeProcess(["--params-file", str(repo / "config" / "localize.yaml"), "-r", "__ns:=/bad",
                      "-p", "map_path:=/nowhere", "-p", "localizer.top_k:=0"], log_path=log) as proc:
        assert proc.proc is not None
        code = proc.proc.wait(60)
    assert code == 2
    assert "localizer.top_k: 0 is below the minimum 1" in log.read_text()


def test_compressed_message_type_is_used_for_compressed_transport(graph, corridor_map, default_model):
    node = graph.add(localize_node(corridor_map, default_model, "/types", image_transport="compressed"))
    topics = dict(node.get_topic_names_and_types())
    deadline = time.monotonic() + 5
    while "/types/image/compressed" not in topics and time.monotonic() < deadline:
        time.sleep(0.05)
        topics = dict(node.get_topic_names_and_types())
    assert topics["/types/image/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    assert "/types/image" not in topics


def test_node_reranks_with_the_maps_patches_and_refuses_other_ones(graph, corridor_patch_map, default_model,
                                                                    corridor, corridor_ground_truth):
    """The node re-ranks through LocalizerConfig only; a map without the requested patches is reported."""
    graph.add(localize_node(corridor_patch_map, default_model, "/pnv", **{"localizer.rerank.candidates": 30}))
    wrong = graph.add(localize_node(corridor_patch_map, default_model, "/pnv_wrong",
                                    **{"localizer.rerank.method": "performance"}))
    client = graph.add(LocalizeClient("/pnv/localize", "/pnv/image", name="pnv_client"))
    wrong_client = graph.add(LocalizeClient("/pnv_wrong/localize", "/pnv_wrong/image", name="pnv_wrong_client"))
    assert client.wait_until_ready(30) and wrong_client.wait_until_ready(30)
    correct = 0
    queries = (10, 40, 70, 100)
    for qi in queries:
        answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / f"{qi:07d}.jpg"), float(qi)), 30)
        assert answer is not None and len(answer.ref_ids) == 10
        correct += int(answer.ref_ids[0] in corridor_ground_truth[qi])
    assert correct >= 3
    d = wait_diag(client, lambda d: int(d["frames_processed"]) >= len(queries) and "rerank_p50_ms" in d)
    assert d["level"] == "0" and float(d["rerank_p50_ms"]) > 0
    d = wait_diag(wrong_client, lambda d: d["level"] == "2")
    assert "rerank.method=performance needs patches" in d["message"] and wrong.localizer is None
