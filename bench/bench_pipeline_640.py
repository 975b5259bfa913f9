"""The localization pipeline at 640x480, per stage and per step: where a frame's milliseconds go (issue 18).

Map: the whole corridor reference traversal (111 frames) built at 640x480 with the default encoder and the
``speed`` patch store (patch size 5, stride 1, int8; PCA capped at 110 dimensions by the 111 images), plus a
map with the ``realtime`` store (the same patches at stride 2: a quarter of them), the 15 Hz configuration.
Queries: the corridor query traversal in order, each frame JPEG-encoded at 640x480 as a camera driver would
send it, then per frame:

* ``decode``   JPEG bytes -> RGB (what the node does for a CompressedImage);
* the localizer's stages with their steps (:mod:`vpr_ros.core.profiling`): ``encode`` (``encoder`` = network
  input conversion + ONNX Runtime, ``vlad_head``), ``retrieve``, ``rerank`` (``query_patches`` = VLAD of
  every patch + projection + int8 quantisation in one ONNX graph, ``store_gather``, ``matching``,
  ``spatial_score``, ``fuse``), ``sequence`` (SeqSLAM over 10 frames);
* ``publish``  the node's ~/pose and ~/matches messages built from the hypothesis.

``to_network_input`` (the resize / conversion inside ``encoder``) is timed apart on the same frames and listed
under ``encode/encoder`` as ``resize_and_convert``.

Configurations (all with SeqSLAM over 10 frames): no re-ranking, re-ranking of the top 20 and of the top 100
on the speed map, and the top 20 on the realtime map. They run interleaved, ``ROUNDS`` rounds over the same
frames (the sequence restarts each round); a configuration's figure is the median over rounds of that
round's per-frame p50 (p90 too), and its breakdown the median over rounds of each step's per-frame median.
Recall@1 (ground truth +-2 frames, VPR-Bench) of the sequence answer and of the single-frame answer is given
over the frames run: one route and the map's own traversal, so it is a check that a faster configuration
keeps finding the place, not a held-out figure (bench_patch_rerank has those).

Writes ``bench/results/pipeline_640.json`` and a flame plot ``bench/results/pipeline_640.png``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from bench.common import RESULTS, write_result

REPO = Path(__file__).resolve().parents[1]
H, W = 480, 640
ROUNDS = 5
TARGET_MS = 1000.0 / 15.0
#: name -> (map, re-ranking settings); every configuration runs SeqSLAM over 10 frames.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "no_rerank": ("speed", {"method": "none"}),
    "rerank_top20": ("speed", {"candidates": 20}),
    "rerank_top100": ("speed", {"candidates": 100}),
    "rerank_top20_realtime": ("realtime", {"candidates": 20}),
}


def build_maps(folder: Path) -> dict[str, Path]:
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
    from vpr_ros.io.images import folder_source

    encoder = OnnxEncoder(EncoderConfig())
    corridor = REPO / "data" / "corridor"
    stores = {"speed": PatchStoreConfig(preset="speed"),
              "realtime": PatchStoreConfig(preset="realtime")}
    maps = {}
    for name, patches in stores.items():
        maps[name] = folder / name
        build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), maps[name],
                  BuildMapConfig(image_height=H, image_width=W, patches=patches), progress=False, encoder=encoder)
    return maps


def camera_frames(count: int) -> list[bytes]:
    """The first ``count`` corridor query frames as 640x480 JPEG bytes (quality 90)."""
    from vpr_ros.core.image import load_rgb, resize_rgb

    paths = sorted((REPO / "data" / "corridor" / "query").glob("*.jpg"))[:count]
    frames = []
    for p in paths:
        bgr = cv2.cvtColor(resize_rgb(load_rgb(p), H, W), cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append(data.tobytes())
    return frames


def publisher():
    try:
        from vpr_ros.nodes.messages import hypothesis_to_candidates, hypothesis_to_pose
    except ImportError:
        return None

    def publish(hyp: Any, localizer: Any) -> None:
        hypothesis_to_pose(hyp, "map", 0.5, 10.0, 10.0)
        hypothesis_to_candidates(hyp, "map", localizer.refmap.frames.stamps[hyp.indices],
                                 localizer.reranker is not None)

    return publish


def run_round(localizer: Any, frames: list[bytes], publish: Any) -> list[dict[tuple[str, ...], float]]:
    """One pass over the frames from a fresh sequence; per frame the ms of every step path (and ``total``)."""
    from vpr_ros.core import profiling
    from vpr_ros.core.image import decode_rgb, to_network_input

    localizer.reset_sequence()
    per_frame = []
    for i, data in enumerate(frames):
        with profiling.record() as profile:
            t0 = time.perf_counter()
            with profiling.step("decode"):
                rgb = decode_rgb(np.frombuffer(data, np.uint8), "bench frame")
            hyp = localizer.localize(rgb, stamp=float(i))
            if publish is not None:
                with profiling.step("publish"):
                    publish(hyp, localizer)
            total = (time.perf_counter() - t0) * 1e3
        t1 = time.perf_counter()
        to_network_input([rgb], H, W)
        totals = dict(profile.totals)
        totals[("encode", "encoder", "resize_and_convert")] = (time.perf_counter() - t1) * 1e3
        totals[("total",)] = total
        totals[("_best",)] = float(hyp.indices[0])
        totals[("_single_best",)] = float(hyp.single.indices[0]) if hyp.single is not None else float(hyp.indices[0])
        per_frame.append(totals)
    return per_frame


def summarise(rounds: list[list[dict[tuple[str, ...], float]]]) -> dict[str, Any]:
    paths = sorted({p for r in rounds for f in r for p in f if not p[0].startswith("_")}, key=lambda p: (len(p), p))
    per_round_median = {p: [float(np.median([f.get(p, 0.0) for f in r])) for r in rounds] for p in paths}
    totals = [[f[("total",)] for f in r] for r in rounds]
    tree: dict[str, Any] = {}
    order = [p for p in paths if p != ("total",)]
    for p in order:
        level = tree
        for name in p[:-1]:
            level = level.setdefault(name, {"ms": 0.0, "steps": {}})["steps"]
        level.setdefault(p[-1], {"ms": 0.0, "steps": {}})["ms"] = float(np.median(per_round_median[p]))
    return {"p50_ms": float(np.median([np.percentile(t, 50) for t in totals])),
            "p90_ms": float(np.median([np.percentile(t, 90) for t in totals])),
            "p50_ms_per_round": [float(np.percentile(t, 50)) for t in totals],
            "hz_at_p50": 1000.0 / float(np.median([np.percentile(t, 50) for t in totals])),
            "breakdown_ms": tree}


def recall_at_1(rounds: list[list[dict[tuple[str, ...], float]]], key: str, tolerance: int = 2) -> float:
    best = np.array([f[(key,)] for f in rounds[-1]])
    return float(np.mean(np.abs(best - np.arange(len(best))) <= tolerance))


def flame_plot(configs: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 1.2 + 1.1 * len(configs)))
    cmap = plt.get_cmap("tab20")
    colours: dict[str, Any] = {}

    def draw(level: dict[str, Any], y: float, x0: float, depth: int) -> None:
        x = x0
        for name, node in level.items():
            colour = colours.setdefault(name, cmap(len(colours) % 20))
            ax.barh(y - 0.27 * depth, node["ms"], left=x, height=0.25, color=colour, edgecolor="white")
            if node["ms"] > 6:
                ax.text(x + 1, y - 0.27 * depth, f"{name} {node['ms']:.0f}", va="center", fontsize=7)
            draw(node["steps"], y, x, depth + 1)
            x += node["ms"]

    names = list(configs)
    for i, name in enumerate(names):
        draw(configs[name]["breakdown_ms"], len(names) - i, 0.0, 0)
    ax.axvline(TARGET_MS, color="red", linestyle="--", linewidth=1)
    ax.text(TARGET_MS + 1, len(names) + 0.4, "15 Hz", color="red", fontsize=8)
    ax.set_yticks([len(names) - i for i in range(len(names))],
                  [f"{n}\np50 {configs[n]['p50_ms']:.0f} ms" for n in names], fontsize=8)
    ax.set_xlabel("ms per frame (median per step; stage bars on top, their steps below)")
    ax.set_title("pipeline at 640x480 on this machine, per stage and step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(frames_per_round: int = 40, rounds: int = ROUNDS) -> None:
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_ros.core.localizer import Localizer, LocalizerConfig
    from vpr_ros.core.patchnetvlad.rerank import RerankConfig
    from vpr_ros.core.refmap import ReferenceMap
    from vpr_ros.core.sequence import SequenceConfig

    started = time.perf_counter()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_pipeline_640_") as tmp:
        maps = build_maps(Path(tmp))
        encoder = OnnxEncoder(EncoderConfig())
        refmaps = {name: ReferenceMap.load(path) for name, path in maps.items()}
        localizers = {name: Localizer(refmaps[m], encoder, LocalizerConfig(
            rerank=RerankConfig(**rerank), sequence=SequenceConfig(method="seqslam", length=10)))
            for name, (m, rerank) in CONFIGS.items()}
        frames = camera_frames(frames_per_round)
        publish = publisher()
        for loc in localizers.values():                         # warm-up: sessions, caches, page cache
            run_round(loc, frames[:5], publish)
        results: dict[str, list] = {name: [] for name in CONFIGS}
        load_per_round = []
        for r in range(rounds):
            for name, loc in localizers.items():
                results[name].append(run_round(loc, frames, publish))
                print(f"round {r + 1}/{rounds} {name}: p50 "
                      f"{np.median([f[('total',)] for f in results[name][-1]]):.1f} ms", flush=True)
            load_per_round.append(list(os.getloadavg()))
        configs = {}
        for name, rounds_ in results.items():
            configs[name] = summarise(rounds_)
            configs[name]["map"] = CONFIGS[name][0]
            configs[name]["rerank"] = CONFIGS[name][1]
            configs[name]["recall@1_sequence"] = recall_at_1(rounds_, "_best")
            configs[name]["recall@1_single_frame"] = recall_at_1(rounds_, "_single_best")
            configs[name]["reaches_15_hz"] = configs[name]["p50_ms"] <= TARGET_MS
        patch_sections = {name: dict(refmaps[name].sections.get("patches", {})) for name in refmaps}
    flame_plot(configs, RESULTS / "pipeline_640.png")
    write_result("pipeline_640", {
        "inputs": f"corridor map of 111 reference frames at {W}x{H} (default encoder efficientnet_lite0_b10, VLAD "
                  f"32 clusters, PCA 110); {frames_per_round} corridor query frames as {W}x{H} JPEG (q90), in order",
        "protocol": f"{rounds} interleaved rounds per configuration over the same frames; figures are the median "
                    "over rounds of the per-frame p50 (p90), breakdown = median over rounds of each step's "
                    "per-frame median (ms); SeqSLAM over 10 frames in every configuration",
        "target_ms": TARGET_MS, "threads": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "unset"),
                                            "onnxruntime": "one per core"},
        "load_average_before_maps": list(load_before), "load_average_per_round": load_per_round,
        "patch_stores": patch_sections, "configs": configs, "flame_plot": "bench/results/pipeline_640.png",
        "wall_s": time.perf_counter() - started})


if __name__ == "__main__":
    main()
