"""Choose the tuned defaults on the tuning split only (``bench/splits.py``), never on the reported figures' data.

Four defaults were once read off the same data the README reports; this benchmark re-chooses them on the
*tuning* segments (Nordland part 1 places 0-599, corridor places 0-54), with a small grid each, in this
order (each later step uses the values chosen before it):

1. ``vlad.num_clusters`` x whitening (``vlad.whiten``, ``vlad.whiten_regularisation``), default CNN encoder:
   single-frame recall@1 of a map fitted with each setting, averaged over the fit seeds and over the two
   tuning segments (corridor: the default pipeline; Nordland: the same encoder across seasons).
   Rule: the best mean (ties: the first in grid order).
2. ``sequence.frame_top_k``: seqslam over 10 frames (topk search) on the Nordland tuning segment, recall@1
   averaged over the thumbnail and the CNN encoder. Rule: cost grows with k, so the smallest k within
   ``TOP_K_TOLERANCE`` of the best k's recall@1.
3. ``loop_closure.min_score`` (on the default ``confidence``, default gate, no exclusion window as in
   ``evaluate`` offline) on the Nordland tuning segment, both encoders, for the default pipeline (single
   frame, ``sequence.method: none``) and for seqslam over 10 frames. Rule: the smallest threshold of the
   grid from which on (it and every larger one) the gate publishes no wrong loop closure for any encoder
   and pipeline -- 100% precision on the tuning split, whatever the user runs of the two.

The values chosen are written to ``bench/results/defaults.json`` (``chosen``, keyed by setting path);
``test/test_defaults_provenance.py`` checks that the typed defaults equal them.

    python -m bench defaults
"""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bench.splits import CORRIDOR, NORDLAND, RouteSplit
from vpr_ros.core.encoders import Encoder, EncoderConfig, make_encoder
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.localizer import Hypothesis, Localizer, LocalizerConfig
from vpr_ros.core.loop_closure import LoopClosureConfig, LoopClosureGate
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.sequence import SequenceConfig
from vpr_ros.core.vlad import VladConfig
from vpr_ros.eval.evaluate import gated_loop_closures
from vpr_ros.eval.ground_truth import positives_by_index
from vpr_ros.eval.metrics import recall_at_n

REPO = Path(__file__).resolve().parents[1]
CNN = EncoderConfig(model=str(PACKAGE_ROOT / "models" / "efficientnet_lite0_b10.onnx"))
THUMBNAIL = EncoderConfig(model="thumbnail:64x32,patch=8")
ENCODERS = {"thumbnail 64x32 patch 8": THUMBNAIL, "default CNN (EfficientNet-Lite0 b10 + VLAD)": CNN}

NUM_CLUSTERS = (16, 32, 64)
#: label -> (whiten, whiten_regularisation)
WHITENING = {"plain PCA": (False, 1.0), "whitened, regularisation 1.0": (True, 1.0),
             "whitened, regularisation 0.1": (True, 0.1)}
FIT_SEEDS = (0, 1, 2)
FRAME_TOP_K = (10, 20, 50, 100)
TOP_K_TOLERANCE = 0.005
SEQUENCE = SequenceConfig(method="seqslam", length=10)
MIN_SCORES = tuple(float(t) for t in np.round(np.arange(0.01, 0.505, 0.01), 2))


def cached(source: FrameSource) -> FrameSource:
    """The same frames with their images decoded once (the grid builds many maps from them)."""
    images = [source.load_image(i) for i in range(len(source))]
    return FrameSource(frames=source.frames, load_image=images.__getitem__)


def tuning_segment(split: RouteSplit) -> tuple[FrameSource, FrameSource]:
    reference, query = split.sources("tuning")
    return cached(reference), cached(query)


def run_queries(refmap: ReferenceMap, encoder: Encoder, config: LocalizerConfig, query: FrameSource
                ) -> list[Hypothesis]:
    """Localize the queries in order, as the node would (images encoded in batches first)."""
    localizer = Localizer(refmap, encoder, config)
    images = [query.load_image(i) for i in range(len(query))]
    feats = [f for start in range(0, len(images), 64) for f in localizer.encode_many(images[start:start + 64])]
    return [localizer.localize_features(f, float(query.frames.stamps[i])) for i, f in enumerate(feats)]


def recall_at_1(hyps: list[Hypothesis], refmap: ReferenceMap, tolerance: int) -> float:
    positives = positives_by_index(len(hyps), refmap.frames.ids, tolerance).positives
    return recall_at_n([h.indices for h in hyps], positives, (1,))[1]


