"""MegaLoc (Berton & Masone, CVPRW 2025): DINOv2 ViT-B/14 + SALAD-style aggregation + linear projection.

Sources: gmberton/MegaLoc ``hubconf.py`` (``get_trained_model``: ``model.safetensors`` from the Hugging Face
repository gberton/MegaLoc, loaded into ``MegaLoc()`` as a plain state dict) and ``megaloc_model.py`` (its own
DINOv2 re-implementation with the hub key names but no ``mask_token``; ``FeatureAggregator``, the SALAD
aggregation of :mod:`vpr_training.zoo.salad` with a configurable MLP width; ``Aggregator`` = that + ``linear``):

=================================================  ===================  ==========================================
key                                                shape                what
=================================================  ===================  ==========================================
``backbone.*``                                     ViT-B/14             :mod:`.dinov2` layout, no ``mask_token``
``aggregator.agg.{token_features,cluster_features,  as SALAD            64 clusters x 256 + 256-D token (16640)
score,dust_bin}.*``                                                     , MLP width 512
``aggregator.linear.weight / .bias``               (8448, 16640)        projection to the output dimension
=================================================  ===================  ==========================================

Forward (``MegaLoc.forward``): DINOv2 (final norm; class token + patch map) -> SALAD aggregation (L2-normalised)
-> ``linear`` -> L2-normalised 8448-D descriptor. The reference resizes inputs whose sides are not multiples of 14
to the nearest multiples itself; here sizes must be multiples of 14 (the map builder rounds its automatic size to
them). Input normalisation: ImageNet mean/std (the authors' evaluation code, gmberton/VPR-methods-evaluation,
normalises every method's input so); 322x322 by default. The released weights are a ``.safetensors`` file,
read with the ``safetensors`` library (no pickle); ``.pth`` files with the same keys load too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_training.checkpoints import CheckpointError
from vpr_training.zoo.dinov2 import (
    HUB_SPECS,
    PATCH_SIZE,
    SHALLOW_SPEC,
    SIZE_RULE,
    DinoV2,
    ViTSpec,
    random_vit_state,
    size_checked_convert,
    vit_details,
    vit_name,
)
from vpr_training.zoo.registry import (
    IMAGENET,
    BuiltModel,
    ImportFormat,
    NormalisedInput,
    load_official_state,
    read_state_dict,
    register_format,
    require,
)
from vpr_training.zoo.salad import SaladAggregator, check_patch_count, random_aggregator_state

DEFAULT_SIZE = (322, 322)


class MegaLocAggregator(nn.Module):
    """``aggregator``: ``agg`` (SALAD aggregation) then ``linear``."""

    def __init__(self, agg: SaladAggregator, dimension: int) -> None:
        super().__init__()
        self.agg = agg
        self.linear = nn.Linear(agg.dimension, dimension)


class MegaLoc(nn.Module):
    def __init__(self, spec: ViTSpec, aggregator: MegaLocAggregator) -> None:
        super().__init__()
        self.backbone = DinoV2(spec)
        self.aggregator = aggregator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():
            check_patch_count(int(image.shape[2]), int(image.shape[3]), self.aggregator.agg.clusters)
        tokens = self.backbone.tokens(image, norm=True)
        return F.normalize(self.aggregator.linear(self.aggregator.agg(tokens.patches, tokens.cls)), dim=-1)


def read_state(path: Path) -> dict[str, torch.Tensor]:
    """The released ``model.safetensors`` (tensors only, nothing executed), or a torch file with the same keys."""
    if path.suffix != ".safetensors":
        return read_state_dict(path)
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return dict(load_file(str(path), device="cpu"))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({exc})") from None


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    spec = ViTSpec.from_state_dict(state, "backbone.")
    agg = SaladAggregator.from_state(state, "aggregator.agg.")
    dimension = int(require(state, "aggregator.linear.weight").shape[0])
    model = MegaLoc(spec, MegaLocAggregator(agg, dimension))
    load_official_state(model, state)
    variant = f"{vit_name(spec)}, {agg.clusters} clusters x {agg.cluster_dim} -> {dimension}-D"
    return BuiltModel(NormalisedInput(model, IMAGENET), dimension, DEFAULT_SIZE, PATCH_SIZE, variant,
                      details={**vit_details(spec), "clusters": agg.clusters, "cluster_dim": agg.cluster_dim,
                               "aggregated_dim": agg.dimension})


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A ``model.safetensors`` in the release's layout with seeded random weights (``shallow``: 2 blocks x 128
    channels, 8 clusters x 16, 64-D output)."""
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    spec = dataclasses.replace(SHALLOW_SPEC if shallow else HUB_SPECS["vitb14"], mask_token=False)
    agg = SaladAggregator(spec.embed_dim, 8, 16, 32, hidden=64) if shallow else SaladAggregator(spec.embed_dim, 64,
                                                                                               256, 256)
    aggregator = MegaLocAggregator(agg, 64 if shallow else 8448)
    state = {**random_vit_state(spec, generator, "backbone."),
             **random_aggregator_state(aggregator, generator, "aggregator.")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


FORMAT = register_format(ImportFormat(
    name="megaloc",
    description="MegaLoc, DINOv2 ViT-B/14 + SALAD-style optimal-transport aggregation + linear projection",
    weights="https://huggingface.co/gberton/MegaLoc (model.safetensors; hubconf.py get_trained_model)",
    paper="Berton & Masone, MegaLoc: One Retrieval to Place Them All, CVPR Workshops 2025, "
          "https://arxiv.org/abs/2502.17237",
    reference="github.com/gmberton/MegaLoc megaloc_model.py (MegaLoc, DINOv2, FeatureAggregator) + hubconf.py",
    dimension_rule="aggregator.linear output (8448 for the release)",
    size_rule=f"{SIZE_RULE}; more patches than clusters (>= 126x126 for 64); 322x322 by default",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    read_state=read_state,
    convert=size_checked_convert("megaloc"),
))
