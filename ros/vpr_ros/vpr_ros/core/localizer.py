"""The localization pipeline, ROS-free: image -> encode -> retrieve top-k -> (re-rank) -> sequence -> Hypothesis.

Every stage is a method so a notebook can run them one by one::

    loc = Localizer.from_paths("out/corridor_map")
    q = loc.encode(rgb)                  # local features + global descriptor
    cands = loc.retrieve(q)              # FAISS top-k (rerank.candidates of them when re-ranking)
    cands = loc.rerank(q, cands)         # Patch-NetVLAD re-ranking (unchanged when it is off)
    hyp = loc.localize(rgb, stamp=0.0)   # all stages, with per-stage timings

The sequence stage (``LocalizerConfig.sequence``, :mod:`vpr_ros.core.sequence`) keeps state: the recent
frames of the camera. Feed one camera's frames in order, and call :meth:`Localizer.reset_sequence` when
the stream breaks (another camera, a jump of the robot).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.config import section, setting
from vpr_ros.core.encoders import Encoder, EncoderConfig, make_encoder
from vpr_ros.core.patchnetvlad.rerank import PatchCorrespondences, RerankConfig, Reranker, resolve_method
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig, SequenceMatcher
from vpr_ros.core.vlad import global_descriptors


@dataclass(frozen=True)
class LocalizerConfig:
    """Retrieval and hypothesis settings of the localization pipeline."""

    top_k: int = setting(10, "reference candidates published per query (best first)", min=1)
    confidence_radius: float = setting(
        5.0, "candidates within this distance (map units, normally metres) of the best one count as the "
        "same place when the confidence ratio test looks for the best competing place", min=0.0)
    encoder: EncoderConfig = section(EncoderConfig)
    rerank: RerankConfig = section(RerankConfig)
    sequence: SequenceConfig = section(SequenceConfig)


@dataclass
class QueryFeatures:
    """What the encoder produced for one query image.

    Shape:
        features: (1, C, h, w) local feature map; global_descriptor: (P,) L2-normalised.
    """

    features: np.ndarray
    global_descriptor: np.ndarray


@dataclass
class Candidates:
    """Ranked reference candidates for one query, best first.

    Shape:
        indices: (k,) row indices into the map; scores: (k,) similarity, higher is better (the global
        cosine similarity, or the fused patch score in [0, 1] after re-ranking);
        retrieval_scores: (k,) the global cosine similarity of each candidate.
    """

    indices: np.ndarray
    scores: np.ndarray
    retrieval_scores: np.ndarray | None = None

    def head(self, k: int) -> Candidates:
        """The best ``k`` candidates."""
        rs = None if self.retrieval_scores is None else self.retrieval_scores[:k]
        return Candidates(self.indices[:k], self.scores[:k], rs)


@dataclass
class Hypothesis:
    """The pipeline's answer for one query frame.

    ``confidence`` in [0, 1] is a ratio test on distances d = 1 - score: 1 - d_best / d_competitor, where
    the competitor is the best candidate farther than ``confidence_radius`` from the best one. The score is
    the cosine similarity, or the fused Patch-NetVLAD score in [0, 1] when candidates were re-ranked. With a sequence
    method, ``scores`` are sequence scores, ``sequence_frames`` says how many frames the answer rests on
    (``sequence_complete`` once the buffer is full) and ``single`` is the single-frame answer of the same
    frame, for comparison. ``explanation`` holds the patch pairs matched with the best candidate, only when
    asked for (``localize(..., explain=True)``, for debug views) and the map stores patches.
    """

    stamp: float
    indices: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    positions: np.ndarray
    orientations: np.ndarray
    confidence: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    sequence_frames: int = 1
    sequence_complete: bool = True
    single: Hypothesis | None = None
    explanation: PatchCorrespondences | None = None

    @property
    def best_index(self) -> int:
        return int(self.indices[0])


class StageTimer:
    """Wall time per named pipeline stage, in milliseconds, plus ``total``."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + (time.perf_counter() - t0) * 1e3

    def finish(self) -> dict[str, float]:
        self.timings["total"] = (time.perf_counter() - self.start) * 1e3
        return self.timings


