"""Sequence methods on hand-made descriptor sets with known answers, and on real Nordland thumbnails."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.config import ConfigError, config_from_dict
from vpr_ros.core.sequence import (
    SequenceConfig,
    SequenceMatcher,
    candidate_ends,
    im2seq,
    locally_centred,
    pool_sequence,
    reference_sequences,
    seq2im_min,
    seq2im_mode,
    seqslam_dense,
    sequence_scores,
    suppress_neighbours,
    trajectory_rows,
    window_rows,
)


def one_hot(n: int, rows: list[int]) -> np.ndarray:
    return np.eye(n, dtype=np.float32)[rows]


class TestSeq2Seq:
    def test_pooling_by_hand(self):
        d = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
        np.testing.assert_allclose(pool_sequence(d, "max"), np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)
        np.testing.assert_allclose(pool_sequence(d, "avg"), np.array([1, 1, 0]) / np.sqrt(2), atol=1e-6)
        np.testing.assert_allclose(pool_sequence(d, "cat"), np.array([1, 0, 0, 0, 1, 0]) / np.sqrt(2), atol=1e-6)
        d2 = np.array([[0.6, 0.8], [0.0, 1.0]], np.float32)
        np.testing.assert_allclose(pool_sequence(d2, "max"), np.array([0.6, 1.0]) / np.hypot(0.6, 1.0), atol=1e-6)
        np.testing.assert_allclose(pool_sequence(d2, "avg"), np.array([0.3, 0.9]) / np.hypot(0.3, 0.9), atol=1e-6)
        with pytest.raises(ValueError, match="pooling 'sum' is not one of"):
            pool_sequence(d, "sum")
        with pytest.raises(ValueError, match=r"expected \(L, P\)"):
            pool_sequence(np.zeros(3), "max")

    def test_reference_windows_end_at_each_row_and_clamp_at_the_start(self):
        assert window_rows(4, 3).tolist() == [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3]]
        d = one_hot(4, [0, 1, 2, 3])
        np.testing.assert_allclose(reference_sequences(d, 2, "cat")[2], pool_sequence(d[[1, 2]], "cat"))
        np.testing.assert_allclose(reference_sequences(d, 3, "max")[1], pool_sequence(d[[0, 0, 1]], "max"))
        np.testing.assert_allclose(reference_sequences(d, 3, "avg")[3], pool_sequence(d[[1, 2, 3]], "avg"))

    @pytest.mark.parametrize("method", ["seq2seq_max", "seq2seq_avg", "seq2seq_cat"])
    def test_sequence_resolves_a_place_that_looks_like_another(self, method):
        # Map rows 2 and 6 look exactly alike; only the frame before tells them apart (row 1 vs row 5).
        m = one_hot(8, [0, 1, 2, 3, 4, 5, 2, 7])
        matcher = SequenceMatcher(SequenceConfig(method=method, length=2), m, top_k=3)
        first = matcher.fuse(m[5], np.zeros(0, np.int64), np.zeros(0), stamp=0.0)
        result = matcher.fuse(m[6], np.zeros(0, np.int64), np.zeros(0), stamp=1.0)
        assert first.frames == 1 and not first.complete
        assert result.frames == 2 and result.complete
        assert result.rows[0] == 6 and result.scores[0] == pytest.approx(1.0, abs=1e-6)
        matcher.reset()
        matcher.fuse(m[1], np.zeros(0, np.int64), np.zeros(0), stamp=5.0)
        assert matcher.fuse(m[2], np.zeros(0, np.int64), np.zeros(0), stamp=6.0).rows[0] == 2

    def test_cat_scores_equal_cosines_of_concatenated_descriptors(self):
        rng = np.random.default_rng(3)
        m = rng.normal(size=(40, 6)).astype(np.float32)
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        matcher = SequenceMatcher(SequenceConfig(method="seq2seq_cat", length=4), m, top_k=40)
        queries = m[[20, 21, 22]] + rng.normal(scale=0.3, size=(3, 6)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        for i, q in enumerate(queries):
            result = matcher.fuse(q, np.zeros(0, np.int64), np.zeros(0), stamp=float(i))
        padded = np.concatenate([queries[:1], queries])  # 3 frames of a 4-frame sequence: oldest repeated
        expected = reference_sequences(m, 4, "cat") @ pool_sequence(padded, "cat")
        np.testing.assert_allclose(result.scores, np.sort(expected)[::-1], atol=1e-5)
        assert result.rows[0] == int(np.argmax(expected))


class TestSeq2ImAndIm2Seq:
    def test_min_keeps_each_rows_best_similarity_over_frames(self):
        rows = [np.array([3, 7]), np.array([7, 1])]
        scores = [np.array([0.5, 0.4]), np.array([0.9, 0.2])]
        r, s = seq2im_min(rows, scores, num_rows=10)
        assert r.tolist() == [7, 3, 1]
        np.testing.assert_allclose(s, [0.9, 0.5, 0.2])

    def test_min_with_shifts_moves_older_frames_and_drops_rows_off_the_map(self):
        rows = [np.array([3, 7]), np.array([7, 1])]
        scores = [np.array([0.5, 0.4]), np.array([0.9, 0.2])]
        r, s = seq2im_min(rows, scores, num_rows=8, shifts=[1, 0])
        assert r.tolist() == [7, 4, 1]  # frame 0's row 7 moved to 8: outside an 8-row map
        np.testing.assert_allclose(s, [0.9, 0.5, 0.2])

    def test_mode_is_the_majority_vote_and_ties_go_to_the_better_similarity(self):
        rows = [np.array([5, 2, 9]), np.array([5, 3, 2]), np.array([1, 5, 7])]
        scores = [np.array([0.3, 0.2, 0.1]), np.array([0.4, 0.35, 0.3]), np.array([0.9, 0.5, 0.1])]
        r, votes = seq2im_mode(rows, scores, num_rows=10, k=3)
        assert r[:3].tolist() == [5, 2, 1]  # 5: 3 votes; 2: 2 votes; then 1 (0.9) before 3, 7, 9
        np.testing.assert_allclose(votes[:3], [1.0, 2 / 3, 1 / 3])
        r2, _ = seq2im_mode(rows, scores, num_rows=10, k=1)  # only each frame's nearest votes
        assert r2.tolist() == [5, 1]

    def test_mode_counts_one_vote_per_frame(self):
        r, votes = seq2im_mode([np.array([4, 5])], [np.array([0.5, 0.4])], num_rows=10, k=2, shifts=[0])
        assert votes.max() == 1.0 and set(r.tolist()) == {4, 5}

    def test_im2seq_returns_the_sequence_holding_the_nearest_frame(self):
        segments, scores, best = im2seq(np.array([13, 4, 17, 25]), np.array([0.9, 0.8, 0.7, 0.6]), 10)
        assert segments.tolist() == [1, 0, 2] and best.tolist() == [13, 4, 25]
        np.testing.assert_allclose(scores, [0.9, 0.8, 0.6])
        with pytest.raises(ValueError, match="segment_length"):
            im2seq(np.array([1]), np.array([1.0]), 0)


class TestSeqSlam:
    def test_locally_centred_matches_the_contrast_numerator_by_brute_force(self):
        rng = np.random.default_rng(0)
        d = rng.normal(size=(30, 8)).astype(np.float32)
        q = rng.normal(size=8).astype(np.float32)
        s = d @ q
        centred = locally_centred(d, window=6, block=3)
        expected = np.array([s[j] - s[max(j - 3, 0):j + 4].mean() for j in range(30)])
        np.testing.assert_allclose(centred @ q, expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(locally_centred(d, window=1), d)

    def test_trajectory_rows_are_straight_lines_back_from_the_end(self):
        rows = trajectory_rows(np.array([10]), np.array([1.0, 2.0]), np.array([2.0, 1.0, 0.0]))
        assert rows.tolist() == [[[8, 9, 10], [6, 8, 10]]]

    def test_dense_matching_finds_the_line_and_its_velocity(self):
        rng = np.random.default_rng(1)
        band = rng.uniform(-0.1, 0.1, size=(5, 60))
        band[4, 12] = 0.9  # a single-frame decoy: the current frame alone looks most like row 12
        for t, off in enumerate([8, 6, 4, 2, 0]):  # the real place: 2 map rows per step, ending at row 40
            band[t, 40 - off] = 0.5
        assert int(np.argmax(band[4])) == 12
        scores, velocity = seqslam_dense(band, np.array([4.0, 3, 2, 1, 0]), np.array([1.0, 1.5, 2.0]))
        assert int(np.argmax(scores)) == 40 and velocity[40] == 2.0
        assert scores[40] == pytest.approx(0.5)

    def test_short_sequences_score_as_if_missing_frames_were_zero(self):
        band = np.full((2, 5), 0.4)
        scores, _ = sequence_scores([row.__getitem__ for row in band], np.array([3]), np.array([1.0]),
                                    np.array([1.0, 0.0]), 5, length=4)
        assert scores[0] == pytest.approx(0.2)
        off_map, _ = sequence_scores([row.__getitem__ for row in band], np.array([0]), np.array([1.0]),
                                     np.array([1.0, 0.0]), 5)
        assert off_map[0] == pytest.approx(0.2), "the point before row 0 counts as similarity 0"

    def test_candidate_ends_follow_each_frames_candidates_forward(self):
        ends = candidate_ends([np.array([3]), np.array([9])], np.array([1.0, 2.0]), np.array([2.0, 0.0]), 12)
        assert ends.tolist() == [5, 7, 9]

    def test_suppression_keeps_the_best_of_each_neighbourhood(self):
        rows, scores = suppress_neighbours(np.array([10, 11, 30, 12, 31]), np.array([0.5, 0.9, 0.4, 0.8, 0.7]),
                                           radius=2, keep=5)
        assert rows.tolist() == [11, 31] and np.allclose(scores, [0.9, 0.7])

    @pytest.mark.parametrize("search", ["topk", "full"])
    def test_matcher_recovers_a_noisy_route_where_single_frames_fail(self, search):
        rng = np.random.default_rng(2)
        n, p = 300, 64
        route = rng.normal(size=(n, p))
        route /= np.linalg.norm(route, axis=1, keepdims=True)
        # Queries revisit rows 150.. at 2 map rows per frame, so noisy that single frames are mostly wrong.
        truth = np.arange(150, 150 + 2 * 12, 2)
        noisy = route[truth] + rng.normal(scale=0.5, size=(len(truth), p))
        noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
        cfg = SequenceConfig(method="seqslam", length=8, velocity_min=1.5, velocity_max=2.5, velocity_steps=3,
                             window=6, search=search, frame_top_k=10)
        matcher = SequenceMatcher(cfg, route.astype(np.float32), top_k=5)
        single_right, seq_right = 0, 0
        for i, (q, row) in enumerate(zip(noisy, truth, strict=True)):
            sims = route @ q
            top = np.argsort(-sims)[:10]
            single_right += int(top[0] == row)
            result = matcher.fuse(q, top, sims[top], stamp=float(i))
            if result.complete:
                seq_right += int(abs(int(result.rows[0]) - int(row)) <= 1)
        assert single_right <= 6, f"the test set must be hard for single frames ({single_right} right)"
        assert seq_right == len(truth) - cfg.length + 1

    def test_config_checks(self):
        with pytest.raises(ConfigError, match=r"velocity_max must be >= sequence\.velocity_min"):
            config_from_dict(SequenceConfig, {"velocity_min": 2.0, "velocity_max": 1.0})
        with pytest.raises(ConfigError, match=r"method: 'seqslamm' is not one of"):
            config_from_dict(SequenceConfig, {"method": "seqslamm"})
        assert SequenceConfig(velocity_steps=3).velocities.tolist() == pytest.approx([0.8, 1.0, 1.2])
