"""The query patch graph (graphs/query_patches.onnx) ships as the file its generator builds, and gives the numpy
Patch-NetVLAD patch descriptors (descriptors.patch_descriptors) on real corridor images: float32 descriptors
within 1e-5 (both are float32; they sum in different orders) and the same int8 matcher query wherever the
numpy value is not within 1e-3 of a rounding boundary (int8 codes of the two may differ by one there).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from vpr_ros.core.image import load_rgb
from vpr_ros.core.localizer import Localizer, LocalizerConfig
from vpr_ros.core.patchnetvlad import query_graph
from vpr_ros.core.patchnetvlad.descriptors import make_grids, patch_descriptors
from vpr_ros.core.patchnetvlad.matching import nearest_patches, quantise_query
from vpr_ros.core.patchnetvlad.query_graph import QueryPatchGraph, window_index
from vpr_ros.core.patchnetvlad.rerank import stored_spec
from vpr_ros.core.refmap import ReferenceMap
from vpr_ros.core.vlad import HEAD_GRAPH_FILE_NAME, VladHead, VladHeadGraph
from vpr_training.export import patch_graphs

FLOAT_TOLERANCE = 1e-5
ROUNDING_MARGIN = 1e-3


def test_shipped_graph_is_what_the_generator_builds(tmp_path: Path):
    assert patch_graphs.stale_files(patch_graphs.SHIPPED_DIRECTORY) == [], \
        "run: python -m vpr_training.export.patch_graphs"
    shipped = (patch_graphs.SHIPPED_DIRECTORY / query_graph.GRAPH_FILE_NAME).read_bytes()
    assert shipped == patch_graphs.query_patch_graph().SerializeToString()
    assert query_graph._graph() == shipped
    head = (patch_graphs.SHIPPED_DIRECTORY / HEAD_GRAPH_FILE_NAME).read_bytes()
    assert head == patch_graphs.vlad_head_graph().SerializeToString()
    # A changed file is reported, and rewritten.
    assert patch_graphs.write_graphs(tmp_path) == [tmp_path / query_graph.GRAPH_FILE_NAME,
                                                   tmp_path / HEAD_GRAPH_FILE_NAME]
    model = onnx.load_model_from_string((tmp_path / query_graph.GRAPH_FILE_NAME).read_bytes())
    next(n for n in model.graph.node if n.op_type == "Softmax").attribute[0].i = 0
    (tmp_path / query_graph.GRAPH_FILE_NAME).write_bytes(model.SerializeToString())
    assert patch_graphs.main(["--check", "--out-dir", str(tmp_path)]) == 1
    assert patch_graphs.main(["--out-dir", str(tmp_path)]) == 0
    assert patch_graphs.stale_files(tmp_path) == []


def test_window_index_lists_each_patch_cells_row_major():
    grid = make_grids((2,), (2,), (4, 5), 16)[0]            # 2 x 2 patches of 2 x 2 cells on a 4 x 5 map
    assert window_index(grid).tolist() == [[0, 1, 5, 6], [2, 3, 7, 8], [10, 11, 15, 16], [12, 13, 17, 18]]


def _features(encoder, corridor: Path, refmap: ReferenceMap, names: tuple[str, ...]) -> list[np.ndarray]:
    return [encoder.features([load_rgb(corridor / "query" / n)], *refmap.input_size) for n in names]


@pytest.mark.parametrize("sizes,strides", [((), ()), ((2, 5, 8), (1, 1, 1)), ((3,), (2,))])
def test_graph_gives_the_numpy_descriptors_on_real_images(corridor_patch_map: Path, encoder, corridor: Path,
                                                          sizes: tuple[int, ...], strides: tuple[int, ...]):
    refmap = ReferenceMap.load(corridor_patch_map)
    spec = stored_spec(refmap)
    assert spec is not None
    grids = spec.grids if not sizes else tuple(make_grids(sizes, strides, spec.feature_hw, 16))
    graph = QueryPatchGraph(refmap.head, grids, spec.dim, threads=1)
    for features in _features(encoder, corridor, refmap, ("0000007.jpg", "0000042.jpg", "0000090.jpg")):
        expected = patch_descriptors(features, refmap.head, grids, spec.dim)
        for (query_t, query_t_int8), numpy_patches in zip(graph.run(features), expected, strict=True):
            reference = numpy_patches[0]
            assert query_t.shape == (spec.dim, reference.shape[0]) and query_t_int8.dtype == np.int8
            assert np.abs(query_t.T - reference).max() < FLOAT_TOLERANCE
            codes = quantise_query(reference).T
            scaled = reference.T * (127.0 / np.abs(reference).max())
            clear = np.abs(scaled - np.floor(scaled) - 0.5) > ROUNDING_MARGIN
            assert clear.mean() > 0.99
            assert np.array_equal(query_t_int8[clear], codes[clear])


def test_graph_without_input_normalisation_matches_numpy(corridor_patch_map: Path, encoder, corridor: Path):
    refmap = ReferenceMap.load(corridor_patch_map)
    spec = stored_spec(refmap)
    head = VladHead(**{**refmap.head.__dict__, "normalize_input": False})
    (features,) = _features(encoder, corridor, refmap, ("0000042.jpg",))
    (query_t, _), = QueryPatchGraph(head, spec.grids, spec.dim, threads=1).run(features)
    (reference,) = patch_descriptors(features, head, spec.grids, spec.dim)
    assert np.abs(query_t.T - reference[0]).max() < FLOAT_TOLERANCE
    normalised = patch_descriptors(features, refmap.head, spec.grids, spec.dim)[0][0]
    assert np.abs(normalised - reference[0]).max() > 100 * FLOAT_TOLERANCE  # the flag does change the result


def test_vlad_head_graph_gives_the_numpy_global_descriptors(corridor_patch_map: Path, encoder, corridor: Path):
    refmap = ReferenceMap.load(corridor_patch_map)
    features = np.concatenate(_features(encoder, corridor, refmap, ("0000007.jpg", "0000042.jpg", "0000090.jpg")))
    for head in (refmap.head, VladHead(**{**refmap.head.__dict__, "normalize_input": False})):
        got = VladHeadGraph(head, threads=1).global_descriptors(features)
        assert got.shape == (3, head.output_dim)
        assert np.abs(got - head.global_descriptors(features)).max() < FLOAT_TOLERANCE
    with pytest.raises(ValueError, match="needs a head with a projection"):
        VladHeadGraph(VladHead(refmap.head.centroids, refmap.head.assign_weight, refmap.head.assign_bias))


def test_reranking_through_the_graph_matches_the_numpy_queries(corridor_patch_map: Path, encoder, corridor: Path):
    refmap = ReferenceMap.load(corridor_patch_map)
    loc = Localizer(refmap, encoder, LocalizerConfig())
    reranker = loc.reranker
    assert reranker is not None
    query = loc.encode(load_rgb(corridor / "query" / "0000042.jpg"))
    rows = loc.retrieve(query, 20).indices
    numpy_query = [p[0] for p in patch_descriptors(query.features, refmap.head, reranker.spec.grids,
                                                   reranker.spec.dim)]
    via_numpy = reranker.scale_scores(numpy_query, rows)
    via_graph = reranker.scale_scores(None, rows, reranker.matcher_queries(query.features))
    # Scores are equal up to the few int8 query codes that round the other way (see the module docstring).
    assert np.abs(via_graph - via_numpy).max() < 0.01
    assert np.argmax(via_graph[:, 0]) == np.argmax(via_numpy[:, 0])
    codes = np.asarray(reranker.stores[0][np.sort(rows)])
    with pytest.raises(ValueError, match="expected query_t"):
        nearest_patches(None, codes, "int8", query_t=reranker.matcher_queries(query.features)[0].astype(np.float32))
