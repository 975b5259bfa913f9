"""Patch matching maths (Patch-NetVLAD eq. 3-5, RANSAC score) on hand-made cases, and batched == one by one."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.core.patchnetvlad.descriptors import PatchGrid
from vpr_ros.core.patchnetvlad.matching import nearest_patches, quantise_query
from vpr_ros.core.patchnetvlad.scoring import (
    PatchMatches,
    fuse_scales,
    mutual_from_nearest,
    mutual_nearest_neighbours,
    ransac_scores,
    rapid_spatial_score_bound,
    rapid_spatial_scores,
)
from vpr_ros.core.patchnetvlad.store import decode, encode


def unit(rng: np.random.Generator, *shape: int) -> np.ndarray:
    x = rng.normal(size=shape).astype(np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


class TestMutualNearestNeighbours:
    def test_hand_made_similarities(self):
        # 3 reference patches x 3 query patches. r0 <-> q1 mutual; r1 -> q1 but q1 prefers r0; r2 <-> q2 mutual.
        sim = np.array([[[0.1, 0.9, 0.0],
                         [0.2, 0.8, 0.1],
                         [0.0, 0.1, 0.7]]])
        m = mutual_nearest_neighbours(sim)
        np.testing.assert_array_equal(m.nearest_query, [[1, 1, 2]])
        np.testing.assert_array_equal(m.mutual, [[True, False, True]])
        assert m.n_query == 3 and m.counts.tolist() == [2]

    def test_identical_sets_match_everything(self):
        x = unit(np.random.default_rng(0), 20, 8)
        m = mutual_nearest_neighbours((x @ x.T)[None])
        assert m.mutual.all() and (m.nearest_query[0] == np.arange(20)).all()

    def test_onnx_engine_equals_numpy_for_float_encodings_and_batches(self):
        rng = np.random.default_rng(1)
        query, refs = unit(rng, 30, 16), unit(rng, 7, 30, 16)
        for encoding in ("float32", "float16"):
            stored, _ = encode(refs, encoding)
            # against the stored (rounded) values: half precision may legitimately flip a near tie
            expected = mutual_nearest_neighbours(np.einsum("bnp,mp->bnm", decode(stored, encoding), query))
            got = nearest_patches(query, stored, encoding)
            np.testing.assert_array_equal(got.nearest_query, expected.nearest_query)
            np.testing.assert_array_equal(got.mutual, expected.mutual)
        # one candidate at a time gives the same as the whole batch
        batch = nearest_patches(query, refs, "float32")
        single = [nearest_patches(query, refs[b:b + 1], "float32") for b in range(7)]
        np.testing.assert_array_equal(np.concatenate([s.mutual for s in single]), batch.mutual)
        np.testing.assert_array_equal(np.concatenate([s.nearest_query for s in single]), batch.nearest_query)

    def test_int8_engine_agrees_with_float_on_clear_matches(self):
        rng = np.random.default_rng(2)
        query = unit(rng, 40, 32)
        noisy = query[None] + 0.05 * rng.normal(size=(3, 40, 32)).astype(np.float32)
        refs = noisy / np.linalg.norm(noisy, axis=-1, keepdims=True)
        codes, _ = encode(refs, "int8")
        got = nearest_patches(query, codes, "int8")
        assert got.mutual.all() and (got.nearest_query == np.arange(40)).all()
        assert quantise_query(query).dtype == np.int8 and np.abs(quantise_query(query)).max() == 127

    def test_wrong_store_dtype_is_named(self):
        rng = np.random.default_rng(3)
        with pytest.raises(ValueError, match="int8 patch store must hold uint8 codes, got float32"):
            nearest_patches(unit(rng, 4, 8), unit(rng, 1, 4, 8), "int8")


class TestRapidSpatialScore:
    def grid_positions(self) -> np.ndarray:
        return PatchGrid(1, 1, (4, 5)).grid_indices()  # 20 patches, x_max 4, y_max 3

    def test_pure_translation_scores_the_maximum_per_match(self):
        pos = self.grid_positions()
        # Reference patch j matches the query patch one column to its left (consistent shift of +1 in x).
        nearest = np.array([j - 1 if j % 5 else j for j in range(20)])
        mutual = np.array([j % 5 != 0 for j in range(20)])
        m = PatchMatches(nearest[None], mutual[None], 20)
        s = rapid_spatial_scores(m, pos, pos)
        # every residual is 0 -> each match scores x_max^2 + y_max^2 = 16 + 9; 16 matches / 20 patches
        assert s[0] == pytest.approx(16 * 25 / 20)
        assert rapid_spatial_score_bound((4, 3)) == 25.0

    def test_eq_4_by_hand_for_inconsistent_matches(self):
        pos = self.grid_positions()
        m = PatchMatches(np.array([[0, 0, 0]]), np.array([[True, True, True]]), 20)
        ref = pos[:3]  # (0,0), (1,0), (2,0): displacements x = 0, 1, 2, mean 1, y all 0
        expected = ((4 - 1) ** 2 + 3 ** 2) + ((4 - 0) ** 2 + 3 ** 2) + ((4 - 1) ** 2 + 3 ** 2)
        assert rapid_spatial_scores(m, ref, pos)[0] == pytest.approx(expected / 20)

    def test_no_match_scores_zero_and_batch_equals_single(self):
        pos = self.grid_positions()
        rng = np.random.default_rng(4)
        nearest = rng.integers(0, 20, size=(5, 20))
        mutual = rng.random((5, 20)) < 0.4
        mutual[2] = False
        batch = rapid_spatial_scores(PatchMatches(nearest, mutual, 20), pos, pos)
        single = [rapid_spatial_scores(PatchMatches(nearest[b:b + 1], mutual[b:b + 1], 20), pos, pos)[0]
                  for b in range(5)]
        np.testing.assert_allclose(batch, single, rtol=1e-12)
        assert batch[2] == 0.0


class TestRansacScore:
    def test_planted_homography_inliers(self):
        grid = PatchGrid(2, 1, (15, 20), pixel_stride=16)
        centres = grid.centres()
        n = grid.count
        # Query patch i sees the scene of reference patch j = perm[i] under a known homography; we plant the
        # matches so that 70 % follow it exactly and the rest are random.
        h_true = np.array([[1.02, 0.03, -20.0], [-0.02, 0.98, 10.0], [1e-5, 0.0, 1.0]])
        pts = np.c_[centres, np.ones(n)] @ h_true.T
        mapped = pts[:, :2] / pts[:, 2:]
        rng = np.random.default_rng(5)
        # nearest query patch of each reference patch: the query patch whose centre is closest to the mapped point
        d = np.linalg.norm(mapped[:, None, :] - centres[None, :, :], axis=2)
        nearest = d.argmin(axis=1)
        good = d.min(axis=1) < 8.0
        outliers = rng.random(n) < 0.3
        nearest = np.where(outliers, rng.integers(0, n, n), nearest)
        mutual = good | outliers
        m = PatchMatches(nearest[None].repeat(2, 0), np.stack([mutual, np.zeros(n, bool)]), n)
        scores = ransac_scores(m, centres, centres, tolerance_px=16.0)
        inliers_expected = (good & ~outliers).sum()
        assert scores[1] == 0.0  # no matches
        # RANSAC recovers the planted consistent set (plus the odd outlier that happens to fit)
        assert inliers_expected / n <= scores[0] <= (inliers_expected + 0.05 * outliers.sum()) / n
        assert scores[0] > 0.3

    def test_fewer_than_four_matches_score_zero(self):
        grid = PatchGrid(1, 1, (5, 5))
        mutual = np.zeros((1, 25), bool)
        mutual[0, :3] = True
        m = PatchMatches(np.arange(25)[None], mutual, 25)
        assert ransac_scores(m, grid.centres(), grid.centres(), 16.0)[0] == 0.0


class TestFusion:
    def test_convex_is_eq_5(self):
        s = np.array([[0.2, 0.5, 0.9], [0.4, 0.1, 0.3]])
        fused, w = fuse_scales(s, np.array([0.45, 0.15, 0.40]), "convex")
        np.testing.assert_allclose(fused, s @ [0.45, 0.15, 0.40])
        np.testing.assert_allclose(w, [0.45, 0.15, 0.40])

    def test_zscore_ranks_like_the_official_standardisation(self):
        rng = np.random.default_rng(6)
        s = rng.random((50, 3)) * np.array([1.0, 0.01, 0.2])
        weights = np.array([0.45, 0.15, 0.40])
        fused, w = fuse_scales(s, weights, "zscore")
        official = ((s - s.mean(0)) / s.std(0)) @ weights
        np.testing.assert_array_equal(np.argsort(-fused), np.argsort(-official))
        assert w.sum() == pytest.approx(1.0) and fused.min() >= 0.0 and fused.max() <= 1.0

    def test_constant_scale_carries_no_weight_and_single_candidate_keeps_weights(self):
        s = np.array([[0.2, 0.5], [0.4, 0.5]])
        _, w = fuse_scales(s, np.array([0.5, 0.5]), "zscore")
        np.testing.assert_allclose(w, [1.0, 0.0])
        _fused, w = fuse_scales(s[:1], np.array([0.5, 0.5]), "zscore")
        np.testing.assert_allclose(w, [0.5, 0.5])
        with pytest.raises(ValueError, match=r"expected scores \(B, 2\)"):
            fuse_scales(np.zeros((3, 3)), np.array([0.5, 0.5]))


def test_mutual_from_nearest_checks_shapes():
    with pytest.raises(ValueError, match=r"expected \(B, n_r\) and \(B, n_q\)"):
        mutual_from_nearest(np.zeros((2, 3), int), np.zeros((3, 3), int))
