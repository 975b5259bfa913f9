"""MixVPR (Ali-bey et al., WACV 2023): ResNet-50 cut after layer3 + an all-MLP feature mixer.

Key layout of the released files (``resnet50_MixVPR_{4096,512,128}_channels(...)_rows(...).ckpt``, loaded in the
README of amaralibey/MixVPR with ``VPRModel(...).load_state_dict(torch.load(path))``: a plain state dict of
``main.py``'s ``VPRModel``, whose ``backbone`` is ``models/backbones/resnet.py``'s ``ResNet`` (torchvision ResNet-50
under ``model``, ``layer4``, ``avgpool`` and ``fc`` set to None: ``layers_to_crop=[4]``) and whose ``aggregator`` is
``models/aggregators/mixvpr.py``'s ``MixVPR``):

==========================================  ======================  ==========================================
key                                         shape                   what
==========================================  ======================  ==========================================
``backbone.model.conv1 / bn1 / layer1..3``  torchvision ResNet-50   1024 channels at stride 16 (no layer4)
``aggregator.mix.<l>.mix.0.*``              (hw,)                   LayerNorm over the hw = in_h * in_w cells
``aggregator.mix.<l>.mix.1.*``              (hw * r, hw)            mixer MLP in (r = mlp_ratio)
``aggregator.mix.<l>.mix.3.*``              (hw, hw * r)            mixer MLP out (residual: x + MLP(x))
``aggregator.channel_proj.*``               (C_out, 1024)           channel projection
``aggregator.row_proj.*``                   (rows, hw)              row projection; D = C_out x rows
==========================================  ======================  ==========================================

Forward: features (B, 1024, h, w) -> flatten cells -> L mixer layers -> channel projection -> row projection ->
flatten (channel-major) -> L2-normalise. The mixer's Linear layers are sized for one feature map of hw cells, so
the input size is fixed: square maps (every released model: in_h = in_w = 20), input = 16 * sqrt(hw) pixels a
side: 320x320 for the released weights (the README's ``Resize((320, 320), BICUBIC)``; resize frames to it).
Input normalisation: ImageNet mean/std on RGB/255.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path

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
from vpr_training.zoo.resnets import resnet, resnet_name, resnet_plan

BACKBONE_STRIDE = 16
#: Released models: variant -> (channel projection, rows, mixer depth); all ResNet-50, 20x20 cells, mlp ratio 1.
VARIANTS = {"4096": (1024, 4, 4), "512": (256, 2, 4), "128": (64, 2, 4)}


class FeatureMixer(nn.Module):
    """``x + MLP(LayerNorm(x))`` over the cells of each channel (key layout ``mix.0`` / ``mix.1`` / ``mix.3``)."""

    def __init__(self, cells: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(cells * mlp_ratio)
        self.mix = nn.Sequential(nn.LayerNorm(cells), nn.Linear(cells, hidden), nn.ReLU(), nn.Linear(hidden, cells))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mix(x)


class MixAggregator(nn.Module):
    def __init__(self, in_channels: int, cells: int, out_channels: int, rows: int, depth: int,
                 mlp_ratio: float) -> None:
        super().__init__()
        self.mix = nn.Sequential(*[FeatureMixer(cells, mlp_ratio) for _ in range(depth)])
        self.channel_proj = nn.Linear(in_channels, out_channels)
        self.row_proj = nn.Linear(cells, rows)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.mix(features.flatten(2))                            # (B, C, hw)
        x = self.channel_proj(x.transpose(1, 2)).transpose(1, 2)     # (B, C_out, hw)
        return F.normalize(self.row_proj(x).flatten(1), p=2, dim=-1)  # (B, C_out * rows)


class CroppedResNet(nn.Module):
    """torchvision ResNet under ``model`` without layer4 / avgpool / fc (MixVPR's ``layers_to_crop=[4]``)."""

    def __init__(self, bottleneck: bool, counts: tuple[int, int, int]) -> None:
        super().__init__()
        self.model = resnet(bottleneck, counts)
        self.model.layer4 = None  # type: ignore[assignment]
        self.model.avgpool = None  # type: ignore[assignment]
        self.model.fc = None  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x)))))))


