"""Parity with the official Patch-NetVLAD (PyPI ``patchnetvlad`` 0.1.8) on identical weights and real images.

A checkpoint in the official layout is made with the package's own model code and seeded random weights
(16 clusters, WPCA 512; no download is possible), converted by ``vpr-import-patchnetvlad`` into an ONNX
backbone + head, and both pipelines run on the two real Tokyo 24/7 images shipped with the package plus
real corridor frames, at 320x240 to keep the suite fast (the full 640x480, 64-cluster, WPCA-4096 comparison
is in ``bench/bench_patch_rerank.py``).

Tolerances (float32, CPU; ONNX Runtime vs torch convolutions, BLAS vs 1x1-conv projections, box sums vs
the official integral map): descriptors are unit vectors with components up to ~0.3, observed max |diff|
1e-7 (global) and 1e-6 (patches); we allow 1e-5. Spatial scores: identical given identical matches
(float64 rounding; RANSAC inlier counts exactly); end to end, a nearest neighbour whose two best
similarities differ by less than float32 rounding may flip, so scores are compared with rtol 2 % and the
candidate order must be identical.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "training") not in sys.path:
    sys.path.insert(0, str(REPO / "training"))

pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings("ignore:torch.meshgrid:UserWarning")]  # inside the official code

from vpr_ros.core.encoders import EncoderConfig, ModelCard, OnnxEncoder  # noqa: E402
from vpr_ros.core.image import load_rgb, resize_rgb  # noqa: E402
from vpr_ros.core.patchnetvlad.descriptors import make_grids, patch_descriptors  # noqa: E402
from vpr_ros.core.patchnetvlad.matching import nearest_patches  # noqa: E402
from vpr_ros.core.patchnetvlad.scoring import fuse_scales, mutual_from_nearest, ransac_scores, rapid_spatial_scores  # noqa: E402
from vpr_training import patchnetvlad_reference as official  # noqa: E402
from vpr_training.export.patchnetvlad_checkpoint import (  # noqa: E402
    convert,
    load_state_dict,
    official_model,
    random_checkpoint,
)

H, W = 240, 320
SIZES, STRIDES, WEIGHTS = (2, 5, 8), (1, 1, 1), (0.45, 0.15, 0.40)
DESCRIPTOR_ATOL = 1e-5
OFFICIAL_RANSAC_TOLERANCE = 1.5  # patch strides: the official code's 16 * stride * 1.5 pixels


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, corridor: Path):
    import patchnetvlad

    torch.set_num_threads(2)
    folder = tmp_path_factory.mktemp("official")
    checkpoint = random_checkpoint(folder / "random_WPCA512.pth.tar", num_clusters=16, num_pcs=512, seed=0)
    examples = Path(patchnetvlad.__file__).parent / "example_images"
    images = [resize_rgb(load_rgb(examples / name), H, W) for name in ("tokyo_query.jpg", "tokyo_db.png")]
    images += [resize_rgb(load_rgb(p), H, W) for p in sorted((corridor / "ref").glob("*.jpg"))[::30]]
    images.append(np.ascontiguousarray(images[1][:, ::-1]))  # the Tokyo reference, mirrored
    onnx_path = convert(checkpoint, folder / "models", "random512", check_images=images[:2], check_size=(H, W))
    model = official_model(16, 512)
    model.load_state_dict(load_state_dict(checkpoint))
    off_global, off_patches = official.official_features(model, images)
    encoder = OnnxEncoder(EncoderConfig(model=str(onnx_path)))
    features = encoder.features(images, H, W)
    grids = make_grids(SIZES, STRIDES, features.shape[2:], encoder.card.stride)
    ours_global = encoder.head.global_descriptors(features)
    ours_patches = patch_descriptors(features, encoder.head, grids)
    return {"onnx": onnx_path, "grids": grids, "official": (off_global, off_patches),
            "ours": (ours_global, ours_patches)}


def test_converted_model_card(setup):
    card = ModelCard.load(setup["onnx"].with_suffix(".yaml"))
    assert card.kind == "netvlad" and card.channels == 512 and card.stride == 16
    assert card.raw["head"] == {"num_clusters": 16, "projection_dim": 512}
    assert card.raw["parity"]["max_abs_diff"] < 1e-3  # backbone features, torch vs ONNX Runtime


def test_global_and_patch_descriptors_match(setup):
    (og, op), (g, p) = setup["official"], setup["ours"]
    diffs = {"global": float(np.abs(g - og).max())}
    diffs.update({f"patch size {s}": float(np.abs(a - b).max()) for s, a, b in zip(SIZES, p, op, strict=True)})
    print("max abs diff vs official:", diffs)
    assert [a.shape for a in p] == [b.shape for b in op] == [(7, 14 * 19, 512), (7, 11 * 16, 512), (7, 8 * 13, 512)]
    assert max(diffs.values()) < DESCRIPTOR_ATOL, diffs


def _official_scores(setup, matcher: str) -> np.ndarray:
    _, op = setup["official"]
    config = official.feature_match_config(H, W, SIZES, STRIDES, WEIGHTS, matcher)
    m = official.official_matcher(config)
    return -np.array([official.official_pair_scores(m, [s[0] for s in op], [s[c] for s in op])
                      for c in range(1, op[0].shape[0])])


def _our_scores(patches, grids, scorer: str) -> np.ndarray:
    out = []
    for s, grid in enumerate(grids):
        matches = nearest_patches(patches[s][0], patches[s][1:], "float32")
        if scorer == "ransac":
            out.append(ransac_scores(matches, grid.centres(), grid.centres(),
                                     OFFICIAL_RANSAC_TOLERANCE * grid.stride * grid.pixel_stride))
        else:
            out.append(rapid_spatial_scores(matches, grid.grid_indices(), grid.grid_indices()))
    return np.stack(out, axis=1)


@pytest.mark.parametrize(("matcher", "scorer"), [("spatialApproximator", "rapid"), ("RANSAC", "ransac")])
def test_spatial_scores_and_candidate_order_match(setup, matcher: str, scorer: str):
    expected = _official_scores(setup, matcher)
    got = _our_scores(setup["ours"][1], setup["grids"], scorer)
    print(f"{scorer} score max abs diff vs official: {np.abs(got - expected).max():.3g}")
    np.testing.assert_allclose(got, expected, rtol=0.02, atol=1e-12)
    # The official local_matcher ranks by standardised per-scale scores, weighted; ties cannot hide here.
    z = (expected - expected.mean(0)) / expected.std(0)
    official_order = np.argsort(-(z @ np.array(WEIGHTS)))
    fused, _ = fuse_scales(got, np.array(WEIGHTS), "zscore")
    np.testing.assert_array_equal(np.argsort(-fused, kind="stable"), official_order)


def test_scores_are_identical_given_identical_matches(setup):
    """Eq. 4 and the RANSAC score on the official implementation's own nearest neighbours: the same numbers
    (RANSAC inlier counts exactly: same points, same order, same OpenCV call)."""
    from patchnetvlad.tools.patch_matcher import torch_nn

    _, op = setup["official"]
    rapid = _official_scores(setup, "spatialApproximator")
    ransac = _official_scores(setup, "RANSAC")
    for s, grid in enumerate(setup["grids"]):
        q = torch.from_numpy(op[s][0])
        pairs = [torch_nn(q, torch.from_numpy(np.ascontiguousarray(op[s][c].T))) for c in range(1, op[s].shape[0])]
        matches = mutual_from_nearest(np.stack([fw.numpy() for fw, _ in pairs]),
                                      np.stack([bw.numpy() for _, bw in pairs]))
        # Same matches, same formula: only the float64 summation order differs.
        np.testing.assert_allclose(rapid_spatial_scores(matches, grid.grid_indices(), grid.grid_indices()),
                                   rapid[:, s], rtol=1e-12)
        tolerance = OFFICIAL_RANSAC_TOLERANCE * grid.stride * grid.pixel_stride
        np.testing.assert_array_equal(ransac_scores(matches, grid.centres(), grid.centres(), tolerance), ransac[:, s])
