"""The GPU path: ONNX Runtime provider selection, the TensorRT engine cache key, IO binding, FAISS on the GPU and
``make gpu-check`` (bench/gpu_check.py).

The tests marked ``requires("gpu")`` run on a machine with an NVIDIA GPU, in the venv of ``make gpu-venv``
(onnxruntime-gpu, a CUDA FAISS); there they compare the GPU's answers with the CPU's. On such a machine in the
CPU venv they fail (the CPU builds cannot use the GPU), as test/capabilities.py wants. The rest runs anywhere: it
checks the selection logic and its error lines on this machine's real ONNX Runtime and FAISS builds.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from bench import gpu_check
from vpr_ros.cli import build_map
from vpr_ros.cli.common import run_cli
from vpr_ros.config import ConfigError, config_from_dict
from vpr_ros.core import gpu_index, ort
from vpr_ros.core.encoders import EncoderConfig, OnnxEncoder
from vpr_ros.core.localize_config import LocalizeNodeConfig
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.patchnetvlad import matching, shipped_graphs
from vpr_ros.core.patchnetvlad.rerank import RerankConfig
from vpr_ros.core.refmap import ReferenceMap

REPO = Path(__file__).resolve().parents[1]
SHA = "ab" * 32
#: Encoder parity bounds CUDA vs CPU, both float32 (TF32 off, ort.CUDA_OPTIONS): cuDNN sums in another order, so
#: feature maps agree to this fraction of their largest magnitude and global descriptors to this cosine.
FEATURE_REL_TOL = gpu_check.FEATURE_REL_TOL
GLOBAL_MIN_COSINE = gpu_check.GLOBAL_MIN_COSINE


def graph_bytes(encoding: str) -> bytes:
    return shipped_graphs.graph_bytes(matching.graph_file_name(encoding), matching.WHAT)


def unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


# ---- provider selection (runs anywhere) -------------------------------------------------------------------------

def test_cpu_and_auto_without_cuda_select_the_cpu_provider():
    assert ort.providers("cpu", available=[ort.CUDA, ort.CPU]) == [ort.CPU]
    assert ort.providers("auto", available=[ort.CPU]) == [ort.CPU]


def test_auto_and_cuda_select_cuda_first_with_its_options():
    for device in ("auto", "cuda"):
        chosen = ort.providers(device, available=[ort.CUDA, ort.CPU])
        assert chosen[0] == (ort.CUDA, ort.CUDA_OPTIONS) and chosen[1:] == [ort.CPU]
    assert ort.CUDA_OPTIONS["use_tf32"] == "0"  # parity with the CPU (test_encoder_descriptors_cuda_match_cpu)


def test_tensorrt_comes_first_with_its_engine_cache_then_cuda(tmp_path):
    trt = ort.TensorrtSettings(tmp_path, SHA, "image", 8, 3, 480, 640, fp16=True)
    chosen = ort.providers("tensorrt", available=[ort.TENSORRT, ort.CUDA, ort.CPU], tensorrt=trt)
    assert [p if isinstance(p, str) else p[0] for p in chosen] == [ort.TENSORRT, ort.CUDA, ort.CPU]
    options = chosen[0][1]
    assert options["trt_fp16_enable"] == "1" and options["trt_engine_cache_enable"] == "1"
    assert options["trt_engine_cache_path"] == str(trt.cache_dir) and trt.cache_dir.parent == tmp_path
    assert options["trt_profile_min_shapes"] == "image:1x3x480x640"
    assert options["trt_profile_max_shapes"] == "image:8x3x480x640"


@pytest.mark.parametrize(("device", "available", "missing"), [
    ("cuda", [ort.CPU], "CUDAExecutionProvider"),
    ("tensorrt", [ort.CUDA, ort.CPU], "TensorrtExecutionProvider"),
    ("tensorrt", [ort.CPU], "TensorrtExecutionProvider and CUDAExecutionProvider"),
])
def test_a_missing_gpu_provider_is_one_line_naming_the_setting_and_the_fix(device, available, missing):
    with pytest.raises(ort.ProviderUnavailableError) as info:
        ort.providers(device, what="encoder.device", available=available)
    message = str(info.value)
    assert message.startswith(f"encoder.device {device!r} needs ONNX Runtime's {missing}, but onnxruntime")
    assert "make gpu-venv" in message and "\n" not in message


def test_a_gpu_provider_that_did_not_start_is_refused():
    with pytest.raises(ort.ProviderUnavailableError, match="offers CUDAExecutionProvider but could not start it"):
        ort.check_providers([(ort.CUDA, {}), ort.CPU], [ort.CPU], what="encoder.device")
    ort.check_providers([ort.CPU], [ort.CPU])
    ort.check_providers([(ort.CUDA, {}), ort.CPU], [ort.CUDA, ort.CPU])


def test_encoder_on_cuda_runs_there_or_is_refused_at_start_with_one_line(default_model, capsys, corridor, tmp_path):
    """This machine's real ONNX Runtime: the GPU build runs the encoder on CUDA; with the CPU build, build_map
    with ``encoder.device=cuda`` exits 2 with one line before it writes anything."""
    if ort.CUDA in ort.onnxruntime.get_available_providers():
        assert OnnxEncoder(EncoderConfig(model=str(default_model), device="cuda")).providers[0] == ort.CUDA
        return
    code = run_cli(build_map.main, ["--images", str(corridor / "ref"), "--output", str(tmp_path / "map"), "-q",
                                    "--set", "encoder.device=cuda"])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: encoder.device 'cuda' needs ONNX Runtime's CUDAExecutionProvider, but "
                               f"onnxruntime {ort.onnxruntime.__version__} here offers only "), lines[0]
    assert not (tmp_path / "map").exists()


def test_rerank_on_cuda_runs_there_or_is_refused_at_start_with_one_line(corridor_patch_map, encoder):
    """The re-ranking's query patch and matching graphs follow ``rerank.device``; without the CUDA provider the
    localizer is refused when it is made, not at its first query."""
    refmap = ReferenceMap.load(corridor_patch_map)
    config = LocalizerConfig(rerank=RerankConfig(candidates=20, device="cuda"))
    if ort.CUDA in ort.onnxruntime.get_available_providers():
        localizer = Localizer(refmap, encoder, config)
        assert localizer.reranker is not None and localizer.reranker.config.device == "cuda"
        return
    with pytest.raises(ort.ProviderUnavailableError) as refused:
        Localizer(refmap, encoder, config)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("rerank.device 'cuda' needs ONNX Runtime's "
                                                       "CUDAExecutionProvider"), message


def test_tensorrt_cache_directory_changes_with_model_shape_and_precision(tmp_path):
    base = ort.tensorrt_cache_dir(tmp_path, SHA, (1, 3, 480, 640), fp16=True)
    assert base == ort.tensorrt_cache_dir(tmp_path, SHA.upper(), [1, 3, 480, 640], fp16=True)
    others = {ort.tensorrt_cache_dir(tmp_path, "cd" * 32, (1, 3, 480, 640), fp16=True),
              ort.tensorrt_cache_dir(tmp_path, SHA, (1, 3, 240, 320), fp16=True),
              ort.tensorrt_cache_dir(tmp_path, SHA, (8, 3, 480, 640), fp16=True),
              ort.tensorrt_cache_dir(tmp_path, SHA, (1, 3, 480, 640), fp16=False)}
    assert base not in others and len(others) == 4
    assert base.name.startswith("abababababababab_1x3x480x640_fp16_ort")
    with pytest.raises(ValueError, match="hex sha256"):
        ort.tensorrt_cache_dir(tmp_path, "../../etc", (1, 3, 480, 640), fp16=True)


def test_model_digest_of_bytes_and_file_agree(tmp_path):
    graph = graph_bytes("float32")
    (tmp_path / "g.onnx").write_bytes(graph)
    assert ort.model_digest(graph) == ort.model_digest(tmp_path / "g.onnx") != ort.model_digest(graph + b"x")


def test_session_keeps_its_positional_signature():
    """matching.py and vpr_training call ort.session(model, threads=...) and ort.session(path, providers, threads)."""
    graph = graph_bytes("float32")
    assert ort.session(graph, threads=1).get_providers() == [ort.CPU]
    assert ort.session(graph, [ort.CPU], 1).get_providers() == [ort.CPU]


# ---- IO binding ---------------------------------------------------------------------------------------------------

def test_bound_runner_chains_graphs_on_the_device_with_the_answers_of_plain_runs():
    rng = np.random.default_rng(3)
    refs, query = unit_rows(rng, 6 * 40, 32).reshape(6, 40, 32), unit_rows(rng, 50, 32)
    session = ort.session(graph_bytes("float32"), threads=1)
    runner = ort.BoundRunner(session)
    assert runner.device == "cpu"
    expected = session.run(None, {"refs": refs, "query_t": np.ascontiguousarray(query.T)})
    resident = runner.upload(refs)  # an OrtValue bound as it is: the store stays on the device
    got = runner.to_numpy(runner.run({"refs": resident, "query_t": np.ascontiguousarray(query.T)}))
    for a, b in zip(expected, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_encoder_device_features_are_the_features(encoder, corridor):
    from vpr_ros.core.image import load_rgb

    images = [load_rgb(p) for p in sorted((corridor / "query").glob("*.jpg"))[:2]]
    on_device = encoder.device_features(images, 240, 320)
    np.testing.assert_array_equal(on_device.numpy(), encoder.features(images, 240, 320))
    with pytest.raises(ValueError, match="one batch"):
        encoder.device_features(images * encoder.config.batch_size, 240, 320)


# ---- FAISS placement (runs anywhere) ----------------------------------------------------------------------------

def test_search_on_cpu_keeps_the_cpu_index():
    index = faiss.IndexFlatIP(8)
    placement = gpu_index.place_index(index, "cpu")
    assert placement.device == "cpu" and not placement.on_gpu and placement.index_for(index, 5) is index


@pytest.mark.parametrize(("device", "level"), [("cuda", logging.WARNING), ("auto", logging.INFO)])
def test_search_without_a_faiss_gpu_falls_back_with_one_log_line(caplog, device, level):
    """This machine's FAISS: on the GPU when it can (the GPU build on a GPU machine), else the CPU, saying why."""
    index = faiss.IndexFlatIP(8)
    index.add(unit_rows(np.random.default_rng(0), 10, 8))
    with caplog.at_level(logging.INFO, logger="vpr_ros.core.gpu_index"):
        placement = gpu_index.place_index(index, device)
    assert len(caplog.records) == 1
    if gpu_index.faiss_gpus() > 0:
        assert placement.device == "cuda:0" and "searched on GPU 0" in caplog.records[0].getMessage()
    else:
        assert placement.device == "cpu" and placement.index_for(index, 5) is index
        assert caplog.records[0].levelno == level
        assert caplog.records[0].getMessage().startswith(f"search_device {device}: FAISS {faiss.__version__} ")
        assert "searching the map on the CPU" in caplog.records[0].getMessage()


