"""Ground truth: which reference frames are correct matches for each query.

A :class:`GroundTruth` holds, per query, the map rows that count as correct. It is made from one of three
rules, resolved against the map's and the queries' frame tables by :func:`resolve_ground_truth`:

* :class:`WithinDistance` -- a reference within so many metres (and degrees of heading) of the query pose;
* :class:`WithinIndex`    -- aligned traversals: query i matches reference ids i-K..i+K (e.g. Nordland);
* :class:`VprBenchFile`   -- a VPR-Bench ``ground_truth_new.npy`` (query index -> reference indices).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.frames import FrameTable
from vpr_ros.errors import InputError
from vpr_ros.io.poses import quaternion_to_yaw

log = logging.getLogger(__name__)


@dataclass
class GroundTruth:
    """Per query, the map row indices that count as correct, and how that was decided."""

    positives: list[np.ndarray]
    description: str

    def __len__(self) -> int:
        return len(self.positives)

    @property
    def has_positive(self) -> np.ndarray:
        return np.array([p.size > 0 for p in self.positives], dtype=bool)


def positives_within(query_positions: np.ndarray, ref_positions: np.ndarray, dist_threshold: float,
                     query_orientations: np.ndarray | None = None, ref_orientations: np.ndarray | None = None,
                     angle_threshold_deg: float | None = None) -> GroundTruth:
    """References within ``dist_threshold`` (and, if given, within ``angle_threshold_deg`` of heading).

    Uses a FAISS range search, so it scales to large maps. Queries or references with unknown (NaN)
    positions have no positives; a heading test with unknown headings is skipped for that pair.
    """
    import faiss

    q = np.ascontiguousarray(query_positions, dtype=np.float32)
    r = np.ascontiguousarray(ref_positions, dtype=np.float32)
    ref_ok = ~np.isnan(r).any(1)
    ref_rows = np.flatnonzero(ref_ok)
    index = faiss.IndexFlatL2(3)
    index.add(np.ascontiguousarray(r[ref_ok]))
    q_ok = ~np.isnan(q).any(1)
    positives = [np.zeros(0, np.int64) for _ in range(len(q))]
    if q_ok.any() and len(ref_rows):
        # FAISS keeps distances strictly below the radius; "within" is inclusive, hence the tiny margin.
        radius = float(dist_threshold) ** 2 * (1 + 1e-6) + 1e-9
        lims, _, labels = index.range_search(np.ascontiguousarray(q[q_ok]), radius)
        for j, qi in enumerate(np.flatnonzero(q_ok)):
            positives[qi] = np.sort(ref_rows[labels[lims[j]:lims[j + 1]]].astype(np.int64))
    desc = f"within {dist_threshold:g} m"
    if angle_threshold_deg is not None and query_orientations is not None and ref_orientations is not None:
        q_yaw = quaternion_to_yaw(query_orientations)
        r_yaw = quaternion_to_yaw(ref_orientations)
        for qi, pos in enumerate(positives):
            if pos.size == 0 or np.isnan(q_yaw[qi]):
                continue
            diff = np.degrees(np.abs(np.angle(np.exp(1j * (r_yaw[pos] - q_yaw[qi])))))
            positives[qi] = pos[~(diff > angle_threshold_deg)]
        desc += f" and {angle_threshold_deg:g} deg"
    return GroundTruth(positives, desc)


def positives_from_vpr_bench(path: str | Path, ref_ids: np.ndarray, num_queries: int) -> GroundTruth:
    """VPR-Bench ``ground_truth_new.npy``: rows ``[query_index, [reference indices]]``.

    Reference indices are matched to map frame ids (maps built from a folder number frames 0..N-1 in
    sorted file order, the order VPR-Bench uses).
    """
    path = Path(path)
    try:
        rows = np.load(path, allow_pickle=True)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a VPR-Bench ground-truth .npy ({exc})") from None
    row_of_id = {int(fid): row for row, fid in enumerate(ref_ids)}
    positives = [np.zeros(0, np.int64) for _ in range(num_queries)]
    for entry in rows:
        qi, refs = int(entry[0]), np.atleast_1d(np.asarray(entry[1], dtype=np.int64))
        if 0 <= qi < num_queries:
            positives[qi] = np.array(sorted(row_of_id[r] for r in refs.tolist() if r in row_of_id), np.int64)
    return GroundTruth(positives, f"VPR-Bench ground truth {path.name}")


def positives_by_index(num_queries: int, ref_ids: np.ndarray, tolerance: int) -> GroundTruth:
    """Query i matches references whose id is within +-``tolerance`` of i (aligned traversals, e.g. Nordland)."""
    ids = np.asarray(ref_ids)
    positives = [np.flatnonzero(np.abs(ids - i) <= tolerance).astype(np.int64) for i in range(num_queries)]
    return GroundTruth(positives, f"same index +-{tolerance}")


@dataclass(frozen=True)
class WithinDistance:
    """Correct: a reference within ``metres`` of the query position (and ``degrees`` of its heading, if given)."""

    metres: float = 25.0
    degrees: float | None = None

    def __post_init__(self) -> None:
        if not self.metres > 0:
            raise InputError(f"distance threshold must be positive metres, got {self.metres}")
        if self.degrees is not None and not self.degrees > 0:
            raise InputError(f"angle threshold must be positive degrees, got {self.degrees}")

    def describe(self) -> dict[str, Any]:
        return {"rule": "within distance", "dist_threshold_m": self.metres, "angle_threshold_deg": self.degrees}


@dataclass(frozen=True)
class WithinIndex:
    """Correct: aligned traversals, query i matches references whose id is within +-``tolerance`` of i."""

    tolerance: int

    def __post_init__(self) -> None:
        if self.tolerance < 0:
            raise InputError(f"index tolerance must be >= 0, got {self.tolerance}")

    def describe(self) -> dict[str, Any]:
        return {"rule": "within index", "index_tolerance": self.tolerance}


@dataclass(frozen=True)
class VprBenchFile:
    """Correct: the references a VPR-Bench ``ground_truth_new.npy`` lists for each query index."""

    path: Path

    def describe(self) -> dict[str, Any]:
        return {"rule": "VPR-Bench file", "file": str(self.path)}


GroundTruthRule = WithinDistance | WithinIndex | VprBenchFile


def resolve_ground_truth(rule: GroundTruthRule | GroundTruth | str | Path, ref_frames: FrameTable,
                         query_frames: FrameTable) -> GroundTruth:
    """The positives per query that ``rule`` gives for these map and query frames.

    A path (``str`` or ``Path``) is a VPR-Bench file; a :class:`GroundTruth` is returned as it is, after
    checking it has one entry per query.
    """
    gt = _positives(rule, ref_frames, query_frames)
    if not gt.has_positive.any():
        # recall@N counts only queries with a correct reference: with none, every figure would be NaN.
        raise InputError(f"no query has a correct reference ({gt.description}) among the {len(ref_frames)} map "
                         f"frames, so there is nothing to evaluate: check that the queries and the map cover the "
                         f"same place, in the same frame and units")
    return gt


def _positives(rule: GroundTruthRule | GroundTruth | str | Path, ref_frames: FrameTable,
               query_frames: FrameTable) -> GroundTruth:
    if isinstance(rule, str | Path):
        rule = VprBenchFile(Path(rule))
    if isinstance(rule, GroundTruth):
        if len(rule) != len(query_frames):
            raise InputError(f"ground truth has {len(rule)} queries, the query source {len(query_frames)}")
        return rule
    if isinstance(rule, VprBenchFile):
        return positives_from_vpr_bench(rule.path, ref_frames.ids, len(query_frames))
    if isinstance(rule, WithinIndex):
        return positives_by_index(len(query_frames), ref_frames.ids, rule.tolerance)
    if isinstance(rule, WithinDistance):
        # A position with any NaN coordinate is unknown (CSV without z gets z = 0, so test x and y too).
        unknown = np.isnan(query_frames.positions).any(axis=1)
        if unknown.all():
            raise InputError(f"the queries have no poses (none of the {len(unknown)} has a known position, "
                             "NaN), so there is no ground truth by distance (give a pose file or topic with "
                             "positions, or another ground-truth rule)")
        if unknown.any():
            log.warning("%d of %d queries have no known position (NaN): they have no ground truth and are not "
                        "counted in recall", int(unknown.sum()), len(unknown))
        return positives_within(query_frames.positions, ref_frames.positions, rule.metres,
                                query_frames.orientations, ref_frames.orientations, rule.degrees)
    raise TypeError(f"not a ground-truth rule: {type(rule).__name__}")
