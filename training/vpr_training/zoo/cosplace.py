"""CosPlace and EigenPlaces: a torchvision CNN + L2 + GeM + fully connected layer + L2, one global descriptor.

Both papers release the same network (``GeoLocalizationNet`` in gmberton/CosPlace
``cosplace_model/cosplace_network.py``, ``GeoLocalizationNet_`` in gmberton/EigenPlaces
``eigenplaces_model/eigenplaces_network.py``; layers in ``*/layers.py``); they differ in training only
(EigenPlaces initialises from CosPlace and trains for viewpoint robustness). Their released files
(``{backbone}_{dim}_cosplace.pth`` / ``{backbone}_{dim}_eigenplaces.pth``, loaded by each repository's
``hubconf.py`` with ``torch.hub.load_state_dict_from_url``) are plain state dicts:

==============================  ====================================  ==========================================
key                             shape                                 what
==============================  ====================================  ==========================================
``backbone.0`` / ``backbone.1``  conv1 (64, 3, 7, 7) / bn1            ResNet: ``Sequential(*children()[:-2])``:
``backbone.4`` .. ``.7``         layer1 .. layer4 blocks              conv1, bn1, relu, maxpool, layer1..4
``backbone.<i>`` (VGG16)         VGG16 ``features[:-2]`` convs        VGG16: i in 0, 2, 5, ..., 28
``aggregation.1.p``              (1,)                                 GeM exponent (3 at initialisation)
``aggregation.3.weight / .bias`` (D, 512 or 2048) / (D,)              the FC; D = descriptor dimension
==============================  ====================================  ==========================================

Forward: backbone -> L2-normalise each location over channels -> GeM (``mean(clamp(x, 1e-6)^p)^(1/p)`` over
the whole map, computed as a mean so height and width stay dynamic in ONNX) -> FC -> L2-normalise. Input:
ImageNet mean/std on RGB/255 (the repositories' ``base_transform``), any size; the authors test at full
resolution (480x640 for Pitts30k / Tokyo). Released: ResNet18 (32-512), ResNet50/101/152 (32-2048), VGG16
(64-512) for CosPlace; ResNet18 (256, 512), ResNet50/101 (128-2048), VGG16 (512) for EigenPlaces.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from vpr_training.zoo.netvlad_vgg16 import VGG16_PLAN, vgg16_features, vgg16_widths
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

DEFAULT_SIZE = (480, 640)
#: Random checkpoints' variant -> (backbone, blocks per stage or None for VGG16, descriptor dimension).
VARIANTS: dict[str, tuple[str, bool, tuple[int, ...], int]] = {
    "ResNet50_2048": ("resnet", True, (3, 4, 6, 3), 2048),
    "ResNet18_512": ("resnet", False, (2, 2, 2, 2), 512),
    "ResNet101_2048": ("resnet", True, (3, 4, 23, 3), 2048),
    "VGG16_512": ("vgg16", False, (), 512),
}


class GeM(nn.Module):
    """Generalised-mean pooling over the whole map with a learnt exponent ``p`` (key ``p``, shape (1,))."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.ones(1) * p)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3)).pow(1.0 / self.p)


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=1)


