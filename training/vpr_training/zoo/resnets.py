"""torchvision ResNets rebuilt from a state dict's shapes (block type and block counts), shared by the CNN formats.

Official VPR checkpoints store torchvision ResNet weights under a prefix (CosPlace: ``backbone.<i>`` of
``nn.Sequential(*list(resnet.children())[:-2])``; MixVPR: ``backbone.model.<name>``). The depth is read from the
keys, so ResNet-18/34/50/101/152 and the shallow test variants (one block per stage) load alike.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from vpr_training.zoo.registry import LayoutError

#: (bottleneck?, blocks per stage) -> torchvision's name.
NAMED_DEPTHS = {(False, (2, 2, 2, 2)): "ResNet18", (False, (3, 4, 6, 3)): "ResNet34",
                (True, (3, 4, 6, 3)): "ResNet50", (True, (3, 4, 23, 3)): "ResNet101",
                (True, (3, 8, 36, 3)): "ResNet152"}


def resnet_plan(state: Mapping[str, torch.Tensor], stage_prefixes: Sequence[str]) -> tuple[bool, tuple[int, ...]]:
    """(bottleneck blocks?, blocks per stage) of the ResNet stages under ``stage_prefixes`` (e.g. ``backbone.4.``
    .. ``backbone.7.``). LayoutError naming the first stage without blocks."""
    counts = []
    for prefix in stage_prefixes:
        pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
        blocks = {int(m.group(1)) for key in state if (m := pattern.match(key))}
        if not blocks:
            raise LayoutError(f"missing key {prefix + '0.conv1.weight'!r}")
        counts.append(max(blocks) + 1)
    return f"{stage_prefixes[0]}0.conv3.weight" in state, tuple(counts)


def resnet(bottleneck: bool, counts: tuple[int, ...]) -> ResNet:
    """A torchvision ResNet with these blocks (4 stages; fewer given: the later stages get one block and are
    meant to be dropped by the caller), random weights (torchvision's initialisation)."""
    full = tuple(counts) + (1,) * (4 - len(counts))
    return ResNet(Bottleneck if bottleneck else BasicBlock, list(full))


def resnet_name(bottleneck: bool, counts: tuple[int, ...]) -> str:
    """``ResNet50`` etc., or a description of a custom depth (e.g. shallow test checkpoints)."""
    return NAMED_DEPTHS.get((bottleneck, tuple(counts)),
                            f"ResNet ({'bottleneck' if bottleneck else 'basic'} blocks {list(counts)})")
