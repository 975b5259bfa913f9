"""Acceptance: live replay of a bag through the real localize node (its own process, loopback DDS).

The corridor query traversal is recorded at 10 Hz; ``evaluate --live`` starts the node, publishes the frames at
their recorded pace without waiting for answers, and reports latency percentiles, drop counts and the node's
memory over the run. Nothing here asserts on timing: the counts must be consistent whatever the machine's speed,
and memory must not grow with the number of frames.
"""

from __future__ import annotations

import json

import pytest
from samples import write_corridor_bag

from vpr_ros.cli import evaluate
from vpr_ros.cli.common import run_cli

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def query_bag_10hz(tmp_path_factory, corridor):
    path = tmp_path_factory.mktemp("live") / "query_10hz.mcap"
    path = path.with_suffix("")
    write_corridor_bag(path, corridor, "query", "mcap", image="compressed", period=0.1)
    return path


def live(corridor_map, default_model, bag, out, *extra: str) -> dict:
    code = run_cli(evaluate.main, ["--map", str(corridor_map), "--bag", str(bag), "--image-topic",
                                   "/cam/image/compressed", "--pose-topic", "/pose", "--dist-threshold", "2",
                                   "--live", "--out", str(out), "-q",
                                   "--set", f"localizer.encoder.model={default_model}", *extra])
    assert code == 0, (out / "localize_node.log").read_text() if (out / "localize_node.log").exists() else code
    return json.loads((out / "report.json").read_text())


def test_live_replay_at_10hz_reports_latency_drops_and_bounded_memory(corridor_map, default_model,
                                                                      query_bag_10hz, tmp_path):
    report = live(corridor_map, default_model, query_bag_10hz, tmp_path / "live")
    run = report["live"]
    assert run["published"] == 111
    assert run["node_alive_at_end"] is True
    # Every published frame is accounted for: answered, or dropped by the node's latest-only slot, or lost on the
    # way (best-effort sensor QoS), or rejected as an error.
    assert run["answered"] + run["unanswered"] == run["published"]
    assert run["node_frames_received"] + run["lost_in_transport"] == run["published"]
    assert run["node_frames_processed"] + run["node_frames_dropped"] + run["node_errors"] == \
        run["node_frames_received"]
    assert run["node_errors"] == 0 and run["answered"] == run["node_frames_processed"]
    assert run["input_rate_hz"] > 0
    # Latency percentiles of the answered frames, end to end through DDS.
    lat = report["latency_ms"]
    assert lat["count"] == run["answered"] > 0 and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["counts"]["queries"] == run["answered"]
    assert report["recall@5"] >= 0.9 and run["recall_all_frames@5"] <= report["recall@5"]
    # Memory: sampled all run long; what the node holds at the end is what it held early on (no per-frame growth).
    mem = run["node_memory"]
    assert mem["samples"] >= 10
    assert mem["growth_mb"] < 30, mem
    assert set(report["plots"]) == {"recall.png", "latency.png", "precision_recall.png", "trajectory.png"}
    assert "encode_p50_ms" in run["node_stage_p50_ms"]


def test_live_replay_faster_than_the_node_counts_what_it_drops(corridor_map, default_model, query_bag_10hz,
                                                               tmp_path):
    """At 30x (300 Hz) the node cannot answer everything; whatever it skips is counted, not lost silently."""
    report = live(corridor_map, default_model, query_bag_10hz, tmp_path / "fast", "--rate", "30", "--no-plots")
    run = report["live"]
    assert run["published"] == 111 and run["node_alive_at_end"]
    assert run["answered"] + run["unanswered"] == run["published"]
    assert run["unanswered"] == run["node_frames_dropped"] + run["lost_in_transport"] + run["node_errors"]
    print(f"300 Hz input: {run['answered']} answered, {run['node_frames_dropped']} dropped by the node, "
          f"{run['lost_in_transport']} lost in transport")
