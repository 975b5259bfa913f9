"""Sequence fusion: match the last few places the robot saw instead of one frame.

Methods (``SequenceConfig.method``), for a query *sequence* (the current frame and the buffered frames
before it, :mod:`vpr_ros.core.sequence_buffer`) against a map of single frames:

* ``seqslam`` -- sequence matching along the trajectory (Milford & Wyeth, "SeqSLAM: Visual route-based
  navigation for sunny summer days and stormy winter nights", ICRA 2012): for every map frame ``j`` the
  current frame could be at and every velocity ``v`` (map frames per buffer step) in a range, the query
  frame ``o`` steps back should look like map frame ``j - v * o``; the score of ``j`` is the best mean
  similarity along such a straight line through the query-vs-map similarity band. Similarities are
  first *locally contrast-enhanced* as in SeqSLAM, i.e. compared with their mean over a window of
  neighbouring map frames, which removes what a whole stretch of route has in common with the query
  (e.g. "snowy forest") and keeps what singles out one place. Subtracting that local mean is linear in
  the map descriptors, so it is done once on the map (:func:`locally_centred`) and any single similarity
  can be computed on its own -- which lets ``search: topk`` score only the lines seeded by each frame's
  FAISS top-k instead of the full similarity matrix, so the cost does not grow with the map.
* ``seq2im_min`` / ``seq2im_mode`` -- Mapillary SLS (Warburg et al., thesis section 4.2.2): each frame of
  the sequence retrieves on its own; MIN keeps the map frame at the smallest distance to any frame of the
  sequence, MODE the map frame most frames have among their k nearest (a majority vote).
* ``seq2seq_max`` / ``seq2seq_avg`` / ``seq2seq_cat`` -- MSLS section 4.2.1: frame descriptors of the
  sequence are pooled (element-wise max, mean, or concatenated) into one descriptor, compared with the
  same pooling of every window of consecutive map frames (MAX / AVG through a FAISS index of the pooled
  map windows; CAT through the identity "cosine of concatenations = mean cosine of aligned frames").
* :func:`im2seq` (MSLS 4.2.2): one query image against a map cut into sequences: the sequence holding the
  nearest frame. It answers "which stretch of route", so it is an evaluation function, not a localizer
  method (its best frame is the single-frame answer).

The seq2im and seq2seq methods of the thesis treat a sequence as a set of views of one place (MSLS
sequences are short). On a route map the frames of the query sequence are successive places, so the
localizer moves each frame's neighbours forward by the progress since that frame (``seq2im``) or compares
with windows of consecutive map frames ending at the current place (``seq2seq``); the functions below
take those shifts as arguments, and without them are the thesis' methods exactly.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from vpr_ros.config import setting
from vpr_ros.core.paths import resolve_path
from vpr_ros.core.sequence_buffer import BufferedFrame, FrameBuffer, SequenceWindow
from vpr_ros.core.sequence_model import SequenceDescriptorModel, SequenceModelError, window_rows

SEQUENCE_METHODS = ("none", "seqslam", "seq2im_min", "seq2im_mode", "seq2seq_max", "seq2seq_avg", "seq2seq_cat",
                    "learned", "hierarchical")
#: Methods that run a learned sequence model (``SequenceConfig.model``).
LEARNED_METHODS = ("learned", "hierarchical")
POOLINGS = ("max", "avg", "cat")
_EPS = 1e-12


@dataclass(frozen=True)
class SequenceConfig:
    """Sequence fusion after retrieval: frame buffer spacing and the sequence matching method."""

    method: str = setting(
        "none", "none = single-frame answers; seqslam = SeqSLAM sequence matching along the route (needs a map "
        "made from a traversal, frames in driving order); seq2im_min / seq2im_mode = per-frame retrieval fused "
        "by MIN distance / MODE vote; seq2seq_max / _avg / _cat = pooled sequence descriptors; learned = the "
        "learned sequence descriptor of 'model' (SeqNet); hierarchical = its shortlist re-scored by SeqSLAM",
        choices=SEQUENCE_METHODS)
    model: str = setting(
        "", "learned / hierarchical: the sequence model (.onnx with its .yaml card beside it, written by "
        "vpr-adapt); it must have been trained on the map's encoder")
    shortlist: int = setting(
        20, "hierarchical: map places the learned sequence descriptor shortlists; SeqSLAM re-scores only "
        "these (SeqNet's S_L -> SeqMatch)", min=1)
    length: int = setting(10, "frames in a query sequence: the current frame and the buffered ones before it",
                          min=1)
    min_time_spacing: float = setting(
        0.0, "seconds between buffered frames when spacing by time (no odometry); 0 = buffer every frame",
        min=0.0)
    min_distance_spacing: float = setting(
        0.0, "metres travelled between buffered frames when odometry is available (0 = space by time only); "
        "best near the spacing of the map's frames, so that one buffer step is about one map frame", min=0.0)
    odometry_timeout: float = setting(
        0.5, "seconds: an image newer than the last odometry message by more than this is spaced by time",
        min=0.0)
    max_gap: float = setting(
        5.0, "seconds without frames after which the sequence starts afresh (0 = never)", min=0.0)
    velocity_min: float = setting(
        0.8, "seqslam: slowest progress along the map, in map frames per buffer step (negative values match "
        "a map driven in the opposite direction)")
    velocity_max: float = setting(1.2, "seqslam: fastest progress, in map frames per buffer step")
    velocity_steps: int = setting(5, "seqslam: velocities tried between velocity_min and velocity_max",
                                  min=1)
    window: int = setting(
        10, "seqslam: map frames in the local-contrast window (similarities are centred on their mean over "
        "this many neighbouring map frames, as SeqSLAM's contrast enhancement); answers closer than half of "
        "it to a better one are dropped from the candidates; 0 = raw similarities", min=0)
    search: str = setting(
        "topk", "seqslam: topk = score only the trajectories through each frame's FAISS top-k (cost "
        "independent of the map size); full = every map frame (exact, cost grows with the map)",
        choices=("topk", "full"))
    # Chosen on the tuning split (bench/bench_defaults.py, bench/results/defaults.json).
    frame_top_k: int = setting(
        10, "per-frame candidates retrieved for seqslam (topk search) and seq2im_min; more candidates come "
        "closer to search: full, at a cost that grows with them", min=1)
    vote_k: int = setting(5, "seq2im_mode: nearest map frames each frame of the sequence votes for", min=1)

    def __post_init__(self) -> None:
        if self.velocity_max < self.velocity_min:
            raise ValueError("sequence.velocity_max must be >= sequence.velocity_min")
        if self.method in LEARNED_METHODS and not self.model:
            raise ValueError(f"sequence.method {self.method!r} needs sequence.model (a sequence model from "
                             "vpr-adapt)")

    @property
    def velocities(self) -> np.ndarray:
        """(velocity_steps,) float64, evenly spaced from velocity_min to velocity_max."""
        return np.linspace(self.velocity_min, self.velocity_max, self.velocity_steps)


# ---- seq2seq: pooled sequence descriptors (MSLS 4.2.1) -----------------------------------------------
def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)).astype(np.float32)


def pool_sequence(descriptors: np.ndarray, pooling: str) -> np.ndarray:
    """One descriptor for a sequence of frame descriptors, L2-normalised.

    ``max`` / ``avg`` pool element-wise over the frames; ``cat`` concatenates them in order (so the
    cosine of two concatenations is the mean cosine of aligned frames).

    Shape:
        descriptors: (L, P) oldest frame first; returns (P,) for max / avg, (L * P,) for cat.
    """
    if descriptors.ndim != 2 or descriptors.shape[0] < 1:
        raise ValueError(f"pool_sequence: expected (L, P) frame descriptors with L >= 1, got {descriptors.shape}")
    if pooling == "max":
        return _l2(descriptors.max(axis=0))
    if pooling == "avg":
        return _l2(descriptors.mean(axis=0))
    if pooling == "cat":
        return _l2(descriptors.reshape(-1))
    raise ValueError(f"pool_sequence: pooling {pooling!r} is not one of {list(POOLINGS)}")


def reference_sequences(descriptors: np.ndarray, length: int, pooling: str) -> np.ndarray:
    """The :func:`pool_sequence` of every window of ``length`` consecutive map frames, by its last row.

    Shape:
        descriptors: (N, P); returns (N, P) for max / avg, (N, length * P) for cat (memory N * length * P).
    """
    rows = window_rows(len(descriptors), length)
    if pooling == "cat":
        return _l2(np.asarray(descriptors)[rows].reshape(len(descriptors), -1))
    if pooling not in POOLINGS:
        raise ValueError(f"reference_sequences: pooling {pooling!r} is not one of {list(POOLINGS)}")
    desc = np.asarray(descriptors, dtype=np.float32)
    acc = desc[rows[:, 0]].copy()
    for t in range(1, length):  # one vectorised pass per frame of the window
        if pooling == "max":
            np.maximum(acc, desc[rows[:, t]], out=acc)
        else:
            acc += desc[rows[:, t]]
    return _l2(acc)


# ---- seq2im / im2seq (MSLS 4.2.2) --------------------------------------------------------------------
def _shifted(frame_rows: Sequence[np.ndarray], shifts: Sequence[int] | np.ndarray | None,
             num_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated candidate rows (moved by each frame's shift), their frame index and a validity mask."""
    if shifts is None:
        shifts = np.zeros(len(frame_rows), dtype=np.int64)
    if len(shifts) != len(frame_rows):
        raise ValueError(f"{len(shifts)} shifts for {len(frame_rows)} frames")
    rows = np.concatenate([np.asarray(r, np.int64) + int(s) for r, s in zip(frame_rows, shifts, strict=True)]) \
        if frame_rows else np.zeros(0, np.int64)
    frame = np.repeat(np.arange(len(frame_rows)), [len(r) for r in frame_rows])
    return rows, frame, (rows >= 0) & (rows < num_rows)


