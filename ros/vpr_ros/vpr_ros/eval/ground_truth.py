"""Ground truth: which reference frames are correct matches for each query.

A :class:`GroundTruth` holds, per query, the map rows that count as correct. It is made from one of three
rules, resolved against the map's and the queries' frame tables by :func:`resolve_ground_truth`:

* :class:`WithinDistance` -- a reference within so many metres (and degrees of heading) of the query pose;
* :class:`WithinIndex`    -- aligned traversals: query i matches reference ids i-K..i+K (e.g. Nordland);
* :class:`VprBenchFile`   -- a VPR-Bench ``ground_truth_new.npy`` (query index -> reference indices).
"""

from __future__ import annotations

import logging
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from numpy.lib import format as npy_format

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


class GroundTruthFileError(InputError):
    """A ground-truth file is unreadable, of another format, or holds more than plain data."""


#: The only globals a VPR-Bench object array needs to unpickle: numpy's array reconstruction (``numpy.core``
#: from numpy 1 writers, ``numpy._core`` from numpy 2), dtypes, and numpy scalars (query indices written as numpy
#: ints). Lists and ints are pickle opcodes, not globals. Each is a constructor of inert data.
VPR_BENCH_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
})


class PlainDataUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, scalars, lists and numbers; refuses any other global (``os.system``, ``eval``...)
    before it is looked up, so nothing a crafted file names can run."""

    def __init__(self, file: BinaryIO, source: Path) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in VPR_BENCH_GLOBALS:
            raise GroundTruthFileError(f"{self.source}: refused to load: its pickle calls {module}.{name}, which a "
                                       "VPR-Bench ground truth never holds (only numpy arrays, lists and ints); a "
                                       "crafted file could run code this way")
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise GroundTruthFileError(f"{self.source}: refused to load: its pickle holds a persistent reference")


EXPECTED_VPR_BENCH = ("expected a VPR-Bench ground truth .npy: an object array of [query_index, "
                      "[reference indices]] rows")

#: .npy header readers of the format versions an object array is written in (3.0 only adds UTF-8 field names).
NPY_HEADER_READERS = {(1, 0): npy_format.read_array_header_1_0, (2, 0): npy_format.read_array_header_2_0}


def read_vpr_bench_rows(path: Path) -> np.ndarray:
    """The object array of a VPR-Bench ground-truth file, unpickled with :class:`PlainDataUnpickler`.

    The ``.npy`` header is parsed here (not by ``np.load``) so that the pickle payload only ever meets the
    restricted unpickler; a numeric array (no pickle) is refused too, as it cannot hold reference lists.
    """
    try:
        with path.open("rb") as fh:
            try:
                version = npy_format.read_magic(fh)
                if version not in NPY_HEADER_READERS:
                    raise ValueError(f".npy format version {version[0]}.{version[1]}")
                shape, _fortran_order, dtype = NPY_HEADER_READERS[version](fh)
            except ValueError as exc:
                raise GroundTruthFileError(f"{path}: not a .npy file we read ({exc}); {EXPECTED_VPR_BENCH}") from None
            if not dtype.hasobject:
                raise GroundTruthFileError(f"{path}: holds a numeric array ({dtype}, shape {shape}), not reference "
                                           f"lists; {EXPECTED_VPR_BENCH}")
            try:
                rows = PlainDataUnpickler(fh, path).load()
            except GroundTruthFileError:
                raise
            # What a damaged payload raises depends on where it breaks: an opcode, or an allowed constructor's args.
            except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as exc:
                raise GroundTruthFileError(f"{path}: unreadable pickle payload ({type(exc).__name__}: {exc}); "
                                           f"{EXPECTED_VPR_BENCH}") from None
    except OSError as exc:
        raise GroundTruthFileError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != 2:
        raise GroundTruthFileError(f"{path}: holds a {type(rows).__name__} of shape {getattr(rows, 'shape', '?')}; "
                                   f"{EXPECTED_VPR_BENCH}")
    return rows


def positives_from_vpr_bench(path: str | Path, ref_ids: np.ndarray, num_queries: int) -> GroundTruth:
    """VPR-Bench ``ground_truth_new.npy``: rows ``[query_index, [reference indices]]``.

    Reference indices are matched to map frame ids (maps built from a folder number frames 0..N-1 in
    sorted file order, the order VPR-Bench uses). The file is read by :func:`read_vpr_bench_rows`, which
    refuses anything but plain data (a pickle can run code when loaded).
    """
    path = Path(path)
    rows = read_vpr_bench_rows(path)
    row_of_id = {int(fid): row for row, fid in enumerate(ref_ids)}
    positives = [np.zeros(0, np.int64) for _ in range(num_queries)]
    for line, (query, refs) in enumerate(rows):
        try:
            qi, ref_list = int(query), np.atleast_1d(np.asarray(refs, dtype=np.int64)).tolist()
        except (TypeError, ValueError):
            raise GroundTruthFileError(f"{path}: row {line} is not [query_index, [reference indices]] of integers "
                                       f"(got {type(query).__name__}, {type(refs).__name__})") from None
        if 0 <= qi < num_queries:
            positives[qi] = np.array(sorted(row_of_id[r] for r in ref_list if r in row_of_id), np.int64)
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


def describe_ground_truth(rule: GroundTruthRule | GroundTruth | str | Path) -> dict[str, Any]:
    """How ``rule`` decides correctness, for a report: the rule's own description, else ``{"rule": "given"}``."""
    return rule.describe() if isinstance(rule, WithinDistance | WithinIndex | VprBenchFile) else {"rule": "given"}


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
