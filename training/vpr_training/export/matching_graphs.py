"""Generate the Patch-NetVLAD mutual-nearest-neighbour graphs that ship with vpr_ros as ONNX files.

The node runs them with ONNX Runtime (:mod:`vpr_ros.core.patchnetvlad.matching`) but must not need the
``onnx`` package, which has no rosdep key: so the three small graphs (one per patch-store encoding) are built
here, with ``onnx.helper``, and committed as
``ros/vpr_ros/vpr_ros/core/patchnetvlad/graphs/mutual_nn_<encoding>.onnx``. test/test_matching_graphs.py
regenerates them and fails when the shipped files differ from what this module builds.

Each graph: refs (C, R, P), query_t (P, Q) -> nearest query (C, R), nearest ref (C, Q), i.e. a batched
``MatMul`` (``MatMulInteger`` for int8 codes, zero point 128) followed by an ``ArgMax`` over each axis.

Usage::

    python -m vpr_training.export.matching_graphs            # rewrite the shipped files
    python -m vpr_training.export.matching_graphs --check    # exit 1 if they are not what this module builds
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Sequence
from pathlib import Path

import onnx
from onnx import TensorProto, helper

from vpr_ros.core.patchnetvlad.matching import GRAPH_DIRECTORY, INT8_ZERO_POINT, graph_file_name
from vpr_ros.core.patchnetvlad.presets import ENCODINGS
from vpr_ros.core.paths import PACKAGE_ROOT
from vpr_training.export.package_graphs import graphs_main, stale_graphs, write_package_graphs

#: Where the graphs live in a source checkout (the package data of ``vpr_ros.core.patchnetvlad``).
SHIPPED_DIRECTORY = PACKAGE_ROOT / "vpr_ros" / "core" / "patchnetvlad" / GRAPH_DIRECTORY
#: Opset and IR version the graphs are written with: ONNX Runtime 1.16+ runs both.
OPSET = 17
IR_VERSION = 8


def mutual_nn_graph(encoding: str) -> onnx.ModelProto:
    """The mutual-nearest-neighbour model for patch stores of ``encoding`` (float32, float16 or int8)."""
    if encoding not in ENCODINGS:
        raise ValueError(f"encoding {encoding!r} is not one of {list(ENCODINGS)}")
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION,
                              producer_name="vpr_training.export.matching_graphs")
    onnx.checker.check_model(model, full_check=True)
    return model


#: The shipped graphs, file name -> builder.
GRAPHS = {graph_file_name(encoding): functools.partial(mutual_nn_graph, encoding) for encoding in ENCODINGS}


def stale_files(directory: Path) -> list[str]:
    """The graph files in ``directory`` that are missing or differ from what :func:`mutual_nn_graph` builds."""
    return stale_graphs(directory, GRAPHS)


def write_graphs(directory: Path) -> list[Path]:
    """Write every graph to ``directory`` (atomically; unchanged files are left alone); the paths written."""
    return write_package_graphs(directory, GRAPHS)


def main(argv: Sequence[str] | None = None) -> int:
    """Rewrite (or with ``--check`` verify) the shipped graphs; returns the process exit status."""
    return graphs_main(argv, "vpr_training.export.matching_graphs",
                       "Write the Patch-NetVLAD mutual-NN ONNX graphs that ship with vpr_ros.", GRAPHS,
                       SHIPPED_DIRECTORY)


if __name__ == "__main__":
    sys.exit(main())
