"""Evaluation as a library: a reference map, query frames and a ground-truth rule in, a :class:`Report` out.

The same pipeline as the localize node (:class:`vpr_ros.core.localizer.Localizer`) runs over every query frame
in order, one at a time, as a camera would feed it; the report holds recall@N, precision-recall of the top-1
answer, what the node's loop-closure gate would publish, pose accuracy where orientations are known, latency
per stage and per-query rows. With a sequence method the single-frame answers of the same run sit beside the
sequence answers. Queries are any :class:`vpr_ros.core.frames.FrameSource`: an image folder
(:func:`vpr_ros.io.images.folder_source`) or a bag (:func:`vpr_ros.io.bags.bag_frame_source`); a plain path is
read as an image folder.

README's "Python API" section shows a notebook use on the shipped corridor data; ``test/test_eval_library.py``
runs that example and checks it against the ``evaluate`` CLI.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from vpr_ros.config import config_to_dict
from vpr_ros.core.encoders import make_encoder
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Hypothesis, Localizer
from vpr_ros.core.loop_closure import LoopClosureGate
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.errors import InputError
from vpr_ros.eval.ground_truth import GroundTruth, GroundTruthRule, describe_ground_truth, resolve_ground_truth
from vpr_ros.eval.metrics import DEFAULT_NS
from vpr_ros.eval.outputs import write_evaluation
from vpr_ros.eval.report import SCORE_KINDS, QueryResult, recall_summary, results_precision_recall, summary_line
from vpr_ros.io.bags import load_frame_source
from vpr_ros.io.images import folder_source

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalConfig:
    """How an evaluation runs and what it reports.

    ``localize`` is the localize node's configuration (the same settings file, ``config/localize.yaml``), so
    an evaluation measures exactly what the node would do with those settings.
    """

    localize: LocalizeNodeConfig = field(default_factory=LocalizeNodeConfig)
    recall_ns: tuple[int, ...] = DEFAULT_NS
    pr_score: str | None = None  # what precision-recall thresholds: score | confidence; None = the gate's setting
    plots: bool = True
    progress: bool = True
    title: str = ""

    def __post_init__(self) -> None:
        if not self.recall_ns or min(self.recall_ns) < 1:
            raise InputError(f"recall@N needs positive N values, got {list(self.recall_ns)}")
        if self.pr_score is not None and self.pr_score not in SCORE_KINDS:
            raise InputError(f"pr_score {self.pr_score!r} is not one of {list(SCORE_KINDS)}")

    @property
    def score_kind(self) -> str:
        return self.pr_score or self.localize.loop_closure.score


@dataclass
class Report:
    """One evaluation: ``data`` is what ``report.json`` holds; ``path`` is that file when it was written."""

    data: dict[str, Any]
    results: list[QueryResult]
    ground_truth: GroundTruth
    recall_ns: tuple[int, ...] = DEFAULT_NS
    path: Path | None = None

    def recall(self, n: int = 1) -> float:
        """recall@N of the pipeline's answers (the sequence answers when a sequence method is on)."""
        return float(self.data[f"recall@{n}"])

    def summary(self) -> str:
        """One line: queries, recall@N, AUC, recall at 100% precision, latency percentiles."""
        return summary_line(self.data, self.recall_ns)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def __contains__(self, key: str) -> bool:
        return key in self.data


def as_frame_source(queries: FrameSource | str | Path) -> FrameSource:
    """``queries`` as a frame source: a path is an image folder without poses."""
    return queries if isinstance(queries, FrameSource) else folder_source(queries)


def query_result(name: str, hyp: Hypothesis) -> QueryResult:
    return QueryResult(name=name, stamp=hyp.stamp, ranked=hyp.indices, scores=hyp.scores,
                       latency_ms=hyp.timings_ms.get("total", float("nan")), stage_ms=hyp.timings_ms,
                       confidence=hyp.confidence)


def run_queries(localizer: Localizer, queries: FrameSource, progress: bool = True) -> list[Hypothesis]:
    """Localize every query frame in order (one at a time, as the node does) and keep the hypotheses."""
    return [localizer.localize(queries.load_image(i), float(queries.frames.stamps[i]))
            for i in tqdm(range(len(queries)), desc="localize queries", unit="img", disable=not progress)]


def gated_loop_closures(hyps: Sequence[Hypothesis], gate: LoopClosureGate, gt: GroundTruth) -> dict[str, float]:
    """What the node's loop-closure gate would publish on these queries, and how much of it is right."""
    closures = [(i, gate.update(h)) for i, h in enumerate(hyps)]
    published = [(i, c) for i, c in closures if c is not None]
    correct = sum(int(c.row in set(gt.positives[i].tolist())) for i, c in published)
    return {"published": len(published), "correct": correct,
            "precision": correct / len(published) if published else float("nan"),
            "recall": correct / max(int(gt.has_positive.sum()), 1)}


