"""Real rclpy graphs on loopback: publisher -> localize node -> subscriber, on real corridor images."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest
from sensor_msgs.msg import Image

from vpr_ros.core.image import load_rgb
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.nodes.harness import (
    LocalizeLaunch,
    NodeStartError,
    change_lifecycle_state,
    get_lifecycle_state,
    run_localize,
)
from vpr_ros.nodes.messages import stamp_to_msg
from vpr_ros.nodes.replay import jpeg_to_compressed_msg, rgb_to_image_msg

pytestmark = pytest.mark.ros


def test_graph_localizes_real_corridor_queries(start_localize, corridor_map, corridor, corridor_ground_truth):
    client = start_localize(corridor_map, "/vpr").client
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
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) >= len(queries))
    assert d is not None, client.latest_diagnostic()
    assert d["level"] == "0" and d["message"] == "localizing" and int(d["errors_total"]) == 0
    assert float(d["latency_p50_ms"]) > 0


def test_bad_inputs_are_reported_and_node_keeps_running(start_localize, corridor_map, corridor):
    raw = start_localize(corridor_map, "/raw")
    comp = start_localize(corridor_map, "/comp", image_transport="compressed")
    raw_client, comp_client = raw.client, comp.client
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
    d = raw_client.wait_for_diagnostic(lambda d: int(d.get("errors_total", 0)) >= 3
                                       and int(d["frames_processed"]) >= 1)
    assert d is not None, raw_client.latest_diagnostic()
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
    d = comp_client.wait_for_diagnostic(lambda d: int(d.get("errors_total", 0)) >= 2)
    assert d is not None, comp_client.latest_diagnostic()
    assert int(d["errors_decode"]) == 1 and int(d["errors_empty"]) == 1
    assert raw.node.localizer is not None and comp.node.localizer is not None


def test_missing_map_is_reported_and_configure_recovers(start_localize, corridor_map, corridor, tmp_path):
    """A map that is not there fails the autostart's configure: the node stays unconfigured, says why on
    /diagnostics, refuses ~/reload_map, and a later configure + activate (lifecycle) picks the map up."""
    later = tmp_path / "map_built_later"
    late = start_localize(later, "/late", require_map=False)
    client = late.client
    d = client.wait_for_diagnostic(lambda d: d["level"] == "2")
    assert d is not None, client.latest_diagnostic()
    assert "no map loaded" in d["message"] and "does not exist" in d["message"]
    assert d["lifecycle_state"] == "unconfigured" and get_lifecycle_state(client, "/late/localize") == "unconfigured"
    assert client.image_pub.get_subscription_count() == 0  # unconfigured: no subscriptions
    refused = client.trigger("reload_map", timeout=30)
    assert refused is not None and not refused.success and "unconfigured" in refused.message, refused

    shutil.copytree(corridor_map, later)
    assert change_lifecycle_state(client, "/late/localize", "configure")
    assert change_lifecycle_state(client, "/late/localize", "activate")
    assert client.wait_until_ready(30)
    answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / "0000060.jpg"), 2.0), 30)
    assert answer is not None and abs(int(answer.ref_ids[0]) - 60) <= 2
    assert late.node.map_error == ""


def test_node_executable_runs_with_params_file(repo, corridor_map, default_model, corridor, tmp_path):
    """The console script, started as its own process with --ros-args --params-file, as ros2 run would."""
    log = tmp_path / "node.log"
    launch = LocalizeLaunch({"map_path": str(corridor_map), "localizer.encoder.model": str(default_model),
                             "image_transport": "compressed"}, namespace="/exe",
                            params_file=PACKAGE_ROOT / "config" / "localize.yaml", own_process=True, log_path=log)
    with run_localize(launch, client_name="exe_client") as exe:
        for qi in (10, 50, 90):
            jpeg = (corridor / "query" / f"{qi:07d}.jpg").read_bytes()
            answer = exe.client.send_and_wait(jpeg_to_compressed_msg(jpeg, float(qi)), timeout=30)
            assert answer is not None and (np.abs(answer.ref_ids[:5] - qi) <= 2).any()
        assert exe.alive()
        assert exe.process.stop() == 0, log.read_text()


def test_invalid_parameter_exits_with_clear_message(repo, tmp_path):
    log = tmp_path / "node.log"
    launch = LocalizeLaunch({"map_path": "/nowhere", "localizer.top_k": 0}, namespace="/bad",
                            params_file=PACKAGE_ROOT / "config" / "localize.yaml", own_process=True, log_path=log)
    with pytest.raises(NodeStartError, match="exited with code 2"), run_localize(launch, ready_timeout=60):
        pass
    assert "localizer.top_k: 0 is below the minimum 1" in log.read_text()


def test_compressed_message_type_is_used_for_compressed_transport(start_localize, corridor_map):
    node = start_localize(corridor_map, "/types", image_transport="compressed").node
    topics = dict(node.get_topic_names_and_types())
    deadline = time.monotonic() + 5
    while "/types/image/compressed" not in topics and time.monotonic() < deadline:
        time.sleep(0.05)
        topics = dict(node.get_topic_names_and_types())
    assert topics["/types/image/compressed"] == ["sensor_msgs/msg/CompressedImage"]
    assert "/types/image" not in topics


def test_node_reranks_with_the_maps_patches_and_refuses_other_ones(start_localize, corridor_patch_map, corridor,
                                                                    corridor_ground_truth):
    """The node re-ranks through LocalizerConfig only; a map without the requested patches is reported."""
    client = start_localize(corridor_patch_map, "/pnv", **{"localizer.rerank.candidates": 30}).client
    wrong = start_localize(corridor_patch_map, "/pnv_wrong", require_map=False,
                           **{"localizer.rerank.method": "performance"})
    correct = 0
    queries = (10, 40, 70, 100)
    for qi in queries:
        answer = client.send_and_wait(rgb_to_image_msg(load_rgb(corridor / "query" / f"{qi:07d}.jpg"), float(qi)), 30)
        assert answer is not None and len(answer.ref_ids) == 10
        correct += int(answer.ref_ids[0] in corridor_ground_truth[qi])
    assert correct >= 3
    d = client.wait_for_diagnostic(lambda d: int(d["frames_processed"]) >= len(queries) and "rerank_p50_ms" in d)
    assert d is not None, client.latest_diagnostic()
    assert d["level"] == "0" and float(d["rerank_p50_ms"]) > 0
    d = wrong.client.wait_for_diagnostic(lambda d: d["level"] == "2")
    assert d is not None, wrong.client.latest_diagnostic()
    assert "rerank.method=performance needs patches" in d["message"] and wrong.node.localizer is None
