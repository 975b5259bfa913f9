"""ROS-free runtime helpers of the nodes: a latest-only hand-off slot and rolling statistics."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Generic, TypeVar

import numpy as np

T = TypeVar("T")


class LatestSlot(Generic[T]):
    """Single-item hand-off between a producer (executor callback) and a worker thread.

    ``put`` never blocks: a newer item replaces one the worker has not taken yet, and the replaced item
    is counted as dropped. This keeps the executor free and the worker always on the freshest frame.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: T | None = None
        self._closed = False
        self.dropped = 0

    def put(self, item: T) -> bool:
        """Store ``item``; returns True if it replaced (dropped) an unprocessed one."""
        with self._cond:
            replaced = self._item is not None
            if replaced:
                self.dropped += 1
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> T | None:
        """Wait for an item (or close / timeout) and remove it from the slot."""
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._closed


class RuntimeStats:
    """Counters and a rolling latency window for /diagnostics. Thread-safe."""

    def __init__(self, window: int = 300, rate_window_s: float = 10.0) -> None:
        self._lock = threading.Lock()
        self.received = 0
        self.processed = 0
        self.errors: Counter[str] = Counter()
        self.last_error = ""
        self._latency: deque[float] = deque(maxlen=window)
        self._stages: dict[str, deque[float]] = {}
        self._done_times: deque[float] = deque(maxlen=window)
        self._rate_window_s = rate_window_s
        self._window = window

    def on_received(self) -> None:
        with self._lock:
            self.received += 1

    def on_processed(self, latency_ms: float, stages_ms: dict[str, float] | None = None) -> None:
        with self._lock:
            self.processed += 1
            self._latency.append(latency_ms)
            self._done_times.append(time.monotonic())
            for k, v in (stages_ms or {}).items():
                self._stages.setdefault(k, deque(maxlen=self._window)).append(v)

    def on_error(self, kind: str, message: str) -> None:
        with self._lock:
            self.errors[kind] += 1
            self.last_error = message

    def rate_hz(self) -> float:
        with self._lock:
            now = time.monotonic()
            recent = [t for t in self._done_times if now - t <= self._rate_window_s]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-6)

    def latency_percentiles(self, qs: tuple[int, ...] = (50, 95, 99)) -> dict[str, float]:
        with self._lock:
            lat = np.array(self._latency)
            stages = {k: np.array(v) for k, v in self._stages.items()}
        out = {f"latency_p{q}_ms": float(np.percentile(lat, q)) if lat.size else float("nan") for q in qs}
        out.update({f"{k}_p50_ms": float(np.median(v)) for k, v in stages.items() if v.size})
        return out
