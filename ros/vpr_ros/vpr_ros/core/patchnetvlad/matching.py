"""Nearest patches in both directions between one query and many candidates, in ONNX Runtime.

The mutual-nearest-neighbour step (Patch-NetVLAD eq. 3) is one matrix product per candidate followed by
two arg-maxes. For 100 candidates with 936 patches of 512 dimensions (the paper's speed configuration at
640x480) that is 90 GFLOP, so it runs as a small ONNX graph: batched ``MatMul`` (or ``MatMulInteger``)
then ``ArgMax`` over each axis, on candidate chunks small enough for the similarity block to stay in
cache. Only the arg-max indices leave the graph.

Store encodings (:mod:`vpr_ros.core.patchnetvlad.store`):

* ``float32`` / ``float16``: float products (half precision is widened inside the graph);
* ``int8``: the stored codes are int8 offset by 128 (uint8, zero point 128) and the query is quantised
  per image to int8; ``MatMulInteger`` then runs on the CPU's integer matrix units (AMX / VNNI via MLAS),
  several times faster than float32. A single positive scale per image does not change any arg-max, so
  no rescaling is needed; only the rounding of the codes can.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from vpr_ros.core.patchnetvlad.scoring import PatchMatches, mutual_from_nearest

#: Candidates per ONNX Runtime call are chosen so the similarity block holds about this many entries: one or
#: two candidates per call pay ONNX Runtime's per-call overhead too often, larger blocks leave the cache.
SIMILARITY_BLOCK = 1 << 23
INT8_ZERO_POINT = 128
_sessions: dict[tuple[str, int], Any] = {}
_lock = threading.Lock()


def _graph(encoding: str) -> bytes:
    """Serialized ONNX model: refs (C, R, P), query_t (P, Q) -> nearest query (C, R), nearest ref (C, Q)."""
    from onnx import TensorProto, helper

    ref_type = {"float32": TensorProto.FLOAT, "float16": TensorProto.FLOAT16, "int8": TensorProto.UINT8}[encoding]
    query_type = TensorProto.INT8 if encoding == "int8" else TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("refs", ref_type, ["C", "R", "P"]),
              helper.make_tensor_value_info("query_t", query_type, ["P", "Q"])]
    initializers = []
    if encoding == "int8":
        initializers.append(helper.make_tensor("zero_point", TensorProto.UINT8, [], [INT8_ZERO_POINT]))
        nodes = [helper.make_node("MatMulInteger", ["refs", "query_t", "zero_point"], ["similarity"])]
    elif encoding == "float16":
        nodes = [helper.make_node("Cast", ["refs"], ["refs32"], to=TensorProto.FLOAT),
                 helper.make_node("MatMul", ["refs32", "query_t"], ["similarity"])]
    else:
        nodes = [helper.make_node("MatMul", ["refs", "query_t"], ["similarity"])]
    # ArgMax keeps the first maximum, as numpy does (ties are common with integer similarities).
    nodes += [helper.make_node("ArgMax", ["similarity"], ["nearest_query"], axis=2, keepdims=0),
              helper.make_node("ArgMax", ["similarity"], ["nearest_ref"], axis=1, keepdims=0)]
    outputs = [helper.make_tensor_value_info("nearest_query", TensorProto.INT64, ["C", "R"]),
               helper.make_tensor_value_info("nearest_ref", TensorProto.INT64, ["C", "Q"])]
    graph = helper.make_graph(nodes, f"mutual_nn_{encoding}", inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    return model.SerializeToString()


def _session(encoding: str, threads: int) -> Any:
    from vpr_ros.core import ort

    key = (encoding, threads)
    with _lock:
        if key not in _sessions:
            _sessions[key] = ort.session(_graph(encoding), threads=threads)
        return _sessions[key]


def quantise_query(query: np.ndarray) -> np.ndarray:
    """Query patch descriptors (n_q, P) -> int8 with one scale per image (127 = largest magnitude)."""
    peak = float(np.abs(query).max()) or 1.0
    return np.clip(np.rint(query * (127.0 / peak)), -127, 127).astype(np.int8)


def nearest_patches(query: np.ndarray, refs: np.ndarray, encoding: str, threads: int = 0) -> PatchMatches:
    """Mutual nearest neighbours (eq. 3) of one query against every candidate.

    Args:
        query: (n_q, P) float32 L2-normalised query patch descriptors.
        refs: (B, n_r, P) stored candidate patches in ``encoding`` (codes, not dequantised).
        encoding: ``float32``, ``float16`` or ``int8`` (module docstring).
        threads: ONNX Runtime intra-op threads (0 = one per core).

    Returns:
        :class:`PatchMatches` with (B, n_r) nearest query indices and mutual flags.
    """
    if query.ndim != 2 or refs.ndim != 3 or refs.shape[2] != query.shape[1]:
        raise ValueError(f"expected query (n_q, P) and refs (B, n_r, P), got {query.shape} and {refs.shape}")
    b, n_r, _ = refs.shape
    n_q = query.shape[0]
    if encoding == "int8":
        query_t = np.ascontiguousarray(quantise_query(query).T)
        expected = np.uint8
    else:
        query_t = np.ascontiguousarray(query.T, dtype=np.float32)
        expected = np.float16 if encoding == "float16" else np.float32
    if refs.dtype != expected:
        raise ValueError(f"{encoding} patch store must hold {np.dtype(expected).name} codes, got {refs.dtype}")
    session = _session(encoding, threads)
    chunk = max(1, SIMILARITY_BLOCK // max(n_r * n_q, 1))
    nearest_query = np.empty((b, n_r), dtype=np.int64)
    nearest_ref = np.empty((b, n_q), dtype=np.int64)
    for c0 in range(0, b, chunk):
        c1 = min(b, c0 + chunk)
        nq, nr = session.run(None, {"refs": np.ascontiguousarray(refs[c0:c1]), "query_t": query_t})
        nearest_query[c0:c1] = nq
        nearest_ref[c0:c1] = nr
    return mutual_from_nearest(nearest_query, nearest_ref)
