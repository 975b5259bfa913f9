"""``evaluate``: run the localization pipeline over query images and report recall@N, precision-recall and latency.

With a sequence method (``--set localizer.sequence.method=seqslam``) the report puts the single-frame and
the sequence answers of the same run side by side. Queries are fed in file-name order, as a camera would.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vpr_ros.config import config_to_dict
from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Hypothesis, Localizer
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.map_builder import FrameSource
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.eval.ground_truth import GroundTruth, positives_by_index, positives_from_vpr_bench, positives_within
from vpr_ros.eval.plots import plot_evaluation, plot_latency, plot_precision_recall
from vpr_ros.eval.report import (
    QueryResult,
    build_report,
    recall_summary,
    results_precision_recall,
    summary_line,
    write_json,
)
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

  # frame-aligned traversals (Nordland: same index = same place, +-1 frame is correct), SeqSLAM over
  # 10-frame sequences beside single frames, with thumbnails
  build_map --images data/nordland_part1/summer --output maps/nordland_thumb \\
      --set encoder.model=thumbnail:64x32,patch=8
  evaluate --map maps/nordland_thumb --queries data/nordland_part1/winter --index-tolerance 1 \\
      --set localizer.encoder.model=thumbnail:64x32,patch=8 --set localizer.sequence.method=seqslam

Writes <out>/report.json (recall@N, precision-recall: AUC, recall at 100% precision and the score
threshold that reaches it -- a value for loop_closure.min_score --, loop closures the node's gate would
publish, latency percentiles per stage, counts, per-query rows), <out>/recall.png (recall@N curve and
example matches), <out>/precision_recall.png and <out>/latency.png.
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
    gt.add_argument("--index-tolerance", type=int, metavar="K",
                    help="frame-aligned traversals: query i is correct at map frame ids i-K..i+K (Nordland: 1)")
    parser.add_argument("--dist-threshold", type=float, default=25.0,
                        help="metres: a reference this close to the query pose is a correct match")
    parser.add_argument("--angle-threshold", type=float, default=None,
                        help="degrees: also require the heading difference to be at most this")
    parser.add_argument("--top-n", default="1,5,10", help="N values for recall@N")
    parser.add_argument("--pr-score", choices=("score", "confidence"), default=None,
                        help="what the precision-recall curve thresholds (default: loop_closure.score)")
    parser.add_argument("--out", type=Path, default=Path("out/evaluation"), help="report directory")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    add_config_arguments(parser, LocalizeNodeConfig, "config/localize.yaml")
    return parser


def ground_truth_for(args: argparse.Namespace, refmap: ReferenceMap, queries: FrameSource) -> GroundTruth:
    if args.ground_truth is not None:
        return positives_from_vpr_bench(args.ground_truth, refmap.frames.ids, len(queries))
    if args.index_tolerance is not None:
        if args.index_tolerance < 0:
            raise ValueError(f"--index-tolerance must be >= 0, got {args.index_tolerance}")
        return positives_by_index(len(queries), refmap.frames.ids, args.index_tolerance)
    q = queries.frames
    return positives_within(q.positions, refmap.frames.positions, args.dist_threshold,
                            q.orientations, refmap.frames.orientations, args.angle_threshold)


def query_result(name: str, hyp: Hypothesis) -> QueryResult:
    return QueryResult(name=name, stamp=hyp.stamp, ranked=hyp.indices, scores=hyp.scores,
                       latency_ms=hyp.timings_ms.get("total", float("nan")), stage_ms=hyp.timings_ms,
                       confidence=hyp.confidence)


def run_queries(localizer: Localizer, queries: FrameSource, progress: bool = True) -> list[Hypothesis]:
    """Localize every query frame in order (one at a time, as the node does) and keep the hypotheses."""
    return [localizer.localize(queries.load_image(i), float(queries.frames.stamps[i]))
            for i in tqdm(range(len(queries)), desc="localize queries", unit="img", disable=not progress)]


def gated_loop_closures(hyps: list[Hypothesis], gate: LoopClosureGate, gt: GroundTruth) -> dict[str, float]:
    """What the node's loop-closure gate would publish on these queries, and how much of it is right."""
    closures = [(i, gate.update(h)) for i, h in enumerate(hyps)]
    published = [(i, c) for i, c in closures if c is not None]
    correct = sum(int(c.row in set(gt.positives[i].tolist())) for i, c in published)
    return {"published": len(published), "correct": correct,
            "precision": correct / len(published) if published else float("nan"),
            "recall": correct / max(int(gt.has_positive.sum()), 1)}


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
    localizer.reset_sequence()
    hyps = run_queries(localizer, queries, progress=not args.quiet)
    names = queries.frames.names
    results = [query_result(n, h) for n, h in zip(names, hyps, strict=True)]
    score_kind = args.pr_score or config.loop_closure.score
    seq = localizer.config.sequence
    # Offline, queries and map are separate recordings whose stamps are unrelated (or file indices), so the
    # temporal exclusion window -- meant for a map built online by the same robot -- is not applied.
    gate = LoopClosureGate(dataclasses.replace(config.loop_closure, exclusion_window=0.0), localizer.refmap.frames,
                           localizer.config.confidence_radius)
    report = build_report(results, gt, ns, score_kind=score_kind, info={
        "map": str(args.map), "queries": str(args.queries), "encoder": localizer.refmap.encoder,
        "providers": localizer.encoder.providers,
        "config": {"top_k": localizer.config.top_k, "rerank": {
            **config_to_dict(localizer.config.rerank),
            "active": localizer.reranker.spec.preset if localizer.reranker is not None else "none",
            "patches": localizer.reranker.spec.describe() if localizer.reranker is not None else None}},
        "sequence": {"method": seq.method, "length": seq.length, "search": seq.search},
        "loop_closures": {**gated_loop_closures(hyps, gate, gt), "gate": config_to_dict(config.loop_closure)},
        "dist_threshold_m": args.dist_threshold if args.ground_truth is None and args.index_tolerance is None
        else None, "angle_threshold_deg": args.angle_threshold})
    curves = {"pipeline": results_precision_recall(results, gt, score_kind)}
    if localizer.sequence is not None:
        single = [query_result(n, h.single) for n, h in zip(names, hyps, strict=True) if h.single is not None]
        report["single_frame"] = recall_summary(single, gt, ns, score_kind)
        curves = {"single frame": results_precision_recall(single, gt, score_kind),
                  f"{seq.method}, {seq.length} frames": curves["pipeline"]}
        print("single frame: " + "  ".join(f"R@{n} {report['single_frame'][f'recall@{n}']:.3f}" for n in ns))
    write_json(report, args.out / "report.json")
    if not args.no_plots:
        plot_evaluation(results, gt, args.out / "recall.png", load_query=queries.load_image,
                        load_ref=ref_image_loader(localizer.refmap), title=f"{args.queries.name} vs {args.map.name}")
        plot_precision_recall(curves, args.out / "precision_recall.png",
                              title=f"{args.queries.name} vs {args.map.name} (threshold on {score_kind})")
        plot_latency(results, args.out / "latency.png", title="pipeline latency per query")
    print(("sequence:     " if localizer.sequence is not None else "") + summary_line(report, ns))
    lc = report["loop_closures"]
    print(f"loop closures at min_score {config.loop_closure.min_score:g}: {lc['published']} published, "
          f"{lc['correct']} correct; threshold for 100% precision: "
          f"{report['precision_recall']['threshold_at_100_precision']:.4g}")
    print(f"report: {args.out / 'report.json'}")
    return 0


def entry_point() -> None:
    sys.exit(run_cli(main))


if __name__ == "__main__":
    entry_point()
