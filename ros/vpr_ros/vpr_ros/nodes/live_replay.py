"""Live replay of a bag through the running localize node: real-time publishing, listening, counting drops.

The player publishes each selected image of the bag at its recorded pace (scaled by ``rate``), unchanged and
with its original header stamp, and never waits for the node: when the node is slower than the input, its
latest-only slot replaces waiting frames and those frames get no answer. The listener pairs ``~/matches``
answers with published frames by stamp (end-to-end latency = answer received - frame published) and reads the
node's ``/diagnostics`` (frames received / processed / dropped). The node's resident memory is sampled over
the run.

Reading the bag runs in a prefetch thread with a bounded queue, so disk reads do not delay publishing and
memory stays bounded however long the bag is.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vpr_ros.eval.metrics import latency_stats
from vpr_ros.eval.process_memory import RssSampler
from vpr_ros.io.bags import COMPRESSED_IMAGE, BagFrameSource, iter_serialized_frames
from vpr_ros.nodes.harness import LocalizeLaunch, parse_parameter_assignments, run_localize

log = logging.getLogger(__name__)

_END = object()


def stamp_key(stamp_ns: int) -> float:
    """The stamp as the listener keys answers (seconds from sec + nanosec, rounded to microseconds)."""
    return round(float(stamp_ns // 1_000_000_000) + float(stamp_ns % 1_000_000_000) * 1e-9, 6)


SerializedFrame = tuple[int, int, bytes]  # frame number, header stamp ns, CDR bytes


def prefetch(frames: Iterator[SerializedFrame], depth: int = 16) -> Generator[SerializedFrame, None, None]:
    """Read ``frames`` in a background thread, at most ``depth`` ahead of the consumer."""
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    failure: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
        except BaseException as exc:  # re-raised in the consumer
            failure.append(exc)
        finally:
            close = getattr(frames, "close", None)
            if close is not None:
                close()  # releases the bag when the consumer stopped early
            while True:
                try:
                    buffer.put(_END, timeout=0.2)
                    break
                except queue.Full:
                    if stop.is_set():  # the consumer is gone; nobody waits for the end marker
                        break

    thread = threading.Thread(target=reader, name="bag_prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is _END:
                break
            yield item
        if failure:
            raise failure[0]
    finally:
        stop.set()


@dataclass
class LiveRun:
    """What happened during one live replay."""

    published: list[tuple[int, float]]                # (frame number, stamp key) in publish order
    publish_lag_ms: list[float]                       # how late each publish was against its schedule
    play_s: float                                     # first to last publish
    wall_s: float                                     # first publish to end of draining
    diagnostics_before: dict[str, str]
    diagnostics_after: dict[str, str]
    memory: dict[str, Any]
    node_alive: bool
    answers: dict[float, Any] = field(default_factory=dict)

    def node_delta(self, key: str) -> int | None:
        """Change of a node counter over the replay (the warm-up frame excluded)."""
        try:
            return int(self.diagnostics_after[key]) - int(self.diagnostics_before.get(key, 0))
        except (KeyError, ValueError):
            return None

    def summary(self) -> dict[str, Any]:
        received = self.node_delta("frames_received")
        answered = sum(1 for _, k in self.published if k in self.answers)
        return {
            "published": len(self.published), "answered": answered, "unanswered": len(self.published) - answered,
            "input_rate_hz": (len(self.published) - 1) / self.play_s if self.play_s > 0 else float("nan"),
            "node_frames_received": received, "node_frames_processed": self.node_delta("frames_processed"),
            "node_frames_dropped": self.node_delta("frames_dropped"), "node_errors": self.node_delta("errors_total"),
            "lost_in_transport": len(self.published) - received if received is not None else None,
            "publish_lag_ms": latency_stats(self.publish_lag_ms), "play_time_s": self.play_s,
            "wall_time_s": self.wall_s, "node_memory": self.memory, "node_alive_at_end": self.node_alive,
            "node_stage_p50_ms": {k: float(v) for k, v in self.diagnostics_after.items() if k.endswith("_p50_ms")
                                  and not k.startswith("latency")},
        }


def _wait(predicate: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def replay_live(map_path: Path, queries: BagFrameSource, params_file: Path | None,
                parameters: Sequence[str] = (), rate: float = 1.0, drain_timeout: float = 5.0,
                log_path: Path | None = None, namespace: str = "vpr_replay", ready_timeout: float = 120.0,
                memory_period: float = 0.25) -> LiveRun:
    """Start the localize node on ``map_path``, replay ``queries`` to it in real time, collect its answers.

    Args:
        parameters: extra node parameters as ``name:=value`` strings (e.g. from ``--set``).
        rate: replay speed (1 = as recorded).
        drain_timeout: after the last frame, wait this long without new answers before stopping.
    """
    loader = queries.loader
    assert loader is not None, "live replay needs a bag frame source"
    compressed = loader.index.msgtype == COMPRESSED_IMAGE
    launch = LocalizeLaunch({"map_path": str(map_path), "image_transport": "compressed" if compressed else "raw",
                             "diagnostics_period": 0.5, **parse_parameter_assignments(parameters)},
                            namespace=f"/{namespace}", params_file=params_file, own_process=True, log_path=log_path)
    with run_localize(launch, client_name="vpr_bag_player", ready_timeout=ready_timeout) as localize:
        client, node = localize.client, localize.process
        frames = prefetch(iter_serialized_frames(loader.index, loader.ordinals))
        try:
            first = next(frames, None)
            if first is None:
                raise ValueError("no frames to replay")
            # Warm-up (lock-step, not counted): the first inference allocates ONNX Runtime's arenas.
            warm_key = client.publish_serialized(first[2], stamp_key(first[1]))
            if client.wait_for(warm_key, timeout=60.0) is None:
                raise RuntimeError("the localize node did not answer the warm-up frame within 60 s")
            # Counters are reported relative to the first /diagnostics that includes the warm-up frame.
            _wait(lambda: int(client.latest_diagnostic().get("frames_processed", 0)) >= 1, 5.0)
            before = client.latest_diagnostic()
            client.forget()
            run = _play(client, node, first, frames, rate, drain_timeout, before, memory_period)
        finally:
            frames.close()  # stops the prefetch thread
        run.node_alive = localize.alive()
        return run


def _play(client: Any, node: Any, first: tuple[int, int, bytes], frames: Iterator[tuple[int, int, bytes]],
          rate: float, drain_timeout: float, before: dict[str, str], memory_period: float) -> LiveRun:
    published: list[tuple[int, float]] = []
    lags: list[float] = []
    stamp0 = first[1]
    sampler = RssSampler(node.proc.pid, period=memory_period).start()
    try:
        t0 = time.perf_counter() + 0.1
        for k, stamp_ns, data in _chain(first, frames):
            due = t0 + (stamp_ns - stamp0) * 1e-9 / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            lags.append(max(0.0, (time.perf_counter() - due) * 1e3))
            published.append((k, client.publish_serialized(data, stamp_key(stamp_ns))))
        t_last = time.perf_counter()
        # Drain: stop when every frame is answered or no answer came for drain_timeout seconds.
        seen, quiet_since = -1, time.perf_counter()
        while True:
            n = len(client.answers)
            if n >= len(published):
                break
            if n != seen:
                seen, quiet_since = n, time.perf_counter()
            elif time.perf_counter() - quiet_since > drain_timeout:
                break
            time.sleep(0.05)
        wall = time.perf_counter() - t0
        # One more /diagnostics message, published after everything settled.
        count = len(client.diagnostics)
        _wait(lambda: len(client.diagnostics) > count + 1, 5.0)
    finally:
        sampler.stop()
    return LiveRun(published=published, publish_lag_ms=lags, play_s=t_last - t0, wall_s=wall,
                   diagnostics_before=before, diagnostics_after=client.latest_diagnostic(), memory=sampler.summary(),
                   node_alive=node.alive(), answers=dict(client.answers))


def _chain(first: tuple[int, int, bytes], rest: Iterator[tuple[int, int, bytes]]) -> Iterator[tuple[int, int, bytes]]:
    yield first
    yield from rest