def choose(values: list[Any], scores: list[float], tolerance: float) -> Any:
    """The first value (grids are ordered cheapest first) whose score is within ``tolerance`` of the best."""
    best = max(scores)
    return next(v for v, s in zip(values, scores, strict=True) if s >= best - tolerance)


def vlad_grid(workdir: Path, encoder: Encoder, segments: dict[str, tuple[FrameSource, FrameSource]]
              ) -> dict[str, Any]:
    """Step 1: single-frame recall@1 per (clusters, whitening), fit seed and tuning segment."""
    splits = {"corridor": CORRIDOR, "nordland_part1": NORDLAND}
    rows = []
    for k in NUM_CLUSTERS:
        for label, (whiten, regularisation) in WHITENING.items():
            per_segment: dict[str, list[float]] = {}
            for name, (reference, query) in segments.items():
                for seed in FIT_SEEDS:
                    vlad = VladConfig(num_clusters=k, whiten=whiten, whiten_regularisation=regularisation, seed=seed)
                    refmap = build_map(reference, workdir / f"{name}_{k}_{label}_{seed}",
                                       BuildMapConfig(encoder=CNN, vlad=vlad), progress=False, encoder=encoder)
                    hyps = run_queries(refmap, encoder, LocalizerConfig(encoder=CNN), query)
                    per_segment.setdefault(name, []).append(recall_at_1(hyps, refmap, splits[name].tolerance))
            score = float(np.mean([np.mean(r) for r in per_segment.values()]))
            rows.append({"num_clusters": k, "whitening": label, "whiten": whiten,
                         "whiten_regularisation": regularisation, "recall@1_by_seed": per_segment, "score": score})
            print(f"  K={k:3d} {label:30s} " + "  ".join(f"{n} {np.mean(r):.3f}" for n, r in per_segment.items())
                  + f"  -> {score:.3f}", flush=True)
    best = choose(rows, [r["score"] for r in rows], 0.0)
    return {"rule": "best mean single-frame recall@1 over fit seeds and tuning segments (ties: grid order)",
            "encoder": CNN.model, "fit_seeds": list(FIT_SEEDS), "grid": rows,
            "chosen": {"vlad.num_clusters": best["num_clusters"], "vlad.whiten": best["whiten"],
                       "vlad.whiten_regularisation": best["whiten_regularisation"]}}


def nordland_maps(workdir: Path, vlad: VladConfig, reference: FrameSource
                  ) -> dict[str, tuple[ReferenceMap, Encoder, EncoderConfig]]:
    out = {}
    for i, (name, cfg) in enumerate(ENCODERS.items()):
        encoder = make_encoder(cfg)
        refmap = build_map(reference, workdir / f"nordland_chosen_{i}", BuildMapConfig(encoder=cfg, vlad=vlad),
                           progress=False, encoder=encoder)
        out[name] = (refmap, encoder, cfg)
    return out


def frame_top_k_grid(maps: dict[str, tuple[ReferenceMap, Encoder, EncoderConfig]], query: FrameSource
                     ) -> dict[str, Any]:
    """Step 2: seqslam-10 recall@1 on the Nordland tuning segment per frame_top_k (and full search, for scale)."""
    by_encoder: dict[str, dict[str, float]] = {}
    for name, (refmap, encoder, cfg) in maps.items():
        runs = {str(k): dataclasses.replace(SEQUENCE, frame_top_k=k) for k in FRAME_TOP_K}
        runs["full search"] = dataclasses.replace(SEQUENCE, search="full")
        by_encoder[name] = {label: recall_at_1(run_queries(refmap, encoder, LocalizerConfig(encoder=cfg,
                                                                                            sequence=seq), query),
                                               refmap, NORDLAND.tolerance)
                            for label, seq in runs.items()}
        print(f"  {name}: " + "  ".join(f"{k} {r:.3f}" for k, r in by_encoder[name].items()), flush=True)
    scores = [float(np.mean([r[str(k)] for r in by_encoder.values()])) for k in FRAME_TOP_K]
    return {"rule": f"smallest frame_top_k within {TOP_K_TOLERANCE} of the best mean recall@1 over the encoders",
            "sequence": {"method": SEQUENCE.method, "length": SEQUENCE.length}, "recall@1": by_encoder,
            "grid": list(FRAME_TOP_K), "score": scores,
            "chosen": {"sequence.frame_top_k": choose(list(FRAME_TOP_K), scores, TOP_K_TOLERANCE)}}


