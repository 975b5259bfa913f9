"""Process memory sampling (psutil) used by the live replay to watch the node's RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vpr_ros.eval.process_memory import RssSampler, rss_mb


def vm_rss_mb(pid: int) -> float:
    """VmRSS from /proc, the kernel's own figure, independent of psutil."""
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if x.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024.0


def test_rss_matches_the_kernel_and_sees_a_new_allocation():
    before = rss_mb(os.getpid())
    assert before is not None and abs(before - vm_rss_mb(os.getpid())) < 8.0
    block = np.ones(64 * 2**20, np.uint8)  # 64 MiB, every page written
    after = rss_mb(os.getpid())
    assert after is not None and after - before > 56.0, (before, after)
    assert abs(after - vm_rss_mb(os.getpid())) < 8.0
    del block


def test_exited_processes_have_no_rss():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30.0
    while rss_mb(child.pid) is not None and time.monotonic() < deadline:  # exited but not reaped: a zombie
        time.sleep(0.05)
    assert rss_mb(child.pid) is None
    child.wait()
    assert rss_mb(child.pid) is None


def test_sampler_summary_covers_the_run():
    with RssSampler(os.getpid(), period=0.02) as sampler:
        time.sleep(0.3)
    summary = sampler.summary()
    assert summary["samples"] >= 3
    assert summary["first_mb"] <= summary["max_mb"] and summary["last_mb"] <= summary["max_mb"]
    assert summary["growth_mb"] == summary["last_third_max_mb"] - summary["first_third_max_mb"]
