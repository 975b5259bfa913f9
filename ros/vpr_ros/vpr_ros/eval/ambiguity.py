"""How much of a frame-aligned benchmark images can decide at all: stops, and the recall ceiling they impose.

When the camera stands still (a train at a station, a robot waiting at a door) consecutive frames are the
same picture. On frame-aligned traversals (Nordland: frame ``i`` of every season is place ``i``) the
recordings stop at the same frames, so a query frame inside a long stop has many map frames that look
exactly like its true place, and a tolerance of +-1 frame cannot be met from images except by luck. A query
*sequence* decides more: as long as it reaches back to frames before the stop, only the true alignment fits.

:func:`still_runs` finds the stops (runs of consecutive frames that differ by less than a threshold in every
traversal); :func:`recall_ceiling` gives, per query, the best recall@1 any method that sees only the images of
the query sequence and the map can expect: among the map positions whose window of frames is
indistinguishable from the true one (same stop, frame for frame), the share within the tolerance.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np


def still_runs(loaders: Sequence[Callable[[int], np.ndarray]], count: int, threshold: float = 3.0) -> np.ndarray:
    """Run id of every frame: consecutive frames share one while they differ by less than ``threshold`` (mean
    absolute difference of 8-bit pixels) in *every* traversal.

    Args:
        loaders: per traversal, frame index -> image (H, W, C) uint8; all traversals frame-aligned.
        count: frames per traversal.

    Shape:
        returns (count,) int64, non-decreasing.
    """
    same = np.ones(max(count - 1, 0), dtype=bool)
    for load in loaders:
        previous = load(0).astype(np.float32)
        diffs = np.empty(max(count - 1, 0), dtype=np.float64)
        for i in range(1, count):  # one image at a time: the traversal need not fit in memory
            current = load(i).astype(np.float32)
            diffs[i - 1] = float(np.abs(current - previous).mean()) if current.shape == previous.shape else np.inf
            previous = current
        same &= diffs < threshold
    return np.concatenate([[0], np.cumsum(~same)]).astype(np.int64)


def recall_ceiling(runs: np.ndarray, queries: np.ndarray, length: int, tolerance: int) -> np.ndarray:
    """Per query place, the best expected recall@1 from images alone (module docstring).

    The query at place ``i`` sees the ``n = min(length, i - first + 1)`` frames ending at ``i`` (online: a
    sequence starts at the first query, ``first = queries[0]``); map position ``j`` looks the same when the
    frames ``j - o`` and ``i - o`` lie in the same still run for every ``o < n``. A method must pick among those
    positions; the expected share of correct picks (``|j - i| <= tolerance``) is the ceiling.

    Shape:
        runs: (N,) run ids of the map positions (:func:`still_runs`); queries: (Q,) places, consecutive;
        returns (Q,) float64 in (0, 1].
    """
    runs = np.asarray(runs, dtype=np.int64)
    queries = np.asarray(queries, dtype=np.int64)
    out = np.empty(len(queries), dtype=np.float64)
    first = int(queries[0]) if len(queries) else 0
    for n in np.unique(np.minimum(length, queries - first + 1)):
        pick = np.flatnonzero(np.minimum(length, queries - first + 1) == n)
        ends = np.arange(n - 1, len(runs))
        windows = runs[ends[:, None] - np.arange(n)[None, :]]          # (M, n) run ids, newest first
        _, label = np.unique(windows, axis=0, return_inverse=True)
        label = label.ravel()
        for q in pick:  # per query: vectorised over map positions
            i = int(queries[q])
            same = ends[label == label[i - (n - 1)]]
            out[q] = np.count_nonzero(np.abs(same - i) <= tolerance) / len(same)
    return out
