"""Online keyframe map: insertion time, memory and bytes on disk per keyframe.

Every frame of a traversal is offered to an :class:`~vpr_ros.core.online_map.OnlineMap` in order with its stamp
and pose (keyframe spacing 0: every frame becomes a keyframe, the worst case for growth), as the localize node
would in online mode:

* insertion time per keyframe, p50 / p95, *excluding* encoding (``add(features=...)``, what the node pays when
  it already encoded the frame for localization: global descriptor, patch descriptors, index add, arrays) and
  *including* it (``add(image=...)``);
* resident memory growth per keyframe (psutil RSS after - before the run, divided by the keyframes; includes
  allocator slack) beside the bytes the map's buffers hold per keyframe (used and allocated: the buffers double);
* bytes per keyframe of the saved map (all files / keyframes, and without the fixed head.npz and manifest).

Data: the corridor reference traversal (111 frames, default CNN with its VLAD vocabulary from a build_map of the
same frames and a Patch-NetVLAD ``speed`` store, as with re-ranking on) and Nordland part 1 summer (1800 frames of
64x32: the thumbnail encoder, and the default CNN with the vocabulary of the tuning segment's map, as in
bench/bench_sequence.py).

    python -m bench online_map          # writes bench/results/online_map.json
"""

from __future__ import annotations

import dataclasses
import gc
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from bench.common import write_result
from bench.splits import CORRIDOR, NORDLAND
from vpr_ros.core.encoders import Encoder, EncoderConfig, make_encoder
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import BuildMapConfig, build_map
from vpr_ros.core.online_map import OnlineMap, OnlineMapConfig
from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
from vpr_ros.io.images import folder_source

CNN = EncoderConfig(model="models/efficientnet_lite0_b10.onnx")
THUMBNAIL = EncoderConfig(model="thumbnail:64x32,patch=8")
EVERY_FRAME = OnlineMapConfig(min_distance=0.0, min_time=0.0)


def percentiles(samples: list[float]) -> dict[str, float]:
    x = np.asarray(samples)
    return {"p50": float(np.median(x)), "p95": float(np.percentile(x, 95)), "max": float(x.max())}


def run(source: FrameSource, encoder: Encoder, config: OnlineMapConfig, workdir: Path) -> dict[str, Any]:
    frames = source.frames
    images = [source.load_image(i) for i in range(len(source))]
    make = OnlineMap.empty
    probe = make(encoder, config)
    features = [encoder.features([im], *probe.input_size) for im in images]  # encoded once, not timed
    del probe

    def pose(i: int) -> tuple[np.ndarray, np.ndarray]:
        return frames.positions[i], frames.orientations[i]

    gc.collect()
    process = psutil.Process()
    rss_before = process.memory_info().rss
    online = make(encoder, config)
    insert_ms = []
    for i, f in enumerate(features):
        t0 = time.perf_counter()
        online.add(float(frames.stamps[i]), features=f, pose=pose(i), name=frames.names[i], source=frames.sources[i])
        insert_ms.append((time.perf_counter() - t0) * 1e3)
    rss_after = process.memory_info().rss
    n = len(online)
    memory = online.memory_bytes()
    online.save(workdir / "map")
    files = {str(p.relative_to(workdir / "map")): p.stat().st_size for p in (workdir / "map").rglob("*") if p.is_file()}
    fixed = sum(size for name, size in files.items() if name in ("head.npz", "manifest.yaml"))

    with_encoding = make(encoder, config)
    encode_insert_ms = []
    for i, image in enumerate(images):
        t0 = time.perf_counter()
        with_encoding.add(float(frames.stamps[i]), image=image, pose=pose(i))
        encode_insert_ms.append((time.perf_counter() - t0) * 1e3)
    return {
        "keyframes": n, "input_size": list(online.input_size), "descriptor_dim": online.dim,
        "patch_store": online.patch_spec.describe() if online.patch_spec else None,
        "insert_ms_excluding_encoding": percentiles(insert_ms),
        "insert_ms_including_encoding": percentiles(encode_insert_ms),
        "rss_growth_bytes_per_keyframe": (rss_after - rss_before) / n,
        "buffer_bytes_per_keyframe": {"used": memory["used"] / n, "allocated": memory["allocated"] / n},
        "disk_bytes_per_keyframe": {"all_files": sum(files.values()) / n,
                                    "per_keyframe_files": (sum(files.values()) - fixed) / n},
        "files": files,
    }


def main() -> None:
    report: dict[str, Any] = {
        "description": "online keyframe map: every frame offered in order becomes a keyframe (spacing 0)",
        "insertion": "excluding encoding = add(features=...) with the frame already encoded (global descriptor, "
                     "patches, FAISS add, arrays); including = add(image=...)",
        "memory": "rss_growth = psutil RSS after - before the insertion run / keyframes (allocator slack included); "
                  "buffer_bytes = the map's own arrays (used rows / allocated capacity, which doubles) and index",
        "runs": {}}
    with tempfile.TemporaryDirectory(prefix="vpr_bench_online_map_") as tmp:
        root = Path(tmp)
        cnn = make_encoder(CNN)
        corridor = folder_source(CORRIDOR.reference, CORRIDOR.reference_poses)
        build_map(corridor, root / "corridor_vocabulary", BuildMapConfig(encoder=CNN, patches=PatchStoreConfig(
            preset="speed")), progress=False, encoder=cnn)
        config = dataclasses.replace(EVERY_FRAME, vocabulary_from=str(root / "corridor_vocabulary"),
                                     patches=PatchStoreConfig(preset="speed"))
        (root / "c").mkdir()
        report["runs"]["corridor 111, default CNN + speed patch store"] = run(corridor, cnn, config, root / "c")

        summer = folder_source(NORDLAND.reference)
        thumbnails = make_encoder(THUMBNAIL)
        (root / "n1").mkdir()
        report["runs"]["nordland part 1 summer 1800, thumbnail 64x32"] = run(summer, thumbnails, EVERY_FRAME,
                                                                             root / "n1")
        tuning = summer.take(NORDLAND.tuning.rows, ids=np.arange(len(NORDLAND.tuning)))
        build_map(tuning, root / "nordland_vocabulary", BuildMapConfig(encoder=CNN), progress=False, encoder=cnn)
        (root / "n2").mkdir()
        report["runs"]["nordland part 1 summer 1800, default CNN (vocabulary of the tuning segment)"] = run(
            summer, cnn, dataclasses.replace(EVERY_FRAME, vocabulary_from=str(root / "nordland_vocabulary")),
            root / "n2")
    write_result("online_map", report)
    for name, r in report["runs"].items():
        print(f"{name}: insert p50 {r['insert_ms_excluding_encoding']['p50']:.3f} ms (with encoding "
              f"{r['insert_ms_including_encoding']['p50']:.2f} ms), RSS +{r['rss_growth_bytes_per_keyframe'] / 1e3:.1f}"
              f" kB/keyframe, buffers {r['buffer_bytes_per_keyframe']['used'] / 1e3:.1f} kB, disk "
              f"{r['disk_bytes_per_keyframe']['per_keyframe_files'] / 1e3:.1f} kB/keyframe")


if __name__ == "__main__":
    main()
