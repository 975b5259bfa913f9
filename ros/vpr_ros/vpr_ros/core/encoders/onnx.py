"""Image encoder: ONNX model + model card -> local feature maps, run with ONNX Runtime (CUDA when present).

A model is an ONNX file plus a model card (same stem, ``.yaml``) that says what the graph expects and
returns. The graph takes RGB float32 (B, 3, H, W) in 0..255 (normalisation lives inside the graph, so no
preprocessing constant can drift between training, export and the node). The card's ``kind`` says what
comes out:

* ``backbone`` -- local features (B, C, h, w); the reference map fits a VLAD head on its own images;
* ``netvlad``  -- local features (B, C, h, w) plus a trained head (NetVLAD centroids, soft assignment and
  PCA / WPCA) in the ``.npz`` file named by the card's ``head_file``; maps use that head as is;
* ``global``   -- global descriptors (B, P) directly (e.g. weights-free thumbnails); no head.

Aggregation to a global descriptor happens in numpy (:mod:`vpr_ros.core.vlad`), so every kind shares one
tested implementation of NetVLAD, IntegralVLAD patches and PCA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vpr_ros.core.encoders.base import EncoderConfig
from vpr_ros.core.encoders.model_card import ModelCard
from vpr_ros.core.files import sha256_file
from vpr_ros.core.image import to_network_input
from vpr_ros.core.paths import resolve_path
from vpr_ros.core.vlad import VladHead
from vpr_ros.errors import InputError


def _providers(device: str) -> list[str]:
    from vpr_ros.core.ort import onnxruntime

    available = onnxruntime.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in available:
            raise RuntimeError(f"device 'cuda' requested but ONNX Runtime offers only {available}")
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OnnxEncoder:
    """Runs an encoder ONNX model on RGB images.

    Example (the default model, shipped in models/, on a corridor frame resized to 480 x 640):
        >>> from vpr_ros.core.image import load_rgb
        >>> from vpr_ros.core.paths import resolve_path
        >>> enc = OnnxEncoder(EncoderConfig(threads=1))
        >>> rgb = load_rgb(resolve_path("data/corridor/query/0000000.jpg"))
        >>> enc.features([rgb], 480, 640).shape
        (1, 112, 30, 40)
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        from vpr_ros.core import ort

        self.config = config or EncoderConfig()
        self.model_path = resolve_path(self.config.model, what="encoder model")
        self.card = ModelCard.load(self.model_path.with_suffix(".yaml"))
        self.sha256 = sha256_file(self.model_path)
        if self.sha256 != self.card.onnx_sha256:
            raise InputError(
                f"{self.model_path}: sha256 {self.sha256[:12]}... does not match its model card "
                f"({self.card.onnx_sha256[:12]}...): the file was changed or the card is stale")
        self.session = ort.session(self.model_path, _providers(self.config.device), self.config.threads)
        self.providers = self.session.get_providers()
        # A failed run raises with the whole message; ONNX Runtime's own log line of it would be a second copy.
        self._run_options = ort.onnxruntime.RunOptions()
        self._run_options.log_severity_level = 4
        self.head = self._load_head()

    def _load_head(self) -> VladHead | None:
        """The trained head of a ``netvlad`` model (checked against the card's sha256), else None."""
        if self.card.kind != "netvlad":
            return None
        path = self.model_path.parent / str(self.card.raw["head_file"])
        expected = self.card.raw.get("head_sha256")
        if not path.is_file():
            raise FileNotFoundError(f"{path}: head file named by the model card of {self.model_path} is missing")
        if expected and sha256_file(path) != expected:
            raise InputError(f"{path}: sha256 does not match the model card (file changed or card stale)")
        with np.load(path) as npz:
            return VladHead.from_arrays(dict(npz))
    @property
    def id(self) -> str:
        return self.card.id

    def describe(self) -> dict[str, Any]:
        """Identity written into maps, so a map refuses a different encoder."""
        return {"id": self.card.id, "kind": self.card.kind, "onnx_sha256": self.sha256,
                "channels": self.card.channels, "stride": self.card.stride}

    def check_input_size(self, height: int, width: int) -> None:
        """InputError unless (height, width) suits the model: cards with ``input.size_multiple_required`` (ViT/14
        imports: their graph would drop the pixels beyond the last whole patch) take only multiples of
        ``input.size_multiple``."""
        spec = self.card.raw.get("input", {})
        multiple = int(spec.get("size_multiple", 1))
        if spec.get("size_multiple_required") and (height % multiple or width % multiple):
            raise InputError(f"network input {width}x{height} (WxH): model {self.card.id} takes widths and heights "
                             f"that are multiples of {multiple} pixels; set image_width / image_height to multiples "
                             f"of {multiple}, or 0 for the automatic size")

    def features(self, images: list[np.ndarray], height: int, width: int) -> np.ndarray:
        """Local features for RGB uint8 images resized to (height, width).

        Shape:
            returns: (B, C, ceil(height / stride), ceil(width / stride)) float32.
        """
        self.check_input_size(height, width)
        out = []
        bs = self.config.batch_size
        try:
            for start in range(0, len(images), bs):
                batch = to_network_input(images[start:start + bs], height, width)
                out.append(self.session.run([self.card.output_name], {self.card.input_name: batch},
                                            self._run_options)[0])
        except Exception as exc:
            # numpy raises MemoryError, ONNX Runtime its own Fail ("Failed to allocate memory for requested
            # buffer"): either way the input size asked for more memory than this machine gives.
            if not isinstance(exc, MemoryError) and "Failed to allocate memory" not in str(exc):
                raise
            raise InputError(f"network input {width}x{height} (batch of {min(bs, len(images))}) needs more memory "
                             f"than is available: choose a smaller input size (image_width / image_height) or "
                             f"encoder.batch_size") from None
        return np.concatenate(out, axis=0) if out else np.empty((0, self.card.channels, 0, 0), np.float32)