def test_search_device_must_be_one_of_the_choices():
    with pytest.raises(ConfigError, match=r"search_device: 'gpu' is not one of \['auto', 'cpu', 'cuda'\]"):
        gpu_index.place_index(faiss.IndexFlatIP(8), "gpu")
    with pytest.raises(ConfigError, match=r"search_device: 'tpu' is not one of"):
        config_from_dict(LocalizeNodeConfig, {"search_device": "tpu"})
    assert config_from_dict(LocalizeNodeConfig, {"search_device": "cuda"}).search_device == "cuda"
    with pytest.raises(ConfigError, match=r"localizer\.encoder\.device: 'gpu' is not one of"):
        config_from_dict(LocalizeNodeConfig, {"localizer": {"encoder": {"device": "gpu"}}})
    assert config_from_dict(LocalizeNodeConfig, {"localizer": {"encoder": {"device": "tensorrt"}}}) \
        .localizer.encoder.device == "tensorrt"


def test_a_stale_or_too_deep_gpu_copy_is_not_searched():
    """The routing of IndexPlacement.index_for, with a second CPU index standing where the GPU copy would be."""
    rng = np.random.default_rng(1)
    index, copy = faiss.IndexFlatIP(8), faiss.IndexFlatIP(8)
    index.add(unit_rows(rng, 20, 8))
    copy.add(unit_rows(rng, 20, 8))
    placement = gpu_index.IndexPlacement(index, "cuda:0", "test", gpu_index=copy, _mirrored=index.ntotal)
    assert placement.index_for(index, 10) is copy
    assert placement.index_for(index, gpu_index.GPU_MAX_K + 1) is index
    assert placement.index_for(faiss.IndexFlatIP(8), 10) is not copy  # the map's index was rebuilt
    index.add(unit_rows(rng, 1, 8))  # a frame appended after the copy was made
    assert placement.index_for(index, 10) is index


