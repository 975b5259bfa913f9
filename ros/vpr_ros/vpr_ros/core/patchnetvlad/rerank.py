"""Patch-NetVLAD re-ranking of retrieved candidates (Hausler et al., CVPR 2021): the ``rerank`` stage.

The FAISS top-k (``rerank.candidates``, 100 by default) is re-ordered by how well the query's patches
match each candidate's stored patches: mutual nearest neighbours (eq. 3), then the rapid spatial score
(eq. 4) or the RANSAC score per patch size, fused over sizes (eq. 5). The fused score, in [0, 1], replaces
the retrieval similarity as the candidate's score; the published list keeps the best ``top_k``.

Which patches exist is decided when the map is built (:class:`PatchStoreConfig`); ``rerank.method``
names the configuration the localizer expects. ``auto`` takes whatever the map stores; a named method the
map does not store (other sizes, strides or dimension) is refused at start with a message that says how
the map was built and how to rebuild it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vpr_ros.config import setting
from vpr_ros.core.patchnetvlad.descriptors import STRATEGIES, PatchGrid, patch_descriptors
from vpr_ros.core.patchnetvlad.matching import nearest_patches
from vpr_ros.core.patchnetvlad.presets import PRESETS, SCORERS
from vpr_ros.core.patchnetvlad.query_graph import QueryPatchGraph
from vpr_ros.core.patchnetvlad.scoring import (
    FUSIONS,
    PatchMatches,
    fuse_scales,
    ransac_scores,
    rapid_spatial_score_bound,
    rapid_spatial_scores,
)
from vpr_ros.core.patchnetvlad.store import (
    SECTION,
    PatchSpec,
    PatchStoreConfig,
    check_store,
    decode,
    resolve_spec,
)
from vpr_ros.core.profiling import step
from vpr_ros.core.refmap import MapError, ReferenceMap


@dataclass(frozen=True)
class RerankConfig:
    """Patch-NetVLAD re-ranking of the retrieved candidates."""

    method: str = setting(
        "auto", "auto = re-rank with the patches the map stores (global retrieval only if it stores none); "
        "none = global retrieval only; performance / balanced / speed / storage = that configuration, "
        "which the map must store (else it is refused at start)", choices=("auto", "none", *PRESETS))
    candidates: int = setting(100, "candidates retrieved from the global index and re-ranked (at least "
                              "top_k are); the best top_k are published", min=1)
    scorer: str = setting("auto", "auto = the configuration's (RANSAC for performance, rapid spatial score "
                          "otherwise); rapid (eq. 4) or ransac (homography inliers)", choices=("auto", *SCORERS))
    fusion: str = setting("zscore", "multi-scale fusion (eq. 5): zscore = standardise each size's scores over "
                          "the candidates first, as the authors' code does; convex = eq. 5 as written",
                          choices=FUSIONS)
    ransac_tolerance: float = setting(1.0, "RANSAC inlier tolerance in patch strides (paper: 1; the official "
                                      "code uses 1.5)", min=0.0)
    strategy: str = setting("auto", "query patch projection of the numpy path (debug views; re-ranking runs the "
                            "query patch ONNX graph): direct, shared or auto (same result)", choices=STRATEGIES)
    threads: int = setting(0, "ONNX Runtime threads for patch matching (0 = one per core)", min=0)
    coarse_stride: int = setting(1, "two-stage re-ranking: score every candidate on every coarse_stride-th patch "
                                 "centre in both directions first (a 1/coarse_stride^2 of the patches, "
                                 "1/coarse_stride^4 of the matching), then only the best fine_candidates on all "
                                 "patches; 1 = one stage, every candidate on all patches", min=1)
    fine_candidates: int = setting(5, "candidates the second stage scores on all patches (coarse_stride > 1); "
                                   "the others follow in their first-stage order", min=1)
    device: str = setting("cpu", "where the query patch and matching graphs run: cpu, cuda (ONNX Runtime's CUDA "
                          "provider, make gpu-venv; refused at start without it) or auto (CUDA when offered)",
                          choices=("auto", "cpu", "cuda"))


def stored_spec(refmap: ReferenceMap) -> PatchSpec | None:
    """The patch store a map describes in its manifest, checked against its arrays (None if it has none)."""
    section = refmap.sections.get(SECTION)
    if not section:
        return None
    spec = PatchSpec.from_section(section, where="map manifest")
    try:
        check_store(spec, refmap.arrays, len(refmap), where="map")
    except ValueError as exc:
        raise MapError(str(exc)) from None
    return spec


def resolve_method(refmap: ReferenceMap, config: RerankConfig) -> PatchSpec | None:
    """The patch store to re-rank with, or None; MapError when the method asks for patches the map lacks."""
    stored = stored_spec(refmap)
    if config.method == "none" or (config.method == "auto" and stored is None):
        return None
    if config.method == "auto":
        return stored
    rebuild = f"rebuild the map with `build_map ... --set patches.preset={config.method}`"
    if stored is None:
        raise MapError(f"localizer.rerank.method={config.method} needs a map with Patch-NetVLAD patches, but this "
                       f"map stores none (built with patches.preset=none); {rebuild}, or set "
                       "localizer.rerank.method=none")
    if refmap.head is None:
        raise MapError("the map has no VLAD head to compute query patches with")
    expected = resolve_spec(PatchStoreConfig(preset=config.method), stored.feature_hw, stored.grids[0].pixel_stride,
                            refmap.head)
    assert expected is not None
    if not expected.same_patches(stored):
        raise MapError(f"localizer.rerank.method={config.method} needs patches ({expected.describe()}) but the map "
                       f"stores {stored.describe()}; {rebuild}, or set localizer.rerank.method=auto to use what "
                       "the map stores")
    return PatchSpec(config.method, stored.grids, expected.weights, stored.dim, stored.encoding)


@dataclass
class RerankResult:
    """Re-ranked candidates, best first.

    Shape:
        order: (k,) positions into the input candidate list; scores: (k,) fused patch scores in [0, 1];
        per_scale: (k, S) per-size scores in [0, 1]; weights: (S,) effective fusion weights.
    """

    order: np.ndarray
    scores: np.ndarray
    per_scale: np.ndarray
    weights: np.ndarray


@dataclass
class PatchCorrespondences:
    """The mutual nearest-neighbour patch pairs (eq. 3) of a query and one map frame at one patch size: what the
    re-ranker matched, for drawing (:meth:`Reranker.explain`).

    Patch centres are in pixels (x, y) of the network input (``input_hw``, the map's input size); both images
    are resized to it without cropping, so :meth:`centres_in` maps them to any image size by scaling alone.

    Shape:
        query_patches / ref_patches: (M,) int64 row-major patch indices on ``grid``, strongest pair first;
        similarity: (M,) float32 dot product of each pair's L2-normalised descriptors (stored codes decoded).
    """

    row: int
    grid: PatchGrid
    input_hw: tuple[int, int]
    query_patches: np.ndarray
    ref_patches: np.ndarray
    similarity: np.ndarray
    n_query: int

    def __len__(self) -> int:
        return int(self.query_patches.shape[0])

    @property
    def patch_size_px(self) -> int:
        """Side of one patch in network-input pixels."""
        return self.grid.size * self.grid.pixel_stride

    def centres_in(self, image_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(M, 2) float64 query and reference patch centres in pixels of an image of ``image_hw`` = (h, w).

        A patch starting at feature cell j covers input pixels [pixel_stride j, pixel_stride (j + size)), so
        its centre is ``pixel_stride (j + size / 2) - 0.5`` in input pixels (pixel centres at integers); the
        resize to (h, w) maps input coordinate u to ``(u + 0.5) * w / input_w - 0.5``.
        """
        grid = self.grid
        start = grid.grid_indices().astype(np.float64) * grid.stride                   # (n_p, 2) cells (x, y)
        centres = grid.pixel_stride * (start + grid.size / 2.0)                        # input px, edge-based
        scale = np.array([image_hw[1] / self.input_hw[1], image_hw[0] / self.input_hw[0]])
        in_image = centres * scale - 0.5
        return in_image[self.query_patches], in_image[self.ref_patches]


class Reranker:
    """Re-ranks a query's candidates by Patch-NetVLAD patch matching against a map's patch store.

    The localizer builds one for a map with a patch store and re-ranks each query's retrieval candidates::

        reranker = Reranker(refmap, spec, RerankConfig())
        result = reranker.rerank(query_features, candidate_rows)   # RerankResult: order, scores, per_scale
    """

    def __init__(self, refmap: ReferenceMap, spec: PatchSpec, config: RerankConfig | None = None) -> None:
        if refmap.head is None:
            raise MapError("Patch-NetVLAD re-ranking needs the map's VLAD head")
        self.refmap = refmap
        self.spec = spec
        self.config = config or RerankConfig()
        preset = PRESETS.get(spec.preset)
        self.scorer = self.config.scorer if self.config.scorer != "auto" else (preset.scorer if preset else "rapid")
        self.grid_indices = [g.grid_indices() for g in spec.grids]
        self.centres = [g.centres() for g in spec.grids]
        self.bounds = [rapid_spatial_score_bound((g.cols - 1, g.rows - 1)) for g in spec.grids]
        # First stage of two-stage re-ranking: the patches on every k-th centre in both directions are exactly
        # the patches of the same size at k times the stride, so their positions are taken on that coarser grid.
        k = self.config.coarse_stride
        self.coarse_patches = [np.flatnonzero((g % k == 0).all(axis=1)) for g in self.grid_indices]
        self.coarse_grid_indices = [g[sub] // k for g, sub in zip(self.grid_indices, self.coarse_patches, strict=True)]
        self.coarse_bounds = [rapid_spatial_score_bound(((g.cols - 1) // k, (g.rows - 1) // k)) for g in spec.grids]
        # The query's patches in one ONNX Runtime call per size, already in the matcher's layout and type.
        self.query_graph = QueryPatchGraph(refmap.head, spec.grids, spec.dim, self.config.threads,
                                           self.config.device)

    @property
    def stores(self) -> list[np.ndarray]:
        """The map's patch arrays, one per size, read from the map at each use (an online map grows them)."""
        arrays = self.refmap.arrays
        return [arrays[self.spec.array_name(g)] for g in self.spec.grids]

    def query_patches(self, features: np.ndarray) -> list[np.ndarray]:
        """Query feature map (1, D, h, w) -> per patch size (n_p, P) float32 descriptors."""
        return [query_t.T for query_t, _ in self.query_graph.run(features)]

    def matcher_queries(self, features: np.ndarray) -> list[np.ndarray]:
        """Query feature map (1, D, h, w) -> per patch size the (P, n_p) query the matcher takes for the store's
        encoding (int8 codes for an int8 store): no transpose or quantisation left for :meth:`scale_scores`."""
        with step("query_patches"):
            per_size = self.query_graph.run(features)
        return [q8 if self.spec.encoding == "int8" else q for q, q8 in per_size]

    def scale_scores(self, query: list[np.ndarray] | None, rows: np.ndarray,
                     query_t: list[np.ndarray] | None = None, coarse: bool = False) -> np.ndarray:
        """(B, S) per-size scores in [0, 1] of map rows ``rows`` against the query patches: ``query`` per size
        (n_p, P) float32, or ``query_t`` per size in the matcher's layout (:meth:`matcher_queries`). ``coarse``:
        on the first stage's patches only (``coarse_stride``), as a map storing that stride would score them."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.zeros((len(rows), len(self.spec.grids)))
        if len(rows) == 0:
            return scores
        # Gather in ascending row order (sequential reads of the memory-mapped store, one copy), match, and
        # put the small per-candidate results back in the caller's order.
        order = np.argsort(rows, kind="stable")
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        stores = self.stores
        for s, grid in enumerate(self.spec.grids):
            sub = self.coarse_patches[s] if coarse else slice(None)
            positions = self.coarse_grid_indices[s] if coarse else self.grid_indices[s]
            with step("store_gather"):
                # The first stage reads only its patches of each candidate (a quarter at stride 2), not whole frames.
                refs = np.asarray(stores[s][np.ix_(rows[order], sub)] if coarse else stores[s][rows[order]])
            with step("matching"):
                sorted_matches = nearest_patches(None if query is None else query[s][sub], refs, self.spec.encoding,
                                                 self.config.threads,
                                                 None if query_t is None else np.ascontiguousarray(query_t[s][:, sub]),
                                                 self.config.device)
            matches = PatchMatches(sorted_matches.nearest_query[inverse], sorted_matches.mutual[inverse],
                                   sorted_matches.n_query)
            with step("spatial_score"):
                if self.scorer == "ransac":
                    tolerance = self.config.ransac_tolerance * grid.stride * grid.pixel_stride
                    if coarse:
                        tolerance *= self.config.coarse_stride
                    centres = self.centres[s][sub]
                    scores[:, s] = ransac_scores(matches, centres, centres, tolerance)
                else:
                    rapid = rapid_spatial_scores(matches, positions, positions)
                    scores[:, s] = rapid / (self.coarse_bounds[s] if coarse else self.bounds[s])
        return scores

    def explain(self, features: np.ndarray, row: int, scale: int | None = None) -> PatchCorrespondences:
        """The patch pairs :meth:`scale_scores` matches between the query and map row ``row``, at one patch size.

        For debug views only (one candidate, one size, not on the localization path): the query patches of
        that size are computed again and matched with the same kernel and store codes as in re-ranking.

        Args:
            features: query feature map (1, D, h, w).
            row: map row of the candidate.
            scale: index into the map's patch sizes; None = the size with the largest fusion weight.
        """
        if scale is None:
            scale = int(np.argmax(self.spec.weights))
        if not 0 <= scale < len(self.spec.grids):
            raise ValueError(f"patch scale {scale} out of range: the map stores {len(self.spec.grids)} size(s)")
        if not 0 <= row < len(self.refmap):
            raise ValueError(f"map row {row} out of range: the map has {len(self.refmap)} frames")
        grid = self.spec.grids[scale]
        query = patch_descriptors(features, self.refmap.head, [grid], self.spec.dim, self.config.strategy)[0][0]
        codes = np.asarray(self.stores[scale][row:row + 1])
        matches = nearest_patches(query, codes, self.spec.encoding, self.config.threads, device=self.config.device)
        ref_patches = np.flatnonzero(matches.mutual[0])
        query_patches = matches.nearest_query[0, ref_patches]
        scale_name = self.spec.array_name(grid) + "_scale"
        frame_scale = self.refmap.arrays[scale_name][row:row + 1] if scale_name in self.refmap.arrays else None
        refs = decode(codes, self.spec.encoding, frame_scale)[0]
        similarity = np.einsum("mp,mp->m", query[query_patches], refs[ref_patches]).astype(np.float32)
        order = np.argsort(-similarity, kind="stable")
        return PatchCorrespondences(int(row), grid, (int(self.refmap.input_size[0]), int(self.refmap.input_size[1])),
                                    query_patches[order].astype(np.int64), ref_patches[order].astype(np.int64),
                                    similarity[order], int(query.shape[0]))

    def rerank(self, features: np.ndarray, rows: np.ndarray) -> RerankResult:
        """Re-order candidate map rows (best retrieval first) by fused patch score; ties keep retrieval order."""
        return self.rank(self.matcher_queries(features), rows)

    def rank(self, query_t: list[np.ndarray], rows: np.ndarray) -> RerankResult:
        """:meth:`rerank` for query patches already in the matcher's layout (:meth:`matcher_queries`).

        With ``coarse_stride`` > 1 and more candidates than ``fine_candidates``, two stages: every candidate on
        the coarse patches, then the best ``fine_candidates`` of them (in retrieval order, for stable ties) on
        all patches. Those come first, ordered by their full score; the others follow in first-stage order,
        their scores capped at the lowest full score so that scores never rise down the list.
        """
        rows = np.asarray(rows, dtype=np.int64)
        weights = np.asarray(self.spec.weights)
        fine = np.arange(len(rows))
        coarse_order = None
        if self.config.coarse_stride > 1 and len(rows) > self.config.fine_candidates:
            with step("coarse"):
                coarse = self.scale_scores(None, rows, query_t, coarse=True)
                coarse_fused, _ = fuse_scales(coarse, weights, self.config.fusion)
                first = np.argsort(-coarse_fused, kind="stable")
                fine, coarse_order = np.sort(first[:self.config.fine_candidates]), first[self.config.fine_candidates:]
        per_scale = self.scale_scores(None, rows[fine], query_t)
        with step("fuse"):
            fused, effective = fuse_scales(per_scale, weights, self.config.fusion)
            best = np.argsort(-fused, kind="stable")
            order, scores, per_scale = fine[best], fused[best], per_scale[best]
            if coarse_order is not None:
                order = np.concatenate([order, coarse_order])
                scores = np.concatenate([scores, np.minimum(coarse_fused[coarse_order], fused.min())])
                per_scale = np.concatenate([per_scale, coarse[coarse_order]])
        return RerankResult(order, scores.astype(np.float32), per_scale, effective)
