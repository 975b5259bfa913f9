"""``make demo``: map the shipped corridor images, localize the query traversal through the real node.

1. ``build_map`` (the real CLI, its own process) maps ``data/corridor/ref`` with its nominal poses;
2. the ``localize`` node starts as its own process with ``config/localize.yaml``, in namespace ``/demo``;
3. this process publishes every ``data/corridor/query`` image on ``/demo/image`` (sensor_msgs/Image) and
   waits for the node's answer on ``/demo/localize/matches`` (lock-step, so no frame is dropped);
4. recall@1/5/10 against the VPR-Bench ground truth and end-to-end latency are printed and written to
   ``<out>/report.json`` with plots ``<out>/recall.png`` and ``<out>/latency.png``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from vpr_ros.core.image import load_rgb
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.eval.evaluate import ref_image_loader
from vpr_ros.eval.ground_truth import positives_from_vpr_bench
from vpr_ros.eval.plots import plot_evaluation, plot_latency
from vpr_ros.eval.report import QueryResult, build_report, summary_line, write_json
from vpr_ros.io.images import list_images
from vpr_ros.nodes.harness import LocalizeLaunch, NodeStartError, run_localize
from vpr_ros.nodes.replay import rgb_to_image_msg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=PACKAGE_ROOT.parents[1] / "data" / "corridor")
    parser.add_argument("--out", type=Path, default=Path("out/demo"))
    parser.add_argument("--params-file", type=Path, default=PACKAGE_ROOT / "config" / "localize.yaml")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    map_dir = out / "corridor_map"
    bin_dir = Path(sys.executable).parent

    print("== 1/3 build the reference map (build_map) ==", flush=True)
    subprocess.run([str(bin_dir / "build_map"), "--images", str(args.data / "ref"), "--poses",
                    str(args.data / "ref_poses.csv"), "--output", str(map_dir), "--overwrite"], check=True)
    refmap = ReferenceMap.load(map_dir)

    print("== 2/3 start the localize node and replay the query traversal ==", flush=True)
    queries = list_images(args.data / "query")
    gt = positives_from_vpr_bench(args.data / "ground_truth_new.npy", refmap.frames.ids, len(queries))
    results: list[QueryResult] = []
    row_of_id = {int(fid): row for row, fid in enumerate(refmap.frames.ids)}
    launch = LocalizeLaunch({"map_path": str(map_dir)}, namespace="/demo", params_file=args.params_file,
                            own_process=True, log_path=out / "localize_node.log")
    try:
        with run_localize(launch, ready_timeout=120) as localize:
            client = localize.client
            client.send_and_wait(rgb_to_image_msg(load_rgb(queries[0]), 1e6), timeout=60)  # warm-up frame
            t0 = time.perf_counter()
            for i, path in enumerate(queries):
                answer = client.send_and_wait(rgb_to_image_msg(load_rgb(path), float(i)), timeout=30)
                if answer is None:
                    print(f"no answer for query {path.name} within 30 s", file=sys.stderr)
                    return 1
                ranked = [row_of_id[int(r)] for r in answer.ref_ids]
                results.append(QueryResult(path.name, float(i), np.array(ranked), answer.scores,
                                           answer.latency_ms))
            wall = time.perf_counter() - t0
            diag = client.latest_diagnostic()
            if not localize.alive():
                print(f"localize node exited unexpectedly; see {launch.log_path}", file=sys.stderr)
                return 1
    except NodeStartError as exc:
        print(exc, file=sys.stderr)
        return 1

    print("== 3/3 report ==", flush=True)
    report = build_report(results, gt, info={
        "mode": "through the localize node (sensor_msgs/Image in, ~/matches out, lock-step)",
        "map": str(map_dir), "queries": str(args.data / "query"), "encoder": refmap.encoder,
        "wall_time_s": wall, "node_diagnostics": diag,
        "latency_note": "end-to-end: publish -> ~/matches received, includes DDS transport on loopback"})
    write_json(report, out / "report.json")
    plot_evaluation(results, gt, out / "recall.png", load_query=lambda i: load_rgb(queries[i]),
                    load_ref=ref_image_loader(refmap), title="corridor: query traversal vs map (through the node)")
    plot_latency(results, out / "latency.png", title="end-to-end latency through the localize node")
    print(summary_line(report))
    stage = {k: v for k, v in diag.items() if k.endswith("_p50_ms")}
    print(f"node-side stage latency (p50, ms): {stage}")
    print(f"report: {out / 'report.json'}  plots: {out / 'recall.png'}, {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