def test_reference_map_searches_where_it_was_placed(corridor_map):
    refmap = ReferenceMap.load(corridor_map)
    queries = refmap.descriptors[:5]
    before = refmap.search(queries, 10)
    where = refmap.place_search("auto")
    assert where == ("cuda:0" if gpu_index.faiss_gpus() > 0 else "cpu")
    after = refmap.search(queries, 10)
    np.testing.assert_array_equal(before[1][:, 0], after[1][:, 0])
    np.testing.assert_allclose(before[0], after[0], atol=1e-5)


# ---- make gpu-check without a GPU ----------------------------------------------------------------------------------

def test_gpu_devices_are_the_nvidia_device_nodes_unless_cuda_hides_them(tmp_path):
    assert gpu_check.gpu_devices(tmp_path, {}) == []
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidiactl").touch()  # the control node, not a GPU
    assert gpu_check.gpu_devices(tmp_path, {}) == ["nvidia0"]
    assert gpu_check.gpu_devices(tmp_path, {"CUDA_VISIBLE_DEVICES": "0"}) == ["nvidia0"]
    assert gpu_check.gpu_devices(tmp_path, {"CUDA_VISIBLE_DEVICES": ""}) == []
    assert gpu_check.gpu_devices(tmp_path, {"CUDA_VISIBLE_DEVICES": "-1"}) == []


