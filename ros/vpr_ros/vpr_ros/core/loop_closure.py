"""Loop-closure gating: which place hypotheses are safe to hand to a SLAM back-end.

A wrong loop closure can wreck a pose graph, a missed one only delays the correction, so a hypothesis
becomes a loop closure only when

1. its matched map frame is not one of the robot's own recent frames: map frames whose stamp lies within
   ``exclusion_window`` seconds of the query are skipped (when the map is built online from the same
   camera, the last frames always match best -- that is not a loop);
2. its score passes ``min_score`` -- the sequence or single-frame score, or the ratio-test confidence
   (``score``); read the threshold off the precision-recall curve of ``evaluate``;
3. (with a sequence method) the query sequence is complete;
4. the last ``min_consecutive`` frames all passed and their matches are consistent: each within
   ``consistency_radius`` of the previous frame's match (map units; map rows when the map has no poses).

Everything here is ROS-free; the localize node converts :class:`LoopClosure` to a message.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from vpr_ros.config import setting
from vpr_ros.core.frames import FrameTable
from vpr_ros.core.localizer import Hypothesis, ratio_confidence


@dataclass(frozen=True)
class LoopClosureConfig:
    """When the localize node reports a loop closure on ~/loop_closure."""

    enabled: bool = setting(True, "publish gated loop closures on ~/loop_closure")
    score: str = setting(
        "confidence", "what min_score applies to: confidence = the ratio-test confidence in [0, 1] (best vs the "
        "best candidate farther than localizer.confidence_radius); score = the best candidate's score "
        "(sequence score with a sequence method, cosine similarity without)", choices=("score", "confidence"))
    # Chosen on the tuning split (bench/bench_defaults.py, bench/results/defaults.json): the smallest
    # threshold with no wrong closure there, for single frames (the default pipeline) and seqslam over 10
    # frames, on Nordland winter vs summer.
    min_score: float = setting(
        0.15, "threshold on the chosen score; a wrong loop closure costs a SLAM back end far more than a missed "
        "one, so take yours from evaluate on your own route (threshold_at_100_precision)")
    exclusion_window: float = setting(
        30.0, "seconds: map frames stamped this close to the query are the robot's own recent frames and "
        "are never matched (0 = off; map frames without stamps are never excluded)", min=0.0)
    min_consecutive: int = setting(
        3, "consecutive frames that must pass the threshold with consistent matches before the first "
        "loop closure is published (1 = every passing frame)", min=1)
    consistency_radius: float = setting(
        10.0, "matches of consecutive frames farther apart than this (map units; map rows when the map has "
        "no poses) are inconsistent and restart the count", min=0.0)
    require_full_sequence: bool = setting(
        True, "with a sequence method, wait until the query sequence has its full length")


@dataclass
class LoopClosure:
    """A gated match: the query frame's stamp, the map frame it closes a loop with, and how sure we are.

    ``score`` is the matched candidate's score (sequence, re-rank or cosine); ``confidence`` the ratio test in
    [0, 1] among the candidates outside the exclusion window; ``min_score`` gates one of them (config ``score``).

    Shape:
        position: (3,) map frame position (NaN if unknown); orientation: (4,) quaternion x y z w.
    """

    stamp: float
    row: int
    ref_id: int
    ref_stamp: float
    position: np.ndarray
    orientation: np.ndarray
    score: float
    consecutive: int
    confidence: float


class LoopClosureGate:
    """Applies :class:`LoopClosureConfig` to the stream of hypotheses of one camera (thread-safe: the node
    resets it from a service callback while its worker thread updates it).

    The localize node feeds it every answer of the localizer::

        gate = LoopClosureGate(LoopClosureConfig(min_score=0.2), refmap.frames, confidence_radius=5.0)
        closure = gate.update(hypothesis)   # a LoopClosure once the gate opens, else None
    """

    def __init__(self, config: LoopClosureConfig, frames: FrameTable, confidence_radius: float) -> None:
        self.config = config
        self.frames = frames
        self.confidence_radius = confidence_radius
        self.consecutive = 0
        self._previous: tuple[int, np.ndarray] | None = None
        self._lock = threading.Lock()

    def reset(self) -> None:
        """Forget the consecutive-frame history (e.g. together with the sequence buffer)."""
        with self._lock:
            self._forget()

    def reconfigure(self, config: LoopClosureConfig, confidence_radius: float) -> None:
        """Gate with new thresholds from the next hypothesis on, keeping the consecutive-frame history."""
        with self._lock:
            self.config = config
            self.confidence_radius = confidence_radius

    def _forget(self) -> None:
        self.consecutive = 0
        self._previous = None

    def candidate(self, hyp: Hypothesis) -> tuple[int, float, float] | None:
        """Position in ``hyp`` of the best candidate outside the exclusion window, its score, and the ratio-test
        confidence among the candidates outside the window."""
        if len(hyp.indices) == 0:
            return None
        ref_stamps = self.frames.stamps[hyp.indices]
        allowed = ~(np.abs(ref_stamps - hyp.stamp) < self.config.exclusion_window)  # NaN stamps stay allowed
        if not allowed.any():
            return None
        first = int(np.argmax(allowed))
        keep = np.flatnonzero(allowed)
        confidence = ratio_confidence(hyp.scores[keep], hyp.positions[keep], self.confidence_radius)
        return first, float(hyp.scores[first]), confidence

    def _consistent(self, row: int, position: np.ndarray) -> bool:
        if self._previous is None:
            return False
        prev_row, prev_position = self._previous
        if np.isfinite(position).all() and np.isfinite(prev_position).all():
            return float(np.linalg.norm(position - prev_position)) <= self.config.consistency_radius
        return abs(row - prev_row) <= self.config.consistency_radius

    def update(self, hyp: Hypothesis) -> LoopClosure | None:
        """Feed the next hypothesis of the camera; returns a loop closure when every gate passes."""
        with self._lock:
            return self._update(hyp)

    def _update(self, hyp: Hypothesis) -> LoopClosure | None:
        picked = self.candidate(hyp)
        if picked is None or (self.config.require_full_sequence and not hyp.sequence_complete):
            self._forget()
            return None
        first, score, confidence = picked
        gated = score if self.config.score == "score" else confidence
        if not gated >= self.config.min_score:  # NaN scores fail too
            self._forget()
            return None
        row = int(hyp.indices[first])
        position = np.asarray(hyp.positions[first], dtype=np.float64)
        self.consecutive = self.consecutive + 1 if self._consistent(row, position) else 1
        self._previous = (row, position)
        if self.consecutive < self.config.min_consecutive:
            return None
        return LoopClosure(stamp=hyp.stamp, row=row, ref_id=int(hyp.ids[first]),
                           ref_stamp=float(self.frames.stamps[row]), position=position,
                           orientation=np.asarray(hyp.orientations[first], dtype=np.float64), score=score,
                           consecutive=self.consecutive, confidence=confidence)