class GemFcNet(nn.Module):
    """``backbone`` -> ``aggregation`` = (L2, GeM, flatten (GeM already returns (B, C)), FC, L2)."""

    def __init__(self, backbone: nn.Module, features_dim: int, dimension: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregation = nn.Sequential(L2Norm(), GeM(), nn.Identity(), nn.Linear(features_dim, dimension),
                                         L2Norm())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.aggregation(self.backbone(image))


def resnet_backbone(bottleneck: bool, counts: tuple[int, ...]) -> tuple[nn.Sequential, int]:
    """``Sequential(conv1, bn1, relu, maxpool, layer1..4)`` and its output channels."""
    net = resnet(bottleneck, counts)
    return nn.Sequential(*list(net.children())[:-2]), 2048 if bottleneck else 512


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """The network of a CosPlace / EigenPlaces state dict; backbone kind, depth and FC size from its keys."""
    fc = require(state, "aggregation.3.weight")
    if "backbone.1.weight" in state:  # ResNet: backbone.1 is bn1 (VGG16: a ReLU, no weights)
        bottleneck, counts = resnet_plan(state, [f"backbone.{i}." for i in range(4, 8)])
        backbone, features_dim = resnet_backbone(bottleneck, counts)
        name, multiple = resnet_name(bottleneck, counts), 32
    else:
        widths = vgg16_widths(state, "backbone.")
        backbone, features_dim, name, multiple = vgg16_features(widths), widths[-1], "VGG16", 16
    if fc.ndim != 2 or fc.shape[1] != features_dim:
        raise LayoutError(f"key 'aggregation.3.weight' has shape {tuple(fc.shape)}, expected (D, {features_dim})")
    model = GemFcNet(backbone, features_dim, int(fc.shape[0]))
    load_official_state(model, state)
    dimension = int(fc.shape[0])
    return BuiltModel(NormalisedInput(model, IMAGENET), dimension, DEFAULT_SIZE, multiple,
                      variant=f"{name}, {dimension}-D", details={"backbone": name, "gem_p": float(state[
                          "aggregation.1.p"].reshape(-1)[0])})


def random_model(variant: str, shallow: bool, seed: int) -> GemFcNet:
    """Seeded random weights in the released layout (torchvision initialisation, GeM p = 3; ``shallow``: one block
    per ResNet stage or VGG16 widths / 8, and a 64-D FC)."""
    torch.manual_seed(seed)
    kind, bottleneck, counts, dimension = VARIANTS[variant]
    if shallow:
        counts, dimension = (1, 1, 1, 1), 64
    if kind == "resnet":
        backbone, features_dim = resnet_backbone(bottleneck, counts)
    else:
        widths = tuple(int(w) // (8 if shallow else 1) for w in VGG16_PLAN if w != "M")
        backbone, features_dim = vgg16_features(widths), widths[-1]
        for m in backbone:
            if isinstance(m, nn.Conv2d):  # torchvision's VGG initialisation
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
    return GemFcNet(backbone, features_dim, dimension).eval()


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A plain state dict, as the released ``*_cosplace.pth`` / ``*_eigenplaces.pth`` files are."""
    model = random_model(variant or next(iter(VARIANTS)), shallow, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return path


_COMMON = {
    "dimension_rule": "the FC's output size (aggregation.3.weight rows), any value",
    "size_rule": "any size; multiples of 32 (ResNet) or 16 (VGG16), full 640x480 frames as the authors test",
    "normalisation": IMAGENET, "build": build, "write_random": write_random, "variants": tuple(VARIANTS),
}

COSPLACE = register_format(ImportFormat(
    name="cosplace",
    description="CosPlace, ResNet-18/50/101/152 or VGG16 + GeM + FC",
    weights="https://github.com/gmberton/CosPlace/releases/tag/v1.0 ({backbone}_{dim}_cosplace.pth; or "
            "torch.hub gmberton/cosplace)",
    paper="Berton et al., Rethinking Visual Geo-localization for Large-Scale Applications, CVPR 2022, "
          "https://arxiv.org/abs/2204.02287",
    reference="github.com/gmberton/CosPlace cosplace_model/cosplace_network.py (GeoLocalizationNet) + layers.py",
    **_COMMON,
))

EIGENPLACES = register_format(ImportFormat(
    name="eigenplaces",
    description="EigenPlaces, ResNet-18/50/101 or VGG16 + GeM + FC (CosPlace's network, viewpoint-robust training)",
    weights="https://github.com/gmberton/EigenPlaces/releases/tag/v1.0 ({backbone}_{dim}_eigenplaces.pth; or "
            "torch.hub gmberton/eigenplaces)",
    paper="Berton et al., EigenPlaces: Training Viewpoint Robust Models for Visual Place Recognition, ICCV 2023, "
          "https://arxiv.org/abs/2308.10832",
    reference="github.com/gmberton/EigenPlaces eigenplaces_model/eigenplaces_network.py (GeoLocalizationNet_)",
    **_COMMON,
))
