"""Generate the ONNX graphs of a query's Patch-NetVLAD patch descriptors and of the NetVLAD head that ship with vpr_ros.

The re-ranking stage computes, per query, every patch descriptor of the query image (IntegralVLAD box sums of
the soft-assigned residuals, intra- and global normalisation, PCA / WPCA projection, L2) and quantises them
for the int8 matcher. In numpy that is a dozen passes over 4-17 MB temporaries; as one ONNX Runtime graph it
is one call whose large steps are two matrix products. The node must not need the ``onnx`` package (no rosdep
key), so the graph is generic -- the map's head and the patch geometry are *inputs*, not initializers -- and is
committed as ``ros/vpr_ros/vpr_ros/core/patchnetvlad/graphs/query_patches.onnx``
(:mod:`vpr_ros.core.patchnetvlad.query_graph` runs it; test/test_query_patch_graph.py checks that the shipped
file is what :func:`query_patch_graph` builds and that it gives the numpy descriptors on real images).

Graph (one image, one patch size; K clusters, D channels, L = h*w locations, S = size^2 cells per patch,
N patches, P output dimensions)::

    features (1, D, h, w)       -> x (L, D), L2-normalised per location when normalize_input
    assign_weight (K, D), assign_bias (K,)  -> a = softmax_k(W x + b)                    (L, K)
    window_index (N, S) int64   -> each patch's cells: x_p (N, S, D), a_p (N, S, K)
    centroids (K, D)            -> patch VLAD (eq. 1) V = a_p^T x_p - (sum a_p) c          (N, K, D)
                                   intra-normalisation as in the official code (the patch mean's norm
                                   against eps 1e-12), global L2 = sqrt(sum of squared block norms)
    projection (P, K*D), projection_bias (P,)   leading rows of the head's PCA / WPCA
                                -> query_t (P, N) float32, L2-normalised columns: the matcher's layout
                                -> query_t_int8 (P, N): round(127 q / max|q|), the int8 matcher's query

The second graph, ``vlad_head.onnx``, is the global descriptor of a head with a projection (NetVLAD residual
sums, intra and global L2, PCA / WPCA, L2; :meth:`vpr_ros.core.vlad.VladHead.global_descriptors`), so the node's
VLAD head runs in ONNX Runtime's thread pool too: beside it, numpy's threaded BLAS on these small products
oversubscribes a 2-core machine (measured: 1 ms alone, 45 ms interleaved with the re-ranking sessions).

Usage::

    python -m vpr_training.export.patch_graphs            # rewrite the shipped file
    python -m vpr_training.export.patch_graphs --check    # exit 1 if it is not what this module builds
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vpr_ros.core.patchnetvlad.query_graph import GRAPH_FILE_NAME, INPUTS, OUTPUTS
from vpr_ros.core.vlad import HEAD_GRAPH_FILE_NAME, HEAD_GRAPH_INPUTS
from vpr_training.export.matching_graphs import IR_VERSION, SHIPPED_DIRECTORY
from vpr_training.export.package_graphs import graphs_main, stale_graphs, write_package_graphs

#: ReduceMax / ReduceL2 with axes as an input need opset 18.
OPSET = 18
EPS = 1e-12  # torch.nn.functional.normalize's eps, as in descriptors.py


def _const(name: str, value: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def query_patch_graph() -> onnx.ModelProto:
    """The generic query patch descriptor model for the patches of one size (module docstring)."""
    f32, i64 = TensorProto.FLOAT, TensorProto.INT64
    inputs = [helper.make_tensor_value_info("features", f32, [1, "D", "h", "w"]),
              helper.make_tensor_value_info("normalize_input", TensorProto.BOOL, []),
              helper.make_tensor_value_info("centroids", f32, ["K", "D"]),
              helper.make_tensor_value_info("assign_weight", f32, ["K", "D"]),
              helper.make_tensor_value_info("assign_bias", f32, ["K"]),
              helper.make_tensor_value_info("window_index", i64, ["N", "S"]),
              helper.make_tensor_value_info("projection", f32, ["P", "KD"]),
              helper.make_tensor_value_info("projection_bias", f32, ["P"])]
    assert [i.name for i in inputs] == list(INPUTS)
    init = [_const("eps", np.float32(EPS)), _const("shape_d_l", np.array([0, -1], np.int64)),
            _const("axis0", np.array([0], np.int64)), _const("axis1", np.array([1], np.int64)),
            _const("axis2", np.array([2], np.int64)), _const("flat_shape", np.array([0, -1], np.int64)),
            _const("q_max", np.float32(127.0)), _const("q_min", np.float32(-127.0))]
    n = helper.make_node
    nodes = [
        # x (L, D), optionally L2-normalised per location.
        n("Squeeze", ["features", "axis0"], ["f3"]),                                   # (D, h, w)
        n("Reshape", ["f3", "shape_d_l"], ["x_dl"]),                                   # (D, L)
        n("Transpose", ["x_dl"], ["x_raw"], perm=[1, 0]),                              # (L, D)
        n("ReduceL2", ["x_raw", "axis1"], ["x_norm"], keepdims=1),
        n("Max", ["x_norm", "eps"], ["x_safe"]),
        n("Div", ["x_raw", "x_safe"], ["x_unit"]),
        n("Where", ["normalize_input", "x_unit", "x_raw"], ["x"]),
        # Soft assignment a (L, K) = softmax over clusters.
        n("Gemm", ["x", "assign_weight", "assign_bias"], ["logits"], transB=1),
        n("Softmax", ["logits"], ["a"], axis=1),
        # Each patch's locations (window_index: (N, S) location numbers, S = size^2).
        n("Gather", ["x", "window_index"], ["x_windows"], axis=0),                     # (N, S, D)
        n("Gather", ["a", "window_index"], ["a_windows"], axis=0),                     # (N, S, K)
        # VLAD of each patch (eq. 1): V_k = sum_i a_ik x_i - (sum_i a_ik) c_k, a batch of (K, S) @ (S, D).
        n("Transpose", ["a_windows"], ["a_windows_t"], perm=[0, 2, 1]),                # (N, K, S)
        n("MatMul", ["a_windows_t", "x_windows"], ["weighted"]),                       # (N, K, D)
        n("ReduceSum", ["a_windows", "axis1"], ["mass"], keepdims=0),                  # (N, K)
        n("Unsqueeze", ["mass", "axis2"], ["mass3"]),                                  # (N, K, 1)
        n("Mul", ["mass3", "centroids"], ["mass_c"]),                                  # (N, K, D)
        n("Sub", ["weighted", "mass_c"], ["sums"]),
        # Intra-normalisation of each (patch, cluster) block as the official code does it: the patch mean's
        # norm against eps, i.e. sums / (max(|sums| / S, eps) * S).
        n("Shape", ["window_index"], ["window_shape"]),
        n("Slice", ["window_shape", "axis1", "axis2"], ["window_size"]),
        n("Cast", ["window_size"], ["area"], to=f32),
        n("ReduceL2", ["sums", "axis2"], ["sum_norms"], keepdims=1),                   # (N, K, 1)
        n("Div", ["sum_norms", "area"], ["mean_norms"]),
        n("Max", ["mean_norms", "eps"], ["safe_norms"]),
        n("Mul", ["safe_norms", "area"], ["divisor"]),
        n("Div", ["sums", "divisor"], ["normalised"]),
        # Global L2 of the intra-normalised VLAD: sqrt of the sum of the squared block norms.
        n("Div", ["mean_norms", "safe_norms"], ["block_norms"]),
        n("ReduceSumSquare", ["block_norms", "axis1"], ["global_sq"], keepdims=0),      # (N, 1)
        n("Sqrt", ["global_sq"], ["global_norm"]),
        n("Max", ["global_norm", "eps"], ["global_safe"]),
        # Projection of every patch at once: (N, K*D) @ (K*D, P).
        n("Reshape", ["normalised", "flat_shape"], ["vlad"]),                          # (N, K*D)
        n("Transpose", ["projection"], ["projection_t"], perm=[1, 0]),
        n("MatMul", ["vlad", "projection_t"], ["projected"]),                          # (N, P)
        n("Div", ["projected", "global_safe"], ["scaled"]),
        n("Add", ["scaled", "projection_bias"], ["y"]),
        n("ReduceL2", ["y", "axis1"], ["y_norm"], keepdims=1),
        n("Max", ["y_norm", "eps"], ["y_safe"]),
        n("Div", ["y", "y_safe"], ["query"]),
        n("Transpose", ["query"], ["query_t"], perm=[1, 0]),                           # (P, N)
        # int8 query of the matcher: one scale per image and size, 127 = the largest magnitude.
        n("Abs", ["query_t"], ["abs_q"]),
        n("ReduceMax", ["abs_q"], ["peak"], keepdims=0),
        n("Div", ["q_max", "peak"], ["q_scale"]),
        n("Mul", ["query_t", "q_scale"], ["q_scaled"]),
        n("Round", ["q_scaled"], ["q_round"]),
        n("Clip", ["q_round", "q_min", "q_max"], ["q_clip"]),
        n("Cast", ["q_clip"], ["query_t_int8"], to=TensorProto.INT8),
    ]
    outputs = [helper.make_tensor_value_info("query_t", f32, ["P", "N"]),
               helper.make_tensor_value_info("query_t_int8", TensorProto.INT8, ["P", "N"])]
    assert [o.name for o in outputs] == list(OUTPUTS)
    graph = helper.make_graph(nodes, "query_patches", inputs, outputs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="vpr_training.export.patch_graphs")
    onnx.checker.check_model(model, full_check=True)
    return model


def vlad_head_graph() -> onnx.ModelProto:
    """NetVLAD global descriptors with a projection (:meth:`vpr_ros.core.vlad.VladHead.global_descriptors`):
    features (B, D, h, w) + head arrays -> (B, P) L2-normalised descriptors."""
    f32 = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info("features", f32, ["B", "D", "h", "w"]),
              helper.make_tensor_value_info("normalize_input", TensorProto.BOOL, []),
              helper.make_tensor_value_info("centroids", f32, ["K", "D"]),
              helper.make_tensor_value_info("assign_weight", f32, ["K", "D"]),
              helper.make_tensor_value_info("assign_bias", f32, ["K"]),
              helper.make_tensor_value_info("projection", f32, ["P", "KD"]),
              helper.make_tensor_value_info("projection_bias", f32, ["P"])]
    assert [i.name for i in inputs] == list(HEAD_GRAPH_INPUTS)
    init = [_const("eps", np.float32(EPS)), _const("shape_b_d_l", np.array([0, 0, -1], np.int64)),
            _const("shape_b_flat", np.array([0, -1], np.int64)), _const("axis1", np.array([1], np.int64)),
            _const("axis2", np.array([2], np.int64))]
    n = helper.make_node
    nodes = [
        n("Reshape", ["features", "shape_b_d_l"], ["x_bdl"]),                          # (B, D, L)
        n("Transpose", ["x_bdl"], ["x_raw"], perm=[0, 2, 1]),                          # (B, L, D)
        n("ReduceL2", ["x_raw", "axis2"], ["x_norm"], keepdims=1),
        n("Max", ["x_norm", "eps"], ["x_safe"]),
        n("Div", ["x_raw", "x_safe"], ["x_unit"]),
        n("Where", ["normalize_input", "x_unit", "x_raw"], ["x"]),
        n("Transpose", ["assign_weight"], ["assign_weight_t"], perm=[1, 0]),
        n("MatMul", ["x", "assign_weight_t"], ["logits0"]),                            # (B, L, K)
        n("Add", ["logits0", "assign_bias"], ["logits"]),
        n("Softmax", ["logits"], ["a"], axis=2),
        # V_k = sum_i a_ik x_i - (sum_i a_ik) c_k
        n("Transpose", ["a"], ["a_t"], perm=[0, 2, 1]),                                # (B, K, L)
        n("MatMul", ["a_t", "x"], ["weighted"]),                                       # (B, K, D)
        n("ReduceSum", ["a", "axis1"], ["mass"], keepdims=0),                          # (B, K)
        n("Unsqueeze", ["mass", "axis2"], ["mass3"]),
        n("Mul", ["mass3", "centroids"], ["mass_c"]),
        n("Sub", ["weighted", "mass_c"], ["v"]),
        n("ReduceL2", ["v", "axis2"], ["v_norm"], keepdims=1),
        n("Max", ["v_norm", "eps"], ["v_safe"]),
        n("Div", ["v", "v_safe"], ["v_intra"]),
        n("Reshape", ["v_intra", "shape_b_flat"], ["v_flat"]),                         # (B, K*D)
        n("ReduceL2", ["v_flat", "axis1"], ["flat_norm"], keepdims=1),
        n("Max", ["flat_norm", "eps"], ["flat_safe"]),
        n("Div", ["v_flat", "flat_safe"], ["vlad"]),
        n("Gemm", ["vlad", "projection", "projection_bias"], ["y"], transB=1),          # (B, P)
        n("ReduceL2", ["y", "axis1"], ["y_norm"], keepdims=1),
        n("Max", ["y_norm", "eps"], ["y_safe"]),
        n("Div", ["y", "y_safe"], ["global_descriptors"]),
    ]
    outputs = [helper.make_tensor_value_info("global_descriptors", f32, ["B", "P"])]
    graph = helper.make_graph(nodes, "vlad_head", inputs, outputs, initializer=init)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="vpr_training.export.patch_graphs")
    onnx.checker.check_model(model, full_check=True)
    return model


#: Every graph this module writes: file name -> builder.
GRAPHS = {GRAPH_FILE_NAME: query_patch_graph, HEAD_GRAPH_FILE_NAME: vlad_head_graph}


def stale_files(directory: Path) -> list[str]:
    """The graph files in ``directory`` that are missing or differ (as parsed models) from what this module builds."""
    return stale_graphs(directory, GRAPHS)


def write_graphs(directory: Path) -> list[Path]:
    """Write every graph to ``directory`` (atomically; unchanged files are left alone); the paths written."""
    return write_package_graphs(directory, GRAPHS)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the shipped graphs; returns the process exit status."""
    return graphs_main(argv, "vpr_training.export.patch_graphs",
                       "Write the query patch descriptor and VLAD head ONNX graphs that ship with vpr_ros.", GRAPHS,
                       SHIPPED_DIRECTORY)


if __name__ == "__main__":
    sys.exit(main())
