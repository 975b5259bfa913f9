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
from vpr_ros.io.bag_reader import Bag

pytestmark = pytest.mark.ros


@pytest.fixture(scope="module")
def query_bag_10hz(tmp_path_factory, corridor):
    path = tmp_path_factory.mktemp("live") / "query_10hz.mcap"
    path = path.with_suffix("")
    write_corridor_bag(path, corridor, "query", "mcap", image="compressed", period=0.1)
    return path


@pytest.fixture(scope="module")
def frames_in_bag(query_bag_10hz) -> int:
    """The number of image messages the bag holds, counted by the bag reader (not by the replay)."""
    with Bag(query_bag_10hz) as bag:
        return bag.topics()["/cam/image/compressed"][1]


def node_counts(run: dict) -> tuple[int, int, int, int]:
    """The node's own /diagnostics counters over the replay: received, processed, dropped, errors."""
    return (run["node_frames_received"], run["node_frames_processed"], run["node_frames_dropped"],
            run["node_errors"])


def live(corridor_map, default_model, bag, out, *extra: str) -> dict:
    code = run_cli(evaluate.main, ["--map", str(corridor_map), "--bag", str(bag), "--image-topic",
                                   "/cam/image/compressed", "--pose-topic", "/pose", "--dist-threshold", "2",
                                   "--live", "--out", str(out), "-q",
                                   "--set", f"localizer.encoder.model={default_model}", *extra])
    assert code == 0, (out / "localize_node.log").read_text() if (out / "localize_node.log").exists() else code
    return json.loads((out / "report.json").read_text())


def test_live_replay_at_10hz_reports_latency_drops_and_bounded_memory(corridor_map, default_model,
                                                                      query_bag_10hz, frames_in_bag, tmp_path):
    report = live(corridor_map, default_model, query_bag_10hz, tmp_path / "live")
    run = report["live"]
    assert frames_in_bag == 111 and run["published"] == frames_in_bag  # every frame of the bag, once
    assert run["node_alive_at_end"] is True
    # Every frame the node received is accounted for by its own counters (processed, replaced in its latest-only
    # slot, or rejected); it cannot have received more than the bag holds (best-effort QoS may lose some).
    received, processed, dropped, errors = node_counts(run)
    assert processed + dropped + errors == received <= frames_in_bag
    # The listener's count of answers matched by stamp to published frames is the node's count of processed ones.
    assert errors == 0 and run["answered"] == processed > 0
    assert run["input_rate_hz"] > 0
    # Latency percentiles of the answered frames, end to end through DDS.
    lat = report["latency_ms"]
    assert lat["count"] == run["answered"] and 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["counts"]["queries"] == run["answered"]
    assert report["recall@5"] >= 0.9 and run["recall_all_frames@5"] <= report["recall@5"]
    # Memory: sampled all run long; what the node holds at the end is what it held early on (no per-frame growth).
    mem = run["node_memory"]
    assert mem["samples"] >= 10
    assert mem["growth_mb"] < 30, mem
    assert set(report["plots"]) == {"recall.png", "latency.png", "precision_recall.png", "trajectory.png"}
    assert "encode_p50_ms" in run["node_stage_p50_ms"]


def test_live_replay_faster_than_the_node_counts_what_it_drops(corridor_map, default_model, query_bag_10hz,
                                                               frames_in_bag, tmp_path):
    """At 30x (300 Hz: 111 frames in ~0.37 s) the node, which keeps only the latest frame and needs several ms per
    frame, must replace waiting frames; whatever it skips is counted, not lost silently."""
    report = live(corridor_map, default_model, query_bag_10hz, tmp_path / "fast", "--rate", "30", "--no-plots")
    run = report["live"]
    assert run["published"] == frames_in_bag and run["node_alive_at_end"]
    received, processed, dropped, errors = node_counts(run)
    assert dropped >= 1, run
    assert processed + dropped + errors == received <= frames_in_bag
    assert errors == 0 and run["answered"] == processed > 0
    print(f"300 Hz input: {run['answered']} answered, {dropped} dropped by the node, "
          f"{run['lost_in_transport']} lost in transport")
