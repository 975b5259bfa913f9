"""Patch-NetVLAD patch geometry (eq. 2), IntegralVLAD (eq. 6-7) and patch descriptors on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from vpr_ros.core.patchnetvlad.descriptors import (
    PatchGrid,
    box_matrix,
    choose_strategy,
    integral_vlad,
    make_grids,
    patch_descriptors,
    patch_sums_from_integral,
)
from vpr_ros.core.patchnetvlad.presets import PRESETS, scale_sizes
from vpr_ros.core.vlad import VladHead, fit_pca_whitening

ATOL32 = 2e-6  # float32 descriptors (unit vectors), different summation orders


def random_head(rng: np.random.Generator, k: int = 4, d: int = 6, p: int = 10) -> VladHead:
    c = rng.normal(size=(k, d)).astype(np.float32)
    proj, bias = fit_pca_whitening(rng.normal(size=(200, k * d)), p, whiten=True, regularisation=0.1)
    return VladHead(c, (3.0 * c).astype(np.float32), rng.normal(size=k).astype(np.float32), proj, bias)


def direct_patch_descriptor(features: np.ndarray, head: VladHead, y: int, x: int, size: int,
                            dim: int = 0) -> np.ndarray:
    """f_proj(f_VLAD(P)) of one patch straight from the definitions (eq. 1 over the patch's cells), float64."""
    d = features.shape[0]
    cells = features[:, y:y + size, x:x + size].reshape(d, -1).T.astype(np.float64)
    cells /= np.linalg.norm(cells, axis=1, keepdims=True)
    logits = cells @ head.assign_weight.T.astype(np.float64) + head.assign_bias
    a = np.exp(logits - logits.max(1, keepdims=True))
    a /= a.sum(1, keepdims=True)
    v = a.T @ cells - a.sum(0)[:, None] * head.centroids
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    v = v.reshape(-1) / np.linalg.norm(v)
    proj = head.projection if not dim else head.projection[:dim]
    bias = head.projection_bias if not dim else head.projection_bias[:dim]
    y_ = proj.astype(np.float64) @ v + bias
    return y_ / np.linalg.norm(y_)


class TestGrid:
    @pytest.mark.parametrize(("hw", "size", "stride", "expected"), [
        ((30, 40), 5, 1, 26 * 36), ((30, 40), 2, 1, 29 * 39), ((30, 40), 8, 1, 23 * 33),
        ((15, 20), 3, 2, 7 * 9), ((4, 4), 4, 1, 1)])
    def test_patch_count_is_eq_2(self, hw, size, stride, expected):
        grid = PatchGrid(size, stride, hw)
        assert grid.count == expected == ((hw[0] - size) // stride + 1) * ((hw[1] - size) // stride + 1)

    def test_row_major_indices_and_vgg_centres(self):
        grid = PatchGrid(2, 1, (30, 40), pixel_stride=16)
        idx = grid.grid_indices()
        assert idx.shape == (29 * 39, 2) and tuple(idx[0]) == (0, 0) and tuple(idx[1]) == (1, 0)
        assert tuple(idx[39]) == (0, 1)
        # VGG16 conv5_3: receptive field 196, padding 90 -> cell j centred at 16 j + 7.5; the official code
        # truncates the patch centre to int: size 2 at j = 0 -> (7.5 + 23.5) / 2 = 15.5 -> 15.
        np.testing.assert_array_equal(grid.centres()[:2], [[15, 15], [31, 15]])
        np.testing.assert_array_equal(PatchGrid(5, 1, (30, 40)).centres()[0], [39, 39])

    def test_strided_centres_follow_the_start_cell(self):
        grid = PatchGrid(3, 2, (10, 10), pixel_stride=8)
        np.testing.assert_array_equal(grid.centres()[1], [np.floor(8 * (2 + 1.5) - 0.5), np.floor(8 * 1.5 - 0.5)])

    def test_too_large_patch_is_refused_with_the_sizes(self):
        with pytest.raises(ValueError, match="patch size 8 does not fit the 5x20 feature map"):
            PatchGrid(8, 1, (5, 20))
        with pytest.raises(ValueError, match="one stride per patch size"):
            make_grids((2, 5), (1,), (30, 40), 16)

    def test_preset_sizes_scale_with_the_grid(self):
        assert scale_sizes(PRESETS["performance"].sizes, (30, 40)) == (2, 5, 8)
        assert scale_sizes(PRESETS["performance"].sizes, (15, 20)) == (1, 3, 4)
        assert scale_sizes((5,), (60, 80)) == (10,)
        assert scale_sizes((8,), (4, 6)) == (1,)


class TestIntegralVlad:
    def test_eq_6_and_7_give_patch_sums(self):
        rng = np.random.default_rng(0)
        r = rng.normal(size=(6, 7, 3))
        integral = integral_vlad(r)
        assert integral.shape == (7, 8, 3) and not integral[0].any() and not integral[:, 0].any()
        sums = patch_sums_from_integral(integral, size=3, stride=2)
        assert sums.shape == (2, 3, 3)
        np.testing.assert_allclose(sums[1, 2], r[2:5, 4:7].sum((0, 1)), atol=1e-12)

    @pytest.mark.parametrize(("n", "size", "stride"), [(10, 1, 1), (10, 3, 1), (10, 4, 3), (7, 7, 1)])
    def test_factored_box_sums_equal_eq_6_7(self, n, size, stride):
        b = box_matrix(n, size, stride)
        assert set(np.unique(b)) <= {0.0, 1.0} and (b.sum(1) == size).all()
        r = np.random.default_rng(1).normal(size=(n, n))
        via_integral = patch_sums_from_integral(integral_vlad(r[:, :, None]), size, stride)[:, :, 0]
        np.testing.assert_allclose(b.astype(np.float64) @ r @ b.T, via_integral, atol=1e-12)


class TestPatchDescriptors:
    @pytest.mark.parametrize("strategy", ["direct", "shared"])
    def test_equal_direct_patch_vlad(self, strategy):
        rng = np.random.default_rng(2)
        head = random_head(rng)
        feats = rng.normal(size=(2, 6, 7, 9)).astype(np.float32)
        grids = make_grids((1, 3, 4), (1, 2, 1), (7, 9), 16)
        out = patch_descriptors(feats, head, grids, strategy=strategy)
        assert [o.shape for o in out] == [(2, 63, 10), (2, 3 * 4, 10), (2, 4 * 6, 10)]
        for grid, desc in zip(grids, out, strict=True):
            for b, p in ((0, 0), (1, grid.count - 1), (1, grid.count // 2)):
                col, row = grid.grid_indices()[p]
                expected = direct_patch_descriptor(feats[b], head, row * grid.stride, col * grid.stride, grid.size)
                np.testing.assert_allclose(desc[b, p], expected, atol=ATOL32)

    def test_dim_keeps_leading_projection_rows(self):
        rng = np.random.default_rng(3)
        head = random_head(rng)
        feats = rng.normal(size=(1, 6, 5, 5)).astype(np.float32)
        grids = make_grids((2,), (1,), (5, 5), 16)
        (desc,) = patch_descriptors(feats, head, grids, dim=4)
        assert desc.shape == (1, 16, 4)
        np.testing.assert_allclose(desc[0, 5], direct_patch_descriptor(feats[0], head, 1, 1, 2, dim=4), atol=ATOL32)

    def test_whole_map_patch_is_the_global_descriptor(self):
        rng = np.random.default_rng(4)
        head = random_head(rng)
        feats = rng.normal(size=(1, 6, 4, 5)).astype(np.float32)
        (desc,) = patch_descriptors(feats, head, make_grids((4,), (1,), (4, 5), 16))
        np.testing.assert_allclose(desc[0, 0], head.global_descriptors(feats[:, :, :, :4])[0], atol=ATOL32)

    def test_bad_inputs_are_named(self):
        rng = np.random.default_rng(5)
        head = random_head(rng)
        feats = rng.normal(size=(1, 6, 5, 5)).astype(np.float32)
        with pytest.raises(ValueError, match=r"grid is for a \(6, 6\) feature map"):
            patch_descriptors(feats, head, make_grids((2,), (1,), (6, 6), 16))
        no_projection = VladHead(head.centroids, head.assign_weight, head.assign_bias)
        with pytest.raises(ValueError, match="need a head with a PCA / WPCA projection"):
            patch_descriptors(feats, no_projection, make_grids((2,), (1,), (5, 5), 16))
        with pytest.raises(ValueError, match="strategy 'fast'"):
            patch_descriptors(feats, head, make_grids((2,), (1,), (5, 5), 16), strategy="fast")

    def test_strategy_choice_follows_the_cost_model(self):
        # Official performance config (K=16, 512-D VGG, WPCA 4096): projecting patches directly is cheaper here.
        assert choose_strategy(make_grids((2, 5, 8), (1, 1, 1), (30, 40), 16), 16, 512, 4096) == "direct"
        # Many scales on a small grid with wide features: the box sums of projected maps (~16 (h + w) flops per
        # patch and output) undercut projecting every patch (2 D), so sharing the projection wins.
        assert choose_strategy(make_grids((1, 2, 3, 4), (1, 1, 1, 1), (10, 10), 16), 16, 512, 4096) == "shared"