def ref_image_loader(refmap: ReferenceMap) -> Callable[[int], np.ndarray | None]:
    """Image of map row ``row`` from the frame's recorded source (an image file or a bag message)."""
    def load(row: int) -> np.ndarray | None:
        return load_frame_source(refmap.frames.sources[row])
    return load


def run(refmap: ReferenceMap | str | Path, queries: FrameSource | str | Path,
        ground_truth: GroundTruthRule | GroundTruth | str | Path, config: EvalConfig | None = None,
        out: str | Path | None = None, info: dict[str, Any] | None = None) -> Report:
    """Evaluate the localization pipeline on ``queries`` against ``refmap``.

    Args:
        refmap: a loaded map or a map directory (verified on load).
        queries: frames in the order a camera would deliver them; a path is an image folder.
        ground_truth: a rule (:class:`~vpr_ros.eval.ground_truth.WithinDistance`, ``WithinIndex``,
            ``VprBenchFile``), a VPR-Bench file path, or ready :class:`GroundTruth`.
        config: pipeline settings and what to report.
        out: directory for ``report.json`` and the plots; None writes nothing.
        info: extra fields recorded in the report (e.g. where the queries came from).
    """
    config = config or EvalConfig()
    settings = config.localize
    map_path = None if isinstance(refmap, ReferenceMap) else Path(refmap)
    if map_path is not None:
        refmap = ReferenceMap.load(map_path, verify=settings.verify_map)
    refmap.place_search(settings.search_device)
    queries = as_frame_source(queries)
    if len(queries) == 0:
        raise InputError("no query frames to evaluate")
    localizer = Localizer(refmap, make_encoder(settings.localizer.encoder), settings.localizer)
    if localizer.config.top_k < max(config.recall_ns):
        log.warning("localizer.top_k=%d < max N=%d: recall@N above top_k equals recall@top_k",
                    localizer.config.top_k, max(config.recall_ns))
    gt = resolve_ground_truth(ground_truth, refmap.frames, queries.frames)
    localizer.localize(queries.load_image(0))  # warm-up: first-run allocations are not query latency
    localizer.reset_sequence()
    t0 = time.perf_counter()
    hyps = run_queries(localizer, queries, progress=config.progress)
    wall = time.perf_counter() - t0
    names = queries.frames.names
    results = [query_result(n, h) for n, h in zip(names, hyps, strict=True)]
    score_kind = config.score_kind
    seq = localizer.config.sequence
    # Queries and map are separate recordings whose stamps are unrelated (or file indices), so the temporal
    # exclusion window -- meant for a map built online by the same robot -- is not applied.
    gate = LoopClosureGate(dataclasses.replace(settings.loop_closure, exclusion_window=0.0), refmap.frames,
                           localizer.config.confidence_radius)
    rerank = localizer.reranker
    report_info = {
        "map": str(map_path) if map_path is not None else None, **(info or {}), "encoder": refmap.encoder,
        "providers": localizer.encoder.providers,
        "config": {"top_k": localizer.config.top_k, "rerank": {
            **config_to_dict(localizer.config.rerank),
            "active": rerank.spec.preset if rerank is not None else "none",
            "patches": rerank.spec.describe() if rerank is not None else None}},
        "sequence": {"method": seq.method, "length": seq.length, "search": seq.search},
        "loop_closures": {**gated_loop_closures(hyps, gate, gt), "gate": config_to_dict(settings.loop_closure)},
        "ground_truth_rule": describe_ground_truth(ground_truth),
        "wall_time_s": wall, "frames_per_second": len(results) / wall if wall > 0 else float("nan")}
    curves = {"pipeline": results_precision_recall(results, gt, score_kind)}
    if localizer.sequence is not None:
        single = [query_result(n, h.single) for n, h in zip(names, hyps, strict=True) if h.single is not None]
        report_info["single_frame"] = recall_summary(single, gt, config.recall_ns, score_kind)
        curves = {"single frame": results_precision_recall(single, gt, score_kind),
                  f"{seq.method}, {seq.length} frames": curves["pipeline"]}
    data = write_evaluation(results, gt, out, refmap.frames, queries.frames, config.recall_ns, info=report_info,
                            plots=config.plots, load_query=queries.load_image, load_ref=ref_image_loader(refmap),
                            title=config.title, score_kind=score_kind, curves=curves)
    return Report(data, results, gt, tuple(config.recall_ns), Path(out) / "report.json" if out is not None else None)
