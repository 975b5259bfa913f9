"""Patch-NetVLAD patch descriptors from the VLAD residual map via IntegralVLAD (Hausler et al., CVPR 2021).

A patch is a square window of ``size`` x ``size`` feature-map cells taken every ``stride`` cells (paper
section 3.2). On an h x w feature map there are (eq. 2)

    n_p = floor((h - size) / stride + 1) * floor((w - size) / stride + 1)

patches, listed row-major (``index = row * cols + col``). Each patch gets the NetVLAD descriptor of its
cells, f_i = f_proj(f_VLAD(P_i)): the soft-assigned residuals summed over the patch (eq. 1), intra- and
globally L2-normalised, projected with the model's PCA / WPCA and L2-normalised again. For a fitted head
this is the map's own PCA-whitening; for imported Patch-NetVLAD checkpoints it is their WPCA layer.

IntegralVLAD (section 3.6): the VLAD of a patch is the sum of the 1x1 VLADs (per-location residuals
r(i, j) = a_k(x_ij) (x_ij - c_k)) inside it, so with the integral map (eq. 6)

    I(i, j) = sum_{i' < i, j' < j} r(i', j')

every patch sum is four look-ups, I(y+s, x+s) - I(y, x+s) - I(y+s, x) + I(y, x), i.e. a depth-wise
convolution of I with K = [[1, -1], [-1, 1]] dilated by the patch size (eq. 7). :func:`integral_vlad` and
:func:`patch_sums_from_integral` are these two equations literally. The fast path applies the same linear
map in factored form: along each axis, eq. 6 is a cumulative-sum matrix C (n+1 x n) and eq. 7 a +-1
difference matrix S dilated by the size, so the patch sums are B_h R B_w^T with the banded 0/1 matrices
B = S C (:func:`box_matrix`). Two matrix products per map instead of cumulative sums: exact in exact
arithmetic, better conditioned in float32 (no differences of large running sums) and BLAS-fast.

Sharing work between scales (and why it is only sometimes cheaper): the projection is linear, so
P v = sum_k P_k v_k / ||v_k|| with P_k the columns of cluster k. Projecting every *location's* residual
once (cost h*w*K*D*P) and box-summing the projections serves every patch size at once, instead of
projecting every *patch* (cost n_p*K*D*P per size). The per-(patch, cluster) intra-normalisation
1/||v_k|| still has to be applied in the projected space (n_p*K*P multiply-adds), so this ``shared``
strategy wins only when the patches of all sizes clearly outnumber the locations (multi-scale, stride 1);
``direct`` projects patch VLADs. ``auto`` picks by a cost estimate. Both give the same descriptors up
to float32 rounding (tested).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from vpr_ros.core.vlad import VladHead

_EPS = 1e-12  # torch.nn.functional.normalize's eps, as in the official implementation
STRATEGIES = ("auto", "direct", "shared")
#: One memory-bound numpy multiply-add costs about this many BLAS flops (``auto`` strategy's estimate).
_ELEMENTWISE_COST_FLOPS = 50.0


@dataclass(frozen=True)
class PatchGrid:
    """Square patches of one size and stride on an (h, w) feature map (Patch-NetVLAD eq. 2).

    ``pixel_stride`` is the encoder's output stride (pixels of network input per feature cell); it turns
    patch positions into pixel coordinates for the RANSAC score.
    """

    size: int
    stride: int
    feature_hw: tuple[int, int]
    pixel_stride: int = 16

    def __post_init__(self) -> None:
        h, w = self.feature_hw
        if self.size < 1 or self.stride < 1:
            raise ValueError(f"patch size and stride must be >= 1, got size {self.size}, stride {self.stride}")
        if self.size > min(h, w):
            raise ValueError(f"patch size {self.size} does not fit the {h}x{w} feature map (eq. 2 needs "
                             f"size <= min(h, w)); use smaller patches or a larger network input")

    @property
    def rows(self) -> int:
        return (self.feature_hw[0] - self.size) // self.stride + 1

    @property
    def cols(self) -> int:
        return (self.feature_hw[1] - self.size) // self.stride + 1

    @property
    def count(self) -> int:
        """n_p of eq. 2."""
        return self.rows * self.cols

    def grid_indices(self) -> np.ndarray:
        """(n_p, 2) int32 (column, row) of each patch on the patch grid, row-major: the positions the rapid
        spatial score (eq. 4) compares."""
        rows, cols = np.divmod(np.arange(self.count, dtype=np.int32), np.int32(self.cols))
        return np.stack([cols, rows], axis=1)

    def centres(self) -> np.ndarray:
        """(n_p, 2) float32 pixel (x, y) of each patch centre in the network input, for RANSAC.

        Feature cell j covers pixels centred at ``pixel_stride * j + (pixel_stride - 1) / 2`` (for VGG16
        conv5_3 that is its receptive-field centre: 16 j + 7.5); a patch starting at cell j is centred at
        ``pixel_stride * (j + size / 2) - 0.5``. The value is truncated to the pixel containing it, as the
        official implementation does, so both produce identical RANSAC inputs.
        """
        start = self.grid_indices().astype(np.float64) * self.stride
        return np.floor(self.pixel_stride * (start + self.size / 2.0) - 0.5).astype(np.float32)

    def describe(self) -> dict[str, int]:
        return {"size": self.size, "stride": self.stride, "rows": self.rows, "cols": self.cols}


def make_grids(sizes: Sequence[int], strides: Sequence[int], feature_hw: tuple[int, int],
               pixel_stride: int) -> list[PatchGrid]:
    """One :class:`PatchGrid` per (size, stride) pair."""
    if len(sizes) != len(strides) or not sizes:
        raise ValueError(f"need one stride per patch size, got sizes {list(sizes)} and strides {list(strides)}")
    return [PatchGrid(int(s), int(t), (int(feature_hw[0]), int(feature_hw[1])), int(pixel_stride))
            for s, t in zip(sizes, strides, strict=True)]


# ---- IntegralVLAD, literally (eq. 6-7) ----------------------------------------------------------------
def integral_vlad(residuals: np.ndarray) -> np.ndarray:
    """Integral feature map of eq. 6, zero-padded so ``I[i, j]`` sums cells above and left of (i, j).

    Shape:
        residuals: (h, w, C) per-location (1x1 patch) VLAD residuals; returns (h + 1, w + 1, C).
    """
    h, w, c = residuals.shape
    out = np.zeros((h + 1, w + 1, c), dtype=np.float64)
    out[1:, 1:] = np.cumsum(np.cumsum(residuals, axis=0, dtype=np.float64), axis=1)
    return out


def patch_sums_from_integral(integral: np.ndarray, size: int, stride: int) -> np.ndarray:
    """Eq. 7: patch sums as the dilated 2x2 kernel [[1, -1], [-1, 1]] applied to the integral map.

    Shape:
        integral: (h + 1, w + 1, C); returns (rows, cols, C) in the patch grid's row-major layout.
    """
    rows = (integral.shape[0] - 1 - size) // stride + 1
    cols = (integral.shape[1] - 1 - size) // stride + 1
    y0 = slice(0, (rows - 1) * stride + 1, stride)
    y1 = slice(size, size + (rows - 1) * stride + 1, stride)
    x0 = slice(0, (cols - 1) * stride + 1, stride)
    x1 = slice(size, size + (cols - 1) * stride + 1, stride)
    return integral[y1, x1] - integral[y0, x1] - integral[y1, x0] + integral[y0, x0]


def box_matrix(n: int, size: int, stride: int) -> np.ndarray:
    """IntegralVLAD along one axis as one matrix: (eq. 7 difference, dilation ``size``) @ (eq. 6 cumsum).

    Returns the (n_out, n) float32 0/1 matrix whose row o sums inputs ``o*stride .. o*stride + size - 1``.
    """
    cumulative = np.tril(np.ones((n + 1, n)), k=-1)          # row r: sum of inputs < r (eq. 6, padded)
    n_out = (n - size) // stride + 1
    starts = np.arange(n_out) * stride
    difference = np.zeros((n_out, n + 1))
    difference[np.arange(n_out), starts + size] = 1.0        # the kernel's +1 / -1 taps, `size` apart
    difference[np.arange(n_out), starts] = -1.0
    return (difference @ cumulative).astype(np.float32)


def _box_sums(values: np.ndarray, rows_matrix: np.ndarray, cols_matrix: np.ndarray) -> np.ndarray:
    """Separable patch sums B_h V B_w^T of a (h, w, C) map -> (rows, cols, C), as two matrix products."""
    h, w, c = values.shape
    rows, cols = rows_matrix.shape[0], cols_matrix.shape[0]
    t = (rows_matrix @ values.reshape(h, w * c)).reshape(rows, w, c)
    # One large product over the width axis instead of a stack of small ones: stacked small GEMMs are
    # much slower with a threaded BLAS, above all on a machine with other work.
    t = cols_matrix @ np.ascontiguousarray(t.transpose(1, 0, 2)).reshape(w, rows * c)
    return np.ascontiguousarray(t.reshape(cols, rows, c).transpose(1, 0, 2))


# ---- patch descriptors --------------------------------------------------------------------------------
def patch_descriptors(features: np.ndarray, head: VladHead, grids: Sequence[PatchGrid], dim: int = 0,
                      strategy: str = "auto") -> list[np.ndarray]:
    """Patch-NetVLAD descriptors of every patch of every grid.

    Args:
        features: encoder output (B, D, h, w); every grid must be for this (h, w).
        head: the NetVLAD head (centroids, soft assignment, projection) of the encoder or map.
        grids: patch sizes / strides (:func:`make_grids`).
        dim: keep the first ``dim`` rows of the projection (0 = all); valid for PCA projections, whose
            rows are ordered by variance.
        strategy: ``direct``, ``shared`` or ``auto`` (module docstring).

    Returns:
        one (B, n_p, P) float32 array per grid, L2-normalised rows, patches row-major.

    For one frame of (30, 40) features, patch sizes 2, 5, 8 at stride 1 and a 4096-d projection, the three
    arrays are (1, 1131, 4096), (1, 936, 4096) and (1, 759, 4096)::

        grids = make_grids((2, 5, 8), (1, 1, 1), (30, 40), 16)
        patches = patch_descriptors(features, head, grids)
    """
    if head.projection is None or head.projection_bias is None:
        raise ValueError("patch descriptors need a head with a PCA / WPCA projection (vlad.pca_dim > 0); "
                         "unprojected patch VLADs would be K*D floats per patch")
    if features.ndim != 4 or features.shape[1] != head.feature_dim:
        raise ValueError(f"expected features (B, {head.feature_dim}, h, w), got {features.shape}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} is not one of {list(STRATEGIES)}")
    b, _, h, w = features.shape
    for grid in grids:
        if grid.feature_hw != (h, w):
            raise ValueError(f"patch grid is for a {grid.feature_hw} feature map, features are {(h, w)}")
    p_dim = head.projection.shape[0] if dim <= 0 else min(dim, head.projection.shape[0])
    projection = head.projection[:p_dim]
    bias = head.projection_bias[:p_dim]
    if strategy == "auto":
        strategy = choose_strategy(grids, head.num_clusters, head.feature_dim, p_dim)
    x = head.local_descriptors(features)          # (B, L, D), L2-normalised if the head expects it
    assignment = head.soft_assign(x)              # (B, L, K)
    return [np.stack(per_image) for per_image in zip(*[
        _patch_descriptors_one(x[i], assignment[i], head.centroids, projection, bias, grids, (h, w),
                               shared=strategy == "shared")
        for i in range(b)], strict=True)]


def choose_strategy(grids: Sequence[PatchGrid], num_clusters: int, feature_dim: int, p_dim: int) -> str:
    """``shared`` when projecting every location once (plus box sums and normalisation in the projected
    space) is estimated to cost less than projecting every patch (module docstring); else ``direct``.

    Cost model in BLAS-flop equivalents: direct 2 n_p K D P; shared 2 h w K D P plus, per cluster, the
    box-sum products on P-wide maps (thin matrix products, counted 8x) and one multiply-add per
    (patch, cluster, output dim) (counted 50x, memory-bound); the weights were fitted to wall-clock timings
    of both strategies. For the performance configuration (K=16, D=512, P=4096, sizes 2/5/8 on 30x40)
    direct wins; shared wins for many scales of small patches with few clusters.
    """
    h, w = grids[0].feature_hw
    patches = sum(g.count for g in grids)
    direct = 2.0 * patches * num_clusters * feature_dim * p_dim
    box_flops = sum(2.0 * (g.rows * h * w + g.rows * g.cols * w) for g in grids) * p_dim
    shared = (2.0 * h * w * num_clusters * feature_dim * p_dim + num_clusters * box_flops * 8.0
              + patches * num_clusters * p_dim * _ELEMENTWISE_COST_FLOPS)
    return "shared" if shared < direct else "direct"


def _patch_descriptors_one(x: np.ndarray, assignment: np.ndarray, centroids: np.ndarray, projection: np.ndarray,
                           bias: np.ndarray, grids: Sequence[PatchGrid], hw: tuple[int, int],
                           shared: bool) -> list[np.ndarray]:
    """Descriptors of one image. x: (L, D); assignment: (L, K); projection: (P, K*D)."""
    h, w = hw
    n_loc, d = x.shape
    k_total = centroids.shape[0]
    p_dim = projection.shape[0]
    box_rows = [box_matrix(h, g.size, g.stride) for g in grids]
    box_cols = [box_matrix(w, g.size, g.stride) for g in grids]
    # All sizes share one accumulator (rows stacked by size) so each cluster chunk is one large GEMM.
    offsets = np.cumsum([0] + [g.count for g in grids])
    acc = np.zeros((int(offsets[-1]), p_dim), dtype=np.float32)
    block_norms_sq = np.zeros(int(offsets[-1]), dtype=np.float32)
    # Clusters in chunks: bounded memory (~32 MB of residuals per chunk) whatever K and the map size.
    chunk = max(1, (1 << 23) // max(n_loc * d, 1))
    for k0 in range(0, k_total, chunk):
        k1 = min(k_total, k0 + chunk)
        kc = k1 - k0
        # Per-location residuals of eq. 1 for this chunk of clusters: r_k(i) = a_k(x_i) (x_i - c_k).
        residuals = assignment[:, k0:k1, None] * (x[:, None, :] - centroids[None, k0:k1])   # (L, kc, D)
        residual_map = residuals.reshape(h, w, kc * d)
        inv = np.empty((int(offsets[-1]), kc), dtype=np.float32)
        normalised = None if shared else np.empty((int(offsets[-1]), kc, d), dtype=np.float32)
        for s, grid in enumerate(grids):
            rows = slice(int(offsets[s]), int(offsets[s + 1]))
            sums = _box_sums(residual_map, box_rows[s], box_cols[s]).reshape(grid.count, kc, d)
            # The official implementation averages (sum / size^2) before normalising; only the eps of the
            # normalisation notices, and it is kept for exact parity.
            norms = np.linalg.norm(sums, axis=-1) / np.float32(grid.size ** 2)            # (n_p, kc)
            safe = np.maximum(norms, _EPS)
            block_norms_sq[rows] += ((norms / safe) ** 2).sum(axis=1)
            inv[rows] = 1.0 / (safe * grid.size ** 2)                                    # intra-normalisation
            if normalised is not None:
                np.multiply(sums, inv[rows, :, None], out=normalised[rows])
        if normalised is not None:
            acc += normalised.reshape(-1, kc * d) @ projection[:, k0 * d:k1 * d].T
        else:
            for j in range(kc):
                k = k0 + j
                projected = residuals[:, j, :] @ projection[:, k * d:(k + 1) * d].T       # (L, P)
                projected_map = projected.reshape(h, w, p_dim)
                for s, grid in enumerate(grids):
                    rows = slice(int(offsets[s]), int(offsets[s + 1]))
                    sums = _box_sums(projected_map, box_rows[s], box_cols[s]).reshape(grid.count, p_dim)
                    sums *= inv[rows, j, None]
                    acc[rows] += sums
    # Global L2 of the intra-normalised VLAD: its norm is sqrt(sum of squared block norms).
    y = acc / np.maximum(np.sqrt(block_norms_sq), _EPS)[:, None] + bias
    y = (y / np.maximum(np.linalg.norm(y, axis=1, keepdims=True), _EPS)).astype(np.float32)
    return [y[int(offsets[s]):int(offsets[s + 1])] for s in range(len(grids))]
