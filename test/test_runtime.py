"""Latest-only slot and runtime statistics of the nodes."""

from __future__ import annotations

import threading

from vpr_ros.nodes.runtime import LatestSlot, RuntimeStats


def test_latest_slot_keeps_newest_and_counts_drops():
    slot: LatestSlot[int] = LatestSlot()
    assert slot.put(1) is False
    assert slot.put(2) is True
    assert slot.put(3) is True
    assert slot.take(timeout=0) == 3
    assert slot.dropped == 2
    assert slot.take(timeout=0.01) is None


def test_latest_slot_wakes_worker_and_close_releases_it():
    slot: LatestSlot[str] = LatestSlot()
    got: list[str | None] = []
    worker = threading.Thread(target=lambda: got.append(slot.take(timeout=10)))
    worker.start()
    slot.put("frame")
    worker.join(5)
    assert got == ["frame"]
    waiting = threading.Thread(target=lambda: got.append(slot.take(timeout=10)))
    waiting.start()
    slot.close()
    waiting.join(5)
    assert not waiting.is_alive() and got[-1] is None and slot.closed


def test_runtime_stats_percentiles_and_errors():
    stats = RuntimeStats(window=100)
    for v in range(1, 101):
        stats.on_processed(float(v), {"encode": v / 2})
    stats.on_error("decode", "bad jpeg")
    stats.on_error("decode", "bad jpeg 2")
    p = stats.latency_percentiles()
    assert 50 <= p["latency_p50_ms"] <= 51 and 95 <= p["latency_p95_ms"] <= 96
    assert p["encode_p50_ms"] == 25.25
    assert stats.errors["decode"] == 2 and stats.last_error == "bad jpeg 2" and stats.processed == 100
