"""Resident memory of another process over time (psutil), to show a long replay does not grow without bound."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import psutil


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MiB, or None if the process is gone, a zombie or not readable."""
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            # A zombie (exited, not yet reaped by its parent) has no memory left; its zero RSS is not a sample.
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process.memory_info().rss / 2**20
    except psutil.Error:
        return None


class RssSampler:
    """Samples a process's RSS every ``period`` seconds in a background thread.

    Example:
        >>> import os, time
        >>> with RssSampler(os.getpid(), period=0.01) as sampler:
        ...     time.sleep(0.05)
        >>> sampler.summary()["max_mb"] > 0
        True
    """

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self.pid = pid
        self.period = period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss_sampler", daemon=True)
        self._t0 = 0.0

    def _run(self) -> None:
        while not self._stop.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((time.monotonic() - self._t0, value))
            self._stop.wait(self.period)

    def start(self) -> RssSampler:
        self._t0 = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def summary(self) -> dict[str, Any]:
        """First / max / last RSS, the max of the first and last third of the run, and the growth between them.

        Comparing the thirds' maxima (rather than first vs last sample) ignores allocator noise while still
        exposing memory that grows with the number of frames.
        """
        if not self.samples:
            return {"samples": 0}
        t, v = (np.array(x) for x in zip(*self.samples, strict=True))
        third = max(1, len(v) // 3)
        first_max, last_max = float(v[:third].max()), float(v[-third:].max())
        return {"samples": len(v), "duration_s": float(t[-1]), "first_mb": float(v[0]), "max_mb": float(v.max()),
                "last_mb": float(v[-1]), "first_third_max_mb": first_max, "last_third_max_mb": last_max,
                "growth_mb": last_max - first_max}
