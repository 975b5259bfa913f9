"""The query side of sequence matching: recent frames spaced by time or travelled distance.

A sequence method compares the last few *places* the robot saw with the map, not the last few camera
frames: a robot standing at a red light for a minute would otherwise fill its sequence with one place,
and one driving twice as fast would see every other map frame. So frames enter the buffer only when they
are far enough from the last buffered one -- in travelled distance when odometry is available
(:class:`OdometryTrack`), else in time -- and every buffered frame carries its *progress* along the route
in buffer steps (1 step = one spacing). The current frame always heads the sequence, with its fractional
progress since the last buffered frame; it is buffered itself only once it is far enough.

Everything here is ROS-free and thread-safe where the node needs it (odometry arrives on the executor
thread, images are processed on a worker thread).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from vpr_ros.io.poses import PoseTable, interpolate_poses


@dataclass
class BufferedFrame:
    """One frame of a query sequence and what sequence methods need from it.

    Shape:
        descriptor: (P,) L2-normalised global descriptor; rows, scores: (k,) its own retrieval
        candidates (map rows, similarity), best first.
    """

    stamp: float
    descriptor: np.ndarray
    rows: np.ndarray
    scores: np.ndarray
    travelled: float | None = None
    progress: float = 0.0
    #: Per-frame cache owned by the sequence matcher (e.g. similarities to map rows computed so far).
    cache: Any = field(default=None, repr=False)


@dataclass
class SequenceWindow:
    """The frames one query is matched with: buffered frames, oldest first, then the current frame.

    Shape:
        offsets: (L,) float, progress of each frame *before* the current one in buffer steps
        (0 for the current frame, about L - 1 for the oldest).
    """

    frames: list[BufferedFrame]
    offsets: np.ndarray
    current_buffered: bool

    def __len__(self) -> int:
        return len(self.frames)


class FrameBuffer:
    """Keeps the last ``length`` spaced frames and builds each query's :class:`SequenceWindow`.

    Spacing: with ``min_distance_spacing`` > 0 and a travelled distance on the frame (odometry), a frame is
    buffered once the robot moved that far since the last buffered frame, and progress is distance /
    spacing. Otherwise a frame is buffered once ``min_time_spacing`` seconds passed (every frame when 0),
    and progress is elapsed time / spacing (1 step per frame when 0).

    The buffer restarts (a sequence never spans a break) when stamps go backwards, when more than
    ``max_gap`` seconds pass between frames (0 = never), and when odometry appears or disappears, since
    progress measured in distance and in time cannot be mixed.

    Example:
        >>> buf = FrameBuffer(length=3)
        >>> for t in range(4):
        ...     window = buf.push(BufferedFrame(float(t), np.zeros(2), np.zeros(0, np.int64), np.zeros(0)))
        >>> [f.stamp for f in window.frames], window.offsets.tolist()
        ([1.0, 2.0, 3.0], [2.0, 1.0, 0.0])
    """

    def __init__(self, length: int, min_time_spacing: float = 0.0, min_distance_spacing: float = 0.0,
                 max_gap: float = 0.0) -> None:
        if length < 1:
            raise ValueError(f"sequence length must be at least 1, got {length}")
        self.length = length
        self.min_time_spacing = min_time_spacing
        self.min_distance_spacing = min_distance_spacing
        self.max_gap = max_gap
        self._frames: deque[BufferedFrame] = deque(maxlen=length)
        self._last_seen: float | None = None
        self._lock = threading.Lock()
        self.restarts = 0

    def __len__(self) -> int:
        return len(self._frames)

    def frames(self) -> list[BufferedFrame]:
        """The buffered frames, oldest first."""
        with self._lock:
            return list(self._frames)

    def reset(self) -> None:
        """Forget every buffered frame (e.g. after a relocalization or a jump of the robot)."""
        with self._lock:
            self._frames.clear()
            self._last_seen = None

    def _by_distance(self, frame: BufferedFrame) -> bool:
        return self.min_distance_spacing > 0 and frame.travelled is not None

    def _must_restart(self, frame: BufferedFrame) -> bool:
        if not self._frames or self._last_seen is None:
            return False
        last = self._frames[-1]
        gap = frame.stamp - self._last_seen
        if frame.stamp < self._last_seen or (self.max_gap > 0 and gap > self.max_gap):
            return True
        return self._by_distance(frame) != self._by_distance(last)

    def push(self, frame: BufferedFrame) -> SequenceWindow:
        """Set ``frame.progress``, buffer the frame if it is far enough, and return the query's window."""
        with self._lock:
            if self._must_restart(frame):
                self._frames.clear()
                self.restarts += 1
            self._last_seen = frame.stamp
            if not self._frames:
                frame.progress = 0.0
                keep = True
            else:
                last = self._frames[-1]
                if self._by_distance(frame):
                    steps = (float(frame.travelled) - float(last.travelled)) / self.min_distance_spacing  # type: ignore[arg-type]
                    keep = steps >= 1.0
                elif self.min_time_spacing > 0:
                    steps = (frame.stamp - last.stamp) / self.min_time_spacing
                    keep = steps >= 1.0
                else:
                    steps, keep = 1.0, True
                frame.progress = last.progress + max(steps, 0.0)
            if keep:
                self._frames.append(frame)
                frames = list(self._frames)
            else:
                frames = [*list(self._frames)[-(self.length - 1):], frame] if self.length > 1 else [frame]
            progress = np.array([f.progress for f in frames], dtype=np.float64)
            return SequenceWindow(frames, progress[-1] - progress, keep)


