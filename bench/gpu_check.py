"""``make gpu-check``: the GPU tests, then GPU benches beside the CPU path in one run -> bench/results/gpu.json.

Run on a machine with an NVIDIA GPU, in the venv of ``make gpu-venv`` (onnxruntime-gpu and a CUDA FAISS instead of
the CPU builds): ``.venv-gpu/bin/python -m bench.gpu_check``. What it measures, each on the CPU and on the GPU
in one process, at 640x480 on the shipped corridor images (a map of its 111 reference frames with the ``speed``
patches, built on the CPU first):

* ``encoder``: one image through the default encoder (ONNX Runtime CPU vs CUDA with IO binding, and TensorRT
  with ``--tensorrt``: its engine build takes minutes), and the parity of the feature maps and of the global
  descriptors (max |diff|, least cosine, top-1 retrieval agreement over all queries);
* ``matching_top100``: the mutual-nearest-neighbour graph of the re-ranking on 100 candidates (the map's int8
  speed patches), CPU vs CUDA with the candidates' patches resident on the GPU; the whole CPU re-ranking
  (query patches + matching + spatial score) of the same 100 candidates beside it. The localizer's re-ranking
  still runs its graph on the CPU: the provider switch in vpr_ros.core.patchnetvlad.matching is not there yet;
* ``faiss_1m``: exact inner-product search of one query (k = 100) over 1,000,000 synthetic random unit vectors
  of 256 dimensions (the default global descriptor size; random data, so only the latency means anything),
  CPU (IndexFlatIP, all cores) vs GPU (its index_cpu_to_gpu copy), and their agreement;
* ``end_to_end``: Localizer.localize on the corridor query images in order (encoder, VLAD head, search,
  re-ranking, sequence matching: the node's per-frame work without ROS transport and image decoding), p50 / p95,
  the CPU configuration vs encoder and map search on the GPU.

Exit status: 0 all passed; 1 a GPU test or a parity check failed (the results are still written, with
``passed: false``); 2 no GPU on this machine (nothing measured, nothing written); 3 a GPU is there but this Python
has the CPU builds of ONNX Runtime or FAISS (run ``make gpu-venv`` first; nothing written).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXIT_FAILED, EXIT_NO_GPU, EXIT_NO_GPU_BUILD = 1, 2, 3
H, W = 480, 640
#: CUDA's own convention for hiding every GPU from a process.
HIDDEN = ("", "-1", "none", "NoDevFiles")
#: Parity bounds GPU vs CPU (float32 on both; cuDNN sums in another order): feature maps within this fraction of
#: their largest magnitude, global descriptors (unit vectors) at least this cosine.
FEATURE_REL_TOL = 1e-3
GLOBAL_MIN_COSINE = 0.9999


def gpu_devices(dev: Path = Path("/dev"), env: Mapping[str, str] | None = None) -> list[str]:
    """The NVIDIA GPU device nodes this process may use: /dev/nvidia<N>, none when CUDA_VISIBLE_DEVICES hides
    them all (as the CUDA runtime reads it)."""
    env = os.environ if env is None else env
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in HIDDEN:
        return []
    return sorted(p.name for p in dev.glob("nvidia[0-9]*"))


def gpu_build_problems() -> list[str]:
    """What this Python lacks for the GPU path: the CUDA provider of ONNX Runtime, a FAISS with GPU support."""
    from vpr_ros.core import ort
    from vpr_ros.core.gpu_index import faiss_gpus

    problems = []
    if ort.CUDA not in ort.onnxruntime.get_available_providers():
        problems.append(f"onnxruntime {ort.onnxruntime.__version__} has no CUDAExecutionProvider (the CPU build)")
    if faiss_gpus() == 0:
        import faiss

        problems.append(f"FAISS {faiss.__version__} sees no GPU (the CPU build, or no CUDA runtime)")
    return problems


def device_description() -> dict[str, Any]:
    """GPU name, driver and memory from nvidia-smi, and the GPU builds in use."""
    import faiss

    from vpr_ros.core import ort

    info: dict[str, Any] = {"onnxruntime": ort.onnxruntime.__version__,
                            "onnxruntime_device": ort.onnxruntime.get_device(),
                            "providers_available": ort.onnxruntime.get_available_providers(),
                            "faiss": faiss.__version__, "faiss_gpus": int(faiss.get_num_gpus())}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
        info["gpus"] = [dict(zip(("name", "driver", "memory"), (f.strip() for f in line.split(",")), strict=False))
                        for line in out.strip().splitlines()]
    except (OSError, subprocess.SubprocessError) as exc:
        info["gpus"] = f"nvidia-smi failed: {exc}"
    return info


def percentiles(samples_ms: Any) -> dict[str, float]:
    """p50 / p95 / min of wall times in milliseconds (the acceptance reads p95 for the GPU path)."""
    x = np.asarray(samples_ms)
    return {"p50": float(np.median(x)), "p95": float(np.percentile(x, 95)), "min": float(x.min()), "n": len(x)}


def timed(fn: Any, repeats: int, warmup: int = 3) -> dict[str, float]:
    from bench.common import wall_times_ms

    return percentiles(wall_times_ms(fn, repeats, warmup))


def run_gpu_tests() -> dict[str, Any]:
    """test/test_gpu.py (its GPU tests run: this machine has a GPU) in a subprocess; its summary line."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test/test_gpu.py"],
                          cwd=REPO, capture_output=True, text=True, timeout=420)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()]
    print("\n".join(lines[-15:]), flush=True)
    return {"command": "python -m pytest -q test/test_gpu.py", "exit_status": proc.returncode,
            "summary": lines[-1] if lines else proc.stderr.strip()[-500:], "seconds": time.perf_counter() - t0}


