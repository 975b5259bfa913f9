"""Loop-closure gating (ROS-free) and its lossless message."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from rclpy.serialization import deserialize_message, serialize_message
from vpr_ros_interfaces.msg import LoopClosure as LoopClosureMsg

from vpr_ros.core.frames import FrameTable
from vpr_ros.core.localizer import Hypothesis
from vpr_ros.core.loop_closure import LoopClosureConfig, LoopClosureGate
from vpr_ros.nodes.messages import loop_closure_to_msg, stamp_from_msg

N = 50


def frames(with_poses: bool = True) -> FrameTable:
    """A route of N map frames 2 m apart, stamped 0..N-1 s."""
    positions = np.stack([np.arange(N) * 2.0, np.zeros(N), np.zeros(N)], axis=1)
    if not with_poses:
        positions[:] = np.nan
    orientations = np.tile([0.0, 0.0, 0.0, 1.0], (N, 1))
    return FrameTable(np.arange(N) + 1000, [f"f{i}" for i in range(N)], [""] * N, np.arange(N, dtype=float),
                      positions, orientations)


def hyp(table: FrameTable, stamp: float, rows: list[int], scores: list[float], complete: bool = True) -> Hypothesis:
    idx = np.array(rows, dtype=np.int64)
    return Hypothesis(stamp=stamp, indices=idx, ids=table.ids[idx], scores=np.array(scores, np.float32),
                      positions=table.positions[idx], orientations=table.orientations[idx], confidence=0.5,
                      sequence_complete=complete)


CFG = LoopClosureConfig(score="score", min_score=0.3, exclusion_window=5.0, min_consecutive=3, consistency_radius=5.0)


def test_consecutive_consistent_matches_open_the_gate():
    table = frames()
    gate = LoopClosureGate(CFG, table, confidence_radius=4.0)
    out = [gate.update(hyp(table, 100.0 + i, [10 + i, 30], [0.5, 0.2])) for i in range(4)]
    assert out[0] is None and out[1] is None
    c = out[2]
    assert c is not None and c.row == 12 and c.ref_id == 1012 and c.ref_stamp == 12.0 and c.consecutive == 3
    assert c.stamp == 102.0 and c.score == pytest.approx(0.5)
    np.testing.assert_allclose(c.position, [24.0, 0, 0])
    assert out[3] is not None and out[3].row == 13


def test_a_weak_or_inconsistent_frame_restarts_the_count():
    table = frames()
    gate = LoopClosureGate(CFG, table, confidence_radius=4.0)
    gate.update(hyp(table, 100.0, [10], [0.5]))
    gate.update(hyp(table, 101.0, [11], [0.5]))
    assert gate.update(hyp(table, 102.0, [12], [0.29])) is None and gate.consecutive == 0
    gate.update(hyp(table, 103.0, [13], [0.5]))
    gate.update(hyp(table, 104.0, [14], [0.5]))
    assert gate.update(hyp(table, 105.0, [40], [0.9])) is None, "40 is 52 m from 14: inconsistent"
    assert gate.consecutive == 1
    assert gate.update(hyp(table, 106.0, [41], [float("nan")])) is None, "a NaN score fails"


def test_exclusion_window_skips_the_robots_own_recent_frames():
    table = frames()
    gate = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1), table, confidence_radius=4.0)
    c = gate.update(hyp(table, 47.0, [45, 20, 46], [0.9, 0.6, 0.8]))  # 45 and 46 are 2 s and 1 s old
    assert c is not None and c.row == 20 and c.score == pytest.approx(0.6)
    assert gate.update(hyp(table, 47.0, [45, 46], [0.9, 0.8])) is None
    off = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1, exclusion_window=0.0), table, 4.0)
    assert off.update(hyp(table, 47.0, [45, 20], [0.9, 0.6])).row == 45


def test_consistency_in_rows_when_the_map_has_no_poses():
    table = frames(with_poses=False)
    gate = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=2), table, confidence_radius=4.0)
    gate.update(hyp(table, 100.0, [10], [0.5]))
    assert gate.update(hyp(table, 101.0, [14], [0.5])) is not None  # 4 rows <= radius 5
    assert gate.update(hyp(table, 102.0, [20], [0.5])) is None


def test_incomplete_sequences_and_confidence_scores():
    table = frames()
    gate = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1), table, confidence_radius=4.0)
    assert gate.update(hyp(table, 100.0, [10], [0.9], complete=False)) is None
    lenient = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1, require_full_sequence=False), table, 4.0)
    assert lenient.update(hyp(table, 100.0, [10], [0.9], complete=False)) is not None
    by_conf = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1, score="confidence", min_score=0.5),
                              table, confidence_radius=4.0)
    # d1 = 0.2, competitor outside 4 m is row 30 (row 11 is 2 m away): d2 = 0.8 -> confidence 0.75
    c = by_conf.update(hyp(table, 100.0, [10, 11, 30], [0.8, 0.79, 0.2]))
    assert c is not None and c.confidence == pytest.approx(0.75, abs=1e-6) and c.score == pytest.approx(0.8)
    assert by_conf.update(hyp(table, 101.0, [11, 31], [0.8, 0.7])) is None  # confidence 1 - 0.2/0.3 < 0.5


def test_reset_forgets_the_history():
    table = frames()
    gate = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=2), table, confidence_radius=4.0)
    gate.update(hyp(table, 100.0, [10], [0.5]))
    gate.reset()
    assert gate.update(hyp(table, 101.0, [11], [0.5])) is None and gate.consecutive == 1


def test_loop_closure_message_carries_the_keyframe_and_an_uninformative_relative_pose():
    table = frames()
    gate = LoopClosureGate(dataclasses.replace(CFG, min_consecutive=1), table, confidence_radius=4.0)
    c = gate.update(hyp(table, 1_700_000_123.456789, [17, 40], [0.4321, 0.1]))
    msg = deserialize_message(serialize_message(loop_closure_to_msg(c, "map", "camera_optical")), LoopClosureMsg)
    assert msg.header.frame_id == "map" and msg.query_frame_id == "camera_optical"
    assert stamp_from_msg(msg.header.stamp) == pytest.approx(c.stamp, abs=1e-6) and msg.query_stamp == msg.header.stamp
    assert msg.keyframe_id == 1017 and stamp_from_msg(msg.keyframe_stamp) == 17.0
    assert msg.keyframe_pose.position.x == 34.0 and msg.keyframe_pose.orientation.w == 1.0
    assert msg.keyframe_pose_known and msg.keyframe_orientation_known
    assert msg.score == np.float32(0.4321) and 0.0 < msg.confidence <= 1.0
    assert not msg.verified and not msg.metric and msg.inliers == 0
    covariance = np.array(msg.relative_pose.covariance).reshape(6, 6)
    assert np.array_equal(covariance, np.diag([LoopClosureMsg.UNINFORMATIVE_TRANSLATION_VARIANCE] * 3
                                              + [LoopClosureMsg.UNINFORMATIVE_ROTATION_VARIANCE] * 3))
    assert msg.relative_pose.pose.orientation.w == 1.0 and msg.relative_pose.pose.position.x == 0.0
