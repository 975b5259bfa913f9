"""Patch matching scores of Patch-NetVLAD (Hausler et al., CVPR 2021, sections 3.3-3.5), batched over candidates.

Notation: a query image with n_q patches and B candidate reference images with n_r patches each (same
network input size, so n_r = n_q per scale). Similarities are dot products of L2-normalised descriptors,
so the nearest neighbour by Euclidean distance (eq. 3) is the one with the largest similarity.

* Mutual nearest neighbours (eq. 3): reference patch j and query patch i match when i is j's nearest
  query patch and j is i's nearest reference patch. Stored per candidate and reference patch as
  ``nearest_query`` (B, n_r) and ``mutual`` (B, n_r); the matched pairs are (j, nearest_query[j]) where
  mutual[j].
* Rapid spatial score (eq. 4): with displacements d = pos_r(j) - pos_q(i) of the matched patches on the
  patch grid and their mean d_bar,

      s = 1/n_q * sum_matches (x_max - |d_x - d_bar_x|)^2 + (y_max - |d_y - d_bar_y|)^2

  where (x_max, y_max) is "the maximum possible spatial offset", the largest patch-grid index. (Eq. 4 as
  typeset writes the max over matched displacements; the text and the authors' implementation use the
  grid extent, and so do we, for compatibility with official checkpoints and results.)
* RANSAC score: inliers of a homography fitted (OpenCV, RANSAC) to the matched patch centres in pixels,
  tolerance = patch stride in pixels times ``tolerance_strides`` (paper: 1; the official code: 1.5),
  divided by n_q; 0 with fewer than 4 matches.
* Multi-scale fusion (eq. 5): a convex combination of the per-scale scores.

Scores here are "higher is better" (the official code returns their negatives). Every step is vectorised
over the whole candidate list except RANSAC, which is one OpenCV call per candidate (RANSAC sampling is
sequential inside OpenCV; the Python loop only passes each candidate's matched points).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FUSIONS = ("zscore", "convex")


@dataclass
class PatchMatches:
    """Mutual nearest neighbours of one query against B candidates at one patch scale.

    Shape:
        nearest_query: (B, n_r) int64, the query patch nearest to each reference patch;
        mutual: (B, n_r) bool, whether that pair is a mutual nearest neighbour (eq. 3);
        n_query: number of query patches (n_q, the normaliser of both scores).
    """

    nearest_query: np.ndarray
    mutual: np.ndarray
    n_query: int

    @property
    def counts(self) -> np.ndarray:
        """(B,) number of mutual matches per candidate."""
        return self.mutual.sum(axis=1)


def mutual_from_nearest(nearest_query: np.ndarray, nearest_ref: np.ndarray) -> PatchMatches:
    """Eq. 3 from the two nearest-neighbour maps.

    Shape:
        nearest_query: (B, n_r) argmax over query patches for each reference patch;
        nearest_ref: (B, n_q) argmax over reference patches for each query patch.
    """
    nearest_query = np.asarray(nearest_query, dtype=np.int64)
    nearest_ref = np.asarray(nearest_ref, dtype=np.int64)
    if nearest_query.ndim != 2 or nearest_ref.ndim != 2 or nearest_query.shape[0] != nearest_ref.shape[0]:
        raise ValueError(f"expected (B, n_r) and (B, n_q) index arrays, got {nearest_query.shape} and "
                         f"{nearest_ref.shape}")
    back = np.take_along_axis(nearest_ref, nearest_query, axis=1)           # (B, n_r)
    mutual = back == np.arange(nearest_query.shape[1])[None, :]
    return PatchMatches(nearest_query, mutual, int(nearest_ref.shape[1]))


def mutual_nearest_neighbours(similarity: np.ndarray) -> PatchMatches:
    """Eq. 3 on an explicit similarity tensor (higher = nearer; ties go to the lowest index).

    Shape:
        similarity: (B, n_r, n_q) reference-by-query similarities.
    """
    if similarity.ndim != 3:
        raise ValueError(f"expected similarities (B, n_r, n_q), got {similarity.shape}")
    return mutual_from_nearest(similarity.argmax(axis=2), similarity.argmax(axis=1))


def _matched_displacements(matches: PatchMatches, ref_positions: np.ndarray,
                           query_positions: np.ndarray) -> np.ndarray:
    """(B, n_r, 2) float64 position differences ref(j) - query(nearest_query[j]) for every reference patch."""
    return ref_positions[None, :, :].astype(np.float64) - query_positions[matches.nearest_query].astype(np.float64)


def rapid_spatial_scores(matches: PatchMatches, ref_grid: np.ndarray, query_grid: np.ndarray) -> np.ndarray:
    """Rapid spatial score (eq. 4) of every candidate, higher is better; 0 without matches.

    Args:
        matches: mutual nearest neighbours at one scale.
        ref_grid / query_grid: (n, 2) patch-grid (column, row) positions (``PatchGrid.grid_indices``).

    Returns:
        (B,) float64 scores.
    """
    d = _matched_displacements(matches, ref_grid, query_grid)              # (B, n_r, 2)
    m = matches.mutual[..., None]
    counts = matches.counts.astype(np.float64)
    mean = (d * m).sum(axis=1) / np.maximum(counts, 1.0)[:, None]          # (B, 2)
    residual = np.abs(d - mean[:, None, :])
    extent = np.max(np.concatenate([ref_grid, query_grid]), axis=0).astype(np.float64)  # (x_max, y_max)
    per_match = ((extent[None, None, :] - residual) ** 2).sum(axis=2)      # (B, n_r)
    scores = (per_match * matches.mutual).sum(axis=1) / matches.n_query
    return np.where(counts > 0, scores, 0.0)


def rapid_spatial_score_bound(grid_extent: tuple[int, int]) -> float:
    """Largest possible rapid spatial score on a grid with (x_max, y_max): all patches matched with one
    common displacement. Divides eq. 4 into [0, 1] before fusing scales."""
    return float(grid_extent[0] ** 2 + grid_extent[1] ** 2) or 1.0


def ransac_scores(matches: PatchMatches, ref_centres: np.ndarray, query_centres: np.ndarray,
                  tolerance_px: float) -> np.ndarray:
    """RANSAC score: homography inliers among the mutual matches / n_q, per candidate; 0 below 4 matches.

    Args:
        ref_centres / query_centres: (n, 2) patch centres in pixels (``PatchGrid.centres``).
        tolerance_px: RANSAC reprojection threshold in pixels.
    """
    scores = np.zeros(matches.mutual.shape[0], dtype=np.float64)
    ref_centres = np.ascontiguousarray(ref_centres, dtype=np.float32)
    query_centres = np.ascontiguousarray(query_centres, dtype=np.float32)
    for b in np.flatnonzero(matches.counts > 3):
        rows = np.flatnonzero(matches.mutual[b])
        # Reference -> query, as the official implementation fits it (same points, same order, same
        # OpenCV RANSAC, hence the same inlier count).
        _, mask = cv2.findHomography(ref_centres[rows], query_centres[matches.nearest_query[b, rows]],
                                     cv2.RANSAC, ransacReprojThreshold=float(tolerance_px))
        if mask is not None:
            scores[b] = float(mask.sum()) / matches.n_query
    return scores


def fuse_scales(scores: np.ndarray, weights: np.ndarray, fusion: str = "zscore") -> tuple[np.ndarray, np.ndarray]:
    """Multi-scale fusion (eq. 5) of per-scale scores in [0, 1].

    ``convex`` is eq. 5 as written: sum_i w_i s_i. ``zscore`` is what the authors' ``local_matcher``
    does: each scale's scores are standardised over the candidate list before weighting. Standardising is
    affine per scale, so it ranks exactly like eq. 5 with weights w_i / std_i renormalised to sum to 1;
    that is what we compute, which keeps the fused score in [0, 1] (a scale whose scores are all equal
    carries no ranking information and gets weight 0). Both rank identically for a single scale.

    Shape:
        scores: (B, S); weights: (S,) non-negative, summing to 1.
        returns: fused (B,) in [0, 1] and the effective weights (S,).
    """
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != weights.shape[0]:
        raise ValueError(f"expected scores (B, {weights.shape[0]}), got {scores.shape}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion {fusion!r} is not one of {list(FUSIONS)}")
    effective = weights.copy()
    if fusion == "zscore" and scores.shape[0] > 1:
        std = scores.std(axis=0)
        effective = np.where(std > 0, weights / np.where(std > 0, std, 1.0), 0.0)
        total = effective.sum()
        effective = effective / total if total > 0 else weights.copy()
    return scores @ effective, effective
