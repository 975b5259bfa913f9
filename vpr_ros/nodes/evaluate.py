"""``evaluate``: run the localization pipeline over query images and report recall@N and latency."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpr_ros.config import config_to_dict
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Localizer
from vpr_ros.core.map_builder import FrameSource
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.eval.ground_truth import GroundTruth, positives_from_vpr_bench, positives_within
from vpr_ros.eval.plots import plot_evaluation, plot_latency
from vpr_ros.eval.report import QueryResult, build_report, summary_line, write_json
from vpr_ros.nodes.cli import (
    HelpFormatter,
    add_config_arguments,
    config_from_args,
    print_settings,
    run_cli,
    setup_logging,
)
from vpr_ros.nodes.localize_config import LocalizeNodeConfig

log = logging.getLogger("vpr_ros.evaluate")

EXAMPLES = """\
examples:
  # queries with their own poses: correct = a candidate within 25 m (and 30 deg of heading)
  evaluate --map maps/run1 --queries run2/images --query-poses run2/poses.csv --angle-threshold 30

  # VPR-Bench style ground truth (query index -> list of reference indices)
  evaluate --map maps/corridor --queries data/corridor/query --ground-truth data/corridor/ground_truth_new.npy

  # compare global retrieval with Patch-NetVLAD re-ranking on a map built with --set patches.preset=speed
  evaluate --map maps/corridor_speed ... --set localizer.rerank.method=none --out out/global
  evaluate --map maps/corridor_speed ... --set localizer.rerank.candidates=100 --out out/reranked

Writes <out>/report.json (recall@N, latency percentiles per stage, counts, per-query rows) and
<out>/recall.png (recall@N curve and example matches) and <out>/latency.png.
"""


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evaluate", formatter_class=HelpFormatter, epilog=EXAMPLES,
        description="Evaluate place recognition offline: the same pipeline as the localize node, run on a "
                    "folder of query images against a reference map.")
    parser.add_argument("--map", type=Path, required=True, help="reference map directory")
    parser.add_argument("--queries", type=Path, required=True, help="folder of query images")
    gt = parser.add_mutually_exclusive_group(required=True)
    gt.add_argument("--query-poses", type=Path, help="query pose file (CSV or TUM): ground truth by distance")
    gt.add_argument("--ground-truth", type=Path, help="VPR-Bench ground_truth .npy (query -> reference indices)")
    parser.add_argument("--dist-threshold", type=float, default=25.0,
                        help="metres: a reference this close to the query pose is a correct match")
    parser.add_argument("--angle-threshold", type=float, default=None,
                        help="degrees: also require the heading difference to be at most this")
    parser.add_argument("--top-n", default="1,5,10", help="N values for recall@N")
    parser.add_argument("--out", type=Path, default=Path("out/evaluation"), help="report directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_config_arguments(parser, LocalizeNodeConfig, "config/localize.yaml")
    return parser


def ground_truth_for(args: argparse.Namespace, refmap: ReferenceMap, queries: FrameSource) -> GroundTruth:
    if args.ground_truth is not None:
        return positives_from_vpr_bench(args.ground_truth, refmap.frames.ids, len(queries))
    q = queries.frames
    return positives_within(q.positions, refmap.frames.positions, args.dist_threshold,
                            q.orientations, refmap.frames.orientations, args.angle_threshold)


def run_queries(localizer: Localizer, queries: FrameSource, progress: bool = True) -> list[QueryResult]:
    """Localize every query frame (one at a time, as the node does) and collect timed results."""
    results = []
    for i in tqdm(range(len(queries)), desc="localize queries", unit="img", disable=not progress):
        hyp = localizer.localize(queries.load_image(i), float(queries.frames.stamps[i]))
        results.append(QueryResult(name=queries.frames.names[i], stamp=hyp.stamp, ranked=hyp.indices,
                                   scores=hyp.scores, latency_ms=hyp.timings_ms["total"],
                                   stage_ms=hyp.timings_ms, confidence=hyp.confidence))
    return results


def ref_image_loader(refmap: ReferenceMap):  # noqa: ANN201 - Callable[[int], np.ndarray | None]
    def load(row: int) -> np.ndarray | None:
        src = Path(refmap.frames.sources[row])
        return load_rgb(src) if src.is_file() else None
    return load


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    argv = sys.argv[1:] if argv is None else argv
    if "--list-settings" in argv:
        print_settings(LocalizeNodeConfig)
        return 0
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet)
    ns = tuple(int(n) for n in args.top_n.split(","))
    config: LocalizeNodeConfig = config_from_args(args, node_name="localize")
    from vpr_ros.io.images import folder_source

    queries = folder_source(args.queries, args.query_poses)
    localizer = Localizer.from_paths(str(args.map), config.localizer)
    if localizer.config.top_k < max(ns):
        log.warning("localizer.top_k=%d < max N=%d: recall@N above top_k equals recall@top_k",
                    localizer.config.top_k, max(ns))
    gt = ground_truth_for(args, localizer.refmap, queries)
    localizer.localize(queries.load_image(0))  # warm-up: first-run allocations are not query latency
    results = run_queries(localizer, queries, progress=not args.quiet)
    report = build_report(results, gt, ns, info={
        "map": str(args.map), "queries": str(args.queries), "encoder": localizer.refmap.encoder,
        "providers": localizer.encoder.providers,
        "config": {"top_k": localizer.config.top_k, "rerank": {
            **config_to_dict(localizer.config.rerank),
            "active": localizer.reranker.spec.preset if localizer.reranker is not None else "none",
            "patches": localizer.reranker.spec.describe() if localizer.reranker is not None else None}},
        "dist_threshold_m": args.dist_threshold if args.ground_truth is None else None,
        "angle_threshold_deg": args.angle_threshold})
    write_json(report, args.out / "report.json")
    if not args.no_plots:
        plot_evaluation(results, gt, args.out / "recall.png", load_query=queries.load_image,
                        load_ref=ref_image_loader(localizer.refmap), title=f"{args.queries.name} vs {args.map.name}")
        plot_latency(results, args.out / "latency.png", title="pipeline latency per query")
    print(summary_line(report, ns))
    print(f"report: {args.out / 'report.json'}")
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