def seq2im_min(frame_rows: Sequence[np.ndarray], frame_scores: Sequence[np.ndarray], num_rows: int,
               shifts: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """seq2im MIN: map frames ranked by their smallest distance (largest similarity) to any sequence frame.

    Args:
        frame_rows, frame_scores: per sequence frame, its retrieved map rows and similarities.
        num_rows: map size (rows moved outside the map by a shift are dropped).
        shifts: per frame, rows added to its candidates (None = the thesis' method, no shift).

    Shape:
        frame_rows[t], frame_scores[t]: (k_t,); returns rows (M,) and scores (M,), best first, rows unique.
    """
    rows, _, ok = _shifted(frame_rows, shifts, num_rows)
    scores = np.concatenate([np.asarray(s, np.float32) for s in frame_scores]) if frame_scores else \
        np.zeros(0, np.float32)
    rows, scores = rows[ok], scores[ok]
    order = np.argsort(-scores, kind="stable")
    rows, scores = rows[order], scores[order]
    _, first = np.unique(rows, return_index=True)  # first occurrence in score order = best score per row
    first = np.sort(first)
    return rows[first], scores[first]


def seq2im_mode(frame_rows: Sequence[np.ndarray], frame_scores: Sequence[np.ndarray], num_rows: int, k: int,
                shifts: Sequence[int] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """seq2im MODE: map frames ranked by how many sequence frames have them among their ``k`` nearest.

    Ties are broken by the best similarity. The score is the fraction of the sequence's frames that
    voted, in [0, 1].

    Shape:
        as :func:`seq2im_min`; returns rows (M,) and vote fractions (M,), best first.
    """
    top_rows = [np.asarray(r)[:k] for r in frame_rows]
    top_scores = [np.asarray(s, np.float32)[:k] for s in frame_scores]
    rows, frame, ok = _shifted(top_rows, shifts, num_rows)
    scores = np.concatenate(top_scores) if top_scores else np.zeros(0, np.float32)
    rows, frame, scores = rows[ok], frame[ok], scores[ok]
    # One vote per frame and row, even if a shift folded two candidates of a frame onto one row.
    pairs = np.unique(np.stack([rows, frame], axis=1), axis=0) if rows.size else np.zeros((0, 2), np.int64)
    unique, votes = np.unique(pairs[:, 0], return_counts=True)
    best = np.full(len(unique), -np.inf, dtype=np.float64)
    np.maximum.at(best, np.searchsorted(unique, rows), scores)
    order = np.lexsort((-best, -votes))
    return unique[order], (votes[order] / max(len(frame_rows), 1)).astype(np.float32)


def im2seq(rows: np.ndarray, scores: np.ndarray, segment_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """im2seq: map sequences (consecutive segments of ``segment_length`` rows) ranked by their nearest frame.

    Shape:
        rows, scores: (k,) one image's retrieved map rows and similarities, best first.
        returns segment ids (M,), their scores (M,) and the best row in each (M,), best first.
    """
    if segment_length < 1:
        raise ValueError(f"im2seq: segment_length must be at least 1, got {segment_length}")
    rows = np.asarray(rows, np.int64)
    order = np.argsort(-np.asarray(scores), kind="stable")
    segments = rows[order] // segment_length
    _, first = np.unique(segments, return_index=True)
    first = np.sort(first)
    return segments[first], np.asarray(scores, np.float32)[order][first], rows[order][first]


# ---- seqslam: sequence matching along the trajectory ------------------------------------------------
def locally_centred(descriptors: np.ndarray, window: int, block: int = 256) -> np.ndarray:
    """Map descriptors minus their mean over ``window`` neighbouring map frames (SeqSLAM contrast, linearised).

    For a query q, ``q . centred[j] = s_j - mean(s_{j-h..j+h})`` with ``s_j = q . d_j`` and ``h = window // 2``:
    the numerator of SeqSLAM's local contrast enhancement of the similarity column, for every query at
    once. The window is cut at the ends of the map. ``window`` 0 or 1 returns the descriptors unchanged.

    Shape:
        descriptors: (N, P); returns (N, P) float32.
    """
    desc = np.asarray(descriptors, dtype=np.float32)
    h = window // 2
    if h == 0 or len(desc) == 0:
        return desc.copy()
    n = len(desc)
    lo = np.clip(np.arange(n) - h, 0, n)
    hi = np.clip(np.arange(n) + h + 1, 0, n)
    count = (hi - lo).astype(np.float64)[:, None]
    out = np.empty_like(desc)
    for c0 in range(0, desc.shape[1], block):  # column blocks keep the float64 running sums small
        part = desc[:, c0:c0 + block].astype(np.float64)
        csum = np.concatenate([np.zeros((1, part.shape[1])), np.cumsum(part, axis=0)])
        out[:, c0:c0 + block] = part - (csum[hi] - csum[lo]) / count
    return out


def trajectory_rows(ends: np.ndarray, velocities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Map row each sequence frame should match, for every end row and velocity: ``round(j - v * o)``.

    Shape:
        ends: (C,) current-frame rows j; velocities: (V,); offsets: (L,) steps back from the current frame.
        returns (C, V, L) int64.
    """
    back = np.asarray(velocities, np.float64)[:, None] * np.asarray(offsets, np.float64)[None, :]
    return np.rint(np.asarray(ends, np.float64)[:, None, None] - back[None]).astype(np.int64)


def candidate_ends(frame_rows: Sequence[np.ndarray], velocities: np.ndarray, offsets: np.ndarray,
                   num_rows: int) -> np.ndarray:
    """End rows of the trajectories through each frame's candidates: ``round(r + v * o)``, unique, in the map.

    Shape:
        frame_rows[t]: (k_t,) candidate rows of frame t; returns (C,) int64 sorted.
    """
    ends = [np.rint(np.asarray(r, np.float64)[:, None] + np.asarray(velocities)[None, :] * float(o)).ravel()
            for r, o in zip(frame_rows, offsets, strict=True)]
    ends_all = np.concatenate(ends).astype(np.int64) if ends else np.zeros(0, np.int64)
    return np.unique(ends_all[(ends_all >= 0) & (ends_all < num_rows)])


def sequence_scores(similarity: Sequence[Callable[[np.ndarray], np.ndarray]], ends: np.ndarray,
                    velocities: np.ndarray, offsets: np.ndarray, num_rows: int,
                    length: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Best mean similarity along a straight trajectory ending at each of ``ends``, over ``velocities``.

    Args:
        similarity: per sequence frame, a function map rows -> (centred) similarities of that frame.
        ends: candidate rows of the current frame.
        velocities: map rows per buffer step.
        offsets: per frame, steps back from the current frame.
        num_rows: map size; trajectory points outside the map count as similarity 0.
        length: full sequence length: a shorter sequence is scored as if its missing frames had
            similarity 0, so a sequence that is still filling up cannot look as sure as a complete one.

    Shape:
        ends: (C,); returns the best score (C,) and the velocity that gave it (C,).
    """
    rows = trajectory_rows(ends, velocities, offsets)
    inside = (rows >= 0) & (rows < num_rows)
    total = np.zeros(rows.shape[:2], dtype=np.float64)
    for t, lookup in enumerate(similarity):  # one vectorised lookup per sequence frame
        mask = inside[:, :, t]
        values = np.zeros(rows.shape[:2], dtype=np.float64)
        values[mask] = lookup(rows[:, :, t][mask])
        total += values
    total /= max(len(similarity), length, 1)
    best = total.argmax(axis=1) if total.size else np.zeros(len(ends), np.int64)
    return total[np.arange(len(ends)), best].astype(np.float32), np.asarray(velocities)[best]


def seqslam_dense(similarity: np.ndarray, offsets: np.ndarray, velocities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`sequence_scores` of every map row from a full similarity band.

    Shape:
        similarity: (L, N) one row per sequence frame, oldest first; offsets: (L,); returns (N,), (N,).
    """
    n = similarity.shape[1]
    return sequence_scores([row.__getitem__ for row in similarity], np.arange(n), velocities, offsets, n)


def suppress_neighbours(rows: np.ndarray, scores: np.ndarray, radius: int, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-maximum suppression along the map: the best rows, none within ``radius`` rows of a better one.

    Shape:
        rows, scores: (C,); returns at most ``keep`` rows and scores, best first.
    """
    order = np.argsort(-scores, kind="stable")
    rows, scores = np.asarray(rows)[order], np.asarray(scores)[order]
    alive = np.ones(len(rows), dtype=bool)
    chosen: list[int] = []
    while len(chosen) < keep and alive.any():  # at most `keep` passes, each vectorised
        i = int(np.argmax(alive))
        chosen.append(i)
        alive &= np.abs(rows - rows[i]) > radius
    idx = np.array(chosen, dtype=np.int64)
    return rows[idx], scores[idx]


class CentredSimilarities:
    """Similarities of one query frame to the locally centred map rows, computed once and remembered.

    ``dense`` computes the whole column at once (``search: full``); otherwise rows are computed when first
    asked for and kept, so consecutive queries -- whose trajectories overlap -- reuse them. Once a frame
    needs more than a quarter of a (small) map, one matrix-vector product over all rows is cheaper than
    gathering rows, and the column is computed whole.
    """

    def __init__(self, descriptor: np.ndarray, centred: np.ndarray, dense: bool) -> None:
        self.descriptor = np.asarray(descriptor, dtype=np.float32)
        self.centred = centred
        self.column = centred @ self.descriptor if dense else None
        self.rows = np.zeros(0, np.int64)
        self.values = np.zeros(0, np.float32)

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if self.column is not None:
            return self.column[rows]
        unique = np.unique(rows)
        missing = np.setdiff1d(unique, self.rows, assume_unique=True)
        if 4 * (missing.size + self.rows.size) > len(self.centred):
            self.column = self.centred @ self.descriptor
            return self.column[rows]
        if missing.size:
            new = np.asarray(self.centred[missing]) @ self.descriptor
            merged = np.concatenate([self.rows, missing])
            order = np.argsort(merged, kind="stable")
            self.rows, self.values = merged[order], np.concatenate([self.values, new])[order]
        return self.values[np.searchsorted(self.rows, rows)]


@dataclass
class SequenceResult:
    """Sequence fusion's ranked answer for the current frame.

    Shape:
        rows: (k,) map rows, best first; scores: (k,) sequence scores (higher is better).
    """

    rows: np.ndarray
    scores: np.ndarray
    frames: int
    complete: bool


class SequenceMatcher:
    """Keeps the query sequence of one camera and fuses each new frame with it (the ``sequence`` stage).

    The localizer owns one per camera; per query frame it passes the frame's descriptor and its single-frame
    candidates (map rows and scores), and gets the sequence answer::

        matcher = SequenceMatcher(SequenceConfig(method="seqslam"), refmap.descriptors, top_k=5)
        result = matcher.fuse(descriptor, rows, scores, stamp=12.5)   # SequenceResult: rows, scores, frames
    """

    def __init__(self, config: SequenceConfig, descriptors: np.ndarray, top_k: int,
                 map_encoder: Mapping[str, Any] | None = None) -> None:
        """Args:
            config: the sequence stage's settings.
            descriptors: (N, P) the map's frame descriptors, rows in driving order.
            top_k: candidates per answer.
            map_encoder: the map manifest's encoder identity; a learned method's model is checked against it
                (:meth:`SequenceDescriptorModel.check_map`).
        """
        if config.method not in SEQUENCE_METHODS or config.method == "none":
            raise ValueError(f"sequence method {config.method!r}: expected one of {list(SEQUENCE_METHODS[1:])}")
        self.config = config
        self.descriptors = descriptors
        self.num_rows = len(descriptors)
        self.top_k = top_k
        self.buffer = FrameBuffer(config.length, config.min_time_spacing, config.min_distance_spacing,
                                  config.max_gap)
        self._lock = threading.Lock()
        self._centred: np.ndarray | None = None
        self._pooled: tuple[np.ndarray, object] | None = None
        self._learned: object | None = None
        self.model: SequenceDescriptorModel | None = None
        if config.method in LEARNED_METHODS:
            self.model = SequenceDescriptorModel(resolve_path(config.model, what="sequence.model"))
            if map_encoder is not None:
                self.model.check_map(map_encoder, descriptors.shape[1])
            elif self.model.card.input_dim != descriptors.shape[1]:
                raise SequenceModelError(f"sequence model {config.model} takes {self.model.card.input_dim}-d "
                                         f"frame descriptors, the map has {descriptors.shape[1]}-d")

    @property
    def candidates_needed(self) -> int:
        """Candidates per frame this matcher needs from retrieval (0 when it does its own search)."""
        method = self.config.method
        if (method == "seqslam" and self.config.search == "topk") or method == "seq2im_min":
            return self.config.frame_top_k
        if method == "seq2im_mode":
            return self.config.vote_k
        return 0

    def reset(self) -> None:
        """Forget the query sequence (the next frame starts a new one)."""
        with self._lock:
            self.buffer.reset()

    def with_top_k(self, top_k: int) -> SequenceMatcher:
        """This matcher, answering with ``top_k`` candidates: a copy that shares the buffered frames (and its
        lock) with this one, so a change of top_k keeps the query sequence."""
        other = copy.copy(self)
        other.top_k = top_k
        return other

    def follow_map(self, descriptors: np.ndarray) -> None:
        """Use the descriptors of a map that grew (an online map) from now on, keeping the query sequence.

        Only when the row count changed: the map-side arrays (locally centred descriptors, pooled index) and
        the buffered frames' cached similarities are computed again, lazily, for the new rows.
        """
        with self._lock:
            if len(descriptors) == self.num_rows:
                return
            self.descriptors = descriptors
            self.num_rows = len(descriptors)
            self._centred = None
            self._pooled = None
            self._learned = None
            for frame in self.buffer.frames():
                frame.cache = None

    # ---- lazily built map-side arrays --------------------------------------------------------------
    @property
    def centred(self) -> np.ndarray:
        if self._centred is None:
            self._centred = locally_centred(self.descriptors, self.config.window)
        return self._centred

    def _learned_index(self) -> object:
        """FAISS inner-product index of the learned descriptors of every map window (built on first use)."""
        if self._learned is None:
            import faiss

            assert self.model is not None
            described = self.model.describe_map(self.descriptors, self.config.length)
            index = faiss.IndexFlatIP(described.shape[1])
            index.add(np.ascontiguousarray(described))
            self._learned = index
        return self._learned

    def _pooled_index(self) -> tuple[np.ndarray, object]:
        if self._pooled is None:
            import faiss

            pooled = reference_sequences(self.descriptors, self.config.length, self.config.method.split("_")[1])
            index = faiss.IndexFlatIP(pooled.shape[1])
            index.add(np.ascontiguousarray(pooled))
            self._pooled = (pooled, index)
        return self._pooled

    # ---- the stage ---------------------------------------------------------------------------------
    def fuse(self, descriptor: np.ndarray, rows: np.ndarray, scores: np.ndarray, stamp: float,
             travelled: float | None = None) -> SequenceResult:
        """Add the current frame (descriptor + its retrieval candidates) and rank map rows for the sequence.

        Args:
            descriptor: (P,) the current frame's global descriptor.
            rows, scores: (k,) its retrieval candidates, best first (after any re-ranking).
            stamp: seconds; spacing by time and gap detection use it.
            travelled: odometry path length at ``stamp`` in metres (None without odometry).
        """
        frame = BufferedFrame(float(stamp), np.asarray(descriptor, np.float32), np.asarray(rows, np.int64),
                              np.asarray(scores, np.float32), travelled)
        with self._lock:
            window = self.buffer.push(frame)
            method = self.config.method
            if method == "seqslam":
                out_rows, out_scores = self._seqslam(window)
            elif method.startswith("seq2im"):
                out_rows, out_scores = self._seq2im(window)
            elif method == "learned":
                out_rows, out_scores = self._learned_search(window, self.top_k)
            elif method == "hierarchical":
                out_rows, out_scores = self._hierarchical(window)
            else:
                out_rows, out_scores = self._seq2seq(window)
        return SequenceResult(out_rows[: self.top_k], out_scores[: self.top_k], len(window),
                              len(window) >= self.config.length)

    def _seqslam(self, window: SequenceWindow) -> tuple[np.ndarray, np.ndarray]:
        dense = self.config.search == "full"
        for f in window.frames:
            if f.cache is None:
                f.cache = CentredSimilarities(f.descriptor, self.centred, dense)
        velocities = self.config.velocities
        if dense:
            ends = np.arange(self.num_rows)
        else:
            k = self.config.frame_top_k
            ends = candidate_ends([f.rows[:k] for f in window.frames], velocities, window.offsets, self.num_rows)
        scores, _ = sequence_scores([f.cache for f in window.frames], ends, velocities, window.offsets,
                                    self.num_rows, self.config.length)
        return suppress_neighbours(ends, scores, self.config.window // 2, self.top_k)

    def _learned_search(self, window: SequenceWindow, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The map windows nearest to the query window's learned descriptor.

        A sequence still filling up is padded with its oldest frame, as the map windows at the map's start
        repeat row 0, so query and map windows are always ``length`` frames.
        """
        assert self.model is not None
        frames = [window.frames[0]] * (self.config.length - len(window)) + window.frames
        query = self.model.describe(np.stack([f.descriptor for f in frames])[None])
        sims, idx = self._learned_index().search(query, min(k, self.num_rows))  # type: ignore[attr-defined]
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), sims[0][keep].astype(np.float32)

    def _hierarchical(self, window: SequenceWindow) -> tuple[np.ndarray, np.ndarray]:
        """SeqNet's hierarchy: the learned descriptor shortlists map places, SeqSLAM re-scores the shortlist.

        SeqSLAM's velocity search then settles where along the shortlisted stretch the sequence ends; its
        score orders the answer (so scores are SeqSLAM scores, as with ``method: seqslam``).
        """
        ends, _ = self._learned_search(window, self.config.shortlist)
        for f in window.frames:
            if f.cache is None:
                f.cache = CentredSimilarities(f.descriptor, self.centred, dense=False)
        scores, _ = sequence_scores([f.cache for f in window.frames], ends, self.config.velocities,
                                    window.offsets, self.num_rows, self.config.length)
        return suppress_neighbours(ends, scores, self.config.window // 2, self.top_k)

    def _seq2im(self, window: SequenceWindow) -> tuple[np.ndarray, np.ndarray]:
        # Each frame's neighbours are moved to where the current frame should be by now (see module doc).
        shift = np.rint(0.5 * (self.config.velocity_min + self.config.velocity_max) * window.offsets)
        rows = [f.rows for f in window.frames]
        scores = [f.scores for f in window.frames]
        if self.config.method == "seq2im_min":
            return seq2im_min(rows, scores, self.num_rows, shift)
        return seq2im_mode(rows, scores, self.num_rows, self.config.vote_k, shift)

    def _seq2seq(self, window: SequenceWindow) -> tuple[np.ndarray, np.ndarray]:
        pooling = self.config.method.split("_")[1]
        if pooling == "cat":
            return self._seq2seq_cat(window)
        desc = np.stack([f.descriptor for f in window.frames])
        _, index = self._pooled_index()
        query = pool_sequence(desc, pooling)[None]
        sims, idx = index.search(np.ascontiguousarray(query), min(self.top_k, self.num_rows))  # type: ignore[attr-defined]
        keep = idx[0] >= 0
        return idx[0][keep].astype(np.int64), sims[0][keep].astype(np.float32)

    def _seq2seq_cat(self, window: SequenceWindow) -> tuple[np.ndarray, np.ndarray]:
        """CAT without materialising (N, length * P) concatenations.

        For unit frame descriptors, the cosine of two L2-normalised concatenations of ``length`` frames is
        the mean cosine of aligned frames, so the score of the map window ending at row j is the mean of
        each query frame's similarity to its aligned map row -- one (N,) similarity column per frame,
        computed once when the frame arrives. A sequence still filling up is padded with its oldest
        frame, as map windows at the map's start repeat row 0.
        """
        length = self.config.length
        frames = [window.frames[0]] * (length - len(window)) + window.frames
        for f in window.frames:
            if f.cache is None:
                f.cache = CentredSimilarities(f.descriptor, self.descriptors, dense=True)
        rows = window_rows(self.num_rows, length)
        total = np.zeros(self.num_rows, dtype=np.float64)
        for t, f in enumerate(frames):  # one vectorised gather per frame
            total += f.cache.column[rows[:, t]]
        total /= length
        k = min(self.top_k, self.num_rows)
        best = np.argpartition(-total, k - 1)[:k]
        best = best[np.argsort(-total[best], kind="stable")]
        return best.astype(np.int64), total[best].astype(np.float32)
