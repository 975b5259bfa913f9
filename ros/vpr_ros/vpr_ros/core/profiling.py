"""Nested wall-time steps of the pipeline (stage -> step -> ms), recorded only while a profile is active.

The localizer's stages (:class:`vpr_ros.core.localizer.StageTimer`) and the steps inside them (encoder, VLAD
head, query patches, store gather, matching, spatial score, ...) open :func:`step` blocks. Outside
:func:`record` a step costs one context-variable read, so the node pays nothing for them; inside, each block
adds its wall time to a tree keyed by the path of open steps, which ``python -m bench pipeline_640`` turns into
a flame-style breakdown::

    with profiling.record() as profile:
        localizer.localize(image)
    profile.tree()   # {"rerank": {"ms": 12.0, "steps": {"matching": {"ms": 8.1, "steps": {}}, ...}}, ...}
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any


class Profile:
    """Accumulated milliseconds per path of nested step names."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, ...], float] = {}
        self.stack: list[str] = []

    def add(self, path: tuple[str, ...], ms: float) -> None:
        self.totals[path] = self.totals.get(path, 0.0) + ms

    def tree(self) -> dict[str, Any]:
        """Nested ``{name: {"ms": total, "steps": {...}}}`` in the order the steps were first closed, parents
        before children."""
        root: dict[str, Any] = {}
        for path in sorted(self.totals, key=len):
            level = root
            for name in path[:-1]:
                level = level.setdefault(name, {"ms": 0.0, "steps": {}})["steps"]
            level.setdefault(path[-1], {"ms": 0.0, "steps": {}})["ms"] = self.totals[path]
        return root


_active: ContextVar[Profile | None] = ContextVar("vpr_ros_profile", default=None)


@contextmanager
def record() -> Iterator[Profile]:
    """Profile the steps run inside this block (in this thread / context)."""
    profile = Profile()
    token = _active.set(profile)
    try:
        yield profile
    finally:
        _active.reset(token)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time the block as ``name`` under the steps open around it, when a profile is being recorded."""
    profile = _active.get()
    if profile is None:
        yield
        return
    profile.stack.append(name)
    path = tuple(profile.stack)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        profile.add(path, (time.perf_counter() - t0) * 1e3)
        profile.stack.pop()