def corridor_images(kind: str) -> list[np.ndarray]:
    from vpr_ros.core.image import load_rgb

    return [load_rgb(p) for p in sorted((REPO / "data" / "corridor" / kind).glob("*.jpg"))]


def build_corridor_map(out: Path) -> Path:
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_ros.core.map_builder import BuildMapConfig, build_map
    from vpr_ros.core.patchnetvlad.store import PatchStoreConfig
    from vpr_ros.io.images import folder_source

    corridor = REPO / "data" / "corridor"
    config = BuildMapConfig(image_height=H, image_width=W, patches=PatchStoreConfig(preset="speed"),
                            encoder=EncoderConfig(device="cpu"))
    build_map(folder_source(corridor / "ref", corridor / "ref_poses.csv"), out, config, progress=False,
              encoder=OnnxEncoder(config.encoder))
    return out


def input_hw(refmap: Any) -> tuple[int, int]:
    height, width = (int(v) for v in refmap.input_size)
    return height, width


def bench_encoder(refmap: Any, queries: list[np.ndarray], tensorrt: bool, repeats: int,
                  device: str = "cuda") -> dict[str, Any]:
    """Encoder latency and parity, CPU vs ``device`` (``cuda``; ``cpu`` only to check this code off a GPU)."""
    from vpr_ros.core import ort
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_ros.core.vlad import global_descriptors

    H, W = input_hw(refmap)
    cpu = OnnxEncoder(EncoderConfig(device="cpu"))
    gpu = OnnxEncoder(EncoderConfig(device=device))
    one = queries[:1]
    result: dict[str, Any] = {
        "what": f"one {W}x{H} image through the default encoder (RGB resize + ONNX Runtime), median of "
                f"{repeats}", "gpu_device": device, "providers": {"cpu": cpu.providers, "gpu": gpu.providers},
        "cpu_ms": timed(lambda: cpu.features(one, H, W), repeats),
        "gpu_ms": timed(lambda: gpu.features(one, H, W), repeats),
        "gpu_on_device_ms": timed(lambda: gpu.device_features(one, H, W), repeats)}
    # Parity over every query image (batches of the encoders' batch size).
    f_cpu, f_gpu = cpu.features(queries, H, W), gpu.features(queries, H, W)
    g_cpu, g_gpu = global_descriptors(f_cpu, refmap.head), global_descriptors(f_gpu, refmap.head)
    cosine = np.sum(g_cpu * g_gpu, axis=1)
    top1_cpu, top1_gpu = refmap.search(g_cpu, 1)[1][:, 0], refmap.search(g_gpu, 1)[1][:, 0]
    rel = float(np.abs(f_gpu - f_cpu).max() / np.abs(f_cpu).max())
    result["parity"] = {"images": len(queries), "feature_max_abs_diff": float(np.abs(f_gpu - f_cpu).max()),
                        "feature_max_rel_diff": rel, "feature_rel_tolerance": FEATURE_REL_TOL,
                        "global_min_cosine": float(cosine.min()), "global_min_cosine_bound": GLOBAL_MIN_COSINE,
                        "top1_agreement": float(np.mean(top1_cpu == top1_gpu)),
                        "passed": bool(rel <= FEATURE_REL_TOL and cosine.min() >= GLOBAL_MIN_COSINE)}
    if tensorrt and ort.TENSORRT in ort.onnxruntime.get_available_providers():
        with tempfile.TemporaryDirectory() as cache:
            t0 = time.perf_counter()
            trt = OnnxEncoder(EncoderConfig(device="tensorrt", tensorrt_cache=cache, batch_size=1))
            trt.features(one, H, W)
            built = time.perf_counter() - t0
            f_trt = np.concatenate([trt.features([q], H, W) for q in queries])
            g_trt = global_descriptors(f_trt, refmap.head)
            result["tensorrt_fp16"] = {
                "ms": timed(lambda: trt.features(one, H, W), repeats), "engine_build_s": built,
                "feature_max_rel_diff": float(np.abs(f_trt - f_cpu).max() / np.abs(f_cpu).max()),
                "global_min_cosine": float(np.sum(g_cpu * g_trt, axis=1).min()),
                "top1_agreement": float(np.mean(refmap.search(g_trt, 1)[1][:, 0] == top1_cpu))}
    else:
        result["tensorrt_fp16"] = "not measured (" + ("no TensorrtExecutionProvider in this onnxruntime"
                                                      if tensorrt else "run with --tensorrt") + ")"
    return result


