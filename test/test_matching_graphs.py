"""The Patch-NetVLAD matching graphs ship as files: they are what the generator builds, and they find the same
nearest patches as numpy on real patch descriptors of corridor images.

The node loads them with ONNX Runtime and never imports ``onnx`` (no rosdep key); test/test_import_graph.py
checks that part, test/test_no_torch.py runs the node with ``onnx`` and ``torch`` blocked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from vpr_ros.core.image import load_rgb
from vpr_ros.core.patchnetvlad import matching
from vpr_ros.core.patchnetvlad.descriptors import patch_descriptors
from vpr_ros.core.patchnetvlad.matching import nearest_patches, quantise_query
from vpr_ros.core.patchnetvlad.presets import ENCODINGS
from vpr_ros.core.patchnetvlad.rerank import stored_spec
from vpr_ros.core.patchnetvlad.scoring import mutual_nearest_neighbours
from vpr_ros.core.patchnetvlad.store import decode, encode
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.io.images import folder_source
from vpr_training.export import matching_graphs

#: A float arg-max is compared only where numpy (float64) puts the best similarity this far above the second:
#: ONNX Runtime and numpy sum the products in different orders, so nearer ties may legitimately flip.
FLOAT_MARGIN = 1e-5


def test_shipped_graphs_are_what_the_generator_builds():
    assert matching_graphs.stale_files(matching_graphs.SHIPPED_DIRECTORY) == [], \
        "run: python -m vpr_training.export.matching_graphs"
    for encoding in ENCODINGS:
        shipped = (matching_graphs.SHIPPED_DIRECTORY / matching.graph_file_name(encoding)).read_bytes()
        # The files are byte-stable too: rewriting them is a no-op in git.
        assert shipped == matching_graphs.mutual_nn_graph(encoding).SerializeToString()
        # ... and they are what the runtime loads (package data, not the checkout path).
        assert matching._graph(encoding) == shipped


def test_a_changed_graph_is_reported_and_rewritten(tmp_path: Path):
    assert matching_graphs.write_graphs(tmp_path) == [tmp_path / matching.graph_file_name(e) for e in ENCODINGS]
    assert matching_graphs.stale_files(tmp_path) == []
    assert matching_graphs.write_graphs(tmp_path) == []  # unchanged files are left alone
    model = onnx.load_model_from_string((tmp_path / "mutual_nn_int8.onnx").read_bytes())
    model.graph.node[1].attribute[0].i = 1  # ArgMax over the other axis
    (tmp_path / "mutual_nn_int8.onnx").write_bytes(model.SerializeToString())
    (tmp_path / "mutual_nn_float16.onnx").unlink()
    assert matching_graphs.stale_files(tmp_path) == ["mutual_nn_float16.onnx", "mutual_nn_int8.onnx"]
    assert matching_graphs.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert matching_graphs.main(["--out-dir", str(tmp_path)]) == 0
    assert matching_graphs.main(["--check", "--out-dir", str(tmp_path)]) == 0


@pytest.fixture(scope="module")
def real_patches(corridor_patch_map: Path, encoder, corridor: Path) -> dict[str, np.ndarray]:
    """Patch descriptors (the map's head and patch grid) of one corridor query and eight reference frames,
    and the int8 codes the map stores for those frames."""
    refmap = ReferenceMap.load(corridor_patch_map)
    spec = stored_spec(refmap)
    assert spec is not None and spec.encoding == "int8"
    rows = np.linspace(0, len(refmap) - 1, 8).astype(np.int64)
    source = folder_source(corridor / "ref")
    ref_features = encoder.features([source.load_image(int(r)) for r in rows], *refmap.input_size)
    query_features = encoder.features([load_rgb(corridor / "query" / "0000042.jpg")], *refmap.input_size)
    (refs,) = patch_descriptors(ref_features, refmap.head, spec.grids, spec.dim)
    (query,) = patch_descriptors(query_features, refmap.head, spec.grids, spec.dim)
    codes = np.asarray(refmap.arrays[spec.array_name(spec.grids[0])][rows])
    return {"query": query[0], "refs": refs, "codes": codes}


def graph_outputs(query_t: np.ndarray, refs: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray]:
    """(nearest query (B, n_r), nearest ref (B, n_q)) straight from the shipped graph's session."""
    nearest_query, nearest_ref = matching._session(encoding, 1).run(None, {"refs": refs, "query_t": query_t})
    return nearest_query, nearest_ref


def test_int8_graph_equals_numpy_integer_products_on_real_patches(real_patches: dict[str, np.ndarray]):
    """MatMulInteger with the stored zero point, then the two arg-maxes (ties to the lowest index), exactly.

    The query is quantised to 7 bits here: on x86 CPUs without VNNI, ONNX Runtime's uint8 x int8 kernel adds
    pairs of products in int16 with saturation, which a full 8-bit query can reach (255 * 127 * 2 > 32767) and a
    7-bit one cannot (255 * 63 * 2 < 32767). With that, the graph must be exact on every CPU.
    """
    query, codes = real_patches["query"], real_patches["codes"]
    query_codes = np.clip(np.rint(query * (63.0 / np.abs(query).max())), -63, 63).astype(np.int8)
    similarity = np.einsum("bnp,mp->bnm", codes.astype(np.int32) - matching.INT8_ZERO_POINT,
                           query_codes.astype(np.int32))
    nearest_query, nearest_ref = graph_outputs(np.ascontiguousarray(query_codes.T), codes, "int8")
    np.testing.assert_array_equal(nearest_query, similarity.argmax(axis=2))
    np.testing.assert_array_equal(nearest_ref, similarity.argmax(axis=1))
    mutual = mutual_nearest_neighbours(similarity).mutual
    assert 0 < int(mutual.sum()) < mutual.size  # real matches: some mutual, not all


def test_int8_matching_of_the_node_agrees_with_numpy_on_real_patches(real_patches: dict[str, np.ndarray]):
    """The node's 8-bit query: exact where the CPU has VNNI, else all but the rare saturated pair sums."""
    query, codes = real_patches["query"], real_patches["codes"]
    similarity = np.einsum("bnp,mp->bnm", codes.astype(np.int32) - matching.INT8_ZERO_POINT,
                           quantise_query(query).astype(np.int32))
    got, expected = nearest_patches(query, codes, "int8"), mutual_nearest_neighbours(similarity)
    assert (got.nearest_query == expected.nearest_query).mean() > 0.99
    assert (got.mutual == expected.mutual).mean() > 0.99


@pytest.mark.parametrize("encoding", ["float32", "float16"])
def test_float_graphs_equal_numpy_on_real_patches(real_patches: dict[str, np.ndarray], encoding: str):
    query, refs = real_patches["query"], real_patches["refs"]
    stored, _ = encode(refs, encoding)
    similarity = np.einsum("bnp,mp->bnm", decode(stored, encoding).astype(np.float64), query.astype(np.float64))
    outputs = graph_outputs(np.ascontiguousarray(query.T), stored, encoding)
    for axis, nearest in zip((2, 1), outputs, strict=True):
        ordered = -np.sort(-similarity, axis=axis)
        clear = (ordered.take(0, axis=axis) - ordered.take(1, axis=axis)) > FLOAT_MARGIN
        assert clear.mean() > 0.9, f"only {clear.mean():.2f} of the arg-maxes over axis {axis} are clear"
        np.testing.assert_array_equal(nearest[clear], similarity.argmax(axis=axis)[clear])


def test_missing_graph_file_is_named(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(matching, "GRAPH_DIRECTORY", "no_such_folder")
    with pytest.raises(FileNotFoundError, match=r"matching graph .*mutual_nn_float32\.onnx missing"):
        matching._graph("float32")
