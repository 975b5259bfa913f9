"""Sequence localization on Nordland part 1 (summer map, winter queries): single frame vs sequences.

Held-out segment only (``bench/splits.py``: places 620-1799; the defaults were chosen on places 0-599 by
``bench/bench_defaults.py``): the map is the segment's summer frames, the queries its winter frames.

For the weights-free thumbnail encoder and the default CNN encoder (EfficientNet-Lite0 + VLAD fitted on the
map, images enlarged by the map builder's automatic ``max_upscale``), measures recall@1 (+-1 and +-0
frames), recall@5, precision-recall (AUC, recall at 100% precision) and the sequence stage's latency for:
single frames, SeqSLAM over 5 / 10 / 20 frames (top-k and full search), seq2im MIN / MODE and seq2seq
MAX / AVG / CAT over 5 / 10 / 20 frames, and im2seq (map cut into 10-frame sequences); for each, what the
default loop-closure gate (no exclusion window, as ``evaluate`` offline) publishes and how much is right.

Queries run in order through ``Localizer.localize_features`` exactly as the node would run them (online:
the first frames have short sequences); images are encoded once per encoder.

    python -m bench sequence            # writes bench/results/sequence_nordland.json
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from bench.common import write_result
from bench.splits import NORDLAND
from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.localizer import Hypothesis, Localizer, LocalizerConfig, QueryFeatures
from vpr_ros.core.loop_closure import LoopClosureConfig, LoopClosureGate
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.sequence import SequenceConfig, im2seq
from vpr_ros.eval.evaluate import gated_loop_closures
from vpr_ros.eval.ground_truth import GroundTruth, positives_by_index
from vpr_ros.eval.metrics import precision_recall

ENCODERS = {
    "thumbnail 64x32 patch 8": EncoderConfig(model="thumbnail:64x32,patch=8"),
    "default CNN (EfficientNet-Lite0 b10 + VLAD)": EncoderConfig(model="models/efficientnet_lite0_b10.onnx"),
}
LENGTHS = (5, 10, 20)
IM2SEQ_SEGMENT = 10


def configs() -> list[tuple[str, SequenceConfig]]:
    runs = [("single frame", SequenceConfig())]
    runs += [(f"seqslam {n}", SequenceConfig(method="seqslam", length=n)) for n in LENGTHS]
    runs += [(f"seqslam {n} full search", SequenceConfig(method="seqslam", length=n, search="full")) for n in (10,)]
    for method in ("seq2im_min", "seq2im_mode", "seq2seq_max", "seq2seq_avg", "seq2seq_cat"):
        runs += [(f"{method} {n}", SequenceConfig(method=method, length=n)) for n in LENGTHS]
    return runs


def correct_top1(rows: np.ndarray, tolerance: int) -> np.ndarray:
    """Top-1 map row within +-tolerance of the query index (Nordland: same index = same place)."""
    return np.abs(rows - np.arange(len(rows))) <= tolerance


def summarise(hyps: list[Hypothesis], positives: list[np.ndarray], gate: LoopClosureGate) -> dict[str, Any]:
    top1 = np.array([h.best_index if len(h.indices) else -1 for h in hyps])
    top5_ok = np.array([np.isin(h.indices[:5], p).any() for h, p in zip(hyps, positives, strict=True)])
    has = np.ones(len(hyps), dtype=bool)
    out: dict[str, Any] = {"recall@1": float(correct_top1(top1, 1).mean()),
                           "recall@1_exact": float(correct_top1(top1, 0).mean()), "recall@5": float(top5_ok.mean())}
    for kind in ("score", "confidence"):
        scores = np.array([(h.scores[0] if kind == "score" else h.confidence) if len(h.indices) else np.nan
                           for h in hyps])
        out[f"pr_{kind}"] = precision_recall(scores, correct_top1(top1, 1), has).summary()
    stage = [h.timings_ms.get("sequence", np.nan) for h in hyps]
    out["sequence_stage_ms"] = {"p50": float(np.nanmedian(stage)), "p95": float(np.nanpercentile(stage, 95))} \
        if not np.isnan(stage).all() else None
    gated = gated_loop_closures(hyps, gate, GroundTruth(positives, "same index +-1"))
    out["loop_closures"] = {"published": int(gated["published"]), "correct": int(gated["correct"])}
    return out


def im2seq_recall(hyps: list[Hypothesis], positives: list[np.ndarray]) -> float:
    """im2seq recall@1: the best map sequence (10-frame segment) of each single query holds a correct frame."""
    hits = []
    for h, p in zip(hyps, positives, strict=True):
        segments, _, _ = im2seq(h.indices, h.scores, IM2SEQ_SEGMENT)
        hits.append(bool(len(segments)) and bool(np.isin(segments[0], p // IM2SEQ_SEGMENT)))
    return float(np.mean(hits))


def run_encoder(name: str, encoder_config: EncoderConfig, workdir: Path) -> dict[str, Any]:
    encoder = make_encoder(encoder_config)
    reference, queries = NORDLAND.sources("held_out")
    t0 = time.perf_counter()
    refmap = build_map(reference, workdir / "map", BuildMapConfig(encoder=encoder_config), progress=True,
                       encoder=encoder)
    build_s = time.perf_counter() - t0
    base = Localizer(refmap, encoder, LocalizerConfig(encoder=encoder_config))
    images = [queries.load_image(i) for i in range(len(queries))]
    feats: list[QueryFeatures] = []
    for start in tqdm(range(0, len(images), 64), desc=f"encode winter ({name})", unit="batch"):
        feats += base.encode_many(images[start:start + 64])
    positives = positives_by_index(len(queries), refmap.frames.ids, NORDLAND.tolerance).positives
    gate_config = LoopClosureConfig(exclusion_window=0.0)
    rows: dict[str, Any] = {}
    for label, seq in tqdm(configs(), desc=f"sequence methods ({name})", unit="run"):
        loc = Localizer(refmap, encoder, dataclasses.replace(base.config, sequence=seq))
        stamps = queries.frames.stamps
        hyps = [loc.localize_features(f, float(stamps[i])) for i, f in enumerate(feats)]
        gate = LoopClosureGate(gate_config, refmap.frames, loc.config.confidence_radius)
        rows[label] = summarise(hyps, positives, gate)
        if label == "single frame":
            rows[f"im2seq {IM2SEQ_SEGMENT}"] = {"recall@1": im2seq_recall(hyps, positives)}
    return {"map_input_size": list(refmap.input_size), "descriptor_dim": refmap.dim, "map_build_s": build_s,
            "results": rows}


def main() -> None:
    report: dict[str, Any] = {
        "description": f"sequence localization, Nordland part 1, held-out segment: summer map "
                       f"({len(NORDLAND.held_out)} frames), winter queries",
        "split": NORDLAND.describe(),
        "ground_truth": "same index +-1 frame (recall@1_exact: +-0)",
        "loop_closures": "default loop_closure gate (min_score, min_consecutive, ...) without the exclusion "
                         "window: closures published and correct",
        "protocol": "online: queries in order, the first length-1 queries have shorter sequences; precision-"
                    "recall accepts the top-1 answer when its score (or confidence) >= threshold",
        "encoders": {}}
    with tempfile.TemporaryDirectory(prefix="vpr_bench_sequence_") as tmp:
        for i, (name, cfg) in enumerate(ENCODERS.items()):
            (Path(tmp) / str(i)).mkdir()
            report["encoders"][name] = run_encoder(name, cfg, Path(tmp) / str(i))
    write_result("sequence_nordland", report)
    for name, enc in report["encoders"].items():
        print(f"\n{name} (map input {enc['map_input_size'][1]}x{enc['map_input_size'][0]})")
        print(f"{'method':28s} {'R@1':>6s} {'R@1+-0':>7s} {'R@5':>6s} {'AUC':>6s} {'R@100P':>7s} {'stage p50 ms':>12s}")
        for label, row in enc["results"].items():
            pr = row.get("pr_score", {})
            stage = row.get("sequence_stage_ms") or {}
            print(f"{label:28s} {row['recall@1']:6.3f} {row.get('recall@1_exact', float('nan')):7.3f} "
                  f"{row.get('recall@5', float('nan')):6.3f} {pr.get('auc', float('nan')):6.3f} "
                  f"{pr.get('recall_at_100_precision', float('nan')):7.3f} {stage.get('p50', float('nan')):12.2f}")


if __name__ == "__main__":
    main()
