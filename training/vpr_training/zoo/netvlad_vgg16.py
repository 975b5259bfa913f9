"""NetVLAD on VGG16 (Arandjelovic et al., CVPR 2016) in the layout of the common PyTorch port.

Key layout of the checkpoints written by Nanne/pytorch-NetVlad (``main.py``: ``model.add_module('encoder',
nn.Sequential(*list(vgg16.features.children())[:-2]))`` then ``model.add_module('pool', NetVLAD(...))``;
``netvlad.py``: class NetVLAD; ``save_checkpoint`` stores ``{'epoch', 'state_dict', 'recalls', 'best_score',
'optimizer', 'parallel'}``), which Patch-NetVLAD (QVPR/Patch-NetVLAD, ``models/models_generic.py``) extends with
a WPCA layer:

==============================  ========================  ============================================
key                             shape                     what
==============================  ========================  ============================================
``encoder.<i>.weight / .bias``  VGG16 ``features[:-2]``   conv1_1 .. conv5_3, i in 0, 2, 5, 7, 10, 12, 14,
                                                          17, 19, 21, 24, 26, 28 (features: conv5_3
                                                          before its ReLU)
``pool.centroids``              (K, 512)                  cluster centres (K = 64 for the Pitts30k model)
``pool.conv.weight``            (K, 512, 1, 1)            soft assignment (``.bias`` (K,) only for vladv2)
``WPCA.0.weight / .bias``       (P, K*512, 1, 1) / (P,)   optional whitened PCA (Patch-NetVLAD layout)
==============================  ========================  ============================================

``encoder.module.<i>`` (the port's DataParallel encoder) is read as ``encoder.<i>``. Forward (``netvlad.py``):
L2-normalise each local feature, soft-assign with softmax over clusters of the 1x1 conv, sum assignment-weighted
residuals to each centroid, intra-normalise per cluster, flatten (cluster-major), L2-normalise; then (WPCA)
project, flatten, L2-normalise. The residual sum is computed here as ``a @ x^T - (sum a) c`` (one matrix product
instead of the port's per-cluster loop; equal up to float rounding). Input: ImageNet mean/std on RGB/255
(the port's ``input_transform``), any size (conv5_3 stride 16).

Weights: the port's Pitts30k checkpoint (README of Nanne/pytorch-NetVlad, Google Drive "vgg16_netvlad_checkpoint")
and the Patch-NetVLAD releases (``patchnetvlad`` package ``download_models.py``); the Matlab originals
(Relja/netvlad, ``.mat``) are not read by this format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_training.zoo.registry import (
    IMAGENET,
    BuiltModel,
    ImportFormat,
    LayoutError,
    NormalisedInput,
    load_official_state,
    register_format,
    require,
)

#: torchvision's VGG16 ``features`` ("D" configuration): output channels, "M" = 2x2 max-pool.
VGG16_PLAN: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                                     512, 512, 512, "M")
#: ``features`` indices of the 13 convolutions (each followed by a ReLU; pools in between).
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG_STRIDE = 16
DEFAULT_SIZE = (480, 640)
#: Random checkpoints' variant -> (clusters, WPCA dimension or 0).
VARIANTS = {"k64": (64, 0), "k64_wpca4096": (64, 4096), "k16_wpca512": (16, 512)}


def vgg16_features(widths: tuple[int, ...]) -> nn.Sequential:
    """VGG16 ``features[:-2]`` (no last ReLU and max-pool) with the given 13 conv widths, indexed as torchvision's
    (so ``encoder.<i>`` keys line up); ``widths`` = the official (64, 64, 128, ...) unless a test shrinks them."""
    layers: list[nn.Module] = []
    convs = iter(widths)
    channels = 3
    for entry in VGG16_PLAN:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            width = next(convs)
            layers += [nn.Conv2d(channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            channels = width
    return nn.Sequential(*layers[:-2])


def vgg16_widths(state: Mapping[str, torch.Tensor], prefix: str) -> tuple[int, ...]:
    """The 13 conv widths of a VGG16 ``features`` state dict under ``prefix`` (LayoutError if one is missing)."""
    return tuple(int(require(state, f"{prefix}{i}.weight").shape[0]) for i in VGG16_CONV_INDICES)


class NetVLAD(nn.Module):
    """The NetVLAD layer with the port's parameter names (``centroids``, ``conv``), vectorised."""

    def __init__(self, num_clusters: int, dim: int, vladv2: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, num_clusters, kernel_size=1, bias=vladv2)
        self.centroids = nn.Parameter(torch.zeros(num_clusters, dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features, p=2, dim=1)
        assign = F.softmax(self.conv(x).flatten(2), dim=1)                  # (N, K, HW)
        flat = x.flatten(2)                                                 # (N, D, HW)
        vlad = assign @ flat.transpose(1, 2) - assign.sum(2, keepdim=True) * self.centroids  # (N, K, D)
        vlad = F.normalize(vlad, p=2, dim=2)
        return F.normalize(vlad.flatten(1), p=2, dim=1)


class NetVladVgg16(nn.Module):
    """``encoder`` (VGG16 conv5_3) -> ``pool`` (NetVLAD) [-> ``WPCA`` (1x1 conv projection) -> L2]."""

    def __init__(self, widths: tuple[int, ...], num_clusters: int, vladv2: bool, pca_dim: int) -> None:
        super().__init__()
        self.encoder = vgg16_features(widths)
        self.pool = NetVLAD(num_clusters, widths[-1], vladv2)
        self.WPCA = nn.Sequential(nn.Conv2d(num_clusters * widths[-1], pca_dim, 1)) if pca_dim else None

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        vlad = self.pool(self.encoder(image))
        if self.WPCA is None:
            return vlad
        return F.normalize(self.WPCA(vlad[:, :, None, None]).flatten(1), p=2, dim=1)


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """The network of a port / Patch-NetVLAD checkpoint (module docstring), NetVLAD size and WPCA from shapes."""
    widths = vgg16_widths(state, "encoder.")
    centroids = require(state, "pool.centroids")
    if centroids.ndim != 2 or centroids.shape[1] != widths[-1]:
        raise LayoutError(f"key 'pool.centroids' has shape {tuple(centroids.shape)}, expected (K, {widths[-1]})")
    pca_dim = int(state["WPCA.0.weight"].shape[0]) if "WPCA.0.weight" in state else 0
    model = NetVladVgg16(widths, int(centroids.shape[0]), "pool.conv.bias" in state, pca_dim)
    load_official_state(model, state)
    k, d = centroids.shape
    dimension = pca_dim or int(k * d)
    return BuiltModel(NormalisedInput(model, IMAGENET), dimension, DEFAULT_SIZE, VGG_STRIDE,
                      variant=f"VGG16, {k} clusters" + (f", WPCA {pca_dim}" if pca_dim else "") + f", {dimension}-D",
                      details={"num_clusters": int(k), "vladv2": "pool.conv.bias" in state, "wpca_dim": pca_dim})


def random_model(num_clusters: int, pca_dim: int, shallow: bool, seed: int) -> NetVladVgg16:
    """Seeded random weights: VGG16 with torchvision's initialisation, unit-length random centroids and the
    port's vladv1 initialisation of the assignment (``alpha`` x normalised centroids, alpha 30)."""
    torch.manual_seed(seed)
    widths = tuple(int(w) for w in VGG16_PLAN if w != "M")
    widths = tuple(w // 8 for w in widths) if shallow else widths
    model = NetVladVgg16(widths, num_clusters, vladv2=False, pca_dim=pca_dim)
    for m in model.encoder:
        if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(m.bias)
    with torch.no_grad():
        centroids = F.normalize(torch.randn(num_clusters, widths[-1]), dim=1)
        model.pool.centroids.copy_(centroids)
        model.pool.conv.weight.copy_(30.0 * centroids[:, :, None, None])
    return model.eval()


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A checkpoint as the port's ``save_checkpoint`` writes it, with seeded random weights (``shallow``: conv
    widths / 8, 8 clusters, WPCA 32 if the variant has one)."""
    clusters, pca_dim = VARIANTS[variant or next(iter(VARIANTS))]
    if shallow:
        clusters, pca_dim = 8, min(pca_dim, 32)
    model = random_model(clusters, pca_dim, shallow, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": model.state_dict(), "recalls": {1: np.float64(0.0), 5: np.float64(0.0)},
                "best_score": np.float64(0.0), "optimizer": {}, "parallel": False}, path)
    return path


FORMAT = register_format(ImportFormat(
    name="netvlad_vgg16",
    description="NetVLAD, VGG16 conv5_3 + NetVLAD (+ optional WPCA), PyTorch port checkpoints",
    weights="https://github.com/Nanne/pytorch-NetVlad (README: Pitts30k vgg16_netvlad_checkpoint); "
            "Patch-NetVLAD releases (pitts/mapillary_WPCA{128,512,4096}.pth.tar) also load",
    paper="Arandjelovic et al., NetVLAD: CNN architecture for weakly supervised place recognition, CVPR 2016, "
          "https://arxiv.org/abs/1511.07247",
    reference="github.com/Nanne/pytorch-NetVlad main.py (model assembly) + netvlad.py (class NetVLAD)",
    dimension_rule="K x 512 (pool.centroids: 64 x 512 = 32768 for Pitts30k), or P with a WPCA layer",
    size_rule="any size; multiples of 16 (conv5_3 stride), 640x480 as the authors evaluate",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    variants=tuple(VARIANTS),
))