def bench_matching(refmap: Any, queries: list[np.ndarray], repeats: int, device: str = "cuda") -> dict[str, Any]:
    """The re-ranking's matching graph on 100 candidates, CPU vs ``device``, and the whole CPU re-ranking."""
    from vpr_ros.core import ort
    from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
    from vpr_ros.core.patchnetvlad import matching, shipped_graphs
    from vpr_ros.core.patchnetvlad.rerank import RerankConfig, Reranker, resolve_method

    H, W = input_hw(refmap)
    spec = resolve_method(refmap, RerankConfig())
    reranker = Reranker(refmap, spec, RerankConfig())
    features = OnnxEncoder(EncoderConfig(device="cpu")).features(queries[:1], H, W)
    g = refmap.search(np.zeros((1, refmap.dim), np.float32) + 1.0 / np.sqrt(refmap.dim), 100)[1][0]
    rows = np.sort(g[g >= 0])
    query = reranker.query_patches(features)[0]
    store = np.ascontiguousarray(np.asarray(reranker.stores[0])[rows])
    query_t = matching.matcher_query(query, spec.encoding)
    graph = shipped_graphs.graph_bytes(matching.graph_file_name(spec.encoding), matching.WHAT)
    cpu = ort.session(graph)
    gpu = ort.BoundRunner(ort.session(graph, ort.providers(device), what="matching"))
    resident = gpu.upload(store)
    feeds = {"refs": store, "query_t": query_t}
    nq_cpu, nr_cpu = cpu.run(None, feeds)
    nq_gpu, nr_gpu = gpu.to_numpy(gpu.run({"refs": resident, "query_t": query_t}))
    return {
        "what": f"{len(rows)} candidates, {spec.encoding} {spec.preset} patches ({store.shape[1]} per frame, "
                f"{store.shape[2]}-d), one {W}x{H} query ({query.shape[0]} patches)",
        "rerank_cpu_ms": timed(lambda: reranker.rerank(features, rows), repeats),
        "graph_cpu_ms": timed(lambda: cpu.run(None, feeds), repeats),
        "gpu_device": device,
        "graph_gpu_store_resident_ms": timed(lambda: gpu.to_numpy(gpu.run({"refs": resident, "query_t": query_t})),
                                              repeats),
        "graph_gpu_store_uploaded_ms": timed(lambda: gpu.to_numpy(gpu.run(feeds)), repeats),
        "providers_gpu": gpu.session.get_providers(),
        "nearest_agreement": {"query_side": float(np.mean(nq_cpu == nq_gpu)),
                              "ref_side": float(np.mean(nr_cpu == nr_gpu))}}


