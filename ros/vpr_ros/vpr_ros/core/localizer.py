"""The localization pipeline, ROS-free: image -> encode -> retrieve top-k -> (re-rank) -> sequence -> Hypothesis.

Every stage is a method so a notebook can run them one by one::

    loc = Localizer.from_paths("out/corridor_map")
    q = loc.encode(rgb)                  # local features + global descriptor
    cands = loc.retrieve(q)              # FAISS top-k (rerank.candidates of them when re-ranking)
    cands = loc.rerank(q, cands)         # Patch-NetVLAD re-ranking (unchanged when it is off)
    hyp = loc.localize(rgb, stamp=0.0)   # all stages, with per-stage timings

The sequence stage (``LocalizerConfig.sequence``, :mod:`vpr_ros.core.sequence`) keeps state: the recent
frames of the camera. Feed one camera's frames in order, and call :meth:`Localizer.reset_sequence` when
the stream breaks (another camera, a jump of the robot). :meth:`Localizer.localize_single_frame` answers one
image from retrieval and re-ranking alone and leaves that state alone (one-shot relocalization).

:meth:`Localizer.reconfigure` changes the settings that do not depend on the loaded map and encoder (top_k,
index search parameters, re-ranking, sequence, confidence radius) without loading anything again; a frame in
flight finishes with the settings it started with.

The map may be an :class:`~vpr_ros.core.online_map.OnlineMap` that grows while the localizer runs: retrieval of a
stamped frame (:meth:`Localizer.localize`) then never returns keyframes within the map's exclusion window of
the frame's stamp, re-ranking reads the patch store as it is now, and the sequence stage follows the map's
growth (:meth:`SequenceMatcher.follow_map`), keeping the buffered query frames; its answers are filtered by the
exclusion window too.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from vpr_ros.config import section, setting
from vpr_ros.core.encoders import Encoder, EncoderConfig, make_encoder
from vpr_ros.core.map_index import SearchConfig
from vpr_ros.core.online_map import OnlineMap
from vpr_ros.core.patchnetvlad.rerank import PatchCorrespondences, RerankConfig, Reranker, resolve_method
from vpr_ros.core.profiling import step
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig, SequenceMatcher
from vpr_ros.core.vlad import VladHeadGraph, global_descriptors


@dataclass(frozen=True)
class LocalizerConfig:
    """Retrieval and hypothesis settings of the localization pipeline."""

    top_k: int = setting(10, "reference candidates published per query (best first)", min=1)
    confidence_radius: float = setting(
        5.0, "candidates within this distance (map units, normally metres) of the best one count as the "
        "same place when the confidence ratio test looks for the best competing place", min=0.0)
    encoder: EncoderConfig = section(EncoderConfig)
    search: SearchConfig = section(SearchConfig)
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
    asked for (``localize(..., explain=True)``, for debug views) and the map stores patches. ``query`` is what the
    encoder made of the image (set by :meth:`Localizer.localize`), e.g. for adding it to an online map.
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
    query: QueryFeatures | None = None

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
            with step(stage):  # the stage is the parent of the steps inside it when a profile is recorded
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


@dataclass(frozen=True)
class PipelineStages:
    """The settings of a :class:`Localizer` and the stages built from them, swapped as one object.

    A frame reads them once and runs to the end with them, so :meth:`Localizer.reconfigure` from another
    thread never mixes old and new settings within one frame.
    """

    config: LocalizerConfig
    reranker: Reranker | None
    sequence: SequenceMatcher | None

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


class Localizer:
    """Runs the pipeline against one reference map (fixed, or an online map growing meanwhile) with one encoder."""

    def __init__(self, refmap: ReferenceMap | OnlineMap, encoder: Encoder,
                 config: LocalizerConfig | None = None) -> None:
        config = config or LocalizerConfig()
        refmap.check_encoder(encoder.describe())
        self.refmap = refmap
        self.encoder = encoder
        self.height, self.width = (int(v) for v in refmap.input_size)
        head = refmap.head
        # The VLAD head in ONNX Runtime's thread pool (see VladHeadGraph), on the encoder's device; numpy for heads
        # without a projection.
        head_device = "cuda" if getattr(encoder, "on_gpu", False) else "cpu"
        self._head_graph = (VladHeadGraph(head, device=head_device) if head is not None and head.projection is not None
                            else None)
        self._stages = PipelineStages(config, self._build_reranker(config.rerank),
                                      self._build_sequence(config.sequence, config.top_k))

    def _build_reranker(self, config: RerankConfig) -> Reranker | None:
        spec = resolve_method(self.refmap, config)
        return Reranker(self.refmap, spec, config) if spec is not None else None

    def _build_sequence(self, config: SequenceConfig, top_k: int) -> SequenceMatcher | None:
        if config.method == "none":
            return None
        encoder = self.refmap.encoder if isinstance(self.refmap, ReferenceMap) else self.refmap.encoder_identity
        return SequenceMatcher(config, self.refmap.descriptors, top_k, map_encoder=encoder)

    @property
    def config(self) -> LocalizerConfig:
        return self._stages.config

    @property
    def reranker(self) -> Reranker | None:
        """Patch-NetVLAD re-ranking of the candidates; None when re-ranking is off."""
        return self._stages.reranker

    @property
    def sequence(self) -> SequenceMatcher | None:
        """The sequence stage with the camera's recent frames; None without a sequence method."""
        return self._stages.sequence

    def reconfigure(self, config: LocalizerConfig) -> None:
        """Use ``config`` from the next frame on, keeping the loaded map and encoder.

        Only what depends on changed values is built again: the re-ranker when ``rerank`` changed, the
        sequence stage when ``sequence`` changed (the query sequence then starts afresh, as after
        :meth:`reset_sequence`). A change of ``top_k`` alone keeps the buffered frames. Safe to call while
        another thread localizes: the settings and the stages are swapped as one object.

        Raises:
            ValueError: ``config.encoder`` differs (a new encoder needs a new Localizer: load the map again).
            MapError: ``config.rerank`` asks for patches the map does not store; nothing was changed.
        """
        current = self._stages
        if config.encoder != current.config.encoder:
            raise ValueError("localizer.encoder cannot change on a loaded localizer: load the map again")
        reranker = current.reranker if config.rerank == current.config.rerank else self._build_reranker(config.rerank)
        sequence = current.sequence
        if config.sequence != current.config.sequence:
            sequence = self._build_sequence(config.sequence, config.top_k)
        elif sequence is not None and config.top_k != current.config.top_k:
            # top_k only cuts the matcher's output: a copy that shares the buffered frames keeps the sequence.
            sequence = sequence.with_top_k(config.top_k)
        self._stages = PipelineStages(config, reranker, sequence)

    @classmethod
    def from_paths(cls, map_path: str, config: LocalizerConfig | None = None, verify: bool = True) -> Localizer:
        config = config or LocalizerConfig()
        return cls(ReferenceMap.load(map_path, verify=verify), make_encoder(config.encoder), config)

    # ---- stages ----------------------------------------------------------------------------------
    def encode(self, image: np.ndarray) -> QueryFeatures:
        return self.encode_many([image])[0]

    def encode_many(self, images: list[np.ndarray]) -> list[QueryFeatures]:
        with step("encoder"):
            feats = self.encoder.features(images, self.height, self.width)
        with step("vlad_head"):
            globals_ = (self._head_graph.global_descriptors(feats) if self._head_graph is not None
                        else global_descriptors(feats, self.refmap.head))
        return [QueryFeatures(feats[i:i + 1], globals_[i]) for i in range(len(images))]

    def retrieve(self, query: QueryFeatures, k: int | None = None, stamp: float | None = None) -> Candidates:
        """FAISS top-``k`` of the map (``k`` defaults to :attr:`retrieval_k`).

        ``stamp``: the query's capture time; an online map then leaves out its keyframes within its exclusion
        window (a fixed map ignores it).
        """
        k = k or self.retrieval_k
        if stamp is not None and isinstance(self.refmap, OnlineMap):
            sims, idx = self.refmap.search(query.global_descriptor[None], k, stamp=stamp)
        elif isinstance(self.refmap, ReferenceMap):
            sims, idx = self.refmap.search(query.global_descriptor[None], k, self._stages.config.search)
        else:
            sims, idx = self.refmap.search(query.global_descriptor[None], k)
        keep = idx[0] >= 0  # FAISS pads with -1 when fewer than k results exist
        scores = sims[0][keep].astype(np.float32)
        return Candidates(idx[0][keep].astype(np.int64), scores, scores)

    def rerank(self, query: QueryFeatures, candidates: Candidates, reranker: Reranker | None = None) -> Candidates:
        """Patch-NetVLAD re-ranking (eq. 3-5) of the candidates; returned unchanged when re-ranking is off.

        ``reranker`` defaults to the current one (:attr:`reranker`).
        """
        reranker = self.reranker if reranker is None else reranker
        if reranker is None or len(candidates.indices) == 0:
            return candidates
        result = reranker.rerank(query.features, candidates.indices)
        retrieval = candidates.retrieval_scores if candidates.retrieval_scores is not None else candidates.scores
        return Candidates(candidates.indices[result.order], result.scores, retrieval[result.order])

    @property
    def retrieval_k(self) -> int:
        """Candidates fetched from the global index per frame (see :attr:`PipelineStages.retrieval_k`)."""
        return self._stages.retrieval_k

    def fuse_sequence(self, query: QueryFeatures, candidates: Candidates, stamp: float,
                      travelled: float | None = None, sequence: SequenceMatcher | None = None,
                      ) -> tuple[Candidates, int, bool]:
        """Sequence stage: add this frame to the camera's sequence and rank map frames for the sequence.

        Works on whatever ``candidates`` the previous stages produced (FAISS or re-ranked). Returns the
        fused candidates, the number of frames they rest on and whether the sequence was complete.
        ``sequence`` defaults to the current sequence stage (:attr:`sequence`).
        """
        sequence = self.sequence if sequence is None else sequence
        if sequence is None:
            return candidates, 1, True
        online = isinstance(self.refmap, OnlineMap)
        if online:
            sequence.follow_map(self.refmap.descriptors)
        result = sequence.fuse(query.global_descriptor, candidates.indices, candidates.scores, stamp, travelled)
        rows, scores = result.rows, result.scores
        if online:  # sequences may end on any keyframe, the robot's recent ones too
            keep = self.refmap.searchable(rows, stamp)  # type: ignore[union-attr]
            rows, scores = rows[keep], scores[keep]
        return Candidates(rows, scores), result.frames, result.complete

    def reset_sequence(self) -> None:
        """Forget the recent frames: the next frame starts a new sequence."""
        if self.sequence is not None:
            self.sequence.reset()

    def hypothesis(self, candidates: Candidates, stamp: float, timings: dict[str, float],
                   confidence_radius: float | None = None) -> Hypothesis:
        """The answer for ``candidates``; ``confidence_radius`` defaults to the current config's."""
        frames = self.refmap.frames
        idx = candidates.indices
        positions = frames.positions[idx]
        radius = self.config.confidence_radius if confidence_radius is None else confidence_radius
        return Hypothesis(stamp=stamp, indices=idx, ids=frames.ids[idx], scores=candidates.scores,
                          positions=positions, orientations=frames.orientations[idx],
                          confidence=ratio_confidence(candidates.scores, positions, radius), timings_ms=timings)

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
        hyp.query = query
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
        stages = self._stages  # one frame, one set of settings (see reconfigure)
        candidates = self._single_frame_candidates(query, stages, timer, stamp)
        top_k, radius = stages.config.top_k, stages.config.confidence_radius
        if stages.sequence is None:
            return self.hypothesis(candidates.head(top_k), stamp, timer.finish(), radius)
        with timer("sequence"):
            fused, frames, complete = self.fuse_sequence(query, candidates, stamp, travelled, stages.sequence)
        hyp = self.hypothesis(fused.head(top_k), stamp, timer.finish(), radius)
        hyp.sequence_frames, hyp.sequence_complete = frames, complete
        hyp.single = self.hypothesis(candidates.head(top_k), stamp, {}, radius)
        return hyp

    def localize_single_frame(self, image: np.ndarray, stamp: float = 0.0, top_k: int | None = None) -> Hypothesis:
        """One-shot answer for one RGB uint8 image from retrieval and re-ranking alone (relocalization).

        The camera's query sequence is neither read nor changed, so this can answer any image (another
        camera, a photo) between the frames of the live stream. The answer is the single-frame answer of
        :meth:`localize` for the same image: ``hyp.single`` with a sequence method, ``hyp`` itself without.
        ``top_k`` (default: the configured ``top_k``) caps the candidates returned, at most as many as retrieval
        and re-ranking produce.
        """
        timer = StageTimer()
        with timer("encode"):
            query = self.encode(image)
        stages = self._stages
        candidates = self._single_frame_candidates(query, stages, timer)
        return self.hypothesis(candidates.head(top_k or stages.config.top_k), stamp, timer.finish(),
                               stages.config.confidence_radius)

    def _single_frame_candidates(self, query: QueryFeatures, stages: PipelineStages, timer: StageTimer,
                                 stamp: float | None = None) -> Candidates:
        """Retrieval and re-ranking of one frame: every candidate the sequence stage may use, best first.

        ``stamp``: the frame's capture time, for an online map's exclusion window (None = no window: a one-shot
        relocalization may match any keyframe).
        """
        with timer("retrieve"):
            candidates = self.retrieve(query, stages.retrieval_k, stamp)
        if stages.reranker is not None:
            with timer("rerank"):
                candidates = self.rerank(query, candidates, stages.reranker)
        return candidates

    def localize_many(self, images: Iterable[np.ndarray], stamps: Iterable[float] | None = None) -> list[Hypothesis]:
        """One hypothesis per image, each timed on its own (as the node would see it)."""
        images = list(images)
        stamps = list(stamps) if stamps is not None else [0.0] * len(images)
        return [self.localize(im, st) for im, st in zip(images, stamps, strict=True)]
