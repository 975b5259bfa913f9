"""VLAD maths on hand-made cases (NetVLAD eq. as in Patch-NetVLAD eq. 1-2)."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.core.vlad import (
    VladHead,
    assignment_from_centroids,
    fit_pca_whitening,
    kmeans_vocabulary,
    local_descriptors,
)


def kmeans_head(centroids: np.ndarray, alpha: float, normalize_input: bool = False) -> VladHead:
    c = centroids.astype(np.float32)
    return VladHead(c, (2 * alpha * c).astype(np.float32), (-alpha * (c ** 2).sum(1)).astype(np.float32),
                    normalize_input=normalize_input)


class TestSoftAssignment:
    def test_equals_softmax_of_negative_squared_distance(self):
        rng = np.random.default_rng(0)
        c = rng.normal(size=(4, 3))
        x = rng.normal(size=(7, 3)).astype(np.float32)
        head = kmeans_head(c, alpha=1.7)
        d2 = ((x[:, None, :] - c[None]) ** 2).sum(-1)
        expected = np.exp(-1.7 * d2) / np.exp(-1.7 * d2).sum(1, keepdims=True)
        np.testing.assert_allclose(head.soft_assign(x), expected, rtol=1e-5, atol=1e-6)

    def test_rows_sum_to_one_and_large_logits_do_not_overflow(self):
        head = kmeans_head(np.array([[0.0, 0.0], [10.0, 0.0]]), alpha=1e4)
        a = head.soft_assign(np.array([[1.0, 0.0], [9.0, 0.0]], np.float32))
        np.testing.assert_allclose(a.sum(1), 1.0, rtol=1e-6)
        np.testing.assert_allclose(a, [[1, 0], [0, 1]], atol=1e-6)

    def test_alpha_gives_requested_mean_log_ratio(self):
        rng = np.random.default_rng(1)
        samples = rng.normal(size=(500, 8)).astype(np.float32)
        samples /= np.linalg.norm(samples, axis=1, keepdims=True)
        centroids = samples[:6].copy()
        w, b = assignment_from_centroids(centroids, samples, ratio=100.0)
        head = VladHead(centroids, w, b, normalize_input=False)
        a = np.sort(head.soft_assign(samples), axis=1)
        assert np.mean(np.log(a[:, -1] / a[:, -2])) == pytest.approx(np.log(100.0), rel=1e-3)


class TestAggregation:
    def test_hard_assignment_residual_sums_by_hand(self):
        # Two clusters at (0,0) and (10,0); features 1 and 2 belong to cluster 0, feature 3 to cluster 1.
        head = kmeans_head(np.array([[0.0, 0.0], [10.0, 0.0]]), alpha=50.0)
        x = np.array([[[1.0, 0.0], [0.0, 2.0], [11.0, 1.0]]], np.float32)
        v = head.aggregate(x)
        np.testing.assert_allclose(v[0], [[1.0, 2.0], [1.0, 1.0]], atol=1e-5)

    def test_soft_assignment_weights_residuals(self):
        head = kmeans_head(np.array([[0.0], [2.0]]), alpha=0.5)
        x = np.array([[[1.0]]], np.float32)  # equidistant: weight 0.5 each
        np.testing.assert_allclose(head.aggregate(x)[0], [[0.5], [-0.5]], atol=1e-6)

    def test_intra_then_global_normalisation(self):
        v = np.array([[[3.0, 4.0], [0.0, 2.0]]])
        out = VladHead.normalize_vlad(v)
        np.testing.assert_allclose(out[0], np.array([0.6, 0.8, 0.0, 1.0]) / np.sqrt(2), rtol=1e-6)

    def test_empty_cluster_stays_zero(self):
        v = np.array([[[3.0, 4.0], [0.0, 0.0]]])
        np.testing.assert_allclose(VladHead.normalize_vlad(v)[0], [0.6, 0.8, 0.0, 0.0], rtol=1e-6)

    def test_global_descriptor_from_feature_map_matches_manual(self):
        rng = np.random.default_rng(2)
        feats = rng.normal(size=(2, 5, 3, 4)).astype(np.float32)
        c = rng.normal(size=(3, 5)).astype(np.float32)
        head = kmeans_head(c, alpha=2.0, normalize_input=True)
        x = feats.reshape(2, 5, 12).transpose(0, 2, 1)
        x = x / np.linalg.norm(x, axis=-1, keepdims=True)
        a = head.soft_assign(x)
        manual = np.einsum("bnk,bnd->bkd", a, x) - a.sum(1)[:, :, None] * c[None]
        manual /= np.linalg.norm(manual, axis=-1, keepdims=True)
        manual = manual.reshape(2, -1) / np.sqrt(3)
        np.testing.assert_allclose(head.global_descriptors(feats), manual, rtol=1e-5, atol=1e-6)

    def test_wrong_feature_shape_is_named(self):
        head = kmeans_head(np.zeros((2, 4)), alpha=1.0)
        with pytest.raises(ValueError, match=r"\(B, 4, h, w\)"):
            head.global_descriptors(np.zeros((1, 3, 2, 2), np.float32))

    def test_local_descriptors_layout(self):
        feats = np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2)
        x = local_descriptors(feats, normalize=False)
        assert x.shape == (2, 4, 3)
        np.testing.assert_array_equal(x[1, 3], feats[1, :, 1, 1])


class TestPcaWhitening:
    def test_whitened_training_data_has_identity_covariance(self):
        rng = np.random.default_rng(3)
        data = rng.normal(size=(200, 10)) @ rng.normal(size=(10, 10))
        p, q = fit_pca_whitening(data, dim=6, whiten=True, regularisation=0.0)
        y = data @ p.T.astype(np.float64) + q
        np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(np.cov(y.T), np.eye(6), atol=1e-3)

    def test_plain_pca_preserves_variance_order(self):
        rng = np.random.default_rng(4)
        data = rng.normal(size=(300, 3)) * np.array([5.0, 2.0, 0.5])
        p, q = fit_pca_whitening(data, dim=3, whiten=False, regularisation=0.0)
        var = np.var(data @ p.T + q, axis=0)
        assert var[0] > var[1] > var[2]
        np.testing.assert_allclose(sorted(var, reverse=True), [25, 4, 0.25], rtol=0.2)

    def test_dimension_clamped_to_rank(self):
        p, _ = fit_pca_whitening(np.random.default_rng(5).normal(size=(5, 40)), dim=32, whiten=True,
                                 regularisation=0.1)
        assert p.shape == (4, 40)

    def test_head_round_trip_through_arrays(self):
        rng = np.random.default_rng(6)
        c = rng.normal(size=(3, 4)).astype(np.float32)
        p, q = fit_pca_whitening(rng.normal(size=(20, 12)), 5, True, 0.1)
        head = VladHead(c, c * 2, np.ones(3, np.float32), p, q)
        again = VladHead.from_arrays(head.to_arrays())
        feats = rng.normal(size=(1, 4, 2, 2)).astype(np.float32)
        np.testing.assert_array_equal(head.global_descriptors(feats), again.global_descriptors(feats))
        assert again.output_dim == 5


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(7)
    centres = np.array([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    samples = np.concatenate([c + 0.1 * rng.normal(size=(100, 2)) for c in centres]).astype(np.float32)
    found = kmeans_vocabulary(samples, 3, iterations=20, seed=0)
    dist = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(axis=1)
    assert (dist < 0.1).all()
