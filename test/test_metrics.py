"""recall@N, latency statistics and ground truth construction."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.eval.ground_truth import positives_by_index, positives_from_vpr_bench, positives_within
from vpr_ros.eval.metrics import latency_stats, precision_recall, recall_at_n
from vpr_ros.io.poses import yaw_to_quaternion


def test_recall_at_n_by_hand():
    ranked = [np.array([3, 1, 2]), np.array([0, 5, 9]), np.array([7, 8, 4]), np.array([1, 2, 3])]
    positives = [np.array([3]), np.array([9]), np.array([0]), np.array([], np.int64)]
    r = recall_at_n(ranked, positives, (1, 2, 3))
    assert r == {1: pytest.approx(1 / 3), 2: pytest.approx(1 / 3), 3: pytest.approx(2 / 3)}


def test_latency_stats():
    s = latency_stats(list(range(1, 101)))
    assert s["count"] == 100 and s["p50"] == pytest.approx(50.5) and s["max"] == 100
    assert latency_stats([])["count"] == 0


def test_positives_within_distance_and_heading():
    refs = np.array([[0.0, 0, 0], [10, 0, 0], [30, 0, 0], [np.nan, np.nan, np.nan]])
    ref_q = yaw_to_quaternion(np.radians([0.0, 180.0, 0.0, 0.0]))
    queries = np.array([[1.0, 0, 0], [100, 0, 0]])
    q_q = yaw_to_quaternion(np.radians([10.0, 0.0]))
    gt = positives_within(queries, refs, 25.0)
    assert gt.positives[0].tolist() == [0, 1] and gt.positives[1].size == 0
    assert positives_within(queries, refs, 9.0).positives[0].tolist() == [0, 1], "threshold is inclusive"
    gt = positives_within(queries, refs, 25.0, q_q, ref_q, angle_threshold_deg=30)
    assert gt.positives[0].tolist() == [0] and "30 deg" in gt.description


def test_vpr_bench_ground_truth_matches_corridor_definition(corridor):
    gt = positives_from_vpr_bench(corridor / "ground_truth_new.npy", np.arange(111), 111)
    assert all(p.tolist() == [j for j in range(111) if abs(j - i) <= 2] for i, p in enumerate(gt.positives))


def test_positives_by_index_tolerance():
    gt = positives_by_index(3, np.arange(5), 1)
    assert [p.tolist() for p in gt.positives] == [[0, 1], [0, 1, 2], [1, 2, 3]]


def test_precision_recall_by_hand():
    # Top-1 scores, whether that answer is right, whether the query has a right answer at all.
    scores = np.array([0.9, 0.8, 0.8, 0.7, 0.5, np.nan])
    correct = np.array([True, True, False, True, False, False])
    has = np.array([True, True, True, True, False, True])  # query 4 is outside the map
    pr = precision_recall(scores, correct, has)
    assert pr.thresholds.tolist() == [0.9, 0.8, 0.7, 0.5], "ties are one point; unanswered queries none"
    np.testing.assert_allclose(pr.precision, [1.0, 2 / 3, 3 / 4, 3 / 5])
    np.testing.assert_allclose(pr.recall, [1 / 5, 2 / 5, 3 / 5, 3 / 5])
    assert pr.recall_at_100_precision == pytest.approx(0.2) and pr.threshold_at_100_precision == 0.9
    assert pr.auc == pytest.approx(0.2 * 1.0 + 0.2 * 2 / 3 + 0.2 * 3 / 4)
    curve = pr.curve(max_points=2)
    assert curve["threshold"] == [0.9, 0.5]


def test_precision_recall_when_the_best_answer_is_wrong_or_all_are_right():
    wrong_first = precision_recall(np.array([0.9, 0.5]), np.array([False, True]), np.array([True, True]))
    assert wrong_first.recall_at_100_precision == 0.0 and wrong_first.threshold_at_100_precision == float("inf")
    clean = precision_recall(np.array([0.9, 0.5]), np.array([True, True]), np.array([True, True]))
    assert clean.recall_at_100_precision == 1.0 and clean.threshold_at_100_precision == 0.5
    assert clean.auc == pytest.approx(1.0)