def bench_faiss(frames: int, dim: int, repeats: int, device: str = "cuda") -> dict[str, Any]:
    """One-query exact search over ``frames`` random unit vectors, CPU vs the index placed on ``device``."""
    import faiss

    from vpr_ros.core.gpu_index import place_index

    rng = np.random.default_rng(0)
    base = rng.standard_normal((frames, dim), dtype=np.float32)
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    queries = rng.standard_normal((repeats, dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(base)
    placement = place_index(cpu, device)
    if device != "cpu" and not placement.on_gpu:
        raise RuntimeError(placement.reason)
    samples: dict[str, list[float]] = {"cpu": [], "gpu": []}
    answers: dict[str, list[np.ndarray]] = {"cpu": [], "gpu": []}
    for name, index in (("cpu", cpu), ("gpu", placement.index_for(cpu, 100))):
        index.search(queries[:1], 100)  # warm-up
        for q in queries:
            t0 = time.perf_counter()
            _, rows = index.search(q[None], 100)
            samples[name].append((time.perf_counter() - t0) * 1e3)
            answers[name].append(rows[0])
    overlap = [len(np.intersect1d(a, b)) / 100 for a, b in zip(answers["cpu"], answers["gpu"], strict=True)]
    return {"what": f"one query, k=100, exact inner product over {frames} synthetic random unit vectors of {dim} "
                    "dimensions (random data: latency only)", "faiss_threads": faiss.omp_get_max_threads(),
            "placement": placement.device, "cpu_ms": percentiles(samples["cpu"]),
            "gpu_ms": percentiles(samples["gpu"]),
            "top1_agreement": float(np.mean([a[0] == b[0] for a, b in zip(answers["cpu"], answers["gpu"],
                                                                                strict=True)])),
            "top100_overlap_min": float(min(overlap))}


def bench_end_to_end(map_path: Path, queries: list[np.ndarray], frames: int, device: str = "cuda") -> dict[str, Any]:
    """Localizer.localize per frame: the CPU configuration vs encoder and map search on ``device``."""
    from vpr_ros.core.encoders import EncoderConfig, make_encoder
    from vpr_ros.core.localizer import Localizer, LocalizerConfig
    from vpr_ros.core.refmap import ReferenceMap

    result: dict[str, Any] = {}
    picks: dict[str, list[int]] = {}
    for name, on in (("cpu", "cpu"), ("gpu", device)):
        refmap = ReferenceMap.load(map_path)
        placed = refmap.place_search(on)
        config = LocalizerConfig(encoder=EncoderConfig(device=on))
        localizer = Localizer(refmap, make_encoder(config.encoder), config)
        for image in queries[:3]:
            localizer.localize(image)  # warm-up: first-run allocations, cuDNN algorithm search
        localizer.reset_sequence()
        samples, best = [], []
        for i, image in enumerate(queries[:frames]):
            t0 = time.perf_counter()
            hyp = localizer.localize(image, stamp=float(i))
            samples.append((time.perf_counter() - t0) * 1e3)
            best.append(int(hyp.indices[0]) if len(hyp.indices) else -1)
        picks[name] = best
        result[name] = {"ms": percentiles(samples), "encoder_providers": localizer.encoder.providers,
                        "map_search": placed}
        print(f"end to end {name}: p50 {result[name]['ms']['p50']:.1f} ms, p95 {result[name]['ms']['p95']:.1f} ms",
              flush=True)
    height, width = input_hw(refmap)
    result["gpu_device"] = device
    result["what"] = (f"Localizer.localize on {frames} corridor queries in order at {width}x{height}, default "
                      f"localizer settings ({LocalizerConfig().rerank.candidates} candidates re-ranked; the "
                      "re-ranking's matching graph on the CPU in both)")
    result["best_match_agreement"] = float(np.mean(np.array(picks["cpu"]) == np.array(picks["gpu"])))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensorrt", action="store_true",
                        help="also build and time a TensorRT fp16 engine of the encoder (minutes)")
    parser.add_argument("--no-tests", action="store_true", help="benches only (the GPU tests are not run)")
    parser.add_argument("--faiss-frames", type=int, default=1_000_000, help="synthetic FAISS map size")
    parser.add_argument("--frames", type=int, default=60, help="query frames timed end to end per path")
    args = parser.parse_args(argv)
    if not gpu_devices():
        print("gpu-check: no GPU found (no /dev/nvidia<N> device, or CUDA_VISIBLE_DEVICES hides them all): nothing "
              "was measured and bench/results/gpu.json was not written", file=sys.stderr)
        return EXIT_NO_GPU
    problems = gpu_build_problems()
    if problems:
        print(f"gpu-check: a GPU is here but {'; '.join(problems)}: run `make gpu-venv` and then "
              "`.venv-gpu/bin/python -m bench.gpu_check` (nothing was written)", file=sys.stderr)
        return EXIT_NO_GPU_BUILD

    from bench.common import write_result

    t_start = time.perf_counter()
    payload: dict[str, Any] = {"device": device_description()}
    print(f"gpu-check on {payload['device'].get('gpus')}", flush=True)
    failures = []
    if not args.no_tests:
        payload["tests"] = run_gpu_tests()
        if payload["tests"]["exit_status"] != 0:
            failures.append("GPU tests")
    queries = corridor_images("query")
    with tempfile.TemporaryDirectory() as tmp:
        map_path = build_corridor_map(Path(tmp) / "corridor_640_speed")
        from vpr_ros.core.refmap import ReferenceMap

        refmap = ReferenceMap.load(map_path)
        sections = (("encoder", lambda: bench_encoder(refmap, queries, args.tensorrt, 50)),
                    ("matching_top100", lambda: bench_matching(refmap, queries, 30)),
                    ("faiss_1m", lambda: bench_faiss(args.faiss_frames, 256, 50)),
                    ("end_to_end", lambda: bench_end_to_end(map_path, queries, args.frames)))
        for name, run in sections:
            t0 = time.perf_counter()
            try:
                payload[name] = run()
            except Exception as exc:  # one broken section must not hide the others' figures
                payload[name] = {"error": f"{type(exc).__name__}: {exc}"}
                failures.append(name)
            print(f"{name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if isinstance(payload["encoder"].get("parity"), dict) and not payload["encoder"]["parity"]["passed"]:
        failures.append("encoder parity")
    payload["failures"] = failures
    payload["passed"] = not failures
    payload["seconds"] = time.perf_counter() - t_start
    write_result("gpu", payload)
    print("gpu-check " + ("passed" if not failures else f"FAILED: {', '.join(failures)}"))
    return 0 if not failures else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
