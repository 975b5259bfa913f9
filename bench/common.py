"""Helpers shared by the benchmarks: timing, result files with the machine description and its load."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vpr_ros.core.files import atomic_write_text
from vpr_ros.eval.report import machine_description

RESULTS = Path(__file__).resolve().parent / "results"

# Other work on the machine shifts timings: every result records the load average at the start and the end of
# its benchmark, instead of a note written in advance ("busy machine") that may not describe the run.
_load_at_start: tuple[float, float, float] = os.getloadavg()


def mark_start() -> None:
    """Record the load average now as the start of the next benchmark (``python -m bench`` calls it before each).

    Without it (a benchmark module run on its own) the start is when ``bench.common`` was imported.
    """
    global _load_at_start
    _load_at_start = os.getloadavg()


def machine_load() -> dict[str, Any]:
    """CPU count and the 1 / 5 / 15-minute load averages at the start and now, the end of the benchmark."""
    return {"cpu_count": os.cpu_count(), "load_average_at_start": list(_load_at_start),
            "load_average_at_end": list(os.getloadavg())}


def wall_times_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> np.ndarray:
    """Wall time of each of ``repeats`` runs of ``fn`` in milliseconds, after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1e3)
    return np.array(samples)


def time_ms(fn: Callable[[], object], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median / p90 / min wall time of ``fn`` in milliseconds over ``repeats`` runs after ``warmup`` runs."""
    x = wall_times_ms(fn, repeats, warmup)
    return {"median": float(np.median(x)), "p90": float(np.percentile(x, 90)), "min": float(x.min()),
            "repeats": repeats}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """bench/results/<name>.json with the machine description, its load and a timestamp (paths etc. as text)."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    doc = {"benchmark": name, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine_description(),
           "load": machine_load(), **payload}
    atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")
    print(f"wrote {path}")
    return path
