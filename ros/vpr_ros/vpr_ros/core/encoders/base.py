"""What every encoder is configured by and offers the pipeline (ONNX models and weights-free encoders alike)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from vpr_ros.config import setting
from vpr_ros.core.encoders.model_card import ModelCard
from vpr_ros.core.vlad import VladHead


@dataclass(frozen=True)
class EncoderConfig:
    """Which ONNX model encodes images and where it runs."""

    model: str = setting("models/efficientnet_lite0_b10.onnx",
                         "ONNX model file (its model card, same name .yaml, must lie beside it), or a "
                         "weights-free encoder such as thumbnail:64x32,patch=8 (SeqSLAM-style thumbnails)")
    device: str = setting("auto", "ONNX Runtime device: auto = CUDA when available, else CPU; cuda / tensorrt need "
                          "the GPU build of ONNX Runtime (make gpu-venv) and fail at start without it; tensorrt "
                          "compiles an engine per input size at first use (minutes) and caches it",
                          choices=("auto", "cuda", "tensorrt", "cpu"))
    tensorrt_fp16: bool = setting(True, "device tensorrt: build half-precision engines (faster; descriptors then "
                                  "differ from float32 ones: make gpu-check measures by how much)")
    tensorrt_cache: str = setting("~/.cache/vpr_ros/tensorrt", "device tensorrt: engine cache directory (one "
                                  "subdirectory per model hash, input size and precision)")
    threads: int = setting(0, "CPU threads for ONNX Runtime (0 = one per core)", min=0)
    batch_size: int = setting(8, "images per ONNX Runtime call when encoding many images", min=1)


class Encoder(Protocol):
    """What the pipeline needs from an encoder (ONNX models and weights-free encoders alike)."""

    config: EncoderConfig
    card: ModelCard
    sha256: str
    providers: list[str]
    head: VladHead | None

    @property
    def id(self) -> str: ...

    def describe(self) -> dict[str, Any]: ...

    def features(self, images: list[np.ndarray], height: int, width: int) -> np.ndarray: ...
