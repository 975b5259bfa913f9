"""BoQ, Bag-of-Queries (Ali-bey et al., CVPR 2024), with ResNet-50 and DINOv2 backbones, in the releases' layouts.

Sources: amaralibey/Bag-of-Queries ``hubconf.py`` (``get_trained_boq``: the released ``resnet50_16384.pth`` and
``dinov2_12288.pth`` are plain state dicts of ``VPRModel(backbone, aggregator)``), ``src/backbones.py`` (``ResNet``:
torchvision ResNet-50 up to ``layer3`` as ``net``, 1024 channels, stride 16; ``DinoV2``: the hub ViT-B/14 as
``dino``, patch tokens after the last block *without* the final LayerNorm, as a (B, 768, h, w) map) and
``src/boq.py`` (``BoQ``, ``BoQBlock``):

===================================================  ==============================  ============================
key                                                  shape                           what
===================================================  ==============================  ============================
``backbone.net.{0,1,4,5,6}.*``                       torchvision ResNet-50           conv1, bn1, layer1..layer3
``backbone.dino.*``                                  hub ViT-B/14                    :mod:`.dinov2` layout
``aggregator.proj_c.weight / .bias``                 (P, C, 3, 3) / (P,)             3x3 conv C -> P channels
``aggregator.norm_input.*``                          (P,)                            LayerNorm of the tokens
``aggregator.boqs.N.encoder.*``                      ``nn.TransformerEncoderLayer``  post-norm, ReLU, 4P FFN, P/64
                                                                                     heads (self_attn, linear1/2,
                                                                                     norm1/2)
``aggregator.boqs.N.queries``                        (1, Q, P)                       the learned queries
``aggregator.boqs.N.self_attn.* / .norm_q.*``        MultiheadAttention / LayerNorm  queries' self-attention
``aggregator.boqs.N.cross_attn.* / .norm_out.*``     MultiheadAttention / LayerNorm  queries attend to the tokens
``aggregator.fc.weight / .bias``                     (R, L*Q) / (R,)                 mixes the L*Q outputs
===================================================  ==============================  ============================

Forward: ``proj_c``, flatten to tokens, ``norm_input``; each block refines the tokens with its encoder layer,
updates its queries with ``norm_q(q + self_attn(q))`` and reads the tokens with ``norm_out(cross_attn(q, x, x))``;
the L blocks' Q outputs are concatenated, ``fc`` maps the L*Q axis to R rows for each of the P channels, and the
flattened (P-major) P*R vector is L2-normalised: 512 x 32 = 16384 (ResNet-50), 384 x 32 = 12288 (DINOv2).
Attention is written out here (``in_proj_weight`` split into q, k, v; scaled dot product) rather than through
``nn.MultiheadAttention``, whose inference fast path cannot be exported to ONNX; the keys are the same.
Input: ImageNet mean/std (README ``input_transform``), 384x384 for ResNet-50 and 322x322 for DINOv2.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
import torchvision
from torch import nn

from vpr_training.zoo.dinov2 import (
    HEAD_DIM,
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
    LayoutError,
    NormalisedInput,
    load_official_state,
    register_format,
    require,
)
from vpr_training.zoo.salad import random_aggregator_state

RESNET_SIZE = (384, 384)
DINOV2_SIZE = (322, 322)
RESNET_STRIDE = 16
#: ``nn.TransformerEncoderLayer`` / ``nn.LayerNorm`` defaults the reference uses.
LAYER_NORM_EPS = 1e-5


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` (batch first, with biases) with its parameter names, exportable to ONNX."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.heads = dim // HEAD_DIM
        self.in_proj_weight = nn.Parameter(torch.zeros(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """Shape: query (B, Nq, D), key and value (B, Nk, D) -> (B, Nq, D)."""
        w_q, w_k, w_v = self.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.in_proj_bias.chunk(3)

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(x.shape[0], x.shape[1], self.heads, -1).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(F.linear(query, w_q, b_q)), heads(F.linear(key, w_k, b_k)),
                                             heads(F.linear(value, w_v, b_v)))
        return self.out_proj(out.transpose(1, 2).flatten(2))


class EncoderLayer(nn.Module):
    """``nn.TransformerEncoderLayer(d_model, nhead, 4 d_model, dropout 0, batch_first)``: post-norm, ReLU FFN."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.self_attn = MultiheadAttention(dim)
        self.linear1 = nn.Linear(dim, 4 * dim)
        self.linear2 = nn.Linear(4 * dim, dim)
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.self_attn(x, x, x))
        return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class BoQBlock(nn.Module):
    def __init__(self, dim: int, queries: int) -> None:
        super().__init__()
        self.encoder = EncoderLayer(dim)
        self.queries = nn.Parameter(torch.zeros(1, queries, dim))
        self.self_attn = MultiheadAttention(dim)
        self.norm_q = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.cross_attn = MultiheadAttention(dim)
        self.norm_out = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: tokens (B, N, P) -> refined tokens (B, N, P), outputs (B, Q, P)."""
        x = self.encoder(x)
        # Input-independent (the reference notes it could be cached); ONNX constant folding does exactly that.
        q = self.queries.expand(x.shape[0], -1, -1)
        q = self.norm_q(q + self.self_attn(q, q, q))
        return x, self.norm_out(self.cross_attn(q, x, x))


class BoQ(nn.Module):
    """The BoQ aggregator (module docstring); (B, C, h, w) features -> (B, P*R) L2-normalised."""

    def __init__(self, channels: int, proj_channels: int, queries: int, layers: int, rows: int) -> None:
        super().__init__()
        self.proj_c = nn.Conv2d(channels, proj_channels, kernel_size=3, padding=1)
        self.norm_input = nn.LayerNorm(proj_channels, eps=LAYER_NORM_EPS)
        self.boqs = nn.ModuleList(BoQBlock(proj_channels, queries) for _ in range(layers))
        self.fc = nn.Linear(layers * queries, rows)
        self.dimension = proj_channels * rows

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor], prefix: str) -> BoQ:
        proj = require(state, f"{prefix}proj_c.weight")
        layers = 1 + max((int(k[len(prefix) + 5:].split(".")[0]) for k in state if k.startswith(f"{prefix}boqs.")),
                         default=-1)
        if layers == 0:
            raise LayoutError(f"missing key {prefix + 'boqs.0.queries'!r}")
        if proj.shape[0] % HEAD_DIM:
            raise LayoutError(f"key {prefix + 'proj_c.weight'!r} has {proj.shape[0]} output channels, expected a "
                              f"multiple of {HEAD_DIM} (BoQ uses channels / 64 attention heads)")
        return cls(channels=int(proj.shape[1]), proj_channels=int(proj.shape[0]),
                   queries=int(require(state, f"{prefix}boqs.0.queries").shape[1]), layers=layers,
                   rows=int(require(state, f"{prefix}fc.weight").shape[0]))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.norm_input(self.proj_c(features).flatten(2).transpose(1, 2))
        outputs = []
        for block in self.boqs:
            x, out = block(x)
            outputs.append(out)
        mixed = self.fc(torch.cat(outputs, dim=1).transpose(1, 2))     # (B, P, R)
        return F.normalize(mixed.flatten(1), dim=-1)


def resnet_net(layers: tuple[int, int, int], width_per_group: int = 64) -> nn.Sequential:
    """torchvision ResNet (Bottleneck) up to ``layer3`` under the reference's ``net`` indices (0 conv1, 1 bn1,
    2 relu, 3 maxpool, 4..6 layer1..layer3); ``layers`` = blocks per stage (3, 4, 6 for ResNet-50)."""
    resnet = torchvision.models.ResNet(torchvision.models.resnet.Bottleneck, [*layers, 1],
                                       width_per_group=width_per_group)
    return nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool, resnet.layer1, resnet.layer2,
                         resnet.layer3)


class ResNetBackbone(nn.Module):
    def __init__(self, layers: tuple[int, int, int], width_per_group: int = 64) -> None:
        super().__init__()
        self.net = resnet_net(layers, width_per_group)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net(image)


class DinoBackbone(nn.Module):
    """``backbone.dino``: patch tokens after the last block, no final norm (reference ``DinoV2.forward``)."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        self.dino = DinoV2(spec)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.dino.tokens(image, norm=False).patches


