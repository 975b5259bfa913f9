"""SALAD (Izquierdo & Civera, CVPR 2024): DINOv2 + optimal-transport aggregation, in its release's key layout.

Sources: serizba/salad ``hubconf.py`` (``dinov2_salad``: ViT-B/14 backbone with ``num_trainable_blocks`` 4,
``return_token`` and ``norm_layer`` True; SALAD with 64 clusters of 128 channels and a 256-D token; the released
``dino_salad.ckpt`` is loaded as a plain state dict), ``models/backbones/dinov2.py`` (the hub ViT under
``backbone.model``: tokens after all blocks and the final LayerNorm; class token and patch map) and
``models/aggregators/salad.py`` (class SALAD, ``get_matching_probs`` / ``log_otp_solver``):

==========================================  ====================  ==========================================
key                                         shape                 what
==========================================  ====================  ==========================================
``backbone.model.*``                        hub ViT-B/14          :mod:`vpr_training.zoo.dinov2` layout
``aggregator.token_features.0 / .2``        (512, D) / (g, 512)   MLP of the class token (ReLU between)
``aggregator.cluster_features.0 / .3``      (512, D, 1, 1) /      per-patch features f_i, 1x1 convs (dropout
                                            (l, 512, 1, 1)        and ReLU between: indices 1, 2)
``aggregator.score.0 / .3``                 (512, D, 1, 1) /      per-patch cluster scores S (m clusters)
                                            (m, 512, 1, 1)
``aggregator.dust_bin``                     ()                    the dustbin score z
==========================================  ====================  ==========================================

Aggregation (the paper's eq. 2-5): the m x n score matrix of the n patches gets a dustbin row of z; three
Sinkhorn iterations in log space (unit regularisation) balance it towards row masses ``1/(n+m)`` (dustbin:
``(n-m)/(n+m)``) and column masses ``1/(n+m)``; the assignment is ``exp(log P) * (n + m)`` without the dustbin row;
each cluster's descriptor is the assignment-weighted sum of the f_i, L2-normalised over its l channels; the
output is ``L2([L2(token MLP), flatten_l-major(clusters)])``, m*l + g = 8448 channels for the release. There must
be more patches than clusters (n > m), e.g. at least 126x126 pixels for 64 clusters.

The Sinkhorn iterations here are written with ``logsumexp`` over the batch (no ``squeeze``, which in the
reference drops the batch axis for one image), and the sizes n + m, n - m come from the input's shape inside the
graph, so one ONNX file takes every multiple-of-14 input size.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_training.zoo.dinov2 import (
    HUB_SPECS,
    PATCH_SIZE,
    SHALLOW_SPEC,
    SIZE_RULE,
    DinoV2,
    ViTSpec,
    check_input_size,
    random_vit_state,
    size_checked_convert,
    vit_details,
    vit_name,
)
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

SINKHORN_ITERATIONS = 3
DEFAULT_SIZE = (322, 322)  # README: eval.py --image_size 322 322


def sinkhorn_assignment(scores: torch.Tensor, dust_bin: torch.Tensor,
                        iterations: int = SINKHORN_ITERATIONS) -> torch.Tensor:
    """Optimal-transport assignment of n patches to m clusters plus a dustbin (module docstring).

    Shape:
        scores: (B, m, n); dust_bin: (); returns (B, m, n), the dustbin row dropped.
    """
    b, m, _ = scores.shape
    n = torch.as_tensor(scores.shape[2]).to(scores.dtype)
    augmented = torch.cat([scores, dust_bin.expand(b, 1, scores.shape[2])], dim=1)   # (B, m + 1, n)
    log_norm = -torch.log(n + m)
    log_rows = torch.cat([log_norm.expand(m), (log_norm + torch.log(n - m)).reshape(1)])  # (m + 1,)
    log_cols = log_norm                                                                     # every column
    u = torch.zeros_like(augmented[:, :, 0])   # (B, m + 1)
    v = torch.zeros_like(augmented[:, 0, :])   # (B, n)
    for _ in range(iterations):
        u = log_rows - torch.logsumexp(augmented + v[:, None, :], dim=2)
        v = log_cols - torch.logsumexp(augmented + u[:, :, None], dim=1)
    return torch.exp(augmented + u[:, :, None] + v[:, None, :] - log_norm)[:, :m]


class SaladAggregator(nn.Module):
    """SALAD aggregation with the release's parameter names (module docstring); ``hidden`` = the MLPs' width."""

    def __init__(self, channels: int, clusters: int, cluster_dim: int, token_dim: int, hidden: int = 512) -> None:
        super().__init__()
        self.clusters, self.cluster_dim = clusters, cluster_dim
        self.token_features = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, token_dim))
        # Index 1 is the (eval-time identity) dropout of the reference, so the second conv keeps its key ".3".
        self.cluster_features = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Identity(), nn.ReLU(),
                                              nn.Conv2d(hidden, cluster_dim, 1))
        self.score = nn.Sequential(nn.Conv2d(channels, hidden, 1), nn.Identity(), nn.ReLU(),
                                   nn.Conv2d(hidden, clusters, 1))
        self.dust_bin = nn.Parameter(torch.tensor(1.0))

    @property
    def dimension(self) -> int:
        return self.clusters * self.cluster_dim + int(self.token_features[2].out_features)

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], prefix: str) -> SaladAggregator:
        """Sizes read from the shapes under ``prefix`` (LayoutError naming a missing key)."""
        score_in = require(state, f"{prefix}score.0.weight")
        return cls(channels=int(score_in.shape[1]), clusters=int(require(state, f"{prefix}score.3.weight").shape[0]),
                   cluster_dim=int(require(state, f"{prefix}cluster_features.3.weight").shape[0]),
                   token_dim=int(require(state, f"{prefix}token_features.2.weight").shape[0]),
                   hidden=int(score_in.shape[0]))

    def forward(self, patches: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        """Shape: patches (B, D, h, w), token (B, D) -> (B, m*l + g), L2-normalised."""
        features = self.cluster_features(patches).flatten(2)                      # (B, l, n)
        assignment = sinkhorn_assignment(self.score(patches).flatten(2), self.dust_bin)  # (B, m, n)
        clusters = F.normalize(torch.einsum("bln,bmn->blm", features, assignment), dim=1)
        descriptor = torch.cat([F.normalize(self.token_features(token), dim=-1), clusters.flatten(1)], dim=-1)
        return F.normalize(descriptor, dim=-1)


def check_patch_count(height: int, width: int, clusters: int) -> None:
    """The optimal transport needs more patches than clusters (its dustbin row mass is n - m)."""
    check_input_size(height, width)
    if (height // PATCH_SIZE) * (width // PATCH_SIZE) <= clusters:
        raise LayoutError(f"input {width}x{height} gives {(height // PATCH_SIZE) * (width // PATCH_SIZE)} patches, "
                          f"but this model's optimal transport needs more than its {clusters} clusters")


class SaladBackbone(nn.Module):
    """``backbone.model``: the hub ViT (the reference wraps it as ``self.model``)."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.model = DinoV2(spec)