class OdometryTrack:
    """Distance travelled along the odometry path, looked up at image stamps.

    Odometry positions are summed into a path length (so driving in a circle keeps counting); the value at
    an image stamp is interpolated between the odometry messages around it. An image newer than the last
    odometry by more than ``timeout`` seconds, or older than the kept history, gets None: spacing then
    falls back to time.

    Example:
        >>> odo = OdometryTrack(timeout=0.5)
        >>> odo.add(0.0, (0.0, 0.0, 0.0)); odo.add(1.0, (3.0, 4.0, 0.0))
        >>> odo.travelled_at(0.5), odo.travelled_at(1.2), odo.travelled_at(2.0)
        (2.5, 5.0, None)
    """

    def __init__(self, timeout: float = 1.0, history: int = 4096) -> None:
        self.timeout = timeout
        self._stamps: deque[float] = deque(maxlen=history)
        self._travelled: deque[float] = deque(maxlen=history)
        self._positions: deque[np.ndarray] = deque(maxlen=history)
        self._orientations: deque[np.ndarray] = deque(maxlen=history)
        self._last_position: np.ndarray | None = None
        self._lock = threading.Lock()

    def add(self, stamp: float, position: tuple[float, float, float] | np.ndarray,
            orientation: tuple[float, float, float, float] | np.ndarray | None = None) -> None:
        """Record an odometry position (any fixed frame; only distances between positions matter for the path
        length) and, if known, its orientation (quaternion x y z w) for :meth:`pose_at`."""
        p = np.asarray(position, dtype=np.float64).reshape(3)
        if not np.isfinite(p).all():
            return
        q = np.full(4, np.nan) if orientation is None else np.asarray(orientation, dtype=np.float64).reshape(4)
        with self._lock:
            if self._stamps and stamp < self._stamps[-1]:  # time went backwards (bag restarted): start over
                self._clear()
            step = 0.0 if self._last_position is None else float(np.linalg.norm(p - self._last_position))
            total = (self._travelled[-1] if self._travelled else 0.0) + step
            self._stamps.append(float(stamp))
            self._travelled.append(total)
            self._positions.append(p)
            self._orientations.append(q)
            self._last_position = p

    def travelled_at(self, stamp: float) -> float | None:
        """Path length at ``stamp`` (interpolated), or None when odometry does not cover that time."""
        with self._lock:
            if not self._stamps or stamp < self._stamps[0] or stamp > self._stamps[-1] + self.timeout:
                return None
            if stamp >= self._stamps[-1]:
                return self._travelled[-1]
            return float(np.interp(stamp, np.asarray(self._stamps), np.asarray(self._travelled)))

    def pose_at(self, stamp: float) -> tuple[np.ndarray, np.ndarray] | None:
        """The odometry pose (position (3,), quaternion x y z w (4,)) at ``stamp``: linear in position, slerp in
        orientation between the messages around it, the nearest one within ``timeout`` seconds outside them;
        None when odometry does not cover ``stamp``. Orientations recorded as unknown stay NaN."""
        with self._lock:
            if not self._stamps:
                return None
            table = PoseTable(names=[""] * len(self._stamps), stamps=np.asarray(self._stamps),
                              positions=np.stack(self._positions), orientations=np.stack(self._orientations))
        positions, orientations, valid = interpolate_poses(table, np.array([stamp]), max_extrapolation=self.timeout)
        return (positions[0], orientations[0]) if valid[0] else None

    @property
    def latest_stamp(self) -> float | None:
        with self._lock:
            return self._stamps[-1] if self._stamps else None

    def _clear(self) -> None:
        self._stamps.clear()
        self._travelled.clear()
        self._positions.clear()
        self._orientations.clear()
        self._last_position = None

    def reset(self) -> None:
        with self._lock:
            self._clear()
