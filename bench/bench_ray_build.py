"""Map building on Ray: frames/s of the encoding pass with 1 and 2 Ray workers against the single-process build,
and what Ray costs per chunk.

Data: the corridor reference traversal (111 frames, 320x240 network input) and Nordland part 1 summer (1800 frames
of 64x32, 128x64 input), the default CNN with the VLAD head that a single-process build of the same frames fitted
(the fit runs once, on the driver, with or without Ray, and is not part of these figures).

Each configuration encodes every frame of the data set in chunks into a fresh work directory
(:func:`vpr_ros.core.map_builder.encode_in_chunks`, the encoding pass of ``build_map``), using every core:

* ``single``: this process, ``encoder.threads`` = cores;
* ``ray_1``: one Ray worker with ``encoder.threads`` = cores;
* ``ray_2``: two Ray workers with ``encoder.threads`` = cores / 2 each.

Per configuration: ``frames_per_s`` of the steady encoding (first call sent .. last chunk saved; for Ray the
workers are already started) and ``frames_per_s_with_start`` (Ray workers started within the timing: what one
build pays). The Ray cluster's own start (``cluster_start_s``, once per ``build_map --executor ray`` run) is
reported apart. ``overhead_per_chunk_ms`` = (workers x encoding wall time - the seconds workers spent inside
``encode_chunk``) / chunks: worker time not spent encoding (sending images and results, scheduling, waiting on
the driver, and at the end for the other worker's last chunk), per chunk. ``max_abs_diff_vs_single``: the
largest descriptor difference from the single-process pass (0.0 = bitwise equal; a different ONNX Runtime thread
count may change the last bits). Nordland is also run with chunks of 8 frames (one batch) to show the per-chunk
cost when chunks are small.

    python -m bench ray_build           # writes bench/results/ray_build.json
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import write_result
from bench.splits import CORRIDOR, NORDLAND
from vpr_ros.core.encoders import EncoderConfig, make_encoder
from vpr_ros.core.frames import FrameSource
from vpr_ros.core.map_builder import BuildMapConfig, build_map, encode_in_chunks
from vpr_ros.core.ray_executor import RayExecutor, disconnect, start_local_cluster
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.images import folder_source

CORES = os.cpu_count() or 1


def ray_install() -> dict[str, Any]:
    """Size of the installed ray distribution (its own files, not its dependencies) and a cold ``import ray``."""
    dist = importlib.metadata.distribution("ray")
    size = sum(p.locate().stat().st_size for p in dist.files or [] if p.locate().is_file())
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import ray"], check=True)
    return {"version": dist.version, "installed_bytes": size, "import_s": time.perf_counter() - t0}


def run_config(name: str, source: FrameSource, refmap: ReferenceMap, chunk_size: int, workers: int,
               threads: int, workdir: Path) -> tuple[dict[str, Any], np.ndarray]:
    encoder = make_encoder(EncoderConfig(threads=threads))
    size = (int(refmap.input_size[0]), int(refmap.input_size[1]))
    work = workdir / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    executor = RayExecutor(workers=workers) if workers else None
    t0 = time.perf_counter()
    descriptors = encode_in_chunks(source, encoder, refmap.head, size, work, chunk_size, progress=False,
                                   executor=executor)["descriptors"]
    wall = time.perf_counter() - t0
    n = len(source)
    chunks = -(-n // chunk_size)
    result: dict[str, Any] = {"workers": workers, "threads_per_worker": threads, "chunk_size": chunk_size,
                              "chunks": chunks, "frames": n, "wall_s": wall}
    if executor is None:
        result["frames_per_s"] = result["frames_per_s_with_start"] = n / wall
    else:
        st = executor.stats
        result.update({"frames_per_s": n / st.encode_s, "frames_per_s_with_start": n / (st.actor_start_s + st.encode_s),
                       "actor_start_s": st.actor_start_s, "encode_s": st.encode_s,
                       "worker_encode_s": st.worker_encode_s,
                       "overhead_per_chunk_ms": (st.encode_s * workers - st.worker_encode_s) / chunks * 1e3})
    shutil.rmtree(work, ignore_errors=True)
    print(f"  {name}: {result['frames_per_s']:.1f} frames/s ({result['frames_per_s_with_start']:.1f} with the "
          f"workers' start)" + (f", overhead {result['overhead_per_chunk_ms']:.1f} ms/chunk" if workers else ""),
          flush=True)
    return result, descriptors


def run_dataset(source: FrameSource, chunk_sizes: dict[str, int], workdir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    build_map(source, workdir / "map", BuildMapConfig(encoder=EncoderConfig(threads=CORES)), progress=False)
    fit_and_build_s = time.perf_counter() - t0
    refmap = ReferenceMap.load(workdir / "map")
    out: dict[str, Any] = {"frames": len(source), "input_size": list(refmap.input_size),
                           "single_process_build_map_s": fit_and_build_s, "configs": {}}
    for label, chunk_size in chunk_sizes.items():
        configs: dict[str, Any] = {}
        single = None
        for name, workers, threads in (("single", 0, CORES), ("ray_1", 1, CORES),
                                       ("ray_2", 2, max(1, CORES // 2))):
            result, descriptors = run_config(f"{label}_{name}", source, refmap, chunk_size, workers, threads,
                                             workdir)
            if single is None:
                single = descriptors
            result["max_abs_diff_vs_single"] = float(np.abs(descriptors - single).max())
            result["bitwise_equal_to_single"] = bool(np.array_equal(descriptors.view(np.uint32),
                                                                    single.view(np.uint32)))
            configs[name] = result
        for name in ("ray_1", "ray_2"):
            configs[name]["speedup_vs_single"] = configs[name]["frames_per_s"] / configs["single"]["frames_per_s"]
        out["configs"][label] = configs
    return out


def main() -> None:
    install = ray_install()
    t0 = time.perf_counter()
    ray = start_local_cluster(num_cpus=CORES)
    cluster_start_s = time.perf_counter() - t0
    print(f"local Ray cluster ({CORES} CPUs) started in {cluster_start_s:.1f} s", flush=True)
    corridor = folder_source(CORRIDOR.reference, CORRIDOR.reference_poses)
    nordland = folder_source(NORDLAND.reference)
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            print("corridor", flush=True)
            results["corridor"] = run_dataset(corridor, {"chunk16": 16}, Path(tmp) / "corridor")
            print("nordland", flush=True)
            results["nordland"] = run_dataset(nordland, {"chunk120": 120, "chunk8": 8}, Path(tmp) / "nordland")
    finally:
        disconnect(ray)
    write_result("ray_build", {
        "setup": {"model": EncoderConfig().model, "cores": CORES,
                  "configs": "single: this process, encoder.threads = cores; ray_1: one Ray worker, threads = cores; "
                             "ray_2: two Ray workers, threads = cores / 2 each",
                  "local_cluster": "start_local_cluster: 127.0.0.1 only, no dashboard, no usage statistics"},
        "ray": {**install, "cluster_start_s": cluster_start_s},
        **results,
    })


if __name__ == "__main__":
    main()