class BoQModel(nn.Module):
    def __init__(self, backbone: nn.Module, aggregator: BoQ) -> None:
        super().__init__()
        self.backbone = backbone
        self.aggregator = aggregator

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.aggregator(self.backbone(image))


def resnet_layers(state: Mapping[str, torch.Tensor]) -> tuple[tuple[int, int, int], int]:
    """Blocks per stage and the bottleneck width per group of a ``backbone.net`` state dict."""
    layers = []
    for stage in (4, 5, 6):
        prefix = f"backbone.net.{stage}."
        blocks = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
        if not blocks:
            raise LayoutError(f"missing key {prefix + '0.conv1.weight'!r}")
        layers.append(max(blocks) + 1)
    width = int(require(state, "backbone.net.4.0.conv1.weight").shape[0])
    return (layers[0], layers[1], layers[2]), width


def build(state: Mapping[str, torch.Tensor]) -> BuiltModel:
    """Either release (the backbone is told by its keys: ``backbone.dino.*`` or ``backbone.net.*``)."""
    aggregator = BoQ.from_state(state, "aggregator.")
    if "backbone.dino.cls_token" in state:
        spec = ViTSpec.from_state_dict(state, "backbone.dino.")
        backbone: nn.Module = DinoBackbone(spec)
        name, size, multiple, details = vit_name(spec), DINOV2_SIZE, PATCH_SIZE, vit_details(spec)
    elif "backbone.net.0.weight" in state:
        layers, width = resnet_layers(state)
        backbone = ResNetBackbone(layers, width)
        name = "ResNet-50" if (layers, width) == ((3, 4, 6), 64) else f"ResNet ({layers} blocks, width {width})"
        size, multiple, details = RESNET_SIZE, RESNET_STRIDE, {"backbone": f"{name} up to layer3 (stride 16)"}
    else:
        raise LayoutError("missing key 'backbone.dino.cls_token' (DINOv2 release) or 'backbone.net.0.weight' "
                          "(ResNet-50 release)")
    model = BoQModel(backbone, aggregator)
    load_official_state(model, state)
    q = int(aggregator.boqs[0].queries.shape[1])
    variant = (f"{name}, {len(aggregator.boqs)} blocks x {q} queries, {aggregator.dimension}-D")
    return BuiltModel(NormalisedInput(model, IMAGENET), aggregator.dimension, size, multiple, variant,
                      details={**details, "boq_blocks": len(aggregator.boqs), "queries": q,
                               "proj_channels": int(aggregator.proj_c.out_channels)})


