"""Bag input and live replay: reading cost per storage, offline evaluation speed, and the localize node under a
real-time replay at 10, 30 and 100 Hz (answered / dropped frames, end-to-end latency, node memory).

Real corridor images (the query traversal, 111 JPEGs) written as CompressedImage into ROS 2 sqlite3, MCAP and
ROS 1 bags; the map is the corridor reference traversal with the default settings. The memory run replays the
traversal five times in a row (555 frames, about a minute at 10 Hz). -> bench/results/bag_replay.json
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "test"))  # the sample writers the tests use

from samples import write_corridor_bag  # noqa: E402

from bench.common import write_result  # noqa: E402
from vpr_ros.cli import evaluate  # noqa: E402
from vpr_ros.cli.common import run_cli  # noqa: E402
from vpr_ros.core.map_builder import BuildMapConfig, build_map  # noqa: E402
from vpr_ros.io.bag_writer import BagWriter  # noqa: E402
from vpr_ros.io.bags import bag_frame_source  # noqa: E402
from vpr_ros.io.images import folder_source  # noqa: E402

RATES = (1.0, 3.0, 10.0)  # x the recorded 10 Hz


def read_all_ms(source: Any) -> float:
    t0 = time.perf_counter()
    for i in range(len(source)):
        source.load_image(i)
    return (time.perf_counter() - t0) * 1e3 / len(source)


def repeated_bag(path: Path, corridor: Path, times: int) -> None:
    """The query traversal ``times`` times in a row at 10 Hz (a longer drive for the memory run)."""
    images = sorted((corridor / "query").glob("*.jpg"))
    with BagWriter(path, "mcap") as bag:
        for k in range(times * len(images)):
            stamp = 100.0 + 0.1 * k
            bag.write_compressed("/cam/image/compressed", stamp, images[k % len(images)].read_bytes())
            bag.write_pose("/pose", stamp, [float(k % len(images)), 0.0, 0.0], [0, 0, 0, 1])


def live(map_dir: Path, bag: Path, out: Path, rate: float) -> dict[str, Any]:
    code = run_cli(evaluate.main, ["--map", str(map_dir), "--bag", str(bag), "--image-topic", "/cam/image/compressed",
                                   "--pose-topic", "/pose", "--dist-threshold", "2", "--live", "--rate", str(rate),
                                   "--out", str(out), "-q", "--no-plots"])
    if code != 0:
        raise RuntimeError(f"live replay failed ({code}); see {out / 'localize_node.log'}")
    report = json.loads((out / "report.json").read_text())
    run = report["live"]
    return {"rate": rate, "input_hz": run["input_rate_hz"], "published": run["published"],
            "answered": run["answered"], "dropped_by_node": run["node_frames_dropped"],
            "lost_in_transport": run["lost_in_transport"], "latency_ms": report["latency_ms"],
            "recall@1_answered": report["recall@1"], "recall@1_all_frames": run["recall_all_frames@1"],
            "node_stage_p50_ms": run["node_stage_p50_ms"], "node_memory": run["node_memory"]}


def main() -> dict:
    os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    corridor = REPO / "data" / "corridor"
    payload: dict[str, Any] = {"what": __doc__.split("\n\n")[0].replace("\n", " ")}
    with tempfile.TemporaryDirectory(prefix="vpr_bench_bags_") as tmp:
        tmp_path = Path(tmp)
        map_dir = tmp_path / "map"
        build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), map_dir, BuildMapConfig(),
                  progress=False)
        reading = {"folder_jpeg_ms_per_frame": read_all_ms(folder_source(corridor / "query"))}
        bags = {}
        for storage in ("sqlite3", "mcap", "ros1"):
            bags[storage] = tmp_path / ("query.bag" if storage == "ros1" else f"query_{storage}")
            write_corridor_bag(bags[storage], corridor, "query", storage, period=0.1)
            t0 = time.perf_counter()
            with bag_frame_source(bags[storage], "/cam/image/compressed", progress=False) as src:
                index_ms = (time.perf_counter() - t0) * 1e3
                reading[storage] = {"index_ms": index_ms, "decode_ms_per_frame": read_all_ms(src),
                                    "bag_bytes": sum(f.stat().st_size for f in bags[storage].rglob("*"))
                                    if bags[storage].is_dir() else bags[storage].stat().st_size}
        payload["reading"] = reading
        print(f"reading: {json.dumps(reading)}", flush=True)

        t0 = time.perf_counter()
        assert run_cli(evaluate.main, ["--map", str(map_dir), "--bag", str(bags["mcap"]), "--image-topic",
                                       "/cam/image/compressed", "--pose-topic", "/pose", "--dist-threshold", "2",
                                       "--out", str(tmp_path / "offline"), "-q", "--no-plots"]) == 0
        offline = json.loads((tmp_path / "offline" / "report.json").read_text())
        payload["offline"] = {"wall_s_incl_start": time.perf_counter() - t0, "frames_per_second":
                              offline["frames_per_second"], "latency_ms": offline["latency_ms"],
                              "recall@1": offline["recall@1"]}
        print(f"offline: {payload['offline']['frames_per_second']:.1f} frames/s, R@1 {offline['recall@1']:.3f}",
              flush=True)

        payload["live"] = []
        for rate in RATES:
            row = live(map_dir, bags["mcap"], tmp_path / f"live_{rate:g}", rate)
            payload["live"].append(row)
            print(f"live {row['input_hz']:.0f} Hz: {row['answered']}/{row['published']} answered, "
                  f"{row['dropped_by_node']} dropped, latency p50 {row['latency_ms']['p50']:.1f} ms "
                  f"p95 {row['latency_ms']['p95']:.1f} ms, node RSS growth {row['node_memory']['growth_mb']:.1f} MB",
                  flush=True)

        long_bag = tmp_path / "query_x5"
        repeated_bag(long_bag, corridor, 5)
        row = live(map_dir, long_bag, tmp_path / "live_long", 1.0)
        payload["memory_run"] = row
        print(f"memory run ({row['published']} frames at {row['input_hz']:.0f} Hz): RSS first "
              f"{row['node_memory']['first_mb']:.0f} MB, max {row['node_memory']['max_mb']:.0f} MB, growth "
              f"{row['node_memory']['growth_mb']:.1f} MB", flush=True)

    write_result("bag_replay", payload)
    return payload


if __name__ == "__main__":
    main()