def min_score_grid(maps: dict[str, tuple[ReferenceMap, Encoder, EncoderConfig]], query: FrameSource,
                   frame_top_k: int) -> dict[str, Any]:
    """Step 3: what the default gate publishes on the Nordland tuning segment at each min_score, for the
    default single-frame pipeline and for seqslam over 10 frames."""
    pipelines = {"single frame (default)": SequenceConfig(),
                 "seqslam 10": dataclasses.replace(SEQUENCE, frame_top_k=frame_top_k)}
    counts: dict[str, dict[str, list[int]]] = {}
    for name, (refmap, encoder, cfg) in maps.items():
        for pipeline, sequence in pipelines.items():
            localizer_config = LocalizerConfig(encoder=cfg, sequence=sequence)
            hyps = run_queries(refmap, encoder, localizer_config, query)
            truth = positives_by_index(len(hyps), refmap.frames.ids, NORDLAND.tolerance)
            published, correct = [], []
            for threshold in MIN_SCORES:
                gate = LoopClosureGate(LoopClosureConfig(min_score=threshold, exclusion_window=0.0), refmap.frames,
                                       localizer_config.confidence_radius)
                gated = gated_loop_closures(hyps, gate, truth)
                published.append(int(gated["published"]))
                correct.append(int(gated["correct"]))
            counts[f"{name} / {pipeline}"] = {"published": published, "correct": correct}
    wrong = np.array([np.subtract(c["published"], c["correct"]) for c in counts.values()]).sum(axis=0)
    clean_from = len(MIN_SCORES) - int(np.argmax(wrong[::-1] > 0)) if (wrong > 0).any() else 0
    if clean_from == len(MIN_SCORES):
        raise RuntimeError(f"no min_score up to {MIN_SCORES[-1]} gives a clean gate on the tuning split")
    for name, c in counts.items():
        i = clean_from
        print(f"  {name}: at {MIN_SCORES[i]:g}: {c['published'][i]} published, {c['correct'][i]} correct",
              flush=True)
    return {"rule": "smallest threshold from which on the gate publishes no wrong loop closure (any encoder, "
                    "single frame or seqslam 10)",
            "gate": {"score": LoopClosureConfig().score, "min_consecutive": LoopClosureConfig().min_consecutive,
                     "consistency_radius": LoopClosureConfig().consistency_radius, "exclusion_window": 0.0},
            "pipelines": {name: {"method": seq.method, "length": seq.length, "frame_top_k": seq.frame_top_k}
                          for name, seq in pipelines.items()},
            "grid": list(MIN_SCORES), "counts": counts, "wrong_total": wrong.tolist(),
            "chosen": {"loop_closure.min_score": MIN_SCORES[clean_from]}}


def main() -> dict[str, Any]:
    report: dict[str, Any] = {
        "description": "tuned defaults chosen on the tuning split (bench/splits.py) only",
        "splits": {"corridor": CORRIDOR.describe(), "nordland_part1": NORDLAND.describe()}}
    segments = {"corridor": tuning_segment(CORRIDOR), "nordland_part1": tuning_segment(NORDLAND)}
    with tempfile.TemporaryDirectory(prefix="vpr_bench_defaults_") as tmp:
        workdir = Path(tmp)
        print("1/3 vlad.num_clusters x whitening", flush=True)
        report["vlad"] = vlad_grid(workdir, make_encoder(CNN), segments)
        chosen_vlad = report["vlad"]["chosen"]
        vlad = VladConfig(num_clusters=chosen_vlad["vlad.num_clusters"], whiten=chosen_vlad["vlad.whiten"],
                          whiten_regularisation=chosen_vlad["vlad.whiten_regularisation"])
        reference, query = segments["nordland_part1"]
        maps = nordland_maps(workdir, vlad, reference)
        print("2/3 sequence.frame_top_k", flush=True)
        report["frame_top_k"] = frame_top_k_grid(maps, query)
        top_k = report["frame_top_k"]["chosen"]["sequence.frame_top_k"]
        print("3/3 loop_closure.min_score", flush=True)
        report["min_score"] = min_score_grid(maps, query, top_k)
    report["chosen"] = {key: value for step in ("vlad", "frame_top_k", "min_score")
                        for key, value in report[step]["chosen"].items()}
    write_result("defaults", report)
    print("chosen:", report["chosen"])
    return report


if __name__ == "__main__":
    main()