#: ``--random`` variants: the two releases.
VARIANTS = ("dinov2", "resnet50")


def random_state(*, seed: int, shallow: bool, variant: str) -> dict[str, torch.Tensor]:
    """A release's layout with seeded random weights. ``shallow``: ViT 2 blocks x 128 channels, or ResNet with one
    bottleneck per stage and 16-wide groups; BoQ 64 channels, 8 queries, 4 rows."""
    generator = torch.Generator().manual_seed(seed)
    if variant == "dinov2":
        spec = SHALLOW_SPEC if shallow else HUB_SPECS["vitb14"]
        backbone_state = random_vit_state(spec, generator, "backbone.dino.")
        channels, proj = spec.embed_dim, (64 if shallow else 384)
    else:
        torch.manual_seed(seed)  # torchvision's own initialisation (kaiming convs, BN at identity) ...
        net = ResNetBackbone((1, 1, 1), 16) if shallow else ResNetBackbone((3, 4, 6))
        backbone_state = {f"backbone.{k}": v for k, v in net.state_dict().items()}
        for k, v in backbone_state.items():  # ... with random BN statistics and affine so eval-mode BN matters
            if k.endswith(("running_var", "bn1.weight", "bn2.weight", "bn3.weight", "net.1.weight")):
                backbone_state[k] = 0.5 + torch.rand(v.shape, generator=generator)
            elif k.endswith(("running_mean", "bias")):
                backbone_state[k] = 0.1 * torch.randn(v.shape, generator=generator)
        channels, proj = 1024, (64 if shallow else 512)
    aggregator = BoQ(channels, proj, queries=8 if shallow else 64, layers=2, rows=4 if shallow else 32)
    aggregator_state = random_aggregator_state(aggregator, generator, "aggregator.")
    for k, v in aggregator_state.items():
        if k.endswith("queries"):   # the reference's initialisation: torch.randn
            aggregator_state[k] = torch.randn(v.shape, generator=generator)
        elif "norm" in k and k.endswith("weight"):
            aggregator_state[k] = 1.0 + 0.2 * torch.randn(v.shape, generator=generator)
    return {**backbone_state, **aggregator_state}


def write_random(path: Path, *, seed: int = 0, shallow: bool = False, variant: str | None = None) -> Path:
    """A release-like ``.pth`` (plain state dict) with seeded random weights; ``variant``: dinov2 or resnet50."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(random_state(seed=seed, shallow=shallow, variant=variant or VARIANTS[0]), path)
    return path


FORMAT = register_format(ImportFormat(
    name="boq",
    description="BoQ (Bag-of-Queries), ResNet-50 or DINOv2 ViT-B/14 + learned-query cross-attention aggregation",
    weights="https://github.com/amaralibey/Bag-of-Queries/releases/download/v1.0/resnet50_16384.pth and "
            ".../v1.0/dinov2_12288.pth (hubconf.py MODEL_URLS)",
    paper="Ali-bey et al., BoQ: A Place is Worth a Bag of Learnable Queries, CVPR 2024, "
          "https://arxiv.org/abs/2405.07364",
    reference="github.com/amaralibey/Bag-of-Queries hubconf.py + src/backbones.py + src/boq.py",
    dimension_rule="proj_channels x rows (proj_c, fc: 512 x 32 = 16384 for ResNet-50, 384 x 32 = 12288 for "
                   "DINOv2)",
    size_rule=f"ResNet-50: any size, multiples of 16, 384x384 as the authors evaluate; DINOv2: {SIZE_RULE}, "
              "322x322 as the authors evaluate",
    normalisation=IMAGENET,
    build=build,
    write_random=write_random,
    variants=VARIANTS,
    convert=size_checked_convert("boq"),
))