class Salad(nn.Module):
    """DINOv2 (final norm; class token + patch map) -> SALAD; ImageNet-normalised input, descriptor out."""

    def __init__(self, spec: ViTSpec, aggregator: SaladAggregator) -> None:
        super().__init__()
        self.backbone = SaladBackbone(spec)
        self.aggregator = aggregator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_patch_count(int(image.shape[2]), int(image.shape[3]), self.aggregator.clusters)
        tokens = self.backbone.model.tokens(image, norm=True)
        return self.aggregator(tokens.patches, tokens.cls)


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """The released model's network, sizes read from the state dict."""
    spec = ViTSpec.from_state_dict(state, "backbone.model.")
    aggregator = SaladAggregator.from_state(state, "aggregator.")
    model = Salad(spec, aggregator)
    load_official_state(model, state)
    variant = (f"{vit_name(spec)}, {aggregator.clusters} clusters x {aggregator.cluster_dim} + "
               f"{aggregator.dimension - aggregator.clusters * aggregator.cluster_dim}-D token, "
               f"{aggregator.dimension}-D")
    return BuiltModel(NormalisedInput(model, IMAGENET), aggregator.dimension, DEFAULT_SIZE, PATCH_SIZE, variant,
                      details={**vit_details(spec), "clusters": aggregator.clusters,
                               "cluster_dim": aggregator.cluster_dim, "sinkhorn_iterations": SINKHORN_ITERATIONS})


def random_aggregator_state(aggregator: nn.Module, generator: torch.Generator, prefix: str) -> dict[str, torch.Tensor]:
    """Seeded random weights for an aggregator: fan-in scaled weights, small biases, dustbin 1."""
    state = {}
    for name, tensor in aggregator.state_dict().items():
        if name.endswith("dust_bin"):
            value = torch.tensor(1.0) + 0.1 * torch.randn((), generator=generator)
        elif name.endswith("bias"):
            value = 0.05 * torch.randn(tensor.shape, generator=generator)
        else:
            value = torch.randn(tensor.shape, generator=generator) / math.sqrt(tensor.shape[1:].numel())
        state[prefix + name] = value.contiguous()
    return state


def random_state(*, seed: int, shallow: bool) -> dict[str, torch.Tensor]:
    """The release's layout with seeded random weights (``shallow``: 2 blocks, 128 channels, 8 clusters x 16)."""
    generator = torch.Generator().manual_seed(seed)
    spec = SHALLOW_SPEC if shallow else HUB_SPECS["vitb14"]
    aggregator = (SaladAggregator(spec.embed_dim, 8, 16, 32, hidden=64) if shallow
                  else SaladAggregator(spec.embed_dim, 64, 128, 256))
    return {**random_vit_state(spec, generator, "backbone.model."),
            **random_aggregator_state(aggregator, generator, "aggregator.")}


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A ``dino_salad.ckpt``-like file (a plain state dict, as the release) with seeded random weights."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state(seed=seed, shallow=shallow), path)
    return path


FORMAT = register_format(ImportFormat(
    name="salad",
    description="SALAD, DINOv2 ViT-B/14 + Sinkhorn optimal-transport aggregation of local features",
    weights="https://github.com/serizba/salad/releases/download/v1.0.0/dino_salad.ckpt (README, hubconf.py)",
    paper="Izquierdo & Civera, Optimal Transport Aggregation for Visual Place Recognition, CVPR 2024, "
          "https://arxiv.org/abs/2311.15937",
    reference="github.com/serizba/salad hubconf.py + models/backbones/dinov2.py + models/aggregators/salad.py",
    dimension_rule="clusters x cluster_dim + token_dim (score.3, cluster_features.3, token_features.2: "
                   "64 x 128 + 256 = 8448 for the release)",
    size_rule=f"{SIZE_RULE}; more patches than clusters (>= 126x126 for 64); 322x322 as the authors evaluate",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    convert=size_checked_convert("salad"),
))