def ratio_confidence(scores: np.ndarray, positions: np.ndarray, radius: float) -> float:
    """1 - d1/d2 on cosine distances d = 1 - s, d2 from the best candidate outside ``radius`` of the first.

    Candidates without a known position compete unless they are the best one itself.
    """
    if scores.size == 0:
        return 0.0
    d1 = max(1.0 - float(scores[0]), 0.0)
    dist = np.linalg.norm(positions[1:] - positions[0], axis=1) if len(positions) > 1 else np.zeros(0)
    other = ~(dist <= radius)  # NaN distances (unknown poses) count as other places
    if not other.any():
        return float(np.clip(1.0 - d1, 0.0, 1.0))
    d2 = max(1.0 - float(scores[1:][other][0]), 1e-9)
    return float(np.clip(1.0 - d1 / d2, 0.0, 1.0))


class Localizer:
    """Runs the pipeline against one reference map with one encoder."""

    def __init__(self, refmap: ReferenceMap, encoder: Encoder, config: LocalizerConfig | None = None) -> None:
        self.config = config or LocalizerConfig()
        refmap.check_encoder(encoder.describe())
        self.refmap = refmap
        self.encoder = encoder
        self.height, self.width = (int(v) for v in refmap.input_size)
        spec = resolve_method(refmap, self.config.rerank)
        self.reranker = Reranker(refmap, spec, self.config.rerank) if spec is not None else None

        self.sequence: SequenceMatcher | None = None
        if self.config.sequence.method != "none":
            self.sequence = SequenceMatcher(self.config.sequence, refmap.descriptors, self.config.top_k)

    @classmethod
    def from_paths(cls, map_path: str, config: LocalizerConfig | None = None, verify: bool = True) -> Localizer:
        config = config or LocalizerConfig()
        return cls(ReferenceMap.load(map_path, verify=verify), make_encoder(config.encoder), config)

    # ---- stages ----------------------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> QueryFeatures:
        return self.encode_many([image])[0]

    def encode_many(self, images: list[np.ndarray]) -> list[QueryFeatures]:
        feats = self.encoder.features(images, self.height, self.width)
        globals_ = global_descriptors(feats, self.refmap.head)
        return [QueryFeatures(feats[i:i + 1], globals_[i]) for i in range(len(images))]

    def retrieve(self, query: QueryFeatures, k: int | None = None) -> Candidates:
        sims, idx = self.refmap.search(query.global_descriptor[None], k or self.retrieval_k)
        keep = idx[0] >= 0  # FAISS pads with -1 when fewer than k results exist
        scores = sims[0][keep].astype(np.float32)
        return Candidates(idx[0][keep].astype(np.int64), scores, scores)

    def rerank(self, query: QueryFeatures, candidates: Candidates) -> Candidates:
        """Patch-NetVLAD re-ranking (eq. 3-5) of the candidates; returned unchanged when re-ranking is off."""
        if self.reranker is None or len(candidates.indices) == 0:
            return candidates
        result = self.reranker.rerank(query.features, candidates.indices)
        retrieval = candidates.retrieval_scores if candidates.retrieval_scores is not None else candidates.scores
        return Candidates(candidates.indices[result.order], result.scores, retrieval[result.order])

    @property
    def retrieval_k(self) -> int:
        """Candidates fetched from the global index per frame: the re-ranked pool when re-ranking, else top_k
        or more when the sequence stage needs them.

        With re-ranking the sequence stage sees the re-ranked pool only: fused patch scores and cosine
        similarities are on different scales, so candidates outside the pool cannot be mixed in.
        """
        if self.reranker is not None:
            return max(self.config.top_k, self.config.rerank.candidates)
        return max(self.config.top_k, self.sequence.candidates_needed if self.sequence is not None else 0)

    def fuse_sequence(self, query: QueryFeatures, candidates: Candidates, stamp: float,
                      travelled: float | None = None) -> tuple[Candidates, int, bool]:
        """Sequence stage: add this frame to the camera's sequence and rank map frames for the sequence.

        Works on whatever ``candidates`` the previous stages produced (FAISS or re-ranked). Returns the
        fused candidates, the number of frames they rest on and whether the sequence was complete.
        """
        if self.sequence is None:
            return candidates, 1, True
        result = self.sequence.fuse(query.global_descriptor, candidates.indices, candidates.scores, stamp,
                                    travelled)
        return Candidates(result.rows, result.scores), result.frames, result.complete

    def reset_sequence(self) -> None:
        """Forget the recent frames: the next frame starts a new sequence."""
        if self.sequence is not None:
            self.sequence.reset()

    def hypothesis(self, candidates: Candidates, stamp: float, timings: dict[str, float]) -> Hypothesis:
        frames = self.refmap.frames
        idx = candidates.indices
        positions = frames.positions[idx]
        return Hypothesis(stamp=stamp, indices=idx, ids=frames.ids[idx], scores=candidates.scores,
                          positions=positions, orientations=frames.orientations[idx],
                          confidence=ratio_confidence(candidates.scores, positions, self.config.confidence_radius),
                          timings_ms=timings)

    # ---- end to end ------------------------------------------------------------------------------
    def localize(self, image: np.ndarray, stamp: float = 0.0, travelled: float | None = None,
                 explain: bool = False) -> Hypothesis:
        """Full pipeline for one RGB uint8 image, with per-stage wall times in ``timings_ms``.

        Args:
            image: RGB uint8 (H, W, 3).
            stamp: capture time in seconds (the sequence stage spaces frames by it).
            travelled: odometry path length at ``stamp`` in metres, if known (spaces frames by distance).
            explain: also match the patches of the best candidate for a debug view (``Hypothesis.explanation``,
                not part of ``timings_ms``); costs one more patch extraction and match.
        """
        timer = StageTimer()
        with timer("encode"):
            query = self.encode(image)
        hyp = self.localize_features(query, stamp, travelled, timer)
        if explain and len(hyp.indices):
            hyp.explanation = self.explain(query, hyp.best_index)
        return hyp

    def explain(self, query: QueryFeatures, row: int) -> PatchCorrespondences | None:
        """The mutual patch pairs of ``query`` and map row ``row`` (:meth:`Reranker.explain`); None when the
        localizer does not re-rank (no patches to match)."""
        return self.reranker.explain(query.features, row) if self.reranker is not None else None

    def localize_features(self, query: QueryFeatures, stamp: float = 0.0, travelled: float | None = None,
                          timer: StageTimer | None = None) -> Hypothesis:
        """The stages after encoding (for callers that encode many images in a batch first)."""
        timer = timer or StageTimer()
        with timer("retrieve"):
            candidates = self.retrieve(query)
        if self.reranker is not None:
            with timer("rerank"):
                candidates = self.rerank(query, candidates)
        if self.sequence is None:
            return self.hypothesis(candidates.head(self.config.top_k), stamp, timer.finish())
        single = candidates.head(self.config.top_k)
        with timer("sequence"):
            fused, frames, complete = self.fuse_sequence(query, candidates, stamp, travelled)
        hyp = self.hypothesis(fused.head(self.config.top_k), stamp, timer.finish())
        hyp.sequence_frames, hyp.sequence_complete = frames, complete
        hyp.single = self.hypothesis(single, stamp, {})
        return hyp

    def localize_many(self, images: Iterable[np.ndarray], stamps: Iterable[float] | None = None) -> list[Hypothesis]:
        """One hypothesis per image, each timed on its own (as the node would see it)."""
        images = list(images)
        stamps = list(stamps) if stamps is not None else [0.0] * len(images)
        return [self.localize(im, st) for im, st in zip(images, stamps, strict=True)]
