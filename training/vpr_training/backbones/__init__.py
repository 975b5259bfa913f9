"""Backbone networks written in PyTorch, loadable from published weights."""

from vpr_training.backbones.efficientnet_lite import (
    INPUT_NORMALISATION,
    EfficientNetLite0,
    FeatureExtractor,
    WeightsNotFoundError,
    block_channels_and_stride,
    load_pretrained_lite0,
)

__all__ = [
    "INPUT_NORMALISATION",
    "EfficientNetLite0",
    "FeatureExtractor",
    "WeightsNotFoundError",
    "block_channels_and_stride",
    "load_pretrained_lite0",
]