def test_gpu_check_without_a_gpu_exits_2_with_one_line_and_writes_nothing(tmp_path):
    results = REPO / "bench" / "results" / "gpu.json"
    before = results.stat().st_mtime_ns if results.exists() else None
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": os.pathsep.join(
        [str(REPO / "ros" / "vpr_ros"), str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == gpu_check.EXIT_NO_GPU == 2
    assert proc.stderr.strip().splitlines() == [
        "gpu-check: no GPU found (no /dev/nvidia<N> device, or CUDA_VISIBLE_DEVICES hides them all): nothing was "
        "measured and bench/results/gpu.json was not written"], proc.stderr
    assert proc.stdout == ""
    assert (results.stat().st_mtime_ns if results.exists() else None) == before


# ---- on the GPU ----------------------------------------------------------------------------------------------------

@pytest.mark.requires("gpu")
def test_encoder_descriptors_cuda_match_cpu(default_model, corridor_map, corridor):
    from vpr_ros.core.image import load_rgb
    from vpr_ros.core.vlad import global_descriptors

    refmap = ReferenceMap.load(corridor_map)
    height, width = (int(v) for v in refmap.input_size)
    images = [load_rgb(p) for p in sorted((corridor / "query").glob("*.jpg"))[::7]]
    cpu = OnnxEncoder(EncoderConfig(model=str(default_model), device="cpu"))
    gpu = OnnxEncoder(EncoderConfig(model=str(default_model), device="cuda"))
    assert gpu.providers[0] == ort.CUDA
    f_cpu, f_gpu = cpu.features(images, height, width), gpu.features(images, height, width)
    assert np.abs(f_gpu - f_cpu).max() <= FEATURE_REL_TOL * np.abs(f_cpu).max()
    g_cpu, g_gpu = global_descriptors(f_cpu, refmap.head), global_descriptors(f_gpu, refmap.head)
    assert np.sum(g_cpu * g_gpu, axis=1).min() >= GLOBAL_MIN_COSINE


@pytest.mark.requires("gpu")
def test_rerank_on_cuda_ranks_like_the_cpu(corridor_patch_map, encoder, corridor):
    from vpr_ros.core.image import load_rgb

    refmap = ReferenceMap.load(corridor_patch_map)
    on = {device: Localizer(refmap, encoder, LocalizerConfig(top_k=5, rerank=RerankConfig(candidates=20,
                                                                                        device=device)))
          for device in ("cpu", "cuda")}
    for path in sorted((corridor / "query").glob("*.jpg"))[::11]:
        image = load_rgb(path)
        cpu, gpu = on["cpu"].localize(image), on["cuda"].localize(image)
        assert gpu.indices[0] == cpu.indices[0]
        np.testing.assert_allclose(gpu.scores, cpu.scores, atol=0.02)


@pytest.mark.requires("gpu")
def test_faiss_gpu_search_equals_cpu_search():
    rng = np.random.default_rng(7)
    base, queries = unit_rows(rng, 5000, 256), unit_rows(rng, 50, 256)
    cpu = faiss.IndexFlatIP(256)
    cpu.add(base)
    placement = gpu_index.place_index(cpu, "cuda")
    assert placement.device == "cuda:0", placement.reason
    sims_cpu, rows_cpu = cpu.search(queries, 10)
    sims_gpu, rows_gpu = placement.index_for(cpu, 10).search(queries, 10)
    np.testing.assert_allclose(sims_gpu, sims_cpu, atol=1e-5)
    # Every row the GPU returns has the similarity it reports; rows differ only where neighbours tie to rounding.
    true_sims = np.einsum("bkd,bd->bk", base[rows_gpu], queries)
    np.testing.assert_allclose(true_sims, sims_gpu, atol=1e-5)
    assert np.mean(rows_gpu != rows_cpu) < 0.01


@pytest.mark.requires("gpu")
@pytest.mark.parametrize("encoding", ["float32", "float16", "int8"])
def test_matching_graphs_under_cuda_equal_cpu(encoding):
    """The mutual-NN graphs of the re-ranking under the CUDA provider: every nearest patch it picks has the exact
    best similarity (integer products for int8; near-ties in float may pick the other one)."""
    rng = np.random.default_rng(11)
    query = unit_rows(rng, 300, 64)
    refs = unit_rows(rng, 20 * 250, 64).reshape(20, 250, 64)
    if encoding == "int8":
        codes = np.clip(np.rint(refs * 127), -127, 127).astype(np.int16)
        refs_in = (codes + matching.INT8_ZERO_POINT).astype(np.uint8)
        query_t = np.ascontiguousarray(matching.quantise_query(query).T)
        exact = np.einsum("crp,pq->crq", codes.astype(np.int64), query_t.astype(np.int64))
    else:
        dtype = np.float16 if encoding == "float16" else np.float32
        refs_in, query_t = refs.astype(dtype), np.ascontiguousarray(query.T)
        exact = np.einsum("crp,pq->crq", refs_in.astype(np.float64), query_t.astype(np.float64))
    feeds = {"refs": refs_in, "query_t": query_t}
    cpu = ort.session(graph_bytes(encoding)).run(None, feeds)
    session = ort.session(graph_bytes(encoding), ort.providers("cuda"), what="matching")
    assert session.get_providers()[0] == ort.CUDA
    runner = ort.BoundRunner(session)
    nearest_query, nearest_ref = runner.to_numpy(runner.run(feeds))
    best_query = np.take_along_axis(exact, nearest_query[:, :, None], 2)[:, :, 0]
    best_ref = np.take_along_axis(exact, nearest_ref[:, None, :], 1)[:, 0, :]
    tol = 0 if encoding == "int8" else 1e-5
    assert np.all(best_query >= exact.max(axis=2) - tol) and np.all(best_ref >= exact.max(axis=1) - tol)
    assert np.mean(cpu[0] == nearest_query) > 0.99 and np.mean(cpu[1] == nearest_ref) > 0.99
