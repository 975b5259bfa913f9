"""Image encoders: an ONNX model with its model card, or a weights-free encoder named by a prefix.

``make_encoder(EncoderConfig(model=...))`` returns the encoder the setting names; every encoder follows the
:class:`Encoder` protocol, so the map builder and the localizer do not care which one they hold.
"""

from __future__ import annotations

from collections.abc import Callable

from vpr_ros.core.encoders.base import Encoder, EncoderConfig
from vpr_ros.core.encoders.model_card import MODEL_CARD_VERSION, MODEL_KINDS, ModelCard, write_model_card
from vpr_ros.core.encoders.onnx import OnnxEncoder
from vpr_ros.core.encoders.thumbnail import ThumbnailEncoder

__all__ = ["ENCODER_FACTORIES", "MODEL_CARD_VERSION", "MODEL_KINDS", "Encoder", "EncoderConfig", "ModelCard",
           "OnnxEncoder", "ThumbnailEncoder", "make_encoder", "write_model_card"]


def _thumbnail_encoder(config: EncoderConfig) -> Encoder:
    return ThumbnailEncoder(config)


#: Encoders that are not ONNX files, by the prefix of ``EncoderConfig.model`` (e.g. ``thumbnail:...``).
ENCODER_FACTORIES: dict[str, Callable[[EncoderConfig], Encoder]] = {"thumbnail": _thumbnail_encoder}


def make_encoder(config: EncoderConfig | None = None) -> Encoder:
    """The encoder ``config.model`` names: a registered prefix (``name:spec``) or an ONNX file path."""
    config = config or EncoderConfig()
    prefix = config.model.split(":", 1)[0]
    if ":" in config.model and prefix in ENCODER_FACTORIES:
        return ENCODER_FACTORIES[prefix](config)
    return OnnxEncoder(config)
