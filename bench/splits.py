"""Tuning and held-out splits of the shipped data sets: defaults are chosen on one, figures reported on the other.

Both shipped data sets are two traversals of one route whose frames are aligned (frame ``i`` of the
reference traversal and frame ``i`` of the query traversal show the same place), so a split is a range of
places along the route, taken from *both* traversals: a segment's map holds only its own reference frames
and its queries are only its own query frames. Nothing of the held-out segment -- neither images nor
ground truth -- is seen while the defaults are chosen (``bench/bench_defaults.py``), and the reported
figures (``bench/bench_sequence.py``, the corridor recall of ``bench/bench_patch_rerank.py``) use only the
held-out segment.

* Nordland part 1 (1800 places, +-1 place tolerance): tuning = places 0-599 (the first third of the route),
  then a gap of 20 places, held-out = places 620-1799. 20 places is the longest query sequence the
  benchmarks use, so even a protocol that ran the whole winter traversal in order and scored only the
  held-out queries would give no held-out query a sequence that reaches into the tuning segment; it
  also keeps the look-alike neighbours of the last tuning places out of the held-out map.
* corridor (111 places, VPR-Bench ground truth = +-2 places): tuning = places 0-54 (the first half),
  a gap of 2 places (the ground-truth tolerance: no held-out query has a tuning place among its
  positives), held-out = places 57-110.

A segment's frames are renumbered 0..n-1 in route order (ids, and so map rows, restart at 0; names,
sources, stamps and poses are the original frames'), so the index ground truth
``vpr_ros.eval.ground_truth.positives_by_index`` applies to a segment unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vpr_ros.core.frames import FrameSource
from vpr_ros.io.images import folder_source

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"


@dataclass(frozen=True)
class Segment:
    """Places ``start`` .. ``stop - 1`` along the route (the same rows of both traversals)."""

    start: int
    stop: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.stop:
            raise ValueError(f"a segment needs 0 <= start < stop, got {self.start}..{self.stop}")

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def rows(self) -> np.ndarray:
        """(n,) int64 row numbers of the segment's frames in the full traversal."""
        return np.arange(self.start, self.stop, dtype=np.int64)


@dataclass(frozen=True)
class RouteSplit:
    """A data set of two frame-aligned traversals, split along the route into tuning and held-out places."""

    name: str
    reference: Path
    query: Path
    places: int
    tolerance: int
    tuning: Segment
    held_out: Segment
    reference_poses: Path | None = None
    query_poses: Path | None = None

    def __post_init__(self) -> None:
        if self.tuning.stop > self.held_out.start or self.held_out.stop > self.places:
            raise ValueError(f"{self.name}: tuning {self.tuning} must end before held-out {self.held_out}, "
                             f"which must end by place {self.places}")

    @property
    def gap(self) -> int:
        """Places between the tuning and the held-out segment, used by neither."""
        return self.held_out.start - self.tuning.stop

    def segment(self, which: str) -> Segment:
        if which not in ("tuning", "held_out"):
            raise ValueError(f"segment must be 'tuning' or 'held_out', got {which!r}")
        return self.tuning if which == "tuning" else self.held_out

    def sources(self, which: str) -> tuple[FrameSource, FrameSource]:
        """(reference, query) frame sources of the ``tuning`` or ``held_out`` segment."""
        segment = self.segment(which)
        reference = folder_source(self.reference, self.reference_poses)
        query = folder_source(self.query, self.query_poses)
        for source in (reference, query):
            if len(source) != self.places:
                raise ValueError(f"{self.name}: expected {self.places} frames, found {len(source)}")
        return segment_source(reference, segment), segment_source(query, segment)

    def describe(self) -> dict[str, object]:
        """The split as plain data, for result files."""
        return {"dataset": self.name, "places": self.places, "tolerance": self.tolerance,
                "tuning": [self.tuning.start, self.tuning.stop - 1], "gap": self.gap,
                "held_out": [self.held_out.start, self.held_out.stop - 1]}


def segment_source(source: FrameSource, segment: Segment) -> FrameSource:
    """The frames of ``segment``, renumbered 0..n-1 (everything else as in ``source``)."""
    if segment.stop > len(source):
        raise ValueError(f"segment {segment.start}..{segment.stop - 1} runs past the {len(source)} frames")
    return source.take(segment.rows, ids=np.arange(len(segment.rows)))


NORDLAND = RouteSplit("nordland_part1", DATA / "nordland_part1" / "summer", DATA / "nordland_part1" / "winter",
                      places=1800, tolerance=1, tuning=Segment(0, 600), held_out=Segment(620, 1800))
CORRIDOR = RouteSplit("corridor", DATA / "corridor" / "ref", DATA / "corridor" / "query", places=111,
                      tolerance=2, tuning=Segment(0, 55), held_out=Segment(57, 111),
                      reference_poses=DATA / "corridor" / "ref_poses.csv",
                      query_poses=DATA / "corridor" / "query_poses.csv")
