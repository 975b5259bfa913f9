"""The official Patch-NetVLAD pipeline (PyPI ``patchnetvlad`` 0.1.8), called the way its own scripts call it.

Parity tests and benchmarks compare vpr_ros against these functions on the same weights and images. They
follow ``feature_extract.py`` (global + patch features through ``model.encoder``, ``model.pool`` and the
WPCA 1x1 conv), ``match_two.py`` (``PatchMatcher`` on one image pair) and ``local_matcher`` (re-ranking a
candidate list from per-image ``.npy`` files, with its per-scale standardisation), without changes.
"""

from __future__ import annotations

import configparser
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def to_official_input(images: Sequence[np.ndarray]) -> torch.Tensor:
    """RGB uint8 (H, W, 3) images already at the network size -> what ``input_transform`` makes of them
    (``ToTensor`` then ``Normalize``; its ``Resize`` is the identity at that size)."""
    x = np.stack([im.astype(np.float32) / 255.0 for im in images])
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def official_features(model: nn.Module, images: Sequence[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Global (B, P) and per patch size (B, n_p, P) descriptors, exactly as ``feature_extract`` computes them."""
    from patchnetvlad.models.models_generic import get_pca_encoding

    with torch.no_grad():
        encoding = model.encoder(to_official_input(images))
        vlad_local, vlad_global = model.pool(encoding)
        global_pca = get_pca_encoding(model, vlad_global).numpy()
        patches = []
        for local in vlad_local:
            pool_size = model.WPCA[0].out_channels
            pca = get_pca_encoding(model, local.permute(2, 0, 1).reshape(-1, local.size(1)))
            pca = pca.reshape(local.size(2), local.size(0), pool_size).permute(1, 2, 0)  # (B, P, n_p)
            patches.append(pca.numpy().transpose(0, 2, 1).copy())
    return global_pca, patches


def feature_match_config(height: int, width: int, patch_sizes: Sequence[int], strides: Sequence[int],
                         weights: Sequence[float], matcher: str) -> configparser.ConfigParser:
    """The ``[feature_match]`` / ``[global_params]`` config the official matcher reads."""
    config = configparser.ConfigParser()
    config.read_dict({
        "feature_match": {"matcher": matcher, "imageresizeH": str(height), "imageresizeW": str(width),
                          "patchWeights2Use": ",".join(str(w) for w in weights)},
        "global_params": {"patch_sizes": ",".join(str(s) for s in patch_sizes),
                          "strides": ",".join(str(s) for s in strides)}})
    return config


def official_matcher(config: configparser.ConfigParser):  # noqa: ANN201 - patchnetvlad PatchMatcher
    from patchnetvlad.models.local_matcher import calc_keypoint_centers_from_patches
    from patchnetvlad.tools.patch_matcher import PatchMatcher

    sizes = [int(s) for s in config["global_params"]["patch_sizes"].split(",")]
    strides = [int(s) for s in config["global_params"]["strides"].split(",")]
    keypoints, indices = [], []
    for size, stride in zip(sizes, strides, strict=True):
        k, i = calc_keypoint_centers_from_patches(config["feature_match"], size, size, stride, stride)
        keypoints.append(k)
        indices.append(i)
    return PatchMatcher(config["feature_match"]["matcher"], sizes, strides, keypoints, indices)


def official_pair_scores(matcher, query: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> np.ndarray:  # noqa: ANN001
    """Per-scale scores of one (query, reference) pair as ``PatchMatcher.match`` returns them (negative =
    better). ``query`` / ``ref``: one (n_p, P) array per patch size."""
    qfeats = [torch.from_numpy(np.ascontiguousarray(q)) for q in query]
    dbfeats = [torch.from_numpy(np.ascontiguousarray(r.T)) for r in ref]
    scores, _, _ = matcher.match(qfeats, dbfeats)
    return np.asarray(scores, dtype=np.float64)


def write_official_features(folder: Path, names: Sequence[str], patches: Sequence[tuple[int, np.ndarray]],
                            prefix: str = "patchfeats") -> str:
    """Write per-image patch features the way ``feature_extract`` does ((P, n_p) float32 ``.npy`` per image
    and patch size); ``patches``: (patch size, (B, n_p, P) descriptors) pairs. Returns the file prefix
    ``local_matcher`` expects."""
    folder.mkdir(parents=True, exist_ok=True)
    base = str(folder / prefix)
    for size, per_size in patches:
        for name, feats in zip(names, per_size, strict=True):
            np.save(f"{base}_psize{size}_{name}.npy", np.ascontiguousarray(feats.T.astype(np.float32)))
    return base


def official_rerank(predictions: np.ndarray, query_names: Sequence[str], db_names: Sequence[str],
                    query_prefix: str, db_prefix: str, config: configparser.ConfigParser) -> list[np.ndarray]:
    """``local_matcher`` itself: re-rank each query's candidate db indices, loading features from disk."""
    from patchnetvlad.models.local_matcher import local_matcher

    eval_set = SimpleNamespace(images=[f"{n}.png" for n in db_names] + [f"{n}.png" for n in query_names],
                               numDb=len(db_names))
    return local_matcher(predictions, eval_set, query_prefix, db_prefix, config, torch.device("cpu"))