class MixVPRNet(nn.Module):
    def __init__(self, backbone: CroppedResNet, aggregator: MixAggregator) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(image))


def mixer_depth(state: Mapping[str, torch.Tensor]) -> int:
    pattern = re.compile(r"aggregator\.mix\.(\d+)\.")
    layers = {int(m.group(1)) for key in state if (m := pattern.match(key))}
    if not layers:
        raise LayoutError("missing key 'aggregator.mix.0.mix.0.weight'")
    return max(layers) + 1


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """The network of a MixVPR state dict: backbone depth, mixer depth / ratio, projections and input size from
    its shapes."""
    bottleneck, counts = resnet_plan(state, [f"backbone.model.layer{i}." for i in (1, 2, 3)])
    row = require(state, "aggregator.row_proj.weight")
    channel = require(state, "aggregator.channel_proj.weight")
    first = require(state, "aggregator.mix.0.mix.1.weight")
    cells, rows, out_channels = int(row.shape[1]), int(row.shape[0]), int(channel.shape[0])
    side = math.isqrt(cells)
    if side * side != cells:
        raise LayoutError(f"key 'aggregator.row_proj.weight' has {cells} cells, not a square feature map")
    backbone = CroppedResNet(bottleneck, counts)  # type: ignore[arg-type]
    in_channels = 1024 if bottleneck else 256  # layer3's output channels
    aggregator = MixAggregator(in_channels, cells, out_channels, rows, mixer_depth(state), first.shape[0] / cells)
    model = MixVPRNet(backbone, aggregator)
    load_official_state(model, state)
    size = side * BACKBONE_STRIDE
    dimension = out_channels * rows
    name = "ResNet50" if (bottleneck, counts) == (True, (3, 4, 6)) else resnet_name(bottleneck, counts)
    return BuiltModel(NormalisedInput(model, IMAGENET), dimension, (size, size), size, fixed_size=True,
                      variant=f"{name} to layer3, {mixer_depth(state)} mixers, {out_channels}x{rows} = "
                              f"{dimension}-D, {size}x{size}",
                      details={"backbone": name, "mixer_depth": mixer_depth(state), "cells": cells,
                               "out_channels": out_channels, "out_rows": rows})


def random_model(variant: str, shallow: bool, seed: int) -> MixVPRNet:
    """Seeded random weights: torchvision's ResNet initialisation, the mixer's own (truncated normal, std 0.02,
    zero biases: ``FeatureMixerLayer``), torch defaults for the projections. ``shallow``: one block per stage,
    10x10 cells (160x160 input), one mixer, 32 x 2 = 64-D."""
    torch.manual_seed(seed)
    out_channels, rows, depth = VARIANTS[variant]
    counts, cells = (3, 4, 6), 400
    if shallow:
        counts, cells, out_channels, rows, depth = (1, 1, 1), 100, 32, 2, 1
    aggregator = MixAggregator(1024, cells, out_channels, rows, depth, 1.0)
    for m in aggregator.mix.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return MixVPRNet(CroppedResNet(True, counts), aggregator).eval()


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A plain state dict, as the released ``.ckpt`` files are."""
    model = random_model(variant or next(iter(VARIANTS)), shallow, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


FORMAT = register_format(ImportFormat(
    name="mixvpr",
    description="MixVPR, ResNet-50 (to layer3) + feature mixer",
    weights="https://github.com/amaralibey/MixVPR (README 'Weights': Google Drive links, "
            "resnet50_MixVPR_{4096,512,128}_channels(...)_rows(...).ckpt)",
    paper="Ali-bey et al., MixVPR: Feature Mixing for Visual Place Recognition, WACV 2023, "
          "https://arxiv.org/abs/2303.02190",
    reference="github.com/amaralibey/MixVPR main.py (VPRModel), models/backbones/resnet.py, "
              "models/aggregators/mixvpr.py",
    dimension_rule="channel_proj outputs x row_proj outputs (1024x4 = 4096, 256x2 = 512, 64x2 = 128)",
    size_rule="fixed: 16 x sqrt(cells) a side, 320x320 for the released weights (resize frames to it)",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    variants=tuple(VARIANTS),
))
